//! The sendmail door: `mailgate sendmail [flags] [rcpt...]`, or the binary run as
//! `sendmail` or `mailq`. Reads one message from standard input, submits it over SMTP to
//! the first `smtp.listen` address (so it takes the whole journey), or, when the daemon
//! cannot be reached, leaves it in the maildrop. Exit codes as sendmail's (sysexits.h).

use std::io::Read;
use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::{Config, Source};

/// sysexits.h codes.
pub mod sysexits {
    /// Accepted (by the daemon or the maildrop).
    pub const OK: i32 = 0;
    /// Command line usage error.
    pub const USAGE: i32 = 64;
    /// The message or its addresses are bad.
    pub const DATAERR: i32 = 65;
    /// A local name that goes nowhere (no alias, no `admin_address`).
    pub const NOUSER: i32 = 67;
    /// Temporary failure: neither the daemon nor the maildrop took it.
    pub const TEMPFAIL: i32 = 75;
    /// The configuration cannot be used (an aliases file that cannot be read).
    pub const CONFIG: i32 = 78;
}

/// What the flags asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    /// `--config` given before the command.
    pub config: Option<PathBuf>,
    /// `-t`: recipients also from To, Cc, Bcc; Bcc removed.
    pub from_headers: bool,
    /// `-i`/`-oi`: a lone `.` does not end the message.
    pub ignore_dots: bool,
    /// `-f`/`-r`: envelope sender.
    pub sender: Option<String>,
    /// `-F`: full name for an added From.
    pub full_name: Option<String>,
    /// `-bp` (or run as `mailq`): print the queue.
    pub print_queue: bool,
    /// Recipients on the command line.
    pub rcpts: Vec<String>,
}

/// Flags that take a value (as a separate argument when not attached).
const WITH_VALUE: [char; 10] = ['f', 'r', 'F', 'B', 'N', 'R', 'X', 'L', 'V', 'C'];

/// Parses sendmail's flags. Every flag sendmail knows is accepted; those without meaning
/// here are ignored, so callers never break. Errors are usage errors (exit 64).
pub fn parse(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags::default();
    let mut it = args.iter().peekable();
    let mut flags_done = false;
    while let Some(a) = it.next() {
        if flags_done || !a.starts_with('-') || a == "-" {
            f.rcpts.extend(
                a.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
            continue;
        }
        if a == "--" {
            flags_done = true;
            continue;
        }
        if let Some(path) = a.strip_prefix("--config=") {
            f.config = Some(path.into());
            continue;
        }
        if a == "--config" {
            f.config = Some(it.next().ok_or("--config needs a path")?.into());
            continue;
        }
        let body = &a[1..];
        let Some(flag) = body.chars().next() else {
            continue;
        };
        let rest = &body[flag.len_utf8()..];
        let mut value = || -> Result<String, String> {
            if rest.is_empty() {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("-{flag} needs a value"))
            } else {
                Ok(rest.to_string())
            }
        };
        match flag {
            't' => f.from_headers = true,
            'i' => f.ignore_dots = true,
            'o' if rest == "i" => f.ignore_dots = true,
            'o' => {} // -oem, -odi, -odb, -oQ... accepted and ignored
            'b' => match rest {
                "p" => f.print_queue = true,
                "m" | "" => {}
                _ => {} // -bs, -bv, -bd...: not served; delivering is the safe reading
            },
            'f' | 'r' => f.sender = Some(value()?),
            'F' => f.full_name = Some(value()?),
            c if WITH_VALUE.contains(&c) => {
                value()?;
            }
            _ => {} // -v, -q, -U, -G, -n, -m, -e... accepted and ignored
        }
    }
    Ok(f)
}

