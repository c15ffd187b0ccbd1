//! The Email history page in a real browser: Debian's chromium driven through WebDriver
//! (chromedriver started by the test on a free port, headless). The list, the Failed
//! filter, search, the failure details of a 550 5.1.1, Retry and Pause/Resume by
//! clicking, sign-in and CSRF with a token, and hostile mail that stays text. Screenshots
//! of each page go to target/screenshots/.

mod common;

use std::time::Duration;

use common::browser::{Driver, click, shot, signin, text};
use common::submit_short;
use common::upstream::{Script, Upstream};
use common::{Fetch, TestEnv, submit_to};
use fantoccini::{Client, Locator};
use mailgate::Daemon;
use mailgate::history::Status;

/// The text of the sign-in page's outcome once the browser shows it (the page updates
/// itself; bounded at 20 s), or a panic naming where the browser is and what it shows.
async fn signed_in_text(c: &Client) -> String {
    for _ in 0..100 {
        if let Ok(e) = c.find(Locator::Css("#signed-in")).await {
            return e.text().await.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = text(c, "body").await;
    panic!(
        "no sign-in outcome at {:?}: {body}",
        c.current_url().await.map(|u| u.to_string())
    );
}

async fn rows(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for r in c
        .find_all(Locator::Css("table.history tbody tr"))
        .await
        .unwrap()
    {
        out.push(r.text().await.unwrap());
    }
    out
}

/// A daemon with an upstream that refuses gone@contoso.com for good (550 5.1.1).
async fn daemon(extra_status: &str) -> (TestEnv, Daemon, Upstream) {
    let up = Upstream::replying("rcpt:gone@contoso.com", "550 5.1.1 <gone@contoso.com>: Recipient address rejected: User unknown in local recipient table").await;
    let env = TestEnv::new(
        "",
        &format!(
            "{}\
             [[user]]\nname = \"payroll\"\nemail = \"payroll@contoso.com\"\nmatch_senders = [\"*@ops.local\"]\nprovider = \"up\"\n[notify]\nbounce = \"off\"\n",
            common::plain_smtp("up", up.addr.port())
        ),
    );
    if !extra_status.is_empty() {
        env.edit_config(
            "[status]\nlisten = \"127.0.0.1:0\"\n",
            &format!("[status]\nlisten = \"127.0.0.1:0\"\n{extra_status}\n"),
        );
    }
    let d = Daemon::start(env.config()).await.unwrap();
    (env, d, up)
}

async fn wait_status(d: &Daemon, id: &str, want: Status) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if d.pipeline
                .store()
                .record(id)
                .unwrap()
                .is_some_and(|r| r.status == want)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} never became {want:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_filters_failed_reads_why_and_retries_in_the_browser() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let (_env, d, up) = daemon("").await;
    let smtp = d.smtp_addrs[0];
    let ok = submit_to(
        smtp,
        "erp@erp.local",
        &["a@contoso.com"],
        b"Subject: Invoice 1001\r\n\r\nThe invoice.\r\n",
    )
    .await;
    let failed = submit_to(
        smtp,
        "clerk@ops.local",
        &["gone@contoso.com"],
        b"Subject: Payroll report\r\n\r\nNumbers.\r\n",
    )
    .await;
    let hostile = submit_to(
        smtp,
        "erp@erp.local",
        &["b@contoso.com"],
        b"From: =?utf-8?q?=3Cscript=3Ewindow=2E=5F=5Fpwned=3D2=3C=2Fscript=3E?= <x@erp.local>\r\n\
          Subject: <img src=x onerror=\"window.__pwned=1\">\r\n\
          MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
          --b\r\nContent-Type: text/html\r\n\r\n<script>window.__pwned=4</script><b>bold</b>\r\n\
          --b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"\\\"><svg onload=window.__pwned=3>.pdf\"\r\n\
          Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--b--\r\n",
    )
    .await;
    wait_status(&d, &ok, Status::Sent).await;
    wait_status(&d, &failed, Status::Failed).await;
    wait_status(&d, &hostile, Status::Sent).await;
    let base = format!("http://{}", d.status_addr);
    let c = driver.browser().await;
    signin(&c, &base).await;

    // The list shows what was submitted, newest first.
    c.goto(&format!("{base}/messages")).await.unwrap();
    let all = rows(&c).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all.iter()
            .any(|r| r.contains("Invoice 1001") && r.contains("sent")),
        "{all:?}"
    );
    shot(&c, "list").await;

    // The Failed filter, chosen in the form: only the failed one.
    c.find(Locator::Css("#filter-status"))
        .await
        .unwrap()
        .select_by_value("failed")
        .await
        .unwrap();
    click(&c, "#apply").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .contains("status=failed"),
        "the filter is in the URL"
    );
    let only = rows(&c).await;
    assert_eq!(only.len(), 1, "{only:?}");
    assert!(
        only[0].contains("Payroll report") && only[0].contains("failed"),
        "{only:?}"
    );

    // Search by a word of the subject.
    c.goto(&format!("{base}/messages")).await.unwrap();
    c.find(Locator::Css("#search"))
        .await
        .unwrap()
        .send_keys("invoice")
        .await
        .unwrap();
    click(&c, "#apply").await;
    let found = rows(&c).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("Invoice 1001"));

    // The failure details of the 550 5.1.1: reply, code, explanation, fix.
    c.goto(&format!("{base}/messages?status=failed"))
        .await
        .unwrap();
    click(&c, "td.subject a").await;
    let attempt = text(&c, "li.attempt").await;
    common::assert_has(
        &attempt,
        &[
            "550 5.1.1",
            "recipient-unknown",
            "The upstream does not know the recipient address",
            "How to fix it: Correct the address in the sending application",
        ],
    );
    shot(&c, "detail").await;

    // Retry by clicking: another attempt is made (refused again by this upstream).
    let before = up.connections.load(std::sync::atomic::Ordering::SeqCst);
    click(&c, "#retry").await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while d
            .pipeline
            .store()
            .record(&failed)
            .unwrap()
            .unwrap()
            .attempts
            .len()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the retry makes a second attempt");
    assert!(up.connections.load(std::sync::atomic::Ordering::SeqCst) >= before);
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with(&format!("/messages/{failed}"))
    );

    // Pause and Resume by clicking.
    c.goto(&format!("{base}/")).await.unwrap();
    shot(&c, "dashboard").await;
    assert_eq!(text(&c, "#count-failed").await, "1");
    click(&c, "#pause").await;
    assert!(d.distributor.is_paused());
    assert_eq!(text(&c, "#distributor-state").await, "paused");
    click(&c, "#resume").await;
    assert!(!d.distributor.is_paused());
    assert_eq!(text(&c, "#distributor-state").await, "running");

    // Hostile mail is text on the list and the detail page; none of it ran.
    c.goto(&format!("{base}/messages")).await.unwrap();
    let list = text(&c, "table.history").await;
    assert!(
        list.contains("<img src=x onerror=\"window.__pwned=1\">"),
        "{list}"
    );
    c.goto(&format!("{base}/messages/{hostile}")).await.unwrap();
    let page = text(&c, "main").await;
    assert!(
        page.contains("<script>window.__pwned=2</script> <x@erp.local>"),
        "the decoded display name, as text: {page}"
    );
    assert!(
        page.contains("\"><svg onload=window.__pwned=3>.pdf"),
        "the attachment name, as text: {page}"
    );
    assert!(
        c.find_all(Locator::Css("main img, main svg, main script"))
            .await
            .unwrap()
            .is_empty(),
        "no element came from the mail"
    );
    let pwned = c
        .execute("return window.__pwned === undefined;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::json!(true), "a script from the mail ran");
    shot(&c, "hostile").await;
    c.close().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_pages_ask_for_it_once_and_posts_need_the_csrf_token() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-admin-token\n").unwrap();
    let (_env, d, _up) = daemon(&format!("token_file = \"{}\"", token_file.display())).await;
    let base = format!("http://{}", d.status_addr);
    let c = driver.browser().await;

    c.goto(&format!("{base}/messages")).await.unwrap();
    common::browser::asked_to_sign_in(&c).await;
    common::browser::submit_token(&c, "wrong").await;
    assert!(text(&c, "main").await.contains("not the admin token"));
    common::browser::submit_token(&c, "s3cret-admin-token").await;
    assert!(text(&c, "h1").await.contains("Batch email sending status"));
    let cookie = c.get_named_cookie("mailgate_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    click(&c, "#pause").await;
    assert!(
        d.distributor.is_paused(),
        "a POST with the form's CSRF token works"
    );

    // The same session without the CSRF token is refused; without the session too.
    let http = common::http();
    let with_cookie = |path: &str| {
        http.post(format!("{base}{path}"))
            .header("Cookie", format!("mailgate_session={}", cookie.value()))
            .header("Content-Type", "application/x-www-form-urlencoded")
    };
    with_cookie("/distributor/resume")
        .body("")
        .answers(403)
        .await;
    with_cookie("/distributor/resume")
        .body("csrf=guess")
        .answers(403)
        .await;
    assert!(d.distributor.is_paused());
    http.post(format!("{base}/distributor/resume"))
        .form(&[("csrf", "x")])
        .answers(403)
        .await;
    let h = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(
        h.headers()["content-security-policy"],
        "default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    assert_eq!(h.headers()["x-content-type-options"], "nosniff");
    assert_eq!(h.headers()["referrer-policy"], "no-referrer");

    // Sign out: the pages ask again.
    click(&c, "header button").await;
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/signin"));
    c.close().await.unwrap();
    d.shutdown().await;
}

/// A daemon whose one provider, `name`, sends as `mailbox` over STARTTLS with XOAUTH2 and
/// signs in through the stand-in identity platform `id` (`oauth2`: the `[provider.oauth2]`
/// lines, `{id}` standing for its address), and a message held until the sign-in.
async fn held_for_sign_in(
    id: &common::identity::Identity,
    name: &str,
    mailbox: &str,
    oauth2: &str,
) -> (Upstream, TestEnv, Daemon, String) {
    let ca = common::upstream::TestCa::new("pages CA");
    let up =
        Upstream::start(Script::over_starttls(&ca).xoauth2("XOAUTH2", mailbox, id.access())).await;
    let env = TestEnv::new("", "");
    let ca_file = env.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    env.write_config(
        "",
        &format!(
            "{}username = \"{mailbox}\"\n\
             [provider.oauth2]\n{}\
             [distributor]\ndefault_provider = \"{name}\"\nretry_initial = \"10m\"\n",
            common::tls_smtp(name, up.addr.port(), &ca_file),
            oauth2.replace("{id}", &id.addr.to_string()),
        ),
    );
    let d = Daemon::start(env.config()).await.unwrap();
    let held = submit_short(
        d.smtp_addrs[0],
        "cron@server.local",
        "a@example.com",
        "Held until the sign-in",
    )
    .await;
    wait_status(&d, &held, Status::Deferred).await;
    (up, env, d, held)
}

/// An administrator with a browser and no terminal signs an Outlook.com mailbox in from
/// the dashboard: the device code flow runs in the daemon, the page shows the platform's
/// URL, code and sentence (as text), updates itself, and the held mail goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_signs_in_from_the_dashboard() {
    use common::identity::Identity;
    let Some(driver) = Driver::start() else {
        return;
    };
    let id = Identity::start("public-client").await;
    id.with(|s| {
        s.device_message = Some(
            "To sign in, open https://microsoft.com/devicelogin and enter HQ7T-X2PB <img src=x onerror=window.__pwned=1>".into(),
        )
    });
    let (up, _env, d, held) = held_for_sign_in(
        &id,
        "outlook",
        "pat@outlook.com",
        "flow = \"device_code\"\ntenant_id = \"consumers\"\nclient_id = \"public-client\"\n\
         token_url = \"http://{id}/consumers/oauth2/v2.0/token\"\n\
         device_code_url = \"http://{id}/consumers/oauth2/v2.0/devicecode\"\n",
    )
    .await;

    let c = driver.browser().await;
    let base = format!("http://{}", d.status_addr);
    signin(&c, &base).await;
    c.goto(&format!("{base}/")).await.unwrap();
    let cell = text(&c, "td.token[data-provider=outlook]").await;
    assert!(cell.contains("not signed in"), "{cell}");
    click(&c, "button.sign-in").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/providers/outlook/sign-in")
    );
    assert_eq!(text(&c, "#user-code").await, "HQ7T-X2PB");
    let link = c.find(Locator::Css("#verification-uri")).await.unwrap();
    assert_eq!(
        link.attr("href").await.unwrap().as_deref(),
        Some("https://microsoft.com/devicelogin")
    );
    assert!(
        text(&c, "#platform-message")
            .await
            .ends_with("<img src=x onerror=window.__pwned=1>"),
        "the platform's words are text"
    );
    shot(&c, "sign-in-waiting").await;
    // The person enters the code elsewhere; the page notices by itself.
    id.with(|s| s.approved = true);
    let signed = signed_in_text(&c).await;
    assert!(
        signed.contains("Signed in as pat@outlook.com"),
        "{signed:?}"
    );
    assert!(signed.contains("1 held message released"), "{signed}");
    assert_eq!(
        c.execute("return typeof window.__pwned;", vec![])
            .await
            .unwrap(),
        serde_json::json!("undefined")
    );
    shot(&c, "sign-in-done").await;
    wait_status(&d, &held, Status::Sent).await;
    assert_eq!(
        up.messages()[0].auth_user.as_deref(),
        Some("pat@outlook.com")
    );
    c.goto(&format!("{base}/")).await.unwrap();
    let cell = text(&c, "td.token[data-provider=outlook]").await;
    assert!(cell.contains("signed in as pat@outlook.com"), "{cell}");
    // The user code never reaches the open /status.
    let status = common::text_at(format!("{base}/status")).await;
    assert!(!status.contains("HQ7T-X2PB"));
    c.close().await.unwrap();
}

