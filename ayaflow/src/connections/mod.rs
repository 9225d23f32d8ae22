//! The bounded live connection table: what `/api/live`, the WebSocket stream and the metrics
//! show right now.
//!
//! The pipeline feeds it every raw packet ([`ConnectionTable::record_batch`]) or, in flow mode,
//! every delta swept from the kernel flow table ([`ConnectionTable::record_delta`]), and calls
//! [`ConnectionTable::expire`] on each tick, off the async workers. Readers get the top
//! connections from a [`Ranking`] that [`LiveRanking`] builds at most once per tick and shares.
//!
//! A connection is keyed by protocol and both endpoints regardless of direction, so `A -> B`
//! and `B -> A` share one entry. The entry keeps the orientation of the first packet seen
//! (normally the initiator's), per-hook counters and the TCP flags seen. It closes after
//! `timeout` without packets, at once on a TCP RST, or once each side has sent a FIN.
//!
//! # Locking
//!
//! The connections are split over shards by a seeded hash of their key, each behind its own
//! `std::sync::Mutex` (held for one update, never across `.await`). Capture locks one shard
//! per packet or delta; expiry and the ranking's copy lock one shard at a time, and a shard
//! holds about [`SHARD_ENTRIES`] connections at `max_connections`, so nothing holds a lock
//! capture needs for longer than one shard's pass (tens of microseconds), whatever the size
//! of the table. Why shards rather than one map copied whole per tick: a copy of a million
//! entries under one lock is itself a pause of tens of milliseconds.
//!
//! Capture does not even wait for that pass: when a shard is taken it leaves the update in the
//! shard's inbox, which whoever locks the shard next applies first (`deferred`; bounded,
//! counted in `/metrics`). It waits only when the inboxes are full, and how long it then waited is
//! counted too ([`LockWaits`]).
//!
//! # Memory
//!
//! The table never holds more than `max_connections` entries; new connections beyond the
//! bound are refused and counted in [`TableStats`]. It allocates as it fills, not up front: an
//! idle agent holds no table. A shard keeps its connections as dense records in chunks of
//! 64, found through a hash index of their positions (`store`): an IPv4 connection's record is
//! 72 bytes (its addresses as 4 bytes each), any other's 104 (the whole [`FiveTuple`]); both
//! sizes are checked by a test. The index costs 5 bytes a bucket and is 44 to 88 % full (it
//! doubles as it grows and halves when expiry leaves it a quarter full), 6 to 11 bytes per
//! connection; each shard has at most one partly empty chunk per family (4.5 KiB of IPv4
//! records). So an IPv4 connection costs 78 to 84 bytes, about 80 MiB at 1,000,000 plus at
//! most 2.3 MiB of partly filled chunks over the 512 shards; an IPv6 one 110 to 116 bytes.
//! Expiry frees chunks as they empty, and a pass that removed many entries hands the freed
//! pages back to the kernel (`release_freed_memory`): malloc would keep them otherwise.
//!
//! # Layout
//! - this file: [`ConnectionTable`] (shards, the bound, record, expire, counters);
//! - `shard`: one shard and the per-connection rules (orientation, close, expiry);
//! - `store`: a shard's records of one address family and their index;
//! - `entry`: what the table keeps per connection and the direction-free key;
//! - `ranking`: the top-N per sort key ([`Ranking`]) and the shared, per-tick [`LiveRanking`];
//! - `deferred`: a shard's lock and inbox, and the rules that apply every update in order;
//! - `lock_wait`: how long capture waited for a shard ([`LockWaits`]);
//! - `snapshot`: what it reports ([`ConnectionSnapshot`], [`SortKey`], [`TableStats`]).

use std::{
    cmp::Reverse,
    hash::{BuildHasher, Hash},
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    flow::{Direction, FiveTuple, Packet, Protocol, TCP_FIN, TCP_RST, TCP_SYN, V4Tuple},
    sync::lock,
};

mod deferred;
mod entry;
mod lock_wait;
mod ranking;
mod shard;
mod snapshot;
mod store;

use deferred::{Deferred, DeferredCounts, ShardCell, ShardGuard};
use entry::*;
pub use lock_wait::*;
pub use ranking::*;
use shard::{Applied, Limits, Shard, Update};
pub use snapshot::*;

/// How long a closed TCP connection keeps its slot, out of the active set, to absorb the packets
/// that trail its close (the last ACK after the FINs, a retransmission), which would otherwise
/// open a phantom connection that lives for the whole inactivity timeout. Capped by the timeout.
const CLOSED_LINGER: Duration = Duration::from_secs(2);

/// About how many connections a shard holds when the table is full: small enough that a pass
/// over one shard (expiry, the ranking's copy, a rehash as it grows) takes tens of
/// microseconds, so capture never waits long for it.
pub const SHARD_ENTRIES: usize = 4096;

