//! Sign-in with no stored secret, and Microsoft's national clouds, against local
//! stand-ins speaking the documented wire formats: Azure's instance metadata endpoint
//! (`Metadata: true` required, `expires_in` as a string), App Service's identity endpoint
//! (`X-IDENTITY-HEADER`, `expires_on`), and the token endpoint taking a federated client
//! assertion that must be the token file's current content. Tokens are fetched, cached,
//! used for XOAUTH2 and for Graph; a silent or missing endpoint is bounded and diagnosed;
//! a rotated token file is read anew; a `cloud = "usgov"` provider asks for its cloud's
//! resource and scope.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::msgraph::MockMicrosoft;
use common::upstream::{Script, Upstream};
use common::{DaemonProcess, TestEnv, assert_has, bin, send_and_wait, short_message};
use mailgate::history::{Record, Status};

const MAILBOX: &str = "relay@contoso.com";

fn diagnosis(r: &Record) -> (String, String) {
    let a = r
        .attempts
        .last()
        .unwrap_or_else(|| panic!("no attempt: {r:#?}"));
    let code = a.diagnosis.as_ref().map(|d| d.code.to_string());
    (code.unwrap_or_default(), a.reply.clone())
}

/// An upstream that takes XOAUTH2 for the mailbox with the token `token` only.
async fn xoauth2_upstream(token: &str) -> Upstream {
    Upstream::start(Script {
        offer_auth: true,
        auth_mechs: Some("LOGIN XOAUTH2".into()),
        credentials: Some((MAILBOX.into(), token.into())),
        ..Script::default()
    })
    .await
}

/// An smtp provider `o365` at `up` in `cloud`, signing in with `oauth` lines.
fn smtp_provider(up: &Upstream, cloud: &str, oauth: &str) -> String {
    format!(
        "{}cloud = \"{cloud}\"\nusername = \"{MAILBOX}\"\ntimeout = \"2s\"\n[provider.oauth2]\n{oauth}\n\
         [distributor]\ndefault_provider = \"o365\"\n",
        common::plain_smtp("o365", up.addr.port()),
    )
}

/// A graph provider `exchange` at `ms`, signing in with `oauth` lines.
fn graph_provider(ms: &MockMicrosoft, oauth: &str) -> String {
    format!(
        "{}timeout = \"2s\"\n[provider.oauth2]\n{oauth}\n[distributor]\ndefault_provider = \"exchange\"\n",
        common::graph_at("exchange", ms.graph_url())
    )
}

async fn send(d: &mailgate::Daemon, subject: &str) -> Record {
    send_and_wait(d, MAILBOX, &["a@example.com"], &short_message(subject)).await
}

