use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::flow::TCP_ACK;

pub(super) const TIMEOUT: Duration = Duration::from_secs(60);
const SEC: u64 = 1_000_000_000;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

pub(super) fn tuple(proto: Protocol, src: (u8, u16), dst: (u8, u16)) -> FiveTuple {
    FiveTuple {
        proto,
        src: v4(src.0),
        src_port: src.1,
        dst: v4(dst.0),
        dst_port: dst.1,
        interface: Default::default(),
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

pub(super) fn packet(t: FiveTuple, direction: Direction, ts: u64, bytes: u32, flags: u8) -> Packet {
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
    let t = ConnectionTable::new(16, TIMEOUT);
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
    let t = ConnectionTable::new(16, TIMEOUT);
    t.record(&packet(c2s.reversed(), Direction::Ingress, 5, 60, TCP_ACK));
    t.record(&packet(c2s, Direction::Egress, 6, 60, TCP_ACK));
    assert_eq!(t.top(1, SortKey::Packets)[0].tuple, c2s.reversed());
}

#[test]
fn ipv6_connections_follow_the_same_rules_beside_ipv4_ones() {
    // IPv6 keys live in their own store: same merge, close, ranking and expiry.
    let t = ConnectionTable::new(16, TIMEOUT);
    let c6 = FiveTuple {
        src: IpAddr::V6("fd00::1".parse().expect("an address")),
        dst: IpAddr::V6("fd00::2".parse().expect("an address")),
        ..client_to_server()
    };
    let c4 = client_to_server();
    t.record(&packet(c6, Direction::Egress, 10, 60, TCP_SYN));
    t.record(&packet(c4, Direction::Egress, 11, 60, TCP_SYN));
    t.record(&packet(
        c6.reversed(),
        Direction::Ingress,
        12,
        60,
        TCP_SYN | TCP_ACK,
    ));
    t.record(&packet(c6, Direction::Egress, 13, 900, TCP_ACK));
    assert_eq!(t.active_len(), 2);
    let s = t.get(&c6.reversed()).expect("found either way round");
    assert_eq!(
        (s.tuple, s.packets, s.bytes, s.ingress_packets),
        (c6, 3, 1020, 1)
    );
    assert_eq!(
        t.top(2, SortKey::Bytes)
            .iter()
            .map(|s| s.tuple)
            .collect::<Vec<_>>(),
        [c6, c4]
    );
    t.record(&packet(c6.reversed(), Direction::Ingress, 14, 40, TCP_RST));
    assert_eq!((t.get(&c6), t.active_len(), t.held_len()), (None, 1, 2));
    // The closed one is freed after its linger, the IPv4 one only at its timeout.
    let linger = CLOSED_LINGER.as_nanos() as u64;
    assert_eq!(t.expire(14 + linger), 0);
    assert_eq!(t.held_len(), 1);
    assert_eq!(t.expire(11 + TIMEOUT.as_nanos() as u64), 1);
    assert_eq!(t.held_len(), 0);
}

#[test]
fn timeout_closes_exactly_at_the_boundary() {
    let t = ConnectionTable::new(16, TIMEOUT);
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
    let t = ConnectionTable::new(16, TIMEOUT);
    let udp = tuple(Protocol::Udp, (1, 5353), (2, 53));
    t.record(&packet(udp, Direction::Ingress, 0, 80, 0));
    t.record(&packet(udp.reversed(), Direction::Egress, 50 * SEC, 80, 0));
    assert_eq!(t.expire(60 * SEC), 0);
    assert_eq!(t.expire(110 * SEC), 1);
}

#[test]
fn fin_from_both_sides_closes() {
    let t = ConnectionTable::new(16, TIMEOUT);
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
    assert_eq!(t.held_len(), 1);
    assert_eq!(t.expire(5 + CLOSED_LINGER.as_nanos() as u64), 0);
    assert_eq!(t.held_len(), 0);
    assert_eq!(t.stats().closed_total, 1);
}

#[test]
fn fin_from_one_side_does_not_close() {
    let t = ConnectionTable::new(16, TIMEOUT);
    let c2s = client_to_server();
    t.record(&packet(c2s, Direction::Egress, 1, 60, TCP_FIN | TCP_ACK));
    t.record(&packet(c2s.reversed(), Direction::Ingress, 2, 60, TCP_ACK));
    assert_eq!(t.active_len(), 1);
    assert_eq!(t.stats().closed_total, 0);
}

#[test]
fn fin_on_udp_bits_is_meaningless() {
    let t = ConnectionTable::new(16, TIMEOUT);
    let udp = tuple(Protocol::Udp, (1, 1000), (2, 2000));
    t.record(&packet(udp, Direction::Egress, 1, 60, TCP_RST));
    assert_eq!(t.active_len(), 1, "only TCP closes on flags");
}

#[test]
fn rst_closes_at_once_from_either_side() {
    for rst_from_server in [false, true] {
        let t = ConnectionTable::new(16, TIMEOUT);
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
    let t = ConnectionTable::new(16, TIMEOUT);
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
    let t = ConnectionTable::new(MAX, TIMEOUT);
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
    let capacity = t.capacity();

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
            interface: Default::default(),
        };
        let mut p = packet(t5, Direction::Ingress, 2, 120, TCP_SYN);
        p.packets = 2;
        t.record(&p);
    }
    assert_eq!(t.active_len(), MAX);
    assert_eq!(t.capacity(), capacity, "the index did not grow");
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
fn churn_keeps_the_table_sized_to_what_it_holds() {
    // Partial removals leave tombstones in an index; with the bound held by the table and each
    // shard free to grow, churn at the bound must not ratchet the memory up round after round.
    const MAX: usize = 7168;
    let t = ConnectionTable::new(MAX, Duration::from_nanos(64));
    assert_eq!(
        t.capacity(),
        0,
        "nothing allocated before the first connection"
    );
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next_src = 0x0a00_0000_u32;
    let mut most = 0;
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
                interface: Default::default(),
            };
            // Ages 0..128 ns against a 64 ns timeout: the expire below removes about half
            // of this round's entries, scattered over the index, and all older ones.
            t.record(&packet(
                t5,
                Direction::Ingress,
                now - xorshift(&mut rng) % 128,
                80,
                0,
            ));
        }
        assert_eq!(t.held_len(), MAX);
        // An index is at least 7/16 full once it has grown, and tombstones may double it once.
        most = most.max(t.capacity());
        assert!(
            t.capacity() <= MAX * 32 / 7,
            "round {round}: room for {} entries",
            t.capacity()
        );
        assert!(t.expire(now) > 0);
    }
    // Everything expires: the shards give their memory back.
    t.expire(u64::MAX);
    assert_eq!(t.held_len(), 0);
    assert!(
        t.capacity() < most / 4,
        "room for {} entries after emptying",
        t.capacity()
    );
}

