//! A real browser for the pages' tests: Debian's chromium driven through WebDriver
//! (chromedriver started on a free port, headless), with the few steps the tests take.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use super::free_port;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, stopped by PID when dropped.
pub struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    /// Stops chromedriver and every Chromium process of this driver's profile (a test
    /// that fails before it closes its session leaves them behind otherwise, re-parented
    /// to init).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let profile = self.profile.path().display().to_string();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let pid = p.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&profile) {
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
        }
    }
}

impl Driver {
    pub fn start() -> Option<Driver> {
        if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists()
        {
            super::skip(
                "Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
            );
            return None;
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Some(Driver {
            child,
            port,
            profile: tempfile::tempdir().unwrap(),
        })
    }

    pub async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        // The status listener's certificate in a test is made by the test's own CA.
        caps.insert("acceptInsecureCerts".into(), serde_json::json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--no-first-run", "--disable-quic", "--window-size=1280,1000",
                         format!("--user-data-dir={}", self.profile.path().display())]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session")
    }
}

pub async fn shot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Clicks and waits until the next document has loaded (a form post or a link).
pub async fn click(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    for _ in 0..500 {
        if old.tag_name().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..500 {
        if c.execute("return document.readyState;", vec![]).await.ok()
            == Some(serde_json::json!("complete"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Signs the browser in to the pages at `base` with the test token (every listener has
/// an admin token, so every page asks for it once).
pub async fn signin(c: &Client, base: &str) {
    c.goto(&format!("{base}/signin")).await.unwrap();
    submit_token(c, super::TEST_TOKEN).await;
}

/// Types `token` into the sign-in page shown and submits it.
pub async fn submit_token(c: &Client, token: &str) {
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    click(c, "#signin").await;
}

/// Asserts the browser was sent to the sign-in page.
pub async fn asked_to_sign_in(c: &Client) {
    assert!(
        c.current_url().await.unwrap().as_str().ends_with("/signin"),
        "asked to sign in"
    );
}
