//! What storage counts: rows written, dropped (by reason), queued, write errors; read as a
//! snapshot by the metrics.

use super::*;

/// Why rows were dropped: the `reason` label of `rows_dropped`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The batch did not fit in `max_queued_rows`.
    QueueFull,
    /// The rows failed to write with an error that does not clear by itself.
    WriteError,
    /// Sent after shutdown began, or still unwritten when the drain deadline passed.
    Shutdown,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::WriteError,
        DropReason::Shutdown,
    ];

    /// The metric label: `queue_full`, `write_error` or `shutdown`.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteError => "write_error",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Live counters of the storage writer, shared with the metrics module through an `Arc`.
#[derive(Debug, Default)]
pub struct StorageStats {
    pub(super) rows_written: AtomicU64,
    pub(super) rows_dropped: [AtomicU64; 3],
    pub(super) write_errors: [AtomicU64; 4],
    pub(super) retention_deleted: AtomicU64,
    /// Rows deleted to keep the file within `max_db_bytes`.
    pub(super) size_deleted: AtomicU64,
    /// Rows accepted and not yet written or dropped. Also the queue's budget.
    pub(super) queued_rows: AtomicU64,
    pub(super) reopens: AtomicU64,
    pub(super) undecodable_blocks: AtomicU64,
}

impl StorageStats {
    /// A consistent-enough copy of every counter (each is read atomically on its own).
    pub fn snapshot(&self) -> StorageStatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StorageStatsSnapshot {
            rows_written: load(&self.rows_written),
            rows_dropped: self.rows_dropped.each_ref().map(load),
            write_errors: self.write_errors.each_ref().map(load),
            retention_deleted: load(&self.retention_deleted),
            size_deleted: load(&self.size_deleted),
            queued_rows: load(&self.queued_rows),
            reopens: load(&self.reopens),
            undecodable_blocks: load(&self.undecodable_blocks),
        }
    }

    pub(super) fn dropped(&self, reason: DropReason, rows: usize) {
        self.rows_dropped[reason as usize].fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Releases `rows` from the budget (written or dropped).
    pub(super) fn release(&self, rows: usize) {
        self.queued_rows.fetch_sub(rows as u64, Ordering::AcqRel);
    }
}

/// A copy of [`StorageStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStatsSnapshot {
    /// Rows committed to the database.
    pub rows_written: u64,
    pub(super) rows_dropped: [u64; 3],
    pub(super) write_errors: [u64; 4],
    /// Rows deleted by retention for their age (`data_retention`).
    pub retention_deleted: u64,
    /// Rows deleted, oldest first, to keep the file within `max_db_bytes`.
    pub size_deleted: u64,
    /// Rows accepted and not yet written or dropped (a gauge).
    pub queued_rows: u64,
    /// Times the writer reopened the database after it was removed, replaced or failed.
    pub reopens: u64,
    /// Newest blocks of raw rows found undecodable, closed, and followed by a new block.
    pub undecodable_blocks: u64,
}

impl StorageStatsSnapshot {
    /// Rows dropped for `reason`.
    pub fn rows_dropped(&self, reason: DropReason) -> u64 {
        self.rows_dropped[reason as usize]
    }

    /// Rows dropped for any reason.
    pub fn rows_dropped_total(&self) -> u64 {
        self.rows_dropped.iter().sum()
    }

    /// Failed database operations of `kind` (each failed attempt counts once).
    pub fn write_errors(&self, kind: ErrorKind) -> u64 {
        self.write_errors[kind.index()]
    }

    /// Failed database operations of any kind.
    pub fn write_errors_total(&self) -> u64 {
        self.write_errors.iter().sum()
    }
}
