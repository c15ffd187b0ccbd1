//! The store: the durable queue and history, and the only module that touches redb.
//!
//! One redb file holds three tables written together: `messages` (id -> raw bytes as
//! relayed), `records` (id -> due time + JSON history record) and `due` (big-endian
//! `(due_ms, id)` -> ()), the index the distributor scans in order. Every write goes
//! through one writer thread that takes all requests waiting while a commit is in flight
//! and commits them in one transaction with immediate durability (group commit), so many
//! concurrent sessions share one fsync.

mod backend;
pub mod body;
mod check;
mod health;
mod read;
pub use read::Page;
mod retention;
mod schema;
pub mod space;
mod writer;

pub use body::Body;
pub use check::{CheckReport, SalvageReport};
pub use retention::{RETENTION_INTERVAL, retention_task};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase};
use tokio::sync::{mpsc, oneshot};

use crate::history::{Record, Status};
use schema::*;
use writer::{open_db, writer};

/// How many waiting requests one commit takes at most.
const MAX_GROUP: usize = 512;

/// Called with the duration of every commit.
pub type CommitObserver = Box<dyn Fn(Duration) + Send>;

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
    /// A stored message failed its checksum or could not be read back (a damaged page).
    #[error("the store is damaged: {0}")]
    Damaged(String),
    /// The store file was deleted or replaced under the running daemon.
    #[error("{0}")]
    Lost(String),
}

impl StoreError {
    /// Whether this is damage to stored data (as opposed to a failing disk or shutdown).
    pub fn is_damage(&self) -> bool {
        matches!(self, StoreError::Damaged(_) | StoreError::Corrupt(_))
    }
}

/// Runs a store read where a panic inside redb (a damaged page can make it panic) is
/// contained and becomes [`StoreError::Damaged`] instead of unwinding into the caller.
fn contained<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(StoreError::Damaged(format!(
                "reading {what} failed inside the database ({msg})"
            )))
        }
    }
}

fn io_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(why) => StoreError::Damaged(why),
        other => StoreError::Io(other.to_string()),
    }
}

/// What a scan of the due index ([`Store::due_entries`]) does with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Take it and go on.
    Take,
    /// Pass over it.
    Skip,
    /// Take it and end the scan.
    Last,
}

/// One change to apply inside a write transaction.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// A new message: body, record, and due now.
    Insert {
        /// Its body as it will be relayed.
        body: NewBody,
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
    /// Counts an attempt's outcome in its hour (the dashboard's chart): `sent`, `failed`
    /// and `partial` (counted as failed: it holds failures) as themselves, anything else
    /// as deferred.
    Tally {
        /// When the attempt ended, ms.
        at_ms: u64,
        /// The message's status after it.
        outcome: Status,
    },
    /// Forgets the hourly counts older than this (ms).
    PruneTally {
        /// Cut-off, ms.
        before: u64,
    },
    /// Writes nothing of substance; proves the store can commit.
    Probe,
}

/// A new message's body as the writer stores it.
#[derive(Debug, Clone)]
pub enum NewBody {
    /// Into the `messages` table.
    Memory(Vec<u8>),
    /// Already in its file (written and fsynced): its length and checksum are recorded.
    File {
        /// Length in bytes.
        len: u64,
        /// CRC32C.
        crc: u32,
    },
}

struct WriteRequest {
    /// Close the database after this request (shutdown).
    close: bool,
    mutations: Vec<Mutation>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

struct Shared {
    path: PathBuf,
    health: health::Health,
    /// Fault injection for tests (`MAILGATE_FAULT_STORE_READ_PANIC`): reading a body that
    /// holds these bytes panics inside the read, as redb does on a damaged page.
    panic_on: Option<Vec<u8>>,
    db: RwLock<Option<Arc<Database>>>,
    fail_writes: Arc<AtomicBool>,
    commits: AtomicU64,
    /// Closed for good (shutdown); no reopen.
    closed: AtomicBool,
    /// Writes handed to the writer and not yet answered.
    waiting: AtomicU64,
    /// Told the duration of every commit (metrics).
    on_commit: std::sync::Mutex<Option<CommitObserver>>,
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

impl Store {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let fail = Arc::new(AtomicBool::new(false));
        let (db, file_id, fd) = open_db(path, &fail)?;
        sweep_body_files(&db, &body::dir_of(path));
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            health: health::Health::default(),
            panic_on: std::env::var_os(backend::READ_PANIC_ENV)
                .map(|v| v.as_encoded_bytes().to_vec()),
            db: RwLock::new(Some(Arc::new(db))),
            fail_writes: fail,
            commits: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            waiting: AtomicU64::new(0),
            hold: (std::sync::Mutex::new(false), std::sync::Condvar::new()),
            on_commit: std::sync::Mutex::new(None),
        });
        backend::fault_injection(Arc::downgrade(&shared), shared.fail_writes.clone());
        health::watch(Arc::downgrade(&shared), path.to_path_buf(), file_id, fd);
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

