//! One view of the fleet (SPEC "Fleet"): the history of every node, merged newest first.
//! Each node answers for its own records (the store of record for a message stays its
//! node); this node asks the others it finds in the fleet store, at their published
//! `status_url`, with the fleet's shared admin token, at most two seconds each, all at
//! once. A node that does not answer is named, and the rest still show. Ids are ULIDs, so
//! "newest first" and the `before` cursor mean the same on every node, and paging across
//! nodes returns each record exactly once.

use std::time::Duration;

use serde_json::{Value, json};

use super::query::ListQuery;
use super::state::AppState;
use crate::history::Record;

/// How long another node may take to answer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /api/messages?fleet=1`: {`messages` (each with its `node`), `nodes` (those that
/// answered), `unreachable` (those that did not, with why)}.
pub async fn merged(state: &AppState, q: &ListQuery, own: Vec<Record>, limit: usize) -> Value {
    let here = state
        .distributor
        .fleet()
        .map_or_else(|| "this node".to_string(), |f| f.node().to_string());
    let mut messages: Vec<Value> = own
        .into_iter()
        .map(|r| tagged(serde_json::to_value(r).unwrap_or_default(), &here))
        .collect();
    let mut nodes = vec![here.clone()];
    let mut unreachable = Vec::new();
    let mut urls = serde_json::Map::new();
    let peers = match state.distributor.fleet() {
        Some(f) => f.peers().await,
        None => Some(Vec::new()),
    };
    match peers {
        None => unreachable.push(json!({
            "node": "fleet store",
            "error": "the fleet store (Redis) does not answer: the other nodes cannot be found",
        })),
        Some(peers) => {
            let http = reqwest::Client::builder()
                .timeout(PEER_TIMEOUT)
                .no_proxy()
                .build()
                .unwrap_or_default();
            let mut asks = tokio::task::JoinSet::new();
            for (node, url) in peers {
                urls.insert(node.clone(), json!(url));
                let mut req = http
                    .get(format!("{url}/api/messages"))
                    .header(FORWARDED, "1")
                    .query(&q.for_peer());
                if let Some(t) = &state.token {
                    req = req.bearer_auth(t);
                }
                asks.spawn(async move {
                    let answer = match req.send().await {
                        Ok(r) if r.status().is_success() => {
                            r.json::<Vec<Value>>().await.map_err(|e| e.to_string())
                        }
                        Ok(r) => Err(format!("{url} answered {}", r.status())),
                        Err(e) if e.is_timeout() => Err(format!(
                            "{url} did not answer within {} s",
                            PEER_TIMEOUT.as_secs()
                        )),
                        Err(e) => Err(format!("{url}: {e}")),
                    };
                    (node, answer)
                });
            }
            while let Some(done) = asks.join_next().await {
                let Ok((node, answer)) = done else { continue };
                match answer {
                    Ok(list) => {
                        messages.extend(list.into_iter().map(|v| tagged(v, &node)));
                        nodes.push(node);
                    }
                    Err(why) => {
                        tracing::warn!(node = %node, error = %why, "a fleet node did not answer for the fleet's history");
                        unreachable.push(json!({ "node": node, "error": why }));
                    }
                }
            }
        }
    }
    messages.sort_by(|a, b| b["id"].as_str().cmp(&a["id"].as_str()));
    messages.dedup_by(|a, b| a["id"] == b["id"]);
    messages.truncate(limit);
    nodes.sort();
    json!({ "messages": messages, "nodes": nodes, "unreachable": unreachable, "status_urls": urls })
}

fn tagged(mut v: Value, node: &str) -> Value {
    v["node"] = json!(node);
    v
}

/// The header a forwarded call carries: the node that gets it answers for itself only,
/// so a call for an id no node holds never goes round the fleet.
pub const FORWARDED: &str = "x-mailgate-forwarded";

/// Around `/api/messages/{id}...`: when this node does not hold the message (404) and it
/// is part of a fleet, the same call (method, path, query, body, the admin token) goes
/// to the other nodes until one holds it; its answer is returned, with the node's name
/// in `X-Mailgate-Node`. Retry and cancel so act on the node that holds the message.
pub async fn forward_unknown(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.distributor.fleet().is_none() || req.headers().contains_key(FORWARDED) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let here = next
        .run(axum::extract::Request::from_parts(
            parts.clone(),
            axum::body::Body::from(bytes.clone()),
        ))
        .await;
    if here.status() != axum::http::StatusCode::NOT_FOUND {
        return here;
    }
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| parts.uri.to_string(), |u| u.0.to_string());
    let ask = Ask {
        method: parts.method.clone(),
        path,
        body: bytes,
        content_type: parts.headers.get(axum::http::header::CONTENT_TYPE).cloned(),
    };
    match ask_holder(&state, ask, None).await {
        Some((node, resp)) => answer_of(&node, resp),
        None => here,
    }
}

/// A call on the admin API of the node that holds a message.
#[derive(Debug)]
pub struct Ask {
    /// GET or POST.
    pub method: axum::http::Method,
    /// The path and query, `/api/messages/...`.
    pub path: String,
    /// The body (a cancel's `by`).
    pub body: axum::body::Bytes,
    /// The body's type.
    pub content_type: Option<axum::http::HeaderValue>,
}

impl Ask {
    /// A GET of `path`.
    pub fn get(path: String) -> Ask {
        Ask {
            method: axum::http::Method::GET,
            path,
            body: axum::body::Bytes::new(),
            content_type: None,
        }
    }
}

/// Asks the fleet's other nodes in turn, with the fleet token and marked as forwarded (so
/// the node asked answers for itself only), until one answers other than 404: that node
/// and its answer; `only`: that node only. None: not in a fleet, the fleet store does not
/// answer, or no other node holds it.
pub async fn ask_holder(
    state: &AppState,
    ask: Ask,
    only: Option<&str>,
) -> Option<(String, reqwest::Response)> {
    let peers = state.distributor.fleet()?.peers().await?;
    // A waiting GET may take as long as it asks (the API caps it at 10 minutes); a raw
    // download as long as it streams.
    let timeout = if ask.path.contains("wait=") || ask.path.ends_with("/eml") {
        Duration::from_secs(610)
    } else {
        PEER_TIMEOUT
    };
    let http = reqwest::Client::builder()
        .connect_timeout(PEER_TIMEOUT)
        .timeout(timeout)
        .no_proxy()
        .build()
        .unwrap_or_default();
    for (node, url) in peers {
        if only.is_some_and(|o| o != node) {
            continue;
        }
        let mut req = http
            .request(ask.method.clone(), format!("{url}{}", ask.path))
            .header(FORWARDED, "1")
            .body(ask.body.clone());
        if let Some(ct) = &ask.content_type {
            req = req.header(axum::http::header::CONTENT_TYPE, ct);
        }
        if let Some(t) = &state.token {
            req = req.bearer_auth(t);
        }
        let Ok(resp) = req.send().await else { continue };
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            continue;
        }
        return Some((node, resp));
    }
    None
}

/// Another node's answer as this node's, named in `X-Mailgate-Node`; its body streamed
/// through (a raw download is not held whole here).
pub fn answer_of(node: &str, resp: reqwest::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = resp.status();
    let mut out = status.into_response();
    for h in [
        reqwest::header::CONTENT_TYPE,
        reqwest::header::CONTENT_DISPOSITION,
        reqwest::header::CONTENT_LENGTH,
    ] {
        if let Some(v) = resp.headers().get(&h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(node) {
        out.headers_mut().insert("x-mailgate-node", v);
    }
    *out.body_mut() = axum::body::Body::from_stream(resp.bytes_stream());
    out
}