/// Gmail from the browser: Sign in sends the browser to the platform (the stand-in of
/// Google's authorization endpoint, PKCE and `state`), which sends it back to the pages'
/// loopback callback; the code is exchanged in the daemon and the held mail goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gmail_mailbox_signs_in_from_the_dashboard() {
    use common::identity::Identity;
    let Some(driver) = Driver::start() else {
        return;
    };
    let id = Identity::start("desktop-client.apps.googleusercontent.com").await;
    id.with(|s| {
        s.client_secret = Some("GOCSPX-secret".into());
        s.rotate = false;
        s.id_token_account = Some("pat.example@gmail.com".into());
    });
    let (up, _env, d, held) = held_for_sign_in(
        &id,
        "gmail",
        "pat.example@gmail.com",
        "flow = \"authorization_code\"\n\
         client_id = \"desktop-client.apps.googleusercontent.com\"\nclient_secret = \"GOCSPX-secret\"\n\
         scope = \"https://mail.google.com/\"\nauthorize_url = \"http://{id}/o/oauth2/v2/auth\"\n\
         token_url = \"http://{id}/token\"\n",
    )
    .await;
    let base = format!("http://{}", d.status_addr);
    // A redirect nobody is waiting for is refused.
    let forged = common::get(format!("{base}/oauth2/callback?state=guess&code=stolen"))
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);

    let c = driver.browser().await;
    signin(&c, &base).await;
    c.goto(&format!("{base}/")).await.unwrap();
    click(&c, "button.sign-in").await;
    let signed = signed_in_text(&c).await;
    assert!(
        signed.contains("Signed in as pat.example@gmail.com"),
        "{signed:?}"
    );
    assert!(signed.contains("1 held message released"), "{signed}");
    let url = c.current_url().await.unwrap();
    assert_eq!(url.path(), "/oauth2/callback");
    assert_eq!(url.host_str(), Some("127.0.0.1"));
    assert_eq!(url.port(), Some(d.status_addr.port()));
    let asked = id.with(|s| s.authorize_requests[0].clone());
    assert_eq!(
        asked["redirect_uri"],
        format!("http://127.0.0.1:{}/oauth2/callback", d.status_addr.port())
    );
    let exchanged = id.grants_of("authorization_code");
    assert_eq!(exchanged.len(), 1);
    assert!(exchanged[0]["code_verifier"].len() >= 43);
    wait_status(&d, &held, Status::Sent).await;
    assert_eq!(
        up.messages()[0].auth_user.as_deref(),
        Some("pat.example@gmail.com")
    );
    // The same answer twice is refused (the waiting sign-in is gone).
    c.refresh().await.unwrap();
    let again = c
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        again.contains("no sign-in is waiting for this answer"),
        "{again}"
    );
    c.close().await.unwrap();
}

