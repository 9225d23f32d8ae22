//! The SQLite history through the public API only: `Store` round trips, filters, paging,
//! retention and migrations, then the `Storage` writer thread under faults (full disk, lock,
//! removed file), overflow, shutdown and `kill -9`. Every test uses real files in a temp dir.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::{BufRead, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ayaflow::{
    aggregate::{Aggregator, WindowRow},
    flow::{Direction, FiveTuple, Packet, Protocol},
    storage::{DropReason, Storage, StorageConfig, StorageStats},
    store::{
        ErrorKind, HistoryKind, HistoryPage, HistoryQuery, HistoryRow, RowCounts, SCHEMA_VERSION,
        Store, StoreError,
    },
};
use serde_json::json;

const SEC: u64 = 1_000_000_000;
/// 2023-11-14T22:13:20Z, a round base time for fixtures.
const T: u64 = 1_700_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture addresses are valid")
}

fn tuple(proto: Protocol, src: &str, src_port: u16, dst: &str, dst_port: u16) -> FiveTuple {
    FiveTuple {
        proto,
        src: ip(src),
        src_port,
        dst: ip(dst),
        dst_port,
    }
}

fn packet(tuple: FiveTuple, direction: Direction, ts_unix_ns: u64) -> Packet {
    Packet {
        tuple,
        direction,
        ts_unix_ns,
        packets: 1,
        bytes: 100,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        flags: 0,
        vlan_id: 0,
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos() as u64
}

/// `n` UDP packets stamped now, each with a distinct source port (so rows are told apart).
fn fresh_packets(n: usize) -> Vec<Packet> {
    let t = tuple(Protocol::Udp, "192.0.2.1", 0, "192.0.2.2", 53);
    (0..n)
        .map(|i| {
            let mut p = packet(t, Direction::Egress, now_ns());
            p.tuple.src_port = i as u16;
            p
        })
        .collect()
}

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("history.db");
    (dir, path)
}

fn ids(page: &HistoryPage) -> Vec<i64> {
    page.rows.iter().map(HistoryRow::id).collect()
}

fn query(store: &Store, q: HistoryQuery) -> Vec<i64> {
    ids(&store.query_history(&q).expect("query runs"))
}

/// Rows in the file, read through a separate read-only connection as the API would.
fn counts(path: &Path) -> RowCounts {
    Store::open_read_only(path)
        .and_then(|s| s.row_counts())
        .expect("a reader can count rows")
}

/// Polls `cond` every 10 ms; panics after a generous timeout so a broken writer fails the test.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn written(stats: &StorageStats) -> u64 {
    stats.snapshot().rows_written
}

// ---------------------------------------------------------------------------------------------
// Store: round trips and JSON shapes

#[test]
fn raw_rows_round_trip_with_the_documented_json_shape() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let mut syn = packet(
        tuple(Protocol::Tcp, "10.0.0.1", 40_000, "10.0.0.2", 80),
        Direction::Ingress,
        T * SEC + 123_456_789,
    );
    syn.bytes = 60;
    syn.tcp_flags = 0x02;
    syn.flags = 1;
    syn.vlan_id = 12;
    let mut ping = packet(
        tuple(Protocol::Icmpv6, "fe80::1", 0, "fd00::1", 0),
        Direction::Egress,
        (T + 1) * SEC,
    );
    ping.packets = 2;
    ping.bytes = 208;
    ping.icmp_type = 128;
    store.insert_packets(&[syn, ping]).expect("insert");

    let page = store
        .query_history(&HistoryQuery::default())
        .expect("query");
    assert_eq!(
        serde_json::to_value(&page).expect("serialises"),
        json!({
            "rows": [
                {"id": 2, "timestamp": T + 1, "timestamp_ns": (T + 1) * SEC,
                 "direction": "egress", "proto": "ICMPv6", "src": "[fe80::1]:0",
                 "dst": "[fd00::1]:0", "packets": 2, "bytes": 208, "tcp_flags": 0,
                 "icmp_type": 128, "icmp_code": 0},
                {"id": 1, "timestamp": T, "timestamp_ns": T * SEC + 123_456_789,
                 "direction": "ingress", "proto": "TCP", "src": "10.0.0.1:40000",
                 "dst": "10.0.0.2:80", "packets": 1, "bytes": 60, "tcp_flags": 2,
                 "icmp_type": 0, "icmp_code": 0},
            ],
            "next_cursor": null,
        })
    );
    // Fields the JSON leaves out still round-trip through the typed rows.
    match page.rows[1] {
        HistoryRow::Raw(r) => assert_eq!(r.packet, syn),
        other => panic!("expected a raw row, got {other:?}"),
    }
}

