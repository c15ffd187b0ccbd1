//! Local trust (SPEC "Trust boundaries"), each boundary written as the attack a hostile
//! local user makes: the maildrop is writable by everyone, so what is in it is a
//! stranger's. The daemon as it runs (the binary), real files, real sockets.

mod common;

use common::Fetch;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{DaemonProcess, TestEnv};
use tokio::io::AsyncBufReadExt;

use common::WAIT;
use common::submit_short;

/// The daemon answers SMTP (its greeting) and `/healthz` within a second.
async fn answers_within_a_second(d: &DaemonProcess) {
    let greeting = tokio::time::timeout(Duration::from_secs(1), async {
        let s = tokio::net::TcpStream::connect(d.smtp).await.unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(s)
            .read_line(&mut line)
            .await
            .unwrap();
        line
    })
    .await
    .expect("no SMTP greeting within 1 s");
    assert!(greeting.starts_with("220 "), "{greeting}");
    let health = tokio::time::timeout(
        Duration::from_secs(1),
        common::get(format!("http://{}/healthz", d.status)),
    )
    .await
    .expect("no /healthz within 1 s")
    .unwrap();
    assert_eq!(health.status(), 200);
}

/// Drops a well-formed file the way the sendmail door does, so that once it is taken
/// in, every file named before it has been looked at.
fn drop_good(dir: &Path, subject: &str) {
    mailgate::maildrop::write(
        dir,
        &mailgate::maildrop::Envelope {
            from: "app@example.com".into(),
            rcpts: vec!["ops@example.com".into()],
            user: None,
        },
        format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes(),
    )
    .unwrap();
}

