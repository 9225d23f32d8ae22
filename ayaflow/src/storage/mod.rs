//! The storage writer: a dedicated thread that owns the read-write [`Store`] and turns batches
//! from the pipeline into SQLite transactions, off the async runtime.
//!
//! ```text
//! pipeline --send_packets/send_windows_within--> queue (bounded by max_queued_rows, DropNewest)
//!          --every flush_interval--> pending --one transaction--> SQLite file
//!                                          \--every clamp(retention/10, 1 s, 60 s)--> retention
//! ```
//!
//! # Backpressure
//!
//! [`StorageSender`] never blocks the capture path: the queue is bounded by a budget of rows
//! ([`StorageConfig::max_queued_rows`]) that counts both rows waiting in the queue and rows the
//! writer holds for a retry. A batch of raw packets that does not fit is dropped whole (policy
//! `DropNewest`), counted in `rows_dropped{reason="queue_full"}` and logged at most every
//! [`LOG_PERIOD`] with the knob to turn. Closed windows, which arrive all at once and may
//! outnumber the budget, go in chunks that wait (asynchronously, for a bounded time) for the
//! writer to make room ([`StorageSender::send_windows_within`]). Live statistics never wait for
//! the disk.
//!
//! # Writing
//!
//! The writer wakes every [`StorageConfig::flush_interval`] (earlier when the queue holds many
//! rows), moves everything queued into its pending buffer and writes it in transactions of up to
//! [`MAX_ROWS_PER_TRANSACTION`] rows, so a row is durable within about a second of arrival.
//! Retention runs every `clamp(retention / 10, 1 s, 60 s)`, deleting about
//! [`RETENTION_BATCH_ROWS`] per transaction (raw rows go a whole block at a time, so a batch may
//! be up to a block larger); between two batches, due writes go first.
//!
//! # Faults
//!
//! A failed write (disk full, database locked, I/O error) is counted in
//! `write_errors{kind}`, logged (rate-limited), and retried with a backoff from
//! [`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`]; the rows stay pending, inside the same budget,
//! so new batches are dropped as `queue_full` while the fault lasts. Before every write the
//! writer checks that the file at the path is still the one it opened: if it was removed or
//! replaced, it closes the old connection and opens (creates) the path again. I/O errors also
//! make it reopen. Errors of kind `other` (corrupt file, schema from a newer version) are not
//! expected to clear by themselves: after [`MAX_OTHER_ATTEMPTS`] attempts the pending rows are
//! dropped and counted as `write_error`. Every accepted row therefore ends up either written
//! (`rows_written`) or counted in `rows_dropped`.
//!
//! # Shutdown
//!
//! [`Storage::shutdown`] (or dropping [`Storage`]):
//! 1. closes the queue: later sends are dropped and counted as `shutdown`;
//! 2. the writer moves everything still queued into its pending buffer and writes it, retrying
//!    through faults until [`StorageConfig::drain_timeout`] has passed;
//! 3. rows still unwritten at the deadline are counted as dropped (`shutdown`) and logged;
//! 4. the writer drops the [`Store`], closing the database (SQLite checkpoints the WAL);
//! 5. the thread is joined and the final statistics are returned.
//!
//! # Layout
//! - this file: the configuration ([`StorageConfig`]) and the limits above;
//! - `queue`: [`Storage`] and [`StorageSender`], the bounded queue between them;
//! - `writer`: the writer thread (transactions, retention, faults, the final drain);
//! - `budget`: keeping the file within `max_db_bytes`, oldest history first;
//! - `stats`: what storage counts ([`StorageStats`], [`DropReason`]).

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    aggregate::WindowRow,
    clock::unix_now_ns,
    flow::Packet,
    ratelimit::RateLimit,
    store::{ErrorKind, Store, StoreError},
};

mod budget;
mod queue;
mod stats;
mod writer;

pub use budget::MIN_MAX_DB_BYTES;
use budget::*;
pub use queue::*;
pub use stats::*;
use writer::*;

/// Default of [`StorageConfig::flush_interval`].
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Default of [`StorageConfig::max_queued_rows`]: 36 MiB of queued packets (72 bytes each, plus
/// under 2 MiB for the transaction being written), about half a second of raw events at a
/// million packets per second. That covers a burst of new connections, whose keys the writer
/// must insert first (measured: 100,000 new connections at 0.6 Mpps overflowed half this by a
/// few percent), and short disk stalls.
pub const DEFAULT_MAX_QUEUED_ROWS: usize = 524_288;

/// Default of [`StorageConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows deleted per retention transaction (at least; raw rows go a whole block at a time): small
/// enough that the write lock is released within milliseconds, so queued inserts never wait
/// long behind retention.
pub const RETENTION_BATCH_ROWS: usize = 5_000;

/// Rows per insert transaction, so one huge backlog does not become one huge transaction.
pub const MAX_ROWS_PER_TRANSACTION: usize = 50_000;

/// First retry delay after a failed write; it doubles with each failure in a row.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// Attempts at writing pending rows through errors of kind `other` before dropping them.
pub const MAX_OTHER_ATTEMPTS: u32 = 3;

/// Warnings about drops and write errors are logged at most once per this period.
pub const LOG_PERIOD: Duration = Duration::from_secs(10);

/// The queue wakes the writer before its flush interval once it holds this many rows (or half
/// the budget, if smaller), so a burst is written while there is still room for the next one.
const EARLY_FLUSH_ROWS: usize = 16_384;

/// How often an idle writer checks that its file still exists, so a removed file reappears
/// even when no rows arrive.
const IDLE_FILE_CHECK: Duration = Duration::from_secs(1);

/// Settings of the storage writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// The SQLite file, created if missing.
    pub path: PathBuf,
    /// Rows older than this are deleted; `None` keeps everything.
    pub retention: Option<Duration>,
    /// Queued rows are written at least this often. Default [`DEFAULT_FLUSH_INTERVAL`].
    pub flush_interval: Duration,
    /// Budget of rows accepted but not yet written (queued or pending a retry); batches that do
    /// not fit are dropped. Default [`DEFAULT_MAX_QUEUED_ROWS`].
    pub max_queued_rows: usize,
    /// The disk budget: the file and its WAL stay within this many bytes plus one transaction,
    /// the oldest history deleted first to make room (`budget.rs`). At least
    /// [`MIN_MAX_DB_BYTES`]. `None` (the default): only the disk limits it.
    pub max_db_bytes: Option<u64>,
    /// How long shutdown keeps trying to write what is left. Default [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
}

impl StorageConfig {
    /// Defaults for everything but the path; no retention.
    pub fn new(path: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            path: path.into(),
            retention: None,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_queued_rows: DEFAULT_MAX_QUEUED_ROWS,
            max_db_bytes: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// How often retention runs: a tenth of the retention, between 1 s and 60 s, so expired
    /// rows outlive the retention by at most 10% (or a minute).
    pub fn retention_interval(&self) -> Option<Duration> {
        self.retention
            .map(|r| (r / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }
}

#[cfg(test)]
mod tests;