/// The words of every heading and cell of the page's tables that a line break cut in two
/// (a word whose text spans more than one line box).
const BROKEN_WORDS: &str = r#"
const out = [];
for (const cell of document.querySelectorAll("table th, table td")) {
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    // A word: a run of letters and digits. An address may wrap after its hyphen or a
    // time between date and clock, as text does; a break inside a run is a broken word.
    const re = /[\p{L}\p{N}]+/gu; let m;
    while ((m = re.exec(node.data))) {
      const r = document.createRange();
      r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
      const tops = new Set(Array.from(r.getClientRects()).map(x => Math.round(x.top)));
      if (tops.size > 1) out.push(m[0]);
    }
  }
}
return out;"#;

/// The counts of a chart's bars: [start, sent, deferred, failed] each.
async fn bars(c: &Client, chart: &str) -> Vec<(String, u64, u64, u64)> {
    let v = c
        .execute(
            &format!(
                "return Array.from(document.querySelectorAll('#{chart} g.bar')).map(g => [g.dataset.start, +g.dataset.sent, +g.dataset.deferred, +g.dataset.failed]);"
            ),
            vec![],
        )
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b[0].as_str().unwrap().to_string(),
                b[1].as_u64().unwrap(),
                b[2].as_u64().unwrap(),
                b[3].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Attempts per hour by outcome as the history tells them: every attempt but a
/// message's last left it deferred; the last one did what the message's status says
/// (partly sent counts as failed, as on the chart).
fn from_history(
    records: &[serde_json::Value],
) -> std::collections::BTreeMap<String, (u64, u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for r in records {
        let attempts = r["attempts"].as_array().unwrap();
        for (i, a) in attempts.iter().enumerate() {
            let hour = format!("{}:00:00Z", &a["at"].as_str().unwrap()[..13]);
            let e: &mut (u64, u64, u64) = out.entry(hour).or_default();
            let last = i + 1 == attempts.len();
            match (last, r["status"].as_str().unwrap()) {
                (true, "sent") => e.0 += 1,
                (true, "failed" | "partial") => e.2 += 1,
                _ => e.1 += 1,
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_what_the_history_holds_and_the_pages_read_as_one_product() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let up = Upstream::start(
        Script::default()
            .reply("rcpt:gone@contoso.com", "550 5.1.1 <gone@contoso.com>: Recipient address rejected: User unknown in local recipient table")
            .reply("rcpt:later@contoso.com", "451 4.3.0 <later@contoso.com>: try again later"),
    )
    .await;
    let env = TestEnv::new(
        "",
        &format!(
            "{}\
             per_minute_limit = 30\nper_day_recipient_limit = 1000\n\
             [distributor]\ndefault_provider = \"upstream-relay\"\n[notify]\nbounce = \"off\"\n",
            common::plain_smtp("upstream-relay", up.addr.port())
        ),
    );
    let d = Daemon::start(env.config()).await.unwrap();
    let smtp = d.smtp_addrs[0];
    let mut ids = Vec::new();
    for (rcpts, subject, want) in [
        (&["a@contoso.com"][..], "Invoice 1001", Status::Sent),
        (&["b@contoso.com"][..], "Invoice 1002", Status::Sent),
        (&["gone@contoso.com"][..], "Payroll report", Status::Failed),
        (
            &["c@contoso.com", "gone@contoso.com"][..],
            "Statement",
            Status::Partial,
        ),
        (&["later@contoso.com"][..], "Reminder", Status::Deferred),
    ] {
        let id = submit_to(
            smtp,
            "erp@erp.local",
            rcpts,
            format!("Subject: {subject}\r\n\r\nsecret words of the mail\r\n").as_bytes(),
        )
        .await;
        wait_status(&d, &id, want).await;
        ids.push(id);
    }
    let deferred = ids[4].clone();
    let base = format!("http://{}", d.status_addr);
    let c = driver.browser().await;
    signin(&c, &base).await;

    // The chart's numbers are the history's, hour by hour and in total.
    c.goto(&format!("{base}/")).await.unwrap();
    shot(&c, "dashboard-chart").await;
    let records: Vec<serde_json::Value> =
        common::json_at(format!("{base}/api/messages?limit=100")).await;
    let want = from_history(&records);
    let hourly = bars(&c, "chart-hourly").await;
    assert_eq!(hourly.len(), 24);
    let mut got = std::collections::BTreeMap::new();
    for (start, s, df, f) in &hourly {
        if s + df + f > 0 {
            got.insert(start.clone(), (*s, *df, *f));
        }
    }
    assert_eq!(got, want, "the hourly chart against the history");
    let total = want
        .values()
        .fold((0, 0, 0), |t, v| (t.0 + v.0, t.1 + v.1, t.2 + v.2));
    assert_eq!(
        total,
        (2, 1, 2),
        "sent: two; deferred: one; failed: the failed and the partial"
    );
    let daily = bars(&c, "chart-daily").await;
    assert_eq!(daily.len(), 30);
    let day_total = daily
        .iter()
        .fold((0, 0, 0), |t, b| (t.0 + b.1, t.1 + b.2, t.2 + b.3));
    assert_eq!(day_total, total, "the daily chart holds the same attempts");
    assert_eq!(text(&c, "#day-sent").await, total.0.to_string());
    // The SVGs hold numbers and times only, never a word of the mail.
    for chart in ["chart-hourly", "chart-daily"] {
        let svg = c
            .execute(
                &format!("return document.getElementById('{chart}').outerHTML;"),
                vec![],
            )
            .await
            .unwrap();
        let svg = svg.as_str().unwrap();
        for mail in ["Invoice", "Payroll", "secret", "contoso", "erp@", "@"] {
            assert!(!svg.contains(mail), "{chart} holds {mail:?}: {svg}");
        }
    }
    // Each provider's limits as bars, with the numbers /status gives.
    let status: serde_json::Value = common::json_at(format!("{base}/status")).await;
    let p = common::provider_in(&status, "upstream-relay");
    assert_eq!(p["sent_last_minute"], 3, "{p}");
    let minute = c
        .find(Locator::Css(
            "td.provider-minute[data-provider=upstream-relay] svg.limit",
        ))
        .await
        .unwrap();
    assert_eq!(
        minute.attr("data-limit").await.unwrap().as_deref(),
        Some("30")
    );
    assert_eq!(
        minute.attr("data-used").await.unwrap(),
        Some(p["sent_last_minute"].to_string())
    );
    let day = c
        .find(Locator::Css(
            "td.provider-day[data-provider=upstream-relay] svg.limit",
        ))
        .await
        .unwrap();
    assert_eq!(
        day.attr("data-limit").await.unwrap().as_deref(),
        Some("1000")
    );
    assert_eq!(
        day.attr("data-used").await.unwrap(),
        Some(p["recipients_last_day"].to_string())
    );
    // At 1280 px no heading or cell breaks a word ("upstrea m", "Kin d").
    let broken = c.execute(BROKEN_WORDS, vec![]).await.unwrap();
    assert_eq!(
        broken,
        serde_json::json!([]),
        "words broken on the dashboard"
    );

    // The deferred count is a link to the deferred messages.
    assert_eq!(text(&c, "#count-deferred").await, "1");
    click(&c, "#count-deferred").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .contains("status=deferred")
    );
    let list = rows(&c).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0].contains("Reminder"), "{list:?}");
    let broken = c.execute(BROKEN_WORDS, vec![]).await.unwrap();
    assert_eq!(broken, serde_json::json!([]), "words broken on the list");

    // One timestamp format on every page; no RFC 3339 'T...Z' shown anywhere.
    let rfc3339 = "/\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d(:\\d\\d)?Z/.test(document.querySelector('main').innerText)";
    for path in [
        "/".to_string(),
        "/messages".into(),
        format!("/messages/{deferred}"),
        format!("/messages/{}", ids[2]),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        let found = c
            .execute(&format!("return {rfc3339};"), vec![])
            .await
            .unwrap();
        assert_eq!(
            found,
            serde_json::json!(false),
            "an RFC 3339 time shown on {path}"
        );
    }
    c.goto(&format!("{base}/messages")).await.unwrap();
    for cell in c.find_all(Locator::Css("td.time")).await.unwrap() {
        let t = cell.text().await.unwrap();
        assert!(
            t.len() == 23 && t.ends_with(" UTC") && t.as_bytes()[10] == b' ',
            "{t}"
        );
    }
    // The search box shows its whole placeholder.
    let fits = c
        .execute(
            "const i = document.getElementById('search'); const x = document.createElement('canvas').getContext('2d'); x.font = getComputedStyle(i).font; return x.measureText(i.placeholder).width < i.clientWidth - 8;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        fits,
        serde_json::json!(true),
        "the search placeholder is cut off"
    );
    // The provider filter is a choice of the configured providers.
    c.find(Locator::Css("#filter-provider"))
        .await
        .unwrap()
        .select_by_value("upstream-relay")
        .await
        .unwrap();
    click(&c, "#apply").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .contains("provider=upstream-relay")
    );
    assert_eq!(rows(&c).await.len(), 5);
    shot(&c, "list-provider").await;

    // A failure's fix shows commands as code, never literal backticks.
    c.goto(&format!("{base}/messages/{}", ids[2]))
        .await
        .unwrap();
    let fix = text(&c, "li.attempt .fix").await;
    assert!(!fix.contains('`'), "{fix}");
    assert_eq!(
        text(&c, "li.attempt .fix code").await,
        "mailgate retry ID",
        "the fix's command is code"
    );

    // The waiting message says why and until when, and Cancel stops it.
    c.goto(&format!("{base}/messages/{deferred}"))
        .await
        .unwrap();
    let waiting = text(&c, "#waiting").await;
    assert!(
        waiting.contains("next attempt at 20") && waiting.ends_with(" UTC"),
        "{waiting}"
    );
    click(&c, "#cancel").await;
    assert_eq!(text(&c, "#status").await, "cancelled");
    let cancelled = text(&c, "#cancelled").await;
    assert!(
        cancelled.starts_with("Cancelled at 20") && cancelled.contains(" UTC by "),
        "{cancelled}"
    );
    assert_eq!(
        d.pipeline
            .store()
            .record(&deferred)
            .unwrap()
            .unwrap()
            .status,
        Status::Cancelled
    );
    shot(&c, "cancelled").await;

    // Paused stands out: a banner and the distributor card marked.
    c.goto(&format!("{base}/")).await.unwrap();
    click(&c, "#pause").await;
    assert!(
        text(&c, "#paused-banner")
            .await
            .contains("Sending is paused")
    );
    assert!(
        c.find(Locator::Css("#distributor.paused")).await.is_ok(),
        "the distributor card is marked paused"
    );
    shot(&c, "dashboard-paused").await;
    click(&c, "#resume").await;
    assert!(c.find(Locator::Css("#paused-banner")).await.is_err());
    c.close().await.unwrap();
    d.shutdown().await;
}

