use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use super::*;
use crate::{
    flow::Protocol,
    store::{
        HistoryKind, HistoryRow, MIN_TUPLES_BEFORE_SWEEP, RowCounts, schema,
        tests::insert_v2_packets,
    },
};

pub(super) const SEC: u64 = NANOS_PER_SEC;
pub(super) const T: u64 = 1_700_000_000 * SEC;

pub(super) fn packet(i: u64) -> Packet {
    Packet {
        tuple: FiveTuple {
            proto: Protocol::Udp,
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i % 3) as u8)),
            src_port: 1000 + (i % 5) as u16,
            dst: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            dst_port: 53,
            interface: Default::default(),
        },
        direction: if i.is_multiple_of(2) {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        ts_unix_ns: T + i * 1_000,
        packets: 1,
        bytes: 100 + i as u32,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        flags: 0,
        vlan_id: 0,
    }
}

pub(super) fn to_rows(packets: &[Packet], tuple_ids: &[i64]) -> Vec<Row> {
    packets
        .iter()
        .zip(tuple_ids)
        .map(|(p, &id)| Row::new(p, id))
        .collect()
}

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("h.db")).expect("store opens in a temp dir");
    (dir, store)
}

fn raw(rows: Vec<HistoryRow>) -> Vec<RawRecord> {
    rows.into_iter()
        .map(|r| match r {
            HistoryRow::Raw(r) => r,
            other => panic!("expected raw rows, got {other:?}"),
        })
        .collect()
}