/// LF line ends become CRLF; without `ignore_dots` a line holding only `.` ends the
/// message there (sendmail's default).
pub fn read_message(input: &[u8], ignore_dots: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    for line in input.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if !ignore_dots && text == b"." {
            break;
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The addresses of To, Cc and Bcc (for `-t`), and the message without its Bcc fields.
pub fn header_recipients(raw: &[u8]) -> (Vec<String>, Vec<u8>) {
    let named = crate::message::recipients::named(raw);
    let without = crate::message::recipients::without_bcc(raw, &named);
    (named.addresses, without)
}

fn has_from(raw: &[u8]) -> bool {
    mail_parser::MessageParser::default()
        .parse_headers(raw)
        .is_some_and(|m| {
            m.root_part()
                .headers
                .iter()
                .any(|h| h.name == mail_parser::HeaderName::From)
        })
}

/// The invoking Unix user: the name of the real uid in /etc/passwd (never `LOGNAME` or
/// `USER`, which any caller sets as it likes), else `uid<N>`.
fn unix_user() -> String {
    crate::unix::real_uid().map_or_else(|| "nobody".into(), crate::unix::user_name)
}

/// One SMTP transaction to the daemon. Ok: the `250` id line. Err(Some(reply)): the
/// daemon refused (reply text); Err(None): it could not be reached or talked to.
async fn submit(
    addr: std::net::SocketAddr,
    from: &str,
    rcpts: &[String],
    raw: &[u8],
) -> Result<String, Option<String>> {
    let io = |_e: std::io::Error| None;
    let stream = tokio::time::timeout(std::time::Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| None)?
        .map_err(io)?;
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply(
        r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    ) -> Result<String, Option<String>> {
        loop {
            let mut line = String::new();
            match tokio::time::timeout(std::time::Duration::from_secs(300), r.read_line(&mut line))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(None),
                Ok(Ok(_)) => {}
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.trim_end().to_string());
            }
        }
    }
    let expect = |got: String, code: &str| -> Result<String, Option<String>> {
        if got.starts_with(code) {
            Ok(got)
        } else {
            Err(Some(got))
        }
    };
    expect(reply(&mut r).await?, "220")?;
    w.write_all(b"EHLO localhost\r\n").await.map_err(io)?;
    expect(reply(&mut r).await?, "250")?;
    w.write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())
        .await
        .map_err(io)?;
    expect(reply(&mut r).await?, "250")?;
    for rc in rcpts {
        w.write_all(format!("RCPT TO:<{rc}>\r\n").as_bytes())
            .await
            .map_err(io)?;
        expect(reply(&mut r).await?, "250")?;
    }
    w.write_all(b"DATA\r\n").await.map_err(io)?;
    expect(reply(&mut r).await?, "354")?;
    // Dot-stuffing, in pieces so a large message is not copied whole.
    let mut buf = Vec::with_capacity(64 * 1024);
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            buf.push(b'.');
        }
        buf.extend_from_slice(line);
        if buf.len() >= 60 * 1024 {
            w.write_all(&buf).await.map_err(io)?;
            buf.clear();
        }
    }
    if !raw.is_empty() && !raw.ends_with(b"\r\n") {
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b".\r\n");
    w.write_all(&buf).await.map_err(io)?;
    let done = expect(reply(&mut r).await?, "250")?;
    let _ = w.write_all(b"QUIT\r\n").await;
    Ok(done)
}

/// Runs the door with sendmail's arguments (after the program name); `mailq` when run
/// under that name. Returns the exit code.
pub async fn run(args: &[String], as_mailq: bool) -> i32 {
    let mut flags = match parse(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return sysexits::USAGE;
        }
    };
    flags.print_queue |= as_mailq;
    // Run as `sendmail`, clap did not read the environment: MAILGATE_CONFIG here.
    let named = flags
        .config
        .clone()
        .or_else(|| std::env::var_os("MAILGATE_CONFIG").map(PathBuf::from));
    let config = match Config::load_from(&Source::locate(named.as_deref())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return sysexits::TEMPFAIL;
        }
    };
    if flags.print_queue {
        return print_queue(&config).await;
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("sendmail: cannot read the message from standard input: {e}");
        return sysexits::TEMPFAIL;
    }
    let mut raw = read_message(&input, flags.ignore_dots);
    drop(input);
    let mut rcpts = flags.rcpts.clone();
    if flags.from_headers {
        let (found, without_bcc) = header_recipients(&raw);
        rcpts.extend(found);
        raw = without_bcc;
    }
    let rcpts = match local_names(&config, &rcpts) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if rcpts.is_empty() {
        eprintln!(
            "sendmail: no recipients (name them as arguments, or use -t to read To, Cc and Bcc)"
        );
        return sysexits::DATAERR;
    }
    if let Err(code) = check_rcpts(&config, &rcpts) {
        return code;
    }
    let user = unix_user();
    let from = match sender(&config, flags.sender.clone(), &user) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if !has_from(&raw) {
        let field = match &flags.full_name {
            Some(name) => format!(
                "From: \"{}\" <{from}>\r\n",
                name.replace(['"', '\\', '\r', '\n'], "")
            ),
            None => format!("From: <{from}>\r\n"),
        };
        raw.splice(0..0, field.into_bytes());
    }
    let Some(addr) = config.smtp.listen_addrs().first().copied() else {
        eprintln!("sendmail: smtp.listen names no address");
        return sysexits::TEMPFAIL;
    };
    hand_over(&config, addr, from, rcpts, &raw, user).await
}

