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
        interface: Default::default(),
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

mod budget;
mod faults;
mod filters;
mod retention;
mod round_trip;
mod writer;
