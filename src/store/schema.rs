//! The store's schema: table definitions, key layouts and the record codec.

use redb::TableDefinition;

use super::StoreError;
use crate::history::Record;

pub(super) const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
/// id -> CRC32C of the message body, written in the same transaction as the body and
/// checked on every read (a body without one predates checksums and is read as it is).
pub(super) const BODY_CRC: TableDefinition<&str, u32> = TableDefinition::new("body_crc");
/// id -> length of a body kept in a file of the store's `.bodies` directory (see
/// `body.rs`); such a body has no `messages` entry. Created by the first write that
/// needs it, so a store from before it opens as it is.
pub(super) const BODY_FILES: TableDefinition<&str, u64> = TableDefinition::new("body_files");
/// Small facts about the store itself (the health probe's last write).
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// `BE(due_ms) id` -> the provider of the message (so the scan can pass over a busy one).
pub(super) const DUE: TableDefinition<&[u8], &str> = TableDefinition::new("due");
/// Sends per provider: `provider \0 BE(at_ms) id` -> recipients sent.
pub(super) const USAGE: TableDefinition<&[u8], u32> = TableDefinition::new("usage");
/// `status byte, id` -> (): records by status, oldest first.
pub(super) const BY_STATUS: TableDefinition<&[u8], ()> = TableDefinition::new("by_status");
/// Attempts per hour by outcome: hour (ms since the epoch / 3,600,000) -> (sent,
/// deferred, failed). Written in the transaction that records each attempt, so the
/// dashboard's chart is read from here, never from a scan of the history.
pub(super) const TALLY: TableDefinition<u64, (u64, u64, u64)> = TableDefinition::new("tally");
/// `user \0 id` -> (): records by user, oldest first.
pub(super) const BY_USER: TableDefinition<&[u8], ()> = TableDefinition::new("by_user");

/// The due-index key: big-endian due time, then the id.
pub(super) fn due_key(due_ms: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

pub(super) fn usage_key(provider: &str, at: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(provider.len() + 9 + id.len());
    k.extend_from_slice(provider.as_bytes());
    k.push(0);
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

pub(super) fn split_usage_key(k: &[u8]) -> Option<(String, u64, String)> {
    let nul = k.iter().position(|&b| b == 0)?;
    let provider = String::from_utf8(k[..nul].to_vec()).ok()?;
    let (at, id) = split_due_key(&k[nul + 1..])?;
    Some((provider, at, id))
}

pub(super) fn split_due_key(k: &[u8]) -> Option<(u64, String)> {
    let (t, id) = k.split_at_checked(8)?;
    let ms = u64::from_be_bytes(t.try_into().ok()?);
    Some((ms, String::from_utf8(id.to_vec()).ok()?))
}

pub(super) fn encode_record(record: &Record, due_ms: Option<u64>) -> Vec<u8> {
    let mut v = due_ms.unwrap_or(u64::MAX).to_be_bytes().to_vec();
    // Serialising a plain struct of strings and numbers cannot fail.
    v.extend(serde_json::to_vec(record).unwrap_or_default());
    v
}

pub(super) fn decode_record(id: &str, bytes: &[u8]) -> Result<(Record, Option<u64>), StoreError> {
    decode(id, bytes)
}

/// How a stored record is read: whole, or the part of it that is needed, with its due
/// time.
pub(super) type Decode<T> = fn(&str, &[u8]) -> Result<(T, Option<u64>), StoreError>;

/// A stored record's due time and its JSON read as `T` (the whole record, or some of it).
fn decode<'a, T: serde::Deserialize<'a>>(
    id: &str,
    bytes: &'a [u8],
) -> Result<(T, Option<u64>), StoreError> {
    let (t, json) = bytes
        .split_at_checked(8)
        .ok_or_else(|| StoreError::Corrupt(id.into()))?;
    let due = u64::from_be_bytes(t.try_into().map_err(|_| StoreError::Corrupt(id.into()))?);
    let value = serde_json::from_slice(json).map_err(|_| StoreError::Corrupt(id.into()))?;
    Ok((value, (due != u64::MAX).then_some(due)))
}

/// What the indexes are keyed by (status and user), read from a stored record without
/// decoding the rest of it: the writer's index update and the check that a message is
/// not finished before it is sent need only these, and the attempt holds the record.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Indexed {
    /// Current status.
    pub status: crate::history::Status,
    /// The identified user, if any.
    #[serde(default)]
    pub user: Option<String>,
}

/// A stored record's [`Indexed`] fields and due time.
pub(super) fn decode_indexed(id: &str, bytes: &[u8]) -> Result<(Indexed, Option<u64>), StoreError> {
    decode(id, bytes)
}

/// The status index key.
pub(super) fn status_key(status: crate::history::Status, id: &str) -> Vec<u8> {
    let mut k = vec![status as u8];
    k.extend_from_slice(id.as_bytes());
    k
}

/// The user index key.
pub(super) fn user_key(user: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 1 + id.len());
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}