fn envelope_file(dir: &Path, name: &str, envelope: &serde_json::Value, body: &[u8]) {
    let mut bytes = envelope.to_string().into_bytes();
    bytes.push(b'\n');
    bytes.extend_from_slice(body);
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A FIFO, a symbolic link to /dev/zero, a 1 GB sparse file and a directory, each named
/// like a maildrop file: the daemon never blocks on one (SMTP and /healthz answer within
/// a second throughout), reads none of them whole, and moves each to `bad/` (0700) with
/// a log line; a good file after them is taken in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_maildrop_files_never_stall_the_daemon_and_go_to_bad() {
    let env = TestEnv::new("", "");
    let mut d = DaemonProcess::start(&env.config_path);
    let dir = env.dir.path().join("data/maildrop");
    // (the intake made the directory at start)
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dir.join("bad").exists() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fifo = dir.join("00000000000000000000000001.mail");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink("/dev/zero", dir.join("00000000000000000000000002.mail")).unwrap();
    let sparse = std::fs::File::create(dir.join("00000000000000000000000003.mail")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    drop(sparse);
    std::fs::create_dir(dir.join("00000000000000000000000004.mail")).unwrap();
    let rss_before = common::mem(d.child.id(), "VmRSS");
    drop_good(&dir, "after the hostile ones");
    // Throughout the intake, the daemon answers.
    let deadline = Instant::now() + WAIT;
    loop {
        answers_within_a_second(&d).await;
        d.drain();
        if d.seen.iter().any(|v| v["message"] == "maildrop: taken in") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the good file was never taken in"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answers_within_a_second(&d).await;
    for n in 1..=4 {
        let name = format!("0000000000000000000000000{n}.mail");
        assert!(
            std::fs::symlink_metadata(dir.join("bad").join(&name)).is_ok(),
            "{name} not in bad/"
        );
        assert!(
            std::fs::symlink_metadata(dir.join(&name)).is_err(),
            "{name} still there"
        );
    }
    let aside: Vec<&serde_json::Value> = d
        .seen
        .iter()
        .filter(|v| v["message"] == "maildrop: a file cannot be taken in; it was moved aside")
        .collect();
    assert_eq!(aside.len(), 4, "{aside:#?}");
    let whys: Vec<&str> = aside.iter().map(|v| v["why"].as_str().unwrap()).collect();
    assert!(whys.contains(&"not a regular file"), "{whys:?}");
    assert!(whys.contains(&"a symbolic link, not a file"), "{whys:?}");
    assert!(
        whys.iter()
            .any(|w| w.contains("more than smtp.max_message_size")),
        "{whys:?}"
    );
    let mode = std::fs::metadata(dir.join("bad"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    // Nothing was read whole: not the gigabyte, not /dev/zero.
    let rss_after = common::mem(d.child.id(), "VmRSS");
    assert!(
        rss_after < rss_before + (64 << 20),
        "{rss_before} -> {rss_after}"
    );
    assert_eq!(d.terminate().code(), Some(0));
}

/// What a maildrop file says about who sent it is not believed, and its envelope gets
/// the SMTP door's policy: a file claiming `user = "root"` owned by `nobody` is recorded
/// as `local:nobody`; recipients with CRLF (a header injection), a single-label domain,
/// something that is no address, or more than `max_recipients` send the file to `bad/`
/// with one log line each, and nothing of them reaches a message or a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maildrop_file_chooses_neither_its_user_nor_its_policy() {
    let env = TestEnv::new("max_recipients = 50", "");
    let mut d = DaemonProcess::start(&env.config_path);
    let dir = env.dir.path().join("data/maildrop");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dir.join("bad").exists() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bad_envelopes = [
        serde_json::json!({"from": "app@example.com", "rcpts": ["victim@example.com\r\nBcc: all@example.com\r\nX-Injected: yes"]}),
        serde_json::json!({"from": "app@example.com", "rcpts": ["user@contoso"]}),
        serde_json::json!({"from": "app@example.com", "rcpts": ["not an address"]}),
        serde_json::json!({"from": "app@example.com\r\nX-Injected: yes", "rcpts": ["a@example.com"]}),
        serde_json::json!({"from": "app@example.com", "rcpts": (0..51).map(|i| format!("r{i}@example.com")).collect::<Vec<_>>()}),
    ];
    for (i, e) in bad_envelopes.iter().enumerate() {
        envelope_file(
            &dir,
            &format!("0000000000000000000000000{i}.mail"),
            e,
            b"Subject: hostile\r\n\r\nx\r\n",
        );
    }
    // Owned by nobody, claiming root.
    // (made under a name the intake does not take, given to nobody, then named: the
    // intake must never see it still owned by root)
    let claimed = "00000000000000000000000009.mail";
    envelope_file(
        &dir,
        ".tmp-claimed",
        &serde_json::json!({"from": "app@example.com", "rcpts": ["ops@example.com"], "user": "root"}),
        b"Subject: who am I\r\n\r\nx\r\n",
    );
    let nobody = 65534;
    std::process::Command::new("chown")
        .arg(nobody.to_string())
        .arg(dir.join(".tmp-claimed"))
        .status()
        .unwrap();
    std::fs::rename(dir.join(".tmp-claimed"), dir.join(claimed)).unwrap();
    let line = d.wait_log(|v| v["message"] == "maildrop: taken in", WAIT);
    let id = line["id"].as_str().unwrap().to_string();
    let owner = mailgate::unix::user_name(nobody);
    assert_eq!(line["user"], owner.as_str());
    let rec = d.finished(&id).await;
    assert_eq!(rec["client"], format!("local:{owner}").as_str(), "{rec:#}");
    assert_ne!(owner, "root");
    for i in 0..bad_envelopes.len() {
        let name = format!("0000000000000000000000000{i}.mail");
        assert!(dir.join("bad").join(&name).exists(), "{name} not in bad/");
    }
    d.drain();
    let aside: Vec<&serde_json::Value> = d
        .seen
        .iter()
        .filter(|v| v["message"] == "maildrop: a file cannot be taken in; it was moved aside")
        .collect();
    assert_eq!(aside.len(), bad_envelopes.len(), "{aside:#?}");
    for v in &aside {
        let why = v["why"].as_str().unwrap();
        assert!(!why.contains('\r') && !why.contains('\n'), "{why:?}");
    }
    // Nothing hostile reached the outbox.
    let ids = env.outbox_ids();
    assert_eq!(ids, std::slice::from_ref(&id));
    let eml = String::from_utf8(env.eml(&id)).unwrap();
    assert!(!eml.contains("X-Injected"), "{eml}");
    assert_eq!(d.terminate().code(), Some(0));
}

/// A hundred bad `AUTH PLAIN` at once from one address: an attempt counts against its
/// address from the moment it starts, so at most `auth_concurrency` + 3 passwords are
/// verified (measured: the failures logged), every other session gets `421`, and the
/// daemon's memory grows by under 100 MB (argon2 takes 19 MB per verification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_bad_auths_at_once_cost_a_few_verifications() {
    use base64::Engine;
    let env = TestEnv::new(
        "auth_concurrency = 4",
        &common::login_user("erp", "the right one", "erp@example.com"),
    );
    let mut d = DaemonProcess::start(&env.config_path);
    let peak_before = common::mem(d.child.id(), "VmHWM");
    let bad = base64::engine::general_purpose::STANDARD.encode(b"\0erp\0a guess");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (addr, bad) = (d.smtp, bad.clone());
        tasks.spawn(async move {
            let (mut c, _) = common::Smtp::connect(addr).await.unwrap();
            c.cmd("EHLO attacker").await.unwrap();
            c.cmd(&format!("AUTH PLAIN {bad}"))
                .await
                .unwrap_or_default()
        });
    }
    let mut replies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        replies.push(r.unwrap());
    }
    let refused = replies
        .iter()
        .filter(|r| r.starts_with("421 4.7.0"))
        .count();
    let wrong = replies.iter().filter(|r| r.starts_with("535 ")).count();
    assert_eq!(refused + wrong, 100, "{replies:?}");
    assert!(
        (1..=4 + 3).contains(&wrong),
        "{wrong} passwords verified: {replies:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let verified = d.count_logged("AUTH failed");
    assert_eq!(verified, wrong);
    let peak_after = common::mem(d.child.id(), "VmHWM");
    assert!(
        peak_after < peak_before + (100 << 20),
        "{peak_before} -> {peak_after}"
    );
    assert_eq!(d.terminate().code(), Some(0));
}

/// A 30 MB subject: the message goes out whole, the history keeps 998 bytes of it (the
/// last three `...`), so the list in the API and on the page stays under 1 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_megabyte_subject_keeps_the_lists_small() {
    let env = TestEnv::new("", "");
    let mut d = DaemonProcess::start(&env.config_path);
    let mut msg = b"From: app@example.com\r\nTo: ops@example.com\r\nSubject: start".to_vec();
    while msg.len() < 30 << 20 {
        msg.extend_from_slice(
            b"\r\n subject subject subject subject subject subject subject subject",
        );
    }
    msg.extend_from_slice(b"\r\n\r\nbody\r\n");
    let id = common::submit_to(d.smtp, "app@example.com", &["ops@example.com"], &msg).await;
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    let list = common::bytes_at(format!("http://{}/api/messages", d.status)).await;
    assert!(list.len() < 1 << 20, "{} bytes", list.len());
    let records: serde_json::Value = serde_json::from_slice(&list).unwrap();
    let subject = records[0]["subject"].as_str().unwrap();
    assert!(
        subject.len() <= 998 && subject.ends_with("..."),
        "{}",
        subject.len()
    );
    assert!(subject.starts_with("start subject"), "{subject:.40}");
    let page = common::fleet::page_of(&d, common::TEST_TOKEN, "/messages").await;
    assert!(page.contains("start subject"), "the list shows the message");
    assert!(page.len() < 1 << 20, "{} bytes", page.len());
    // The message itself is untouched.
    assert!(env.eml(&id).len() > 30 << 20);
    assert_eq!(d.terminate().code(), Some(0));
}