    /// Runs a read on the blocking pool (store reads touch the disk and may be large), so
    /// the async runtime never waits on the file.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Io(format!("store read task failed: {e}")))?
    }

    /// Sets the function told the duration of every commit.
    pub fn on_commit(&self, f: CommitObserver) {
        if let Ok(mut g) = self.shared.on_commit.lock() {
            *g = Some(f);
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

    /// Commits a new message with its record, due at `record`'s arrival. A large body
    /// goes to its file first (and the bytes are let go of before the commit); a commit
    /// that fails removes it again.
    pub async fn insert(
        &self,
        raw: Vec<u8>,
        record: Record,
        due_ms: u64,
    ) -> Result<(), StoreError> {
        let id = record.id.clone();
        let body = self.new_body(&id, raw).await?;
        let in_file = matches!(body, NewBody::File { .. });
        let result = self
            .write(vec![Mutation::Insert {
                body,
                record: Box::new(record),
                due_ms,
            }])
            .await;
        if result.is_err() && in_file {
            let _ = std::fs::remove_file(self.bodies().join(&id));
        }
        result
    }

    /// The directory of this store's body files.
    pub fn bodies(&self) -> PathBuf {
        body::dir_of(&self.shared.path)
    }

    /// A new body as the writer takes it: a large one written to its file (durably)
    /// first, a small one as it is.
    pub async fn new_body(&self, id: &str, raw: Vec<u8>) -> Result<NewBody, StoreError> {
        if raw.len() < body::FILE_MIN {
            return Ok(NewBody::Memory(raw));
        }
        if self.shared.fail_writes.load(Ordering::Relaxed) {
            return Err(StoreError::Io(
                "fault injection: writes fail as on a full disk".into(),
            ));
        }
        let (dir, id) = (self.bodies(), id.to_string());
        let len = raw.len() as u64;
        let written = tokio::task::spawn_blocking(move || body::write_file(&dir, &id, &raw))
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?;
        match written {
            Ok(crc) => Ok(NewBody::File { len, crc }),
            Err(e) => Err(StoreError::Io(format!(
                "cannot write the message body file in {}: {e}",
                self.bodies().display()
            ))),
        }
    }

    /// Commits a new version of a record and moves its due-index entry.
    pub async fn update(&self, record: Record, due_ms: Option<u64>) -> Result<(), StoreError> {
        self.write(vec![Mutation::Update {
            record: Box::new(record),
            due_ms,
        }])
        .await
    }

    /// Commits a small real write: true when the store can write right now.
    pub async fn probe(&self) -> bool {
        self.write(vec![Mutation::Probe]).await.is_ok()
    }

    /// What is wrong with the store right now (its file deleted or replaced, or the last
    /// commit failed), in one sentence; None when it is healthy.
    pub fn trouble(&self) -> Option<String> {
        self.shared.health.trouble()
    }

    /// The path of the store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The size of the store file in bytes (0 when it cannot be read).
    pub fn file_len(&self) -> u64 {
        std::fs::metadata(&self.shared.path).map_or(0, |m| m.len())
    }

    /// Number of transactions committed since open (group commit makes this smaller
    /// than the number of writes).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
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
        Ok(self.stored(id, decode_record)?.map(|(r, _)| r))
    }

    /// One message's status, read without decoding the rest of its record.
    pub fn status(&self, id: &str) -> Result<Option<crate::history::Status>, StoreError> {
        Ok(self.stored(id, decode_indexed)?.map(|(ix, _)| ix.status))
    }

    /// A stored record read by `decode` (whole, or the part of it that is needed).
    fn stored<T>(
        &self,
        id: &str,
        decode: Decode<T>,
    ) -> Result<Option<(T, Option<u64>)>, StoreError> {
        contained(&format!("the record of {id}"), || {
            let txn = self.db()?.begin_read().map_err(io_err)?;
            let t = txn.open_table(RECORDS).map_err(io_err)?;
            t.get(id)
                .map_err(io_err)?
                .map(|v| decode(id, v.value()))
                .transpose()
        })
    }

    /// The stored body, checked against its checksum (and a file body against its
    /// length) before it is handed out. A mismatch, a missing file, or a read that fails
    /// inside the database is [`StoreError::Damaged`].
    pub fn body(&self, id: &str) -> Result<Option<Body>, StoreError> {
        contained(&format!("the message {id}"), || {
            let txn = self.db()?.begin_read().map_err(io_err)?;
            read_body(&txn, &self.bodies(), id, self.shared.panic_on.as_deref())
        })
    }

    /// The whole stored message in memory (small messages; see [`Store::body`]).
    pub fn message(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.body(id)?
            .map(|b| {
                b.bytes().map(|c| c.into_owned()).map_err(|e| {
                    StoreError::Damaged(format!("the stored body of {id} cannot be read: {e}"))
                })
            })
            .transpose()
    }
}

