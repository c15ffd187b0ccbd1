//! Configuration parsing and validation, fed text.
use super::*;

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, Path::new("t.toml")) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const OUTBOX: &str = "[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"outbox\"\n";

#[test]
fn shipped_default_is_valid() {
    let text = include_str!("../../config/mailgate.toml");
    let c = Config::parse(text, Path::new("config/mailgate.toml")).expect("valid");
    assert_eq!(
        c.smtp.listen_addrs(),
        vec!["127.0.0.1:2525".parse().unwrap()]
    );
    assert_eq!(c.store.path, PathBuf::from("data/mailgate.redb"));
    assert_eq!(c.distributor.default_provider.get_ref(), "outbox");
    assert_eq!(c.provider[0].kind(), ProviderKind::Eml);
}

#[test]
fn unknown_key_is_located() {
    let e = errors(&format!(
        "{OUTBOX}[smtp]\nhostname = \"x\"\nmax_mesage_size = 5\n"
    ));
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("t.toml:7:1: "), "{e:?}");
    assert!(e[0].contains("max_mesage_size"), "{e:?}");
}

#[test]
fn bad_size_and_duration_are_located() {
    let e = errors(&format!(
        "{OUTBOX}[smtp]\nmax_message_size = \"35 parsecs\"\n"
    ));
    assert!(e[0].starts_with("t.toml:6:20: "), "{e:?}");
    assert!(e[0].contains("invalid size"), "{e:?}");
    let e = errors(&format!("{OUTBOX}[distributor]\nretry_max = \"soon\"\n"));
    assert!(e[0].starts_with("t.toml:6:13: "), "{e:?}");
    assert!(e[0].contains("invalid duration"), "{e:?}");
}

#[test]
fn sizes_and_durations_parse() {
    assert_eq!(parse_size("35MB"), Ok(35 << 20));
    assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
    assert_eq!(parse_size("1024"), Ok(1024));
    assert!(parse_size("-1").is_err());
    let c = Config::parse(
        &format!("{OUTBOX}[smtp]\nmax_message_size = 1000\nidle_timeout = \"2d\"\n"),
        Path::new("t"),
    )
    .unwrap();
    assert_eq!(c.smtp.max_message_size, ByteSize(1000));
    assert_eq!(c.smtp.idle_timeout.0, Duration::from_secs(172_800));
}

#[test]
fn duplicate_provider_and_dangling_references() {
    let text = format!(
        "{OUTBOX}\n[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"b\"\n\n[distributor]\ndefault_provider = \"nowhere\"\n\n[[user]]\nname = \"erp\"\nprovider = \"gone\"\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:7:8: ") && m.contains("duplicate provider")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:12:20: ") && m.contains("nowhere")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("t.toml:16:12: ") && m.contains("gone")),
        "{e:?}"
    );
}

#[test]
fn non_loopback_status_needs_token() {
    // The admin token always exists (made beside the store); beyond loopback it would
    // cross the network: TLS, or a TLS proxy in front.
    let e = errors(&format!("{OUTBOX}[status]\nlisten = \"0.0.0.0:8525\"\n"));
    assert!(
        e.len() == 1 && e[0].starts_with("t.toml:6:10: ") && e[0].contains("status.tls_cert"),
        "{e:?}"
    );
    assert!(
        errors(&format!(
            "{OUTBOX}[status]\nlisten = \"0.0.0.0:8525\"\ntoken_file = \"t\"\nbehind_proxy = true\n"
        ))
        .is_empty()
    );
    assert!(
        errors(&format!(
            "{OUTBOX}[status]\nlisten = \"0.0.0.0:8525\"\ntls_cert = \"c\"\ntls_key = \"k\"\n"
        ))
        .is_empty()
    );
}

#[test]
fn full_schema_of_spec_parses() {
    let text = r#"
[smtp]
listen = ["127.0.0.1:2525", "[::1]:2525"]
hostname = "relay.contoso.com"
max_message_size = "35MB"
max_recipients = 500
reject_single_label_domains = true
allowed_networks = ["127.0.0.0/8", "::1/128"]
require_auth = false
bare_newlines = "reject"
long_lines = "encode"
tls_cert = "certs/mailgate.crt"
tls_key  = "certs/mailgate.key"
max_connections = 1000
idle_timeout = "5m"
[store]
path = "data/mailgate.redb"
min_free_space = "200MB"
[history]
retention_days = 30
[status]
listen = "127.0.0.1:8525"
[distributor]
enabled = true
default_provider = "office365"
retry_initial = "1m"
retry_max = "30m"
give_up_after = "2d"
[rewrite]
default_sender = "noreply@contoso.com"
reply_to_original = false
[[provider]]
name = "outbox"
kind = "eml"
directory = "outbox"
[[provider]]
name = "office365"
kind = "smtp"
host = "smtp.office365.com"
port = 587
tls = "starttls"
username = "relay@contoso.com"
password_file = "/etc/mailgate/office365.pass"
per_minute_limit = 30
per_day_recipient_limit = 10000
max_connections = 4
[provider.oauth2]
tenant_id = "t"
client_id = "c"
client_secret_file = "s"
scope = "https://outlook.office365.com/.default"
[[provider]]
name = "exchange"
kind = "graph"
[provider.oauth2]
tenant_id = "t"
client_id = "c"
certificate_file = "c.pem"
private_key_file = "k.pem"
[[user]]
name = "erp"
login = "erp"
password_hash = "$argon2id$..."
email = "erp@contoso.com"
sender_email = "billing@contoso.com"
provider = "office365"
match_senders = ["noreply@erp.local", "*@legacy.local"]
send_mode = "on-behalf-of"
"#;
    let c = Config::parse(text, Path::new("t")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.smtp.listen_addrs().len(), 2);
    assert_eq!(c.smtp.bare_newlines, BareNewlines::Reject);
    assert_eq!(c.provider.len(), 3);
    assert_eq!(c.provider[1].smtp().unwrap().tls, TlsMode::Starttls);
    assert_eq!(c.user[0].send_mode, SendMode::OnBehalfOf);
    assert_eq!(c.provider[2].kind(), ProviderKind::Graph);
}

