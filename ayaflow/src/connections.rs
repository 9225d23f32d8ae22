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

use std::{
    cmp::{Ordering, Reverse},
    collections::hash_map,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::flow::{Direction, FiveTuple, Packet, Protocol, TCP_FIN, TCP_RST, TCP_SYN, WireHashMap};

/// How long a closed TCP connection keeps its slot, out of the active set, to absorb the packets
/// that trail its close (the last ACK after the FINs, a retransmission), which would otherwise
/// open a phantom connection that lives for the whole inactivity timeout. Capped by the timeout.
const CLOSED_LINGER: Duration = Duration::from_secs(2);

/// Counters of the table's lifetime, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Packets of connections refused because the table was full.
    pub overflow_packets: u64,
    /// Refused attempts to add a connection: one per [`ConnectionTable::record`] or
    /// [`ConnectionTable::record_delta`] call for an unknown connection while the table was full.
    /// The table remembers nothing of refused connections, so one that keeps sending while the
    /// table stays full counts once per call. Raise `max_connections` if this grows.
    pub overflow_connections: u64,
    /// Connections that left the active set: inactivity timeouts, RSTs and FIN pairs.
    pub closed_total: u64,
}

/// How [`ConnectionTable::top`] ranks connections, largest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Total packets, both directions. This is the default.
    #[default]
    Packets,
    /// Total bytes, both directions.
    Bytes,
    /// Most recently active first.
    LastSeen,
    /// Most recently opened first.
    FirstSeen,
}

/// One active connection as [`ConnectionTable::top`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSnapshot {
    /// Oriented as first seen: `src` sent the first packet the table saw, normally the
    /// initiator.
    pub tuple: FiveTuple,
    /// Packets in both directions.
    pub packets: u64,
    /// Bytes in both directions.
    pub bytes: u64,
    /// Packets seen by the ingress hook.
    pub ingress_packets: u64,
    /// Bytes seen by the ingress hook.
    pub ingress_bytes: u64,
    /// Packets seen by the egress hook.
    pub egress_packets: u64,
    /// Bytes seen by the egress hook.
    pub egress_bytes: u64,
    /// First packet, nanoseconds since the Unix epoch.
    pub first_seen_unix_ns: u64,
    /// Latest packet, nanoseconds since the Unix epoch.
    pub last_seen_unix_ns: u64,
    /// OR of the TCP flags of every packet, both directions (`flow::TCP_*`).
    pub tcp_flags: u8,
}

/// What the table keeps per connection. 56 bytes; see the module docs for the total per slot.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Packets per hook, indexed by `Direction as usize`; the total is their sum.
    packets: [u64; 2],
    /// Bytes per hook, indexed like `packets`.
    bytes: [u64; 2],
    first_seen: u64,
    last_seen: u64,
    tcp_flags: u8,
    /// True if the oriented `src` is the key's `src`, false if it is the key's `dst`. Set when
    /// the entry is created and never changed.
    src_is_key_src: bool,
    /// A FIN was seen from the oriented `src`.
    fin_from_src: bool,
    /// A FIN was seen from the oriented `dst`.
    fin_from_dst: bool,
    /// Closed by RST or FINs: out of the active set, kept until `expire` frees the slot after
    /// `CLOSED_LINGER`.
    closed: bool,
}

impl Entry {
    fn new(src_is_key_src: bool, first_seen: u64, last_seen: u64) -> Entry {
        Entry {
            packets: [0; 2],
            bytes: [0; 2],
            first_seen,
            last_seen,
            tcp_flags: 0,
            src_is_key_src,
            fin_from_src: false,
            fin_from_dst: false,
            closed: false,
        }
    }

    fn total_packets(&self) -> u64 {
        self.packets[0].saturating_add(self.packets[1])
    }

    fn total_bytes(&self) -> u64 {
        self.bytes[0].saturating_add(self.bytes[1])
    }

    fn oriented(&self, key: &FiveTuple) -> FiveTuple {
        if self.src_is_key_src {
            *key
        } else {
            key.reversed()
        }
    }

    fn snapshot(&self, key: &FiveTuple) -> ConnectionSnapshot {
        let ingress = Direction::Ingress as usize;
        let egress = Direction::Egress as usize;
        ConnectionSnapshot {
            tuple: self.oriented(key),
            packets: self.total_packets(),
            bytes: self.total_bytes(),
            ingress_packets: self.packets[ingress],
            ingress_bytes: self.bytes[ingress],
            egress_packets: self.packets[egress],
            egress_bytes: self.bytes[egress],
            first_seen_unix_ns: self.first_seen,
            last_seen_unix_ns: self.last_seen,
            tcp_flags: self.tcp_flags,
        }
    }
}