/// Started under `umask 000`, the daemon still makes every file 0600 or 0640 (the store,
/// an outbox message) and `maildrop/bad` 0700; `check-config` warns about an inline
/// secret in a configuration every local user can read, and about a token file they can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_private_whatever_the_umask() {
    let env = TestEnv::new("", "");
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "umask 000; exec \"$0\" \"$@\"", common::bin()]);
    let mut d = DaemonProcess::start_with(&env.config_path, cmd);
    let id = submit_short(d.smtp, "app@example.com", "ops@example.com", "modes").await;
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let dir = env.dir.path();
    for f in [
        dir.join("data/mailgate.redb"),
        dir.join(format!("outbox/{id}.eml")),
    ] {
        let m = mode(&f);
        assert!(m == 0o600 || m == 0o640, "{} is {m:o}", f.display());
    }
    for entry in std::fs::read_dir(dir.join("data")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            assert_eq!(mode(&p) & 0o007, 0, "{} is {:o}", p.display(), mode(&p));
        }
    }
    assert_eq!(mode(&dir.join("data/maildrop/bad")), 0o700);
    assert_eq!(mode(&dir.join("data/maildrop")), 0o1733);
    assert_eq!(d.terminate().code(), Some(0));

    // check-config: an inline password in a configuration all can read, a token file
    // all can read.
    let token = dir.join("admin.token");
    std::fs::write(&token, "a-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "[status]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[status]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    ) + "[[provider]]\nname = \"m365\"\nkind = \"smtp\"\nhost = \"smtp.office365.com\"\nusername = \"u@contoso.com\"\npassword = \"hunter2\"\n";
    std::fs::write(&env.config_path, text).unwrap();
    std::fs::set_permissions(&env.config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = common::cli(&env, &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("holds a secret inline"), "{out}");
    assert!(
        out.contains("status.token_file") && out.contains("readable by every local user"),
        "{out}"
    );
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "{out}{err}"
    );
    std::fs::set_permissions(&env.config_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, out, _) = common::cli(&env, &["check-config"]);
    assert_eq!(code, 0);
    assert!(!out.contains("warning"), "{out}");
}

