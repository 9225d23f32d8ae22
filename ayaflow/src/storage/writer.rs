//! The writer thread: drains the queue into transactions, runs retention, retries through
//! faults, and drains everything at shutdown.

use super::*;

/// The writer thread's state. Lives on that thread only.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    /// The open database; `None` after an I/O error or a failed reopen, until the next attempt.
    pub(super) store: Option<Store>,
    /// The limits applied to `store`: `None` when not yet applied to this connection.
    pub(super) applied_limits: Option<Limits>,
    /// Bytes a row is expected to take in the file (see `budget.rs`).
    pub(super) row_bytes: u64,
    /// Rate limit of the line saying the budget deleted rows.
    pub(super) budget_log: RateLimit,
    pub(super) retention: Option<Duration>,
    pub(super) retention_every: Option<Duration>,
    pub(super) flush_interval: Duration,
    pub(super) drain_timeout: Duration,
    /// Rows taken off the queue and not yet written; still counted in the budget.
    pub(super) pending_packets: Vec<Packet>,
    pub(super) pending_windows: Vec<WindowRow>,
    /// Failed operations in a row; drives the backoff. Reset by any success.
    pub(super) failures: u32,
    /// Failed attempts at the current pending rows with errors of kind `other`.
    pub(super) other_failures: u32,
    /// No database operation before this instant (backoff).
    pub(super) retry_at: Instant,
    pub(super) next_retention: Instant,
    /// True while a retention round still has expired rows to delete.
    pub(super) retention_running: bool,
    pub(super) last_file_check: Instant,
    pub(super) error_log: RateLimit,
    /// `store.undecodable_blocks()` already added to the stats (per connection: reset on close).
    pub(super) undecodable_counted: u64,
}

impl Writer {
    pub(super) fn run(mut self) {
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
    pub(super) fn sleep(&self, next_flush: Instant) {
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

    pub(super) fn has_pending(&self) -> bool {
        !self.pending_packets.is_empty() || !self.pending_windows.is_empty()
    }

    pub(super) fn pending_rows(&self) -> usize {
        self.pending_packets.len() + self.pending_windows.len()
    }

    /// Moves every queued batch into the pending buffers (the budget is unchanged).
    pub(super) fn take_queue(&mut self) {
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
    pub(super) fn ensure_store(&mut self) -> bool {
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
                    self.applied_limits = None;
                }
                Err(e) => {
                    self.failed(&e);
                    return false;
                }
            }
        }
        let want = self.wanted_limits();
        if self.applied_limits != Some(want) {
            let Some(store) = self.store.as_mut() else {
                return false;
            };
            if let Err(e) = Writer::apply_limits(store, want) {
                self.failed(&e);
                return false;
            }
            self.applied_limits = Some(want);
        }
        true
    }

    pub(super) fn close_store(&mut self) {
        self.store = None;
        self.undecodable_counted = 0;
        self.applied_limits = None;
    }

    /// Writes pending rows in transactions of at most `MAX_ROWS_PER_TRANSACTION`, stopping at
    /// the first failure (which sets the backoff).
    pub(super) fn write_pending(&mut self) {
        self.last_file_check = Instant::now();
        if !self.ensure_store() {
            self.give_up_on_other_errors();
            return;
        }
        let mut budget_tries = 0;
        while self.has_pending() {
            let max_rows = self.rows_per_transaction();
            let np = self.pending_packets.len().min(max_rows);
            let nw = self.pending_windows.len().min(max_rows - np);
            let Some(used_before) = self.make_room(np + nw) else {
                return;
            };
            let Some(store) = self.store.as_mut() else {
                return;
            };
            match store.insert_batch(&self.pending_packets[..np], &self.pending_windows[..nw]) {
                Ok(()) => {
                    budget_tries = 0;
                    self.learn_row_bytes(used_before, np + nw);
                    let Some(store) = self.store.as_mut() else {
                        return;
                    };
                    let undecodable = store.undecodable_blocks();
                    self.shared
                        .stats
                        .undecodable_blocks
                        .fetch_add(undecodable - self.undecodable_counted, Ordering::Relaxed);
                    self.undecodable_counted = undecodable;
                    self.pending_packets.drain(..np);
                    self.pending_windows.drain(..nw);
                    let stats = &self.shared.stats;
                    stats
                        .rows_written
                        .fetch_add((np + nw) as u64, Ordering::Relaxed);
                    stats.release(np + nw);
                    self.succeeded();
                }
                Err(e)
                    if e.kind() == ErrorKind::Full && self.full_because_of_budget(budget_tries) =>
                {
                    // Not the disk: the estimate of a row's bytes was low. Make more room now.
                    budget_tries += 1;
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
    pub(super) fn give_up_on_other_errors(&mut self) {
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

    pub(super) fn retention_due(&self, now: Instant) -> bool {
        self.retention.is_some() && (self.retention_running || now >= self.next_retention)
    }

    /// Deletes one batch of expired rows.
    pub(super) fn retention_step(&mut self) {
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

    pub(super) fn succeeded(&mut self) {
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
    pub(super) fn failed(&mut self, e: &StoreError) {
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
    pub(super) fn drain(&mut self) {
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
