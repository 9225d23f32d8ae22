//! Time-window aggregation for the history's aggregated mode: sums packets and bytes per
//! (window, five-tuple, direction) and hands out rows once their window has ended.
//!
//! The pipeline feeds it single packets (raw events) or deltas read from the kernel flow table,
//! calls [`Aggregator::take_closed`] on every tick and [`Aggregator::take_all`] at shutdown, and
//! sends the rows to the storage writer (`storage.rs`), which stores them in the `windows` table.
//!
//! Windows are aligned to multiples of the window length since the Unix epoch, in whole
//! seconds: with a 60 s window, `[12:00:00, 12:01:00)`, `[12:01:00, 12:02:00)`, ... Nothing is
//! ever dropped: a delta whose timestamp falls into a window that was already handed out (a late
//! event, a slow eviction) opens a fresh entry for that same window, which the next
//! `take_closed` returns as an additional row. Readers of the `windows` table must therefore sum
//! rows that share a window and key rather than expect one row each.
//!
//! Memory is bounded: at most `max_entries` (tuple, direction) entries over all open windows.
//! A packet of a key that does not fit is added to the window's overflow row for its direction
//! (key [`OVERFLOW_TUPLE`]), so a spoofed-source flood cannot grow the agent, and every window's
//! totals stay exact; [`Aggregator::add`] says when it did that, for the pipeline to count.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use crate::flow::{Direction, FiveTuple, InterfaceId, Protocol, WireHashMap};

/// The key of a window's overflow rows: IP protocol 255 (reserved by IANA, so no real traffic
/// carries it) between 0.0.0.0:0 and 0.0.0.0:0. Its packets and bytes are those of every key
/// that found the aggregator full.
pub const OVERFLOW_TUPLE: FiveTuple = FiveTuple {
    proto: Protocol::Ip(255),
    src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    src_port: 0,
    dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    dst_port: 0,
    interface: InterfaceId::NONE,
};

/// Entries of the open windows per live connection the table may hold (the default bound,
/// `--aggregation-max-rows`): two (one per direction's tuple), four times over, because a
/// window sees connections come and go, not only those open at once.
pub const ENTRIES_PER_CONNECTION: usize = 8;

/// The open entries of one window.
type WindowSums = WireHashMap<(FiveTuple, Direction), Sums>;

use crate::clock::NANOS_PER_SEC;

/// One aggregated row: the totals of one five-tuple in one direction over one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowRow {
    /// Start of the window, Unix seconds (inclusive), a multiple of the window length.
    pub window_start_unix: i64,
    /// End of the window, Unix seconds (exclusive): `window_start_unix + window length`.
    pub window_end_unix: i64,
    /// The five-tuple as the packets carried it (not normalised to a connection).
    pub tuple: FiveTuple,
    /// The hook that saw the packets.
    pub direction: Direction,
    /// Packets counted in the window (GSO segments each count).
    pub packets: u64,
    /// Bytes on the wire counted in the window.
    pub bytes: u64,
}

/// Packet and byte sums of one key in one window.
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    packets: u64,
    bytes: u64,
}

/// Accumulates deltas into aligned windows until they are taken.
#[derive(Debug)]
pub struct Aggregator {
    /// Window length in seconds, at least 1.
    window_s: i64,
    /// Open entries by window start (Unix seconds). A `BTreeMap` so `take_closed` can split off
    /// every ended window at once; it holds at most a few windows (the current one, plus late
    /// arrivals for old ones until the next tick).
    windows: BTreeMap<i64, WindowSums>,
    /// Entries in `windows` (kept, so `add` need not count them).
    entries: usize,
    /// The bound of `entries`, overflow rows aside (two per window at most).
    max_entries: usize,
}

impl Aggregator {
    /// An aggregator with windows of `window`, rounded down to whole seconds and at least 1 s
    /// (the `windows` table stores seconds; `config.rs` rejects shorter windows), holding at
    /// most `max_entries` keys (at least 1) before it folds new ones into overflow rows.
    pub fn new(window: Duration, max_entries: usize) -> Aggregator {
        Aggregator {
            window_s: i64::try_from(window.as_secs()).unwrap_or(i64::MAX).max(1),
            windows: BTreeMap::new(),
            entries: 0,
            max_entries: max_entries.max(1),
        }
    }

    /// The window length in seconds.
    pub fn window_secs(&self) -> i64 {
        self.window_s
    }