#[test]
fn aggregated_rows_have_the_documented_json_shape() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let w = WindowRow {
        window_start_unix: T as i64,
        window_end_unix: T as i64 + 60,
        tuple: tuple(Protocol::Udp, "10.0.0.3", 5353, "224.0.0.251", 5353),
        direction: Direction::Egress,
        packets: 10,
        bytes: 1200,
    };
    store.insert_windows(&[w]).expect("insert");
    let q = HistoryQuery {
        kind: HistoryKind::Aggregated,
        ..HistoryQuery::default()
    };
    let page = store.query_history(&q).expect("query");
    assert_eq!(
        serde_json::to_value(&page).expect("serialises"),
        json!({
            "rows": [{"id": 1, "window_start": T, "window_end": T + 60, "direction": "egress",
                      "proto": "UDP", "src": "10.0.0.3:5353", "dst": "224.0.0.251:5353",
                      "packets": 10, "bytes": 1200}],
            "next_cursor": null,
        })
    );
    // Raw queries do not see windows.
    assert!(query(&store, HistoryQuery::default()).is_empty());
}

#[test]
fn aggregated_sums_match_what_went_in_including_late_packets() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let mut agg = Aggregator::new(Duration::from_secs(60));
    let tuples = [
        tuple(Protocol::Tcp, "10.0.0.1", 40_000, "10.0.0.2", 443),
        tuple(Protocol::Udp, "fd00::1", 546, "ff02::1:2", 547),
        tuple(Protocol::Icmp, "10.0.0.1", 0, "8.8.8.8", 0),
    ];
    let mut want: HashMap<(FiveTuple, u8), (u64, u64)> = HashMap::new();
    for i in 0..1_000u64 {
        let t = tuples[(i % 3) as usize];
        let d = if i % 2 == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        // Every 10th packet is 5 minutes late: its window has already been written.
        let ts = if i % 10 == 9 {
            (T + i - 300) * SEC
        } else {
            (T + i) * SEC
        };
        agg.add(t, d, ts, i % 4 + 1, 100 + i);
        let e = want.entry((t, d as u8)).or_default();
        e.0 += i % 4 + 1;
        e.1 += 100 + i;
        if i % 50 == 0 {
            store
                .insert_windows(&agg.take_closed((T + i) * SEC))
                .expect("insert");
        }
    }
    store.insert_windows(&agg.take_all()).expect("insert");

    let mut got: HashMap<(FiveTuple, u8), (u64, u64)> = HashMap::new();
    let mut q = HistoryQuery {
        kind: HistoryKind::Aggregated,
        limit: 7,
        ..HistoryQuery::default()
    };
    loop {
        let page = store.query_history(&q).expect("query");
        for row in &page.rows {
            let HistoryRow::Aggregated(w) = row else {
                panic!("expected window rows, got {row:?}");
            };
            let w = w.window;
            assert_eq!(w.window_end_unix - w.window_start_unix, 60);
            assert_eq!(w.window_start_unix % 60, 0);
            let e = got.entry((w.tuple, w.direction as u8)).or_default();
            e.0 += w.packets;
            e.1 += w.bytes;
        }
        match page.next_cursor {
            Some(c) => q.before_id = Some(c),
            None => break,
        }
    }
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------------
// Store: filters and paging

/// Nine raw rows (ids 1..=9), one second apart, covering every filter.
fn filter_fixture(store: &mut Store) {
    let rows = [
        (
            tuple(Protocol::Tcp, "10.0.0.1", 40_000, "10.0.0.2", 80),
            Direction::Ingress,
        ),
        (
            tuple(Protocol::Tcp, "10.0.0.2", 80, "10.0.0.1", 40_000),
            Direction::Egress,
        ),
        (
            tuple(Protocol::Udp, "10.0.0.3", 5353, "224.0.0.251", 5353),
            Direction::Egress,
        ),
        (
            tuple(Protocol::Udp, "fd00::1", 546, "ff02::1:2", 547),
            Direction::Egress,
        ),
        (
            tuple(Protocol::Icmpv6, "fe80::1", 0, "fd00::1", 0),
            Direction::Ingress,
        ),
        (
            tuple(Protocol::Icmp, "10.0.0.1", 0, "8.8.8.8", 0),
            Direction::Egress,
        ),
        (
            tuple(Protocol::Ip(47), "10.0.0.9", 0, "10.0.0.1", 0),
            Direction::Ingress,
        ),
        (
            tuple(Protocol::Ether(0x0806), "0.0.0.0", 0, "0.0.0.0", 0),
            Direction::Ingress,
        ),
        (
            tuple(Protocol::Tcp, "10.0.0.1", 40_001, "10.0.0.2", 443),
            Direction::Egress,
        ),
    ];
    let packets: Vec<Packet> = rows
        .iter()
        .enumerate()
        // 123 ns past each second, so time bounds are tested below second precision too.
        .map(|(i, &(t, d))| packet(t, d, (T + i as u64) * SEC + 123))
        .collect();
    store.insert_packets(&packets).expect("insert");
}

