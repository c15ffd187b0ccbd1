//! The CLI as an administrator runs it: the built binary as a child process, its output
//! and its exit codes.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{DaemonProcess, Smtp, TestEnv, bin, queued_id};

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
    assert!(
        stderr(&o).starts_with(&format!("{path}:3:1: unknown field `max_size`")),
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
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "127.0.0.1:0\"\n[[provider",
        &format!("127.0.0.1:{port}\"\n[[provider"),
    );
    std::fs::write(&env.config_path, text).unwrap();
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
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "[status]\nlisten = \"127.0.0.1:0\"",
        &format!("[status]\nlisten = \"{}\"", daemon.status),
    );
    std::fs::write(&env.config_path, text).unwrap();
    let (mut s, _) = Smtp::connect(daemon.smtp).await.unwrap();
    s.cmd("EHLO erp01").await.unwrap();
    let id = queued_id(
        &s.send(
            "app@erp.local",
            &["a@contoso.com"],
            b"Subject: Invoice 1001\r\n\r\nx\r\n",
        )
        .await
        .unwrap(),
    )
    .unwrap();
    daemon.wait_sent(std::slice::from_ref(&id), Duration::from_secs(30));
    let path = env.config_path.to_str().unwrap().to_string();

    let o = run(&["--config", &path, "show", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("Message {id}\n  status:          sent\n")),
        "{out}"
    );
    assert!(out.contains("  subject:         Invoice 1001\n"), "{out}");
    assert!(out.contains("  sent     a@contoso.com"), "{out}");

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
    assert_eq!(o.status.code(), Some(1));
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
    use common::upstream::{Script, TestCa, Upstream, server_tls};
    let ca = TestCa::new("cli CA");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let up = Upstream::start(Script {
        starttls: true,
        tls: Some(server_tls(&cert, &key)),
        offer_auth: true,
        credentials: Some(("relay@contoso.com".into(), "right-one".into())),
        ..Script::default()
    })
    .await;
    let env = TestEnv::new("", "");
    std::fs::write(env.dir.path().join("ca.pem"), &ca.pem).unwrap();
    let provider = |secret: &str| {
        format!(
            "[[provider]]\nname = \"up\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\nca_file = \"{}\"\nusername = \"relay@contoso.com\"\n{secret}\n",
            up.addr.port(),
            env.dir.path().join("ca.pem").display()
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
    assert!(out.contains("  diagnosis: auth-failed\n"), "{out}");
    assert!(
        out.contains("  fix:       Check username and the password"),
        "{out}"
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
    assert!(out.contains("STARTTLS, authenticated"), "{out}");
    assert!(out.contains("outbox: ok: "), "{out}");

    let o = run_async(args(&["password", "clear", "--provider", "up"]), None).await;
    assert_eq!(o.status.code(), Some(0));
    let o = run_async(args(&["verify", "--provider", "up"]), None).await;
    assert_eq!(o.status.code(), Some(1));
    let o = run_async(args(&["password", "set", "--provider", "nope"]), Some("x")).await;
    assert_eq!(o.status.code(), Some(2));
}
