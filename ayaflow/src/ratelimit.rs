//! The agent's one rate limiter for log lines: at most one line per period, from any number of
//! threads, without a lock, counting the lines it held back so the next one can say how many.
//!
//! A leaf module: every layer that logs a repeated event (a dropped batch, a failed write, an
//! unreachable collector) uses it the same way.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// One line per period.
#[derive(Debug)]
pub struct RateLimit {
    epoch: Instant,
    period_ms: u64,
    /// Milliseconds since `epoch` of the last line, plus one (0: never logged).
    last_ms: AtomicU64,
    /// Lines held back since the last one.
    suppressed: AtomicU64,
}

impl RateLimit {
    pub fn new(period: Duration) -> RateLimit {
        RateLimit {
            epoch: Instant::now(),
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` if the caller may log now; `None` (and the
    /// line counted as held back) otherwise. One caller wins per period.
    pub fn ready(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.period_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_through_per_period_and_the_count_of_the_others() {
        let l = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(l.ready(), Some(0));
        assert_eq!(l.ready(), None);
        assert_eq!(l.ready(), None);
        // The period has passed (as if the last line were two hours old).
        l.last_ms.store(1, Ordering::Relaxed);
        let l = RateLimit {
            epoch: Instant::now() - Duration::from_secs(7200),
            ..l
        };
        assert_eq!(l.ready(), Some(2), "reports what it held back");
        assert_eq!(l.ready(), None);
    }

    #[test]
    fn many_threads_one_winner() {
        let l = std::sync::Arc::new(RateLimit::new(Duration::from_secs(3600)));
        let wins: usize = (0..8)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..100).filter(|_| l.ready().is_some()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(wins, 1);
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 799);
    }
}
