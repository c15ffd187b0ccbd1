//! The administrator's first hour, against the binary: it runs anywhere on its built-in
//! default, it says which configuration it read, and `test-email` works out of the box.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{DaemonProcess, Smtp, bin, queued_id};

fn in_dir(dir: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir).env_remove("MAILGATE_CONFIG");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_anywhere_on_its_built_in_default() {
    // The only test that runs the built-in default (127.0.0.1:2525 and 8525).
    if std::path::Path::new("/etc/mailgate/mailgate.toml").exists() {
        eprintln!("SKIPPED: /etc/mailgate/mailgate.toml exists on this machine and would be read");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // check-config says what it read.
    let o = in_dir(dir.path()).arg("check-config").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "the built-in default configuration: ok\n"
    );

    let mut child = in_dir(dir.path())
        .args(["--log-format", "json", "serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut d = DaemonProcess::adopt(child.stderr.take().unwrap(), child);
    let line = d.wait_message_starting("configuration", Duration::from_secs(10));
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("built-in default"),
        "{line}"
    );
    d.wait_log(
        |v| v["message"] == "smtp listening" && v["addr"] == "127.0.0.1:2525",
        Duration::from_secs(10),
    );
    let (mut s, greeting) = Smtp::connect("127.0.0.1:2525".parse().unwrap())
        .await
        .unwrap();
    assert!(
        greeting.starts_with("220 localhost ESMTP mailgate"),
        "{greeting}"
    );
    s.cmd("EHLO erp01").await.unwrap();
    let r = s
        .send(
            "erp@erp.local",
            &["a@contoso.com"],
            b"Subject: first\r\n\r\nhello\r\n",
        )
        .await
        .unwrap();
    let id = queued_id(&r).unwrap_or_else(|| panic!("{r}"));
    d.wait_sent(std::slice::from_ref(&id), Duration::from_secs(30));
    let eml = std::fs::read_to_string(dir.path().join("outbox").join(format!("{id}.eml"))).unwrap();
    assert!(eml.contains("hello"));
    assert!(
        dir.path().join("data/mailgate.redb").exists(),
        "store under data/"
    );

    // test-email works on the shipped configuration, first try.
    let o = in_dir(dir.path())
        .args(["test-email", "--to", "you@example.com"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("status: sent"));

    // SIGHUP on the built-in default: refused, saying why and what to do.
    let ok = Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let line = d.wait_log(
        |v| v["message"] == "reload refused; the running configuration stays",
        Duration::from_secs(10),
    );
    let why = line["error"].as_str().unwrap();
    assert!(
        why.contains("built-in default") && why.contains("mailgate default-config >"),
        "{line}"
    );
    assert!(!why.contains(":1:1"), "{line}");
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn a_named_configuration_that_does_not_exist_is_an_error_not_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let o = in_dir(dir.path())
        .args(["--config", "nope.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .starts_with("nope.toml:1:1: cannot read the configuration")
    );
    let o = in_dir(dir.path())
        .env("MAILGATE_CONFIG", "gone.toml")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("gone.toml:1:1:"));
    // ./config/mailgate.toml is found before the built-in default.
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/mailgate.toml"), "[smtp]\nlisten = [\"127.0.0.1:2599\"]\n[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"o\"\n").unwrap();
    let o = in_dir(dir.path()).arg("check-config").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "config/mailgate.toml: ok\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_email_sends_as_the_providers_username() {
    let up = common::upstream::Upstream::start(common::upstream::Script::default()).await;
    let env = common::TestEnv::new("", "");
    let status = common::free_port();
    env.write_config(
        "",
        &format!(
            "{}\
             [distributor]\ndefault_provider = \"o365\"\n",
            common::plain_smtp("o365", up.addr.port())
        ),
    );
    env.edit_config(
        "[status]\nlisten = \"127.0.0.1:0\"",
        &format!("[status]\nlisten = \"127.0.0.1:{status}\""),
    );
    let test_email = |cfg: String| async move {
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .args(["--config", &cfg, "test-email", "--to", "you@example.com"])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let cfg = env.config_path.to_str().unwrap().to_string();
    let mut d = DaemonProcess::start(&env.config_path);
    let o = test_email(cfg.clone()).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let got = up.wait_for(1).await;
    // No username: the sender is an address of our own that the daemon accepts.
    assert_eq!(got[0].from, "mailgate@mailgate.test");
    assert_eq!(d.terminate().code(), Some(0));

    // With a username that is an address: the mailbox the account may send as.
    up.set_script(common::upstream::Script {
        offer_auth: true,
        credentials: Some(("relay@contoso.com".into(), "pw".into())),
        ..common::upstream::Script::default()
    });
    env.edit_config(
        "tls = \"none\"\n",
        "tls = \"none\"\nusername = \"relay@contoso.com\"\npassword = \"pw\"\n",
    );
    let mut d = DaemonProcess::start(&env.config_path);
    let o = test_email(cfg.clone()).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let got = up.wait_for(2).await;
    assert_eq!(got[1].from, "relay@contoso.com");
    assert_eq!(got[1].auth_user.as_deref(), Some("relay@contoso.com"));
    assert_eq!(d.terminate().code(), Some(0));
}

/// `check-config` on a file holding `text`, which it must refuse (exit 2): the
/// directory (kept while the test runs), the file's path and what it said.
fn refused_by_check_config(text: &str) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_string();
    let o = Command::new(bin())
        .args(["--config", &p, "check-config"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (dir, p, err)
}

#[test]
fn check_config_reports_three_different_mistakes_at_their_keys() {
    let (_dir, p, err) = refused_by_check_config(
        "[smtp]\nlisten = [\"127.0.0.1:2525\"]\nmax_recipents = 5\nmax_connections = \"many\"\n\
         [distributor]\nretry_initial = \"1h\"\nretry_max = \"30m\"\n\
         [[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"o\"\n",
    );
    let p = p.as_str();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!("{p}:3:1: unknown field `max_recipents`")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{p}:4:19: ")) && lines[1].contains("invalid type"),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!("{p}:6:1: distributor.retry_initial")),
        "{err}"
    );
}

#[test]
fn the_human_log_has_no_colour_codes_in_a_pipe() {
    let env = common::TestEnv::new("", "");
    let mut child = Command::new(bin())
        .args(["--config", env.config_path.to_str().unwrap(), "serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref().take(20) {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("status listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("status listening"), "{seen}");
    assert!(
        !seen.contains('\u{1b}'),
        "ANSI escape codes in a pipe: {seen:?}"
    );
}

#[test]
fn a_misspelt_key_and_a_bare_number_for_a_duration_say_what_was_meant() {
    let (_dir, p, err) = refused_by_check_config(
        "[distributor]\nretry_max = 30\n\
         [[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"o\"\nper_minut_limit = 30\n",
    );
    let p = p.as_str();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with(&format!("{p}:2:")), "{err}");
    assert!(
        lines[0].contains("written in quotes with its unit: \"30s\", \"30m\" or \"30h\", not 30"),
        "{err}"
    );
    assert!(!lines[0].contains("expected a string"), "{err}");
    assert!(
        lines[1].starts_with(&format!("{p}:7:1: unknown field `per_minut_limit`")),
        "{err}"
    );
    assert!(
        lines[1].ends_with("did you mean `per_minute_limit`?"),
        "{err}"
    );
}
