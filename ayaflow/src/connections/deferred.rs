//! Capture never waits for a shard that someone else holds: it leaves the update in the
//! shard's inbox, and whoever locks the shard next applies the inbox before anything else.
//!
//! A reader's pass over a shard (expiry, the ranking's copy) takes tens of microseconds, but on
//! a small, shared machine the thread doing it can be preempted while it holds the lock, and
//! capture then waited for the whole time slice: milliseconds (issue 18's bench measured 5.3 ms
//! where at most 1 ms was the goal). With an inbox, capture only ever holds the inbox's own
//! lock, for one push.
//!
//! The rules that keep every update, in order, and visible to every reader:
//! - Whoever locks a shard applies its inbox first (capture before its own update, a reader or
//!   expiry before it looks), so nobody ever sees a shard without what capture left for it, and
//!   the updates of one connection are applied in the order capture saw them.
//! - An update goes to the inbox only when the shard's lock is taken, or when the inbox already
//!   holds updates (it would otherwise overtake them); capture then tries the lock once more, so
//!   an inbox left just as its shard came free is applied at once.
//! - Whatever stays in an inbox is applied at the latest by expiry's next pass, which locks
//!   every shard each tick. Unlocking costs nothing extra: no fence, no second look.
//! - The inboxes are bounded together ([`MAX_DEFERRED`]): past that, capture waits for the
//!   lock as before (timed in [`super::LockWaits`]).

