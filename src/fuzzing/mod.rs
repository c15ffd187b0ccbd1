//! The fuzz targets' entry points (`fuzz/`, cargo-fuzz on nightly) and the stable
//! regression tests that replay what they found (`tests/fuzz_regressions.rs`). Each
//! function takes the bytes a stranger could send, runs the real parser on them and
//! panics when a property the product depends on fails, not only when the parser does.
//! Nothing here is used by the daemon; it is public so the fuzz crate and the tests can
//! reach it, and hidden from the documentation.
//!
//! A target that needs several inputs (a record and the headers of its message, a name
//! and a stored heartbeat) splits the bytes at NUL ([`parts`]).

mod session;

pub use session::smtp_session;

use std::path::Path;

/// A target's entry point: the input; panics on a broken property.
pub type Target = fn(&[u8]);

/// Every target, by the name its folders use (`fuzz/fuzz_targets/NAME.rs`,
/// `fuzz/corpus/NAME/`, `fuzz/regressions/NAME/`).
pub const TARGETS: [(&str, Target); 10] = [
    ("smtp_session", smtp_session),
    ("data_reader", data_reader),
    ("message_stage", message_stage),
    ("maildrop", maildrop),
    ("aliases", aliases),
    ("config", config),
    ("upstream_reply", upstream_reply),
    ("json_answers", json_answers),
    ("bounce", bounce),
    ("heartbeat", heartbeat),
];

/// The input cut at NUL bytes into at most `n` parts (the last keeps any further NUL);
/// missing parts are empty.
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0).collect();
    out.resize(n, &[]);
    out
}

/// Where `raw` has a CR or LF that is not part of a CRLF, if anywhere.
pub fn bare_newline_at(raw: &[u8]) -> Option<usize> {
    raw.iter().enumerate().position(|(i, &b)| match b {
        b'\r' => raw.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || raw[i - 1] != b'\r',
        _ => false,
    })
}

/// Panics, showing its start, when `raw` (`what`) has a line over 998 octets.
#[track_caller]
pub fn assert_lines_fit(raw: &[u8], what: &str) {
    let max = crate::message::longlines::MAX_LINE;
    if let Some(line) = raw
        .split(|&b| b == b'\n')
        .find(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > max)
    {
        panic!(
            "a line of {} octets in {what}: {:?}...",
            line.len(),
            String::from_utf8_lossy(&line[..80])
        );
    }
}

/// Panics, showing where, when `raw` (`what`) has a bare CR or LF.
#[track_caller]
pub fn assert_no_bare_newline(raw: &[u8], what: &str) {
    if let Some(at) = bare_newline_at(raw) {
        let around = &raw[at.saturating_sub(60)..(at + 20).min(raw.len())];
        panic!(
            "a bare CR or LF at {at} of {what}: {:?}",
            String::from_utf8_lossy(around)
        );
    }
}

/// The DATA reader (dot-unstuffing, line ends, the terminator). The first byte chooses
/// normalize mode and a chunk size; the rest is content. Properties: feeding the bytes
/// in chunks gives what feeding them at once gives; content dot-stuffed as a client
/// sends it comes back byte for byte (strict mode), ending exactly at its terminator;
/// in normalize mode no bare CR or LF is left.
pub fn data_reader(data: &[u8]) {
    use crate::smtp::data::DataReader;
    let Some((&ctl, x)) = data.split_first() else {
        return;
    };
    let normalize = ctl & 1 == 1;
    let chunk = 1 + usize::from(ctl >> 1) % 64;
    let read = |input: &[u8], normalize: bool, chunk: usize| {
        let mut r = DataReader::new(1 << 20, normalize);
        let mut used = 0;
        for piece in input.chunks(chunk) {
            let (n, out) = r.feed(piece);
            used += n;
            if out.is_some() {
                return (used, out);
            }
            assert_eq!(n, piece.len(), "a chunk is consumed whole until the end");
        }
        (used, None)
    };
    assert_eq!(
        read(x, normalize, x.len().max(1)),
        read(x, normalize, chunk),
        "chunking changed what was read"
    );

    // The content as a client sends it: lines end with CRLF, dots stuffed after CRLF.
    let mut body = x.to_vec();
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    let mut wire = Vec::with_capacity(body.len() + 16);
    for (i, &b) in body.iter().enumerate() {
        if b == b'.' && (i == 0 || body[..i].ends_with(b"\r\n")) {
            wire.push(b'.');
        }
        wire.push(b);
    }
    wire.extend_from_slice(b".\r\nQUIT\r\n");
    let (used, out) = read(&wire, false, chunk);
    let out = out.expect("a stuffed message ends at its terminator");
    assert_eq!(
        used,
        wire.len() - 6,
        "the terminator is where the client put it"
    );
    assert_eq!(out.bytes, body, "unstuffing undoes stuffing");
    let (_, normalized) = read(&wire, true, chunk);
    let normalized = normalized.expect("the terminator ends normalize mode too");
    assert_no_bare_newline(&normalized.bytes, "what normalize mode read");
}

