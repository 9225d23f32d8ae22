//! The storage writer: a dedicated thread that owns the read-write [`Store`] and turns batches
//! from the pipeline into SQLite transactions, off the async runtime.
//!
//! ```text
//! pipeline --send_packets/send_windows--> queue (bounded by max_queued_rows, DropNewest)
//!          --every flush_interval--> pending --one transaction--> SQLite file
//!                                          \--every clamp(retention/10, 1 s, 60 s)--> retention
//! ```
//!
//! # Backpressure
//!
//! [`StorageSender`] never blocks: the queue is bounded by a budget of rows
//! ([`StorageConfig::max_queued_rows`]) that counts both rows waiting in the queue and rows the
//! writer holds for a retry. A batch that does not fit is dropped whole (policy `DropNewest`),
//! counted in `rows_dropped{reason="queue_full"}` and logged at most every
//! [`LOG_PERIOD`] with the knob to turn. Live statistics never wait for the disk.
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
    /// Caps the database file at about this many bytes (see [`Store::set_max_bytes`]); writes
    /// beyond fail as `full` until retention frees pages. `None` (the default): only the disk
    /// limits it.
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
    rows_written: AtomicU64,
    rows_dropped: [AtomicU64; 3],
    write_errors: [AtomicU64; 4],
    retention_deleted: AtomicU64,
    /// Rows accepted and not yet written or dropped. Also the queue's budget.
    queued_rows: AtomicU64,
    reopens: AtomicU64,
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
            queued_rows: load(&self.queued_rows),
            reopens: load(&self.reopens),
        }
    }

    fn dropped(&self, reason: DropReason, rows: usize) {
        self.rows_dropped[reason as usize].fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Releases `rows` from the budget (written or dropped).
    fn release(&self, rows: usize) {
        self.queued_rows.fetch_sub(rows as u64, Ordering::AcqRel);
    }
}

/// A copy of [`StorageStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStatsSnapshot {
    /// Rows committed to the database.
    pub rows_written: u64,
    rows_dropped: [u64; 3],
    write_errors: [u64; 4],
    /// Rows deleted by retention.
    pub retention_deleted: u64,
    /// Rows accepted and not yet written or dropped (a gauge).
    pub queued_rows: u64,
    /// Times the writer reopened the database after it was removed, replaced or failed.
    pub reopens: u64,
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

/// One batch as the pipeline sent it.
enum Batch {
    Packets(Vec<Packet>),
    Windows(Vec<WindowRow>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Packets(p) => p.len(),
            Batch::Windows(w) => w.len(),
        }
    }
}

/// The queue between the senders and the writer.
#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    /// Rows in `batches` (not counting the writer's pending rows).
    rows: usize,
    /// Set once by shutdown; no batch is accepted afterwards.
    closed: bool,
}

/// State shared by the senders, the writer thread and [`Storage`].
struct Shared {
    path: PathBuf,
    max_queued_rows: usize,
    early_flush_rows: usize,
    queue: Mutex<Queue>,
    /// Signalled when the queue passes `early_flush_rows` or closes.
    wake: Condvar,
    stats: Arc<StorageStats>,
    /// The size cap in bytes, `u64::MAX` for none; the writer applies changes before writing.
    max_db_bytes: AtomicU64,
    /// Rate limit of the drop warning, shared by every sender.
    drop_log: RateLimit,
}

impl Shared {
    /// Locks the queue. A panic while holding the lock cannot leave the queue half-updated
    /// (every change is a single push, drain or flag store), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        crate::sync::lock(&self.queue)
    }

    fn max_db_bytes(&self) -> Option<u64> {
        match self.max_db_bytes.load(Ordering::Relaxed) {
            u64::MAX => None,
            b => Some(b),
        }
    }
}

