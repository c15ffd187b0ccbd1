//! Reading the store: the due index, the limit windows' sends, the finished records
//! retention deletes, the history's lists, counts and pages, each in one read
//! transaction.

use redb::{ReadableDatabase, ReadableTable};

use super::schema::*;
use super::*;
use crate::history::{Record, Status};
use crate::time::HOUR_MS;

impl Store {
    /// Due-index entries in order as (due, id, provider), each as `pick(due, id,
    /// provider)` says, at most `limit`.
    pub fn due_entries(
        &self,
        limit: usize,
        mut pick: impl FnMut(u64, &str, &str) -> Pick,
    ) -> Result<Vec<(u64, String, String)>, StoreError> {
        contained("the due entries index", || {
            let txn = self.db()?.begin_read().map_err(io_err)?;
            let t = txn.open_table(DUE).map_err(io_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                let Some((ms, id)) = split_due_key(k.value()) else {
                    continue;
                };
                let last = match pick(ms, &id, v.value()) {
                    Pick::Skip => continue,
                    Pick::Take => false,
                    Pick::Last => true,
                };
                out.push((ms, id, v.value().to_string()));
                if last || out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Sends counted against provider limits since `since` (ms): (provider, at, id, rcpts).
    pub fn usage_since(&self, since: u64) -> Result<Vec<(String, u64, String, u32)>, StoreError> {
        contained("the usage since index", || {
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
        })
    }

    /// Ids of finished records received before `cutoff` (ms), oldest first, at most
    /// `limit`; unfinished records are passed over.
    pub fn finished_before(&self, cutoff: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        contained("the finished before index", || {
            let txn = self.db()?.begin_read().map_err(io_err)?;
            let t = txn.open_table(RECORDS).map_err(io_err)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                let id = k.value();
                let received = crate::history::received_ms(id).unwrap_or(0);
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
        })
    }

    /// Records newest first that pass `filter`, at most `limit`.
    pub fn list(
        &self,
        limit: usize,
        filter: impl Fn(&Record) -> bool,
    ) -> Result<Vec<Record>, StoreError> {
        contained("the list index", || {
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
        })
    }

    /// Number of records of each status (from the status index).
    pub fn status_counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        contained("the status counts index", || {
            let txn = self.db()?.begin_read().map_err(io_err)?;
            let t = txn.open_table(BY_STATUS).map_err(io_err)?;
            let mut out = Vec::new();
            for st in Status::ALL {
                let lo = [st as u8];
                let hi = [st as u8 + 1];
                let n = t.range(&lo[..]..&hi[..]).map_err(io_err)?.count() as u64;
                out.push((st, n));
            }
            Ok(out)
        })
    }

    /// Attempts per hour by outcome, from the hour holding `since_ms` on: (hour start in
    /// ms, sent, deferred, failed), oldest first.
    pub fn tallies_since(&self, since_ms: u64) -> Result<Vec<(u64, u64, u64, u64)>, StoreError> {
        contained("the hourly counts", || {
            let txn = self.db()?.begin_read().map_err(io_err)?;
            let t = txn.open_table(TALLY).map_err(io_err)?;
            let mut out = Vec::new();
            for item in t.range(since_ms / HOUR_MS..).map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                let (s, d, f) = v.value();
                out.push((k.value() * HOUR_MS, s, d, f));
            }
            Ok(out)
        })
    }

    /// The id of the oldest queued or deferred message.
    pub fn oldest_waiting(&self) -> Result<Option<String>, StoreError> {
        contained("the oldest waiting index", || {
            let txn = self.db()?.begin_read().map_err(io_err)?;
            let t = txn.open_table(BY_STATUS).map_err(io_err)?;
            let mut oldest: Option<String> = None;
            for st in [Status::Queued, Status::Deferred] {
                let lo = [st as u8];
                let hi = [st as u8 + 1];
                if let Some(first) = t.range(&lo[..]..&hi[..]).map_err(io_err)?.next() {
                    let (k, _) = first.map_err(io_err)?;
                    let id = String::from_utf8_lossy(&k.value()[1..]).into_owned();
                    if oldest.as_ref().is_none_or(|o| id < *o) {
                        oldest = Some(id);
                    }
                }
            }
            Ok(oldest)
        })
    }

    /// History query, newest first: by status and/or user from their indexes, received
    /// at or after `since` (ms), at most `limit`.
    pub fn query(
        &self,
        status: Option<Status>,
        user: Option<&str>,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.page(&Page {
            status,
            user,
            since,
            limit,
            ..Page::default()
        })
        .map(|(records, _)| records)
    }

    /// One page of history, newest first, from the narrowest index (status, else user,
    /// else all records), starting below `before`; every filter is applied before a record
    /// counts towards `limit`. At most `max_scan` records are examined (0: no cap). Returns
    /// the records and the cursor of the next page (None at the end).
    pub fn page(&self, q: &Page<'_>) -> Result<(Vec<Record>, Option<String>), StoreError> {
        contained("the history index", || {
            let txn = self.db()?.begin_read().map_err(io_err)?;
            let records = txn.open_table(RECORDS).map_err(io_err)?;
            let floor = q.since.map(|ms| ulid::Ulid::from_parts(ms, 0).to_string());
            let mut out = Vec::new();
            let mut scanned = 0usize;
            let mut last: Option<String> = None;
            // Returns whether to go on; ids are time-ordered, so the scan ends at the first
            // one older than `since`.
            let mut take = |id: &str| -> Result<bool, StoreError> {
                if floor.as_ref().is_some_and(|f| id < f.as_str()) {
                    last = None;
                    return Ok(false);
                }
                scanned += 1;
                last = Some(id.to_string());
                if let Some(v) = records.get(id).map_err(io_err)? {
                    let (rec, _) = decode_record(id, v.value())?;
                    if q.user.is_none_or(|u| rec.user.as_deref() == Some(u))
                        && q.status.is_none_or(|s| rec.status == s)
                        && q.keep.is_none_or(|k| k(&rec))
                    {
                        out.push(rec);
                    }
                }
                Ok(out.len() < q.limit && (q.max_scan == 0 || scanned < q.max_scan))
            };
            let mut ended = true;
            if let Some(st) = q.status {
                let t = txn.open_table(BY_STATUS).map_err(io_err)?;
                let lo = vec![st as u8];
                let hi = match q.before {
                    Some(b) => status_key(st, b),
                    None => vec![st as u8 + 1],
                };
                for item in t.range(lo.as_slice()..hi.as_slice()).map_err(io_err)?.rev() {
                    let (k, _) = item.map_err(io_err)?;
                    if !take(&String::from_utf8_lossy(&k.value()[1..]))? {
                        ended = false;
                        break;
                    }
                }
            } else if let Some(u) = q.user {
                let t = txn.open_table(BY_USER).map_err(io_err)?;
                let lo = user_key(u, "");
                let hi = match q.before {
                    Some(b) => user_key(u, b),
                    None => {
                        let mut hi = u.as_bytes().to_vec();
                        hi.push(1);
                        hi
                    }
                };
                for item in t.range(lo.as_slice()..hi.as_slice()).map_err(io_err)?.rev() {
                    let (k, _) = item.map_err(io_err)?;
                    if !take(&String::from_utf8_lossy(&k.value()[lo.len()..]))? {
                        ended = false;
                        break;
                    }
                }
            } else {
                let ids = txn.open_table(RECORDS).map_err(io_err)?;
                let range = match q.before {
                    Some(b) => ids.range(..b).map_err(io_err)?,
                    None => ids.range::<&str>(..).map_err(io_err)?,
                };
                for item in range.rev() {
                    let (k, _) = item.map_err(io_err)?;
                    if !take(k.value())? {
                        ended = false;
                        break;
                    }
                }
            }
            let next = if ended { None } else { last };
            Ok((out, next))
        })
    }
}

/// One page of a history query (see [`Store::page`]).
#[derive(Default)]
pub struct Page<'a> {
    /// Only this status (the status index).
    pub status: Option<Status>,
    /// Only this user (the user index).
    pub user: Option<&'a str>,
    /// Received at or after (ms).
    pub since: Option<u64>,
    /// Older than this id (the cursor of the previous page).
    pub before: Option<&'a str>,
    /// At most this many records.
    pub limit: usize,
    /// At most this many records examined (0: no cap).
    pub max_scan: usize,
    /// Any further filter (provider, search words).
    pub keep: Option<&'a (dyn Fn(&Record) -> bool + Sync)>,
}

impl std::fmt::Debug for Page<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("status", &self.status)
            .field("user", &self.user)
            .field("before", &self.before)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}