/// The message stage (line ends, the From rewrite, long-line encoding, trace headers)
/// over any bytes as the message. The first byte chooses the site's rules. Properties:
/// what it stores has CRLF line ends only, no line over 998 octets, starts with our
/// `Received:` and says why when it refuses.
pub fn message_stage(data: &[u8]) {
    let Some((&ctl, raw)) = data.split_first() else {
        return;
    };
    let rules = [
        "[rewrite]\ndefault_sender = \"billing@contoso.com\"\n",
        "[rewrite]\ndefault_sender = \"billing@contoso.com\"\nreply_to_original = true\n",
        "[[user]]\nname = \"erp\"\nemail = \"erp@contoso.com\"\nsender_email = \"billing@contoso.com\"\nmatch_senders = [\"*@erp.local\"]\n",
        "",
    ];
    let from = if ctl & 4 == 0 { "app@erp.local" } else { "" };
    match stage(raw, rules[usize::from(ctl) % rules.len()], from) {
        Ok(p) => {
            assert!(p.raw.starts_with(b"Received: from erp (127.0.0.1)"));
            assert_no_bare_newline(&p.raw, "the stored message");
            assert_lines_fit(&p.raw, "the stored message");
        }
        Err(why) => assert!(!why.is_empty(), "a refusal says why"),
    }
}

/// The message stage over `raw` under the site's `rules` (TOML before the provider),
/// from `mail_from` to a@contoso.com.
fn stage(raw: &[u8], rules: &str, mail_from: &str) -> Result<crate::message::Processed, String> {
    let text =
        format!("{rules}[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"o\"\n");
    let config = crate::config::Config::parse(&text, Path::new("fuzz.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let rcpts = vec!["a@contoso.com".to_string()];
    let facts = crate::message::Facts {
        id: "01JFUZZ0000000000000000000",
        now_ms: 1_795_000_000_000,
        hostname: "relay.test",
        helo: "erp",
        client_ip: "127.0.0.1".into(),
        protocol: "ESMTP",
        auth_login: None,
        mail_from,
        rcpts: &rcpts,
        as_user: None,
        provider: None,
        longest_line: None,
    };
    crate::message::process(raw.to_vec(), &facts, &config)
}

/// A maildrop file (anyone on the host can write one). Properties: a file taken in
/// has an envelope that passes the door's policy, within its limits, and its message is
/// the bytes after the envelope line; one refused says why.
pub fn maildrop(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("mailgate-fuzz-maildrop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    let path = dir.join("input.mail");
    std::fs::write(&path, data).expect("the scratch file");
    let limits = crate::maildrop::Limits {
        max_size: 4096,
        max_recipients: 3,
        allow_single_label: false,
    };
    match crate::maildrop::read(&path, limits) {
        Ok(d) => {
            assert!(
                crate::address::envelope_problem(&d.env.from, &d.env.rcpts, 3, false).is_none()
            );
            assert!(!d.env.rcpts.is_empty() && d.env.rcpts.len() <= 3);
            assert!(d.raw.len() <= 4096);
            let nl = memchr::memchr(b'\n', data).expect("an envelope line");
            assert_eq!(
                d.raw,
                &data[nl + 1..],
                "the message is the rest of the file"
            );
        }
        Err(why) => assert!(!why.is_empty(), "a refusal says why"),
    }
}

/// An aliases file, and the names of a message resolved through it. Properties: the
/// resolution ends (nesting bounded by `aliases::MAX_DEPTH`, each name expanded once),
/// yields no recipient twice, and every recipient is an address or the admin address.
pub fn aliases(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(a) = crate::aliases::Aliases::parse(&text, Path::new("/etc/aliases")) else {
        return;
    };
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim().to_ascii_lowercase())
        .filter(|n| crate::aliases::is_local_name(n))
        .take(8)
        .collect();
    names.push("root".into());
    for admin in [None, Some("it@contoso.com")] {
        let Ok(r) = crate::aliases::resolve(&names, Some(&a), admin) else {
            continue;
        };
        let mut seen = std::collections::HashSet::new();
        for rcpt in &r.rcpts {
            assert!(
                seen.insert(rcpt.to_ascii_lowercase()),
                "{rcpt} resolved twice"
            );
            assert!(
                !crate::aliases::is_local_name(rcpt) || Some(rcpt.as_str()) == admin,
                "{rcpt} is still a local name"
            );
        }
    }
}

/// The configuration file. Properties: it loads, or every error has a line and column
/// inside the file (1-based) and words.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = crate::config::Config::parse(text, Path::new("fuzz.toml")) {
        assert!(!errors.0.is_empty(), "a refusal names at least one mistake");
        let lines = text.lines().count() + 1;
        for e in &errors.0 {
            assert!(
                e.line >= 1 && e.line <= lines,
                "line {} of {lines}: {e}",
                e.line
            );
            assert!(e.col >= 1, "column {}: {e}", e.col);
            assert!(!e.message.is_empty());
        }
    }
}