/// The handle on the storage writer thread; dropping it shuts the writer down like
/// [`Storage::shutdown`].
pub struct Storage {
    shared: Arc<Shared>,
    /// The writer thread; taken by shutdown.
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens (or creates and migrates) the database, then starts the writer thread. Opening
    /// first means a bad path fails here, at start-up, before anything is attached.
    pub fn spawn(config: StorageConfig) -> Result<Storage, StoreError> {
        let mut store = Store::open(&config.path)?;
        if config.max_db_bytes.is_some() {
            store.set_max_bytes(config.max_db_bytes)?;
        }
        let stats = Arc::new(StorageStats::default());
        let shared = Arc::new(Shared {
            path: config.path.clone(),
            max_queued_rows: config.max_queued_rows,
            early_flush_rows: (config.max_queued_rows / 2).clamp(1, EARLY_FLUSH_ROWS),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats,
            max_db_bytes: AtomicU64::new(config.max_db_bytes.unwrap_or(u64::MAX)),
            drop_log: RateLimit::new(LOG_PERIOD),
        });
        let now = Instant::now();
        let writer = Writer {
            shared: Arc::clone(&shared),
            applied_max_bytes: Some(config.max_db_bytes),
            store: Some(store),
            retention: config.retention,
            retention_every: config.retention_interval(),
            flush_interval: config.flush_interval,
            drain_timeout: config.drain_timeout,
            pending_packets: Vec::new(),
            pending_windows: Vec::new(),
            failures: 0,
            other_failures: 0,
            retry_at: now,
            next_retention: now,
            retention_running: false,
            last_file_check: now,
            error_log: RateLimit::new(LOG_PERIOD),
        };
        let thread = std::thread::Builder::new()
            .name("ayaflow-storage".into())
            .spawn(move || writer.run())
            .map_err(|source| StoreError::WriterThread {
                path: config.path.clone(),
                source,
            })?;
        Ok(Storage {
            shared,
            thread: Some(thread),
        })
    }

