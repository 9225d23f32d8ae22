//! The disk budget (`--max-db-bytes`): the file and its WAL stay within it, plus one
//! transaction, by deleting the oldest history first.
//!
//! The budget is split: at most a quarter (and 32 MiB) for the WAL, which SQLite checkpoints
//! into the file once it holds that much, the rest for the file itself, enforced by SQLite
//! (`max_page_count`: a write that would pass it fails as `full` and is rolled back). Before
//! each transaction the writer estimates the bytes it needs (its rows times the bytes a row
//! took in the last transactions) and, while the file's used pages plus that would pass the
//! file's share, deletes the oldest history ([`Store::delete_oldest`]: a raw block whole, or
//! the oldest window's rows), counted as `ayaflow_retention_deleted_rows_total{reason="size"}`.
//! Pages freed that way are reused by the next write, so the file stops growing. Should a
//! transaction still fail as `full` with the file at its share (the estimate was low), the
//! writer doubles the estimate, deletes again and retries at once; a `full` error with room
//! left in the budget is the disk's, handled like any full disk (backoff, rows kept).

use super::*;

/// The smallest budget accepted: the WAL's share plus room for a transaction of
/// [`MAX_ROWS_PER_TRANSACTION`] window rows (about 75 bytes each) and the schema.
pub const MIN_MAX_DB_BYTES: u64 = 16 * 1024 * 1024;

/// The WAL's share of a budget: a quarter, at most this.
const MAX_WAL_SHARE: u64 = 32 * 1024 * 1024;

/// The first estimate of a row's bytes, before any transaction measured it: more than a window
/// row takes (about 75 bytes with its index entries), so the first transaction finds room.
pub(super) const FIRST_ROW_BYTES: u64 = 128;

/// The fewest rows per transaction however small the budget's room looks.
const MIN_ROWS_PER_TRANSACTION: usize = 1024;

/// Tries of one transaction that failed as `full` because of the budget, before the failure is
/// handled like a full disk.
const MAX_BUDGET_RETRIES: u32 = 4;

/// The limits applied to the open store: the budget and, for tests, a simulated disk size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Limits {
    pub(super) budget: Option<u64>,
    pub(super) disk: Option<u64>,
}

impl Limits {
    /// The file's share of the budget, `None` without one.
    pub(super) fn file_share(&self) -> Option<u64> {
        self.budget.map(|b| b - wal_share(b))
    }

