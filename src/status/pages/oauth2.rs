//! Signing a mailbox in from the browser, for an administrator with a browser and no
//! terminal. The dashboard's "Sign in" button of a provider with `flow = "device_code"`
//! runs the device authorization grant in the daemon and shows the platform's
//! verification URL, user code and sentence on `/providers/NAME/sign-in` (reloading itself
//! every 3 seconds) until the person has signed in; the user code is shown only there,
//! behind the pages' sign-in, never in `/status`. For `flow = "authorization_code"`
//! (Gmail) the button sends the browser to the platform with PKCE and a fresh `state`,
//! redirected back to `http://127.0.0.1:PORT/oauth2/callback` on the port the browser
//! reached the pages through (so only when it reached them over loopback: on this machine
//! or through `ssh -L`); the callback needs no session cookie (the platform's redirect is
//! cross-site), the unguessable `state` of a waiting sign-in is what admits it. Either
//! way the sign-in is sealed as `mailgate oauth2 login` does it and the provider's held
//! mail is released.

use std::collections::HashMap;
use std::sync::Mutex;

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::Ctx;
use super::{CsrfForm, csrf_ok, csrf_refused, enc, html, page_error};
use crate::config::OAuthFlow;
use crate::provider::Provider;
use crate::provider::oauth2::TokenResponse;
use crate::provider::oauth2::login::{AuthorizationRequest, LoginError};
use crate::status::actions::sign_in_changed;
use crate::time::{now_ms, rfc3339};

/// Where one provider's browser sign-in is.
#[derive(Debug, Clone)]
enum Progress {
    Waiting {
        verification_uri: String,
        user_code: String,
        message: Option<String>,
        expires_at_ms: u64,
    },
    /// Authorization code: the browser is on its way to the platform.
    ToPlatform {
        url: String,
    },
    Done {
        account: String,
        released: usize,
    },
    Failed {
        words: String,
    },
}

/// The browser sign-ins by provider.
#[derive(Debug, Default)]
pub struct Desk {
    sign_ins: Mutex<HashMap<String, Progress>>,
    /// Authorization-code sign-ins waiting for the platform's redirect, by `state`.
    redirects: Mutex<HashMap<String, (String, AuthorizationRequest, u64)>>,
}

/// How long an authorization-code sign-in waits for its redirect.
const REDIRECT_WAIT_MS: u64 = 10 * 60 * 1000;

impl Desk {
    fn get(&self, provider: &str) -> Option<Progress> {
        self.sign_ins.lock().ok()?.get(provider).cloned()
    }

    fn set(&self, provider: &str, s: Progress) {
        if let Ok(mut m) = self.sign_ins.lock() {
            m.insert(provider.to_string(), s);
        }
    }
}

#[derive(Template)]
#[template(path = "oauth2.html")]
struct Page {
    signed_in: bool,
    csrf: String,
    provider: String,
    provider_path: String,
    waiting: bool,
    verification_uri: String,
    /// The URL is http(s) and may be a link (anything else is shown as text).
    linkable: bool,
    user_code: String,
    message: String,
    expires_at: String,
    /// Authorization code: where the browser goes now.
    to_platform: Option<String>,
    done: Option<(String, String)>,
    failed: Option<String>,
}

/// `POST /providers/{name}/sign-in`: starts a device sign-in (or shows the one running).
pub async fn start(
    State(state): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &f) {
        return csrf_refused();
    }
    let page = format!("/providers/{}/sign-in", enc(&name));
    let Some(provider) = state.distributor.provider(&name) else {
        return page_error(StatusCode::NOT_FOUND, format!("no provider {name}"));
    };
    let Some(oauth) = provider.oauth() else {
        return page_error(
            StatusCode::BAD_REQUEST,
            format!("provider {name} has no [provider.oauth2] table"),
        );
    };
    match oauth.flow() {
        OAuthFlow::DeviceCode => {}
        OAuthFlow::AuthorizationCode => {
            return to_the_platform(&state, &headers, &name, &provider);
        }
        other => {
            return page_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "provider {name} uses flow = \"{}\": it signs in with the app's own credentials, there is nothing to sign in",
                    other.as_str()
                ),
            );
        }
    }
    let desk = &state.pages.desk;
    if let Some(Progress::Waiting { expires_at_ms, .. }) = desk.get(&name)
        && expires_at_ms > now_ms()
    {
        return Redirect::to(&page).into_response();
    }
    let auth = match oauth.device_authorization().await {
        Ok(a) => a,
        Err(words) => {
            desk.set(
                &name,
                Progress::Failed {
                    words: words.to_string(),
                },
            );
            return Redirect::to(&page).into_response();
        }
    };
    desk.set(
        &name,
        Progress::Waiting {
            verification_uri: auth.verification_uri.clone(),
            user_code: auth.user_code.clone(),
            message: auth.message.clone(),
            expires_at_ms: now_ms() + auth.expires_in * 1000,
        },
    );
    tracing::info!(provider = %name, "browser sign-in started (device code)");
    let state = state.clone();
    tokio::spawn(async move {
        let Some(oauth) = provider.oauth() else {
            return;
        };
        let tokens = oauth.poll_device(&auth, |_| {}).await;
        conclude(&state, &name, provider.clone(), tokens).await;
    });
    Redirect::to(&page).into_response()
}

