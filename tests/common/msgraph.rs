//! A local stand-in for the Microsoft identity platform token endpoint and Microsoft
//! Graph's sendMail, speaking their documented wire formats (form-encoded client
//! credentials grant in, JSON token out; base64 MIME in, 202 out) and recording what it
//! received. The real services cannot be reached from here.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;

/// One sendMail request as received.
#[derive(Debug, Clone)]
pub struct SendMail {
    pub sender: String,
    pub authorization: String,
    pub content_type: String,
    /// The base64 body, decoded.
    pub mime: Vec<u8>,
}

/// What the mock answers and what it saw.
#[derive(Debug, Default)]
pub struct MockState {
    /// Every grant (form fields) received.
    pub grants: Vec<HashMap<String, String>>,
    /// Tokens issued, in order.
    pub issued: Vec<String>,
    /// Lifetime of issued tokens.
    pub expires_in: u64,
    /// When set, the token endpoint answers this (status, body) instead.
    pub token_error: Option<(u16, String)>,
    /// Tokens Graph refuses with 401.
    pub revoked: Vec<String>,
    /// When set, Graph answers this (status, Retry-After, body) instead of 202.
    pub graph_reply: Option<(u16, Option<u64>, String)>,
    /// Every sendMail received.
    pub sent: Vec<SendMail>,
    /// Access tokens another identity platform stand-in issued, valid here too.
    pub also_valid: Option<Arc<Mutex<Vec<String>>>>,
}

#[derive(Clone)]
pub struct MockMicrosoft {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<MockState>>,
}

impl MockMicrosoft {
    pub async fn start() -> MockMicrosoft {
        let state = Arc::new(Mutex::new(MockState {
            expires_in: 3599,
            ..MockState::default()
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/v1.0/users/{sender}/sendMail", post(send_mail))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockMicrosoft { addr, state }
    }

    pub fn token_url(&self, tenant: &str) -> String {
        format!("http://{}/{tenant}/oauth2/v2.0/token", self.addr)
    }

    pub fn graph_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut MockState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

async fn token(
    State(state): State<Arc<Mutex<MockState>>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    s.grants.push(form);
    if let Some((status, body)) = s.token_error.clone() {
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response();
    }
    let tok = format!("tok-{}", s.issued.len() + 1);
    s.issued.push(tok.clone());
    axum::Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": s.expires_in,
        "ext_expires_in": s.expires_in,
        "access_token": tok,
    }))
    .into_response()
}

async fn send_mail(
    State(state): State<Arc<Mutex<MockState>>>,
    Path(sender): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = state.lock().unwrap();
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let token = authorization.strip_prefix("Bearer ").unwrap_or("");
    let elsewhere = s
        .also_valid
        .as_ref()
        .is_some_and(|v| v.lock().unwrap().iter().any(|t| t == token));
    if !(elsewhere || s.issued.iter().any(|t| t == token)) || s.revoked.iter().any(|t| t == token) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token validation failure."}})),
        )
            .into_response();
    }
    if let Some((status, retry_after, body)) = s.graph_reply.clone() {
        let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
        if let Some(ra) = retry_after {
            resp.headers_mut()
                .insert("retry-after", ra.to_string().parse().unwrap());
        }
        return resp;
    }
    let mime = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap_or_default();
    s.sent.push(SendMail {
        sender,
        authorization,
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        mime,
    });
    StatusCode::ACCEPTED.into_response()
}
