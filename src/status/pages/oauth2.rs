//! Signing a mailbox in from the browser: the dashboard's "Sign in" button for a provider
//! with `flow = "device_code"` runs the device authorization grant in the daemon and shows
//! the platform's verification URL, user code and sentence on `/providers/NAME/sign-in`
//! (reloading itself every 3 seconds) until the person has signed in; then the sign-in is
//! sealed like `mailgate oauth2 login` does it and the provider's held mail is released.
//! For an administrator with a browser and no terminal. The user code is shown only here,
//! behind the pages' sign-in, never in `/status`.

use std::collections::HashMap;
use std::sync::Mutex;

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::{CsrfForm, csrf_ok, csrf_refused, enc, html, page_error};
use crate::config::OAuthFlow;
use crate::status::http::AppState;
use crate::time::{now_ms, rfc3339};

/// Where one provider's browser sign-in is.
#[derive(Debug, Clone)]
enum SignIn {
    Waiting {
        verification_uri: String,
        user_code: String,
        message: Option<String>,
        expires_at_ms: u64,
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
    sign_ins: Mutex<HashMap<String, SignIn>>,
}

impl Desk {
    fn get(&self, provider: &str) -> Option<SignIn> {
        self.sign_ins.lock().ok()?.get(provider).cloned()
    }

    fn set(&self, provider: &str, s: SignIn) {
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
    done: Option<(String, usize)>,
    failed: Option<String>,
}

/// `POST /providers/{name}/sign-in`: starts a device sign-in (or shows the one running).
pub async fn start(
    State(state): State<AppState>,
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
    if oauth.flow() != OAuthFlow::DeviceCode {
        return page_error(
            StatusCode::BAD_REQUEST,
            format!(
                "provider {name} uses flow = \"{}\": the browser sign-in is for flow = \"device_code\"; run `mailgate oauth2 login --provider {name}` in a terminal",
                oauth.flow().as_str()
            ),
        );
    }
    let desk = &state.pages.desk;
    if let Some(SignIn::Waiting { expires_at_ms, .. }) = desk.get(&name)
        && expires_at_ms > now_ms()
    {
        return Redirect::to(&page).into_response();
    }
    let auth = match oauth.device_authorization().await {
        Ok(a) => a,
        Err(words) => {
            desk.set(
                &name,
                SignIn::Failed {
                    words: words.to_string(),
                },
            );
            return Redirect::to(&page).into_response();
        }
    };
    desk.set(
        &name,
        SignIn::Waiting {
            verification_uri: auth.verification_uri.clone(),
            user_code: auth.user_code.clone(),
            message: auth.message.clone(),
            expires_at_ms: now_ms() + auth.expires_in * 1000,
        },
    );
    tracing::info!(provider = %name, "browser sign-in started (device code)");
    let pages = state.pages.clone();
    let distributor = state.distributor.clone();
    tokio::spawn(async move {
        let Some(oauth) = provider.oauth() else {
            return;
        };
        let outcome = match oauth.poll_device(&auth, |_| {}).await {
            Ok(tokens) => {
                let p = provider.clone();
                match tokio::task::spawn_blocking(move || {
                    p.oauth().map(|o| o.keep_sign_in(&tokens))
                })
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
        let state = match outcome {
            Ok(account) => {
                provider.oauth_changed().await;
                let released = distributor.release_held_of(&name).await.unwrap_or(0);
                tracing::info!(provider = %name, released, "signed in from the browser");
                SignIn::Done { account, released }
            }
            Err(words) => {
                tracing::warn!(provider = %name, error = %words, "browser sign-in failed");
                SignIn::Failed { words }
            }
        };
        pages.desk.set(&name, state);
    });
    Redirect::to(&page).into_response()
}

/// `GET /providers/{name}/sign-in`: the sign-in's state.
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(s) = state.pages.desk.get(&name) else {
        return Redirect::to("/").into_response();
    };
    let mut page = Page {
        signed_in: state.pages.has_token(),
        csrf: state.pages.csrf_of(&headers),
        provider_path: enc(&name),
        provider: name,
        waiting: false,
        verification_uri: String::new(),
        linkable: false,
        user_code: String::new(),
        message: String::new(),
        expires_at: String::new(),
        done: None,
        failed: None,
    };
    match s {
        SignIn::Waiting {
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
            page.expires_at = rfc3339(expires_at_ms);
        }
        SignIn::Done { account, released } => page.done = Some((account, released)),
        SignIn::Failed { words } => page.failed = Some(words),
    }
    html(page).into_response()
}