/// After the platform answered: the sign-in sealed, the provider told, its held mail
/// released; the outcome kept for the page.
async fn conclude(
    state: &Ctx,
    name: &str,
    provider: std::sync::Arc<Provider>,
    tokens: Result<TokenResponse, LoginError>,
) -> Progress {
    let outcome = match tokens {
        Ok(tokens) => {
            let p = provider.clone();
            match tokio::task::spawn_blocking(move || p.oauth().map(|o| o.keep_sign_in(&tokens)))
                .await
            {
                Ok(Some(Ok(s))) => Ok(s.account.unwrap_or_default()),
                Ok(Some(Err(e))) => Err(format!(
                    "signed in, but the sign-in could not be stored: {e}"
                )),
                _ => Err("the sign-in could not be stored".into()),
            }
        }
        Err(words) => Err(words.to_string()),
    };
    let result = match outcome {
        Ok(account) => {
            let released = match sign_in_changed(state, name).await {
                Ok(Some((_, released))) => released,
                _ => 0,
            };
            tracing::info!(provider = %name, released, "signed in from the browser");
            Progress::Done { account, released }
        }
        Err(words) => {
            tracing::warn!(provider = %name, error = %words, "browser sign-in failed");
            Progress::Failed { words }
        }
    };
    state.pages.desk.set(name, result.clone());
    result
}

/// The loopback port the browser reached the pages through (`Host: 127.0.0.1:PORT`,
/// `localhost:PORT`, `[::1]:PORT`), where the platform may send it back.
fn loopback_port(headers: &HeaderMap) -> Option<u16> {
    let host = headers.get(axum::http::header::HOST)?.to_str().ok()?;
    let (name, port) = host.rsplit_once(':')?;
    if matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
        port.parse().ok()
    } else {
        None
    }
}

/// `authorization_code`: sends the browser to the platform, to come back to the callback.
fn to_the_platform(state: &Ctx, headers: &HeaderMap, name: &str, provider: &Provider) -> Response {
    let Some(oauth) = provider.oauth() else {
        return page_error(StatusCode::BAD_REQUEST, "no OAuth2");
    };
    let Some(port) = loopback_port(headers) else {
        return page_error(
            StatusCode::BAD_REQUEST,
            format!(
                "the platform sends the browser back only to a loopback address: open these pages at http://127.0.0.1:PORT (on this machine, or through `ssh -L 8525:127.0.0.1:8525 this-host`), or run `mailgate oauth2 login --provider {name}` in a terminal"
            ),
        );
    };
    let req = match oauth.authorization_request(&format!("http://127.0.0.1:{port}/oauth2/callback"))
    {
        Ok(r) => r,
        Err(e) => return page_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let now = now_ms();
    if let Ok(mut m) = state.pages.desk.redirects.lock() {
        m.retain(|_, (_, _, at)| now.saturating_sub(*at) < REDIRECT_WAIT_MS);
        m.insert(
            req.state().to_string(),
            (name.to_string(), req.clone(), now),
        );
    }
    tracing::info!(provider = %name, "browser sign-in started (authorization code)");
    // Through a page of ours: the dashboard's CSP (form-action 'self') forbids a form post
    // that redirects to another origin.
    state.pages.desk.set(
        name,
        Progress::ToPlatform {
            url: req.url.clone(),
        },
    );
    Redirect::to(&format!("/providers/{}/sign-in", enc(name))).into_response()
}

/// `GET /oauth2/callback`: the platform's redirect of an authorization-code sign-in.
pub async fn callback(
    State(state): State<Ctx>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    let given = query
        .iter()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let waiting = state
        .pages
        .desk
        .redirects
        .lock()
        .ok()
        .and_then(|mut m| m.remove(&given))
        .filter(|(_, _, at)| now_ms().saturating_sub(*at) < REDIRECT_WAIT_MS);
    let Some((name, req, _)) = waiting else {
        return page_error(
            StatusCode::BAD_REQUEST,
            "no sign-in is waiting for this answer (an old or forged redirect); start again from the dashboard",
        );
    };
    let Some(provider) = state.distributor.provider(&name) else {
        return page_error(StatusCode::NOT_FOUND, format!("no provider {name}"));
    };
    let Some(oauth) = provider.oauth() else {
        return page_error(StatusCode::BAD_REQUEST, "no OAuth2");
    };
    let tokens = oauth.finish_authorization(&req, &query).await;
    let result = conclude(&state, &name, provider.clone(), tokens).await;
    // The result here, not behind a redirect: the session cookie (SameSite=Strict) does
    // not come along on a navigation that began at the platform.
    render(&state, &headers, name, result)
}

/// `GET /providers/{name}/sign-in`: the sign-in's state.
pub async fn show(
    State(state): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(s) = state.pages.desk.get(&name) else {
        return Redirect::to("/").into_response();
    };
    render(&state, &headers, name, s)
}

/// The sign-in page. Sign out shows only to a request with a session (the platform's
/// redirect to the callback brings none).
fn render(state: &Ctx, headers: &HeaderMap, name: String, s: Progress) -> Response {
    let mut page = Page {
        signed_in: state.pages.csrf(headers).is_some(),
        csrf: state.pages.csrf_of(headers),
        provider_path: enc(&name),
        provider: name,
        waiting: false,
        verification_uri: String::new(),
        linkable: false,
        user_code: String::new(),
        message: String::new(),
        expires_at: String::new(),
        to_platform: None,
        done: None,
        failed: None,
    };
    match s {
        Progress::Waiting {
            verification_uri,
            user_code,
            message,
            expires_at_ms,
        } => {
            page.waiting = true;
            page.linkable =
                verification_uri.starts_with("https://") || verification_uri.starts_with("http://");
            page.verification_uri = verification_uri;
            page.user_code = user_code;
            page.message = message.unwrap_or_default();
            page.expires_at = super::shown_time(rfc3339(expires_at_ms));
        }
        Progress::ToPlatform { url } => page.to_platform = Some(url),
        Progress::Done { account, released } => {
            page.done = Some((
                account,
                crate::text::counted(released as u64, "held message"),
            ))
        }
        Progress::Failed { words } => page.failed = Some(words),
    }
    html(page).into_response()
}