/// The door's recipient checks, so mail left in the maildrop meets the same rules as
/// mail given to the listener: Err with the exit code, having said why.
fn check_rcpts(config: &Config, rcpts: &[String]) -> Result<(), i32> {
    for a in rcpts {
        match crate::address::check_address(a, true) {
            Ok(()) => {}
            Err(crate::address::AddressProblem::SingleLabelDomain)
                if !config.smtp.reject_single_label_domains => {}
            Err(crate::address::AddressProblem::SingleLabelDomain) => {
                eprintln!(
                    "sendmail: <{a}>: recipient address rejected: single label domain not accepted (550 5.1.2); it needs a full domain (user@contoso.com)"
                );
                return Err(sysexits::DATAERR);
            }
            Err(_) => {
                eprintln!("sendmail: invalid recipient address {a:?}");
                return Err(sysexits::DATAERR);
            }
        }
    }
    Ok(())
}

/// The envelope sender: `-f` (a bare name, as cronie passes it, qualified as sendmail
/// does; `<>` the null sender), else the invoking user at `smtp.hostname`.
fn sender(config: &Config, given: Option<String>, user: &str) -> Result<String, i32> {
    let from = match given {
        None => format!("{user}@{}", config.smtp.hostname),
        Some(s) if s.is_empty() || s == "<>" => String::new(),
        Some(s) if !s.contains('@') => format!("{s}@{}", config.smtp.hostname),
        Some(s) => s,
    };
    // A single-label domain (`root@localhost`) is a sender the door accepts.
    if !from.is_empty()
        && !matches!(
            crate::address::check_address(&from, true),
            Ok(()) | Err(crate::address::AddressProblem::SingleLabelDomain)
        )
    {
        eprintln!("sendmail: invalid sender address {from:?} (-f)");
        return Err(sysexits::DATAERR);
    }
    Ok(from)
}

/// Gives the message to the daemon; when it cannot be reached (or refuses for now), to
/// the maildrop. The exit code.
async fn hand_over(
    config: &Config,
    addr: std::net::SocketAddr,
    from: String,
    rcpts: Vec<String>,
    raw: &[u8],
    user: String,
) -> i32 {
    match submit(addr, &from, &rcpts, raw).await {
        Ok(_) => sysexits::OK,
        Err(Some(reply)) if reply.starts_with('5') => {
            eprintln!("sendmail: the message was refused: {reply}");
            sysexits::DATAERR
        }
        Err(other) => {
            // Not reachable, or a temporary refusal: the maildrop takes it.
            let dir = crate::maildrop::dir_for(&config.store.path);
            let env = crate::maildrop::Envelope {
                from,
                rcpts,
                user: Some(user),
            };
            match crate::maildrop::write(&dir, &env, raw) {
                Ok(path) => {
                    let why = other.map_or_else(
                        || format!("mailgate is not running at {addr}"),
                        |r| format!("mailgate answered {r}"),
                    );
                    eprintln!(
                        "sendmail: {why}; the message was left in the maildrop ({}) and will be sent when mailgate runs",
                        path.display()
                    );
                    sysexits::OK
                }
                Err(e) => {
                    eprintln!(
                        "sendmail: mailgate could not be reached at {addr} and the maildrop {} cannot take the message: {e}",
                        dir.display()
                    );
                    sysexits::TEMPFAIL
                }
            }
        }
    }
}

/// Bare local names replaced by their aliases or `sendmail.admin_address` (SPEC "Local
/// names"); every other recipient kept; repeats dropped. Err: the exit code, after
/// saying why on standard error.
fn local_names(config: &Config, rcpts: &[String]) -> Result<Vec<String>, i32> {
    use crate::aliases::{AliasError, Aliases};
    let admin = config
        .sendmail
        .admin_address
        .as_ref()
        .map(|a| a.get_ref().as_str());
    let needs = rcpts.iter().any(|r| crate::aliases::is_local_name(r));
    let aliases = match &config.sendmail.aliases {
        Some(path) if needs => Some(Aliases::load(path)),
        _ => None,
    }
    .transpose();
    let resolved = aliases.and_then(|a| crate::aliases::resolve(rcpts, a.as_ref(), admin));
    match resolved {
        Ok(r) => {
            for w in &r.warnings {
                eprintln!("sendmail: {w}");
            }
            Ok(r.rcpts)
        }
        Err(e @ AliasError::NoUser(_)) => {
            eprintln!("sendmail: {e}");
            Err(sysexits::NOUSER)
        }
        Err(e @ AliasError::Config(_)) => {
            eprintln!("sendmail: {e}");
            Err(sysexits::CONFIG)
        }
    }
}

async fn print_queue(config: &Config) -> i32 {
    let dir = crate::maildrop::dir_for(&config.store.path);
    let waiting = crate::maildrop::waiting(&dir).len();
    if waiting > 0 {
        println!(
            "maildrop: {} waiting for mailgate to take them in",
            crate::text::counted(waiting as u64, "message")
        );
    }
    let code = super::admin::queue(config).await;
    if code != 0 && waiting == 0 {
        println!("maildrop: empty");
    }
    code
}