/// An upstream's SMTP reply as lettre reads it, then our diagnosis of it. Properties:
/// every reply gets a diagnosis from the table, whose name reads back as the same code
/// and which has an explanation and a fix.
pub fn upstream_reply(data: &[u8]) {
    use std::str::FromStr;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = lettre::transport::smtp::response::Response::from_str(text) else {
        return;
    };
    let code: u16 = r.code().to_string().parse().expect("a three-digit code");
    let words = r.message().collect::<Vec<_>>().join(" ");
    let d = crate::diagnosis::from_reply(code, &words);
    assert_eq!(crate::diagnosis::Code::parse(d.as_str()), Some(d));
    let (explanation, fix) = d.texts();
    assert!(!explanation.is_empty() && !fix.is_empty());
    if let Some((class, _, _)) = crate::diagnosis::enhanced_code(&words) {
        assert!((2..=5).contains(&class));
    }
}

/// The identity platform's and Graph's JSON answers: a token endpoint's refusal and
/// success, a Graph error, and where an upload session says to resume. The first byte
/// chooses the HTTP status and the flow. Properties: a refusal gets a diagnosis and a
/// reply of at most a few lines that never carries the token; an upload resumes inside
/// the attachment.
pub fn json_answers(data: &[u8]) {
    let Some((&ctl, body)) = data.split_first() else {
        return;
    };
    let Ok(body) = std::str::from_utf8(body) else {
        return;
    };
    let status = [400u16, 401, 403, 429, 500, 503][usize::from(ctl) % 6];
    let e = crate::provider::oauth2::classify_token_error(status, body, ctl & 0x80 != 0);
    assert!(!e.reply.is_empty(), "a refusal says something");
    if let Ok(t) = serde_json::from_str::<crate::provider::oauth2::TokenResponse>(body) {
        let _ = t.account();
        assert!(!format!("{t:?}").contains("access_token"));
    }
    let shown = crate::provider::graph::graph_error(body);
    assert!(shown.chars().count() <= 300 || shown.contains(": "));
    let total = 1 + usize::from(ctl) * 1000;
    for fallback in [0, total / 2, total] {
        let at = crate::provider::graph::resume_at(body, total, fallback);
        assert!(at < total || at == fallback, "resume at {at} of {total}");
    }
}

/// A bounce or delay notice built for a record whose message carries hostile headers
/// and whose upstream replied with hostile words. Parts (NUL-separated): the message as
/// the client sent it (the notice quotes the header block of what the message stage
/// stored of it, as delivery does), the upstream's reply, the subject, the original
/// sender. Properties: the notice has CRLF line ends only, no line over 998 octets,
/// parses as a message, and says who it is for.
pub fn bounce(data: &[u8]) {
    use crate::history::{NoticeKind, Recipient, Record, Status};
    let p = parts(data, 4);
    let stored = stage(p[0], "", "app@erp.local")
        .map(|s| s.raw)
        .unwrap_or_default();
    let head = &stored[..stored.len().min(crate::store::body::HEAD_LEN)];
    let headers = crate::notify::header_block(head);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut gone = Recipient::queued("gone@example.com".into(), Some(false), None);
    gone.status = Status::Failed;
    gone.reply = Some(text(p[1]));
    let mut waits = Recipient::queued(text(p[3]), None, None);
    waits.status = Status::Deferred;
    waits.reply = Some(text(p[1]));
    let record = Record {
        subject: Some(text(p[2])),
        status: Status::Failed,
        ..Record::queued(
            "01JFUZZ0000000000000000000".into(),
            crate::time::Stamp::at_ms(1_795_000_000_000),
            "127.0.0.1".into(),
            text(p[3]),
            vec![gone, waits],
        )
    };
    for kind in [NoticeKind::Bounce, NoticeKind::Delay] {
        let f = crate::notify::Facts {
            kind,
            record: &record,
            headers,
            hostname: "relay.test",
            from: "postmaster@contoso.com",
            to: "billing@contoso.com",
            id: "01JFUZZNOTICE0000000000000",
            now_ms: 1_795_000_100_000,
            gives_up_ms: Some(1_795_400_000_000),
        };
        let (raw, _subject) = crate::notify::compose(&f);
        assert_no_bare_newline(&raw, "the notice");
        assert_lines_fit(&raw, "the notice");
        let parsed = mail_parser::MessageParser::default()
            .parse(&raw)
            .expect("a notice parses");
        let to = parsed
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address());
        assert_eq!(to, Some("billing@contoso.com"));
    }
}