#[test]
fn retention_zero_means_thirty_days() {
    let c = Config::parse(
        &format!("{OUTBOX}[history]\nretention_days = 0\n"),
        Path::new("t"),
    )
    .unwrap();
    assert_eq!(c.history.retention(), Duration::from_secs(30 * 86_400));
    let c = Config::parse(
        &format!("{OUTBOX}[history]\nretention_days = 7\n"),
        Path::new("t"),
    )
    .unwrap();
    assert_eq!(c.history.retention(), Duration::from_secs(7 * 86_400));
}

/// What a reload reports as needing a restart: start-only keys by name (the fleet too),
/// never a live one, and a moved line is no change.
#[test]
fn start_only_keys_are_named_and_live_ones_are_not() {
    let changed = |a: &str, b: &str| -> Vec<&'static str> {
        let a = Config::parse(&format!("{OUTBOX}{a}"), Path::new("a.toml")).unwrap();
        let b = Config::parse(&format!("{OUTBOX}{b}"), Path::new("b.toml")).unwrap();
        a.start_only()
            .into_iter()
            .zip(b.start_only())
            .filter(|(x, y)| x.1 != y.1)
            .map(|(x, _)| x.0)
            .collect()
    };
    assert_eq!(
        changed(
            "[fleet]\nredis_url = \"redis://127.0.0.1:6379/0\"\n",
            "[fleet]\nredis_url = \"redis://127.0.0.1:6380/0\"\n"
        ),
        ["fleet"]
    );
    assert_eq!(
        changed(
            "[smtp]\nidle_timeout = \"1m\"\nmax_recipients = 5\n",
            "[smtp]\nidle_timeout = \"2m\"\nmax_recipients = 9\n"
        ),
        ["smtp.idle_timeout"]
    );
    assert_eq!(
        changed(
            "[smtp]\nlisten = [\"127.0.0.1:2525\"]\n",
            "\n\n[smtp]\nlisten = [\"127.0.0.1:2525\"]\n"
        ),
        Vec::<&str>::new()
    );
}

#[test]
fn each_kind_reads_only_its_own_keys_and_every_mistake_keeps_its_place() {
    // A key of another kind is refused at its line, naming the keys this kind has.
    let e = errors(
        "[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"o\"\nhost = \"mx\"\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:5:1: unknown field `host` for kind = \"eml\""),
        "{e:?}"
    );
    assert!(
        e[0].contains("`directory`") && e[0].contains("`per_minute_limit`"),
        "{e:?}"
    );
    // A kind's own value of the wrong type, a common one, and an unknown kind: each at
    // its value, all in one run, whichever order the keys come in.
    let e = errors(
        "[[provider]]\nport = 99999\nname = \"a\"\nkind = \"smtp\"\nhost = \"mx\"\n\
         [[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"o\"\nmax_connections = \"4\"\n\
         [[provider]]\nname = \"c\"\nkind = \"smtps\"\n",
    );
    // (With the bad kind's line set aside, its table has no kind: said at the table.)
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].starts_with("t.toml:2:8: "), "{e:?}");
    assert!(e[1].starts_with("t.toml:10:19: "), "{e:?}");
    assert!(
        e[2].starts_with("t.toml:11:1: missing field `kind`"),
        "{e:?}"
    );
    assert!(
        e[3].starts_with("t.toml:13:8: unknown variant `smtps`"),
        "{e:?}"
    );
    // Missing name or kind: at the table.
    let e = errors("[[provider]]\nname = \"a\"\ndirectory = \"o\"\n");
    assert!(e[0].contains("missing field `kind`"), "{e:?}");
    // The tag picks the arm, and the arm holds the kind's settings.
    let c = Config::parse(
        "[[provider]]\ndirectory = \"o\"\nname = \"outbox\"\nkind = \"eml\"\nper_minute_limit = 7\n",
        Path::new("t"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&c.provider[0].settings, KindSettings::Eml(s) if s.directory.as_deref() == Some(Path::new("o")))
    );
    assert_eq!(c.provider[0].limits(), (7, 0));
}
