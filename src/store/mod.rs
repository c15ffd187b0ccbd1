//! The store: the durable queue and history, and the only module that touches redb.
//!
//! One redb file holds three tables written together: `messages` (id -> raw bytes as
//! relayed), `records` (id -> due time + JSON history record) and `due` (big-endian
//! `(due_ms, id)` -> ()), the index the distributor scans in order. Every write goes
//! through one writer thread that takes all requests waiting while a commit is in flight
//! and commits them in one transaction with immediate durability (group commit), so many
//! concurrent sessions share one fsync.

mod backend;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::backends::FileBackend;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::history::{Record, Status};

const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// `BE(due_ms) id` -> the provider of the message (so the scan can pass over a busy one).
const DUE: TableDefinition<&[u8], &str> = TableDefinition::new("due");
/// Sends per provider: `provider \0 BE(at_ms) id` -> recipients sent.
const USAGE: TableDefinition<&[u8], u32> = TableDefinition::new("usage");

/// How many waiting requests one commit takes at most.
const MAX_GROUP: usize = 512;

/// Records per status, and the `received_at` of the oldest unfinished one.
pub type QueueCounts = (Vec<(Status, u64)>, Option<String>);

/// Store failures. Whatever the cause, a failed write acknowledged nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the store {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A read or write failed (disk full, I/O error).
    #[error("store I/O failed: {0}")]
    Io(String),
    /// The writer has stopped (shutdown).
    #[error("the store is closed")]
    Closed,
    /// A stored value could not be decoded.
    #[error("corrupt store value for {0}")]
    Corrupt(String),
}

fn io_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// One change to apply inside a write transaction.
#[derive(Debug)]
pub enum Mutation {
    /// A new message: body, record, and due now.
    Insert {
        /// Raw message bytes as they will be relayed.
        raw: Vec<u8>,
        /// Its history record.
        record: Box<Record>,
        /// When it is due.
        due_ms: u64,
    },
    /// A new version of a record; `due_ms` replaces its due-index entry (None removes it).
    Update {
        /// The record.
        record: Box<Record>,
        /// New due time, or None when finished.
        due_ms: Option<u64>,
    },
    /// Removes a message, its record and its due entry.
    Delete {
        /// Message id.
        id: String,
    },
    /// Makes a waiting message due now (its record says so too).
    DueNow {
        /// Message id.
        id: String,
        /// Now, ms since the epoch.
        now_ms: u64,
    },
    /// A send counted against its provider's limits (with the record that says sent).
    Usage {
        /// Provider name.
        provider: String,
        /// When it was dispatched, ms.
        at: u64,
        /// Message id.
        id: String,
        /// Recipients sent.
        rcpts: u32,
    },
    /// Forgets sends older than this (ms), beyond any limit window.
    PruneUsage {
        /// Cut-off, ms.
        before: u64,
    },
    /// Writes nothing of substance; proves the store can commit.
    Probe,
}

struct WriteRequest {
    /// Close the database after this request (shutdown).
    close: bool,
    mutations: Vec<Mutation>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

struct Shared {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
    fail_writes: Arc<AtomicBool>,
    commits: AtomicU64,
    healthy: AtomicBool,
    /// Closed for good (shutdown); no reopen.
    closed: AtomicBool,
    /// Writes handed to the writer and not yet answered.
    waiting: AtomicU64,
    /// Test hook: while true, the writer holds the next commit (see [`Store::hold_commits`]).
    hold: (std::sync::Mutex<bool>, std::sync::Condvar),
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<WriteRequest>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .finish()
    }
}

fn open_db(path: &Path, fail: &Arc<AtomicBool>) -> Result<Database, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| open_err(e.to_string()))?;
    let inner = FileBackend::new(file).map_err(|e| open_err(e.to_string()))?;
    let backend = backend::SwitchableBackend::new(inner, fail.clone());
    let db = Database::builder()
        .create_with_backend(backend)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                open_err("it is in use by another process (is mailgate already running?)".into())
            }
            other => open_err(other.to_string()),
        })?;
    let txn = db.begin_write().map_err(io_err)?;
    {
        txn.open_table(MESSAGES).map_err(io_err)?;
        txn.open_table(RECORDS).map_err(io_err)?;
        txn.open_table(DUE).map_err(io_err)?;
        txn.open_table(USAGE).map_err(io_err)?;
    }
    txn.commit().map_err(io_err)?;
    Ok(db)
}

