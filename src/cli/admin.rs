//! The admin commands that act on a running daemon: `send`, `test-email`, `export`,
//! `retry`, `queue`, `pause`, `resume` (history and show live in `history.rs`).

use std::io::Write;
use std::path::PathBuf;

use base64::Engine;
use clap::Args;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, Message, MultiPart, SinglePart};
use serde_json::{Value, json};

use super::client::{AdminClient, ClientError};
use super::exit;
use crate::config::Config;

/// Flags of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Recipient (repeatable).
    #[arg(long, required = true)]
    pub to: Vec<String>,
    /// Copy recipient (repeatable).
    #[arg(long)]
    pub cc: Vec<String>,
    /// Blind copy recipient (repeatable; not in the headers).
    #[arg(long)]
    pub bcc: Vec<String>,
    /// Subject.
    #[arg(long)]
    pub subject: String,
    /// Body text.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Body text from a file.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Attach a file (repeatable).
    #[arg(long)]
    pub attach: Vec<PathBuf>,
    /// Send as this user (its sender address and provider).
    #[arg(long = "as")]
    pub as_user: Option<String>,
    /// Send through this provider.
    #[arg(long)]
    pub provider: Option<String>,
    /// Write the message to this .eml file instead of sending it.
    #[arg(long)]
    pub eml: Option<PathBuf>,
}

/// Flags of `test-email`.
#[derive(Debug, Args)]
pub struct TestEmailArgs {
    /// Recipient.
    #[arg(long)]
    pub to: String,
    /// Through this provider (default: the default provider).
    #[arg(long)]
    pub provider: Option<String>,
    /// How long to wait for the outcome.
    #[arg(long, default_value = "60s")]
    pub wait: String,
    /// Send as this user (its sender address; Graph needs a real mailbox as sender).
    #[arg(long = "as")]
    pub as_user: Option<String>,
}

/// Flags of `retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The message to queue again.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Every deferred message.
    #[arg(long)]
    pub all: bool,
}

fn fail(e: &ClientError) -> i32 {
    eprintln!("{e}");
    exit::FAILED
}

fn client(config: &Config) -> Result<AdminClient, i32> {
    AdminClient::new(config).map_err(|e| fail(&e))
}

/// An address of our own: `mailgate@<smtp.hostname>` (the door accepts a single-label
/// sender domain such as `localhost`).
fn own_address(config: &Config) -> String {
    format!("mailgate@{}", config.smtp.hostname)
}

/// The sender of `test-email`, chosen so it always works: the user's address (`--as`);
/// else the provider's `username` when it is an address (the mailbox the account may send
/// as, which Microsoft 365 requires); else `rewrite.default_sender`; else our own address.
fn test_sender(config: &Config, as_user: Option<&str>, provider: &str) -> Result<String, String> {
    if as_user.is_some() {
        return composed_from(config, as_user);
    }
    if let Some(u) = config
        .provider(provider)
        .and_then(|p| p.username().map(String::from))
        && crate::address::check_address(&u, true).is_ok()
    {
        return Ok(u);
    }
    composed_from(config, None)
}

/// The From of composed mail: the user's send-from address, else the default sender,
/// else our own address.
fn composed_from(config: &Config, as_user: Option<&str>) -> Result<String, String> {
    if let Some(name) = as_user {
        let u = config
            .user
            .iter()
            .find(|u| u.name.get_ref() == name)
            .ok_or_else(|| format!("no user named {name:?}"))?;
        return u
            .sender_email
            .clone()
            .or_else(|| u.email.clone())
            .ok_or_else(|| format!("user {name:?} has no email"));
    }
    Ok(config
        .rewrite
        .default_sender
        .clone()
        .unwrap_or_else(|| own_address(config)))
}

fn content_type_of(path: &std::path::Path) -> ContentType {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "xml" => "application/xml",
        "json" => "application/json",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    };
    ContentType::parse(mime).unwrap_or(ContentType::TEXT_PLAIN)
}

fn parse_mailbox(a: &str) -> Result<Mailbox, String> {
    a.parse::<Mailbox>()
        .map_err(|e| format!("invalid address {a:?}: {e}"))
}

