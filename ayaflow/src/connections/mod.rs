//! The bounded live connection table: what `/api/live`, the WebSocket stream and the metrics
//! show right now.
//!
//! The pipeline feeds it every raw packet ([`ConnectionTable::record`]) or, in flow mode, every
//! delta swept from the kernel flow table ([`ConnectionTable::record_delta`]), and calls
//! [`ConnectionTable::expire`] on each tick. The API reads it with [`ConnectionTable::top`].
//!
//! A connection is keyed by protocol and both endpoints regardless of direction, so `A -> B`
//! and `B -> A` share one entry. The entry keeps the orientation of the first packet seen
//! (normally the initiator's), per-hook counters and the TCP flags seen. It closes after
//! `timeout` without packets, at once on a TCP RST, or once each side has sent a FIN.
//!
//! # Memory
//!
//! The table never holds more than `max_connections` entries and allocates them all up front,
//! so memory stays flat whatever the traffic (a SYN flood from random ports included); new
//! connections beyond the bound are refused and counted in [`TableStats`]. Each slot costs 105
//! bytes: 104 for the key and entry (`size_of::<(FiveTuple, Entry)>()`, checked by a test) and
//! 1 control byte of the hash map. The map rounds `max_connections × 8/7` up to a power of two
//! slots, so the allocation is 120 to 240 bytes per connection of `max_connections`:
//!
//! | `max_connections` | slots | memory |
//! |---|---|---|
//! | 65,536 (default) | 131,072 | 13.1 MiB |
//! | 100,000 | 131,072 | 13.1 MiB |
//! | 1,000,000 | 2,097,152 | 210 MiB |
//!
//! The agent's allocator backs an allocation this size with huge pages, resident at once
//! (`hugepages.rs`): a packet's lookup then costs a cache miss but rarely a TLB miss as well,
//! and the memory is in use from the start rather than as the table fills.
//!
//! While it drops the entries that closed, [`ConnectionTable::expire`] may rebuild the map (see
//! there), which holds two allocations of that size for a moment.
//!
//! # Layout
//! - this file: [`ConnectionTable`] (record, expire, top-N);
//! - `entry`: what the table keeps per connection and the direction-free key;
//! - `snapshot`: what it reports ([`ConnectionSnapshot`], [`SortKey`], [`TableStats`]).