use std::sync::{
    Mutex, MutexGuard, PoisonError, TryLockError,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use super::*;

/// Updates the inboxes may hold together: about 6 MiB of them (96 bytes each). Reached only if
/// a holder is kept off the CPU while capture runs at hundreds of thousands of packets a second.
pub(super) const MAX_DEFERRED: usize = 65_536;

/// One shard: its connections behind a lock, and the inbox of updates capture left there while
/// the lock was taken.
#[derive(Debug)]
pub(super) struct ShardCell {
    shard: Mutex<Shard>,
    inbox: Mutex<Vec<Deferred>>,
    /// Set after an update is put in the inbox; cleared by whoever empties it.
    waiting: AtomicBool,
}

/// One packet's or delta's update of its connection, as capture hands it on (to the shard at
/// once, or to its inbox).
#[derive(Clone, Copy, Debug)]
pub(super) struct Deferred {
    pub(super) key: FiveTuple,
    pub(super) along_key: bool,
    pub(super) update: Update,
}

impl ShardCell {
    pub(super) fn new() -> ShardCell {
        ShardCell {
            shard: Mutex::new(Shard::new()),
            inbox: Mutex::new(Vec::new()),
            waiting: AtomicBool::new(false),
        }
    }
}

/// How many updates went through the inboxes, and how many are in them now.
#[derive(Debug, Default)]
pub(super) struct DeferredCounts {
    pub(super) now: AtomicUsize,
    pub(super) total: AtomicU64,
    /// Times capture found the inboxes full and went to wait for a lock (counted before the
    /// wait; the wait itself is in [`super::LockWaits`]).
    pub(super) full: AtomicU64,
}

/// A locked shard, its inbox applied.
pub(super) type ShardGuard<'a> = MutexGuard<'a, Shard>;

impl ConnectionTable {
    /// Locks `cell`, waiting if need be (readers and expiry), and applies its inbox.
    pub(super) fn lock_shard<'a>(&'a self, cell: &'a ShardCell) -> ShardGuard<'a> {
        self.holding(cell, lock(&cell.shard))
    }

    /// Locks `cell` if it is free, applying its inbox; `None` if someone holds it.
    fn try_lock_shard<'a>(&'a self, cell: &'a ShardCell) -> Option<ShardGuard<'a>> {
        match cell.shard.try_lock() {
            Ok(g) => Some(self.holding(cell, g)),
            Err(TryLockError::Poisoned(p)) => Some(self.holding(cell, p.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Applies what capture left in the inbox of `cell` to its shard, just locked (`g`).
    fn holding<'a>(&'a self, cell: &'a ShardCell, mut g: ShardGuard<'a>) -> ShardGuard<'a> {
        // A plain load first: capture takes a shard for nearly every packet, and the inbox is
        // almost always empty.
        if cell.waiting.load(Ordering::Acquire) && cell.waiting.swap(false, Ordering::AcqRel) {
            let taken =
                std::mem::take(&mut *cell.inbox.lock().unwrap_or_else(PoisonError::into_inner));
            self.deferred.now.fetch_sub(taken.len(), Ordering::Relaxed);
            for d in &taken {
                self.apply(&mut g, d);
            }
        }
        g
    }

    /// Capture's update `d` of shard `i`: applied at once if the shard is free (and the shard
    /// returned, still locked, for the next update), otherwise left in its inbox (`None`),
    /// unless the inboxes are full, in which case this waits for the lock.
    pub(super) fn capture<'a>(&'a self, i: usize, d: &Deferred) -> Option<ShardGuard<'a>> {
        let cell = &self.shards[i];
        let mut shard = self.shard_for_capture(cell, d)?;
        self.apply(&mut shard, d);
        Some(shard)
    }

    /// The shard of `cell` locked for capture's update `d`, or `None` once `d` is in the inbox.
    fn shard_for_capture<'a>(
        &'a self,
        cell: &'a ShardCell,
        d: &Deferred,
    ) -> Option<ShardGuard<'a>> {
        if !cell.waiting.load(Ordering::Acquire)
            && let Some(g) = self.try_lock_shard(cell)
        {
            return Some(g);
        }
        // Counted before it is in the inbox, so that the holder's count of what it took never
        // runs ahead of this one.
        if self
            .deferred
            .now
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_DEFERRED).then_some(n + 1)
            })
            .is_err()
        {
            self.deferred.full.fetch_add(1, Ordering::Relaxed);
            return Some(self.holding(cell, self.lock_waits.lock(&cell.shard)));
        }
        self.deferred.total.fetch_add(1, Ordering::Relaxed);
        cell.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(*d);
        cell.waiting.store(true, Ordering::Release);
        // The holder may have let go meanwhile: apply the inbox now rather than at the next
        // lock of this shard.
        drop(self.try_lock_shard(cell));
        None
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use super::*;
    use crate::{
        connections::tests::{TIMEOUT, packet, tuple},
        flow::TCP_ACK,
    };

    /// Not a speed measurement: a generous bound so that a regression fails instead of hanging.
    const HANG: Duration = Duration::from_secs(60);

    fn held_and_other(t: &ConnectionTable) -> (usize, FiveTuple) {
        let c = tuple(Protocol::Tcp, (1, 40_000), (2, 443));
        (t.shard_of(&canonical(&c).0), c)
    }

    #[test]
    fn capture_leaves_updates_for_the_holder_of_a_shard_who_applies_them_in_order() {
        let t = std::sync::Arc::new(ConnectionTable::new(1 << 16, TIMEOUT));
        let (i, c) = held_and_other(&t);
        let other = (1..=u16::MAX)
            .map(|port| tuple(Protocol::Udp, (1, port), (2, 53)))
            .find(|t5| t.shard_of(&canonical(t5).0) == i)
            .expect("some port hashes to the same shard");
        let held = t.lock_shard(&t.shards[i]);
        let (done_tx, done_rx) = mpsc::channel();
        // Not scoped: if capture waits for the shard held here, the test fails rather than
        // waiting for it.
        let writer = {
            let t = t.clone();
            std::thread::spawn(move || {
                t.record_batch(&[
                    packet(c, Direction::Egress, 1, 60, TCP_SYN),
                    packet(other, Direction::Ingress, 2, 100, 0),
                    packet(c.reversed(), Direction::Ingress, 3, 60, TCP_SYN | TCP_ACK),
                ]);
                t.record_delta(c, Direction::Egress, 2, 1000, 4, 5, TCP_ACK);
                // The connection's last packet resets it: applied out of order, the reset
                // would come before the rest and the connection would look open.
                t.record(&packet(c.reversed(), Direction::Ingress, 6, 40, TCP_RST));
                done_tx.send(()).expect("the test waits for this");
            })
        };
        done_rx
            .recv_timeout(HANG)
            .expect("capture went on while the shard was held");
        writer.join().expect("the writer did not panic");
        assert_eq!(t.lock_waits().deferred, 5);
        assert_eq!(t.lock_waits().buckets, LockWaitStats::default().buckets);
        assert_eq!(held.len(), 0, "nothing applied while held");
        assert_eq!(t.deferred.now.load(Ordering::Relaxed), 5);
        drop(held);
        // Unlocking applies nothing; the next lock of the shard (here a reader's) does, first.
        assert_eq!(t.deferred.now.load(Ordering::Relaxed), 5);
        assert_eq!(t.get(&c), None, "closed by the reset, applied last");
        assert_eq!(t.deferred.now.load(Ordering::Relaxed), 0);
        assert_eq!(t.stats().closed_total, 1);
        let o = t.get(&other).expect("the other connection was applied");
        assert_eq!((o.packets, o.bytes, o.ingress_packets), (1, 100, 1));
        let shard = t.lock_shard(&t.shards[i]);
        let e = shard.get(&canonical(&c).0).expect("closed, still held");
        assert_eq!(e.snapshot(&canonical(&c).0).packets, 5);
        assert_eq!(e.snapshot(&canonical(&c).0).bytes, 1160);
    }

    #[test]
    fn capture_applies_directly_once_the_holder_is_gone_and_waits_only_when_inboxes_are_full() {
        let t = std::sync::Arc::new(ConnectionTable::new(1 << 16, TIMEOUT));
        let (i, c) = held_and_other(&t);
        let held = t.lock_shard(&t.shards[i]);
        let (done_tx, done_rx) = mpsc::channel();
        let writer = {
            let t = t.clone();
            std::thread::spawn(move || {
                let p = packet(c, Direction::Egress, 1, 60, 0);
                for _ in 0..MAX_DEFERRED {
                    t.record(&p);
                }
                done_tx.send(()).expect("the test waits for this");
                // One more than the inboxes hold: waits for the lock.
                t.record(&p);
            })
        };
        done_rx
            .recv_timeout(HANG)
            .expect("capture filled the inboxes without waiting");
        // The writer goes to wait for the shard held here.
        let start = std::time::Instant::now();
        while t.deferred.full.load(Ordering::Relaxed) == 0 {
            assert!(
                start.elapsed() < HANG,
                "the writer never found the inboxes full"
            );
            std::thread::yield_now();
        }
        let waits = |t: &ConnectionTable| t.lock_waits().buckets.iter().sum::<u64>();
        assert_eq!(waits(&t), 0);
        drop(held);
        writer.join().expect("the writer did not panic");
        assert_eq!(waits(&t), 1, "one wait: inboxes full");
        assert_eq!(t.lock_waits().deferred, MAX_DEFERRED as u64);
        assert_eq!(t.deferred.now.load(Ordering::Relaxed), 0);
        let e = t.get(&c).expect("every update applied");
        assert_eq!(e.packets, MAX_DEFERRED as u64 + 1);

        // A free shard with an empty inbox: applied at once, nothing deferred.
        t.record(&packet(c, Direction::Egress, 2, 60, 0));
        assert_eq!(t.lock_waits().deferred, MAX_DEFERRED as u64);
        assert_eq!(t.get(&c).map(|e| e.packets), Some(MAX_DEFERRED as u64 + 2));
    }
}