/// Builds the MIME message of `send` (lettre's builder).
pub fn compose(config: &Config, args: &SendArgs) -> Result<Message, String> {
    compose_from(
        config,
        args,
        composed_from(config, args.as_user.as_deref())?,
        false,
    )
}

/// The message of `send`, or of `test-email` (`test`: marked so that it is never bounced).
fn compose_from(
    _config: &Config,
    args: &SendArgs,
    from: String,
    test: bool,
) -> Result<Message, String> {
    let mut b = Message::builder()
        .from(parse_mailbox(&from)?)
        .subject(args.subject.clone())
        .user_agent(format!("mailgate {}", env!("CARGO_PKG_VERSION")));
    if test {
        use lettre::message::header::{HeaderName, HeaderValue};
        b = b.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(crate::notify::TEST_HEADER),
            "yes".into(),
        ));
    }
    for a in &args.to {
        b = b.to(parse_mailbox(a)?);
    }
    for a in &args.cc {
        b = b.cc(parse_mailbox(a)?);
    }
    for a in &args.bcc {
        b = b.bcc(parse_mailbox(a)?);
    }
    let body = match (&args.body, &args.body_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).map_err(|e| format!("--body-file {}: {e}", f.display()))?
        }
        (None, None) => String::new(),
    };
    let text = SinglePart::plain(body);
    let msg = if args.attach.is_empty() {
        b.singlepart(text)
    } else {
        let mut mp = MultiPart::mixed().singlepart(text);
        for path in &args.attach {
            let bytes =
                std::fs::read(path).map_err(|e| format!("--attach {}: {e}", path.display()))?;
            let name = path
                .file_name()
                .map_or_else(|| "attachment".into(), |n| n.to_string_lossy().into_owned());
            mp = mp.singlepart(Attachment::new(name).body(bytes, content_type_of(path)));
        }
        b.multipart(mp)
    };
    msg.map_err(|e| format!("cannot build the message: {e}"))
}

async fn submit(
    client: &AdminClient,
    msg: &Message,
    user: Option<&str>,
    provider: Option<&str>,
) -> Result<String, ClientError> {
    let rcpts: Vec<String> = msg
        .envelope()
        .to()
        .iter()
        .map(ToString::to_string)
        .collect();
    let body = json!({
        "to": rcpts,
        "from": msg.envelope().from().map(ToString::to_string),
        "raw": base64::engine::general_purpose::STANDARD.encode(msg.formatted()),
        "user": user,
        "provider": provider,
    });
    let v: Value = client.post_json("/api/send", &body).await?;
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

/// Runs `send`.
pub async fn send(config: &Config, args: &SendArgs) -> i32 {
    let msg = match compose(config, args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return exit::USAGE;
        }
    };
    if let Some(out) = &args.eml {
        return match std::fs::write(out, msg.formatted()) {
            Ok(()) => {
                println!("wrote {}", out.display());
                exit::OK
            }
            Err(e) => {
                eprintln!("cannot write {}: {e}", out.display());
                exit::FAILED
            }
        };
    }
    let c = match client(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match submit(&c, &msg, args.as_user.as_deref(), args.provider.as_deref()).await {
        Ok(id) => {
            println!("queued as {id}");
            exit::OK
        }
        Err(e) => fail(&e),
    }
}

/// Runs `test-email`: exit 0 only when the message was sent.
pub async fn test_email(config: &Config, args: &TestEmailArgs) -> i32 {
    let provider = args
        .provider
        .clone()
        .or_else(|| config.default_chain().into_iter().next())
        .unwrap_or_default();
    let send_args = SendArgs {
        to: vec![args.to.clone()],
        cc: vec![],
        bcc: vec![],
        subject: format!("mailgate test message via {provider}"),
        body: Some(format!(
            "This is a test message from mailgate on {}, sent through provider {provider}.\n",
            config.smtp.hostname
        )),
        body_file: None,
        attach: vec![],
        as_user: args.as_user.clone(),
        provider: Some(provider.clone()),
        eml: None,
    };
    let msg = match test_sender(config, args.as_user.as_deref(), &provider)
        .and_then(|from| compose_from(config, &send_args, from, true))
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return exit::USAGE;
        }
    };
    let wait = match humantime::parse_duration(&args.wait) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("--wait {:?}: {e}", args.wait);
            return exit::USAGE;
        }
    };
    let c = match client(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let id = match submit(&c, &msg, args.as_user.as_deref(), Some(&provider)).await {
        Ok(id) => id,
        Err(e) => return fail(&e),
    };
    println!("queued as {id}");
    // The daemon answers at the first outcome or after `wait`; the call may take that long.
    let rec: Value = match c
        .get_json_waiting(&format!("/api/messages/{id}"), wait)
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let status = rec["status"].as_str().unwrap_or("unknown");
    println!("status: {status}");
    if let Some(a) = rec["attempts"].as_array().and_then(|a| a.last()) {
        println!("reply: {}", a["reply"].as_str().unwrap_or(""));
        if let Some(d) = a.get("diagnosis").filter(|d| !d.is_null()) {
            println!("diagnosis: {}", d["code"].as_str().unwrap_or(""));
            println!("why: {}", d["explanation"].as_str().unwrap_or(""));
            println!("fix: {}", d["fix"].as_str().unwrap_or(""));
        }
    } else {
        let why = rec
            .get("waiting")
            .and_then(|w| serde_json::from_value::<crate::history::Waiting>(w.clone()).ok())
            .map_or_else(
                || "it waits for its first attempt".to_string(),
                |w| w.words(),
            );
        println!("not sent within {}: {why}", args.wait);
    }
    if status == "sent" {
        exit::OK
    } else {
        exit::FAILED
    }
}