#[test]
fn a_shard_locked_by_a_reader_does_not_block_capture_elsewhere() {
    // A pass over the table (expiry, the ranking's copy) holds one shard at a time: capture
    // into any other shard goes on. With one lock for the whole table this test hangs.
    let t = std::sync::Arc::new(ConnectionTable::new(1 << 16, TIMEOUT));
    assert!(t.shards.len() > 1);
    let held = t.lock_shard(&t.shards[0]);
    let elsewhere = (1..=u16::MAX)
        .map(|port| tuple(Protocol::Udp, (1, port), (2, 53)))
        .find(|t5| t.shard_of(&canonical(t5).0) != 0)
        .expect("some port hashes to another shard");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            t.record(&packet(elsewhere, Direction::Ingress, 1, 60, 0));
            done_tx.send(()).expect("the test waits for this");
        })
    };
    // Not a speed measurement: a generous bound so that a regression fails instead of hanging.
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the insert finished while shard 0 was held");
    assert!(t.get(&elsewhere).is_some());
    drop(held);
    writer.join().expect("the writer did not panic");
}

#[test]
fn a_reader_keeps_its_ranking_while_capture_and_the_next_build_go_on() {
    let table = std::sync::Arc::new(ConnectionTable::new(1024, TIMEOUT));
    let live = LiveRanking::new(table.clone(), 10);
    assert!(!live.refresh(), "nobody read it: no build");
    let a = tuple(Protocol::Udp, (1, 1), (2, 53));
    table.record(&packet(a, Direction::Ingress, 1, 60, 0));
    let held = live.get();
    assert_eq!(tuples(&held.top(10, SortKey::Packets)), [a]);
    // While `held` is in use: capture adds a connection, the tick rebuilds and publishes.
    let b = tuple(Protocol::Udp, (1, 2), (2, 53));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            table.record(&packet(b, Direction::Ingress, 2, 60, 0));
            table.record(&packet(b, Direction::Ingress, 3, 60, 0));
            assert!(live.refresh(), "read just now: rebuilt");
            done_tx.send(()).expect("the test waits for this");
        });
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("capture and the build did not wait for the reader");
    });
    assert_eq!(tuples(&held.top(10, SortKey::Packets)), [a], "unchanged");
    assert_eq!(tuples(&live.get().top(10, SortKey::Packets)), [b, a]);
}