/// Every page of `q`, following the cursor; ids checked newest first.
fn all_rows(store: &Store, mut q: HistoryQuery) -> Vec<RawRecord> {
    let mut out: Vec<RawRecord> = Vec::new();
    loop {
        let page = store.query_history(&q).expect("query");
        let rows = raw(page.rows);
        assert!(rows.len() <= q.limit as usize);
        out.extend(rows);
        assert!(out.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        match page.next_cursor {
            Some(c) => q.before_id = Some(c),
            None => return out,
        }
    }
}

fn blocks(store: &Store) -> Vec<(i64, i64, i64)> {
    store
        .conn
        .prepare("SELECT id, last_id, row_count FROM packet_blocks ORDER BY id")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .expect("blocks")
}

/// Extreme values of every field, IPv4, IPv6 and non-IP keys, times out of order.
pub(super) fn extremes() -> Vec<Packet> {
    let v6 = FiveTuple {
        proto: Protocol::Icmpv6,
        src: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        src_port: 0,
        dst: IpAddr::V6(Ipv6Addr::new(
            0xffff, 0xffff, 0xffff, 0xffff, 0, 0, 0, 0xffff,
        )),
        dst_port: u16::MAX,
        interface: Default::default(),
    };
    let arp = FiveTuple {
        proto: Protocol::Ether(0x0806),
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        src_port: 0,
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst_port: 0,
        interface: Default::default(),
    };
    let mut rows = Vec::new();
    for (i, ts) in [0, 1, T, T - 5, T + 3, i64::MAX as u64 - 1, i64::MAX as u64]
        .into_iter()
        .enumerate()
    {
        let mut p = packet(i as u64);
        p.ts_unix_ns = ts;
        rows.push(p);
    }
    let mut big = packet(7);
    (big.packets, big.bytes, big.vlan_id) = (u32::MAX, u32::MAX, u16::MAX);
    (big.tcp_flags, big.icmp_type, big.icmp_code, big.flags) = (255, 255, 255, 255);
    big.tuple = v6;
    rows.push(big);
    let mut zero = packet(8);
    (zero.packets, zero.bytes, zero.vlan_id) = (0, 0, 4095);
    zero.tuple = arp;
    rows.push(zero);
    let mut syn = packet(9);
    syn.tuple.proto = Protocol::Tcp;
    syn.tcp_flags = 0x02;
    syn.vlan_id = 1;
    rows.push(syn);
    rows
}

#[test]
fn every_field_round_trips_through_a_file() {
    let (_dir, mut store) = temp_store();
    let mut rows = extremes();
    store.insert_packets(&rows).expect("insert");
    let mut over = packet(10);
    over.ts_unix_ns = u64::MAX;
    store.insert_packets(&[over]).expect("insert");
    let got = all_rows(&store, HistoryQuery::default());
    // Times past i64::MAX are stored as i64::MAX, as with one SQLite row per packet.
    over.ts_unix_ns = i64::MAX as u64;
    rows.push(over);
    let mut want: Vec<(i64, Packet)> = (1..).zip(rows).collect();
    want.reverse();
    let got: Vec<(i64, Packet)> = got.into_iter().map(|r| (r.id, r.packet)).collect();
    assert_eq!(got, want);
}

#[test]
fn blocks_end_at_the_row_limit_and_the_minute_and_grow_across_batches() {
    let (_dir, mut store) = temp_store();
    // T is 20 s into its minute. 2.5 blocks' worth within a millisecond, then rows of the
    // next minute (one late by 15 s), of the one after, and of an hour before.
    let n = BLOCK_ROWS * 5 / 2;
    let mut rows: Vec<Packet> = (0..n as u64).map(packet).collect();
    for ts in [
        T + 2 * SEC,
        T + 45 * SEC,
        T + 30 * SEC,
        T + 100 * SEC,
        T - 3600 * SEC,
    ] {
        rows.push(Packet {
            ts_unix_ns: ts,
            ..packet(0)
        });
    }
    store.insert_packets(&rows).expect("insert");
    let (b, n) = (BLOCK_ROWS as i64, n as i64);
    assert_eq!(
        blocks(&store),
        [
            (1, b, b),
            (b + 1, 2 * b, b),
            (2 * b + 1, n + 1, n + 1 - 2 * b),
            (n + 2, n + 3, 2),
            (n + 4, n + 4, 1),
            (n + 5, n + 5, 1)
        ]
    );
    // A later batch in the newest block's minute goes into that block.
    let mut late = packet(0);
    late.ts_unix_ns = T - 3595 * SEC;
    store.insert_packets(&[late]).expect("insert");
    assert_eq!(blocks(&store).last(), Some(&(n + 5, n + 6, 2)));
    let total = n + 6;
    assert_eq!(store.row_counts().expect("count").packets, total as u64);
    // Paging crosses every block boundary, with and without a filter.
    for limit in [1, 7, 1000, 4096, 10_000] {
        let q = HistoryQuery {
            limit,
            ..HistoryQuery::default()
        };
        let ids: Vec<i64> = all_rows(&store, q).iter().map(|r| r.id).collect();
        assert_eq!(ids, (1..=total).rev().collect::<Vec<_>>(), "limit {limit}");
        let q = HistoryQuery {
            limit,
            direction: Some(Direction::Egress),
            port: Some(1003),
            ..HistoryQuery::default()
        };
        let got: Vec<i64> = all_rows(&store, q).iter().map(|r| r.id).collect();
        // The rows after the first n are ingress.
        let want: Vec<i64> = (1..=n)
            .rev()
            .filter(|id| (id - 1) % 2 == 1 && (id - 1) % 5 == 3)
            .collect();
        assert_eq!(got, want, "limit {limit}");
    }
    // Rows at i64::MAX ns share a block, without looping.
    let mut max = packet(0);
    max.ts_unix_ns = u64::MAX;
    store
        .insert_packets(&[max, max, packet(2)])
        .expect("insert");
    assert_eq!(
        blocks(&store)[6..],
        [(total + 1, total + 2, 2), (total + 3, total + 3, 1)]
    );
}

#[test]
fn retention_frees_whole_blocks_once_their_newest_row_expired() {
    let (_dir, mut store) = temp_store();
    // Three blocks: minutes 0, 1 (rows at 0 s and 50 s), 2.
    const MIN: u64 = 60 * SEC;
    let at = |ns: u64| Packet {
        ts_unix_ns: 28_333_333 * MIN + ns,
        ..packet(0)
    };
    store
        .insert_packets(&[at(0), at(MIN), at(MIN + 50 * SEC), at(2 * MIN)])
        .expect("insert");
    assert_eq!(blocks(&store).len(), 3);
    // Cutoff inside block 2: its first row has expired, its newest has not.
    let cutoff = at(MIN + 1).ts_unix_ns;
    assert_eq!(store.delete_older_than(cutoff, 1000).expect("delete"), 1);
    let ids: Vec<i64> = all_rows(&store, HistoryQuery::default())
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [4, 3, 2], "the straddling block stays whole");
    assert_eq!(
        store
            .delete_older_than(at(2 * MIN).ts_unix_ns, 1)
            .expect("delete"),
        2
    );
    assert_eq!(store.row_counts().expect("count").packets, 1);
    // At least one block goes per call, however small `max_rows`.
    assert_eq!(store.delete_older_than(u64::MAX, 1).expect("delete"), 1);
    assert_eq!(store.delete_older_than(u64::MAX, 1).expect("delete"), 0);
}