/// The due-index key: big-endian due time, then the id.
fn due_key(due_ms: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn usage_key(provider: &str, at: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(provider.len() + 9 + id.len());
    k.extend_from_slice(provider.as_bytes());
    k.push(0);
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn split_usage_key(k: &[u8]) -> Option<(String, u64, String)> {
    let nul = k.iter().position(|&b| b == 0)?;
    let provider = String::from_utf8(k[..nul].to_vec()).ok()?;
    let (at, id) = split_due_key(&k[nul + 1..])?;
    Some((provider, at, id))
}

fn split_due_key(k: &[u8]) -> Option<(u64, String)> {
    let (t, id) = k.split_at_checked(8)?;
    let ms = u64::from_be_bytes(t.try_into().ok()?);
    Some((ms, String::from_utf8(id.to_vec()).ok()?))
}

fn encode_record(record: &Record, due_ms: Option<u64>) -> Vec<u8> {
    let mut v = due_ms.unwrap_or(u64::MAX).to_be_bytes().to_vec();
    // Serialising a plain struct of strings and numbers cannot fail.
    v.extend(serde_json::to_vec(record).unwrap_or_default());
    v
}

fn decode_record(id: &str, bytes: &[u8]) -> Result<(Record, Option<u64>), StoreError> {
    let (t, json) = bytes
        .split_at_checked(8)
        .ok_or_else(|| StoreError::Corrupt(id.into()))?;
    let due = u64::from_be_bytes(t.try_into().map_err(|_| StoreError::Corrupt(id.into()))?);
    let rec = serde_json::from_slice(json).map_err(|_| StoreError::Corrupt(id.into()))?;
    Ok((rec, (due != u64::MAX).then_some(due)))
}

fn apply(db: &Database, batch: &[WriteRequest]) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(Durability::Immediate).map_err(io_err)?;
    {
        let mut messages = txn.open_table(MESSAGES).map_err(io_err)?;
        let mut records = txn.open_table(RECORDS).map_err(io_err)?;
        let mut due = txn.open_table(DUE).map_err(io_err)?;
        let mut usage = txn.open_table(USAGE).map_err(io_err)?;
        for m in batch.iter().flat_map(|r| r.mutations.iter()) {
            match m {
                Mutation::Insert {
                    raw,
                    record,
                    due_ms,
                } => {
                    messages
                        .insert(record.id.as_str(), raw.as_slice())
                        .map_err(io_err)?;
                    records
                        .insert(
                            record.id.as_str(),
                            encode_record(record, Some(*due_ms)).as_slice(),
                        )
                        .map_err(io_err)?;
                    due.insert(
                        due_key(*due_ms, &record.id).as_slice(),
                        record.provider.as_str(),
                    )
                    .map_err(io_err)?;
                }
                Mutation::Update { record, due_ms } => {
                    let old = records
                        .get(record.id.as_str())
                        .map_err(io_err)?
                        .map(|v| decode_record(&record.id, v.value()))
                        .transpose()?;
                    if let Some((_, Some(old_due))) = old {
                        due.remove(due_key(old_due, &record.id).as_slice())
                            .map_err(io_err)?;
                    }
                    records
                        .insert(
                            record.id.as_str(),
                            encode_record(record, *due_ms).as_slice(),
                        )
                        .map_err(io_err)?;
                    if let Some(d) = due_ms {
                        due.insert(due_key(*d, &record.id).as_slice(), record.provider.as_str())
                            .map_err(io_err)?;
                    }
                }
                Mutation::Delete { id } => {
                    let old = records
                        .remove(id.as_str())
                        .map_err(io_err)?
                        .map(|v| decode_record(id, v.value()))
                        .transpose()?;
                    if let Some((_, Some(old_due))) = old {
                        due.remove(due_key(old_due, id).as_slice())
                            .map_err(io_err)?;
                    }
                    messages.remove(id.as_str()).map_err(io_err)?;
                }
                Mutation::DueNow { id, now_ms } => {
                    let old = records
                        .get(id.as_str())
                        .map_err(io_err)?
                        .map(|v| decode_record(id, v.value()))
                        .transpose()?;
                    if let Some((mut rec, Some(old_due))) = old
                        && old_due > *now_ms
                    {
                        due.remove(due_key(old_due, id).as_slice())
                            .map_err(io_err)?;
                        due.insert(due_key(*now_ms, id).as_slice(), rec.provider.as_str())
                            .map_err(io_err)?;
                        rec.next_attempt_at = Some(crate::history::rfc3339(*now_ms));
                        records
                            .insert(id.as_str(), encode_record(&rec, Some(*now_ms)).as_slice())
                            .map_err(io_err)?;
                    }
                }
                Mutation::Usage {
                    provider,
                    at,
                    id,
                    rcpts,
                } => {
                    usage
                        .insert(usage_key(provider, *at, id).as_slice(), *rcpts)
                        .map_err(io_err)?;
                }
                Mutation::PruneUsage { before } => {
                    let old: Vec<Vec<u8>> = usage
                        .iter()
                        .map_err(io_err)?
                        .filter_map(Result::ok)
                        .filter_map(|(k, _)| {
                            let key = k.value().to_vec();
                            split_usage_key(&key)
                                .filter(|(_, at, _)| at < before)
                                .map(|_| key)
                        })
                        .collect();
                    for k in old {
                        usage.remove(k.as_slice()).map_err(io_err)?;
                    }
                }
                Mutation::Probe => {}
            }
        }
    }
    txn.commit().map_err(io_err)
}

impl Store {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let fail = Arc::new(AtomicBool::new(false));
        let db = open_db(path, &fail)?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(db))),
            fail_writes: fail,
            commits: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            waiting: AtomicU64::new(0),
            hold: (std::sync::Mutex::new(false), std::sync::Condvar::new()),
        });
        let (tx, rx) = mpsc::channel(4096);
        let s = shared.clone();
        std::thread::Builder::new()
            .name("mailgate-store".into())
            .spawn(move || writer(s, rx))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Store { shared, tx })
    }

    /// Applies mutations in the next group commit; returns once they are durable.
    pub async fn write(&self, mutations: Vec<Mutation>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        let sent = self
            .tx
            .send(WriteRequest {
                close: false,
                mutations,
                reply,
            })
            .await;
        let result = match sent {
            Ok(()) => rx.await.map_err(|_| StoreError::Closed).and_then(|r| r),
            Err(_) => Err(StoreError::Closed),
        };
        self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Closes the database: waits for writes already submitted, then releases the file
    /// (another process may open it). Later writes fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        let req = WriteRequest {
            close: true,
            mutations: Vec::new(),
            reply,
        };
        if self.tx.send(req).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Writes submitted and not yet answered (queued for, or inside, a commit).
    pub fn waiting_writes(&self) -> u64 {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// Test hook: while `on`, the writer takes the next request and then waits before
    /// collecting the rest of its group and committing; this makes group commit
    /// observable deterministically.
    #[doc(hidden)]
    pub fn hold_commits(&self, on: bool) {
        let (lock, cv) = &self.shared.hold;
        if let Ok(mut g) = lock.lock() {
            *g = on;
        }
        cv.notify_all();
    }

    /// Commits a new message with its record, due at `record`'s arrival.
    pub async fn insert(
        &self,
        raw: Vec<u8>,
        record: Record,
        due_ms: u64,
    ) -> Result<(), StoreError> {
        self.write(vec![Mutation::Insert {
            raw,
            record: Box::new(record),
            due_ms,
        }])
        .await
    }

    /// Commits a new version of a record and moves its due-index entry.
    pub async fn update(&self, record: Record, due_ms: Option<u64>) -> Result<(), StoreError> {
        self.write(vec![Mutation::Update {
            record: Box::new(record),
            due_ms,
        }])
        .await
    }

    /// Commits an empty transaction: true when the store can write right now.
    pub async fn probe(&self) -> bool {
        self.write(vec![Mutation::Probe]).await.is_ok()
    }

    /// Number of transactions committed since open (group commit makes this smaller
    /// than the number of writes).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Whether the last commit succeeded.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Test hook: while set, every write to the file fails as on a full disk.
    #[doc(hidden)]
    pub fn fail_writes(&self, on: bool) {
        self.shared.fail_writes.store(on, Ordering::Relaxed);
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.shared
            .db
            .read()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// One record.
    pub fn record(&self, id: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.record_with_due(id)?.map(|(r, _)| r))
    }

    /// One record with its due time.
    pub fn record_with_due(&self, id: &str) -> Result<Option<(Record, Option<u64>)>, StoreError> {
        let txn = self.db()?.begin_read().map_err(io_err)?;
        let t = txn.open_table(RECORDS).map_err(io_err)?;
        t.get(id)
            .map_err(io_err)?
            .map(|v| decode_record(id, v.value()))
            .transpose()
    }

    /// The stored message bytes.
    pub fn message(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db()?.begin_read().map_err(io_err)?;
        let t = txn.open_table(MESSAGES).map_err(io_err)?;
        Ok(t.get(id).map_err(io_err)?.map(|v| v.value().to_vec()))
    }

    /// Due-index entries in order as (due, id, provider), passing over those for which
    /// `skip(id, provider)` is true, at most `limit`.
    pub fn due_entries(
        &self,
        limit: usize,
        skip: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<(u64, String, String)>, StoreError> {
        let txn = self.db()?.begin_read().map_err(io_err)?;
        let t = txn.open_table(DUE).map_err(io_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            if let Some((ms, id)) = split_due_key(k.value())
                && !skip(&id, v.value())
            {
                out.push((ms, id, v.value().to_string()));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Sends counted against provider limits since `since` (ms): (provider, at, id, rcpts).
    pub fn usage_since(&self, since: u64) -> Result<Vec<(String, u64, String, u32)>, StoreError> {
        let txn = self.db()?.begin_read().map_err(io_err)?;
        let t = txn.open_table(USAGE).map_err(io_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            if let Some((p, at, id)) = split_usage_key(k.value())
                && at >= since
            {
                out.push((p, at, id, v.value()));
            }
        }
        Ok(out)
    }

    /// Ids of finished records received before `cutoff` (ms), oldest first, at most
    /// `limit`; unfinished records are passed over.
    pub fn finished_before(&self, cutoff: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let txn = self.db()?.begin_read().map_err(io_err)?;
        let t = txn.open_table(RECORDS).map_err(io_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            let id = k.value();
            let received = ulid::Ulid::from_string(id).map_or(0, |u| u.timestamp_ms());
            if received >= cutoff {
                break;
            }
            let (rec, _) = decode_record(id, v.value())?;
            if rec.status.is_finished() {
                out.push(id.to_string());
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Records newest first that pass `filter`, at most `limit`.
    pub fn list(
        &self,
        limit: usize,
        filter: impl Fn(&Record) -> bool,
    ) -> Result<Vec<Record>, StoreError> {
        let txn = self.db()?.begin_read().map_err(io_err)?;
        let t = txn.open_table(RECORDS).map_err(io_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(io_err)?.rev() {
            let (k, v) = item.map_err(io_err)?;
            let (rec, _) = decode_record(k.value(), v.value())?;
            if filter(&rec) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Counts of records per status, and the oldest unfinished received time.
    pub fn counts(&self) -> Result<QueueCounts, StoreError> {
        let txn = self.db()?.begin_read().map_err(io_err)?;
        let t = txn.open_table(RECORDS).map_err(io_err)?;
        let mut counts: Vec<(Status, u64)> = Vec::new();
        let mut oldest = None;
        for item in t.iter().map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            let (rec, _) = decode_record(k.value(), v.value())?;
            if oldest.is_none() && !rec.status.is_finished() {
                oldest = Some(rec.received_at.clone());
            }
            match counts.iter_mut().find(|(s, _)| *s == rec.status) {
                Some((_, n)) => *n += 1,
                None => counts.push((rec.status, 1)),
            }
        }
        Ok((counts, oldest))
    }
}

/// The writer thread: group commit, and reopening the file after an I/O failure (redb
/// refuses further writes on a handle that saw one).
fn writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<WriteRequest>) {
    while let Some(first) = rx.blocking_recv() {
        {
            let (lock, cv) = &shared.hold;
            if let Ok(mut held) = lock.lock() {
                while *held {
                    match cv.wait(held) {
                        Ok(g) => held = g,
                        Err(_) => break,
                    }
                }
            }
        }
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP && !batch.iter().any(|r| r.close) {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let close = batch.iter().any(|r| r.close);
        let mut db = shared.db.read().ok().and_then(|g| g.clone());
        if db.is_none() && !shared.closed.load(Ordering::SeqCst) {
            reopen(&shared);
            db = shared.db.read().ok().and_then(|g| g.clone());
        }
        let result = match db {
            Some(db) => apply(&db, &batch),
            None => Err(StoreError::Closed),
        };
        shared.commits.fetch_add(1, Ordering::Relaxed);
        shared.healthy.store(result.is_ok(), Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, messages = batch.len(), "store commit failed; nothing in it was acknowledged");
            reopen(&shared);
        }
        if close {
            shared.closed.store(true, Ordering::SeqCst);
            release(&shared);
        }
        for req in batch {
            let _ = req.reply.send(result.clone());
        }
    }
    // Channel closed: every Store handle is gone. Close the database.
    if let Ok(mut g) = shared.db.write() {
        g.take();
    }
}

/// Drops the database handle, waiting briefly for readers to let go of it.
fn release(shared: &Shared) -> bool {
    let Ok(mut guard) = shared.db.write() else {
        return false;
    };
    if let Some(old) = guard.take() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut old = Some(old);
        while let Some(arc) = old.take() {
            match Arc::try_unwrap(arc) {
                Ok(db) => drop(db),
                Err(arc) if Instant::now() < deadline => {
                    old = Some(arc);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(arc) => {
                    // A reader still holds it; keep using it rather than lose the store.
                    *guard = Some(arc);
                    return false;
                }
            }
        }
    }
    true
}

/// Drops the database handle and opens the file again (after an I/O failure).
fn reopen(shared: &Shared) {
    if shared.closed.load(Ordering::SeqCst) || !release(shared) {
        return;
    }
    let Ok(mut guard) = shared.db.write() else {
        return;
    };
    match open_db(&shared.path, &shared.fail_writes) {
        Ok(db) => *guard = Some(Arc::new(db)),
        Err(e) => tracing::error!(error = %e, "store reopen failed; will retry on the next write"),
    }
}