/// A web page in the administrator's browser: DNS rebinding (a `Host` that names the
/// attacker's site) gets `421` for the API and the pages; POSTs from another origin
/// (`Origin`, `Sec-Fetch-Site: cross-site`) get `403` and change nothing; an API POST
/// that an HTML form could send (not JSON) gets `415`, one without a body `400`. A name
/// in `status.hostnames` is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_web_page_can_neither_read_nor_act() {
    let env = TestEnv::edited(
        "[status]\nlisten = \"127.0.0.1:0\"\n",
        "[status]\nlisten = \"127.0.0.1:0\"\nhostnames = [\"mailgate01.contoso.local\"]\n",
    );
    let d = DaemonProcess::start(&env.config_path);
    let id = common::submit_to(
        d.smtp,
        "app@example.com",
        &["ops@example.com"],
        b"Subject: private\r\n\r\nsecret body\r\n",
    )
    .await;
    let http = common::http();
    let base = format!("http://{}", d.status);
    let port = d.status.port();
    for path in [
        format!("/api/messages/{id}/eml"),
        "/messages".into(),
        "/".into(),
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .header("host", format!("attacker.example:{port}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 421, "{path}");
        assert!(!r.text().await.unwrap().contains("secret body"));
    }
    http.get(format!("{base}/api/messages/{id}"))
        .header("host", format!("mailgate01.contoso.local:{port}"))
        .answers(200)
        .await;
    http.get(format!("{base}/healthz"))
        .header("host", format!("localhost:{port}"))
        .answers(200)
        .await;

    let paused = || async {
        let s: serde_json::Value = common::json_at(format!("{base}/status")).await;
        s["distributor"]["paused"].as_bool().unwrap()
    };
    for path in [
        "/api/distributor/pause",
        "/api/retry-all",
        "/api/reload",
        "/distributor/pause",
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .header("origin", "https://evil.example")
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let r = http
            .post(format!("{base}{path}"))
            .header("sec-fetch-site", "cross-site")
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    // What an HTML form of another site could send: text/plain, or nothing.
    http.post(format!("{base}/api/distributor/pause"))
        .header("content-type", "text/plain")
        .body("{}")
        .answers(415)
        .await;
    http.post(format!("{base}/api/messages/{id}/cancel"))
        .header("content-type", "application/json")
        .answers(400)
        .await;
    assert!(!paused().await, "nothing was paused");
    let rec = http
        .get(format!("{base}/api/messages/{id}"))
        .fetch::<serde_json::Value>()
        .await;
    assert_ne!(rec["status"], "cancelled");
    // The same POST from the listener's own origin is obeyed.
    http.post(format!("{base}/api/distributor/pause"))
        .header("origin", base.clone())
        .json(&serde_json::json!({}))
        .answers(200)
        .await;
    assert!(paused().await);
}

/// The admin token always exists: without `status.token_file` the daemon makes
/// `admin.token` beside the store (0640) on first start; a local request without it reads
/// no message and changes nothing (`401`), `/healthz` and `/status` stay open on
/// loopback; the CLI (root) reads the token, and a user who cannot read it is told how.
/// A page sign-in lasts `status.session_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_always_exists_and_a_local_user_without_it_gets_nothing() {
    let env = TestEnv::edited(
        "[status]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[status]\nlisten = \"127.0.0.1:{}\"\nsession_ttl = \"2s\"\n",
            common::free_port()
        ),
    );
    let token_path = env.dir.path().join("data/admin.token");
    std::fs::remove_file(&token_path).unwrap();
    let d = DaemonProcess::start(&env.config_path);
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 43, "32 random bytes, base64url: {token}");
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let id = common::submit_to(
        d.smtp,
        "app@example.com",
        &["ops@example.com"],
        b"Subject: private\r\n\r\nsecret body\r\n",
    )
    .await;
    let plain = reqwest::Client::new();
    let base = format!("http://{}", d.status);
    for path in [
        format!("/api/messages/{id}/eml"),
        format!("/api/messages/{id}"),
        "/api/messages".into(),
    ] {
        let r = plain.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(!r.text().await.unwrap().contains("secret body"));
    }
    plain
        .post(format!("{base}/api/send"))
        .json(&serde_json::json!({"to": ["x@example.com"], "subject": "s", "body": "b", "user": "erp"})).answers(401).await;
    for path in ["/healthz", "/status", "/metrics"] {
        assert_eq!(
            plain
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    // The pages ask for it too.
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/messages/{id}"))
        .answers(303)
        .await;
    // With it: the API, and the CLI run by root.
    plain
        .get(format!("{base}/api/messages/{id}/eml"))
        .bearer_auth(&token)
        .answers(200)
        .await;
    let _ = common::cli_ok(&env, &["queue"]);
    // A user who cannot read the token is told how.
    let open =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    open(env.dir.path(), 0o755);
    open(&env.dir.path().join("data"), 0o755);
    open(&env.config_path, 0o644);
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::bin(),
        ])
        .args(["--config", env.config_path.to_str().unwrap(), "queue"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("admin.token") && err.contains("sudo") && err.contains("mailgate group"),
        "{err}"
    );
    // A sign-in lasts session_ttl.
    let cookie_client = common::no_redirects();
    let (_, cookie) = common::signin_cookie(&cookie_client, &base, &token).await;
    let page = |c: String| {
        let cc = cookie_client.clone();
        let url = format!("{base}/messages");
        async move {
            cc.get(url)
                .header("cookie", c)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(page(cookie.clone()).await, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(page(cookie).await, 303, "the session expired");
}

/// A CR or LF inside an address, through every door, never becomes a header line: the
/// SMTP listener refuses the command, the sendmail door exits 65 (EX_DATAERR),
/// `/api/send` answers 400, the maildrop sets the file aside (tested above); nothing
/// reaches the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_in_an_address_is_refused_at_every_door() {
    let env = TestEnv::new("", "");
    let d = DaemonProcess::start(&env.config_path);
    // SMTP: a bare CR inside the path.
    let (mut c, _) = common::Smtp::connect(d.smtp).await.unwrap();
    c.cmd("EHLO client").await.unwrap();
    c.cmd("MAIL FROM:<app@example.com>").await.unwrap();
    let r = c
        .cmd("RCPT TO:<victim@example.com\rX-Injected: yes>")
        .await
        .unwrap();
    assert!(r.starts_with('5'), "{r}");
    let _ = c.cmd("QUIT").await;
    // The sendmail door: in a recipient argument and in -f.
    let sendmail = env.dir.path().join("sendmail");
    std::os::unix::fs::symlink(common::bin(), &sendmail).unwrap();
    for args in [
        vec!["victim@example.com\r\nBcc: all@example.com"],
        vec![
            "-f",
            "app@example.com\r\nX-Injected: yes",
            "ops@example.com",
        ],
    ] {
        let o = common::run_with_stdin(
            std::process::Command::new(&sendmail)
                .args(&args)
                .env("MAILGATE_CONFIG", &env.config_path),
            b"Subject: s\n\nx\n",
        );
        assert_eq!(
            o.status.code(),
            Some(65),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The admin API.
    let raw = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b"Subject: s\r\n\r\nx\r\n")
    };
    common::http()
        .post(format!("http://{}/api/send", d.status))
        .json(&serde_json::json!({
            "to": ["victim@example.com\r\nBcc: all@example.com"],
            "raw": raw,
        }))
        .answers(400)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.outbox_ids().is_empty(), "{:?}", env.outbox_ids());
    let s = d.get_json("/status").await;
    assert_eq!(s["totals"]["accepted"], 0, "{s:#}");
}

/// A local user runs the sendmail door claiming to be root (`LOGNAME=root USER=root`):
/// the message's default sender and its record name the real user (here `nobody`), the
/// record's client `local:nobody` found from the socket's owner, not from anything the
/// client said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sendmail_door_names_the_real_user_whatever_it_claims() {
    let env = TestEnv::new("", "");
    let port = common::free_port();
    env.edit_config(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:{port}\"]"),
    );
    let mut d = DaemonProcess::start(&env.config_path);
    let open =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    open(env.dir.path(), 0o755);
    open(&env.config_path, 0o644);
    let o = common::run_with_stdin(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args([common::bin(), "sendmail", "-t"])
            .env("MAILGATE_CONFIG", &env.config_path)
            .env("LOGNAME", "root")
            .env("USER", "root"),
        b"To: ops@example.com\nSubject: who\n\nx\n",
    );
    common::exited(&o, 0);
    let line = d.wait_log(|v| v["message"] == "accepted", WAIT);
    let id = line["id"].as_str().unwrap().to_string();
    let rec = d.finished(&id).await;
    let nobody = mailgate::unix::user_name(65534);
    assert_eq!(rec["client"], format!("local:{nobody}").as_str(), "{rec:#}");
    assert_eq!(
        rec["original_sender"],
        format!("{nobody}@mailgate.test").as_str(),
        "{rec:#}"
    );
    assert!(!String::from_utf8(env.eml(&id)).unwrap().contains("root@"));
}