/// The key of a conversation whichever way a packet went: the smaller of the tuple and its
/// reverse. Returns the key and whether `tuple` runs the same way as the key.
fn canonical(tuple: &FiveTuple) -> (FiveTuple, bool) {
    let reversed = tuple.reversed();
    if reversed < *tuple {
        (reversed, false)
    } else {
        (*tuple, true)
    }
}

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
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::flow::TCP_ACK;

    const TIMEOUT: Duration = Duration::from_secs(60);
    const SEC: u64 = 1_000_000_000;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn tuple(proto: Protocol, src: (u8, u16), dst: (u8, u16)) -> FiveTuple {
        FiveTuple {
            proto,
            src: v4(src.0),
            src_port: src.1,
            dst: v4(dst.0),
            dst_port: dst.1,
        }
    }

    /// 10.0.0.1:40000 -> 10.0.0.2:443.
    fn client_to_server() -> FiveTuple {
        tuple(Protocol::Tcp, (1, 40_000), (2, 443))
    }

    /// xorshift64: deterministic pseudo-random numbers without a dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn packet(t: FiveTuple, direction: Direction, ts: u64, bytes: u32, flags: u8) -> Packet {
        Packet {
            tuple: t,
            direction,
            ts_unix_ns: ts,
            packets: 1,
            bytes,
            tcp_flags: flags,
            icmp_type: 0,
            icmp_code: 0,
            flags: 0,
            vlan_id: 0,
        }
    }

    #[test]
    fn both_directions_merge_into_one_entry_with_per_hook_counts() {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let c2s = client_to_server();
        t.record(&packet(c2s, Direction::Egress, 10, 60, TCP_SYN));
        t.record(&packet(
            c2s.reversed(),
            Direction::Ingress,
            20,
            60,
            TCP_SYN | TCP_ACK,
        ));
        t.record(&packet(c2s, Direction::Egress, 30, 1000, TCP_ACK));
        assert_eq!(t.active_len(), 1);
        let s = t.get(&c2s.reversed()).expect("found either way round");
        assert_eq!(
            s,
            ConnectionSnapshot {
                tuple: c2s,
                packets: 3,
                bytes: 1120,
                ingress_packets: 1,
                ingress_bytes: 60,
                egress_packets: 2,
                egress_bytes: 1060,
                first_seen_unix_ns: 10,
                last_seen_unix_ns: 30,
                tcp_flags: TCP_SYN | TCP_ACK,
            }
        );

        // Oriented the other way when the server's packet is the first seen (the key is
        // canonical, so one of these two cases runs against the key's order).
        let mut t = ConnectionTable::new(16, TIMEOUT);
        t.record(&packet(c2s.reversed(), Direction::Ingress, 5, 60, TCP_ACK));
        t.record(&packet(c2s, Direction::Egress, 6, 60, TCP_ACK));
        assert_eq!(t.top(1, SortKey::Packets)[0].tuple, c2s.reversed());
    }

    #[test]
    fn timeout_closes_exactly_at_the_boundary() {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let udp = tuple(Protocol::Udp, (1, 5353), (2, 53));
        t.record(&packet(udp, Direction::Ingress, 100 * SEC, 80, 0));
        let deadline = 100 * SEC + TIMEOUT.as_nanos() as u64;
        assert_eq!(t.expire(deadline - 1), 0, "one nanosecond early");
        assert_eq!(t.active_len(), 1);
        assert_eq!(t.expire(deadline), 1, "idle for exactly the timeout");
        assert_eq!(t.active_len(), 0);
        assert_eq!(t.stats().closed_total, 1);
        assert_eq!(t.expire(deadline * 2), 0, "counted once");
        // A clock that stepped back does not expire anything.
        t.record(&packet(udp, Direction::Ingress, 500 * SEC, 80, 0));
        assert_eq!(t.expire(SEC), 0);
    }

    #[test]
    fn a_packet_resets_the_inactivity_clock() {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let udp = tuple(Protocol::Udp, (1, 5353), (2, 53));
        t.record(&packet(udp, Direction::Ingress, 0, 80, 0));
        t.record(&packet(udp.reversed(), Direction::Egress, 50 * SEC, 80, 0));
        assert_eq!(t.expire(60 * SEC), 0);
        assert_eq!(t.expire(110 * SEC), 1);
    }

    #[test]
    fn fin_from_both_sides_closes() {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let c2s = client_to_server();
        t.record(&packet(c2s, Direction::Egress, 1, 60, TCP_SYN));
        t.record(&packet(c2s, Direction::Egress, 2, 60, TCP_FIN | TCP_ACK));
        t.record(&packet(c2s, Direction::Egress, 3, 60, TCP_FIN | TCP_ACK));
        assert_eq!(
            t.active_len(),
            1,
            "two FINs from the same side do not close"
        );
        t.record(&packet(
            c2s.reversed(),
            Direction::Ingress,
            4,
            60,
            TCP_FIN | TCP_ACK,
        ));
        assert_eq!(t.active_len(), 0);
        assert_eq!(t.stats().closed_total, 1);
        assert!(t.get(&c2s).is_none());
        assert!(t.top(10, SortKey::Packets).is_empty());

        // The last ACK is absorbed by the closed entry instead of opening a phantom connection.
        t.record(&packet(c2s, Direction::Egress, 5, 60, TCP_ACK));
        assert_eq!(t.active_len(), 0);
        // The slot is freed once the linger has passed, without counting a second close.
        assert_eq!(t.expire(5 + CLOSED_LINGER.as_nanos() as u64 - 1), 0);
        assert_eq!(t.map.len(), 1);
        assert_eq!(t.expire(5 + CLOSED_LINGER.as_nanos() as u64), 0);
        assert_eq!(t.map.len(), 0);
        assert_eq!(t.stats().closed_total, 1);
    }

    #[test]
    fn fin_from_one_side_does_not_close() {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let c2s = client_to_server();
        t.record(&packet(c2s, Direction::Egress, 1, 60, TCP_FIN | TCP_ACK));
        t.record(&packet(c2s.reversed(), Direction::Ingress, 2, 60, TCP_ACK));
        assert_eq!(t.active_len(), 1);
        assert_eq!(t.stats().closed_total, 0);
    }

    #[test]
    fn fin_on_udp_bits_is_meaningless() {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let udp = tuple(Protocol::Udp, (1, 1000), (2, 2000));
        t.record(&packet(udp, Direction::Egress, 1, 60, TCP_RST));
        assert_eq!(t.active_len(), 1, "only TCP closes on flags");
    }

    #[test]
    fn rst_closes_at_once_from_either_side() {
        for rst_from_server in [false, true] {
            let mut t = ConnectionTable::new(16, TIMEOUT);
            let c2s = client_to_server();
            t.record(&packet(c2s, Direction::Egress, 1, 60, TCP_SYN));
            let rst = if rst_from_server { c2s.reversed() } else { c2s };
            t.record(&packet(rst, Direction::Ingress, 2, 40, TCP_RST | TCP_ACK));
            assert_eq!(t.active_len(), 0, "rst_from_server={rst_from_server}");
            assert_eq!(t.stats().closed_total, 1);
        }
    }

    #[test]
    fn a_syn_reopens_a_closed_tuple_as_a_new_connection() {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let c2s = client_to_server();
        t.record(&packet(c2s, Direction::Egress, 1, 60, TCP_RST));
        assert_eq!(t.active_len(), 0);
        t.record(&packet(c2s.reversed(), Direction::Ingress, 7, 60, TCP_SYN));
        assert_eq!(t.active_len(), 1);
        let s = t.get(&c2s).expect("reopened");
        assert_eq!(
            (s.tuple, s.packets, s.first_seen_unix_ns),
            (c2s.reversed(), 1, 7)
        );
    }

    #[test]
    fn full_table_refuses_a_flood_without_growing() {
        const MAX: usize = 1000;
        let mut t = ConnectionTable::new(MAX, TIMEOUT);
        for i in 0..MAX {
            let port = u16::try_from(i).expect("MAX fits in a port") + 1;
            t.record(&packet(
                tuple(Protocol::Udp, (1, port), (2, 53)),
                Direction::Ingress,
                1,
                80,
                0,
            ));
        }
        assert_eq!(t.active_len(), MAX);
        let capacity = t.map.capacity();

        // A SYN flood from 100,000 random source addresses and ports, two segments each.
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..100_000 {
            let [a, b, c, d, p0, p1, ..] = xorshift(&mut rng).to_le_bytes();
            let src = IpAddr::V4(Ipv4Addr::new(a | 0x80, b, c, d));
            let t5 = FiveTuple {
                proto: Protocol::Tcp,
                src,
                src_port: u16::from_le_bytes([p0, p1]),
                dst: v4(2),
                dst_port: 443,
            };
            let mut p = packet(t5, Direction::Ingress, 2, 120, TCP_SYN);
            p.packets = 2;
            t.record(&p);
        }
        assert_eq!(t.active_len(), MAX);
        assert_eq!(t.map.capacity(), capacity, "the map did not grow");
        assert_eq!(
            t.stats(),
            TableStats {
                overflow_packets: 200_000,
                overflow_connections: 100_000,
                closed_total: 0
            }
        );
        // Known connections still count while the table is full.
        t.record(&packet(
            tuple(Protocol::Udp, (1, 1), (2, 53)),
            Direction::Ingress,
            3,
            80,
            0,
        ));
        assert_eq!(
            t.get(&tuple(Protocol::Udp, (1, 1), (2, 53)))
                .map(|s| s.packets),
            Some(2)
        );
    }

    #[test]
    fn churn_never_grows_the_map() {
        // 7168 is exactly the capacity of 8192 slots: no slack, so the tombstones that partial
        // removals leave at 87.5% load would make the std map double without the rebuild.
        const MAX: usize = 7168;
        let mut t = ConnectionTable::new(MAX, Duration::from_nanos(64));
        let initial = t.map.capacity();
        assert_eq!(initial, MAX, "the premise of this test");
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next_src = 0x0a00_0000_u32;
        for round in 1..=200u64 {
            let now = round * 1000;
            while t.active_len() < MAX {
                next_src += 1;
                let t5 = FiveTuple {
                    proto: Protocol::Udp,
                    src: IpAddr::V4(Ipv4Addr::from(next_src)),
                    src_port: 1000,
                    dst: v4(1),
                    dst_port: 53,
                };
                // Ages 0..128 ns against a 64 ns timeout: the expire below removes about half
                // of this round's entries, scattered over the map, and all older ones.
                t.record(&packet(
                    t5,
                    Direction::Ingress,
                    now - xorshift(&mut rng) % 128,
                    80,
                    0,
                ));
            }
            assert!(
                t.map.capacity() <= initial,
                "round {round}: grew to {}",
                t.map.capacity()
            );
            assert!(t.expire(now) > 0);
            assert!(
                t.map.capacity() >= MAX,
                "round {round}: room for a full table"
            );
        }
    }

    /// Three connections with equal packets and bytes but different times, and one bigger.
    fn ranked_table() -> (ConnectionTable, [FiveTuple; 4]) {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let a = tuple(Protocol::Udp, (1, 1000), (9, 53));
        let b = tuple(Protocol::Udp, (2, 1000), (9, 53));
        let c = tuple(Protocol::Udp, (3, 1000), (9, 53));
        let big = tuple(Protocol::Tcp, (4, 1000), (9, 443));
        // Recorded out of order so that insertion order cannot produce the expected ranking.
        t.record(&packet(c, Direction::Ingress, 30, 100, 0));
        t.record(&packet(a, Direction::Ingress, 30, 100, 0));
        t.record(&packet(b, Direction::Ingress, 10, 100, 0));
        t.record_delta(big, Direction::Egress, 2, 50, 5, 20, 0);
        (t, [a, b, c, big])
    }

    fn tuples(snapshots: &[ConnectionSnapshot]) -> Vec<FiveTuple> {
        snapshots.iter().map(|s| s.tuple).collect()
    }

    #[test]
    fn top_orders_each_sort_key_with_deterministic_ties() {
        let (t, [a, b, c, big]) = ranked_table();
        let cases = [
            // big has 2 packets; the rest tie on 1 and fall back to the tuple.
            (SortKey::Packets, vec![big, a, b, c]),
            // big has only 50 bytes; a, b, c tie on 100.
            (SortKey::Bytes, vec![a, b, c, big]),
            // a and c tie on 30.
            (SortKey::LastSeen, vec![a, c, big, b]),
            // big's delta started at 5.
            (SortKey::FirstSeen, vec![a, c, b, big]),
        ];
        for (sort, expected) in cases {
            assert_eq!(tuples(&t.top(10, sort)), expected, "{sort:?}");
            for n in 0..=expected.len() {
                assert_eq!(tuples(&t.top(n, sort)), expected[..n], "{sort:?} top {n}");
            }
        }
        assert_eq!(SortKey::default(), SortKey::Packets);
    }

    #[test]
    fn top_n_of_many_matches_a_full_sort() {
        let mut t = ConnectionTable::new(100_000, TIMEOUT);
        for i in 0..100_000u32 {
            let [_, b, c, d] = i.to_be_bytes();
            let t5 = FiveTuple {
                proto: Protocol::Udp,
                src: IpAddr::V4(Ipv4Addr::new(10, b, c, d)),
                src_port: 1000,
                dst: v4(1),
                dst_port: 53,
            };
            // Many ties: packet counts repeat every 97 connections.
            t.record_delta(t5, Direction::Ingress, u64::from(i % 97), 1, 1, 1, 0);
        }
        let mut all = t.top(usize::MAX, SortKey::Packets);
        assert_eq!(all.len(), 100_000);
        all.truncate(50);
        assert_eq!(t.top(50, SortKey::Packets), all);
        assert!(all.iter().all(|s| s.packets == 96));
    }

    /// Skipping scans before the earliest deadline changes nothing: every entry still goes
    /// exactly when its own timeout (or, once closed, its linger) has passed, in any order.
    #[test]
    fn expiry_happens_at_each_entry_deadline() {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let timeout = TIMEOUT.as_nanos() as u64;
        let udp = |port| tuple(Protocol::Udp, (1, port), (2, 53));
        t.record(&packet(udp(1), Direction::Ingress, 20 * SEC, 60, 0));
        t.record(&packet(udp(2), Direction::Ingress, 10 * SEC, 60, 0));
        assert_eq!(t.expire(10 * SEC + timeout - 1), 0);
        assert_eq!(t.expire(10 * SEC + timeout), 1, "udp(2) at its deadline");
        // Created after that scan with an older timestamp (a late sweep): still on time.
        t.record(&packet(udp(3), Direction::Ingress, 15 * SEC, 60, 0));
        assert_eq!(t.expire(15 * SEC + timeout), 1, "udp(3) at its deadline");
        // A connection closed by RST is freed after the linger, not the timeout.
        let c2s = client_to_server();
        t.record(&packet(c2s, Direction::Ingress, 16 * SEC, 60, TCP_SYN));
        t.record(&packet(c2s, Direction::Ingress, 17 * SEC, 60, TCP_RST));
        assert_eq!(t.map.len(), 2);
        t.expire(17 * SEC + CLOSED_LINGER.as_nanos() as u64);
        assert_eq!(t.map.len(), 1, "the closed entry freed after its linger");
        assert_eq!(t.expire(20 * SEC + timeout), 1, "udp(1) last");
        assert!(t.map.is_empty());
    }

    #[test]
    fn record_delta_accumulates() {
        let mut t = ConnectionTable::new(16, TIMEOUT);
        let c2s = client_to_server();
        t.record_delta(
            c2s,
            Direction::Egress,
            10,
            1000,
            5 * SEC,
            6 * SEC,
            TCP_SYN | TCP_ACK,
        );
        t.record_delta(
            c2s.reversed(),
            Direction::Ingress,
            8,
            9000,
            5 * SEC,
            7 * SEC,
            TCP_ACK,
        );
        // A later sweep of the first direction, and one whose first packet predates the others.
        t.record_delta(c2s, Direction::Egress, 5, 500, 8 * SEC, 9 * SEC, TCP_ACK);
        t.record_delta(c2s, Direction::Ingress, 1, 1, 4 * SEC, 4 * SEC, 0);
        let s = t.get(&c2s).expect("present");
        assert_eq!(
            s,
            ConnectionSnapshot {
                tuple: c2s,
                packets: 24,
                bytes: 10_501,
                ingress_packets: 9,
                ingress_bytes: 9001,
                egress_packets: 15,
                egress_bytes: 1500,
                first_seen_unix_ns: 4 * SEC,
                last_seen_unix_ns: 9 * SEC,
                tcp_flags: TCP_SYN | TCP_ACK,
            }
        );
        // FIN from each side, each in its own sweep, closes.
        t.record_delta(
            c2s,
            Direction::Egress,
            1,
            40,
            10 * SEC,
            10 * SEC,
            TCP_FIN | TCP_ACK,
        );
        assert_eq!(t.active_len(), 1);
        t.record_delta(
            c2s.reversed(),
            Direction::Ingress,
            1,
            40,
            10 * SEC,
            10 * SEC,
            TCP_FIN,
        );
        assert_eq!(t.active_len(), 0);
    }

    #[test]
    fn documented_entry_size() {
        // The module docs derive the memory per connection from these; update them together.
        assert_eq!(std::mem::size_of::<FiveTuple>(), 42);
        assert_eq!(std::mem::size_of::<Entry>(), 56);
        assert_eq!(std::mem::size_of::<(FiveTuple, Entry)>(), 104);
        // 65,536 entries get 131,072 slots, of which the map fills at most 7/8.
        let t = ConnectionTable::new(65_536, TIMEOUT);
        assert_eq!(t.map.capacity(), 131_072 / 8 * 7);
    }
}
