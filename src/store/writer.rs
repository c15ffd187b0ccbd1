//! The writer side of the store: opening the file, applying mutations in one write
//! transaction, the group-commit thread, and reopening after an I/O failure.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redb::backends::FileBackend;
use redb::{Database, Durability, ReadableTable};
use tokio::sync::mpsc;

use super::schema::*;
use super::{MAX_GROUP, Mutation, NewBody, Shared, StoreError, WriteRequest, backend, io_err};
use crate::history::Record;
use crate::history::Status;
use crate::time::HOUR_MS;

/// The first bytes of every redb file.
const REDB_MAGIC: &[u8] = b"redb\x1A\x0A\xA9\x0D\x0A";

/// Opens (or creates) the store file. Refuses, and never replaces, a file that exists but
/// is empty or is not a redb database; a panic inside redb while opening (a damaged
/// file) becomes an error. After an unclean shutdown redb repairs the file; then its
/// integrity check runs and its result is logged. Returns the database, the file's
/// identity (device, inode) and its `/proc` path (to rescue it if the path is deleted).
pub(super) fn open_db(
    path: &Path,
    fail: &Arc<AtomicBool>,
) -> Result<(Database, (u64, u64), String), StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    }
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| open_err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| open_err(e.to_string()))?;
    if existed {
        refuse_foreign(&file, meta.len()).map_err(open_err)?;
    }
    let id = super::health::identity(&meta);
    let fd = {
        use std::os::fd::AsRawFd;
        format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd())
    };
    let inner = FileBackend::new(file).map_err(|e| open_err(e.to_string()))?;
    let opening = Arc::new(AtomicBool::new(true));
    let backend = backend::SwitchableBackend::new(inner, fail.clone(), opening.clone());
    let repaired = Arc::new(AtomicBool::new(false));
    let opened = {
        let repaired = repaired.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            // A small page cache: messages are written once and read once, so caching
            // whole bodies only costs memory (a 25 MB message would stay resident).
            Database::builder()
                .set_cache_size(16 << 20)
                .set_repair_callback(move |_| repaired.store(true, Ordering::SeqCst))
                .create_with_backend(backend)
        }))
    };
    let damaged = |why: String| {
        open_err(format!(
            "the file is damaged ({why}); run `mailgate store check` to see what is readable and \
             `mailgate store salvage NEW.redb` to copy it into a new store"
        ))
    };
    let mut db = match opened {
        Err(_) => return Err(damaged("the database panicked while opening it".into())),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(open_err(
                "it is in use by another process (is mailgate already running?)".into(),
            ));
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)))) => {
            return Err(damaged(why));
        }
        Ok(Err(other)) => return Err(open_err(other.to_string())),
        Ok(Ok(db)) => db,
    };
    if repaired.load(Ordering::SeqCst) {
        check_repaired(&mut db, path).map_err(damaged)?;
    }
    opening.store(false, Ordering::SeqCst);
    // Tables are created once; an existing store opens without a write transaction, so
    // the writer can reopen it (after a failed commit) even while the disk is full.
    if tables_exist(&db) {
        return Ok((db, id, fd));
    }
    create_tables(&db)?;
    Ok((db, id, fd))
}

/// Refuses a file that exists but is empty or is not a redb database (never replaced).
fn refuse_foreign(mut file: &std::fs::File, len: u64) -> Result<(), String> {
    if len == 0 {
        return Err("the file exists but is empty (0 bytes), so it is not a mailgate store; mailgate will not replace it. \
             Restore the store from a backup, or delete the file to start a new, empty store"
            .into());
    }
    let mut head = [0u8; 9];
    use std::io::Read;
    let read = file.read(&mut head).map_err(|e| e.to_string())?;
    if read < head.len() || head != REDB_MAGIC {
        return Err("the file is not a mailgate store (not a redb database); mailgate will not replace it. \
             Check store.path, or move the file away to start a new store"
            .into());
    }
    Ok(())
}