#[test]
fn every_raw_filter_selects_exactly_the_matching_rows() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    filter_fixture(&mut store);
    let q = HistoryQuery::default;
    let t = |s: u64| Some((T + s) as i64);

    assert_eq!(query(&store, q()), [9, 8, 7, 6, 5, 4, 3, 2, 1]);
    // Time range, half-open [from, to).
    let range = HistoryQuery {
        from_unix_s: t(2),
        to_unix_s: t(5),
        ..q()
    };
    assert_eq!(query(&store, range), [5, 4, 3]);
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                from_unix_s: t(7),
                ..q()
            }
        ),
        [9, 8]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                to_unix_s: t(1),
                ..q()
            }
        ),
        [1]
    );
    assert!(
        query(
            &store,
            HistoryQuery {
                from_unix_s: t(100),
                ..q()
            }
        )
        .is_empty()
    );
    // Address, as source or destination, IPv4 and IPv6.
    let addr = |a: &str| HistoryQuery {
        addr: Some(ip(a)),
        ..q()
    };
    assert_eq!(query(&store, addr("10.0.0.1")), [9, 7, 6, 2, 1]);
    assert_eq!(query(&store, addr("fd00::1")), [5, 4]);
    assert_eq!(query(&store, addr("ff02::1:2")), [4]);
    assert!(
        query(&store, addr("10.0.0.10")).is_empty(),
        "no prefix matching"
    );
    // Port, as source or destination.
    let port = |p| HistoryQuery {
        port: Some(p),
        ..q()
    };
    assert_eq!(query(&store, port(80)), [2, 1]);
    assert_eq!(query(&store, port(5353)), [3]);
    assert_eq!(query(&store, port(547)), [4]);
    // Protocol, every naming form.
    let proto = |p| HistoryQuery {
        proto: Some(p),
        ..q()
    };
    assert_eq!(query(&store, proto(Protocol::Tcp)), [9, 2, 1]);
    assert_eq!(query(&store, proto(Protocol::Udp)), [4, 3]);
    assert_eq!(query(&store, proto(Protocol::Icmp)), [6]);
    assert_eq!(query(&store, proto(Protocol::Icmpv6)), [5]);
    assert_eq!(query(&store, proto(Protocol::Ip(47))), [7]);
    assert_eq!(query(&store, proto(Protocol::Ether(0x0806))), [8]);
    // Direction.
    let dir = |d| HistoryQuery {
        direction: Some(d),
        ..q()
    };
    assert_eq!(query(&store, dir(Direction::Ingress)), [8, 7, 5, 1]);
    assert_eq!(query(&store, dir(Direction::Egress)), [9, 6, 4, 3, 2]);
    // Filters combine with AND, and with the cursor.
    let combo = HistoryQuery {
        addr: Some(ip("10.0.0.1")),
        proto: Some(Protocol::Tcp),
        direction: Some(Direction::Egress),
        ..q()
    };
    assert_eq!(query(&store, combo), [9, 2]);
    let below = HistoryQuery {
        addr: Some(ip("10.0.0.1")),
        before_id: Some(9),
        ..q()
    };
    assert_eq!(query(&store, below), [7, 6, 2, 1]);
}

#[test]
fn every_aggregated_filter_selects_exactly_the_matching_rows() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let w = |start: u64, t: FiveTuple, d| WindowRow {
        window_start_unix: start as i64,
        window_end_unix: start as i64 + 60,
        tuple: t,
        direction: d,
        packets: 1,
        bytes: 1,
    };
    store
        .insert_windows(&[
            w(
                T,
                tuple(Protocol::Tcp, "10.0.0.1", 40_000, "10.0.0.2", 80),
                Direction::Ingress,
            ),
            w(
                T + 60,
                tuple(Protocol::Udp, "fd00::1", 546, "ff02::1:2", 547),
                Direction::Egress,
            ),
            w(
                T + 120,
                tuple(Protocol::Tcp, "10.0.0.2", 80, "10.0.0.1", 40_000),
                Direction::Egress,
            ),
        ])
        .expect("insert");
    let q = || HistoryQuery {
        kind: HistoryKind::Aggregated,
        ..HistoryQuery::default()
    };
    let t = |s: u64| Some((T + s) as i64);
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                from_unix_s: t(60),
                ..q()
            }
        ),
        [3, 2]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                to_unix_s: t(60),
                ..q()
            }
        ),
        [1]
    );
    let range = HistoryQuery {
        from_unix_s: t(1),
        to_unix_s: t(121),
        ..q()
    };
    assert_eq!(query(&store, range), [3, 2]);
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                addr: Some(ip("fd00::1")),
                ..q()
            }
        ),
        [2]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                addr: Some(ip("10.0.0.1")),
                ..q()
            }
        ),
        [3, 1]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                port: Some(80),
                ..q()
            }
        ),
        [3, 1]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                proto: Some(Protocol::Udp),
                ..q()
            }
        ),
        [2]
    );
    let egress = HistoryQuery {
        direction: Some(Direction::Egress),
        ..q()
    };
    assert_eq!(query(&store, egress), [3, 2]);
}

