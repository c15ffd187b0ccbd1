//! One view of the fleet (SPEC "Fleet"): the history of every node, merged newest first.
//! Each node answers for its own records (the store of record for a message stays its
//! node); this node asks the others whose heartbeat verifies with the fleet secret, at
//! their published `status_url`, each call signed with the secret (never the admin token:
//! SPEC "Trust boundaries"), at most two seconds each, all at once. What comes back is
//! bounded in size and passed on with the content type this node sets. A node that does not answer is named, and the rest still show. Ids are ULIDs, so
//! "newest first" and the `before` cursor mean the same on every node, and paging across
//! nodes returns each record exactly once.

use std::time::Duration;

use axum::body::Bytes;
use serde_json::{Value, json};

use super::query::ListQuery;
use super::state::AppState;
use crate::history::Record;

/// How long another node may take to answer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of another node's JSON answer (a list or a record) this node reads.
pub const MAX_JSON: usize = 16 << 20;

/// The HTTP client for calls to other nodes, made once at start: no proxy, the system
/// roots plus the fleet's `status_ca_file` (read now, not on each call), no redirects
/// followed (a node answers for itself); each call sets its own time limit.
pub fn peer_client(config: &crate::config::Config) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .connect_timeout(PEER_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(ca) = config
        .fleet
        .as_ref()
        .and_then(|f| f.status_ca_file.as_ref())
    {
        match std::fs::read(ca) {
            Ok(pem) => {
                for c in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
                    b = b.add_root_certificate(c);
                }
            }
            Err(e) => {
                tracing::warn!(file = %ca.display(), error = %e, "fleet.status_ca_file cannot be read: the other nodes' certificates are checked against the system roots only")
            }
        }
    }
    b.build().unwrap_or_default()
}

/// A call to another node, signed with the fleet secret (None without one). The
/// signature covers the method, the path and query as the URL will send them, the
/// time, a nonce and the body's hash.
fn signed(
    state: &AppState,
    timeout: Duration,
    method: reqwest::Method,
    url: reqwest::Url,
    body: Bytes,
    content_type: Option<&axum::http::HeaderValue>,
) -> Option<reqwest::RequestBuilder> {
    let fleet = state.distributor.fleet()?;
    let secret = fleet.secret()?;
    let path_and_query = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let headers = secret.sign(
        crate::fleet::sign::Call {
            method: method.as_str(),
            path_and_query: &path_and_query,
            body: &body,
        },
        fleet.node(),
    );
    let mut req = state
        .peer_http
        .request(method, url)
        .timeout(timeout)
        .header(FORWARDED, "1");
    for (name, value) in headers {
        req = req.header(name, value);
    }
    if let Some(ct) = content_type {
        req = req.header(axum::http::header::CONTENT_TYPE, ct);
    }
    Some(req.body(body))
}

/// The whole body of an answer, when it is at most `max` bytes and read to its end.
pub async fn bounded(resp: reqwest::Response, max: usize) -> Option<Bytes> {
    use futures_util::StreamExt;
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return None;
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.ok()?;
        if out.len() + piece.len() > max {
            return None;
        }
        out.extend_from_slice(&piece);
    }
    Some(out.into())
}

