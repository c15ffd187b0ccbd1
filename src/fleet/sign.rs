//! The fleet secret (SPEC "Trust boundaries", the fleet): what a node writes to the
//! fleet store for the others to act on (its heartbeat, with the URL they call) and every
//! call one node makes to another are signed with HMAC-SHA256 under the secret all nodes
//! share. Whoever can write to Redis but does not hold the secret can add no node the
//! others will call, and no node ever sends its admin token to another.
//!
//! Two messages, each with its own label so one can never pass for the other:
//! - a heartbeat is stored as `v1.<base64url MAC>.<JSON>`, the MAC over
//!   `mailgate-heartbeat-v1\n<JSON>`;
//! - a peer call carries [`NODE`], [`TIME`] (Unix seconds), [`NONCE`] and [`SIGNATURE`],
//!   the MAC over `mailgate-peer-call-v1\n<METHOD>\n<path?query>\n<time>\n<nonce>\n<node>\n<hex
//!   SHA-256 of the body>`; valid within [`VALID_FOR`] of the answering node's clock,
//!   each nonce once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{digest, hmac};

/// The header naming the calling node.
pub const NODE: &str = "x-mailgate-fleet-node";
/// The header with the call's time (Unix seconds).
pub const TIME: &str = "x-mailgate-fleet-time";
/// The header with the call's nonce (used once).
pub const NONCE: &str = "x-mailgate-fleet-nonce";
/// The header with the call's signature (base64url HMAC-SHA256).
pub const SIGNATURE: &str = "x-mailgate-fleet-signature";

/// How far a call's time may be from the answering node's clock.
pub const VALID_FOR: Duration = Duration::from_secs(60);
/// Nonces remembered at most (a flood of validly signed calls can only come from a
/// holder of the secret; past this, calls are refused until old nonces expire).
const MAX_NONCES: usize = 100_000;

const BEAT_LABEL: &[u8] = b"mailgate-heartbeat-v1\n";
const CALL_LABEL: &str = "mailgate-peer-call-v1";

/// Why a signed thing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No signature, or one in the wrong form.
    #[error("not signed")]
    Unsigned,
    /// The signature does not verify with this node's fleet secret.
    #[error("the signature does not verify with this node's fleet secret")]
    BadSignature,
    /// The call's time is further than a minute from this node's clock.
    #[error("the call's time is more than 60 s from this node's clock")]
    Stale,
    /// The nonce was seen before: a replay.
    #[error("the call's nonce was used before (a replay)")]
    Replayed,
}

/// The fleet secret of this node, and the nonces of the calls it has answered.
pub struct FleetSecret {
    key: hmac::Key,
    nonces: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for FleetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetSecret(..)")
    }
}

/// The parts of a call that its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// The path and query, as sent.
    pub path_and_query: &'a str,
    /// The body.
    pub body: &'a [u8],
}