#[test]
fn a_corrupt_block_is_an_error_naming_it() {
    const DATA: &str = "packet_block_data SET data";
    const TUPLES: &str = "packet_blocks SET tuple_ids";
    let (_dir, mut store) = temp_store();
    store
        .insert_packets(&[packet(0), packet(1)])
        .expect("insert");
    for (column, blob, detail) in [
        (DATA, vec![1u8, 0x80], "ends inside a number"),
        (DATA, vec![2u8], "data format 2"),
        (DATA, vec![], "data is empty"),
        (
            DATA,
            vec![1, 0, 0, 100, 0, 0, 0, 100, 0, 7],
            "1 bytes after the last row",
        ),
        (
            DATA,
            vec![1, 0, 2, 100, 0, 0, 0, 100, 0],
            "tuple index 2 past",
        ),
        (
            DATA,
            vec![1, 0, 0, 100, 0x40, 0, 0, 100, 0],
            "field mask 0x40",
        ),
        (TUPLES, vec![0x80; 11], "longer than 64 bits"),
        (TUPLES, vec![0x80; 3], "ends inside a number"),
        (TUPLES, vec![5, 0], "gap 0"),
    ] {
        let tx = store.conn.unchecked_transaction().expect("tx");
        tx.execute(&format!("UPDATE {column} = ?1"), [&blob])
            .expect("damage");
        let err = store
            .query_history(&HistoryQuery::default())
            .expect_err("damaged block");
        assert!(matches!(err, StoreError::BadBlock { id: 1, .. }), "{err:?}");
        assert!(err.to_string().contains(detail), "{err}");
        drop(tx); // rolls back
    }
    store
        .conn
        .execute("UPDATE packet_blocks SET row_count = 3", [])
        .expect("damage");
    let err = store
        .query_history(&HistoryQuery::default())
        .expect_err("damaged block");
    assert!(err.to_string().contains("row_count 3"), "{err}");
    store
        .conn
        .execute_batch("UPDATE packet_blocks SET row_count = 2; DELETE FROM packet_block_data")
        .expect("damage");
    let err = store
        .query_history(&HistoryQuery::default())
        .expect_err("damaged block");
    assert!(err.to_string().contains("packed rows are missing"), "{err}");
}

#[test]
fn an_undecodable_tail_block_is_closed_and_counted_not_a_dead_end_for_inserts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("h.db");
    let mut store = Store::open(&path).expect("store opens in a temp dir");
    store
        .insert_packets(&[packet(0), packet(1)])
        .expect("insert");
    assert_eq!(store.undecodable_blocks(), 0);
    // Damage the open (newest) block on disk through a connection of its own, as a disk
    // error or another program would.
    Connection::open(&path)
        .expect("second connection")
        .execute(
            "UPDATE packet_block_data SET data = ?1 WHERE id = 1",
            [vec![0xffu8, 0xff, 0xff]],
        )
        .expect("damage");
    // Rows of the same minute would go into that block: they start a new one instead.
    let later: Vec<Packet> = (0..3)
        .map(|i| Packet {
            ts_unix_ns: T + 2 * SEC + i,
            ..packet(i)
        })
        .collect();
    store.insert_packets(&later).expect("insert after damage");
    store
        .insert_packets(&[packet(9)])
        .expect("and the next one");
    assert_eq!(store.undecodable_blocks(), 1, "counted once");
    assert_eq!(blocks(&store), [(1, 2, 2), (3, 6, 4)]);
    // The new rows read back; a query that reaches the damaged block still names it.
    let q = HistoryQuery {
        from_unix_s: Some((T / SEC) as i64 + 1),
        ..HistoryQuery::default()
    };
    let got: Vec<i64> = all_rows(&store, q).iter().map(|r| r.id).collect();
    assert_eq!(got, [5, 4, 3]);
    let err = store
        .query_history(&HistoryQuery::default())
        .expect_err("the damaged block is unreadable");
    assert!(matches!(err, StoreError::BadBlock { id: 1, .. }), "{err:?}");
}