/// Follows `next_cursor` to the end; checks that pages are newest first and disjoint.
fn all_pages(store: &Store, mut q: HistoryQuery) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    loop {
        let page = store.query_history(&q).expect("query");
        let page_ids = ids(&page);
        assert!(
            page_ids.windows(2).all(|w| w[0] > w[1]),
            "newest first: {page_ids:?}"
        );
        if let Some(c) = page.next_cursor {
            assert_eq!(
                Some(&c),
                page_ids.last(),
                "the cursor is the last id of the page"
            );
        }
        pages.push(page_ids);
        match page.next_cursor {
            Some(c) => q.before_id = Some(c),
            None => return pages,
        }
    }
}

#[test]
fn cursor_pages_are_disjoint_and_complete() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let t = tuple(Protocol::Tcp, "10.0.0.1", 1, "10.0.0.2", 2);
    let packets: Vec<Packet> = (0..240u64)
        .map(|i| {
            let d = if i % 2 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            packet(t, d, (T + i) * SEC)
        })
        .collect();
    store.insert_packets(&packets).expect("insert");

    // 240 rows, 40 per page: six full pages, and the sixth says it is the last.
    let pages = all_pages(
        &store,
        HistoryQuery {
            limit: 40,
            ..HistoryQuery::default()
        },
    );
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [40; 6]);
    let flat: Vec<i64> = pages.concat();
    assert_eq!(
        flat,
        (1..=240).rev().collect::<Vec<i64>>(),
        "disjoint and complete"
    );

    // With a filter: 120 egress rows (even ids), 25 per page.
    let q = HistoryQuery {
        limit: 25,
        direction: Some(Direction::Egress),
        ..HistoryQuery::default()
    };
    let pages = all_pages(&store, q);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [25, 25, 25, 25, 20]
    );
    let flat: BTreeSet<i64> = pages.concat().into_iter().collect();
    assert_eq!(flat, (1..=120).map(|i| 2 * i).collect::<BTreeSet<i64>>());

    // A limit of 0 still makes progress (one row per page).
    let one = store
        .query_history(&HistoryQuery {
            limit: 0,
            ..HistoryQuery::default()
        })
        .expect("query");
    assert_eq!((ids(&one), one.next_cursor), (vec![240], Some(240)));
}

// ---------------------------------------------------------------------------------------------
// Store: retention and migrations

#[test]
fn retention_deletes_old_rows_in_batches_and_keeps_new_ones() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let t = tuple(Protocol::Udp, "10.0.0.1", 1, "10.0.0.2", 2);
    let mut packets: Vec<Packet> = (0..12u64)
        .map(|i| packet(t, Direction::Ingress, (T - 1_000 + i) * SEC))
        .collect();
    packets.extend((0..3u64).map(|i| packet(t, Direction::Ingress, (T + i) * SEC)));
    store.insert_packets(&packets).expect("insert");
    let w = |start: u64| WindowRow {
        window_start_unix: start as i64,
        window_end_unix: start as i64 + 60,
        tuple: t,
        direction: Direction::Egress,
        packets: 1,
        bytes: 1,
    };
    // Ended before the cutoff, ended exactly at it (both expired), straddling it, after it.
    store
        .insert_windows(&[w(T - 120), w(T - 60), w(T - 30), w(T)])
        .expect("insert");

    let mut batches = Vec::new();
    loop {
        let n = store.delete_older_than(T * SEC, 5).expect("delete");
        batches.push(n);
        if n == 0 {
            break;
        }
    }
    // Raw rows go a whole block at a time: the 12 expired rows, all within one minute, are
    // one block. Windows go one by one, at most 5 per call.
    assert_eq!(batches, [12, 2, 0], "12 packets (one block) + 2 windows");
    assert_eq!(query(&store, HistoryQuery::default()), [15, 14, 13]);
    let windows = HistoryQuery {
        kind: HistoryKind::Aggregated,
        ..HistoryQuery::default()
    };
    assert_eq!(query(&store, windows), [4, 3]);
}

