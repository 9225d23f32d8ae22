//! The bounded queue between the pipeline and the writer thread: [`Storage`] (the owner) and
//! [`StorageSender`] (the pipeline's side, which never blocks).

use super::*;

/// Rows per chunk of [`StorageSender::send_windows_within`]: one insert transaction's worth.
pub const WINDOW_CHUNK_ROWS: usize = MAX_ROWS_PER_TRANSACTION;

/// How often a chunk waiting for room tries again.
const WINDOW_ROOM_POLL: Duration = Duration::from_millis(20);

/// One batch as the pipeline sent it.
pub(super) enum Batch {
    Packets(Vec<Packet>),
    Windows(Vec<WindowRow>),
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        match self {
            Batch::Packets(p) => p.len(),
            Batch::Windows(w) => w.len(),
        }
    }
}

/// The queue between the senders and the writer.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) batches: VecDeque<Batch>,
    /// Rows in `batches` (not counting the writer's pending rows).
    pub(super) rows: usize,
    /// Set once by shutdown; no batch is accepted afterwards.
    pub(super) closed: bool,
}

/// State shared by the senders, the writer thread and [`Storage`].
pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) max_queued_rows: usize,
    pub(super) early_flush_rows: usize,
    pub(super) queue: Mutex<Queue>,
    /// Signalled when the queue passes `early_flush_rows` or closes.
    pub(super) wake: Condvar,
    pub(super) stats: Arc<StorageStats>,
    /// The disk budget in bytes, `u64::MAX` for none; the writer applies changes before writing.
    pub(super) max_db_bytes: AtomicU64,
    /// A simulated disk size in bytes (tests), `u64::MAX` for none.
    pub(super) disk_limit: AtomicU64,
    /// Rate limit of the drop warning, shared by every sender.
    pub(super) drop_log: RateLimit,
}

impl Shared {
    /// Locks the queue. A panic while holding the lock cannot leave the queue half-updated
    /// (every change is a single push, drain or flag store), so a poisoned lock is still usable.
    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        crate::sync::lock(&self.queue)
    }

    pub(super) fn max_db_bytes(&self) -> Option<u64> {
        match self.max_db_bytes.load(Ordering::Relaxed) {
            u64::MAX => None,
            b => Some(b),
        }
    }

    pub(super) fn disk_limit(&self) -> Option<u64> {
        match self.disk_limit.load(Ordering::Relaxed) {
            u64::MAX => None,
            b => Some(b),
        }
    }
}