/// A pass that removes at least this many entries (4.5 MiB of IPv4 records) hands the memory
/// the allocator keeps back to the kernel (see [`release_freed_memory`]).
const RELEASE_AFTER_REMOVED: usize = 65_536;

/// The most shards (2^24 connections, the configuration's bound, over 4,096 shards).
const MAX_SHARDS: usize = 4096;

/// The live connections, bounded by `max_connections`, shared by capture, expiry and the
/// ranking (`&self` everywhere; see the module docs for the locking).
#[derive(Debug)]
pub struct ConnectionTable {
    /// A power-of-two number of shards; a connection lives in the one its key hashes to.
    shards: Box<[ShardCell]>,
    /// Picks the shard, seeded randomly like the stores' own hashers (see
    /// [`crate::flow::WireHashMap`]): a sender who cannot see the seed cannot pile connections
    /// into one shard.
    shard_hasher: foldhash::fast::RandomState,
    /// Most entries the shards may hold together, closed ones included.
    max: usize,
    /// Entries held now, over all shards, closed ones included: the bound's count.
    held: AtomicUsize,
    /// Entries marked closed, not yet freed by `expire`, over all shards.
    closing: AtomicUsize,
    /// Inactivity after which a connection expires, and the linger of a closed one.
    limits: Limits,
    /// Lifetime counters (see [`TableStats`]).
    overflow_packets: AtomicU64,
    overflow_connections: AtomicU64,
    closed_total: AtomicU64,
    /// How long capture waited for a shard's lock.
    lock_waits: LockWaits,
    /// Updates capture left in a shard's inbox rather than wait (see `deferred`).
    deferred: DeferredCounts,
}

impl ConnectionTable {
    /// An empty table for at most `max_connections` entries (allocated as they come, see the
    /// module docs), closing connections idle for `timeout`. `max_connections` comes validated
    /// from the configuration (1 to 2^24); 0 makes a table that refuses every connection.
    pub fn new(max_connections: usize, timeout: Duration) -> ConnectionTable {
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let linger = u64::try_from(CLOSED_LINGER.as_nanos()).unwrap_or(u64::MAX);
        let shards = (max_connections / SHARD_ENTRIES)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        ConnectionTable {
            shards: (0..shards).map(|_| ShardCell::new()).collect(),
            shard_hasher: Default::default(),
            max: max_connections,
            held: AtomicUsize::new(0),
            closing: AtomicUsize::new(0),
            limits: Limits {
                timeout_ns,
                linger_ns: linger.min(timeout_ns),
            },
            overflow_packets: AtomicU64::new(0),
            overflow_connections: AtomicU64::new(0),
            closed_total: AtomicU64::new(0),
            lock_waits: LockWaits::default(),
            deferred: DeferredCounts::default(),
        }
    }