    /// A handle for queueing rows; cheap to clone, usable from any thread or task.
    pub fn sender(&self) -> StorageSender {
        StorageSender {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The live counters, for the metrics module.
    pub fn stats(&self) -> Arc<StorageStats> {
        Arc::clone(&self.shared.stats)
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Changes [`StorageConfig::max_db_bytes`] at run time (config reload); the writer applies
    /// it before its next write.
    pub fn set_max_db_bytes(&self, max_db_bytes: Option<u64>) {
        // u64::MAX bytes is no cap at all, so it can stand for `None`.
        self.shared
            .max_db_bytes
            .store(max_db_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.shared.wake.notify_one();
    }

    /// Closes the queue, writes what is left (within the drain timeout), closes the database,
    /// joins the writer thread and returns the final counters. See the module docs for the order.
    pub fn shutdown(mut self) -> StorageStatsSnapshot {
        self.close_and_join();
        self.shared.stats.snapshot()
    }

    fn close_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if thread.join().is_err() {
            // The panic itself was already printed by the panic hook.
            tracing::error!(
                path = %self.shared.path.display(),
                "the storage writer thread panicked; rows it held are lost"
            );
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

/// Queues rows for the writer. Never blocks; see the module docs for the drop policy.
#[derive(Clone)]
pub struct StorageSender {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StorageSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSender")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl StorageSender {
    /// Queues packet events (raw mode). Returns true if and only if the batch was queued; a
    /// batch that does not fit is dropped whole and counted.
    pub fn send_packets(&self, packets: Vec<Packet>) -> bool {
        self.send(Batch::Packets(packets))
    }

    /// Queues window rows (aggregated mode). Returns true if and only if the batch was queued.
    pub fn send_windows(&self, windows: Vec<WindowRow>) -> bool {
        self.send(Batch::Windows(windows))
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<StorageStats> {
        Arc::clone(&self.shared.stats)
    }

    fn send(&self, batch: Batch) -> bool {
        let n = batch.len();
        if n == 0 {
            return true;
        }
        let shared = &*self.shared;
        let stats = &shared.stats;
        let mut q = shared.lock();
        if q.closed {
            drop(q);
            stats.dropped(DropReason::Shutdown, n);
            if let Some(suppressed) = shared.drop_log.ready() {
                tracing::warn!(
                    rows = n,
                    suppressed,
                    "storage is shut down: dropped a batch sent after shutdown began"
                );
            }
            return false;
        }
        // The budget also counts rows the writer holds for a retry; it only shrinks outside the
        // lock, so a reservation made here can only become more conservative.
        let max = shared.max_queued_rows as u64;
        let reserved =
            stats
                .queued_rows
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(n as u64).filter(|&total| total <= max)
                });
        if let Err(used) = reserved {
            drop(q);
            stats.dropped(DropReason::QueueFull, n);
            if let Some(suppressed) = shared.drop_log.ready() {
                tracing::warn!(
                    rows = n,
                    suppressed,
                    queued = used,
                    dropped_total = stats.rows_dropped[DropReason::QueueFull as usize]
                        .load(Ordering::Relaxed),
                    path = %shared.path.display(),
                    "storage queue full (max_queued_rows = {}): dropped a batch; raise \
                     max_queued_rows, lower the event rate (sampling) or check why the disk \
                     is slow or failing",
                    shared.max_queued_rows
                );
            }
            return false;
        }
        q.rows += n;
        q.batches.push_back(batch);
        let wake = q.rows >= shared.early_flush_rows;
        drop(q);
        if wake {
            shared.wake.notify_one();
        }
        true
    }
}

/// The writer thread's state. Lives on that thread only.
struct Writer {
    shared: Arc<Shared>,
    /// The open database; `None` after an I/O error or a failed reopen, until the next attempt.
    store: Option<Store>,
    /// The cap applied to `store`: `None` when not yet applied to this connection.
    applied_max_bytes: Option<Option<u64>>,
    retention: Option<Duration>,
    retention_every: Option<Duration>,
    flush_interval: Duration,
    drain_timeout: Duration,
    /// Rows taken off the queue and not yet written; still counted in the budget.
    pending_packets: Vec<Packet>,
    pending_windows: Vec<WindowRow>,
    /// Failed operations in a row; drives the backoff. Reset by any success.
    failures: u32,
    /// Failed attempts at the current pending rows with errors of kind `other`.
    other_failures: u32,
    /// No database operation before this instant (backoff).
    retry_at: Instant,
    next_retention: Instant,
    /// True while a retention round still has expired rows to delete.
    retention_running: bool,
    last_file_check: Instant,
    error_log: RateLimit,
}

impl Writer {
    fn run(mut self) {
        let mut next_flush = Instant::now() + self.flush_interval;
        loop {
            let now = Instant::now();
            let (closed, queued) = {
                let q = self.shared.lock();
                (q.closed, q.rows)
            };
            if closed {
                break;
            }
            let backing_off = now < self.retry_at;
            let flush_due = now >= next_flush || queued >= self.shared.early_flush_rows;
            if flush_due && !backing_off {
                next_flush = now + self.flush_interval;
                self.take_queue();
                if self.has_pending() {
                    self.write_pending();
                    continue;
                }
            }
            if self.retention_due(now) && !backing_off {
                self.retention_step();
                continue;
            }
            if now.duration_since(self.last_file_check) >= IDLE_FILE_CHECK && !backing_off {
                self.last_file_check = now;
                self.ensure_store();
            }
            self.sleep(next_flush);
        }
        self.drain();
    }

    /// Waits until the next flush (pushed back by any backoff), the next retention round or the
    /// next idle file check, unless the queue closes or fills up first.
    fn sleep(&self, next_flush: Instant) {
        let mut until = next_flush.max(self.retry_at);
        if let Some(r) = self
            .retention_every
            .map(|_| self.next_retention.max(self.retry_at))
        {
            until = until.min(r);
        }
        until = until.min((self.last_file_check + IDLE_FILE_CHECK).max(self.retry_at));
        let q = self.shared.lock();
        let now = Instant::now();
        if q.closed
            || until <= now
            || (q.rows >= self.shared.early_flush_rows && now >= self.retry_at)
        {
            return;
        }
        // Spurious wake-ups only cost one more pass through the loop.
        let _ = self
            .shared
            .wake
            .wait_timeout(q, until - now)
            .unwrap_or_else(PoisonError::into_inner);
    }

    fn has_pending(&self) -> bool {
        !self.pending_packets.is_empty() || !self.pending_windows.is_empty()
    }

    fn pending_rows(&self) -> usize {
        self.pending_packets.len() + self.pending_windows.len()
    }

    /// Moves every queued batch into the pending buffers (the budget is unchanged).
    fn take_queue(&mut self) {
        let batches = {
            let mut q = self.shared.lock();
            q.rows = 0;
            std::mem::take(&mut q.batches)
        };
        for b in batches {
            match b {
                Batch::Packets(mut p) => self.pending_packets.append(&mut p),
                Batch::Windows(mut w) => self.pending_windows.append(&mut w),
            }
        }
    }

    /// Makes sure `store` is open on the file currently at the path. Returns true if and only if
    /// a store is ready; on failure the error is counted and a backoff set.
    fn ensure_store(&mut self) -> bool {
        if self.store.as_ref().is_some_and(Store::is_replaced) {
            tracing::warn!(
                path = %self.shared.path.display(),
                "the history database was removed or replaced while open; opening the path \
                 again (rows written to the old file stay there)"
            );
            if let Some(mut old) = self.store.take() {
                // Empty our WAL before closing: SQLite does not checkpoint a moved file on close,
                // and would leave the WAL at the path for the file now there to replay as its
                // own (https://www.sqlite.org/howtocorrupt.html#unlink). A removed file needs
                // nothing more: SQLite discards a WAL it finds next to a new, empty database.
                match old.checkpoint() {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        path = %self.shared.path.display(),
                        "could not fully checkpoint the old file's WAL: readers still use it"
                    ),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            self.close_store();
        }
        if self.store.is_none() {
            match Store::open(&self.shared.path) {
                Ok(store) => {
                    self.shared.stats.reopens.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        path = %self.shared.path.display(),
                        "reopened the history database"
                    );
                    self.store = Some(store);
                    self.applied_max_bytes = None;
                }
                Err(e) => {
                    self.failed(&e);
                    return false;
                }
            }
        }
        let want = self.shared.max_db_bytes();
        if self.applied_max_bytes != Some(want) {
            let Some(store) = self.store.as_mut() else {
                return false;
            };
            if let Err(e) = store.set_max_bytes(want) {
                self.failed(&e);
                return false;
            }
            self.applied_max_bytes = Some(want);
        }
        true
    }

    fn close_store(&mut self) {
        self.store = None;
        self.applied_max_bytes = None;
    }

    /// Writes pending rows in transactions of at most `MAX_ROWS_PER_TRANSACTION`, stopping at
    /// the first failure (which sets the backoff).
    fn write_pending(&mut self) {
        self.last_file_check = Instant::now();
        if !self.ensure_store() {
            self.give_up_on_other_errors();
            return;
        }
        while self.has_pending() {
            let np = self.pending_packets.len().min(MAX_ROWS_PER_TRANSACTION);
            let nw = self
                .pending_windows
                .len()
                .min(MAX_ROWS_PER_TRANSACTION - np);
            let Some(store) = self.store.as_mut() else {
                return;
            };
            match store.insert_batch(&self.pending_packets[..np], &self.pending_windows[..nw]) {
                Ok(()) => {
                    self.pending_packets.drain(..np);
                    self.pending_windows.drain(..nw);
                    let stats = &self.shared.stats;
                    stats
                        .rows_written
                        .fetch_add((np + nw) as u64, Ordering::Relaxed);
                    stats.release(np + nw);
                    self.succeeded();
                }
                Err(e) => {
                    self.failed(&e);
                    self.give_up_on_other_errors();
                    return;
                }
            }
        }
    }

    /// Drops the pending rows once errors that do not clear by themselves have been retried
    /// `MAX_OTHER_ATTEMPTS` times, so a poisoned batch cannot block the writer for ever.
    fn give_up_on_other_errors(&mut self) {
        if self.other_failures < MAX_OTHER_ATTEMPTS {
            return;
        }
        let n = self.pending_rows();
        self.pending_packets.clear();
        self.pending_windows.clear();
        self.other_failures = 0;
        let stats = &self.shared.stats;
        stats.dropped(DropReason::WriteError, n);
        stats.release(n);
        tracing::error!(
            rows = n,
            path = %self.shared.path.display(),
            "dropped rows that failed to write {MAX_OTHER_ATTEMPTS} times; see the errors above"
        );
    }

    fn retention_due(&self, now: Instant) -> bool {
        self.retention.is_some() && (self.retention_running || now >= self.next_retention)
    }

    /// Deletes one batch of expired rows.
    fn retention_step(&mut self) {
        let (Some(retention), Some(every)) = (self.retention, self.retention_every) else {
            return;
        };
        let now = Instant::now();
        self.retention_running = false;
        self.next_retention = now + every;
        if !self.ensure_store() {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let cutoff =
            unix_now_ns().saturating_sub(u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX));
        match store.delete_older_than(cutoff, RETENTION_BATCH_ROWS) {
            Ok(n) => {
                self.shared
                    .stats
                    .retention_deleted
                    .fetch_add(n as u64, Ordering::Relaxed);
                // A full batch (or more: blocks go whole) means more may be expired: continue
                // after any due write.
                self.retention_running = n >= RETENTION_BATCH_ROWS;
                self.succeeded();
            }
            Err(e) => self.failed(&e),
        }
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                path = %self.shared.path.display(),
                failed_attempts = self.failures,
                "the history database works again"
            );
        }
        self.failures = 0;
        self.other_failures = 0;
        self.retry_at = Instant::now();
    }

    /// Counts and logs a failed operation, and schedules the retry.
    fn failed(&mut self, e: &StoreError) {
        let kind = e.kind();
        self.shared.stats.write_errors[kind.index()].fetch_add(1, Ordering::Relaxed);
        self.failures = self.failures.saturating_add(1);
        if kind == ErrorKind::Other {
            self.other_failures += 1;
        }
        if kind == ErrorKind::Io {
            // The connection may be on a dead file or in a bad state: start over.
            self.close_store();
        }
        let backoff = MIN_BACKOFF
            .saturating_mul(1 << self.failures.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        self.retry_at = Instant::now() + backoff;
        if let Some(suppressed) = self.error_log.ready() {
            tracing::warn!(
                kind = kind.label(),
                pending_rows = self.pending_rows(),
                failed_attempts = self.failures,
                suppressed,
                retry_in = ?backoff,
                "history write failed: {e}"
            );
        }
    }

    /// Shutdown: write whatever is left until the deadline, count the rest, close the file.
    fn drain(&mut self) {
        let deadline = Instant::now() + self.drain_timeout;
        self.take_queue();
        while self.has_pending() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.retry_at > now {
                std::thread::sleep(self.retry_at.min(deadline) - now);
                continue;
            }
            self.write_pending();
        }
        let left = self.pending_rows();
        if left > 0 {
            self.shared.stats.dropped(DropReason::Shutdown, left);
            self.shared.stats.release(left);
            tracing::error!(
                rows = left,
                path = %self.shared.path.display(),
                "shutdown: could not write these rows within {:?}; they are lost",
                self.drain_timeout
            );
        }
        self.close_store();
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::flow::{Direction, FiveTuple, Protocol};

    #[test]
    fn a_queued_row_takes_what_the_budget_says() {
        // DEFAULT_MAX_QUEUED_ROWS's memory figure, and the k8s limit built on it.
        assert_eq!(size_of::<Packet>(), 72);
        assert_eq!(DEFAULT_MAX_QUEUED_ROWS * size_of::<Packet>(), 36 << 20);
    }

    fn packets(n: usize) -> Vec<Packet> {
        (0..n)
            .map(|i| Packet {
                tuple: FiveTuple {
                    proto: Protocol::Udp,
                    src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                    src_port: 53,
                    dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
                    dst_port: 5353,
                },
                direction: Direction::Ingress,
                ts_unix_ns: unix_now_ns() + i as u64,
                packets: 1,
                bytes: 80,
                tcp_flags: 0,
                icmp_type: 0,
                icmp_code: 0,
                flags: 0,
                vlan_id: 0,
            })
            .collect()
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn retention_interval_is_a_tenth_clamped() {
        let mut c = StorageConfig::new("/x.db");
        assert_eq!(c.retention_interval(), None);
        c.retention = Some(Duration::from_secs(5));
        assert_eq!(c.retention_interval(), Some(Duration::from_secs(1)));
        c.retention = Some(Duration::from_secs(300));
        assert_eq!(c.retention_interval(), Some(Duration::from_secs(30)));
        c.retention = Some(Duration::from_secs(86_400));
        assert_eq!(c.retention_interval(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn drop_reasons_are_labelled_in_counter_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, ["queue_full", "write_error", "shutdown"]);
    }

    #[test]
    fn writes_within_the_flush_interval_and_counts_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = Storage::spawn(StorageConfig::new(dir.path().join("h.db"))).expect("spawn");
        let tx = storage.sender();
        assert!(tx.send_packets(packets(10)));
        assert!(
            tx.send_packets(Vec::new()),
            "an empty batch is trivially accepted"
        );
        let stats = storage.stats();
        wait_for("10 rows written", || stats.snapshot().rows_written == 10);
        assert_eq!(stats.snapshot().queued_rows, 0);
        let end = storage.shutdown();
        assert_eq!(end.rows_written, 10);
        assert_eq!(end.rows_dropped_total(), 0);
    }

    #[test]
    fn sends_after_shutdown_are_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = Storage::spawn(StorageConfig::new(dir.path().join("h.db"))).expect("spawn");
        let tx = storage.sender();
        let stats = storage.stats();
        storage.shutdown();
        assert!(!tx.send_packets(packets(3)));
        let s = stats.snapshot();
        assert_eq!(s.rows_dropped(DropReason::Shutdown), 3);
        assert_eq!(s.queued_rows, 0);
    }

    #[test]
    fn a_bad_path_fails_at_spawn() {
        let err = Storage::spawn(StorageConfig::new("/nonexistent-ayaflow-dir/h.db"))
            .expect_err("missing directory");
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(
            err.to_string().contains("/nonexistent-ayaflow-dir/h.db"),
            "{err}"
        );
    }
}
