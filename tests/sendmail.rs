//! The sendmail door against the daemon binary: cron-style input through a link named
//! `sendmail`, the flags PHP and cron pass, Bcc, the lone dot, the maildrop while the
//! daemon is down, a 20 MB message, exit codes, bsd-mailx as a client nobody here wrote,
//! and systemd's notify protocol.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{DaemonProcess, TestEnv, bin, free_port};

use common::WAIT;

/// A config whose first listener is a fixed port (sendmail submits to it).
fn env_with_ports() -> (TestEnv, u16) {
    let env = TestEnv::new("", "");
    let (smtp, status) = (free_port(), free_port());
    let text = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:{smtp}\"]"),
        )
        .replace(
            "[status]\nlisten = \"127.0.0.1:0\"",
            &format!("[status]\nlisten = \"127.0.0.1:{status}\""),
        );
    std::fs::write(&env.config_path, text).unwrap();
    (env, status)
}

/// Writes `text` as the aliases file and names it in `[sendmail]` (the section goes last).
fn use_aliases(env: &TestEnv, text: &str) {
    let aliases = env.dir.path().join("aliases");
    std::fs::write(&aliases, text).unwrap();
    append(
        env,
        &format!(
            "\n[sendmail]\naliases = {:?}\n",
            aliases.display().to_string()
        ),
    );
}

/// Appends `text` to the configuration file.
fn append(env: &TestEnv, text: &str) {
    let before = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(&env.config_path, format!("{before}{text}")).unwrap();
}

/// The name of this process's real uid, as the door finds it.
fn real_user() -> String {
    mailgate::unix::user_name(mailgate::unix::real_uid().unwrap())
}