/// Runs `export`: the message as relayed, to stdout.
pub async fn export(config: &Config, id: &str) -> i32 {
    let c = match client(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c.get_bytes(&format!("/api/messages/{id}/eml")).await {
        Ok(bytes) => {
            let mut out = std::io::stdout().lock();
            if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                return exit::FAILED;
            }
            exit::OK
        }
        Err(e) => fail(&e),
    }
}

/// Runs `retry ID` or `retry --all`.
pub async fn retry(config: &Config, args: &RetryArgs) -> i32 {
    let c = match client(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result: Result<Value, ClientError> = match &args.id {
        Some(id) if !args.all => {
            c.post_json(&format!("/api/messages/{id}/retry"), &json!({}))
                .await
        }
        _ => c.post_json("/api/retry-all", &json!({})).await,
    };
    match result {
        Ok(v) if args.all => {
            let n = v["retried"].as_u64().unwrap_or(0);
            println!(
                "{} queued again",
                crate::text::counted(n, "deferred message")
            );
            exit::OK
        }
        Ok(v) => {
            println!("{} queued again", v["id"].as_str().unwrap_or(""));
            exit::OK
        }
        Err(e) => fail(&e),
    }
}

/// Runs `cancel ID`: the message is not sent; the record names the Unix user.
pub async fn cancel(config: &Config, id: &str) -> i32 {
    let c = match client(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let by = format!("mailgate cancel by {user}");
    match c
        .post_json::<Value>(&format!("/api/messages/{id}/cancel"), &json!({ "by": by }))
        .await
    {
        Ok(r) => {
            let n = r["recipients"].as_array().map_or(0, Vec::len) as u64;
            println!(
                "{id} cancelled: it will not be sent ({})",
                crate::text::counted(n, "recipient")
            );
            exit::OK
        }
        Err(e) => fail(&e),
    }
}

/// The running daemon's `/status`, or the exit code after saying why not.
async fn daemon_status(config: &Config) -> Result<Value, i32> {
    client(config)?
        .get_json("/status", &[])
        .await
        .map_err(|e| fail(&e))
}

/// Runs `queue`: counts per status and the oldest waiting message.
pub async fn queue(config: &Config) -> i32 {
    let c = match client(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let s: Value = match c.get_json("/status", &[]).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let q = &s["queue"];
    println!("queued:   {}", q["queued"]);
    println!("deferred: {}", q["deferred"]);
    println!("sending:  {}", q["sending"]);
    for st in ["sent", "partial", "failed"] {
        println!("{:<9} {}", format!("{st}:"), s["records"][st]);
    }
    // Said once: when the oldest message waits because sending is paused, that line
    // already says so.
    let mut said_paused = false;
    match q["oldest_id"].as_str() {
        Some(id) => {
            println!("oldest waiting: {id} ({}s old)", q["oldest_age_seconds"]);
            let why = c
                .get_json::<crate::history::Record>(&format!("/api/messages/{id}"), &[])
                .await
                .ok()
                .and_then(|r| r.waiting);
            match why {
                Some(w) => {
                    said_paused = w.reason == crate::history::WaitReason::Paused;
                    println!("  waiting: {}", w.words());
                }
                None => println!("  waiting: for its first attempt"),
            }
        }
        None => println!("oldest waiting: none"),
    }
    if s["distributor"]["paused"] == json!(true) && !said_paused {
        println!("the distributor is paused (mailgate resume)");
    }
    exit::OK
}

/// Runs `pause` or `resume`.
pub async fn pause_resume(config: &Config, pause: bool) -> i32 {
    let c = match client(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = if pause {
        "/api/distributor/pause"
    } else {
        "/api/distributor/resume"
    };
    match c.post_json::<Value>(path, &json!({})).await {
        Ok(_) => {
            println!(
                "{}",
                if pause {
                    "distributor paused: mail is accepted and queued, not sent"
                } else {
                    "distributor resumed"
                }
            );
            exit::OK
        }
        Err(e) => fail(&e),
    }
}

/// Runs `fleet`: the nodes sharing this node's fleet store and the fleet-wide use.
pub async fn fleet(config: &Config) -> i32 {
    if config.fleet.is_none() {
        eprintln!("this configuration has no [fleet]: the limits are this node's alone");
        return exit::FAILED;
    }
    let s = match daemon_status(config).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let f = &s["fleet"];
    println!(
        "fleet store: {} (this node: {})",
        f["store"].as_str().unwrap_or("?"),
        f["node"].as_str().unwrap_or("?")
    );
    for n in f["nodes"].as_array().into_iter().flatten() {
        println!(
            "  node {:<20} version {:<8} last seen {}s ago  queued {} deferred {} sending {}",
            n["node"].as_str().unwrap_or("?"),
            n["version"].as_str().unwrap_or("?"),
            n["last_seen_seconds"],
            n["queue"]["queued"],
            n["queue"]["deferred"],
            n["queue"]["sending"]
        );
    }
    for p in f["providers"].as_array().into_iter().flatten() {
        println!(
            "  provider {:<16} sent in the last minute {}, recipients in the last day {}, connections {}",
            p["name"].as_str().unwrap_or("?"),
            p["sent_last_minute"],
            p["recipients_last_day"],
            p["connections"]
        );
    }
    if f["store"] == json!("down") {
        println!(
            "the fleet store is unreachable: each node keeps to limit / expected_nodes ({})",
            f["expected_nodes"]
        );
    }
    exit::OK
}

/// Runs `alert test`: a test alert through each (or one) `[[alert]]`, by the daemon.
pub async fn alert_test(config: &Config, only: Option<&str>) -> i32 {
    if config.alert.is_empty() {
        eprintln!("no [[alert]] in the configuration: add one (README, \"Alerts\")");
        return exit::USAGE;
    }
    if let Some(n) = only
        && !config.alert.iter().any(|a| a.name.get_ref() == n)
    {
        let names: Vec<&str> = config
            .alert
            .iter()
            .map(|a| a.name.get_ref().as_str())
            .collect();
        eprintln!("no alert named {n:?} (its alerts: {})", names.join(", "));
        return exit::USAGE;
    }
    let client = match AdminClient::new(config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let results: Vec<crate::alerts::TestResult> = match client
        .post_json("/api/alerts/test", &serde_json::json!({ "alert": only }))
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let mut ok = true;
    for r in &results {
        if r.ok {
            println!("{}: sent to {}", r.alert, r.detail);
        } else {
            ok = false;
            println!("{}: FAILED: {}", r.alert, r.detail);
        }
    }
    if ok { exit::OK } else { exit::FAILED }
}
