//! What an administrator can do, in one place for the admin API and the pages alike:
//! retry, cancel, tell the daemon a sign-in changed, reload the configuration. Each
//! returns a typed result; the caller words it for JSON or for a page.

use axum::http::StatusCode;

use super::state::AppState;
use crate::history::{Record, Status};

/// Queues a failed, partial or deferred message again, now (its failed recipients get
/// another chance); the API and the page's Retry button. Err: the HTTP status and why.
pub async fn retry_message(state: &AppState, id: &str) -> Result<Status, (StatusCode, String)> {
    let store = state.pipeline.store();
    let lookup = id.to_string();
    let mut record = match store.blocking(move |s| s.record(&lookup)).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err((StatusCode::NOT_FOUND, format!("no message {id}"))),
        Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    if matches!(record.status, Status::Sent | Status::Cancelled) {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "message {id} was {}; nothing to retry",
                record.status.as_str()
            ),
        ));
    }
    for r in record
        .recipients
        .iter_mut()
        .filter(|r| !matches!(r.status, Status::Sent | Status::Cancelled))
    {
        if r.status == Status::Failed {
            // Tried again from the start of its chain.
            r.status = Status::Queued;
            if !record.pinned {
                r.provider = None;
            }
        }
        r.next_attempt_at = None;
    }
    if matches!(record.status, Status::Failed | Status::Partial) {
        record.status = Status::Queued;
    }
    let now = state.distributor.now();
    record.next_attempt_at = Some(crate::time::Stamp::at_ms(now));
    let status = record.status;
    store
        .update(record, Some(now))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(id = %id, status = status.as_str(), "retry requested");
    state.distributor.wake();
    Ok(status)
}

/// Cancels a queued or deferred message; the API and the page's Cancel button. Err: the
/// HTTP status (404, 409 while it is being sent or when it has ended) and why.
pub async fn cancel_message(
    state: &AppState,
    id: &str,
    by: &str,
) -> Result<Record, (StatusCode, String)> {
    use crate::distributor::CancelError;
    state.distributor.cancel(id, by).await.map_err(|e| {
        let code = match &e {
            CancelError::NotFound(_) => StatusCode::NOT_FOUND,
            CancelError::Sending(_) | CancelError::Finished(..) => StatusCode::CONFLICT,
            CancelError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, e.to_string())
    })
}

/// A provider's stored sign-in changed (`oauth2 login` or `logout`, or the pages'
/// sign-in): it forgets its tokens and idle connections, and when a mailbox is signed in
/// now its held mail is due at once. `(signed in, released)`; None for no such provider.
pub async fn sign_in_changed(
    state: &AppState,
    provider: &str,
) -> Result<Option<(bool, usize)>, crate::store::StoreError> {
    let Some(p) = state.distributor.provider(provider) else {
        return Ok(None);
    };
    let Some(oauth) = p.oauth() else {
        return Ok(None);
    };
    let signed_in = oauth.signed_in();
    p.oauth_changed().await;
    let released = if signed_in {
        state.distributor.release_held_of(provider).await?
    } else {
        0
    };
    tracing::info!(provider = %provider, signed_in, released, "OAuth2 sign-in changed");
    Ok(Some((signed_in, released)))
}

/// Reloads the configuration file the daemon was started from (SIGHUP's work).
pub async fn reload(
    state: &AppState,
) -> Result<crate::reload::ReloadReport, crate::reload::ReloadError> {
    let path = state.config_path.read().ok().and_then(|g| g.clone());
    crate::reload::reload(&state.pipeline, &state.distributor, path.as_deref()).await
}