/// Tables whose container must scroll sideways to show them (a cut column), and the page
/// itself when it is wider than the window: `[what, scrollWidth, clientWidth]` each.
const CUT_COLUMNS: &str = r#"
const out = [];
for (const t of document.querySelectorAll("main table")) {
  const box = t.closest(".scroll") || t.parentElement;
  if (box.scrollWidth > box.clientWidth + 1) out.push([t.className, box.scrollWidth, box.clientWidth]);
}
const root = document.documentElement;
if (root.scrollWidth > root.clientWidth + 1) out.push(["page", root.scrollWidth, root.clientWidth]);
return out;"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_fit_at_1280_1400_and_1920_px_and_say_sizes_and_ports() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let up = Upstream::start(Script::default()).await;
    // A primary nobody listens on: its circuit opens, its mail waits with a reason.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let env = TestEnv::new(
        "",
        &format!(
            "{}\
             per_minute_limit = 30\nper_day_recipient_limit = 10000\ncircuit_open_after = 1\ncircuit_cooldown = \"10m\"\n\
             {}\
             per_minute_limit = 30\nper_day_recipient_limit = 10000\n\
             [[user]]\nname = \"accounts-payable\"\nmatch_senders = [\"*@ap.erp.local\"]\nprovider = \"backup-relay\"\n\
             [distributor]\ndefault_provider = \"primary-relay\"\n[notify]\nbounce = \"off\"\n",
            common::plain_smtp("primary-relay", dead_port),
            common::plain_smtp("backup-relay", up.addr.port())
        ),
    );
    let d = Daemon::start(env.config()).await.unwrap();
    let smtp = d.smtp_addrs[0];
    let many: Vec<String> = (1..=6)
        .map(|i| format!("accounts.receivable.team{i}@subsidiary-contoso.example"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let big = format!(
        "Subject: Quarterly statement for the customers of the northern region, with attachments\r\n\r\n{}\r\n",
        "x".repeat(76).repeat(400)
    );
    let sent = submit_to(
        smtp,
        "invoices.northern-region@ap.erp.local",
        &many,
        big.as_bytes(),
    )
    .await;
    wait_status(&d, &sent, Status::Sent).await;
    let waiting = submit_to(
        smtp,
        "nightly-batch-scheduler@erp.local",
        &["finance-controlling@contoso.example"],
        b"Subject: Nightly batch report\r\n\r\nok\r\n",
    )
    .await;
    wait_status(&d, &waiting, Status::Deferred).await;

    let base = format!("http://{}", d.status_addr);
    let c = driver.browser().await;
    signin(&c, &base).await;
    for width in [1280u32, 1400, 1920] {
        c.set_window_size(width, 1000).await.unwrap();
        for path in ["/messages", "/"] {
            c.goto(&format!("{base}{path}")).await.unwrap();
            c.execute(
                "const t = document.querySelector('table.providers, table.history'); t.scrollIntoView(); return Array.from(t.querySelectorAll('th')).map(h => h.innerText + ':' + Math.round(h.getBoundingClientRect().width));",
                vec![],
            )
            .await
            .unwrap();
            shot(&c, &format!("fit-{width}{}", path.replace('/', "-"))).await;
            let cut = c.execute(CUT_COLUMNS, vec![]).await.unwrap();
            assert_eq!(cut, serde_json::json!([]), "cut at {width} px on {path}");
            let broken = c.execute(BROKEN_WORDS, vec![]).await.unwrap();
            assert_eq!(
                broken,
                serde_json::json!([]),
                "words broken at {width} px on {path}"
            );
        }
    }
    // The waiting row says why in the Waiting column, whole.
    c.goto(&format!("{base}/messages")).await.unwrap();
    let why = text(&c, "table.history td.waiting").await;
    assert!(!why.is_empty(), "the Waiting column is empty");
    // The dashboard: each upstream with its port; the open circuit and until when; no
    // Sign-in column when no provider signs in with OAuth2.
    c.goto(&format!("{base}/")).await.unwrap();
    let hosts: Vec<String> = {
        let mut v = Vec::new();
        for cell in c
            .find_all(Locator::Css("table.providers td.host"))
            .await
            .unwrap()
        {
            v.push(cell.text().await.unwrap());
        }
        v
    };
    assert!(
        hosts.contains(&format!("127.0.0.1:{dead_port}")),
        "{hosts:?}"
    );
    assert!(
        hosts.contains(&format!("127.0.0.1:{}", up.addr.port())),
        "{hosts:?}"
    );
    let circuit = text(&c, "td.circuit[data-provider=primary-relay]").await;
    assert!(circuit.starts_with("open"), "{circuit}");
    assert!(circuit.contains(" UTC"), "{circuit}");
    let heads = text(&c, "table.providers thead").await;
    assert!(!heads.contains("Sign-in"), "{heads}");
    // The limit columns are in the table's own font size.
    let sizes = c
        .execute(
            "const t = getComputedStyle(document.querySelector('table.providers td.name')).fontSize; return Array.from(document.querySelectorAll('table.providers .limit-text, table.providers .limit-none')).map(e => getComputedStyle(e).fontSize === t);",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        sizes
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|b| b == true)),
        "{sizes}"
    );
    // Sizes in words, not raw bytes.
    c.goto(&format!("{base}/messages/{sent}")).await.unwrap();
    let page = text(&c, "main").await;
    let size = page
        .lines()
        .find_map(|l| l.strip_prefix("Size"))
        .map(str::trim)
        .unwrap_or_default();
    assert!(
        size.ends_with(" KB")
            && size[..size.len() - 3]
                .parse::<u32>()
                .is_ok_and(|k| (30..=32).contains(&k)),
        "{page}"
    );
    assert!(!page.contains(" bytes"), "{page}");
}