/// A daemon on `env` takes one message, which is held with `identity-unavailable`:
/// the attempt's reply.
async fn held_without_identity(env: &TestEnv) -> String {
    let d = mailgate::Daemon::start(env.config()).await.unwrap();
    let r = send(&d, "held").await;
    d.shutdown().await;
    assert_eq!(r.status, Status::Deferred, "{r:#?}");
    let (code, reply) = diagnosis(&r);
    assert_eq!(code, "identity-unavailable", "{r:#?}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_identity_token_is_fetched_cached_and_used_for_xoauth2_and_graph() {
    let ms = MockMicrosoft::start().await;
    ms.with(|s| {
        s.system_identity = true;
        s.user_identities = vec!["user-assigned-1".into()];
    });

    // SMTP in the usgov cloud, the system-assigned identity: two messages, one token.
    let up = xoauth2_upstream("tok-1").await;
    let oauth = format!(
        "flow = \"managed-identity\"\ntoken_url = \"{}\"",
        ms.imds_url()
    );
    let env = TestEnv::new("", &smtp_provider(&up, "usgov", &oauth));
    let d = mailgate::Daemon::start(env.config()).await.unwrap();
    for subject in ["one", "two"] {
        let r = send(&d, subject).await;
        assert_eq!(r.status, Status::Sent, "{r:#?}");
    }
    d.shutdown().await;
    let got = up.messages();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.auth_user.as_deref() == Some(MAILBOX)));
    let asked = ms.with(|s| s.identity_requests.clone());
    assert_eq!(asked.len(), 1, "the token is cached: {asked:#?}");
    let (endpoint, query, headers) = &asked[0];
    assert_eq!(endpoint, "imds");
    assert_eq!(query["resource"], "https://outlook.office365.us");
    assert_eq!(query["api-version"], "2018-02-01");
    assert!(
        !query.contains_key("client_id"),
        "system-assigned: {query:?}"
    );
    assert_eq!(headers["metadata"], "true");

    // Graph, a user-assigned identity named by client_id.
    let oauth = format!(
        "flow = \"managed-identity\"\nclient_id = \"user-assigned-1\"\ntoken_url = \"{}\"",
        ms.imds_url()
    );
    let env = TestEnv::new("", &graph_provider(&ms, &oauth));
    let d = mailgate::Daemon::start(env.config()).await.unwrap();
    let r = send(&d, "three").await;
    assert_eq!(r.status, Status::Sent, "{r:#?}");
    d.shutdown().await;
    assert_eq!(ms.with(|s| s.sent[0].authorization.clone()), "Bearer tok-2");
    let (_, query, _) = ms.with(|s| s.identity_requests[1].clone());
    assert_eq!(query["resource"], "https://graph.microsoft.com");
    assert_eq!(query["client_id"], "user-assigned-1");

    // An identity the machine does not have: held, saying so.
    let env = TestEnv::new(
        "",
        &graph_provider(&ms, &oauth.replace("user-assigned-1", "nobody")),
    );
    let reply = held_without_identity(&env).await;
    assert_has(
        &reply,
        &[
            "no user-assigned identity with client_id nobody",
            "Identity not found",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_absent_metadata_endpoint_is_bounded_and_diagnosed() {
    let silent_addr = common::silent_listener().await;
    let absent = common::free_port();
    let up = xoauth2_upstream("tok-1").await;
    for (url, says) in [
        (
            format!("http://{silent_addr}/metadata/identity/oauth2/token"),
            "did not answer within 2s",
        ),
        (
            format!("http://127.0.0.1:{absent}/metadata/identity/oauth2/token"),
            "is unreachable",
        ),
    ] {
        let oauth = format!("flow = \"managed-identity\"\ntoken_url = \"{url}\"");
        let env = TestEnv::new("", &smtp_provider(&up, "global", &oauth));
        let started = Instant::now();
        let reply = held_without_identity(&env).await;
        let took = started.elapsed();
        assert_has(
            &reply,
            &["managed identity: the instance metadata endpoint", says],
        );
        assert!(
            took < Duration::from_secs(15),
            "bounded by the timeout: {took:?}"
        );
    }
    assert!(up.messages().is_empty());
}

/// Polls the daemon's API until message `id` has had an attempt: the record.
async fn attempted(d: &DaemonProcess, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let r = d.get_json(&format!("/api/messages/{id}")).await;
        if r["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            return r;
        }
        assert!(Instant::now() < deadline, "no attempt in time: {r:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_service_identity_endpoint_from_the_environment() {
    let ms = MockMicrosoft::start().await;
    let header = "app-service-identity-header-7f3a91c2";
    ms.with(|s| {
        s.system_identity = true;
        s.identity_header = header.into();
    });
    let env = TestEnv::new("", &graph_provider(&ms, "flow = \"managed-identity\""));
    let mut cmd = std::process::Command::new(bin());
    cmd.env("IDENTITY_ENDPOINT", ms.app_service_url())
        .env("IDENTITY_HEADER", header);
    let mut d = DaemonProcess::start_with(&env.config_path, cmd);
    let id = common::submit_short(d.smtp, MAILBOX, "a@example.com", "app service").await;
    let r = d.finished(&id).await;
    assert_eq!(r["status"], "sent", "{r:#}");
    assert_eq!(ms.with(|s| s.sent[0].authorization.clone()), "Bearer tok-1");
    let (endpoint, query, headers) = ms.with(|s| s.identity_requests[0].clone());
    assert_eq!(endpoint, "app-service");
    assert_eq!(query["api-version"], "2019-08-01");
    assert_eq!(query["resource"], "https://graph.microsoft.com");
    assert_eq!(headers["x-identity-header"], header);
    // The identity header is a secret: not in any log line.
    d.terminate();
    assert!(
        !d.seen.iter().any(|l| l.to_string().contains(header)),
        "the identity header was logged"
    );
}

/// A JWT-shaped federated token with this subject and end (Unix seconds).
fn federated_token(sub: &str, exp: u64) -> String {
    let claims = serde_json::json!({
        "aud": ["api://AzureADTokenExchange"],
        "iss": "https://oidc.prod-aks.azure.com/tenant/issuer/",
        "sub": sub,
        "exp": exp,
    });
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_reads_the_rotating_token_file_for_every_request() {
    let ms = MockMicrosoft::start().await;
    // Tokens that live 2 s: renewed after one.
    ms.with(|s| s.expires_in = 2);
    let env = TestEnv::new(
        "",
        &graph_provider(
            &ms,
            &format!(
                "flow = \"workload-identity\"\ntoken_url = \"{}\"",
                ms.token_url("contoso")
            ),
        ),
    );
    let file = env.dir.path().join("azure-identity-token");
    let first = federated_token("system:serviceaccount:mail:mailgate", unix_now() + 3600);
    std::fs::write(&file, format!("{first}\n")).unwrap();
    ms.with(|s| s.expected_assertion = Some(first.clone()));
    let mut cmd = std::process::Command::new(bin());
    cmd.env("AZURE_FEDERATED_TOKEN_FILE", &file)
        .env("AZURE_CLIENT_ID", "workload-client-id");
    let mut d = DaemonProcess::start_with(&env.config_path, cmd);
    let id = common::submit_short(d.smtp, MAILBOX, "a@example.com", "first").await;
    assert_eq!(d.finished(&id).await["status"], "sent");

    // kubelet rotates the file; the next token request carries the new content.
    let second = federated_token("system:serviceaccount:mail:mailgate", unix_now() + 7200);
    std::fs::write(&file, &second).unwrap();
    ms.with(|s| s.expected_assertion = Some(second.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = common::submit_short(d.smtp, MAILBOX, "a@example.com", "second").await;
    assert_eq!(d.finished(&id).await["status"], "sent");
    let grants: Vec<HashMap<String, String>> = ms.with(|s| s.grants.clone());
    assert_eq!(grants.len(), 2, "{grants:#?}");
    for (g, want) in grants.iter().zip([&first, &second]) {
        assert_eq!(g["grant_type"], "client_credentials");
        assert_eq!(
            g["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assert_eq!(&g["client_assertion"], want);
        assert_eq!(g["client_id"], "workload-client-id");
        assert_eq!(g["scope"], "https://graph.microsoft.com/.default");
        assert!(!g.contains_key("client_secret"));
    }

    // An expired token in the file: held, saying so, without asking Entra.
    std::fs::write(
        &file,
        federated_token("system:serviceaccount:mail:mailgate", 1_600_000_000),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = common::submit_short(d.smtp, MAILBOX, "a@example.com", "third").await;
    let r = attempted(&d, &id).await;
    assert_eq!(r["status"], "deferred", "{r:#}");
    assert_eq!(
        r["attempts"][0]["diagnosis"]["code"], "identity-unavailable",
        "{r:#}"
    );
    assert_has(
        r["attempts"][0]["reply"].as_str().unwrap(),
        &["federated token in", "expired at 2020-09-13"],
    );
    assert_eq!(ms.with(|s| s.grants.len()), 2);
    d.terminate();
    // The federated tokens are secrets too.
    assert!(!d.seen.iter().any(|l| {
        let l = l.to_string();
        l.contains(&first) || l.contains(&second)
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_file_and_an_unmatched_federation_are_identity_unavailable() {
    let ms = MockMicrosoft::start().await;
    ms.with(|s| s.expected_assertion = Some("not what the file holds".into()));
    let up = xoauth2_upstream("tok-1").await;
    let env = TestEnv::new("", "");
    let file = env.dir.path().join("token");
    for (write, says) in [
        (None, "cannot be read"),
        (
            Some(federated_token(
                "system:serviceaccount:other:sa",
                unix_now() + 600,
            )),
            "AADSTS700213",
        ),
    ] {
        if let Some(t) = &write {
            std::fs::write(&file, t).unwrap();
        }
        let oauth = format!(
            "flow = \"workload-identity\"\ntenant_id = \"contoso\"\nclient_id = \"c\"\nfederated_token_file = \"{}\"\ntoken_url = \"{}\"",
            file.display(),
            ms.token_url("contoso")
        );
        env.write_config("", &smtp_provider(&up, "global", &oauth));
        assert_has(&held_without_identity(&env).await, &[says]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usgov_provider_asks_its_clouds_scope_and_check_config_refuses_secrets_beside_an_identity()
 {
    let ms = MockMicrosoft::start().await;
    let up = xoauth2_upstream("tok-1").await;
    let oauth = format!(
        "tenant_id = \"contoso\"\nclient_id = \"app\"\nclient_secret = \"s\"\ntoken_url = \"{}\"",
        ms.token_url("contoso")
    );
    let env = TestEnv::new("", &smtp_provider(&up, "usgov", &oauth));
    let d = mailgate::Daemon::start(env.config()).await.unwrap();
    let r = send(&d, "gcc high").await;
    d.shutdown().await;
    assert_eq!(r.status, Status::Sent, "{r:#?}");
    assert_eq!(
        ms.with(|s| s.grants[0]["scope"].clone()),
        "https://outlook.office365.us/.default"
    );

    for (oauth, says) in [
        (
            "flow = \"managed-identity\"\nclient_secret = \"s\"",
            "flow = \"managed-identity\" has no secret of its own",
        ),
        (
            "flow = \"workload-identity\"\nclient_secret_file = \"/etc/x\"",
            "flow = \"workload-identity\" has no secret of its own",
        ),
        (
            "flow = \"managed-identity\"\ntenant_id = \"contoso\"",
            "takes no tenant_id",
        ),
        (
            "flow = \"client_credentials\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\nfederated_token_file = \"/t\"",
            "federated_token_file is only for flow = \"workload-identity\"",
        ),
    ] {
        env.write_config("", &smtp_provider(&up, "global", oauth));
        let said = common::check_config_refuses(&env.config_path);
        assert_has(&said, &[says]);
    }
}