/// The handle on the storage writer thread; dropping it shuts the writer down like
/// [`Storage::shutdown`].
pub struct Storage {
    pub(super) shared: Arc<Shared>,
    /// The writer thread; taken by shutdown.
    pub(super) thread: Option<JoinHandle<()>>,
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
        let limits = Limits {
            budget: config.max_db_bytes,
            disk: None,
        };
        Writer::apply_limits(&mut store, limits)?;
        let stats = Arc::new(StorageStats::default());
        let shared = Arc::new(Shared {
            path: config.path.clone(),
            max_queued_rows: config.max_queued_rows,
            early_flush_rows: (config.max_queued_rows / 2).clamp(1, EARLY_FLUSH_ROWS),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats,
            max_db_bytes: AtomicU64::new(config.max_db_bytes.unwrap_or(u64::MAX)),
            disk_limit: AtomicU64::new(u64::MAX),
            drop_log: RateLimit::new(LOG_PERIOD),
        });
        let now = Instant::now();
        let writer = Writer {
            shared: Arc::clone(&shared),
            applied_limits: Some(limits),
            row_bytes: FIRST_ROW_BYTES,
            budget_log: RateLimit::new(LOG_PERIOD),
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
            undecodable_counted: 0,
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

    /// Makes the file behave as on a disk with this many bytes (`None`: the real disk): writes
    /// that would grow it past them fail as `full`, and nothing is deleted to make room. For
    /// tests of a full disk, which needs no root and no real filesystem.
    #[doc(hidden)]
    pub fn simulate_disk_size(&self, bytes: Option<u64>) {
        self.shared
            .disk_limit
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.shared.wake.notify_one();
    }

    /// Closes the queue, writes what is left (within the drain timeout), closes the database,
    /// joins the writer thread and returns the final counters. See the module docs for the order.
    pub fn shutdown(mut self) -> StorageStatsSnapshot {
        self.close_and_join();
        self.shared.stats.snapshot()
    }

    pub(super) fn close_and_join(&mut self) {
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
    pub(super) shared: Arc<Shared>,
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

    /// The live counters.
    pub fn stats(&self) -> Arc<StorageStats> {
        Arc::clone(&self.shared.stats)
    }

    pub(super) fn send(&self, batch: Batch) -> bool {
        let n = batch.len();
        match self.try_queue(batch) {
            Ok(()) => true,
            Err(Refused::Closed) => {
                self.dropped_at_shutdown(n);
                false
            }
            Err(Refused::Full(_, used)) => {
                self.dropped_queue_full(n, used, "dropped a batch");
                false
            }
        }
    }

    /// Queues the rows of closed windows in chunks of [`WINDOW_CHUNK_ROWS`], which the writer
    /// drains as they come, so a window larger than the whole budget is still stored. A chunk
    /// that finds the budget full waits for room, until `wait` has passed since the call; what
    /// is left then is dropped, counted (`queue_full`) and logged with its window. Returns the
    /// rows dropped. If the future is dropped before it finishes (a shutdown step abandoned),
    /// the rows not yet queued are counted as dropped (`shutdown`).
    pub async fn send_windows_within(&self, rows: Vec<WindowRow>, wait: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + wait;
        let mut unsent = Unsent {
            sender: self,
            rows: rows.len(),
        };
        for chunk in rows.chunks(WINDOW_CHUNK_ROWS) {
            let mut batch = Batch::Windows(chunk.to_vec());
            loop {
                match self.try_queue(batch) {
                    Ok(()) => break,
                    // `unsent` counts the rest as dropped at shutdown.
                    Err(Refused::Closed) => return unsent.rows,
                    Err(Refused::Full(back, used)) => {
                        let now = tokio::time::Instant::now();
                        if now >= deadline {
                            let left = std::mem::take(&mut unsent.rows);
                            let what = format!(
                                "dropped {left} of the {} rows of the windows from {} (Unix \
                                 seconds) after waiting {wait:?} for room",
                                rows.len(),
                                chunk[0].window_start_unix
                            );
                            self.dropped_queue_full(left, used, &what);
                            return left;
                        }
                        batch = back;
                        // The writer frees room a transaction (up to 50,000 rows) at a time.
                        tokio::time::sleep(WINDOW_ROOM_POLL.min(deadline - now)).await;
                    }
                }
            }
            unsent.rows -= chunk.len();
        }
        0
    }

    /// Queues `batch` if the queue is open and the budget has room; otherwise hands it back.
    fn try_queue(&self, batch: Batch) -> Result<(), Refused> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        let shared = &*self.shared;
        let mut q = shared.lock();
        if q.closed {
            return Err(Refused::Closed);
        }
        // The budget also counts rows the writer holds for a retry; it only shrinks outside the
        // lock, so a reservation made here can only become more conservative.
        let max = shared.max_queued_rows as u64;
        let reserved =
            shared
                .stats
                .queued_rows
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(n as u64).filter(|&total| total <= max)
                });
        if let Err(used) = reserved {
            return Err(Refused::Full(batch, used));
        }
        q.rows += n;
        q.batches.push_back(batch);
        let wake = q.rows >= shared.early_flush_rows;
        drop(q);
        if wake {
            shared.wake.notify_one();
        }
        Ok(())
    }

    fn dropped_at_shutdown(&self, n: usize) {
        let shared = &*self.shared;
        shared.stats.dropped(DropReason::Shutdown, n);
        if let Some(suppressed) = shared.drop_log.ready() {
            tracing::warn!(
                rows = n,
                suppressed,
                "storage is shut down: dropped rows sent after shutdown began"
            );
        }
    }

    fn dropped_queue_full(&self, n: usize, queued: u64, what: &str) {
        let shared = &*self.shared;
        let stats = &shared.stats;
        stats.dropped(DropReason::QueueFull, n);
        if let Some(suppressed) = shared.drop_log.ready() {
            tracing::warn!(
                rows = n,
                suppressed,
                queued,
                dropped_total =
                    stats.rows_dropped[DropReason::QueueFull as usize].load(Ordering::Relaxed),
                path = %shared.path.display(),
                "storage queue full (max_queued_rows = {}): {what}; raise max_queued_rows, lower \
                 the event rate (sampling) or check why the disk is slow or failing",
                shared.max_queued_rows
            );
        }
    }
}

/// Rows [`StorageSender::send_windows_within`] has not queued yet: counted as dropped at
/// shutdown if it stops before they are.
struct Unsent<'a> {
    sender: &'a StorageSender,
    rows: usize,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.rows > 0 {
            self.sender.dropped_at_shutdown(self.rows);
        }
    }
}

/// Why [`StorageSender::try_queue`] handed a batch back.
enum Refused {
    /// Shutdown began: the batch is dropped (counted by the caller).
    Closed,
    /// The budget had no room; the rows it already held.
    Full(Batch, u64),
}