use std::{
    cmp::{Ordering, Reverse},
    collections::hash_map,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::flow::{Direction, FiveTuple, Packet, Protocol, TCP_FIN, TCP_RST, TCP_SYN, WireHashMap};

mod entry;
mod snapshot;

use entry::*;
pub use snapshot::*;

/// How long a closed TCP connection keeps its slot, out of the active set, to absorb the packets
/// that trail its close (the last ACK after the FINs, a retransmission), which would otherwise
/// open a phantom connection that lives for the whole inactivity timeout. Capped by the timeout.
const CLOSED_LINGER: Duration = Duration::from_secs(2);

/// The live connections, bounded by `max_connections`. Single-threaded: the agent shares it
/// behind a `std::sync::Mutex` held for one call, and a call can be long: a batch of packets,
/// or [`ConnectionTable::top`], which walks every connection.
#[derive(Debug)]
pub struct ConnectionTable {
    /// Keyed by [`canonical`] tuple.
    ///
    /// A [`WireHashMap`], seeded randomly: keys are addresses and ports that anyone on the
    /// network chooses, so an unkeyed hash (FxHash) would let a sender craft colliding tuples
    /// and turn every lookup into a long probe. foldhash rather than std's SipHash-1-3: the
    /// same protection against senders who cannot see the seed, at a fraction of the cost per
    /// key, which matters in flow mode where every sweep updates every active flow.
    map: WireHashMap<FiveTuple, Entry>,
    /// Most entries `map` may hold, closed ones included.
    max: usize,
    /// Inactivity after which a connection expires, in nanoseconds.
    timeout_ns: u64,
    /// How long a closed entry keeps its slot, in nanoseconds: `CLOSED_LINGER` capped by the
    /// timeout.
    linger_ns: u64,
    /// Entries of `map` marked closed, not yet freed by `expire`.
    closing: usize,
    /// No entry expires or is freed before this time (Unix ns): the earliest deadline seen by
    /// the last scan, lowered by every entry created or closed since. `expire` skips its full
    /// scan before it, which at 100,000 connections and four ticks a second was a tenth of
    /// flow mode's agent CPU.
    next_deadline_ns: u64,
    /// Lifetime counters.
    stats: TableStats,
}

impl ConnectionTable {
    /// An empty table for at most `max_connections` entries (allocated now, see the module
    /// docs), closing connections idle for `timeout`. `max_connections` comes validated from
    /// the configuration (1 to 2^24); 0 makes a table that refuses every connection.
    pub fn new(max_connections: usize, timeout: Duration) -> ConnectionTable {
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let linger = u64::try_from(CLOSED_LINGER.as_nanos()).unwrap_or(u64::MAX);
        ConnectionTable {
            map: WireHashMap::with_capacity_and_hasher(max_connections, Default::default()),
            max: max_connections,
            timeout_ns,
            linger_ns: linger.min(timeout_ns),
            closing: 0,
            next_deadline_ns: u64::MAX,
            stats: TableStats::default(),
        }
    }

    /// Counts one raw packet (or GSO aggregate) against its connection, creating the connection
    /// if there is room.
    pub fn record(&mut self, p: &Packet) {
        self.apply(
            &p.tuple,
            p.direction,
            u64::from(p.packets),
            u64::from(p.bytes),
            p.ts_unix_ns,
            p.ts_unix_ns,
            p.tcp_flags,
        );
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
        &mut self,
        tuple: FiveTuple,
        direction: Direction,
        packets: u64,
        bytes: u64,
        first_seen_unix_ns: u64,
        last_seen_unix_ns: u64,
        tcp_flags: u8,
    ) {
        self.apply(
            &tuple,
            direction,
            packets,
            bytes,
            first_seen_unix_ns,
            last_seen_unix_ns,
            tcp_flags,
        );
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the union of record and record_delta"
    )]
    fn apply(
        &mut self,
        tuple: &FiveTuple,
        direction: Direction,
        packets: u64,
        bytes: u64,
        first_seen: u64,
        last_seen: u64,
        tcp_flags: u8,
    ) {
        let (key, along_key) = canonical(tuple);
        let full = self.map.len() >= self.max;
        // One hash per packet of a known connection: the entry API finds or places the key.
        let entry = match self.map.entry(key) {
            hash_map::Entry::Occupied(o) => {
                let entry = o.into_mut();
                if entry.closed && tcp_flags & TCP_SYN != 0 {
                    // The tuple is reused by a new connection: start over, oriented by it.
                    *entry = Entry::new(along_key, first_seen, last_seen);
                    self.next_deadline_ns = self
                        .next_deadline_ns
                        .min(last_seen.saturating_add(self.timeout_ns));
                    self.closing -= 1;
                }
                entry
            }
            hash_map::Entry::Vacant(_) if full => {
                self.stats.overflow_packets = self.stats.overflow_packets.saturating_add(packets);
                self.stats.overflow_connections += 1;
                return;
            }
            hash_map::Entry::Vacant(v) => {
                self.next_deadline_ns = self
                    .next_deadline_ns
                    .min(last_seen.saturating_add(self.timeout_ns));
                v.insert(Entry::new(along_key, first_seen, last_seen))
            }
        };

        let hook = direction as usize;
        entry.packets[hook] = entry.packets[hook].saturating_add(packets);
        entry.bytes[hook] = entry.bytes[hook].saturating_add(bytes);
        entry.first_seen = entry.first_seen.min(first_seen);
        entry.last_seen = entry.last_seen.max(last_seen);
        entry.tcp_flags |= tcp_flags;

        if key.proto != Protocol::Tcp || entry.closed {
            return;
        }
        if tcp_flags & TCP_FIN != 0 {
            // From the oriented src if the packet runs the way the entry is oriented.
            if along_key == entry.src_is_key_src {
                entry.fin_from_src = true;
            } else {
                entry.fin_from_dst = true;
            }
        }
        if tcp_flags & TCP_RST != 0 || (entry.fin_from_src && entry.fin_from_dst) {
            entry.closed = true;
            self.closing += 1;
            self.next_deadline_ns = self
                .next_deadline_ns
                .min(entry.last_seen.saturating_add(self.linger_ns));
            self.stats.closed_total += 1;
        }
    }

    /// Closes the connections idle for at least the timeout at `now_unix_ns` and returns how
    /// many. Also frees the slots of connections closed by RST or FIN more than a moment ago
    /// (those were counted when they closed, not here).
    ///
    /// Removing entries can leave tombstones in the hash map that use up its spare room, and
    /// an insert with no spare room left would make the map double its allocation. So when the
    /// spare room no longer covers the way up to `max_connections`, this rebuilds the map at its
    /// original size; as only this method removes entries, no insert can then make it grow.
    pub fn expire(&mut self, now_unix_ns: u64) -> usize {
        if now_unix_ns < self.next_deadline_ns {
            // Nothing can be due yet (see `next_deadline_ns`): the scan would remove nothing.
            return 0;
        }
        let (timeout, linger) = (self.timeout_ns, self.linger_ns);
        let mut expired = 0;
        let mut freed = 0;
        let mut next_deadline = u64::MAX;
        self.map.retain(|_, e| {
            // A clock that stepped back makes everything look fresh rather than expire it.
            let idle = now_unix_ns.saturating_sub(e.last_seen);
            let (keep, allowed) = if e.closed {
                let keep = idle < linger;
                freed += usize::from(!keep);
                (keep, linger)
            } else {
                let keep = idle < timeout;
                expired += usize::from(!keep);
                (keep, timeout)
            };
            if keep {
                next_deadline = next_deadline.min(e.last_seen.saturating_add(allowed));
            }
            keep
        });
        self.next_deadline_ns = next_deadline;
        self.closing -= freed;
        self.stats.closed_total += expired as u64;
        if self.map.capacity() < self.max {
            let mut rebuilt = WireHashMap::with_capacity_and_hasher(self.max, Default::default());
            rebuilt.extend(self.map.drain());
            self.map = rebuilt;
        }
        expired
    }

    /// Number of active connections (closed ones still holding a slot excluded).
    pub fn active_len(&self) -> usize {
        self.map.len() - self.closing
    }

    /// Lifetime counters.
    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// The active connection `tuple` belongs to (either way round), if any.
    pub fn get(&self, tuple: &FiveTuple) -> Option<ConnectionSnapshot> {
        let (key, _) = canonical(tuple);
        self.map
            .get(&key)
            .filter(|e| !e.closed)
            .map(|e| e.snapshot(&key))
    }

    /// The `n` active connections ranking highest by `sort`, highest first. Ties are broken by
    /// the oriented tuple, ascending, so the order is the same on every call.
    ///
    /// Cost: one pass over the table plus a partial selection, O(len + n log n); the top 50 of
    /// 100,000 connections does not sort the other 99,950.
    pub fn top(&self, n: usize, sort: SortKey) -> Vec<ConnectionSnapshot> {
        if n == 0 {
            return Vec::new();
        }
        let mut live: Vec<(&FiveTuple, &Entry)> =
            self.map.iter().filter(|(_, e)| !e.closed).collect();
        let rank = |(k, e): &(&FiveTuple, &Entry)| {
            let primary = match sort {
                SortKey::Packets => e.total_packets(),
                SortKey::Bytes => e.total_bytes(),
                SortKey::LastSeen => e.last_seen,
                SortKey::FirstSeen => e.first_seen,
            };
            (Reverse(primary), e.oriented(k))
        };
        let cmp = |a: &(&FiveTuple, &Entry), b: &(&FiveTuple, &Entry)| -> Ordering {
            rank(a).cmp(&rank(b))
        };
        if live.len() > n {
            live.select_nth_unstable_by(n - 1, cmp);
            live.truncate(n);
        }
        live.sort_unstable_by(cmp);
        live.into_iter().map(|(k, e)| e.snapshot(k)).collect()
    }
}

#[cfg(test)]
mod tests;