/// After redb repaired a store that was not closed cleanly: its integrity check, logged
/// (an error only when the check itself panicked).
fn check_repaired(db: &mut Database, path: &Path) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity())) {
        Ok(Ok(true)) => {
            tracing::warn!(path = %path.display(), "the store was not closed cleanly; it was repaired and its integrity check passed")
        }
        Ok(Ok(false)) => {
            tracing::error!(path = %path.display(), "the store was not closed cleanly; its integrity check found damage that was repaired; run `mailgate store check` while mailgate is stopped")
        }
        Ok(Err(e)) => {
            tracing::error!(path = %path.display(), error = %e, "the store was not closed cleanly and its integrity check failed; run `mailgate store check`")
        }
        Err(_) => return Err("the integrity check panicked".into()),
    }
    Ok(())
}

/// Creates every table of a new store, in one write transaction.
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(io_err)?;
    {
        txn.open_table(MESSAGES).map_err(io_err)?;
        txn.open_table(BODY_CRC).map_err(io_err)?;
        txn.open_table(RECORDS).map_err(io_err)?;
        txn.open_table(DUE).map_err(io_err)?;
        txn.open_table(USAGE).map_err(io_err)?;
        txn.open_table(BY_STATUS).map_err(io_err)?;
        txn.open_table(BY_USER).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.open_table(TALLY).map_err(io_err)?;
    }
    txn.commit().map_err(io_err)
}

fn tables_exist(db: &Database) -> bool {
    use redb::ReadableDatabase;
    let Ok(txn) = db.begin_read() else {
        return false;
    };
    txn.open_table(MESSAGES).is_ok()
        && txn.open_table(BODY_CRC).is_ok()
        && txn.open_table(RECORDS).is_ok()
        && txn.open_table(DUE).is_ok()
        && txn.open_table(USAGE).is_ok()
        && txn.open_table(BY_STATUS).is_ok()
        && txn.open_table(BY_USER).is_ok()
        && txn.open_table(META).is_ok()
        && txn.open_table(TALLY).is_ok()
}

/// Applies a batch in one transaction; returns the ids whose body files the commit
/// deleted (removed from disk once it is durable).
fn apply(db: &Database, batch: &[WriteRequest]) -> Result<Vec<String>, StoreError> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(Durability::Immediate).map_err(io_err)?;
    let mut unlink = Vec::new();
    {
        let mut t = Tables::open(&txn)?;
        for m in batch.iter().flat_map(|r| r.mutations.iter()) {
            match m {
                Mutation::Insert {
                    body,
                    record,
                    due_ms,
                } => t.insert(body, record, *due_ms)?,
                Mutation::Update { record, due_ms } => t.update(record, *due_ms)?,
                Mutation::Delete { id } => {
                    if t.delete(id)? {
                        unlink.push(id.clone());
                    }
                }
                Mutation::DueNow { id, now_ms } => t.due_now(id, *now_ms)?,
                Mutation::Usage {
                    provider,
                    at,
                    id,
                    rcpts,
                } => {
                    t.usage
                        .insert(usage_key(provider, *at, id).as_slice(), *rcpts)
                        .map_err(io_err)?;
                }
                Mutation::PruneUsage { before } => t.prune_usage(*before)?,
                Mutation::Tally { at_ms, outcome } => t.tally(*at_ms, *outcome)?,
                Mutation::PruneTally { before } => t.prune_tally(*before)?,
                Mutation::Probe => {
                    t.meta
                        .insert("probe", crate::time::now_ms())
                        .map_err(io_err)?;
                }
            }
        }
    }
    txn.commit().map_err(io_err)?;
    Ok(unlink)
}

