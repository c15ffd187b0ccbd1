//! The fleet's test harness: a private redis-server, and nodes with one view of the
//! fleet (a status listener on a known port published as `status_url`, a fleet secret).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{DaemonProcess, Fetch, TestEnv, free_port};

/// A fleet secret file in `dir` named `name` (mode 0600), 48 bytes made from `seed`.
pub fn fleet_secret(dir: &Path, name: &str, seed: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    let text: String = seed.chars().cycle().take(48).collect();
    std::fs::write(&p, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A private redis-server, stopped by PID when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    /// TLS only on `port`, with `redis.crt`, `redis.key` and `ca.pem` from this folder.
    tls: Option<std::path::PathBuf>,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        Redis::start_with(None, None)
    }

    pub fn start_with_password(pw: &str) -> Option<Redis> {
        Redis::start_with(Some(pw.to_string()), None)
    }

    /// A redis-server speaking TLS only, with the certificates in `dir`.
    pub fn start_tls(dir: &std::path::Path) -> Option<Redis> {
        Redis::start_with(None, Some(dir.to_path_buf()))
    }

    pub fn start_with(password: Option<String>, tls: Option<std::path::PathBuf>) -> Option<Redis> {
        if !super::have("redis-server") {
            super::skip("Debian's redis-server is not installed (.ci/run installs it)");
            return None;
        }
        let mut r = Redis {
            child: None,
            port: free_port(),
            password,
            tls,
        };
        r.up();
        Some(r)
    }

    pub fn up(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(dir) => {
                let p = |n: &str| dir.join(n).display().to_string();
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args([
                        "--tls-cert-file",
                        &p("redis.crt"),
                        "--tls-key-file",
                        &p("redis.key"),
                    ])
                    .args([
                        "--tls-ca-cert-file",
                        &p("ca.pem"),
                        "--tls-auth-clients",
                        "no",
                    ])
            }
        };
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start");
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
    }
}

/// A node of a fleet with one view: its status listener on a fixed port, published as
/// `status_url`, the admin token in `token` and the fleet secret in `secret`.
pub fn viewing_node(
    redis: &Redis,
    name: &str,
    token: &Path,
    secret: &Path,
) -> (TestEnv, DaemonProcess) {
    let port = free_port();
    let env = TestEnv::new("", "");
    env.write_config(
        "",
        &format!(
            "[fleet]\nredis_url = \"redis://127.0.0.1:{}/0\"\nnode = \"{name}\"\nkey_prefix = \"v:\"\nstatus_url = \"http://127.0.0.1:{port}\"\nsecret_file = \"{}\"\n",
            redis.port,
            secret.display()
        ),
    );
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "[status]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[status]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    std::fs::write(&env.config_path, text).unwrap();
    let d = DaemonProcess::start(&env.config_path);
    (env, d)
}

/// A page of a node, signed in with the token.
pub async fn page_of(d: &DaemonProcess, token: &str, path: &str) -> String {
    let http = super::no_redirects();
    let (_, cookie) = super::signin_cookie(&http, &format!("http://{}", d.status), token).await;
    let r = http
        .get(format!("http://{}{path}", d.status))
        .header("cookie", cookie)
        .answers(200)
        .await;
    r.text().await.unwrap()
}

pub async fn fleet_list(d: &DaemonProcess, token: &str, query: &str) -> serde_json::Value {
    let r = super::http()
        .get(format!("http://{}/api/messages?fleet=1&{query}", d.status))
        .bearer_auth(token)
        .answers(200)
        .await;
    r.json().await.unwrap()
}
