//! A local stand-in for the identity platforms of delegated OAuth2, speaking their
//! documented wire formats: Microsoft's `devicecode` and `token` endpoints (RFC 8628 with
//! authorization_pending, slow_down, access_denied, expired_token; refresh tokens that
//! rotate on every use, the old one refused afterwards), Google's authorization endpoint
//! (redirects to the loopback with a code) and token endpoint with PKCE S256 verified, and
//! a JWT-bearer grant (RFC 7523) whose assertion is verified with the service account's
//! public key. It records every grant it received.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

/// What the stand-in answers and what it saw.
#[derive(Default)]
pub struct IdState {
    /// The client id it knows.
    pub client_id: String,
    /// Confidential client (Google Desktop app): the secret it expects; public otherwise.
    pub client_secret: Option<String>,
    /// Every token-endpoint request (form fields) with its arrival time.
    pub grants: Vec<(Instant, HashMap<String, String>)>,
    /// Device authorization requests.
    pub device_requests: Vec<HashMap<String, String>>,
    /// The answers to the next device-code polls ("authorization_pending", "slow_down",
    /// "access_denied", "expired_token"); when empty: pending until `approved`.
    pub device_answers: VecDeque<String>,
    /// The person entered the code and signed in.
    pub approved: bool,
    /// Replaces the platform's sentence in the device authorization answer.
    pub device_message: Option<String>,
    /// Refresh tokens that work now.
    pub valid_refresh: HashSet<String>,
    /// Refresh tokens that worked once and were rotated away.
    pub rotated_away: Vec<String>,
    /// Refresh tokens revoked through the revocation endpoint (RFC 7009).
    pub revoked: Vec<String>,
    /// Rotate the refresh token on every use (Microsoft); Google keeps it.
    pub rotate: bool,
    /// After a rotation the old refresh token still works (as Microsoft's do until they
    /// expire); when false it is refused from then on.
    pub old_stays_valid: bool,
    /// Answer refresh grants with this (status, body) instead.
    pub refresh_error: Option<(u16, String)>,
    /// Access tokens valid now (shared with the upstreams).
    pub access: Arc<Mutex<Vec<String>>>,
    /// Every refresh and access token issued (for "never in a log" checks).
    pub issued: Vec<String>,
    /// Lifetime of access tokens.
    pub expires_in: u64,
    /// Put this account in an id_token.
    pub id_token_account: Option<String>,
    /// Written with the valid access tokens, one per line (for aiosmtpd).
    pub token_file: Option<std::path::PathBuf>,
    /// Every device code and authorization code handed out.
    pub all_codes: Vec<String>,
    /// Authorization codes issued: code -> (challenge, redirect_uri).
    pub codes: HashMap<String, (String, String)>,
    /// The authorization requests' query parameters.
    pub authorize_requests: Vec<HashMap<String, String>>,
    /// The service account's public key (PKCS#1 DER) for JWT-bearer grants.
    pub jwt_public_key: Option<Vec<u8>>,
    /// The verified claims of each JWT-bearer assertion.
    pub jwt_claims: Vec<serde_json::Value>,
}