/// Every table of the store, open in one write transaction.
struct Tables<'txn> {
    messages: redb::Table<'txn, &'static str, &'static [u8]>,
    body_files: redb::Table<'txn, &'static str, u64>,
    crcs: redb::Table<'txn, &'static str, u32>,
    meta: redb::Table<'txn, &'static str, u64>,
    records: redb::Table<'txn, &'static str, &'static [u8]>,
    due: redb::Table<'txn, &'static [u8], &'static str>,
    usage: redb::Table<'txn, &'static [u8], u32>,
    by_status: redb::Table<'txn, &'static [u8], ()>,
    by_user: redb::Table<'txn, &'static [u8], ()>,
    tally: redb::Table<'txn, u64, (u64, u64, u64)>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            messages: txn.open_table(MESSAGES).map_err(io_err)?,
            body_files: txn.open_table(BODY_FILES).map_err(io_err)?,
            crcs: txn.open_table(BODY_CRC).map_err(io_err)?,
            meta: txn.open_table(META).map_err(io_err)?,
            records: txn.open_table(RECORDS).map_err(io_err)?,
            due: txn.open_table(DUE).map_err(io_err)?,
            usage: txn.open_table(USAGE).map_err(io_err)?,
            by_status: txn.open_table(BY_STATUS).map_err(io_err)?,
            by_user: txn.open_table(BY_USER).map_err(io_err)?,
            tally: txn.open_table(TALLY).map_err(io_err)?,
        })
    }

    /// The status and user indexes: `old`'s entries out, `new`'s in.
    fn index(
        &mut self,
        id: &str,
        old: Option<&Indexed>,
        new: Option<&Record>,
    ) -> Result<(), StoreError> {
        if let Some(o) = old {
            self.by_status
                .remove(status_key(o.status, id).as_slice())
                .map_err(io_err)?;
            if let Some(u) = &o.user {
                self.by_user
                    .remove(user_key(u, id).as_slice())
                    .map_err(io_err)?;
            }
        }
        if let Some(n) = new {
            self.by_status
                .insert(status_key(n.status, &n.id).as_slice(), ())
                .map_err(io_err)?;
            if let Some(u) = &n.user {
                self.by_user
                    .insert(user_key(u, &n.id).as_slice(), ())
                    .map_err(io_err)?;
            }
        }
        Ok(())
    }

    /// A record as stored, with its due time.
    fn record(&self, id: &str) -> Result<Option<(Record, Option<u64>)>, StoreError> {
        self.stored(id, decode_record)
    }

    /// What a stored record is indexed by, and its due time (the rest is not decoded).
    fn indexed(&self, id: &str) -> Result<Option<(Indexed, Option<u64>)>, StoreError> {
        self.stored(id, decode_indexed)
    }

    /// A stored record read by `decode` (whole, or the part of it that is needed).
    fn stored<T>(
        &self,
        id: &str,
        decode: Decode<T>,
    ) -> Result<Option<(T, Option<u64>)>, StoreError> {
        self.records
            .get(id)
            .map_err(io_err)?
            .map(|v| decode(id, v.value()))
            .transpose()
    }

    fn insert(&mut self, body: &NewBody, record: &Record, due_ms: u64) -> Result<(), StoreError> {
        let crc = match body {
            NewBody::Memory(raw) => {
                self.messages
                    .insert(record.id.as_str(), raw.as_slice())
                    .map_err(io_err)?;
                crc32c::crc32c(raw)
            }
            NewBody::File { len, crc } => {
                self.body_files
                    .insert(record.id.as_str(), *len)
                    .map_err(io_err)?;
                *crc
            }
        };
        self.crcs.insert(record.id.as_str(), crc).map_err(io_err)?;
        self.records
            .insert(
                record.id.as_str(),
                encode_record(record, Some(due_ms)).as_slice(),
            )
            .map_err(io_err)?;
        self.due
            .insert(
                due_key(due_ms, &record.id).as_slice(),
                record.provider.as_str(),
            )
            .map_err(io_err)?;
        self.index(&record.id, None, Some(record))
    }

    fn update(&mut self, record: &Record, due_ms: Option<u64>) -> Result<(), StoreError> {
        let old = self.indexed(&record.id)?;
        if let Some((_, Some(old_due))) = &old {
            self.due
                .remove(due_key(*old_due, &record.id).as_slice())
                .map_err(io_err)?;
        }
        self.index(&record.id, old.as_ref().map(|(r, _)| r), Some(record))?;
        self.records
            .insert(record.id.as_str(), encode_record(record, due_ms).as_slice())
            .map_err(io_err)?;
        if let Some(d) = due_ms {
            self.due
                .insert(due_key(d, &record.id).as_slice(), record.provider.as_str())
                .map_err(io_err)?;
        }
        Ok(())
    }

    /// Deletes a message; true when its body was a file (to unlink after the commit).
    fn delete(&mut self, id: &str) -> Result<bool, StoreError> {
        let old = self
            .records
            .remove(id)
            .map_err(io_err)?
            .map(|v| decode_indexed(id, v.value()))
            .transpose()?;
        if let Some((_, Some(old_due))) = &old {
            self.due
                .remove(due_key(*old_due, id).as_slice())
                .map_err(io_err)?;
        }
        self.index(id, old.as_ref().map(|(r, _)| r), None)?;
        self.messages.remove(id).map_err(io_err)?;
        self.crcs.remove(id).map_err(io_err)?;
        Ok(self.body_files.remove(id).map_err(io_err)?.is_some())
    }

    fn due_now(&mut self, id: &str, now_ms: u64) -> Result<(), StoreError> {
        let Some((mut rec, Some(old_due))) = self.record(id)? else {
            return Ok(());
        };
        // Every waiting recipient is due now too (each keeps its own time when its
        // message's recipients went different ways).
        let now = crate::time::Stamp::at_ms(now_ms);
        let mut changed = false;
        for r in rec
            .recipients
            .iter_mut()
            .filter(|r| !r.status.is_finished())
        {
            if r.next_attempt_at.is_some_and(|t| t > now) {
                r.next_attempt_at = Some(now);
                changed = true;
            }
        }
        if old_due > now_ms {
            self.due
                .remove(due_key(old_due, id).as_slice())
                .map_err(io_err)?;
            self.due
                .insert(due_key(now_ms, id).as_slice(), rec.provider.as_str())
                .map_err(io_err)?;
            rec.next_attempt_at = Some(now);
            if let Some(w) = &mut rec.waiting {
                w.until = rec.next_attempt_at;
            }
            changed = true;
        }
        if changed {
            let due_ms = now_ms.min(old_due);
            self.records
                .insert(id, encode_record(&rec, Some(due_ms)).as_slice())
                .map_err(io_err)?;
        }
        Ok(())
    }

    fn prune_usage(&mut self, before: u64) -> Result<(), StoreError> {
        let old: Vec<Vec<u8>> = self
            .usage
            .iter()
            .map_err(io_err)?
            .filter_map(Result::ok)
            .filter_map(|(k, _)| {
                let key = k.value().to_vec();
                split_usage_key(&key)
                    .filter(|(_, at, _)| *at < before)
                    .map(|_| key)
            })
            .collect();
        for k in old {
            self.usage.remove(k.as_slice()).map_err(io_err)?;
        }
        Ok(())
    }

    fn tally(&mut self, at_ms: u64, outcome: Status) -> Result<(), StoreError> {
        let hour = at_ms / HOUR_MS;
        let (mut sent, mut deferred, mut failed) = self
            .tally
            .get(hour)
            .map_err(io_err)?
            .map_or((0, 0, 0), |v| v.value());
        match outcome {
            Status::Sent => sent += 1,
            Status::Failed | Status::Partial => failed += 1,
            _ => deferred += 1,
        }
        self.tally
            .insert(hour, (sent, deferred, failed))
            .map_err(io_err)?;
        Ok(())
    }

    fn prune_tally(&mut self, before: u64) -> Result<(), StoreError> {
        let old: Vec<u64> = self
            .tally
            .range(..before / HOUR_MS)
            .map_err(io_err)?
            .filter_map(Result::ok)
            .map(|(k, _)| k.value())
            .collect();
        for h in old {
            self.tally.remove(h).map_err(io_err)?;
        }
        Ok(())
    }
}

/// The writer thread: group commit, and reopening the file after an I/O failure (redb
/// refuses further writes on a handle that saw one).
pub(super) fn writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<WriteRequest>) {
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
        let started = Instant::now();
        let result = match (db, shared.health.lost()) {
            (_, Some(why)) => Err(StoreError::Lost(why)),
            (Some(db), None) => apply(&db, &batch).map(|unlink| {
                // The commit that deleted them is durable: their files go now (one a
                // crash leaves behind is swept when the store opens).
                let dir = super::body::dir_of(&shared.path);
                for id in unlink {
                    let _ = std::fs::remove_file(dir.join(id));
                }
            }),
            (None, None) => Err(StoreError::Closed),
        };
        shared.health.commit_result(&result);
        if let Ok(g) = shared.on_commit.lock()
            && let Some(f) = g.as_ref()
        {
            f(started.elapsed());
        }
        shared.commits.fetch_add(1, Ordering::Relaxed);
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
        Ok((db, _, _)) => *guard = Some(Arc::new(db)),
        Err(e) => tracing::error!(error = %e, "store reopen failed; will retry on the next write"),
    }
}