    /// Counts raw packets (or GSO aggregates) against their connections, creating those there
    /// is room for.
    pub fn record_batch(&self, batch: &[Packet]) {
        // Consecutive packets of one shard (one connection's burst) take its lock once.
        let mut held: Option<(usize, ShardGuard<'_>)> = None;
        for p in batch {
            let (key, along_key) = canonical(&p.tuple);
            let i = self.shard_of(&key);
            let d = Deferred {
                key,
                along_key,
                update: Update {
                    direction: p.direction,
                    packets: u64::from(p.packets),
                    bytes: u64::from(p.bytes),
                    first_seen: p.ts_unix_ns,
                    last_seen: p.ts_unix_ns,
                    tcp_flags: p.tcp_flags,
                },
            };
            if let Some((j, shard)) = held.as_mut()
                && *j == i
            {
                self.apply(shard, &d);
                continue;
            }
            // Unlock the previous shard before taking the next.
            drop(held.take());
            held = self.capture(i, &d).map(|shard| (i, shard));
        }
    }

    /// Counts one raw packet (or GSO aggregate); see [`ConnectionTable::record_batch`].
    pub fn record(&self, p: &Packet) {
        self.record_batch(std::slice::from_ref(p));
    }

    /// Adds a delta swept from the kernel flow table (flow mode): `packets` and `bytes` seen by
    /// the `direction` hook between `first_seen_unix_ns` and `last_seen_unix_ns`, with the OR of
    /// their TCP flags.
    ///
    /// The first delta of a connection fixes its orientation; when both directions arrive in
    /// the same sweep that may be the responder's.
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors the kernel's FlowKey + FlowSlot"
    )]
    pub fn record_delta(
        &self,
        tuple: FiveTuple,
        direction: Direction,
        packets: u64,
        bytes: u64,
        first_seen_unix_ns: u64,
        last_seen_unix_ns: u64,
        tcp_flags: u8,
    ) {
        let (key, along_key) = canonical(&tuple);
        let d = Deferred {
            key,
            along_key,
            update: Update {
                direction,
                packets,
                bytes,
                first_seen: first_seen_unix_ns,
                last_seen: last_seen_unix_ns,
                tcp_flags,
            },
        };
        drop(self.capture(self.shard_of(&key), &d));
    }

    /// Applies `d` in its (locked) shard and keeps the table-wide counts.
    fn apply(&self, shard: &mut Shard, d: &Deferred) {
        let (key, along_key, u) = (d.key, d.along_key, &d.update);
        // Takes a place under the bound, or refuses: exact even with two capture tasks (flow
        // mode's sweeper and ring reader) adding to different shards at once.
        let admit = || {
            self.held
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.max).then_some(n + 1)
                })
                .is_ok()
        };
        match shard.apply(key, along_key, u, self.limits, admit) {
            Ok(Applied { closed, reopened }) => {
                if closed > 0 {
                    self.closing.fetch_add(closed, Ordering::Relaxed);
                    self.closed_total
                        .fetch_add(closed as u64, Ordering::Relaxed);
                }
                if reopened > 0 {
                    self.closing.fetch_sub(reopened, Ordering::Relaxed);
                }
            }
            Err(()) => {
                self.overflow_packets
                    .fetch_add(u.packets, Ordering::Relaxed);
                self.overflow_connections.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The shard `key` lives in.
    fn shard_of<K: Hash>(&self, key: &K) -> usize {
        // The high bits: the maps inside use the low ones (with their own seeds, but there is
        // no reason to correlate them).
        let h = self.shard_hasher.hash_one(key);
        (h >> 32) as usize & (self.shards.len() - 1)
    }

    /// The shards, for a pass that locks them one at a time.
    fn shards(&self) -> impl Iterator<Item = &ShardCell> {
        self.shards.iter()
    }

    /// Closes the connections idle for at least the timeout at `now_unix_ns` and returns how
    /// many. Also frees the slots of connections closed by RST or FIN more than a moment ago
    /// (those were counted when they closed, not here).
    ///
    /// One shard at a time, so capture waits at most for one shard's scan. Blocking work at a
    /// million connections (a few milliseconds in all): run it off the async workers.
    pub fn expire(&self, now_unix_ns: u64) -> usize {
        let mut expired = 0;
        let mut removed = 0;
        for shard in self.shards() {
            let (timed_out, freed) = self.lock_shard(shard).expire(now_unix_ns, self.limits);
            if timed_out + freed > 0 {
                self.held.fetch_sub(timed_out + freed, Ordering::Relaxed);
                self.closing.fetch_sub(freed, Ordering::Relaxed);
            }
            expired += timed_out;
            removed += timed_out + freed;
        }
        self.closed_total
            .fetch_add(expired as u64, Ordering::Relaxed);
        if removed >= RELEASE_AFTER_REMOVED {
            // glibc gives back only the top of a heap on its own: the chunks of records a burst
            // of connections left behind stayed resident after they expired (1,000,000 IPv4
            // connections expired at once left 37 MiB of 84; all of it returned by this). A few
            // milliseconds at most, off the capture path.
            crate::alloc::return_free_memory();
        }
        expired
    }

    /// Number of active connections (closed ones still holding a slot excluded).
    pub fn active_len(&self) -> usize {
        let held = self.held.load(Ordering::Relaxed);
        held.saturating_sub(self.closing.load(Ordering::Relaxed))
    }

    /// Entries held, closed ones included.
    pub fn held_len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Entries the shards' indexes have room for without growing, in all (what the sparse part
    /// of the table's memory is sized to; tests and tools).
    pub fn capacity(&self) -> usize {
        self.shards().map(|s| self.lock_shard(s).capacity()).sum()
    }

    /// Lifetime counters.
    pub fn stats(&self) -> TableStats {
        TableStats {
            overflow_packets: self.overflow_packets.load(Ordering::Relaxed),
            overflow_connections: self.overflow_connections.load(Ordering::Relaxed),
            closed_total: self.closed_total.load(Ordering::Relaxed),
        }
    }

    /// How long capture waited for a shard's lock, and how often it did not wait, so far.
    pub fn lock_waits(&self) -> LockWaitStats {
        LockWaitStats {
            deferred: self.deferred.total.load(Ordering::Relaxed),
            ..self.lock_waits.stats()
        }
    }

    /// The active connection `tuple` belongs to (either way round), if any.
    pub fn get(&self, tuple: &FiveTuple) -> Option<ConnectionSnapshot> {
        let (key, _) = canonical(tuple);
        self.lock_shard(&self.shards[self.shard_of(&key)])
            .get(&key)
            .filter(|e| !e.closed)
            .map(|e| e.snapshot(&key))
    }
}

#[cfg(test)]
mod tests;