    /// Adds `packets` and `bytes` seen at `ts_unix_ns` on `tuple` in `direction`: one packet, or
    /// the delta of a kernel flow-map entry since the last sweep. Returns true if and only if
    /// they went into the window's overflow row because the aggregator was full.
    pub fn add(
        &mut self,
        tuple: FiveTuple,
        direction: Direction,
        ts_unix_ns: u64,
        packets: u64,
        bytes: u64,
    ) -> bool {
        let start = self.window_start(ts_unix_ns);
        let window = self.windows.entry(start).or_default();
        let mut key = (tuple, direction);
        let overflow = self.entries >= self.max_entries && !window.contains_key(&key);
        if overflow {
            key.0 = OVERFLOW_TUPLE;
        }
        let sums = window.entry(key).or_insert_with(|| {
            self.entries += 1;
            Sums::default()
        });
        // Saturating: 2^64 packets will not happen, but a bogus delta must not panic the agent.
        sums.packets = sums.packets.saturating_add(packets);
        sums.bytes = sums.bytes.saturating_add(bytes);
        overflow
    }

    /// Removes and returns the rows of every window that ended at or before `now_unix_ns`
    /// (`window_end * 1e9 <= now`), ordered by window start, then tuple, then direction.
    pub fn take_closed(&mut self, now_unix_ns: u64) -> Vec<WindowRow> {
        // A window [s, s + w) has ended iff s + w <= floor(now / 1e9), i.e. s < floor(now) - w + 1.
        let now_s = (now_unix_ns / NANOS_PER_SEC) as i64;
        let first_open = now_s.saturating_sub(self.window_s).saturating_add(1);
        let open = self.windows.split_off(&first_open);
        let closed = std::mem::replace(&mut self.windows, open);
        self.rows(closed)
    }

    /// The bound on entries, overflow rows aside.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Removes and returns every row, including the current, unfinished window (shutdown). Its
    /// `window_end_unix` is still the aligned end, so a partial window looks like the others.
    pub fn take_all(&mut self) -> Vec<WindowRow> {
        let all = std::mem::take(&mut self.windows);
        self.rows(all)
    }

    /// Number of (window, tuple, direction) entries held, for a memory gauge.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Returns true if and only if no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Start (Unix seconds) of the window holding `ts_unix_ns`.
    fn window_start(&self, ts_unix_ns: u64) -> i64 {
        // u64::MAX / 1e9 is about 1.8e10, so the seconds always fit in an i64.
        let secs = (ts_unix_ns / NANOS_PER_SEC) as i64;
        secs - secs % self.window_s
    }