/// Three connections with equal packets and bytes but different times, and one bigger.
fn ranked_table() -> (ConnectionTable, [FiveTuple; 4]) {
    let t = ConnectionTable::new(16, TIMEOUT);
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
    let t = ConnectionTable::new(100_000, TIMEOUT);
    for i in 0..100_000u32 {
        let [_, b, c, d] = i.to_be_bytes();
        let t5 = FiveTuple {
            proto: Protocol::Udp,
            src: IpAddr::V4(Ipv4Addr::new(10, b, c, d)),
            src_port: 1000,
            dst: v4(1),
            dst_port: 53,
            interface: Default::default(),
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
    let t = ConnectionTable::new(16, TIMEOUT);
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
    assert_eq!(t.held_len(), 2);
    t.expire(17 * SEC + CLOSED_LINGER.as_nanos() as u64);
    assert_eq!(t.held_len(), 1, "the closed entry freed after its linger");
    assert_eq!(t.expire(20 * SEC + timeout), 1, "udp(1) last");
    assert_eq!(t.held_len(), 0);
}

#[test]
fn record_delta_accumulates() {
    let t = ConnectionTable::new(16, TIMEOUT);
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
    use store::{CHUNK, Record};
    assert_eq!(std::mem::size_of::<Record<V4Tuple>>(), 72);
    assert_eq!(std::mem::size_of::<Record<FiveTuple>>(), 104);
    assert_eq!(CHUNK, 64);
    // Nothing up front; as it fills, index room for at most 8/7 x 2 of what it holds (an index
    // grows by doubling when 7/8 full), plus the rounding of small shards; records for what it
    // holds and at most one partly empty chunk per shard.
    let t = ConnectionTable::new(65_536, TIMEOUT);
    assert_eq!((t.capacity(), room(&t)), (0, 0));
    assert_eq!(t.shards.len(), 16, "65,536 / SHARD_ENTRIES");
    for i in 0..65_536u32 {
        let [_, b, c, d] = i.to_be_bytes();
        let t5 = FiveTuple {
            proto: Protocol::Udp,
            src: IpAddr::V4(Ipv4Addr::new(10, b, c, d)),
            src_port: 1000,
            dst: v4(1),
            dst_port: 53,
            interface: Default::default(),
        };
        t.record(&packet(t5, Direction::Ingress, 1, 60, 0));
    }
    assert_eq!(t.active_len(), 65_536);
    assert!(t.capacity() <= 65_536 * 2, "room for {}", t.capacity());
    assert!(room(&t) >= 65_536 && room(&t) < 65_536 + 16 * CHUNK);
}

/// Records the shards' chunks have room for, in all.
fn room(t: &ConnectionTable) -> usize {
    t.shards().map(|s| t.lock_shard(s).room()).sum()
}
