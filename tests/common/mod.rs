//! Shared test harness: configurations in temp dirs, the daemon in-process or as a real
//! child process (JSON logs read from its stderr), and a minimal SMTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a test waits for what the daemon does by itself (a delivery, a log line).
pub const WAIT: Duration = Duration::from_secs(30);

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;

pub mod browser;
pub mod fleet;
pub mod hostile;
pub mod identity;
pub mod msgraph;
pub mod upstream;

/// The admin token of every [`TestEnv`] (in `data/admin.token`).
pub const TEST_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// An HTTP client that carries [`TEST_TOKEN`] (a request's own `bearer_auth` wins).
pub fn http() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {TEST_TOKEN}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

/// A `[[provider]]` of kind graph named `name`, sending through the Graph stand-in at
/// `url`. Keys written right after it (and its `[provider.oauth2]`) are its own.
pub fn graph_at(name: &str, url: impl std::fmt::Display) -> String {
    format!("[[provider]]\nname = \"{name}\"\nkind = \"graph\"\ngraph_url = \"{url}\"\n")
}

/// A request sent and its answer read whole (a failure to send or read panics: the test
/// is about the answer, and its status is in the value when it matters).
pub trait Fetch {
    /// The answer as JSON.
    fn fetch<T: serde::de::DeserializeOwned>(self) -> impl Future<Output = T> + Send;
    /// The answer as text.
    fn fetch_text(self) -> impl Future<Output = String> + Send;
    /// The answer, whose status must be `want`.
    fn answers(self, want: u16) -> impl Future<Output = reqwest::Response> + Send;
}

impl Fetch for reqwest::RequestBuilder {
    async fn fetch<T: serde::de::DeserializeOwned>(self) -> T {
        self.send().await.unwrap().json().await.unwrap()
    }

    async fn fetch_text(self) -> String {
        self.send().await.unwrap().text().await.unwrap()
    }

    async fn answers(self, want: u16) -> reqwest::Response {
        let r = self.send().await.unwrap();
        assert_eq!(r.status(), want, "{}", r.url());
        r
    }
}

/// A `[[provider]]` of kind smtp named `name`, reaching a test upstream on
/// 127.0.0.1:`port` over STARTTLS (the default), trusting the CA in `ca_file`. Keys
/// written right after it are its own.
pub fn tls_smtp(name: &str, port: u16, ca_file: &Path) -> String {
    format!(
        "[[provider]]\nname = \"{name}\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\nca_file = \"{}\"\n",
        ca_file.display()
    )
}

/// A `[[provider]]` of kind eml named `name`, writing into `directory`. Keys written
/// right after it are its own.
pub fn eml_at(name: &str, directory: &Path) -> String {
    format!(
        "[[provider]]\nname = \"{name}\"\nkind = \"eml\"\ndirectory = \"{}\"\n",
        directory.display()
    )
}

/// A `[[user]]` named `name` who signs in as `name` with `password` (hashed here) and
/// sends as `email`. Keys written right after it are its own.
pub fn login_user(name: &str, password: &str, email: &str) -> String {
    let hash = mailgate::smtp::auth::hash_password(password).unwrap();
    format!(
        "[[user]]\nname = \"{name}\"\nlogin = \"{name}\"\npassword_hash = \"{hash}\"\nemail = \"{email}\"\n"
    )
}

/// A `[[provider]]` of kind smtp named `name`, reaching a test upstream on
/// 127.0.0.1:`port` without TLS. Keys written right after it are its own.
pub fn plain_smtp(name: &str, port: u16) -> String {
    format!(
        "[[provider]]\nname = \"{name}\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
    )
}

/// The string `key` of every entry of the JSON array `list`.
pub fn strs<'a>(list: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|v| {
            v[key]
                .as_str()
                .unwrap_or_else(|| panic!("no string {key}: {v}"))
        })
        .collect()
}

/// A listener on a free 127.0.0.1 port that takes every connection and never says a
/// word, until the test ends: its address.
pub async fn silent_listener() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Serves `app` on a free 127.0.0.1 port until the test ends: its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Asserts that plain HTTP to `url` (a TLS listener) gets no successful answer.
pub async fn plain_http_refused(url: &str) {
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
        .get(url)
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// `admin.token` holding `token` in `dir`: its path.
pub fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// The entry of provider `name` in a `/status` answer.
pub fn provider_in<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no provider {name:?} in {status}"))
}