/// The headers of a signed call: (name, value).
pub type Headers = [(&'static str, String); 4];

impl FleetSecret {
    /// The secret of these bytes (surrounding whitespace trimmed); None when shorter
    /// than [`crate::config::MIN_FLEET_SECRET`].
    pub fn new(bytes: &[u8]) -> Option<FleetSecret> {
        let bytes = bytes.trim_ascii();
        (bytes.len() >= crate::config::MIN_FLEET_SECRET).then(|| FleetSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            nonces: Mutex::new(HashMap::new()),
        })
    }

    /// Reads `secret_file`; the error says what is wrong with it.
    pub fn load(path: &Path) -> Result<FleetSecret, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("fleet.secret_file {}: {e}", path.display()))?;
        FleetSecret::new(&bytes).ok_or_else(|| {
            format!(
                "fleet.secret_file {}: at least {} bytes are needed",
                path.display(),
                crate::config::MIN_FLEET_SECRET
            )
        })
    }

    /// A heartbeat as stored: `v1.<MAC>.<JSON>`.
    pub fn seal_beat(&self, json: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(BEAT_LABEL);
        ctx.update(json.as_bytes());
        format!("v1.{}.{json}", URL_SAFE_NO_PAD.encode(ctx.sign().as_ref()))
    }

    /// The JSON of a stored heartbeat whose MAC verifies.
    pub fn open_beat<'a>(&self, stored: &'a str) -> Result<&'a str, Refused> {
        let rest = stored.strip_prefix("v1.").ok_or(Refused::Unsigned)?;
        let (mac, json) = rest.split_once('.').ok_or(Refused::Unsigned)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| Refused::Unsigned)?;
        let mut msg = Vec::with_capacity(BEAT_LABEL.len() + json.len());
        msg.extend_from_slice(BEAT_LABEL);
        msg.extend_from_slice(json.as_bytes());
        hmac::verify(&self.key, &msg, &mac).map_err(|_| Refused::BadSignature)?;
        Ok(json)
    }

    /// What a call's MAC is over.
    fn call_text(call: Call<'_>, time: &str, nonce: &str, node: &str) -> String {
        let body = digest::digest(&digest::SHA256, call.body);
        format!(
            "{CALL_LABEL}\n{}\n{}\n{time}\n{nonce}\n{node}\n{}",
            call.method,
            call.path_and_query,
            hex(body.as_ref())
        )
    }

    fn call_mac(&self, call: Call<'_>, time: &str, nonce: &str, node: &str) -> hmac::Tag {
        hmac::sign(
            &self.key,
            Self::call_text(call, time, nonce, node).as_bytes(),
        )
    }

    /// The headers that sign `call` from `node`, now, with a fresh nonce.
    pub fn sign(&self, call: Call<'_>, node: &str) -> Headers {
        let time = (crate::time::now_ms() / 1000).to_string();
        let mut raw = [0u8; 16];
        // A failed random source leaves zeros: the call is then refused as a replay at
        // its second use, never accepted twice.
        let _ = getrandom::fill(&mut raw);
        let nonce = hex(&raw);
        let tag = self.call_mac(call, &time, &nonce, node);
        [
            (NODE, node.to_string()),
            (TIME, time),
            (NONCE, nonce),
            (SIGNATURE, URL_SAFE_NO_PAD.encode(tag.as_ref())),
        ]
    }

    /// Checks a call's signature headers (as `header(name)` gives them): the calling
    /// node's name when it verifies, is fresh and its nonce is new (the nonce is then
    /// spent).
    pub fn verify<'h>(
        &self,
        call: Call<'_>,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Result<String, Refused> {
        let (Some(node), Some(time), Some(nonce), Some(sig)) =
            (header(NODE), header(TIME), header(NONCE), header(SIGNATURE))
        else {
            return Err(Refused::Unsigned);
        };
        if nonce.len() > 64 || node.len() > 255 {
            return Err(Refused::Unsigned);
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| Refused::Unsigned)?;
        let text = Self::call_text(call, time, nonce, node);
        hmac::verify(&self.key, text.as_bytes(), &sig).map_err(|_| Refused::BadSignature)?;
        let at_ms = time.parse::<u64>().map_err(|_| Refused::Stale)? * 1000;
        let now = crate::time::now_ms();
        let window = crate::time::duration_ms(VALID_FOR);
        if at_ms.abs_diff(now) > window {
            return Err(Refused::Stale);
        }
        let mut seen = self.nonces.lock().map_err(|_| Refused::Replayed)?;
        if seen.len() >= MAX_NONCES / 2 {
            seen.retain(|_, until| *until > now);
        }
        if seen.len() >= MAX_NONCES || seen.contains_key(nonce) {
            return Err(Refused::Replayed);
        }
        // Remembered as long as its time could still be taken as fresh.
        seen.insert(nonce.to_string(), at_ms + window + 1000);
        Ok(node.to_string())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_short_secret_is_refused() {
        assert!(FleetSecret::new(b"short").is_none());
        assert!(FleetSecret::new(b"  0123456789abcdef0123456789abcde \n").is_none());
        assert!(FleetSecret::new(SECRET).is_some());
    }

    #[test]
    fn a_heartbeat_verifies_only_with_its_secret_and_content() {
        let s = FleetSecret::new(SECRET).unwrap();
        let sealed = s.seal_beat(r#"{"node":"a"}"#);
        assert_eq!(s.open_beat(&sealed), Ok(r#"{"node":"a"}"#));
        let forged = sealed.replace(r#""a""#, r#""b""#);
        assert_eq!(s.open_beat(&forged), Err(Refused::BadSignature));
        assert_eq!(s.open_beat(r#"{"node":"a"}"#), Err(Refused::Unsigned));
        let other = FleetSecret::new(b"another secret of thirty-two bytes!").unwrap();
        assert_eq!(other.open_beat(&sealed), Err(Refused::BadSignature));
    }

    #[test]
    fn a_call_verifies_once_and_covers_every_part() {
        let s = FleetSecret::new(SECRET).unwrap();
        let call = Call {
            method: "POST",
            path_and_query: "/api/messages/X/cancel",
            body: b"{}",
        };
        let headers = s.sign(call, "a");
        let get = |h: &[(&'static str, String)], n: &str| {
            h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone())
        };
        let h = headers.clone();
        let header = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        for changed in [
            Call {
                method: "GET",
                ..call
            },
            Call {
                path_and_query: "/api/send",
                ..call
            },
            Call {
                body: b"{\"by\":\"x\"}",
                ..call
            },
        ] {
            assert_eq!(s.verify(changed, header), Err(Refused::BadSignature));
        }
        assert_eq!(s.verify(call, header), Ok("a".to_string()));
        assert_eq!(s.verify(call, header), Err(Refused::Replayed));
        assert!(get(&headers, NONCE).is_some());
    }
}