/// Runs `program args` with `input` on stdin and MAILGATE_CONFIG set (and LOGNAME set to
/// someone else, which the door must ignore).
fn run(program: &std::path::Path, args: &[&str], env: &TestEnv, input: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env("MAILGATE_CONFIG", &env.config_path)
        .env("LOGNAME", "cronuser")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Exit 0, or the door's words.
fn ok(o: &Output) {
    exits(o, 0);
}

/// This exit code, or the door's words.
fn exits(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The door's words on standard error say this.
fn said(o: &Output, words: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(words), "{err}");
}

/// A link named `sendmail` to the binary, in the test's directory.
/// `sendmail -t -i` as cron runs it: LF line ends, no From, to a@example.com.
fn cron(sendmail: &std::path::Path, env: &TestEnv, subject: &str) -> Output {
    let mail = format!("To: a@example.com\nSubject: {subject}\n\nbody\n");
    run(sendmail, &["-t", "-i"], env, mail.as_bytes())
}

fn link(env: &TestEnv, name: &str) -> std::path::PathBuf {
    let p = env.dir.path().join(name);
    std::os::unix::fs::symlink(bin(), &p).unwrap();
    p
}

async fn record(status: u16, id: &str) -> serde_json::Value {
    common::json_at(format!("http://127.0.0.1:{status}/api/messages/{id}")).await
}

fn accepted_id(d: &mut DaemonProcess, n: usize) -> String {
    d.wait_count(|v| v["message"] == "accepted", n, WAIT);
    d.seen
        .iter()
        .filter(|v| v["message"] == "accepted")
        .nth(n - 1)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_and_php_style_mail_reaches_the_history() {
    let (env, status) = env_with_ports();
    let mut d = DaemonProcess::start(&env.config_path);
    let sendmail = link(&env, "sendmail");

    // cron: LF line ends, -t -i, no From.
    let o = cron(&sendmail, &env, "cron job");
    ok(&o);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = accepted_id(&mut d, 1);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    let rec = record(status, &id).await;
    assert_eq!(rec["subject"], "cron job");
    assert_eq!(rec["recipients"][0]["address"], "a@example.com");
    // The real uid's name, not LOGNAME (`run` sets LOGNAME=cronuser): any caller could
    // set that to be someone else.
    let me = format!("{}@mailgate.test", real_user());
    assert_eq!(rec["original_sender"], me.as_str());
    // The door's submission names the Unix user who ran it.
    assert_eq!(rec["client"], format!("local:{}", real_user()).as_str());
    let eml = String::from_utf8(env.eml(&id)).unwrap();
    assert!(
        eml.contains(&format!(
            "From: <{me}>\r\nTo: a@example.com\r\nSubject: cron job\r\n"
        )),
        "{eml}"
    );
    assert!(eml.ends_with("\r\n\r\nbody\r\n"), "{eml:?}");

    // PHP's mail(): -t -i -f addr, plus flags that must be ignored.
    let o = run(
        &sendmail,
        &["-t", "-i", "-f", "www@shop.example", "-oem", "-odi", "-v", "-B8BITMIME", "-N", "never", "-R", "hdrs", "-Ffull"],
        &env,
        b"To: b@example.com\nBcc: secret@example.com\nFrom: Shop <www@shop.example>\nSubject: order\n\n.leading dot\n.\nafter the lone dot\n",
    );
    ok(&o);
    let id = accepted_id(&mut d, 2);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    let rec = record(status, &id).await;
    assert_eq!(rec["original_sender"], "www@shop.example");
    let rcpts: Vec<&str> = common::strs(&rec["recipients"], "address");
    assert_eq!(
        rcpts,
        ["b@example.com", "secret@example.com"],
        "Bcc is a recipient"
    );
    let eml = String::from_utf8(env.eml(&id)).unwrap();
    assert!(
        !eml.contains("Bcc") && !eml.contains("secret@"),
        "Bcc removed from the header: {eml}"
    );
    assert!(
        eml.contains("\r\n.leading dot\r\n.\r\nafter the lone dot\r\n"),
        "-i keeps the lone dot: {eml:?}"
    );

    // Without -i a lone dot ends the message; recipients as arguments; mailgate sendmail.
    let o = run(
        std::path::Path::new(bin()),
        &["sendmail", "c@example.com"],
        &env,
        b"Subject: dot\n\nkept\n.\ndropped\n",
    );
    ok(&o);
    let id = accepted_id(&mut d, 3);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    let eml = String::from_utf8(env.eml(&id)).unwrap();
    assert!(
        eml.ends_with("\r\n\r\nkept\r\n") && !eml.contains("dropped"),
        "{eml:?}"
    );

    // A 20 MB message.
    let mut big = b"To: big@example.com\nSubject: big\n\n".to_vec();
    for i in 0..(20 << 20) / 64 {
        big.extend_from_slice(format!("{i:063}\n").as_bytes());
    }
    let o = run(&sendmail, &["-t"], &env, &big);
    ok(&o);
    let id = accepted_id(&mut d, 4);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    assert!(env.eml(&id).len() > 20 << 20);
    assert_eq!(d.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_sendmail() {
    let (env, _) = env_with_ports();
    let sendmail = link(&env, "sendmail");
    let o = run(&sendmail, &["-t"], &env, b"Subject: nobody\n\nx\n");
    assert_eq!(o.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no recipients"));
    let o = run(&sendmail, &["not an address"], &env, b"x\n");
    assert_eq!(o.status.code(), Some(65));
    let o = run(&sendmail, &["-f"], &env, b"x\n");
    assert_eq!(o.status.code(), Some(64));
    // The door's rules apply whether the daemon runs or not: a single-label domain is 65.
    let o = run(&sendmail, &["user@contoso"], &env, b"x\n");
    exits(&o, 65);
    said(&o, "single label domain");
    // The daemon refuses the message for good: 65 and its words on stderr.
    env.edit_config("[store]", "max_message_size = 100\n[store]");
    let mut d = DaemonProcess::start(&env.config_path);
    let o = run(&sendmail, &["a@example.com"], &env, &b"y".repeat(500));
    exits(&o, 65);
    said(&o, "552 5.3.4");
    assert_eq!(d.terminate().code(), Some(0));
    // Neither the daemon nor the maildrop: 75.
    env.edit_config("data/mailgate.redb", "nodir/sub/mailgate.redb");
    std::fs::write(
        env.dir.path().join("nodir"),
        b"a file where the directory should be",
    )
    .unwrap();
    let o = run(&sendmail, &["a@example.com"], &env, b"x\n");
    exits(&o, 75);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_daemon_down_the_maildrop_keeps_the_message_until_it_runs() {
    let (env, status) = env_with_ports();
    let sendmail = link(&env, "sendmail");
    let o = cron(&sendmail, &env, "while down");
    assert_eq!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("left in the maildrop"), "{err}");
    let dropdir = env.dir.path().join("data/maildrop");
    let files: Vec<_> = std::fs::read_dir(&dropdir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "mail"))
        .collect();
    assert_eq!(files.len(), 1);
    // A file that is not a maildrop file is moved aside, not deleted.
    std::fs::write(dropdir.join("01GARBAGE.mail"), b"not json\n").unwrap();

    let mut d = DaemonProcess::start(&env.config_path);
    let line = d.wait_log(|v| v["message"] == "maildrop: taken in", WAIT);
    let id = line["id"].as_str().unwrap().to_string();
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    let rec = record(status, &id).await;
    assert_eq!(rec["subject"], "while down");
    // The file's owner, named as a local user.
    assert_eq!(rec["client"], format!("local:{}", real_user()).as_str());
    assert!(!files[0].path().exists(), "removed after its commit");
    d.wait_log(
        |v| v["message"] == "maildrop: a file cannot be taken in; it was moved aside",
        WAIT,
    );
    assert!(dropdir.join("bad/01GARBAGE.mail").exists());
    // While running, a dropped file is taken in within seconds.
    mailgate::maildrop::write(
        &dropdir,
        &mailgate::maildrop::Envelope {
            from: "x@example.com".into(),
            rcpts: vec!["y@example.com".into()],
            user: None,
        },
        b"Subject: later\r\n\r\nlater\r\n",
    )
    .unwrap();
    d.wait_count(
        |v| v["message"] == "maildrop: taken in",
        2,
        Duration::from_secs(10),
    );
    assert_eq!(d.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bsd_mailx_sends_through_the_door() {
    if !common::have("bsd-mailx") && !std::path::Path::new("/usr/bin/bsd-mailx").exists() {
        common::skip("bsd-mailx is not installed (.ci/run installs it)");
        return;
    }
    let (env, status) = env_with_ports();
    let mut d = DaemonProcess::start(&env.config_path);
    let sendmail = link(&env, "sendmail");
    let rc = env.dir.path().join("mailrc");
    std::fs::write(&rc, format!("set sendmail={}\n", sendmail.display())).unwrap();
    let mut child = Command::new("bsd-mailx")
        .args(["-s", "backup report", "ops@example.com"])
        .env("MAILRC", &rc)
        .env("MAILGATE_CONFIG", &env.config_path)
        .env("LOGNAME", "backup")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"all good\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = accepted_id(&mut d, 1);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    let rec = record(status, &id).await;
    assert_eq!(rec["subject"], "backup report");
    assert_eq!(rec["recipients"][0]["address"], "ops@example.com");
    assert!(
        String::from_utf8(env.eml(&id))
            .unwrap()
            .contains("all good")
    );
    assert_eq!(d.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_ready_reloading_stopping_and_watchdog() {
    let env = TestEnv::new("", "");
    let sock_path = env.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut cmd = Command::new(bin());
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let mut d = DaemonProcess::start_with(&env.config_path, cmd);
    let read = || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = read();
    assert!(
        ready.starts_with("READY=1\nSTATUS=accepting mail on 127.0.0.1:"),
        "{ready:?}"
    );
    assert_eq!(read(), "WATCHDOG=1\n");
    Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status()
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 6 {
        let m = read();
        if m != "WATCHDOG=1\n" {
            got.push(m);
        }
        if got.last().is_some_and(|m| m == "READY=1\n") {
            break;
        }
    }
    assert_eq!(got, ["RELOADING=1\n", "READY=1\n"]);
    let pid = d.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    loop {
        let m = read();
        if m == "STOPPING=1\n" {
            break;
        }
        assert_eq!(m, "WATCHDOG=1\n");
    }
    assert_eq!(d.child.wait().unwrap().code(), Some(0));
}

/// What the daemon recorded as the recipients of `id`.
async fn rcpts_of(status: u16, id: &str) -> Vec<String> {
    record(status, id).await["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_names_go_where_the_aliases_and_admin_address_say() {
    let (env, status) = env_with_ports();
    let sendmail = link(&env, "sendmail");
    // Neither setting: 67, naming both.
    let o = run(&sendmail, &["root"], &env, b"Subject: x\n\nx\n");
    exits(&o, 67);
    said(&o, "sendmail.aliases");
    said(&o, "sendmail.admin_address");

    // An /etc/aliases as Debian ships it, grown by an administrator.
    use_aliases(
        &env,
        "# See man 5 aliases for format\n\
         postmaster:    root\n\
         root: ops,\n\
         \t\"it@example.com\"\n\
         \n\
         # the operations team\n\
         ops: alice@example.com, Bob@Example.com\n\
         staff: :include:/etc/mail/staff\n\
         logs: |/usr/bin/logger\n\
         a: b\n\
         b: a\n",
    );
    // An alias file without admin_address: a name it lacks is 67, naming the file.
    let o = run(&sendmail, &["nosuchuser"], &env, b"Subject: x\n\nx\n");
    exits(&o, 67);
    said(&o, "nosuchuser: no such name in");
    said(&o, "sendmail.admin_address");
    // :include: is refused with its line, before anything is submitted.
    let o = run(&sendmail, &["staff"], &env, b"Subject: x\n\nx\n");
    exits(&o, 78);
    said(
        &o,
        "aliases:8: staff: `:include:/etc/mail/staff` lists are not read",
    );

    append(&env, "admin_address = \"admin@example.com\"\n");
    let mut d = DaemonProcess::start(&env.config_path);

    // Debian's cron: the MAILTO name as an argument, -FCronDaemon -i -B8BITMIME -oem.
    let o = run(
        &sendmail,
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        &env,
        b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@web1> run-parts --report /etc/cron.daily\n\n/etc/cron.daily/logrotate: error\n",
    );
    ok(&o);
    let id = accepted_id(&mut d, 1);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    assert_eq!(
        rcpts_of(status, &id).await,
        ["alice@example.com", "Bob@Example.com", "it@example.com"]
    );
    assert_eq!(
        record(status, &id).await["original_sender"],
        format!("{}@mailgate.test", real_user()).as_str()
    );

    // cronie: -t from the header, -f with a bare user name; a name with no alias goes to
    // admin_address.
    let o = run(
        &sendmail,
        &["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "backup"],
        &env,
        b"From: \"(Cron Daemon)\" <backup>\nTo: backup\nSubject: Cron <backup@web1> /usr/local/bin/nightly\n\ndone\n",
    );
    ok(&o);
    let id = accepted_id(&mut d, 2);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    assert_eq!(rcpts_of(status, &id).await, ["admin@example.com"]);
    assert_eq!(
        record(status, &id).await["original_sender"],
        "backup@mailgate.test"
    );

    // A loop and a program alias end at the administrator too; the program is named.
    let o = run(
        &sendmail,
        &["a", "logs", "x@example.com"],
        &env,
        b"Subject: loop\n\nx\n",
    );
    ok(&o);
    said(&o, "\"|/usr/bin/logger\" is skipped");
    let id = accepted_id(&mut d, 3);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    assert_eq!(
        rcpts_of(status, &id).await,
        ["admin@example.com", "x@example.com"]
    );
    assert_eq!(d.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_that_keeps_a_copy_locally_still_reaches_its_other_members() {
    // The classic `root: ops@..., root` with no admin_address: the mail reaches ops, the
    // door says the local copy was dropped (aliases(5), as Postfix's local(8) reads it).
    let (env, status) = env_with_ports();
    let sendmail = link(&env, "sendmail");
    use_aliases(&env, "root: ops@example.com, root\n");
    let mut d = DaemonProcess::start(&env.config_path);
    let o = run(
        &sendmail,
        &["-FCronDaemon", "-i", "-oem", "root"],
        &env,
        b"Subject: Cron <root@web1> backup\n\ndone\n",
    );
    ok(&o);
    said(&o, "root: the alias names itself");
    let id = accepted_id(&mut d, 1);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    assert_eq!(rcpts_of(status, &id).await, ["ops@example.com"]);

    // With admin_address, the local copy goes there.
    append(&env, "admin_address = \"admin@example.com\"\n");
    let o = run(&sendmail, &["root"], &env, b"Subject: again\n\nx\n");
    ok(&o);
    let id = accepted_id(&mut d, 2);
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    assert_eq!(
        rcpts_of(status, &id).await,
        ["ops@example.com", "admin@example.com"]
    );
}