/// The files in the body directory no record refers to, sorted: written before a
/// commit that never happened (a crash, or a failed commit whose removal did not run), so
/// never acknowledged. `store check` names them; opening the store removes them.
pub(super) fn orphan_files(db: &Database, dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let Ok(txn) = db.begin_read() else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| matches!(file_body_len(&txn, name), Ok(None)))
        .collect();
    out.sort();
    out
}

/// Removes the [`orphan_files`]; runs as the store opens, before anything writes.
fn sweep_body_files(db: &Database, dir: &Path) {
    let removed = orphan_files(db, dir)
        .into_iter()
        .filter(|name| std::fs::remove_file(dir.join(name)).is_ok())
        .count();
    if removed > 0 {
        tracing::warn!(directory = %dir.display(), removed, "removed message body files no record refers to (written before a commit that did not happen; none was acknowledged)");
    }
}

/// The length of the file body of `id`, if it has one; a store from before file bodies
/// has no such table.
pub(super) fn file_body_len(
    txn: &redb::ReadTransaction,
    id: &str,
) -> Result<Option<u64>, StoreError> {
    match txn.open_table(BODY_FILES) {
        Ok(t) => Ok(t.get(id).map_err(io_err)?.map(|v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// Reads the body of `id` in `txn`: from the `messages` table, or its file in `bodies`,
/// checked against its checksum either way.
pub(super) fn read_body(
    txn: &redb::ReadTransaction,
    bodies: &Path,
    id: &str,
    panic_on: Option<&[u8]>,
) -> Result<Option<Body>, StoreError> {
    let crcs = txn.open_table(BODY_CRC).map_err(io_err)?;
    let want = crcs.get(id).map_err(io_err)?.map(|v| v.value());
    if let Some(len) = file_body_len(txn, id)? {
        return body::open_file(bodies, id, len, want)
            .map(Some)
            .map_err(StoreError::Damaged);
    }
    let t = txn.open_table(MESSAGES).map_err(io_err)?;
    let Some(body) = t.get(id).map_err(io_err)?.map(|v| v.value().to_vec()) else {
        return Ok(None);
    };
    if let Some(marker) = panic_on
        && memchr::memmem::find(&body, marker).is_some()
    {
        panic!("internal error: entered unreachable code (fault injection)");
    }
    if let Some(want) = want {
        let got = crc32c::crc32c(&body);
        if got != want {
            return Err(StoreError::Damaged(format!(
                "the stored body of {id} fails its checksum (CRC32C {got:08x}, stored {want:08x})"
            )));
        }
    }
    Ok(Some(Body::Memory(body)))
}