/// A heartbeat as read from Redis and a peer call's signature headers (anyone who can
/// write to Redis or reach the status port sends these). Parts: the node name, the
/// stored heartbeat, then the four signature headers. Properties: a heartbeat is taken
/// only when it is our seal of JSON naming that node, and a sealed one always is; a call
/// verifies only with a signature made with the secret.
pub fn heartbeat(data: &[u8]) {
    use crate::fleet::sign::{Call, FleetSecret};
    const SECRET: &[u8] = b"fuzzing-fleet-secret-0123456789abcdef";
    let p = parts(data, 6);
    let (Ok(name), Ok(stored)) = (std::str::from_utf8(p[0]), std::str::from_utf8(p[1])) else {
        return;
    };
    let fleet = fuzz_fleet();
    let secret = FleetSecret::new(SECRET).expect("a long secret");
    if let Ok(v) = fleet.checked_beat(name, stored) {
        assert_eq!(v["node"].as_str(), Some(name));
        let json = secret
            .open_beat(stored)
            .expect("taken only when it verifies");
        assert_eq!(
            secret.seal_beat(json),
            stored,
            "the seal is the only way in"
        );
    }
    // What this node seals, the others take.
    let json = serde_json::json!({ "node": name, "seen": stored }).to_string();
    let v = fleet
        .checked_beat(name, &secret.seal_beat(&json))
        .expect("a sealed heartbeat is taken");
    assert_eq!(v["seen"].as_str(), Some(stored));
    // A call whose headers are the input never verifies (the MAC is unforgeable), and
    // one we sign verifies once.
    let headers: Vec<&str> = p[2..]
        .iter()
        .map(|h| std::str::from_utf8(h).unwrap_or(""))
        .collect();
    let call = Call {
        method: "GET",
        path_and_query: "/api/messages?fleet=1",
        body: b"",
    };
    let names = [
        crate::fleet::sign::NODE,
        crate::fleet::sign::TIME,
        crate::fleet::sign::NONCE,
        crate::fleet::sign::SIGNATURE,
    ];
    let forged = secret.verify(call, |h| {
        names.iter().position(|n| *n == h).map(|i| headers[i])
    });
    assert!(forged.is_err(), "a call verified without the secret");
    let signed = secret.sign(call, name);
    let header = |h: &str| {
        signed
            .iter()
            .find(|(n, _)| *n == h)
            .map(|(_, v)| v.as_str())
    };
    if name.len() <= 255 {
        assert_eq!(secret.verify(call, header).as_deref(), Ok(name));
        assert!(secret.verify(call, header).is_err(), "a replay verified");
    }
}

/// A fleet client with the fuzzing secret (it never connects: nothing here needs Redis).
fn fuzz_fleet() -> &'static crate::fleet::Fleet {
    static FLEET: std::sync::OnceLock<crate::fleet::Fleet> = std::sync::OnceLock::new();
    FLEET.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mailgate-fuzz-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        let secret = dir.join("fleet.secret");
        std::fs::write(&secret, "fuzzing-fleet-secret-0123456789abcdef").expect("the secret");
        let c: crate::config::FleetConfig = toml::from_str(&format!(
            "redis_url = \"redis://127.0.0.1:1\"\nsecret_file = \"{}\"\n",
            secret.display()
        ))
        .expect("a fleet table");
        crate::fleet::Fleet::new(&c).expect("a fleet client")
    })
}