    /// The cap SQLite enforces on the file: the file's share, or the simulated disk if less.
    fn file_cap(&self) -> Option<u64> {
        match (self.file_share(), self.disk) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn wal_share(budget: u64) -> u64 {
    (budget / 4).min(MAX_WAL_SHARE)
}

impl Writer {
    /// The limits as set now (the budget can change at run time).
    pub(super) fn wanted_limits(&self) -> Limits {
        Limits {
            budget: self.shared.max_db_bytes(),
            disk: self.shared.disk_limit(),
        }
    }

    /// Applies `limits` to the open store.
    pub(super) fn apply_limits(store: &mut Store, limits: Limits) -> Result<(), StoreError> {
        store.set_max_bytes(limits.file_cap())?;
        store.set_wal_limit(limits.budget.map(wal_share))
    }

    /// Rows per transaction: [`MAX_ROWS_PER_TRANSACTION`], fewer when the budget's file share
    /// would not hold twice as many (rows of new keys take about 250 bytes), so that a
    /// transaction always fits once older history is deleted.
    pub(super) fn rows_per_transaction(&self) -> usize {
        let Some(share) = self.applied_limits.and_then(|l| l.file_share()) else {
            return MAX_ROWS_PER_TRANSACTION;
        };
        let fit = share / self.row_bytes.saturating_mul(2).max(1);
        usize::try_from(fit)
            .unwrap_or(usize::MAX)
            .clamp(MIN_ROWS_PER_TRANSACTION, MAX_ROWS_PER_TRANSACTION)
    }

    /// Before a transaction of `rows` rows: deletes the oldest history until the file's share
    /// of the budget has room for them. Returns the file's used bytes (for
    /// [`Writer::learn_row_bytes`]; 0 without a budget, which measures nothing), or `None` after
    /// a failure (counted, backoff set).
    pub(super) fn make_room(&mut self, rows: usize) -> Option<u64> {
        let share = self.applied_limits.and_then(|l| l.file_share());
        let store = self.store.as_mut()?;
        // Without a budget nothing is measured: no query added to the write path.
        let Some(share) = share else {
            return Some(0);
        };
        let mut used = match store.used_bytes() {
            Ok(u) => u,
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        let need = (rows as u64).saturating_mul(self.row_bytes);
        let mut deleted = 0usize;
        let mut swept = false;
        while used.saturating_add(need) > share {
            let step = rows.max(RETENTION_BATCH_ROWS);
            let (before, row_bytes) = (used, self.row_bytes);
            let round = store.delete_oldest(step).and_then(|n| {
                // Rows that freed under half their estimated bytes left keys behind (many
                // distinct tuples): sweep the keys nothing points at any more, once per call.
                let freed = before.saturating_sub(store.used_bytes()?);
                if n > 0 && !swept && freed < (n as u64).saturating_mul(row_bytes) / 2 {
                    swept = true;
                    store.sweep_unused_keys()?;
                }
                Ok((n, store.used_bytes()?))
            });
            match round {
                Ok((0, _)) => break, // nothing left to delete: the write finds out
                Ok((n, u)) => {
                    deleted += n;
                    used = u;
                }
                Err(e) => {
                    self.count_size_deletions(deleted, share);
                    self.failed(&e);
                    return None;
                }
            }
        }
        self.count_size_deletions(deleted, share);
        Some(used)
    }

    /// After a committed transaction of `rows` rows that found the file at `used_before`
    /// bytes: the bytes a row took, remembered so the next transaction's room is right. A
    /// larger row size is taken at once, a smaller one an eighth at a time.
    pub(super) fn learn_row_bytes(&mut self, used_before: u64, rows: usize) {
        if self.applied_limits.and_then(|l| l.budget).is_none() {
            return;
        }
        self.truncate_wal_past_its_share();
        let Some(used) = self.store.as_ref().and_then(|s| s.used_bytes().ok()) else {
            return;
        };
        if rows == 0 {
            return;
        }
        let took = used.saturating_sub(used_before) / rows as u64;
        self.row_bytes = if took >= self.row_bytes {
            took
        } else {
            (self.row_bytes * 7 + took) / 8
        }
        .max(1);
    }

    /// With a budget, empties the WAL once a transaction left it past its share. SQLite
    /// checkpoints at that point too, but leaves the file at its largest (one transaction's
    /// pages: new keys dirty pages all over the indexes) until the next write starts over.
    fn truncate_wal_past_its_share(&mut self) {
        let Some(share) = self.applied_limits.and_then(|l| l.budget).map(wal_share) else {
            return;
        };
        let wal = PathBuf::from(format!("{}-wal", self.shared.path.display()));
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > share)
            && let Some(store) = self.store.as_mut()
            && let Err(e) = store.checkpoint()
        {
            // Only the WAL's size is at stake, the rows are committed: the next write retries.
            tracing::debug!("checkpointing the WAL past its share of max_db_bytes: {e}");
        }
    }

    /// Whether a transaction that failed as `full` failed on the budget (the file is at its
    /// share: delete and retry) rather than on the disk. Doubles the row estimate if so.
    pub(super) fn full_because_of_budget(&mut self, tries: u32) -> bool {
        let Some(share) = self.applied_limits.and_then(|l| l.file_share()) else {
            return false;
        };
        let Some(used) = self.store.as_ref().and_then(|s| s.used_bytes().ok()) else {
            return false;
        };
        let pending = self.pending_rows().min(self.rows_per_transaction()) as u64;
        let at_share = used.saturating_add(pending.saturating_mul(self.row_bytes) * 2) > share;
        if at_share && tries < MAX_BUDGET_RETRIES {
            self.row_bytes = self.row_bytes.saturating_mul(2);
            true
        } else {
            false
        }
    }

    fn count_size_deletions(&self, rows: usize, share: u64) {
        if rows == 0 {
            return;
        }
        self.shared
            .stats
            .size_deleted
            .fetch_add(rows as u64, Ordering::Relaxed);
        if let Some(suppressed) = self.budget_log.ready() {
            tracing::info!(
                path = %self.shared.path.display(),
                rows,
                suppressed,
                max_db_bytes = self.shared.max_db_bytes(),
                file_share = share,
                "the history database reached max_db_bytes: deleted the oldest rows to make \
                 room (raise max_db_bytes or lower data_retention to keep more history)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_split_between_the_file_and_the_wal() {
        let mib = 1024 * 1024;
        let limits = |budget, disk| Limits { budget, disk };
        assert_eq!(limits(Some(16 * mib), None).file_share(), Some(12 * mib));
        assert_eq!(limits(Some(16 * mib), None).file_cap(), Some(12 * mib));
        assert_eq!(limits(Some(1024 * mib), None).file_share(), Some(992 * mib));
        assert_eq!(limits(None, Some(1)).file_cap(), Some(1));
        assert_eq!(limits(Some(16 * mib), Some(1)).file_cap(), Some(1));
        assert_eq!(limits(None, None).file_cap(), None);
    }
}