#[derive(Clone)]
pub struct Identity {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<IdState>>,
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

/// A token-looking value nobody could guess from the test's text.
fn fresh(prefix: &str) -> String {
    let n = SERIAL.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{n}x{t:08x}Q")
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        serde_json::json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

impl Identity {
    pub async fn start(client_id: &str) -> Identity {
        let state = Arc::new(Mutex::new(IdState {
            client_id: client_id.to_string(),
            expires_in: 3599,
            rotate: true,
            ..IdState::default()
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/token", post(token))
            .route("/o/oauth2/v2/auth", get(authorize))
            .route("/revoke", post(revoke))
            .with_state(state.clone());
        let addr = super::serve(app).await;
        Identity { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut IdState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// The access tokens valid now, for an upstream's XOAUTH2 check.
    pub fn access(&self) -> Arc<Mutex<Vec<String>>> {
        self.with(|s| s.access.clone())
    }

    /// The grants of one type, in order.
    pub fn grants_of(&self, grant_type: &str) -> Vec<HashMap<String, String>> {
        self.with(|s| {
            s.grants
                .iter()
                .filter(|(_, g)| g.get("grant_type").map(String::as_str) == Some(grant_type))
                .map(|(_, g)| g.clone())
                .collect()
        })
    }
}

async fn devicecode(
    State(state): State<Arc<Mutex<IdState>>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    s.device_requests.push(form.clone());
    if form.get("client_id") != Some(&s.client_id) {
        return oauth_error(
            400,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    let code = fresh("DC");
    s.all_codes.push(code.clone());
    s.codes.insert(code.clone(), (String::new(), String::new()));
    axum::Json(serde_json::json!({
        "device_code": code,
        "user_code": "HQ7T-X2PB",
        "verification_uri": "https://microsoft.com/devicelogin",
        "expires_in": 900,
        "interval": 1,
        "message": s.device_message.clone().unwrap_or_else(|| "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code HQ7T-X2PB to authenticate.".into()),
    }))
    .into_response()
}

fn issue(s: &mut IdState, with_refresh: bool) -> Response {
    let access = fresh("AT");
    s.access.lock().unwrap().push(access.clone());
    s.issued.push(access.clone());
    if let Some(f) = &s.token_file {
        let all = s.access.lock().unwrap().join("\n");
        std::fs::write(f, all + "\n").unwrap();
    }
    let mut body = serde_json::json!({
        "token_type": "Bearer",
        "scope": "https://outlook.office.com/SMTP.Send",
        "expires_in": s.expires_in,
        "ext_expires_in": s.expires_in,
        "access_token": access,
    });
    if with_refresh {
        let rt = fresh("RT");
        s.valid_refresh.insert(rt.clone());
        s.issued.push(rt.clone());
        body["refresh_token"] = rt.into();
    }
    if let Some(a) = &s.id_token_account {
        let claims = serde_json::json!({"preferred_username": a, "aud": s.client_id});
        body["id_token"] = format!(
            "{}.{}.sig",
            B64URL.encode(r#"{"alg":"none"}"#),
            B64URL.encode(claims.to_string())
        )
        .into();
    }
    axum::Json(body).into_response()
}

async fn token(
    State(state): State<Arc<Mutex<IdState>>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    s.grants.push((Instant::now(), form.clone()));
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return jwt_bearer(&mut s, &form);
    }
    if form.get("client_id") != Some(&s.client_id) {
        return oauth_error(
            400,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    match (&s.client_secret, form.get("client_secret")) {
        (None, Some(_)) => {
            return oauth_error(
                401,
                "invalid_client",
                "AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            );
        }
        (Some(want), got) if got != Some(want) => {
            return oauth_error(401, "invalid_client", "Unauthorized");
        }
        _ => {}
    }
    match grant.as_str() {
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let code = form.get("device_code").cloned().unwrap_or_default();
            if !s.codes.contains_key(&code) {
                return oauth_error(400, "invalid_grant", "AADSTS70000: unknown device code");
            }
            if let Some(answer) = s.device_answers.pop_front() {
                let words = match answer.as_str() {
                    "access_denied" => {
                        "AADSTS70000: The user has denied access to the scope requested by the client application."
                    }
                    "expired_token" => {
                        "AADSTS70020: The provided value for the input parameter 'device_code' is not valid. This device code has expired."
                    }
                    _ => {
                        "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling."
                    }
                };
                return oauth_error(400, &answer, words);
            }
            if !s.approved {
                return oauth_error(
                    400,
                    "authorization_pending",
                    "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                );
            }
            s.codes.remove(&code);
            issue(&mut s, true)
        }
        "refresh_token" => {
            if let Some((status, body)) = s.refresh_error.clone() {
                return (
                    StatusCode::from_u16(status).unwrap(),
                    [("content-type", "application/json")],
                    body,
                )
                    .into_response();
            }
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            if !s.valid_refresh.contains(&rt) {
                return oauth_error(
                    400,
                    "invalid_grant",
                    "AADSTS70008: The provided authorization code or refresh token has expired due to inactivity.",
                );
            }
            if s.rotate {
                if !s.old_stays_valid {
                    s.valid_refresh.remove(&rt);
                }
                s.rotated_away.push(rt);
                issue(&mut s, true)
            } else {
                issue(&mut s, false)
            }
        }
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((challenge, redirect)) = s.codes.remove(&code) else {
                return oauth_error(400, "invalid_grant", "Malformed auth code.");
            };
            if form.get("redirect_uri") != Some(&redirect) {
                return oauth_error(400, "redirect_uri_mismatch", "Bad Request");
            }
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = B64URL.encode(ring::digest::digest(
                &ring::digest::SHA256,
                verifier.as_bytes(),
            ));
            if computed != challenge {
                return oauth_error(400, "invalid_grant", "Invalid code verifier.");
            }
            issue(&mut s, true)
        }
        _ => oauth_error(400, "unsupported_grant_type", "Invalid grant_type"),
    }
}

/// Google's authorization endpoint: checks the request and sends the browser back to the
/// loopback with a code and the state.
async fn authorize(
    State(state): State<Arc<Mutex<IdState>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    s.authorize_requests.push(q.clone());
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let ok = q.get("client_id") == Some(&s.client_id)
        && q.get("response_type").map(String::as_str) == Some("code")
        && q.get("code_challenge_method").map(String::as_str) == Some("S256")
        && q.contains_key("code_challenge")
        && q.contains_key("state")
        // Without these Google issues no refresh token.
        && q.get("access_type").map(String::as_str) == Some("offline")
        && q.get("prompt").map(String::as_str) == Some("consent")
        && redirect.starts_with("http://127.0.0.1:");
    if !ok {
        return (StatusCode::BAD_REQUEST, "Error 400: invalid_request").into_response();
    }
    let code = fresh("AC");
    s.all_codes.push(code.clone());
    s.codes.insert(
        code.clone(),
        (q["code_challenge"].clone(), redirect.clone()),
    );
    let mut to = reqwest::Url::parse(&redirect).unwrap();
    to.query_pairs_mut()
        .append_pair("state", &q["state"])
        .append_pair("code", &code)
        .append_pair("scope", q.get("scope").map_or("", String::as_str));
    (StatusCode::FOUND, [("location", to.to_string())]).into_response()
}

/// RFC 7523: the assertion's signature and claims are checked with the public key.
fn jwt_bearer(s: &mut IdState, form: &HashMap<String, String>) -> Response {
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let parts: Vec<&str> = assertion.split('.').collect();
    let Some(key) = s.jwt_public_key.clone() else {
        return oauth_error(400, "invalid_grant", "no key");
    };
    if parts.len() != 3 {
        return oauth_error(400, "invalid_grant", "Invalid JWT: not three parts");
    }
    let signed = format!("{}.{}", parts[0], parts[1]);
    let sig = B64URL.decode(parts[2]).unwrap_or_default();
    let verified =
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key)
            .verify(signed.as_bytes(), &sig);
    if verified.is_err() {
        return oauth_error(400, "invalid_grant", "Invalid JWT Signature.");
    }
    let header: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    if header["alg"] != "RS256" {
        return oauth_error(400, "invalid_grant", "Invalid JWT: alg");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let iat = claims["iat"].as_i64().unwrap_or(0);
    let exp = claims["exp"].as_i64().unwrap_or(0);
    if (iat - now).abs() > 300 || exp <= now || exp - iat > 3600 {
        return oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
        );
    }
    s.jwt_claims
        .push(serde_json::json!({"header": header, "claims": claims}));
    issue(s, false)
}

/// Google's revocation endpoint (RFC 7009): the refresh token stops working.
async fn revoke(
    State(state): State<Arc<Mutex<IdState>>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    let token = form.get("token").cloned().unwrap_or_default();
    if s.valid_refresh.remove(&token) {
        s.revoked.push(token);
        axum::Json(serde_json::json!({})).into_response()
    } else {
        oauth_error(400, "invalid_token", "Token expired or revoked")
    }
}

/// `mailgate oauth2 login` as a child process, its standard output read line by line.
pub struct Login {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Login {
    /// Starts `mailgate --config CONFIG oauth2 login --provider PROVIDER EXTRA...` with no
    /// desktop (so no browser is started) and no standard input.
    pub fn start(config: &std::path::Path, provider: &str, extra: &[&str]) -> Login {
        let mut child = Command::new(super::bin())
            .arg("--config")
            .arg(config)
            .args(["oauth2", "login", "--provider", provider])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Login {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a printed line matching `pred`.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        super::wait_line(&self.lines, &mut self.seen, |l| pred(l), super::WAIT)
    }

    /// Waits for the exit; (code, the rest of stdout, stderr).
    pub fn finish(mut self) -> (i32, String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "oauth2 login did not end");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        (status.code().unwrap_or(-1), self.seen.join("\n"), err)
    }
}