    fn rows(&mut self, windows: BTreeMap<i64, WindowSums>) -> Vec<WindowRow> {
        let n = windows.values().map(WindowSums::len).sum();
        self.entries -= n;
        let mut out = Vec::with_capacity(n);
        for (start, entries) in windows {
            let first = out.len();
            out.extend(
                entries
                    .into_iter()
                    .map(|((tuple, direction), s)| WindowRow {
                        window_start_unix: start,
                        window_end_unix: start.saturating_add(self.window_s),
                        tuple,
                        direction,
                        packets: s.packets,
                        bytes: s.bytes,
                    }),
            );
            // HashMap order is random; sorted rows make the table (and tests) deterministic.
            out[first..].sort_by_key(|r| (r.tuple, r.direction as u8));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::flow::Protocol;

    const S: u64 = NANOS_PER_SEC;

    fn tuple(n: u8) -> FiveTuple {
        FiveTuple {
            proto: if n.is_multiple_of(2) {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
            src_port: 1000 + u16::from(n),
            dst: IpAddr::V6(Ipv6Addr::LOCALHOST),
            dst_port: 443,
            interface: InterfaceId::NONE,
        }
    }

    fn totals(rows: &[WindowRow]) -> (u64, u64) {
        rows.iter()
            .fold((0, 0), |(p, b), r| (p + r.packets, b + r.bytes))
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let mut a = Aggregator::new(Duration::from_secs(60), 100);
        a.add(tuple(1), Direction::Ingress, 1_000_000_030 * S + 5, 1, 100);
        let rows = a.take_all();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].window_start_unix, 1_000_000_020);
        assert_eq!(rows[0].window_end_unix, 1_000_000_080);
    }

    #[test]
    fn sums_per_tuple_and_direction() {
        let mut a = Aggregator::new(Duration::from_secs(10), 100);
        for _ in 0..3 {
            a.add(tuple(1), Direction::Ingress, 100 * S, 1, 10);
        }
        a.add(tuple(1), Direction::Egress, 101 * S, 2, 20);
        a.add(tuple(2), Direction::Ingress, 109 * S, 4, 40);
        assert_eq!(a.len(), 3);
        let rows = a.take_all();
        assert!(a.is_empty());
        let get = |t, d| {
            rows.iter()
                .find(|r| r.tuple == t && r.direction == d)
                .map(|r| (r.packets, r.bytes))
        };
        assert_eq!(get(tuple(1), Direction::Ingress), Some((3, 30)));
        assert_eq!(get(tuple(1), Direction::Egress), Some((2, 20)));
        assert_eq!(get(tuple(2), Direction::Ingress), Some((4, 40)));
    }

    #[test]
    fn take_closed_returns_only_ended_windows() {
        let mut a = Aggregator::new(Duration::from_secs(10), 100);
        a.add(tuple(1), Direction::Ingress, 100 * S, 1, 10); // [100, 110)
        a.add(tuple(1), Direction::Ingress, 110 * S, 1, 10); // [110, 120)
        assert!(
            a.take_closed(110 * S - 1).is_empty(),
            "window [100,110) still open at 109.99"
        );
        let closed = a.take_closed(110 * S);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].window_start_unix, 100);
        assert_eq!(a.len(), 1, "[110,120) stays open");
    }

    #[test]
    fn late_arrivals_become_a_new_row_for_their_window() {
        let mut a = Aggregator::new(Duration::from_secs(10), 100);
        a.add(tuple(1), Direction::Ingress, 105 * S, 1, 10);
        let first = a.take_closed(130 * S);
        assert_eq!(first.len(), 1);
        // Arrives after [100, 110) was handed out.
        a.add(tuple(1), Direction::Ingress, 107 * S, 5, 50);
        let late = a.take_closed(130 * S);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].window_start_unix, 100);
        assert_eq!((late[0].packets, late[0].bytes), (5, 50));
    }

    #[test]
    fn keys_beyond_the_bound_go_into_one_overflow_row_per_window_and_direction() {
        let mut a = Aggregator::new(Duration::from_secs(10), 2);
        assert!(!a.add(tuple(1), Direction::Ingress, 100 * S, 1, 10));
        assert!(!a.add(tuple(2), Direction::Ingress, 100 * S, 1, 10));
        // Full: new keys overflow, known keys still add up on their own row.
        assert!(a.add(tuple(3), Direction::Ingress, 101 * S, 2, 20));
        assert!(a.add(tuple(4), Direction::Ingress, 102 * S, 3, 30));
        assert!(a.add(tuple(3), Direction::Egress, 103 * S, 4, 40));
        assert!(!a.add(tuple(1), Direction::Ingress, 104 * S, 1, 10));
        // Another window: its own overflow rows.
        assert!(a.add(tuple(5), Direction::Ingress, 111 * S, 5, 50));
        let rows = a.take_all();
        assert!(a.is_empty());
        assert_eq!(a.len(), 0, "the count of entries follows what was taken");
        let get = |start, t, d| {
            rows.iter()
                .find(|r| r.window_start_unix == start && r.tuple == t && r.direction == d)
                .map(|r| (r.packets, r.bytes))
        };
        assert_eq!(get(100, tuple(1), Direction::Ingress), Some((2, 20)));
        assert_eq!(get(100, tuple(2), Direction::Ingress), Some((1, 10)));
        assert_eq!(get(100, OVERFLOW_TUPLE, Direction::Ingress), Some((5, 50)));
        assert_eq!(get(100, OVERFLOW_TUPLE, Direction::Egress), Some((4, 40)));
        assert_eq!(get(110, OVERFLOW_TUPLE, Direction::Ingress), Some((5, 50)));
        assert_eq!(rows.len(), 5, "{rows:?}");
        assert_eq!(
            totals(&rows),
            (17, 170),
            "every packet and byte is in a row"
        );
    }

    #[test]
    fn sub_second_windows_round_up_to_one_second() {
        let a = Aggregator::new(Duration::from_millis(300), 100);
        assert_eq!(a.window_secs(), 1);
    }

    proptest! {
        /// Whatever the order, timestamps and tick times, every packet and byte comes out once.
        #[test]
        fn no_packet_is_lost(
            // (tuple, egress?, half-seconds past the base time, packets, bytes)
            events in prop::collection::vec(
                (0u8..4, any::<bool>(), 0u64..600, 0u64..1000, 0u64..100_000),
                0..200,
            ),
            ticks in prop::collection::vec(0u64..700, 0..10),
            window in 1u64..120,
            // Small bounds make overflow rows common.
            max_entries in 1usize..12,
        ) {
            let mut a = Aggregator::new(Duration::from_secs(window), max_entries);
            let mut out = Vec::new();
            let mut ticks = ticks.into_iter();
            let (mut p_in, mut b_in) = (0u64, 0u64);
            for (i, (t, egress, ts, p, b)) in events.into_iter().enumerate() {
                let d = if egress { Direction::Egress } else { Direction::Ingress };
                a.add(tuple(t), d, 1_700_000_000 * S + ts * S / 2, p, b);
                p_in += p;
                b_in += b;
                if i % 7 == 0
                    && let Some(tick) = ticks.next()
                {
                    out.extend(a.take_closed(1_700_000_000 * S + tick * S));
                }
            }
            out.extend(a.take_all());
            prop_assert!(a.is_empty());
            prop_assert_eq!(a.len(), 0);
            prop_assert_eq!(totals(&out), (p_in, b_in));
            for r in &out {
                prop_assert_eq!(r.window_start_unix % window as i64, 0);
                prop_assert_eq!(r.window_end_unix - r.window_start_unix, window as i64);
            }
        }
    }
}