/// A client that follows no redirect (to see a sign-in's answer).
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in to the pages at `base` with `token`: the whole `Set-Cookie` value, and the
/// `name=value` pair to send back.
pub async fn signin_cookie(client: &reqwest::Client, base: &str, token: &str) -> (String, String) {
    let signed = client
        .post(format!("{base}/signin"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let set = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    let pair = set.split(';').next().unwrap().to_string();
    (set, pair)
}

/// Runs `cmd` with `input` on its standard input; its output.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `GET url` with [`TEST_TOKEN`].
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

/// GETs `url` with the admin token and reads the answer as JSON.
pub async fn json_at<T: serde::de::DeserializeOwned>(url: impl reqwest::IntoUrl) -> T {
    http().get(url).fetch().await
}

/// GETs `url` with the admin token and reads the answer as text.
pub async fn text_at(url: impl reqwest::IntoUrl) -> String {
    http().get(url).fetch_text().await
}

/// GETs `url` with the admin token and reads the answer's bytes.
pub async fn bytes_at(url: impl reqwest::IntoUrl) -> Vec<u8> {
    get(url).await.unwrap().bytes().await.unwrap().to_vec()
}

/// POSTs an admin action (`{}`) to `url` with the admin token: the answer.
pub async fn post_action(url: impl reqwest::IntoUrl) -> reqwest::Response {
    http()
        .post(url)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
}

/// Runs `cmd` and asserts it succeeded (its stderr is the message when it did not).
pub fn succeeded(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mailgate --config CONFIG check-config` refuses the file (exit 2): its stderr.
pub fn check_config_refuses(config: &Path) -> String {
    let o = run_cli(&["--config", config.to_str().unwrap(), "check-config"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    err
}

/// The reply of a record's (as JSON) first attempt.
pub fn first_reply(rec: &serde_json::Value) -> &str {
    rec["attempts"][0]["reply"]
        .as_str()
        .unwrap_or_else(|| panic!("no first attempt: {rec:#}"))
}

/// A [`TestEnv`] (see [`TestEnv::new`]) and the daemon started in-process on it.
pub async fn started(extra_smtp: &str, extra: &str) -> (TestEnv, mailgate::Daemon) {
    let env = TestEnv::new(extra_smtp, extra);
    let daemon = mailgate::Daemon::start(env.config()).await.unwrap();
    (env, daemon)
}

/// Waits (bounded by `timeout`) for a line from `lines` matching `pred`, keeping every
/// line read in `seen` (what the panic shows when none comes).
pub fn wait_line<T: Clone + std::fmt::Debug>(
    lines: &mpsc::Receiver<T>,
    seen: &mut Vec<T>,
    pred: impl Fn(&T) -> bool,
    timeout: Duration,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(v) => {
                seen.push(v.clone());
                if pred(&v) {
                    return v;
                }
            }
            Err(e) => panic!("line not seen ({e:?}); so far: {seen:#?}"),
        }
    }
}

/// The fix of a record's first attempt's diagnosis.
pub fn first_fix(r: &mailgate::history::Record) -> &str {
    &r.attempts[0]
        .diagnosis
        .as_ref()
        .unwrap_or_else(|| panic!("no diagnosis: {r:#?}"))
        .fix
}

/// A temp dir with a config that listens on port 0 everywhere and writes to `outbox/`.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestEnv {
    pub fn new(extra_smtp: &str, extra: &str) -> TestEnv {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("mailgate.toml");
        // The admin token beside the store, as the daemon would make it on first start
        // (its making is tested on its own): known here, so `http()` can carry it.
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let token = dir.path().join("data/admin.token");
        std::fs::write(&token, format!("{TEST_TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
        let env = TestEnv { dir, config_path };
        env.write_config(extra_smtp, extra);
        env
    }

    pub fn write_config(&self, extra_smtp: &str, extra: &str) {
        let d = self.dir.path();
        let text = format!(
            "[smtp]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"mailgate.test\"\nidle_timeout = \"60s\"\nshutdown_timeout = \"5s\"\n{extra_smtp}\n\
             [store]\npath = \"{}\"\nmin_free_space = 0\n\
             [status]\nlisten = \"127.0.0.1:0\"\n\
             [[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"{}\"\n{extra}\n",
            d.join("data/mailgate.redb").display(),
            d.join("outbox").display()
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// Replaces `from` with `to` in the configuration file (which must hold it).
    /// `[smtp]` keys for a listener certificate `ca` issues for `names`, written into
    /// the env's folder as listener.crt and listener.key.
    pub fn listener_tls(&self, ca: &upstream::TestCa, names: &[&str]) -> String {
        let d = self.dir.path();
        let (cert, key) = ca.issue(names);
        std::fs::write(d.join("listener.crt"), cert).unwrap();
        std::fs::write(d.join("listener.key"), key).unwrap();
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            d.join("listener.crt").display(),
            d.join("listener.key").display()
        )
    }

    /// The default env with one [`TestEnv::edit_config`] made to it.
    pub fn edited(from: &str, to: &str) -> TestEnv {
        let env = TestEnv::new("", "");
        env.edit_config(from, to);
        env
    }

    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        assert!(text.contains(from), "{from:?} is not in {text}");
        std::fs::write(&self.config_path, text.replace(from, to)).unwrap();
    }

    pub fn config(&self) -> mailgate::config::Config {
        mailgate::config::Config::load(&self.config_path).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    pub fn eml(&self, id: &str) -> Vec<u8> {
        std::fs::read(self.outbox().join(format!("{id}.eml"))).unwrap()
    }

    /// Every .eml in the outbox (ids), temp files excluded.
    pub fn outbox_ids(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.outbox()) else {
            return vec![];
        };
        rd.filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".eml")
                .filter(|_| !name.starts_with('.'))
                .map(String::from)
        })
        .collect()
    }
}

/// `VmRSS` or `VmHWM` (the peak) of a process, in bytes.
pub fn mem(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mailgate")
}

/// The daemon as a child process, its JSON log lines collected by a thread.
pub struct DaemonProcess {
    pub child: Child,
    pub smtp: SocketAddr,
    pub status: SocketAddr,
    lines: mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl DaemonProcess {
    pub fn start(config: &Path) -> DaemonProcess {
        DaemonProcess::start_with(config, Command::new(bin()))
    }

    /// Starts `cmd` (the mailgate binary, maybe with extra environment) as the daemon.
    pub fn start_with(config: &Path, mut cmd: Command) -> DaemonProcess {
        let mut child = cmd
            .args([
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "json",
                "serve",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mailgate");
        let stderr = child.stderr.take().unwrap();
        let mut d = DaemonProcess::adopt(stderr, child);
        let smtp = d.wait_log(
            |v| v["message"] == "smtp listening",
            Duration::from_secs(30),
        );
        d.smtp = smtp["addr"].as_str().unwrap().parse().unwrap();
        let status = d.wait_log(
            |v| v["message"] == "status listening",
            Duration::from_secs(30),
        );
        d.status = status["addr"].as_str().unwrap().parse().unwrap();
        d
    }

    /// Collects the JSON log lines of a daemon started by the caller.
    pub fn adopt(stderr: std::process::ChildStderr, child: Child) -> DaemonProcess {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        DaemonProcess {
            child,
            smtp: "0.0.0.0:0".parse().unwrap(),
            status: "0.0.0.0:0".parse().unwrap(),
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line matching `pred` (looking at lines already seen first).
    pub fn wait_log(
        &mut self,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> serde_json::Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        wait_line(&self.lines, &mut self.seen, |v| pred(v), timeout)
    }

    /// How many log lines with this message the daemon has written so far.
    pub fn count_logged(&mut self, message: &str) -> usize {
        self.drain();
        self.seen.iter().filter(|v| v["message"] == message).count()
    }

    /// Waits for a log line whose message starts with `prefix`.
    pub fn wait_message_starting(&mut self, prefix: &str, timeout: Duration) -> serde_json::Value {
        self.wait_log(
            |v| v["message"].as_str().is_some_and(|m| m.starts_with(prefix)),
            timeout,
        )
    }

    /// Ids with a `delivery` line of status `sent`, after waiting for `n` of them.
    pub fn wait_sent(&mut self, ids: &[String], timeout: Duration) {
        for id in ids {
            self.wait_log(
                |v| v["message"] == "delivery" && v["id"] == id.as_str() && v["status"] == "sent",
                timeout,
            );
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.child.wait().unwrap()
    }
}

impl DaemonProcess {
    /// GET a path of the status listener (no token) as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        json_at(format!("http://{}{path}", self.status)).await
    }

    /// GET a path of the status listener (no token) as text: a page, `/metrics`.
    pub async fn get_text(&self, path: &str) -> String {
        get(format!("http://{}{path}", self.status))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (bounded) until the record of `id` is finished; returns it.
    pub async fn finished(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get_json(&format!("/api/messages/{id}")).await;
            if ["sent", "failed", "partial"].contains(&r["status"].as_str().unwrap_or("")) {
                return r;
            }
            assert!(Instant::now() < deadline, "not finished in time: {r:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal SMTP client: one transaction per call, replies checked loosely so tests
/// can assert on the final reply.
pub struct Smtp {
    reader: TokioBufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Smtp {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<(Smtp, String)> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut s = Smtp {
            reader: TokioBufReader::new(r),
            writer: w,
        };
        let greeting = s.reply().await?;
        Ok((s, greeting))
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    pub async fn reply(&mut self) -> std::io::Result<String> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.trim_end().to_string());
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        self.reply().await
    }

    /// Sends `line` and asserts that the reply starts with `want`; the reply.
    pub async fn expect(&mut self, line: &str, want: &str) -> String {
        let r = self.cmd(line).await.unwrap();
        assert!(r.starts_with(want), "{line} -> {r}, want {want}");
        r
    }

    /// MAIL, RCPT..., DATA, message, `.`; returns the final reply.
    pub async fn send(
        &mut self,
        from: &str,
        rcpts: &[&str],
        data: &[u8],
    ) -> std::io::Result<String> {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await?;
        if !r.starts_with("250") {
            return Ok(r);
        }
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await?;
            if !r.starts_with("250") {
                return Ok(r);
            }
        }
        let r = self.cmd("DATA").await?;
        if !r.starts_with("354") {
            return Ok(r);
        }
        self.writer.write_all(data).await?;
        self.writer.write_all(b".\r\n").await?;
        self.reply().await
    }
}

/// The id from `250 2.0.0 OK queued as <ID>`.
pub fn queued_id(reply: &str) -> Option<String> {
    reply
        .strip_prefix("250 2.0.0 OK queued as ")
        .map(|s| s.trim().to_string())
}

/// Tokens acknowledged with a 250, and the id each got.
pub type Acked = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

/// Starts `clients` sessions that each send up to `per_client` messages whose Subject
/// is a unique token (`{prefix}-C{c}-N{n}`), recording every 250 in `acked`; each stops
/// at its first error (the daemon killed). Returns the tasks and the running count.
pub fn burst(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    prefix: &str,
    acked: &Acked,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let tasks = (0..clients)
        .map(|c| {
            let (acked, count, prefix) = (acked.clone(), count.clone(), prefix.to_string());
            tokio::spawn(async move {
                let Ok((mut s, _)) = Smtp::connect(addr).await else {
                    return;
                };
                if s.cmd("EHLO burst.test").await.is_err() {
                    return;
                }
                for n in 0..per_client {
                    let token = format!("{prefix}-C{c}-N{n}");
                    let data = format!("Subject: {token}\r\n\r\n{token}\r\n");
                    let Ok(reply) = s
                        .send("load@erp.local", &["sink@contoso.com"], data.as_bytes())
                        .await
                    else {
                        return;
                    };
                    let Some(id) = queued_id(&reply) else { return };
                    acked.lock().unwrap().insert(token, id);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    (tasks, count)
}

/// Waits (bounded) until `count` reaches `n`.
pub async fn until_count(count: &std::sync::atomic::AtomicUsize, n: usize) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while count.load(std::sync::atomic::Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the load makes progress");
}

/// Delivery events of a daemon.
pub type Events = tokio::sync::broadcast::Receiver<mailgate::distributor::DeliveryEvent>;

/// A one-line message from `from` to `to`: `Subject: {subject}` and the body `x`.
pub fn short_message(subject: &str) -> Vec<u8> {
    format!("Subject: {subject}\r\n\r\nx\r\n").into_bytes()
}

/// [`submit_to`] with a [`short_message`] to one recipient: the id of its `250`.
pub async fn submit_short(addr: SocketAddr, from: &str, to: &str, subject: &str) -> String {
    submit_to(addr, from, &[to], &short_message(subject)).await
}

/// [`send_once`] with a [`short_message`] to one recipient: its final reply.
pub async fn send_short(addr: SocketAddr, from: &str, to: &str, subject: &str) -> String {
    send_once(addr, from, &[to], &short_message(subject)).await
}

/// Asserts that `text` holds every one of `needles`, naming the one missing.
#[track_caller]
pub fn assert_has(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{n:?} is missing from:\n{text}");
    }
}

/// Asserts a command's exit code (showing its output otherwise); its standard output.
#[track_caller]
pub fn exited(o: &std::process::Output, code: i32) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(code),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// One transaction over a fresh session; the id of its `250` (panics otherwise).
pub async fn submit_to(addr: SocketAddr, from: &str, rcpts: &[&str], data: &[u8]) -> String {
    let (mut s, _) = Smtp::connect(addr).await.unwrap();
    s.cmd("EHLO test-client").await.unwrap();
    let reply = s.send(from, rcpts, data).await.unwrap();
    queued_id(&reply).unwrap_or_else(|| panic!("{reply}"))
}

/// Waits (bounded) for the next event of `id`; returns its record then.
pub async fn next_record(
    daemon: &mailgate::Daemon,
    events: &mut Events,
    id: &str,
) -> mailgate::history::Record {
    tokio::time::timeout(Duration::from_secs(30), async {
        while events.recv().await.unwrap().id != id {}
    })
    .await
    .expect("an attempt is made in time");
    daemon.pipeline.store().record(id).unwrap().unwrap()
}

/// Submits one message and returns its record after its first attempt.
pub async fn send_and_wait(
    daemon: &mailgate::Daemon,
    from: &str,
    rcpts: &[&str],
    data: &[u8],
) -> mailgate::history::Record {
    let mut events = daemon.distributor.subscribe();
    let id = submit_to(daemon.smtp_addrs[0], from, rcpts, data).await;
    next_record(daemon, &mut events, &id).await
}

/// A port that was free a moment ago on 127.0.0.1 (bound, read, released), for configs
/// that must name the same port across daemon restarts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the mailgate binary with `args` and returns its output.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run mailgate")
}

/// Whether a program is on PATH (tests that need Debian packages say so when absent).
/// A test whose tool is missing: under `CI=true` (CI sets it) it fails, so a machine
/// missing a package never goes green having tested nothing; elsewhere it says why it
/// skips.
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}: with CI=true a test whose tool is missing fails");
    }
    eprintln!("SKIPPED: {why}");
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Debian's libfaketime (multi-threaded build), preloaded to run the daemon under a
/// shifted wall clock; None when the package is not installed.
pub fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
    ]
    .iter()
    .map(|d| Path::new(d).join("libfaketimeMT.so.1"))
    .find(|p| p.exists())
}

impl DaemonProcess {
    /// Waits until `n` log lines match `pred` (counting lines already seen).
    pub fn wait_count(
        &mut self,
        pred: impl Fn(&serde_json::Value) -> bool,
        n: usize,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        while self.seen.iter().filter(|v| pred(v)).count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(e) => panic!(
                    "{n} matching log lines not seen ({e:?}); log so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Reads the log lines that arrived so far without waiting.
    pub fn drain(&mut self) -> usize {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
        self.seen.len()
    }
}

/// One transaction over a fresh session; its final reply, whatever it is.
pub async fn send_once(addr: SocketAddr, from: &str, rcpts: &[&str], data: &[u8]) -> String {
    let (mut s, _) = Smtp::connect(addr).await.unwrap();
    s.cmd("EHLO test-client").await.unwrap();
    s.send(from, rcpts, data).await.unwrap()
}

/// A new 2048-bit RSA key made by openssl (`genpkey`, PKCS#8 PEM) at `path`; its PEM.
pub fn openssl_rsa_key(path: &Path) -> String {
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(path)
        .output()
        .expect("openssl (apt-get install openssl; .ci/run does)");
    assert!(
        ok.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::read_to_string(path).unwrap()
}

/// Runs the CLI on `env`'s configuration: exit code, stdout, stderr.
pub fn cli(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", env.config_path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_cli(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mailgate --config <env> ARGS`, which must succeed: its stdout.
pub fn cli_ok(env: &TestEnv, args: &[&str]) -> String {
    let (code, out, err) = cli(env, args);
    assert_eq!(code, 0, "mailgate {args:?}: {out}{err}");
    out
}

/// A [`TestEnv`] written by [`write`] (the CLI finds its daemon) whose default provider
/// is `up`, the test upstream `port` (see [`plain_smtp`]), with `extra` config after it.
pub fn env_sending_to(port: u16, extra: &str) -> TestEnv {
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "{}[distributor]\ndefault_provider = \"up\"\n{extra}",
            plain_smtp("up", port)
        ),
    );
    env
}

/// Writes the config with the status listener on a fixed free port, so the CLI finds it.
pub fn write(env: &TestEnv, extra: &str) {
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    // The port chosen at the first write stays (status.listen is a start-only key).
    let port: u16 = text
        .split("listen = \"127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .unwrap_or_else(free_port);
    env.write_config("", extra);
    status_on(env, port);
}

/// Puts the status listener of `env`'s configuration (as `write_config` wrote it) on
/// 127.0.0.1:`port`.
pub fn status_on(env: &TestEnv, port: u16) {
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(
        &env.config_path,
        text.replace(
            "[status]\nlisten = \"127.0.0.1:0\"",
            &format!("[status]\nlisten = \"127.0.0.1:{port}\""),
        ),
    )
    .unwrap();
}
