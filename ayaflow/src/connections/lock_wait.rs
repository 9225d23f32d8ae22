//! How long the capture path waited for a shard's lock: a histogram for `/metrics` and the
//! bench (issue 18's target: at most 1 ms).
//!
//! Only waits are timed: the capture path first tries the lock, and reads the clock only when
//! someone else holds it (expiry, the ranking's copy, the other capture task in flow mode), so
//! the common case costs no clock read.

use std::{
    sync::{
        Mutex, MutexGuard, PoisonError, TryLockError,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// The upper bounds of the histogram's buckets, in microseconds; a last bucket takes the rest.
pub const LOCK_WAIT_BOUNDS_US: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

/// Waits of the capture path for a shard lock, by duration. Counts only contended locks.
#[derive(Debug, Default)]
pub struct LockWaits {
    /// Waits per bucket of [`LOCK_WAIT_BOUNDS_US`], the last one for longer waits.
    buckets: [AtomicU64; LOCK_WAIT_BOUNDS_US.len() + 1],
    /// The longest wait so far, nanoseconds.
    max_ns: AtomicU64,
}

/// A reading of [`LockWaits`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockWaitStats {
    /// Waits per bucket of [`LOCK_WAIT_BOUNDS_US`] (not cumulative), the last one for longer.
    pub buckets: [u64; LOCK_WAIT_BOUNDS_US.len() + 1],
    /// The longest wait so far, nanoseconds.
    pub max_ns: u64,
    /// Updates capture left in a shard's inbox rather than wait for its lock (filled in by the
    /// table, see `deferred`).
    pub deferred: u64,
}

impl LockWaits {
    /// Locks `m` for the capture path, timing the wait if the lock is taken. Recovers from
    /// poisoning like [`crate::sync::lock`].
    pub fn lock<'a, T>(&self, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
        match m.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let start = Instant::now();
                let g = m.lock().unwrap_or_else(PoisonError::into_inner);
                self.record(start.elapsed().as_nanos() as u64);
                g
            }
        }
    }

    fn record(&self, ns: u64) {
        let i = LOCK_WAIT_BOUNDS_US
            .iter()
            .position(|&us| ns <= us * 1000)
            .unwrap_or(LOCK_WAIT_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn stats(&self) -> LockWaitStats {
        LockWaitStats {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            max_ns: self.max_ns.load(Ordering::Relaxed),
            deferred: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncontended_lock_counts_nothing() {
        let w = LockWaits::default();
        let m = Mutex::new(0);
        *w.lock(&m) += 1;
        assert_eq!(w.stats(), LockWaitStats::default());
    }

    #[test]
    fn a_wait_is_counted_in_its_bucket() {
        let w = LockWaits::default();
        w.record(1_000);
        w.record(1_500_000);
        w.record(5_000_000_000);
        let s = w.stats();
        assert_eq!(s.buckets, [1, 0, 0, 0, 1, 0, 1], "1 us, 1.5 ms, 5 s");
        assert_eq!(s.max_ns, 5_000_000_000);
    }
}
