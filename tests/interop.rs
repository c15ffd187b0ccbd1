//! Interoperability with clients nobody on the project wrote: swaks and Python's smtplib
//! (plus a pipelined session from Python) submit to the built binary; the outbox must
//! hold what they sent. `.ci/run` installs swaks; python3 is on the machine.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{DaemonProcess, TestEnv, queued_id};

const WAIT: Duration = Duration::from_secs(30);

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: run .ci/run (it installs the test tools) or install {name}"
    );
    Command::new(name)
}

fn id_from_swaks(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.contains("OK queued as"))
        .unwrap_or_else(|| panic!("no 250 in swaks output:\n{out}"));
    line.rsplit(' ').next().unwrap().trim().to_string()
}

#[test]
fn swaks_plain_and_pipelined() {
    let env = TestEnv::new("", "");
    let mut daemon = DaemonProcess::start(&env.config_path);
    let port = daemon.smtp.port().to_string();
    let mut ids = Vec::new();
    for (token, extra) in [("SWAKS-PLAIN", None), ("SWAKS-PIPE", Some("--pipeline"))] {
        let mut cmd = tool("swaks");
        cmd.args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--helo",
            "swaks.test",
            "--from",
            "app@erp.local",
            "--to",
            "a@contoso.com,b@contoso.com",
            "--header",
            &format!("Subject: {token}"),
            "--body",
            &format!("{token}\n.dot line\nend"),
        ]);
        if let Some(e) = extra {
            cmd.arg(e);
        }
        let o = cmd.output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "swaks failed:\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if extra.is_some() {
            assert!(out.contains("PIPELINING"), "{out}");
        }
        ids.push((token, id_from_swaks(&out)));
    }
    daemon.wait_sent(
        &ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
        WAIT,
    );
    for (token, id) in ids {
        let eml = String::from_utf8(env.eml(&id)).unwrap();
        assert!(eml.contains(&format!("\r\nSubject: {token}\r\n")), "{eml}");
        assert!(
            eml.contains(&format!("\r\n\r\n{token}\r\n.dot line\r\nend\r\n")),
            "{eml}"
        );
        assert!(
            eml.starts_with("Received: from swaks.test (127.0.0.1)"),
            "{eml}"
        );
    }
}

#[test]
fn python_smtplib_and_a_pipelined_session() {
    let env = TestEnv::new("", "");
    let mut daemon = DaemonProcess::start(&env.config_path);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/submit.py");
    let mut results = Vec::new();
    for mode in ["smtplib", "pipelined"] {
        let o = tool("python3")
            .args([script, &daemon.smtp.port().to_string(), mode])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for line in String::from_utf8(o.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["code"], 250, "{v}");
            let id = queued_id(&format!("250 {}", v["reply"].as_str().unwrap())).unwrap();
            results.push((v, id));
        }
    }
    assert_eq!(results.len(), 4);
    let ids: Vec<String> = results.iter().map(|(_, id)| id.clone()).collect();
    daemon.wait_sent(&ids, WAIT);
    for (v, id) in &results {
        let token = v["token"].as_str().unwrap();
        let eml = String::from_utf8(env.eml(id)).unwrap();
        if token.starts_with("PY-") {
            // smtplib dot-stuffs; mailgate must have removed it again.
            assert!(
                eml.contains(&format!("{token}\r\n.line starting with a dot\r\n")),
                "{eml}"
            );
            assert!(eml.contains("filename=\"scan.pdf\""), "{eml}");
        } else {
            assert!(
                eml.contains(&format!("\r\n\r\n{token}\r\n.dotted\r\n")),
                "{eml}"
            );
            let all: Vec<&str> = v["all"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            assert_eq!(
                &all[..3],
                [
                    "250 2.1.0 Sender OK",
                    "250 2.1.5 Recipient OK",
                    "354 End data with <CR><LF>.<CR><LF>"
                ]
            );
        }
    }
    // The record decodes the RFC 2047 subject smtplib wrote.
    let (_, id) = results.iter().find(|(v, _)| v["token"] == "PY-1").unwrap();
    let status = daemon.status;
    let rec: serde_json::Value =
        reqwest::blocking_get(&format!("http://{status}/api/messages/{id}"));
    assert_eq!(rec["subject"], "Grüße aus Köln");
    assert_eq!(rec["recipients"].as_array().unwrap().len(), 2);
}

mod reqwest {
    /// A tiny blocking GET for a test without an async runtime.
    pub fn blocking_get(url: &str) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { ::reqwest::get(url).await.unwrap().json().await.unwrap() })
    }
}