#[test]
fn migrations_set_user_version_and_reopening_is_idempotent() {
    let (_dir, path) = temp_db();
    {
        let mut store = Store::open(&path).expect("create");
        store.insert_packets(&fresh_packets(3)).expect("insert");
    }
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    drop(conn);

    for _ in 0..2 {
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.row_counts().expect("count").packets, 3, "data kept");
    }
    let reader = Store::open_read_only(&path).expect("read-only open");
    assert_eq!(reader.row_counts().expect("count").packets, 3);
}

/// Schema version 1 as it shipped (`schema.rs`, migration 1), to build files the way older
/// agents wrote them.
const SCHEMA_V1: &str = "
    CREATE TABLE packets (
        id INTEGER PRIMARY KEY, ts_unix_ns INTEGER NOT NULL, direction TEXT NOT NULL,
        proto TEXT NOT NULL, src TEXT NOT NULL, src_port INTEGER NOT NULL, dst TEXT NOT NULL,
        dst_port INTEGER NOT NULL, packets INTEGER NOT NULL, bytes INTEGER NOT NULL,
        tcp_flags INTEGER NOT NULL, icmp_type INTEGER NOT NULL, icmp_code INTEGER NOT NULL,
        flags INTEGER NOT NULL, vlan_id INTEGER NOT NULL);
    CREATE INDEX packets_ts       ON packets (ts_unix_ns);
    CREATE INDEX packets_src      ON packets (src);
    CREATE INDEX packets_dst      ON packets (dst);
    CREATE INDEX packets_src_port ON packets (src_port);
    CREATE INDEX packets_dst_port ON packets (dst_port);
    CREATE INDEX packets_proto    ON packets (proto);
    CREATE TABLE windows (
        id INTEGER PRIMARY KEY, window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
        proto TEXT NOT NULL, src TEXT NOT NULL, src_port INTEGER NOT NULL, dst TEXT NOT NULL,
        dst_port INTEGER NOT NULL, direction TEXT NOT NULL, packets INTEGER NOT NULL,
        bytes INTEGER NOT NULL);
    CREATE INDEX windows_start    ON windows (window_start);
    CREATE INDEX windows_src      ON windows (src);
    CREATE INDEX windows_dst      ON windows (dst);
    CREATE INDEX windows_src_port ON windows (src_port);
    CREATE INDEX windows_dst_port ON windows (dst_port);
    CREATE INDEX windows_proto    ON windows (proto);
    PRAGMA user_version = 1;";

