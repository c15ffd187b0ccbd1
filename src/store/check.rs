//! `mailgate store check` and `mailgate store salvage`: for a store the daemon does not
//! have open. The check runs redb's integrity check, reads every record and body (bodies
//! against their checksums) and compares the indexes with the records; salvage copies
//! every record and body that can be read into a new store and says what could not be.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable};

use super::schema::*;
use super::{Mutation, Store, StoreError, contained, io_err};
use crate::history::Record;

/// What `store check` found.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// redb's own integrity check passed.
    pub integrity_ok: bool,
    /// Records read.
    pub records: u64,
    /// Bodies whose checksum matched (or that predate checksums).
    pub bodies_ok: u64,
    /// Of those, the bodies kept in files beside the database.
    pub body_files: u64,
    /// Bytes in those files.
    pub body_file_bytes: u64,
    /// One line per problem found.
    pub problems: Vec<String>,
}

/// What `store salvage` copied.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SalvageReport {
    /// Records copied with their bodies.
    pub copied: u64,
    /// Finished records copied whose body was unreadable (their history is kept).
    pub history_only: u64,
    /// One line per record or body that could not be read.
    pub lost: Vec<String>,
}

fn open_existing(path: &Path) -> Result<redb::Database, StoreError> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            reason: "there is no such file".into(),
        });
    }
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    super::writer::open_db(path, &fail).map(|(db, _, _)| db)
}