#[test]
fn a_version_2_file_keeps_its_rows_and_new_ids_continue_after_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("h.db");
    let mut conn = Connection::open(&path).expect("open");
    schema::migrate_to(&mut conn, Path::new(&path), 2).expect("version 2");
    // Ids 1..=300 as a version 2 agent wrote them, then retention deleted 1..=10.
    let old: Vec<Packet> = (0..300).map(packet).collect();
    insert_v2_packets(&mut conn, &old);
    conn.execute("DELETE FROM packets WHERE id <= 10", [])
        .expect("retention");
    drop(conn);

    let mut store = Store::open(&path).expect("migrates to version 3");
    let new: Vec<Packet> = (300..600).map(packet).collect();
    store.insert_packets(&new).expect("insert");
    assert_eq!(blocks(&store), [(301, 600, 300)]);
    assert_eq!(
        store.row_counts().expect("count"),
        RowCounts {
            packets: 590,
            windows: 0
        }
    );
    let all: Vec<Packet> = (0..600).map(packet).collect();
    for limit in [1, 7, 100, 1000] {
        for direction in [None, Some(Direction::Ingress)] {
            for from_unix_s in [None, Some((T / SEC) as i64)] {
                let q = HistoryQuery {
                    kind: HistoryKind::Raw,
                    limit,
                    direction,
                    from_unix_s,
                    port: Some(1002),
                    ..HistoryQuery::default()
                };
                let got: Vec<(i64, Packet)> = all_rows(&store, q)
                    .into_iter()
                    .map(|r| (r.id, r.packet))
                    .collect();
                let mut want: Vec<(i64, Packet)> = (1..)
                    .zip(all.iter().copied())
                    .filter(|(id, p)| {
                        *id > 10
                            && p.tuple.src_port == 1002
                            && direction.is_none_or(|d| p.direction == d)
                    })
                    .collect();
                want.reverse();
                assert_eq!(got, want, "limit {limit}, {direction:?}, {from_unix_s:?}");
            }
        }
    }
    // Retention goes through the old rows first, then whole blocks.
    assert_eq!(
        store.delete_older_than(T + 350_000, 100).expect("delete"),
        100
    );
    assert_eq!(
        store.delete_older_than(T + 350_000, 1000).expect("delete"),
        190
    );
    assert_eq!(
        store.delete_older_than(T + 350_000, 1000).expect("delete"),
        0
    );
    // The next block starts after the last one.
    let later = Packet {
        ts_unix_ns: T + 120 * SEC,
        ..packet(700)
    };
    store.insert_packets(&[later]).expect("insert");
    assert_eq!(blocks(&store), [(301, 600, 300), (601, 601, 1)]);
    assert_eq!(
        store.delete_older_than(T + 600_000, 1).expect("delete"),
        300
    );
    assert_eq!(store.row_counts().expect("count").packets, 1);
}

#[test]
fn the_key_sweep_keeps_keys_only_blocks_point_at() {
    let (_dir, mut store) = temp_store();
    let mut gone = packet(0);
    gone.tuple.dst_port = 9;
    gone.ts_unix_ns = T - 120 * SEC;
    store.insert_packets(&[gone]).expect("insert");
    // 30 keys in one block.
    let kept: Vec<Packet> = (0..30).map(packet).collect();
    store.insert_packets(&kept).expect("insert");
    store.tuples.created_since_sweep = MIN_TUPLES_BEFORE_SWEEP;
    assert_eq!(store.delete_older_than(T, 10).expect("delete"), 1);
    let keys: i64 = store
        .conn
        .query_row("SELECT count(*) FROM tuples", [], |r| r.get(0))
        .expect("count");
    assert_eq!(
        keys, 30,
        "3 sources x 5 ports x 2 directions; the expired key gone"
    );
    let got: Vec<Packet> = all_rows(&store, HistoryQuery::default())
        .into_iter()
        .map(|r| r.packet)
        .rev()
        .collect();
    assert_eq!(got, kept);
}

/// Times the key sweep over ten million rows of 100,000 keys, one of them unused (release
/// build:
/// `cargo test --release -p ayaflow --lib sweep_cost -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check"]
fn sweep_cost() {
    let (_dir, mut store) = temp_store();
    let rows: Vec<Packet> = (0..10_000_000u64)
        .map(|i| {
            let mut p = packet(i);
            p.tuple.src_port = (i % 100_000) as u16;
            p.tuple.src = IpAddr::V4(Ipv4Addr::from(((i % 100_000) / 65_536) as u32));
            p.ts_unix_ns = T + i * 8_640_000; // 24 hours
            // The first row's key is in no other block: the sweep reads every block.
            p.tuple.dst_port = if i == 0 { 1 } else { 53 };
            p
        })
        .collect();
    for chunk in rows.chunks(50_000) {
        store.insert_packets(chunk).expect("insert");
    }
    store.tuples.created_since_sweep = u64::MAX / 2;
    let started = std::time::Instant::now();
    let n = store.delete_older_than(T + 10 * SEC, 10).expect("delete");
    eprintln!("deleted {n} rows and swept keys in {:?}", started.elapsed());
}