#[test]
fn a_version_1_file_migrates_keeping_every_row_and_id() {
    let (_dir, path) = temp_db();
    let a = tuple(Protocol::Tcp, "10.0.0.1", 40_000, "fd00::1", 443);
    let b = tuple(Protocol::Ether(0x0806), "0.0.0.0", 0, "0.0.0.0", 0);
    let v1 = rusqlite::Connection::open(&path).expect("raw open");
    v1.execute_batch(SCHEMA_V1).expect("version 1 schema");
    // Ids with gaps (retention deleted some) and the same key in both tables and directions.
    for (id, t, dir, ts) in [
        (5, &a, "egress", T * SEC + 1),
        (9, &b, "ingress", T * SEC + 2),
        (70_000, &a, "ingress", T * SEC + 3),
        (70_001, &a, "egress", T * SEC + 4),
    ] {
        v1.execute(
            "INSERT INTO packets VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 2, 120, 18, 0, 0, 1, 7)",
            rusqlite::params![
                id,
                ts as i64,
                dir,
                t.proto.to_string(),
                t.src.to_string(),
                t.src_port,
                t.dst.to_string(),
                t.dst_port
            ],
        )
        .expect("v1 packet");
    }
    v1.execute(
        "INSERT INTO windows VALUES (3, ?1, ?2, 'TCP', '10.0.0.1', 40000, 'fd00::1', 443, \
         'egress', 10, 1000)",
        rusqlite::params![T as i64, T as i64 + 60],
    )
    .expect("v1 window");
    drop(v1);

    let mut store = Store::open(&path).expect("migrates version 1");
    assert_eq!(
        store.row_counts().expect("count"),
        RowCounts {
            packets: 4,
            windows: 1
        }
    );
    let page = store
        .query_history(&HistoryQuery::default())
        .expect("query");
    let raw: Vec<(i64, Packet)> = page
        .rows
        .iter()
        .map(|r| match r {
            HistoryRow::Raw(r) => (r.id, r.packet),
            other => panic!("expected raw rows, got {other:?}"),
        })
        .collect();
    let migrated = |t: FiveTuple, direction, ts| Packet {
        packets: 2,
        bytes: 120,
        tcp_flags: 18,
        flags: 1,
        vlan_id: 7,
        ..packet(t, direction, ts)
    };
    assert_eq!(
        raw,
        [
            (70_001, migrated(a, Direction::Egress, T * SEC + 4)),
            (70_000, migrated(a, Direction::Ingress, T * SEC + 3)),
            (9, migrated(b, Direction::Ingress, T * SEC + 2)),
            (5, migrated(a, Direction::Egress, T * SEC + 1)),
        ]
    );
    let windows = HistoryQuery {
        kind: HistoryKind::Aggregated,
        ..HistoryQuery::default()
    };
    let page = store.query_history(&windows).expect("windows");
    assert_eq!(
        serde_json::to_value(&page.rows).expect("json"),
        json!([{"id": 3, "window_start": T, "window_end": T + 60, "direction": "egress",
                "proto": "TCP", "src": "10.0.0.1:40000", "dst": "[fd00::1]:443",
                "packets": 10, "bytes": 1000}])
    );
    // Filters work on migrated rows, across the two buckets the ids fall in.
    let egress_a = HistoryQuery {
        addr: Some(ip("fd00::1")),
        direction: Some(Direction::Egress),
        ..HistoryQuery::default()
    };
    assert_eq!(query(&store, egress_a.clone()), [70_001, 5]);

    // New rows continue after the largest id and reuse the migrated keys.
    store
        .insert_packets(&[packet(a, Direction::Egress, T * SEC + 5)])
        .expect("insert after migration");
    assert_eq!(query(&store, egress_a), [70_002, 70_001, 5]);
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let (version, keys): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), count(*) FROM tuples",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("version and keys");
    assert_eq!(
        (version, keys),
        (SCHEMA_VERSION, 3),
        "a/egress, a/ingress, b/ingress"
    );
    // The views show rows with the version 1 columns, for sqlite3 users.
    let v1_columns: (String, String, i64, String, String) = conn
        .query_row(
            "SELECT src, dst, dst_port, proto, direction FROM packets_view WHERE id = 5",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .expect("packets_view");
    assert_eq!(
        v1_columns,
        (
            "10.0.0.1".into(),
            "fd00::1".into(),
            443,
            "TCP".into(),
            "egress".into()
        )
    );
    let window_sum: i64 = conn
        .query_row(
            "SELECT sum(bytes) FROM windows_view WHERE proto = 'TCP' AND direction = 'egress'",
            [],
            |r| r.get(0),
        )
        .expect("windows_view");
    assert_eq!(window_sum, 1000);
    let reader = Store::open_read_only(&path).expect("readers open the migrated file");
    assert_eq!(reader.row_counts().expect("count").packets, 5);
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_error() {
    let (_dir, path) = temp_db();
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("set user_version");
    drop(conn);

    for result in [Store::open(&path), Store::open_read_only(&path)] {
        let err = result.expect_err("a newer schema must be refused");
        assert!(
            matches!(err, StoreError::NewerSchema { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("upgrade ayaflow"), "{msg}");
    }
}

#[test]
fn readers_need_a_file_the_agent_created() {
    let (dir, path) = temp_db();
    let err = Store::open_read_only(&path).expect_err("missing file");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(!path.exists(), "a reader never creates the file");

    rusqlite::Connection::open(&path)
        .and_then(|c| c.execute_batch("CREATE TABLE unrelated (x)"))
        .expect("create an unrelated database");
    let err = Store::open_read_only(&path).expect_err("not migrated");
    assert!(
        matches!(err, StoreError::SchemaMismatch { found: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("start the agent once"), "{err}");

    let err = Store::open(dir.path().join("missing-dir/h.db")).expect_err("no directory");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(
        err.to_string()
            .contains("check the directory exists and is writable"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Storage writer: normal operation

#[test]
fn the_writer_stores_packets_and_windows_and_counts_them() {
    let (_dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(100)));
    let window = WindowRow {
        window_start_unix: T as i64,
        window_end_unix: T as i64 + 10,
        tuple: tuple(Protocol::Tcp, "10.0.0.1", 1, "10.0.0.2", 2),
        direction: Direction::Ingress,
        packets: 5,
        bytes: 500,
    };
    assert!(tx.send_windows(vec![window; 3]));
    wait_for("103 rows written", || written(&stats) == 103);
    assert_eq!(
        counts(&path),
        RowCounts {
            packets: 100,
            windows: 3
        }
    );

    let end = storage.shutdown();
    assert_eq!(end.rows_written, 103);
    assert_eq!(end.rows_dropped_total(), 0);
    assert_eq!(end.write_errors_total(), 0);
    assert_eq!(end.queued_rows, 0);
}

#[test]
fn retention_in_the_writer_deletes_expired_rows() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        // Runs every clamp(5 s / 10, 1 s, 60 s) = 1 s.
        retention: Some(Duration::from_secs(5)),
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    let t = tuple(Protocol::Udp, "10.0.0.1", 1, "10.0.0.2", 2);
    let hour_ago = now_ns() - 3_600 * SEC;
    let in_an_hour = now_ns() + 3_600 * SEC;
    // 12,000 expired rows need three retention batches.
    assert!(tx.send_packets(vec![packet(t, Direction::Ingress, hour_ago); 12_000]));
    assert!(tx.send_packets(vec![packet(t, Direction::Ingress, in_an_hour); 7]));
    wait_for("12,000 expired rows deleted", || {
        stats.snapshot().retention_deleted == 12_000
    });
    assert_eq!(counts(&path).packets, 7);
    let end = storage.shutdown();
    assert_eq!(end.rows_written, 12_007);
    assert_eq!(end.retention_deleted, 12_000);
}

#[test]
fn queue_overflow_is_counted_exactly() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        max_queued_rows: 100,
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    // Hold the write lock so the writer cannot make room: what fits is fully determined.
    let locker = rusqlite::Connection::open(&path).expect("raw open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let tx = storage.sender();
    let stats = storage.stats();

    let accepted: Vec<bool> = (0..10)
        .map(|_| tx.send_packets(fresh_packets(30)))
        .collect();
    assert_eq!(
        accepted,
        [
            true, true, true, false, false, false, false, false, false, false
        ]
    );
    assert!(
        tx.send_packets(fresh_packets(10)),
        "exactly fills the budget"
    );
    assert!(
        !tx.send_packets(fresh_packets(1)),
        "one row more does not fit"
    );
    let s = stats.snapshot();
    assert_eq!(s.rows_dropped(DropReason::QueueFull), 7 * 30 + 1);
    assert_eq!(s.queued_rows, 100);

    locker.execute_batch("COMMIT").expect("unlock");
    wait_for("the 100 accepted rows written", || written(&stats) == 100);
    let end = storage.shutdown();
    assert_eq!(counts(&path).packets, 100);
    assert_eq!(
        end.rows_written + end.rows_dropped_total(),
        10 * 30 + 10 + 1
    );
    assert_eq!(end.rows_dropped(DropReason::QueueFull), 211);
}

#[test]
fn every_row_is_written_or_counted_with_concurrent_senders() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        // A small budget, so some batches are dropped while others are written.
        max_queued_rows: 1_000,
        flush_interval: Duration::from_millis(5),
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    let accepted: u64 = std::thread::scope(|s| {
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let tx = storage.sender();
                s.spawn(move || {
                    (0..200)
                        .filter(|_| tx.send_packets(fresh_packets(37)))
                        .count() as u64
                        * 37
                })
            })
            .collect();
        senders
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .sum()
    });
    let end = storage.shutdown();
    let sent = 4 * 200 * 37;
    assert_eq!(end.rows_written, accepted, "every accepted row is written");
    assert_eq!(end.rows_dropped(DropReason::QueueFull), sent - accepted);
    assert_eq!(end.rows_written + end.rows_dropped_total(), sent);
    assert_eq!(counts(&path).packets, accepted);
    assert_eq!(end.queued_rows, 0);
}

#[test]
fn shutdown_writes_every_queued_row() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        // Never flushes on its own during the test: only shutdown can write these rows.
        flush_interval: Duration::from_secs(3_600),
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    let tx = storage.sender();
    for _ in 0..50 {
        assert!(tx.send_packets(fresh_packets(100)));
    }
    assert_eq!(counts(&path).packets, 0, "nothing flushed yet");
    let end = storage.shutdown();
    assert_eq!(end.rows_written, 5_000);
    assert_eq!(end.rows_dropped_total(), 0);
    assert_eq!(counts(&path).packets, 5_000);
    assert!(!tx.send_packets(fresh_packets(1)), "the queue is closed");
}

#[test]
fn shutdown_counts_rows_it_cannot_write_before_the_deadline() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        flush_interval: Duration::from_secs(3_600),
        drain_timeout: Duration::from_millis(300),
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    let locker = rusqlite::Connection::open(&path).expect("raw open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    assert!(storage.sender().send_packets(fresh_packets(50)));
    let end = storage.shutdown();
    assert_eq!(end.rows_written, 0);
    assert_eq!(end.rows_dropped(DropReason::Shutdown), 50);
    assert!(end.write_errors(ErrorKind::Locked) >= 1);
    assert_eq!(end.queued_rows, 0);
}

// ---------------------------------------------------------------------------------------------
// Storage writer: faults and recovery

#[test]
fn a_full_disk_is_counted_and_writing_resumes_when_space_returns() {
    let (_dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(10)));
    wait_for("10 rows written", || written(&stats) == 10);

    // A cap below the current size means "no growth": like a disk with no free block.
    storage.set_max_db_bytes(Some(1));
    assert!(tx.send_packets(fresh_packets(5_000)));
    wait_for("a `full` write error", || {
        stats.snapshot().write_errors(ErrorKind::Full) >= 2
    });
    assert_eq!(written(&stats), 10);
    assert_eq!(
        counts(&path).packets,
        10,
        "the failed transaction left nothing behind"
    );
    assert_eq!(
        stats.snapshot().queued_rows,
        5_000,
        "failed rows are kept for a retry"
    );

    storage.set_max_db_bytes(None);
    wait_for("the retried rows written", || written(&stats) == 5_010);
    assert_eq!(counts(&path).packets, 5_010);
    let end = storage.shutdown();
    assert_eq!(end.rows_dropped_total(), 0);
}

#[test]
fn a_locked_database_is_retried_until_released() {
    let (_dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let locker = rusqlite::Connection::open(&path).expect("raw open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(100)));
    wait_for("a `locked` write error", || {
        stats.snapshot().write_errors(ErrorKind::Locked) >= 1
    });
    assert_eq!(written(&stats), 0);
    assert_eq!(
        counts(&path).packets,
        0,
        "readers still read while the lock is held"
    );

    locker.execute_batch("COMMIT").expect("unlock");
    wait_for("rows written after the lock is released", || {
        written(&stats) == 100
    });
    assert_eq!(counts(&path).packets, 100);
    let end = storage.shutdown();
    assert_eq!(end.rows_dropped_total(), 0);
}

#[test]
fn a_removed_file_is_recreated_and_writing_continues() {
    let (_dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(10)));
    wait_for("10 rows written", || written(&stats) == 10);

    // Only the main file, as `rm history.db` would: the -wal and -shm stay behind.
    fs::remove_file(&path).expect("remove the database");
    wait_for("the file recreated", || {
        path.exists() && stats.snapshot().reopens >= 1
    });
    assert!(tx.send_packets(fresh_packets(20)));
    wait_for("30 rows written", || written(&stats) == 30);
    assert_eq!(
        counts(&path).packets,
        20,
        "the new file has the new rows, not the old WAL's"
    );
    let end = storage.shutdown();
    assert_eq!(end.rows_dropped_total(), 0);
    assert_eq!(counts(&path).packets, 20);
}

#[test]
fn a_replaced_file_is_reopened_and_written() {
    let (dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(10)));
    wait_for("10 rows written", || written(&stats) == 10);

    // Another valid history file, holding one row, moved over the path.
    let other = dir.path().join("other.db");
    Store::open(&other)
        .and_then(|mut s| s.insert_packets(&fresh_packets(1)))
        .expect("prepare the replacement");
    fs::rename(&other, &path).expect("replace the database");
    wait_for("the writer reopened", || stats.snapshot().reopens >= 1);
    assert!(tx.send_packets(fresh_packets(5)));
    wait_for("15 rows written", || written(&stats) == 15);
    let end = storage.shutdown();
    assert_eq!(end.rows_dropped_total(), 0);
    assert_eq!(
        counts(&path).packets,
        1 + 5,
        "the replacement's row plus the new ones"
    );
}

/// Child half of `committed_rows_survive_kill_9`: writes rows, reports, waits to be killed.
fn kill_9_child(path: &Path) {
    let storage = Storage::spawn(StorageConfig::new(path)).expect("spawn");
    let stats = storage.stats();
    assert!(storage.sender().send_packets(fresh_packets(1_000)));
    wait_for("1000 rows written", || written(&stats) == 1_000);
    println!("ROWS_COMMITTED");
    // The parent kills us; exit on our own only if it never does.
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(3);
}

#[test]
fn committed_rows_survive_kill_9() {
    const CHILD_ENV: &str = "AYAFLOW_TEST_KILL9_DB";
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        kill_9_child(Path::new(&path));
        return;
    }
    let (_dir, path) = temp_db();
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            "committed_rows_survive_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child test process");
    let stdout = child.stdout.take().expect("stdout is piped");
    let committed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("ROWS_COMMITTED"));
    // Child::kill sends SIGKILL: no destructor, no checkpoint, no clean close.
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap the child");
    assert!(committed, "the child never reported its rows as written");

    // The agent's restart: open for writing (recovers the WAL), then read.
    let store = Store::open(&path).expect("reopen after the crash");
    assert_eq!(store.row_counts().expect("count").packets, 1_000);
}
