//! `mailgate history` and `mailgate show`: what happened to a message, from the daemon's
//! history, for a person (default) or a script (`--json`).

use std::fmt::Write;

use clap::Args;

use super::client::{AdminClient, ClientError};
use super::exit;
use crate::config::Config;
use crate::history::Record;

/// Flags of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this status (queued, deferred, sent, partial, failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only records received within this long (e.g. 2h, 3d).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Message id (from the 250 reply or `history`).
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn fail(e: &ClientError) -> i32 {
    eprintln!("{e}");
    exit::FAILED
}

/// Runs `history`; returns the exit code.
pub async fn history(config: &Config, args: &HistoryArgs) -> i32 {
    // The filters are checked here, as the daemon would: a typo is a usage error (2).
    let filters = crate::status::query::ListQuery {
        status: args.status.clone(),
        user: args.user.clone(),
        since: args.since.clone(),
        ..Default::default()
    };
    if let Err(why) = crate::status::query::HistoryQuery::parse(&filters) {
        eprintln!("{why}");
        return exit::USAGE;
    }
    let client = match AdminClient::new(config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut query = vec![("limit", args.limit.to_string())];
    for (k, v) in [
        ("status", &args.status),
        ("user", &args.user),
        ("since", &args.since),
    ] {
        if let Some(v) = v {
            query.push((k, v.clone()));
        }
    }
    let records: Vec<Record> = match client.get_json("/api/messages", &query).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).unwrap_or_default()
        );
    } else {
        print!("{}", history_table(&records));
    }
    exit::OK
}

/// Widest a FROM or TO column grows; a longer address is cut with `…` (`show ID` and
/// `--json` have it whole).
const MAX_ADDRESS_COLUMN: usize = 40;

/// The human form of a list of records: columns as wide as their widest value (addresses
/// at most [`MAX_ADDRESS_COLUMN`]), so a long sender never shifts the rows.
pub fn history_table(records: &[Record]) -> String {
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            let to = match r.recipients.len() {
                0 => String::new(),
                1 => r.recipients[0].address.clone(),
                n => format!("{} (+{})", r.recipients[0].address, n - 1),
            };
            let from = if r.sender.is_empty() { "<>" } else { &r.sender };
            [
                r.id.clone(),
                r.received_at.to_string(),
                r.status.as_str().to_string(),
                cut(from, MAX_ADDRESS_COLUMN),
                cut(&to, MAX_ADDRESS_COLUMN),
                r.subject.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let head = ["ID", "RECEIVED", "STATUS", "FROM", "TO", "SUBJECT"].map(String::from);
    let mut width = [0usize; 5];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        for (w, cell) in width.iter().zip(row) {
            let pad = w - cell.chars().count();
            let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
        }
        let _ = writeln!(out, "{}", row[5]);
    }
    out
}

/// `text` cut to `max` characters, the last one `…` when anything was cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max - 1).collect();
    s.push('…');
    s
}

/// Runs `show`; returns the exit code.
pub async fn show(config: &Config, args: &ShowArgs) -> i32 {
    let client = match AdminClient::new(config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let path = format!("/api/messages/{}", args.id);
    let record: Record = match client.get_json(&path, &[]).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&record).unwrap_or_default()
        );
    } else {
        print!("{}", show_text(&record));
    }
    exit::OK
}

/// The human form of one record.
pub fn show_text(r: &Record) -> String {
    let mut out = String::new();
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "Message {}", r.id);
    let _ = writeln!(out, "  status:          {}", r.status.as_str());
    // Mail from the sendmail door, the maildrop or the API has no HELO: none is shown.
    let helo = if r.helo.is_empty() {
        String::new()
    } else {
        format!(" (HELO {})", r.helo)
    };
    let _ = writeln!(
        out,
        "  received:        {} from {}{helo}",
        r.received_at, r.client
    );
    let _ = writeln!(out, "  auth login:      {}", opt(&r.auth_login));
    let _ = writeln!(out, "  user:            {}", opt(&r.user));
    if r.sender == r.original_sender {
        let _ = writeln!(out, "  sender:          <{}>", r.sender);
    } else {
        let _ = writeln!(
            out,
            "  sender:          <{}> (submitted as <{}>)",
            r.sender, r.original_sender
        );
    }
    let _ = writeln!(out, "  subject:         {}", opt(&r.subject));
    let _ = writeln!(out, "  message-id:      {}", opt(&r.message_id));
    let _ = writeln!(out, "  size:            {} bytes", r.size);
    let _ = writeln!(out, "  provider:        {}", r.provider);
    let _ = writeln!(out, "  deferrals:       {}", r.deferrals);
    if let Some(s) = &r.sent_at {
        let _ = writeln!(out, "  sent:            {s}");
    }
    if let Some(w) = &r.waiting {
        let _ = writeln!(out, "  waiting:         {}", w.words());
    } else if let Some(n) = &r.next_attempt_at {
        let _ = writeln!(out, "  next attempt:    {n}");
    }
    if !r.notices.is_empty() {
        let list: Vec<String> = r
            .notices
            .iter()
            .map(|n| format!("{} {}", n.kind.as_str(), n.id))
            .collect();
        let _ = writeln!(out, "  notices:         {}", list.join(", "));
    }
    if let Some(n) = &r.notice_of {
        let _ = writeln!(
            out,
            "  notice of:       {} (a {} notice to its sender)",
            n.id,
            n.kind.as_str()
        );
    }
    recipients_and_attempts(&mut out, r);
    out
}

/// The Recipients and Attempts parts of [`show_text`].
fn recipients_and_attempts(out: &mut String, r: &Record) {
    let _ = writeln!(out, "Recipients");
    for rc in &r.recipients {
        let _ = writeln!(
            out,
            "  {:<8} {}{}{}",
            rc.status.as_str(),
            rc.address,
            rc.provider
                .as_ref()
                .map(|p| format!(" via {p}"))
                .unwrap_or_default(),
            rc.reply
                .as_ref()
                .map(|x| format!("  ({x})"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "Attempts");
    if r.attempts.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    for a in &r.attempts {
        let _ = writeln!(out, "  {} via {}: {}", a.at, a.provider, a.reply);
        if let Some(d) = &a.diagnosis {
            let _ = writeln!(out, "    diagnosis: {}", d.code);
            let _ = writeln!(out, "    why:       {}", crate::text::plain(&d.explanation));
            let _ = writeln!(out, "    fix:       {}", crate::text::plain(&d.fix));
        }
        if let Some(n) = &a.note {
            let _ = writeln!(out, "    note:      {n}");
        }
    }
}