/// A peer's answer to the signed list request `req` (None: no fleet secret here): its
/// records, or why not.
async fn peer_list(req: Option<reqwest::RequestBuilder>, url: &str) -> Result<Vec<Value>, String> {
    let Some(req) = req else {
        return Err("this node has no fleet secret".to_string());
    };
    match req.send().await {
        Ok(r) if r.status().is_success() => match bounded(r, MAX_JSON).await {
            Some(b) => serde_json::from_slice::<Vec<Value>>(&b).map_err(|e| e.to_string()),
            None => Err(format!(
                "{url} answered more than {} MB, or broke off",
                MAX_JSON >> 20
            )),
        },
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(e) if e.is_timeout() => Err(format!(
            "{url} did not answer within {} s",
            PEER_TIMEOUT.as_secs()
        )),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

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
        None => Some(crate::fleet::Peers::default()),
    };
    match peers {
        None => unreachable.push(json!({
            "node": "fleet store",
            "error": "the fleet store (Redis) does not answer: the other nodes cannot be found",
        })),
        Some(peers) => {
            for (node, why) in peers.refused {
                unreachable.push(
                    json!({ "node": node, "error": format!("rejected: {why}"), "rejected": true }),
                );
            }
            let mut asks = tokio::task::JoinSet::new();
            for (node, url) in peers.nodes {
                urls.insert(node.clone(), json!(url));
                let Ok(mut u) = reqwest::Url::parse(&format!("{url}/api/messages")) else {
                    continue;
                };
                u.query_pairs_mut().extend_pairs(q.for_peer());
                let req = signed(
                    state,
                    PEER_TIMEOUT,
                    reqwest::Method::GET,
                    u,
                    Bytes::new(),
                    None,
                );
                asks.spawn(async move {
                    let answer = peer_list(req, &url).await;
                    (node, answer)
                });
            }
            while let Some(done) = asks.join_next().await {
                let Ok((node, answer)) = done else { continue };
                match answer {
                    Ok(list) => {
                        messages.extend(
                            list.into_iter()
                                .filter(Value::is_object)
                                .map(|v| tagged(v, &node)),
                        );
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
/// is part of a fleet, the same call (method, path, query, body; signed with the fleet
/// secret, never with the admin token) goes to the other nodes until one holds it; its answer is returned, with the node's name
/// in `X-Mailgate-Node`. Retry and cancel so act on the node that holds the message.
pub async fn forward_unknown(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.distributor.fleet().is_none()
        || req.headers().contains_key(FORWARDED)
        || req.extensions().get::<super::http::PeerCall>().is_some()
    {
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
    let kind = Passed::of(&ask.path);
    match ask_holder(&state, ask, None).await {
        Some((node, resp)) => answer_of(&state, &node, resp, kind),
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

/// Asks the fleet's other nodes in turn, each call signed with the fleet secret and
/// marked as forwarded (so the node asked answers for itself only), until one answers
/// other than 404: that node and its answer; `only`: that node only. None: not in a
/// fleet, no fleet secret, the fleet store does not answer, or no other node holds it.
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
    for (node, url) in peers.nodes {
        if only.is_some_and(|o| o != node) {
            continue;
        }
        let Ok(u) = reqwest::Url::parse(&format!("{url}{}", ask.path)) else {
            continue;
        };
        let req = signed(
            state,
            timeout,
            ask.method.clone(),
            u,
            ask.body.clone(),
            ask.content_type.as_ref(),
        )?;
        let Ok(resp) = req.send().await else { continue };
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            continue;
        }
        return Some((node, resp));
    }
    None
}

/// What another node's answer is passed on as: its content type is set here, never
/// taken from the other node, and its size bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    /// A record, a list or an error: `application/json`, at most [`MAX_JSON`].
    Json,
    /// A raw message: `message/rfc822`, at most three times `max_message_size` (the
    /// message as relayed may have grown by its trace headers and encoded long lines).
    Raw,
}

impl Passed {
    /// The kind of answer a call on this path gets.
    pub fn of(path: &str) -> Passed {
        if path.split('?').next().is_some_and(|p| p.ends_with("/eml")) {
            Passed::Raw
        } else {
            Passed::Json
        }
    }
}

/// Another node's answer as this node's, named in `X-Mailgate-Node`; its body streamed
/// through (a raw download is not held whole here) and cut off past its bound, with the
/// content type this node sets.
pub fn answer_of(
    state: &AppState,
    node: &str,
    resp: reqwest::Response,
    kind: Passed,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let status = resp.status();
    let mut out = status.into_response();
    let (ctype, max) = match kind {
        Passed::Json => ("application/json", MAX_JSON as u64),
        Passed::Raw => (
            "message/rfc822",
            state
                .pipeline
                .config()
                .smtp
                .max_message_size
                .0
                .saturating_mul(3)
                + (1 << 20),
        ),
    };
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(ctype),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(node) {
        out.headers_mut().insert("x-mailgate-node", v);
    }
    let mut seen = 0u64;
    let node = node.to_string();
    let stream = resp.bytes_stream().map(move |piece| {
        let piece = piece.map_err(std::io::Error::other)?;
        seen += piece.len() as u64;
        if seen > max {
            tracing::warn!(node = %node, max, "a fleet node's answer was cut off at its bound");
            return Err(std::io::Error::other(
                "the other node's answer is over its bound",
            ));
        }
        Ok(piece)
    });
    *out.body_mut() = axum::body::Body::from_stream(stream);
    out
}