/// Every record id in the store, read key by key so one damaged record does not hide
/// the others.
fn ids(db: &redb::Database) -> Result<Vec<String>, StoreError> {
    contained("the record ids", || {
        let txn = db.begin_read().map_err(io_err)?;
        let t = txn.open_table(RECORDS).map_err(io_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(io_err)? {
            match item {
                Ok((k, _)) => out.push(k.value().to_string()),
                Err(e) => return Err(StoreError::Damaged(e.to_string())),
            }
        }
        Ok(out)
    })
}

/// A record, its due time and its body (None when it has none).
type Stored = (Record, Option<u64>, Option<super::Body>);

fn read_one(db: &redb::Database, bodies: &Path, id: &str) -> Result<Stored, StoreError> {
    contained(&format!("message {id}"), || {
        let txn = db.begin_read().map_err(io_err)?;
        let records = txn.open_table(RECORDS).map_err(io_err)?;
        let v = records
            .get(id)
            .map_err(io_err)?
            .ok_or_else(|| StoreError::Damaged(format!("record {id} vanished")))?;
        let (rec, due) = decode_record(id, v.value())?;
        let body = super::read_body(&txn, bodies, id, None)?;
        Ok((rec, due, body))
    })
}

impl Store {
    /// Checks a store that no daemon has open.
    pub fn check(path: &Path) -> Result<CheckReport, StoreError> {
        let mut db = open_existing(path)?;
        let mut report = CheckReport {
            integrity_ok: matches!(
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity())),
                Ok(Ok(true))
            ),
            ..CheckReport::default()
        };
        if !report.integrity_ok {
            report.problems.push(
                "redb's integrity check failed (pages were repaired or cannot be read)".into(),
            );
        }
        let mut due_ids = std::collections::HashSet::new();
        let mut status_ids = std::collections::HashSet::new();
        let indexes = contained("the indexes", || {
            let txn = db.begin_read().map_err(io_err)?;
            let due = txn.open_table(DUE).map_err(io_err)?;
            for item in due.iter().map_err(io_err)? {
                let (k, _) = item.map_err(io_err)?;
                if let Some((ms, id)) = split_due_key(k.value()) {
                    due_ids.insert((id, ms));
                }
            }
            let st = txn.open_table(BY_STATUS).map_err(io_err)?;
            for item in st.iter().map_err(io_err)? {
                let (k, _) = item.map_err(io_err)?;
                let k = k.value();
                if let Some((&b, id)) = k.split_first() {
                    status_ids.insert((b, String::from_utf8_lossy(id).into_owned()));
                }
            }
            Ok(())
        });
        if let Err(e) = indexes {
            report
                .problems
                .push(format!("the indexes cannot be read: {e}"));
        }
        let all = match ids(&db) {
            Ok(ids) => ids,
            Err(e) => {
                report
                    .problems
                    .push(format!("the records cannot be listed: {e}"));
                Vec::new()
            }
        };
        let bodies = super::body::dir_of(path);
        for id in all {
            match read_one(&db, &bodies, &id) {
                Ok((rec, due, body)) => {
                    report.records += 1;
                    match body {
                        Some(b) => {
                            report.bodies_ok += 1;
                            if let super::Body::File { len, .. } = b {
                                report.body_files += 1;
                                report.body_file_bytes += len;
                            }
                        }
                        None => report
                            .problems
                            .push(format!("{id}: the record has no message body")),
                    }
                    if let Some(ms) = due
                        && !due_ids.contains(&(id.clone(), ms))
                    {
                        report.problems.push(format!(
                            "{id}: {} but missing from the due index",
                            rec.status.as_str()
                        ));
                    }
                    if !rec.status.is_finished() && due.is_none() {
                        report
                            .problems
                            .push(format!("{id}: {} but has no due time", rec.status.as_str()));
                    }
                    if !status_ids.contains(&(rec.status as u8, id.clone())) {
                        report
                            .problems
                            .push(format!("{id}: missing from the status index"));
                    }
                }
                Err(e) => report.problems.push(format!("{id}: {e}")),
            }
        }
        for name in super::orphan_files(&db, &bodies) {
            report.problems.push(format!(
                "{}: a body file no record refers to (left by a crash before its commit; removed when mailgate next starts)",
                bodies.join(name).display()
            ));
        }
        Ok(report)
    }

    /// Copies every readable record and body of the store at `from` (no daemon may have it
    /// open) into a new store at `to`, which must not exist. Unfinished records whose body
    /// cannot be read are left out (they cannot be sent); finished ones keep their history.
    pub async fn salvage(from: &Path, to: &Path) -> Result<SalvageReport, StoreError> {
        if to.exists() {
            return Err(StoreError::Open {
                path: to.to_path_buf(),
                reason: "it already exists; salvage writes a new store".into(),
            });
        }
        let src = open_existing(from)?;
        let dst = Store::open(to)?;
        let mut report = SalvageReport::default();
        let all = match ids(&src) {
            Ok(ids) => ids,
            Err(e) => {
                report
                    .lost
                    .push(format!("the list of records stopped early: {e}"));
                Vec::new()
            }
        };
        let mut batch = Vec::new();
        let bodies = super::body::dir_of(from);
        for id in all {
            let read = read_one(&src, &bodies, &id).and_then(|(rec, due, body)| {
                let bytes = body
                    .map(|b| b.bytes().map(|c| c.into_owned()))
                    .transpose()
                    .map_err(|e| StoreError::Damaged(format!("the body of {id}: {e}")))?;
                Ok((rec, due, bytes))
            });
            match read {
                Ok((rec, due, Some(body))) => {
                    report.copied += 1;
                    batch.push(Mutation::Insert {
                        body: dst.new_body(&id, body).await?,
                        record: Box::new(rec.clone()),
                        due_ms: due.unwrap_or(0),
                    });
                    batch.push(Mutation::Update {
                        record: Box::new(rec),
                        due_ms: due,
                    });
                }
                Ok((rec, _, None)) if rec.status.is_finished() => {
                    report.history_only += 1;
                    batch.push(Mutation::Insert {
                        body: super::NewBody::Memory(Vec::new()),
                        record: Box::new(rec.clone()),
                        due_ms: 0,
                    });
                    batch.push(Mutation::Update {
                        record: Box::new(rec),
                        due_ms: None,
                    });
                }
                Ok((rec, _, None)) => report.lost.push(format!(
                    "{id}: {} without a readable body",
                    rec.status.as_str()
                )),
                Err(e) => report.lost.push(format!("{id}: {e}")),
            }
            if batch.len() >= 200 {
                dst.write(std::mem::take(&mut batch)).await?;
            }
        }
        // The limit windows, so the new store does not grant a fresh daily quota.
        let usage = contained("the usage table", || {
            let txn = src.begin_read().map_err(io_err)?;
            let t = txn.open_table(USAGE).map_err(io_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(io_err)?.flatten() {
                if let Some((provider, at, id)) = split_usage_key(item.0.value()) {
                    out.push(Mutation::Usage {
                        provider,
                        at,
                        id,
                        rcpts: item.1.value(),
                    });
                }
            }
            Ok(out)
        });
        match usage {
            Ok(u) => batch.extend(u),
            Err(e) => report.lost.push(format!("the provider usage windows: {e}")),
        }
        if !batch.is_empty() {
            dst.write(batch).await?;
        }
        drop(src);
        dst.close().await;
        Ok(report)
    }
}

/// Space used by one table: pages (leaf and branch) times the page size, and the bytes
/// of keys and values stored in them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableSpace {
    /// Table name.
    pub table: &'static str,
    /// Bytes in its pages.
    pub page_bytes: u64,
    /// Bytes of keys and values.
    pub stored_bytes: u64,
}

impl Store {
    /// The space each table takes in the store at `path` (no daemon may have it open).
    pub fn space(path: &Path) -> Result<Vec<TableSpace>, StoreError> {
        use redb::ReadableTableMetadata;
        let db = open_existing(path)?;
        let txn = db.begin_read().map_err(io_err)?;
        let mut out = Vec::new();
        macro_rules! table {
            ($def:expr, $name:literal) => {{
                let t = txn.open_table($def).map_err(io_err)?;
                let s = t.stats().map_err(io_err)?;
                out.push(TableSpace {
                    table: $name,
                    page_bytes: (s.leaf_pages() + s.branch_pages()) * 4096,
                    stored_bytes: s.stored_bytes(),
                });
            }};
        }
        table!(MESSAGES, "messages");
        table!(BODY_CRC, "body_crc");
        table!(RECORDS, "records");
        table!(DUE, "due");
        table!(USAGE, "usage");
        table!(BY_STATUS, "by_status");
        table!(BY_USER, "by_user");
        table!(TALLY, "tally");
        Ok(out)
    }
}
