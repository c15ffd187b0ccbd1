//! The CLI as an administrator runs it: the built binary as a child process, its output
//! and its exit codes.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::submit_short;
use common::{DaemonProcess, TestEnv, bin};

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run mailgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_accepts_the_shipped_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mailgate.toml");
    let o = run(&["--config", path, "check-config"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).ends_with(": ok\n"));
}

#[test]
fn check_config_reports_every_problem_with_line_and_column() {
    let env = TestEnv::new(
        "",
        "[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"x\"\n\n[distributor]\ndefault_provider = \"nope\"\n",
    );
    let path = env.config_path.to_str().unwrap();
    let o = run(&["--config", path, "check-config"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{path}:17:8: "))
                && l.contains("duplicate provider name \"outbox\"")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{path}:22:20: "))
                && l.contains("default_provider \"nope\"")),
        "{err}"
    );

    std::fs::write(
        &env.config_path,
        "[smtp]\nlisten = [\"127.0.0.1:2525\"]\nmax_size = 5\n",
    )
    .unwrap();
    let o = run(&["--config", path, "check-config"]);
    assert_eq!(o.status.code(), Some(2));
    // Both problems, in the order of the file: the default provider (not in the file)
    // names no provider, and the unknown key.
    assert!(
        stderr(&o).contains(&format!("\n{path}:3:1: unknown field `max_size`")),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("names no [[provider]]"),
        "{}",
        stderr(&o)
    );

    // The environment variable names the file too.
    let o = Command::new(bin())
        .env("MAILGATE_CONFIG", path)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn admin_commands_say_when_the_daemon_is_not_running() {
    let env = TestEnv::new("", "");
    // A port nobody listens on: bind one, read it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.edit_config(
        "127.0.0.1:0\"\n[[provider",
        &format!("127.0.0.1:{port}\"\n[[provider"),
    );
    let path = env.config_path.to_str().unwrap();
    for args in [vec!["history"], vec!["show", "01ABC"]] {
        let mut all = vec!["--config", path];
        all.extend(args);
        let o = run(&all);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            stderr(&o),
            format!("mailgate is not running at 127.0.0.1:{port}\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_and_history_against_a_running_daemon() {
    let env = TestEnv::new("", "");
    let mut daemon = DaemonProcess::start(&env.config_path);
    // The CLI reads the same file: point it at the port the daemon actually bound.
    env.edit_config(
        "[status]\nlisten = \"127.0.0.1:0\"",
        &format!("[status]\nlisten = \"{}\"", daemon.status),
    );
    let id = submit_short(
        daemon.smtp,
        "app@erp.local",
        "a@contoso.com",
        "Invoice 1001",
    )
    .await;
    daemon.wait_sent(std::slice::from_ref(&id), Duration::from_secs(30));
    let path = env.config_path.to_str().unwrap().to_string();

    let o = run(&["--config", &path, "show", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("Message {id}\n  status:          sent\n")),
        "{out}"
    );
    common::assert_has(
        &out,
        &[
            "  subject:         Invoice 1001\n",
            "  sent     a@contoso.com",
        ],
    );

    let o = run(&["--config", &path, "show", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["status"], "sent");

    let o = run(&["--config", &path, "history"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let row = out.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&id) && row.contains(" sent ") && row.ends_with("Invoice 1001"),
        "{out}"
    );

    let o = run(&["--config", &path, "history", "--json", "--status", "failed"]);
    assert_eq!(stdout(&o).trim(), "[]");
    let o = run(&["--config", &path, "history", "--status", "bogus"]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(stderr(&o).contains("unknown status"), "{}", stderr(&o));

    let o = run(&["--config", &path, "show", "01NOSUCHMESSAGE"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no message 01NOSUCHMESSAGE"));

    // The daemon owns the store: a second daemon on the same store refuses to start.
    let second = Command::new(bin())
        .args(["--config", &path, "serve"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("in use by another process"),
        "{}",
        stderr(&second)
    );

    assert_eq!(daemon.terminate().code(), Some(0));
}

async fn run_async(args: Vec<String>, stdin: Option<&'static str>) -> Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(bin())
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_stored_passwords() {
    use common::upstream::{Script, TestCa, Upstream};
    let ca = TestCa::new("cli CA");
    let up = Upstream::start(Script {
        offer_auth: true,
        credentials: Some(("relay@contoso.com".into(), "right-one".into())),
        ..Script::over_starttls(&ca)
    })
    .await;
    let env = TestEnv::new("", "");
    std::fs::write(env.dir.path().join("ca.pem"), &ca.pem).unwrap();
    let provider = |secret: &str| {
        format!(
            "{}username = \"relay@contoso.com\"\n{secret}\n",
            common::tls_smtp("up", up.addr.port(), &env.dir.path().join("ca.pem"))
        )
    };
    let path = env.config_path.to_str().unwrap().to_string();
    let args = |a: &[&str]| -> Vec<String> {
        let mut v = vec!["--config".to_string(), path.clone()];
        v.extend(a.iter().map(|s| s.to_string()));
        v
    };

    env.write_config("", &provider("password = \"wrong-one\""));
    let o = run_async(args(&["verify", "--provider", "up"]), None).await;
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.starts_with("up: FAILED: 535 5.7.8"), "{out}");
    common::assert_has(
        &out,
        &[
            "  diagnosis: auth-failed\n",
            "  fix:       Check the provider's username and its password",
        ],
    );
    assert!(
        !out.contains('`'),
        "a fix in a terminal has no literal backticks: {out}"
    );
    assert!(!out.contains("wrong-one"), "the password is never printed");

    // No password in the config: store one, encrypted, from stdin.
    env.write_config("", &provider(""));
    let o = run_async(args(&["verify", "--provider", "up"]), None).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("diagnosis: provider-config"),
        "{}",
        stdout(&o)
    );
    let o = run_async(
        args(&["password", "set", "--provider", "up"]),
        Some("right-one\n"),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let secrets = std::fs::read_to_string(env.dir.path().join("data/secrets.json")).unwrap();
    assert!(!secrets.contains("right-one"));
    let o = run_async(args(&["verify"]), None).await;
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("up: ok: 127.0.0.1:"), "{out}");
    // What an administrator reads: TLS version and cipher, the certificate, the AUTH
    // mechanisms offered and the one used; no Rust debug output.
    common::assert_has(
        &out,
        &[
            "connected; STARTTLS, TLS 1.",
            "certificate subject \"CN=",
            "AUTH offered: PLAIN LOGIN; signed in as relay@contoso.com with PLAIN",
        ],
    );
    assert!(
        !out.contains('{') && !out.contains("Authentication("),
        "{out}"
    );
    assert!(out.contains("outbox: ok: "), "{out}");

    let o = run_async(args(&["password", "clear", "--provider", "up"]), None).await;
    assert_eq!(o.status.code(), Some(0));
    let o = run_async(args(&["verify", "--provider", "up"]), None).await;
    assert_eq!(o.status.code(), Some(1));
    let o = run_async(args(&["password", "set", "--provider", "nope"]), Some("x")).await;
    assert_eq!(o.status.code(), Some(2));
}

/// Points the config's status.listen at the port the daemon bound (the CLI reads it).
fn point_cli_at(env: &TestEnv, daemon: &DaemonProcess) {
    env.edit_config(
        "[status]\nlisten = \"127.0.0.1:0\"",
        &format!("[status]\nlisten = \"{}\"", daemon.status),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_command() {
    use common::upstream::Upstream;
    let refusing = Upstream::replying(
        "mail",
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
    )
    .await;
    let env = TestEnv::new(
        "",
        &format!(
            "{}\
             [[user]]\nname = \"erp\"\nemail = \"erp@contoso.com\"\nsender_email = \"billing@contoso.com\"\n",
            common::plain_smtp("strict", refusing.addr.port())
        ),
    );
    let mut daemon = DaemonProcess::start(&env.config_path);
    point_cli_at(&env, &daemon);
    let path = env.config_path.to_str().unwrap().to_string();
    let cmd = |a: &[&str]| {
        let mut v = vec!["--config".to_string(), path.clone()];
        v.extend(a.iter().map(|s| s.to_string()));
        v
    };

    // send, with an attachment, as a user.
    let attachment = env.dir.path().join("invoice.pdf");
    std::fs::write(&attachment, b"%PDF-1.4 invoice").unwrap();
    let o = run_async(
        cmd(&[
            "send",
            "--to",
            "a@contoso.com",
            "--cc",
            "b@contoso.com",
            "--bcc",
            "c@contoso.com",
            "--subject",
            "Invoice 1001",
            "--body",
            "Please pay.",
            "--attach",
            attachment.to_str().unwrap(),
            "--as",
            "erp",
        ]),
        None,
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = stdout(&o)
        .trim()
        .strip_prefix("queued as ")
        .unwrap()
        .to_string();
    daemon.wait_sent(std::slice::from_ref(&id), Duration::from_secs(30));
    let eml = String::from_utf8(env.eml(&id)).unwrap();
    assert!(eml.contains("\r\nFrom: billing@contoso.com\r\n"), "{eml}");
    assert!(eml.contains("Subject: Invoice 1001"));
    assert!(eml.contains("filename=\"invoice.pdf\""));
    assert!(!eml.contains("c@contoso.com"), "Bcc is not in the headers");
    let o = run_async(cmd(&["show", &id, "--json"]), None).await;
    let rec: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rec["recipients"].as_array().unwrap().len(), 3);
    assert_eq!(rec["user"], "erp");

    // send --eml writes the message instead.
    let out = env.dir.path().join("draft.eml");
    let o = run_async(
        cmd(&[
            "send",
            "--to",
            "a@contoso.com",
            "--subject",
            "Draft",
            "--body",
            "x",
            "--eml",
            out.to_str().unwrap(),
        ]),
        None,
    )
    .await;
    assert_eq!(o.status.code(), Some(0));
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("Subject: Draft")
    );

    // export: the stored bytes.
    let o = run_async(cmd(&["export", &id]), None).await;
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout, env.eml(&id));

    // test-email: sent through the outbox -> 0; through the refusing upstream -> 1 + diagnosis.
    let o = run_async(
        cmd(&["test-email", "--to", "me@contoso.com", "--wait", "20s"]),
        None,
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("status: sent"));
    let o = run_async(
        cmd(&[
            "test-email",
            "--to",
            "me@contoso.com",
            "--provider",
            "strict",
            "--wait",
            "20s",
        ]),
        None,
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    common::assert_has(
        &out,
        &[
            "status: deferred",
            "diagnosis: send-as-denied",
            "fix: Grant the relay account Send As",
        ],
    );
    let held = out
        .lines()
        .next()
        .unwrap()
        .strip_prefix("queued as ")
        .unwrap()
        .to_string();

    // queue, retry, retry --all.
    let o = run_async(cmd(&["queue"]), None).await;
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(out.contains("deferred: 1\n"), "{out}");
    assert!(out.contains(&format!("oldest waiting: {held}")), "{out}");
    let o = run_async(cmd(&["retry", &held]), None).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    daemon.wait_log(
        |v| v["message"] == "delivery" && v["id"] == held.as_str() && v["deferrals"] == 2,
        Duration::from_secs(30),
    );
    let o = run_async(cmd(&["retry", "--all"]), None).await;
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).trim(), "1 deferred message queued again");
    let o = run_async(cmd(&["retry", &id]), None).await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "a sent message has nothing to retry"
    );

    // pause / resume.
    let o = run_async(cmd(&["pause"]), None).await;
    assert_eq!(o.status.code(), Some(0));
    let o = run_async(
        cmd(&[
            "send",
            "--to",
            "a@contoso.com",
            "--subject",
            "while paused",
            "--body",
            "x",
        ]),
        None,
    )
    .await;
    let paused_id = stdout(&o)
        .trim()
        .strip_prefix("queued as ")
        .unwrap()
        .to_string();
    let o = run_async(cmd(&["queue"]), None).await;
    assert!(
        stdout(&o).contains("the distributor is paused"),
        "{}",
        stdout(&o)
    );
    let o = run_async(cmd(&["resume"]), None).await;
    assert_eq!(o.status.code(), Some(0));
    daemon.wait_sent(std::slice::from_ref(&paused_id), Duration::from_secs(30));
    assert_eq!(daemon.terminate().code(), Some(0));

    // Every command that needs the daemon says so, in one line, exit 1.
    for args in [
        vec![
            "send",
            "--to",
            "a@contoso.com",
            "--subject",
            "s",
            "--body",
            "b",
        ],
        vec!["test-email", "--to", "a@contoso.com"],
        vec!["export", &id],
        vec!["retry", &id],
        vec!["retry", "--all"],
        vec!["queue"],
        vec!["pause"],
        vec!["resume"],
        vec!["history"],
        vec!["show", &id],
    ] {
        let o = run_async(cmd(&args), None).await;
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&o),
            format!("mailgate is not running at {}\n", daemon.status),
            "{args:?}"
        );
    }
}
