use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

pub(super) fn packet(i: u32) -> Packet {
    Packet {
        tuple: FiveTuple {
            proto: Protocol::Tcp,
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            src_port: 40_000,
            dst: IpAddr::V6(Ipv6Addr::LOCALHOST),
            dst_port: 443,
            interface: Default::default(),
        },
        direction: Direction::Egress,
        ts_unix_ns: 1_700_000_000_000_000_000 + u64::from(i),
        packets: 1,
        bytes: 100 + i,
        tcp_flags: 0x12,
        icmp_type: 0,
        icmp_code: 0,
        flags: 1,
        vlan_id: 7,
    }
}

pub(super) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("h.db")).expect("store opens in a temp dir");
    (dir, store)
}

/// Appends `packets` to the version 2 `packets` table, one SQLite row each, as agents
/// before schema version 3 wrote them.
pub(super) fn insert_v2_packets(conn: &mut Connection, packets: &[Packet]) {
    // A file before version 4 has no `id_floors`, which the id allocation reads: an empty one
    // for this connection stands in (a TEMP table, so the file stays as old agents left it).
    let no_floors: bool = conn
        .query_row(
            "SELECT count(*) = 0 FROM sqlite_master WHERE name = 'id_floors'",
            [],
            |r| r.get(0),
        )
        .expect("sqlite_master");
    if no_floors {
        conn.execute_batch("CREATE TEMP TABLE id_floors (name TEXT PRIMARY KEY, next_id INTEGER)")
            .expect("temp id_floors");
    }
    // Nor an `interface` key column (version 5): keys go in as old agents wrote them.
    let with_interface: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('tuples') WHERE name = 'interface'",
            [],
            |r| r.get(0),
        )
        .expect("table_info");
    let tx = conn.transaction().expect("transaction");
    let old_key = |p: &Packet| -> rusqlite::Result<i64> {
        let (t, d) = (p.tuple, direction_name(p.direction));
        let (proto, src, dst) = (t.proto.to_string(), t.src.to_string(), t.dst.to_string());
        tx.execute(
            "INSERT OR IGNORE INTO tuples (src, dst, src_port, dst_port, proto, direction) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![src, dst, t.src_port, t.dst_port, proto, d],
        )?;
        tx.query_row(
            "SELECT id FROM tuples WHERE src = ?1 AND dst = ?2 AND src_port = ?3 \
             AND dst_port = ?4 AND proto = ?5 AND direction = ?6",
            rusqlite::params![src, dst, t.src_port, t.dst_port, proto, d],
            |r| r.get(0),
        )
    };
    insert_rows(
        &tx,
        "packets",
        (RAW_INSERT_COLUMNS, RAW_INSERT_VALUES),
        packets,
        |p| match with_interface {
            true => tuple_row_id(&tx, &(p.tuple, p.direction)),
            false => old_key(p),
        },
        bind_packet,
    )
    .expect("version 2 rows");
    tx.commit().expect("commit");
    if no_floors {
        conn.execute_batch("DROP TABLE temp.id_floors")
            .expect("drop temp id_floors");
    }
}

#[test]
fn raw_rows_round_trip_every_field() {
    let (_dir, mut store) = temp_store();
    let p = packet(5);
    store.insert_packets(&[p]).expect("insert");
    let page = store
        .query_history(&HistoryQuery::default())
        .expect("query");
    assert_eq!(page.rows.len(), 1);
    match page.rows[0] {
        HistoryRow::Raw(r) => assert_eq!(r.packet, p),
        other => panic!("expected a raw row, got {other:?}"),
    }
    assert_eq!(page.next_cursor, None);
}

#[test]
fn timestamps_beyond_i64_are_clamped_not_rejected() {
    let (_dir, mut store) = temp_store();
    let mut p = packet(0);
    p.ts_unix_ns = u64::MAX;
    store.insert_packets(&[p]).expect("insert");
    let page = store
        .query_history(&HistoryQuery::default())
        .expect("query");
    match page.rows[0] {
        HistoryRow::Raw(r) => assert_eq!(r.packet.ts_unix_ns, i64::MAX as u64),
        other => panic!("expected a raw row, got {other:?}"),
    }
}

#[test]
fn garbage_in_the_file_is_reported_with_the_row() {
    let (_dir, mut store) = temp_store();
    store.insert_packets(&[packet(0)]).expect("insert");
    store
        .conn
        .execute("UPDATE tuples SET src = 'not-an-ip'", [])
        .expect("update");
    let err = store
        .query_history(&HistoryQuery::default())
        .expect_err("bad row");
    assert!(matches!(err, StoreError::BadRow { id: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("\"not-an-ip\""), "{err}");
}

#[test]
fn every_filter_combination_is_valid_sql() {
    let (_dir, mut store) = temp_store();
    store.insert_packets(&[packet(1)]).expect("insert");
    for kind in [HistoryKind::Raw, HistoryKind::Aggregated] {
        for mask in 0u16..256 {
            let on = |bit: u16| mask & (1 << bit) != 0;
            let q = HistoryQuery {
                kind,
                limit: 10,
                before_id: on(0).then_some(i64::MAX),
                from_unix_s: on(1).then_some(0),
                to_unix_s: on(2).then_some(i64::MAX),
                addr: on(3).then_some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
                port: on(4).then_some(443),
                proto: on(5).then_some(Protocol::Tcp),
                direction: on(6).then_some(Direction::Egress),
                // The fixtures' rows have no interface name.
                interface: on(7).then(String::new),
            };
            let page = store.query_history(&q).expect("every combination runs");
            let want = usize::from(kind == HistoryKind::Raw);
            assert_eq!(page.rows.len(), want, "{q:?}");
        }
    }
}

/// Rows over three buckets, 840 keys, times slightly out of order.
fn spread_packet(i: u64) -> Packet {
    let host = (i % 7) as u8;
    let (src, dst) = if i.is_multiple_of(5) {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, host.into())),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 1, (i % 3) as u8)),
        )
    };
    let late = if i.is_multiple_of(17) {
        3 * NANOS_PER_SEC
    } else {
        0
    };
    Packet {
        tuple: FiveTuple {
            proto: [Protocol::Tcp, Protocol::Udp, Protocol::Icmp][(i % 3) as usize],
            src,
            src_port: 1000 + (i % 8) as u16,
            dst,
            dst_port: [443, 53, 1003, 80][(i % 4) as usize],
            interface: Default::default(),
        },
        direction: if i.is_multiple_of(2) {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        ts_unix_ns: 1_700_000_000 * NANOS_PER_SEC + i * 10_000_000 - late,
        ..packet(0)
    }
}

#[test]
fn every_plan_finds_exactly_the_matching_rows() {
    let (_dir, mut store) = temp_store();
    let n = 140_000u64;
    let all: Vec<Packet> = (0..n).map(spread_packet).collect();
    // Ids 1..=70,000 in the version 2 table (as if migrated), the rest in blocks.
    let (v2, packed) = all.split_at(70_000);
    insert_v2_packets(&mut store.conn, v2);
    for chunk in packed.chunks(50_000) {
        store.insert_packets(chunk).expect("insert");
    }
    let windows: Vec<WindowRow> = all[..70_000]
        .iter()
        .enumerate()
        .map(|(i, p)| WindowRow {
            window_start_unix: 1_700_000_000 + (i as i64 / 1000) * 10 - i64::from(i % 13 == 0),
            window_end_unix: 1_700_000_010 + (i as i64 / 1000) * 10,
            tuple: p.tuple,
            direction: p.direction,
            packets: 1,
            bytes: 1,
        })
        .collect();
    store.insert_windows(&windows).expect("insert windows");
    let ten = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
    let six = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5));
    let base = 1_700_000_000i64;
    let mut queries = Vec::new();
    for kind in [HistoryKind::Raw, HistoryKind::Aggregated] {
        for limit in [1u32, 100, 5_000] {
            for before_id in [None, Some(100_000), Some(70_001), Some(3)] {
                for (from_unix_s, to_unix_s) in [
                    (None, None),
                    (Some(base + 300), Some(base + 310)),
                    (Some(base + 100), None),
                    (None, Some(base + 1)),
                ] {
                    for (addr, port, proto, direction) in [
                        (None, None, None, None),
                        (Some(ten), None, None, None),
                        (Some(six), Some(1003), Some(Protocol::Udp), None),
                        (None, Some(443), None, Some(Direction::Egress)),
                        (None, None, Some(Protocol::Tcp), None),
                        (Some(ten), Some(9), None, None),
                    ] {
                        queries.push(HistoryQuery {
                            kind,
                            limit,
                            before_id,
                            from_unix_s,
                            to_unix_s,
                            addr,
                            port,
                            proto,
                            direction,
                            interface: None,
                        });
                    }
                }
            }
        }
    }
    for q in &queries {
        let want = q.limit as usize + 1;
        // `time` in the unit of the query's bounds times `scale`.
        let in_range = |time: i64, scale: i64| {
            q.from_unix_s.is_none_or(|f| time >= f * scale)
                && q.to_unix_s.is_none_or(|t| time < t * scale)
        };
        let matches = |id: i64, tuple: &FiveTuple, direction: Direction| {
            q.before_id.is_none_or(|b| id < b)
                && q.addr.is_none_or(|a| tuple.src == a || tuple.dst == a)
                && q.port
                    .is_none_or(|p| tuple.src_port == p || tuple.dst_port == p)
                && q.proto.is_none_or(|p| tuple.proto == p)
                && q.direction.is_none_or(|d| direction == d)
        };
        let (table, mut expected): (Table, Vec<i64>) = match q.kind {
            HistoryKind::Raw => (
                PACKETS,
                (1..)
                    .zip(&all)
                    .filter(|(id, p)| {
                        in_range(p.ts_unix_ns as i64, NANOS_PER_SEC as i64)
                            && matches(*id, &p.tuple, p.direction)
                    })
                    .map(|(id, _)| id)
                    .collect(),
            ),
            HistoryKind::Aggregated => (
                WINDOWS,
                (1..)
                    .zip(&windows)
                    .filter(|(id, w)| {
                        in_range(w.window_start_unix, 1) && matches(*id, &w.tuple, w.direction)
                    })
                    .map(|(id, _)| id)
                    .collect(),
            ),
        };
        expected.reverse();
        // The whole query: blocks, then the version 2 rows.
        let page = store.query_history(q).expect("query runs");
        let got: Vec<i64> = page.rows.iter().map(HistoryRow::id).collect();
        let limit = q.limit as usize;
        assert_eq!(got, expected[..expected.len().min(limit)], "{q:?}");
        assert_eq!(page.next_cursor.is_some(), expected.len() > limit, "{q:?}");
        // The plans over the version 2 rows alone.
        if q.kind == HistoryKind::Raw {
            expected.retain(|&id| id <= 70_000);
        }
        expected.truncate(want);
        let has_time = q.from_unix_s.is_some() || q.to_unix_s.is_some();
        let has_keys =
            q.addr.is_some() || q.port.is_some() || q.proto.is_some() || q.direction.is_some();
        for plan in [None, Some(Plan::Ids), Some(Plan::Time), Some(Plan::Buckets)] {
            if (plan == Some(Plan::Time) && !has_time) || (plan == Some(Plan::Buckets) && !has_keys)
            {
                continue;
            }
            let got = store
                .matching_ids(table, q, want, plan)
                .expect("query runs");
            assert_eq!(got, expected, "{plan:?} {q:?}");
        }
    }
}

#[test]
fn retention_sweeps_keys_no_row_uses_and_the_writer_recreates_them() {
    let (_dir, mut store) = temp_store();
    let old = packet(0);
    let mut new = packet(10);
    new.tuple.dst_port = 80;
    new.ts_unix_ns += 3600 * NANOS_PER_SEC;
    // Two blocks, an hour apart: retention frees whole blocks.
    store.insert_packets(&[old]).expect("insert");
    store.insert_packets(&[new]).expect("insert");
    let keys = |store: &Store| -> i64 {
        store
            .conn
            .query_row("SELECT count(*) FROM tuples", [], |r| r.get(0))
            .expect("count")
    };
    assert_eq!(keys(&store), 2);
    // Below the growth threshold retention leaves `tuples` alone.
    assert_eq!(
        store
            .delete_older_than(old.ts_unix_ns + 1, 10)
            .expect("rows"),
        1
    );
    assert_eq!(keys(&store), 2);
    store.tuples.created_since_sweep = MIN_TUPLES_BEFORE_SWEEP;
    assert_eq!(
        store
            .delete_older_than(old.ts_unix_ns + 1, 10)
            .expect("rows"),
        0
    );
    assert_eq!(keys(&store), 2, "no row deleted, no sweep");
    store.insert_packets(&[old]).expect("insert");
    assert_eq!(
        store
            .delete_older_than(old.ts_unix_ns + 1, 10)
            .expect("rows"),
        1
    );
    assert_eq!(
        keys(&store),
        1,
        "the old key went with its last row, the new key (in a block only) stays"
    );
    assert_eq!(store.tuples.ids.len(), 1);
    assert_eq!(store.tuples.kept_by_sweep, 1);
    // Writing the old key again creates it again.
    store.insert_packets(&[old]).expect("insert");
    assert_eq!(keys(&store), 2);
    let rows: Vec<Packet> = store
        .query_history(&HistoryQuery::default())
        .expect("query")
        .rows
        .into_iter()
        .map(|r| match r {
            HistoryRow::Raw(r) => r.packet,
            other => panic!("expected raw rows, got {other:?}"),
        })
        .collect();
    assert_eq!(rows, [old, new]);
}

#[test]
fn a_failed_batch_leaves_no_key_ids_behind() {
    let (_dir, mut store) = temp_store();
    store.insert_packets(&[packet(0)]).expect("insert");
    store.set_max_bytes(Some(1)).expect("cap");
    let many: Vec<Packet> = (0..5_000)
        .map(|i| {
            let mut p = packet(i);
            p.tuple.src_port = i as u16;
            p
        })
        .collect();
    store.insert_packets(&many).expect_err("no room");
    assert_eq!(
        store.tuples.ids.len(),
        1,
        "keys of the rolled-back batch not kept"
    );
    store.set_max_bytes(None).expect("uncap");
    store.insert_packets(&many).expect("room again");
    let page = store
        .query_history(&HistoryQuery {
            port: Some(4_999),
            ..HistoryQuery::default()
        })
        .expect("query");
    assert_eq!(page.rows.len(), 1);
}

/// The number of `tuples` rows.
fn tuple_rows(store: &Store) -> usize {
    let n: i64 = store
        .conn
        .query_row("SELECT count(*) FROM tuples", [], |r| r.get(0))
        .expect("count tuples");
    n as usize
}

/// Packet `i` of conversation `i % keys`: IPv4 and IPv6, one port per conversation.
fn keyed_packet(i: u32, keys: u32) -> Packet {
    let mut p = packet(i);
    let k = i % keys;
    p.tuple.src_port = k as u16;
    if k % 2 == 1 {
        p.tuple.src = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7));
    }
    p
}

/// Every raw row of the store, oldest first.
fn all_raw_rows(store: &Store) -> Vec<Packet> {
    let mut rows = Vec::new();
    let mut before_id = None;
    loop {
        let page = store
            .query_history(&HistoryQuery {
                limit: MAX_HISTORY_LIMIT,
                before_id,
                ..HistoryQuery::default()
            })
            .expect("query");
        rows.extend(page.rows.iter().map(|r| match r {
            HistoryRow::Raw(r) => r.packet,
            HistoryRow::Aggregated(_) => panic!("raw rows only"),
        }));
        match page.next_cursor {
            Some(c) => before_id = Some(c),
            None => break,
        }
    }
    rows.reverse();
    rows
}

#[test]
fn a_reopened_store_knows_every_key_and_stores_each_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("h.db");
    // 1,000 conversations, then 3,000 with those 1,000 among them.
    let first: Vec<Packet> = (0..2_000).map(|i| keyed_packet(i, 1_000)).collect();
    let more: Vec<Packet> = (2_000..8_000).map(|i| keyed_packet(i, 3_000)).collect();
    {
        let mut store = Store::open(&path).expect("open");
        assert!(store.tuples.complete, "a new file's keys are all known");
        store.insert_packets(&first).expect("insert");
        assert_eq!(tuple_rows(&store), 1_000);
    }
    let reader = Store::open_read_only(&path).expect("open for reading");
    assert!(
        reader.tuples.ids.is_empty(),
        "a reader does not read the keys"
    );
    let mut store = Store::open(&path).expect("reopen");
    assert!(store.tuples.complete);
    assert_eq!(store.tuples.ids.len(), 1_000, "every key read at open");
    store.insert_packets(&more).expect("insert");
    assert_eq!(tuple_rows(&store), 3_000, "only the new keys became rows");
    let written: Vec<Packet> = first.iter().chain(&more).copied().collect();
    assert_eq!(
        all_raw_rows(&store),
        written,
        "every row reads back with its key"
    );
}

#[test]
fn a_key_another_writer_added_is_looked_up_not_added_twice() {
    let (_dir, mut store) = temp_store();
    store.insert_packets(&[packet(0)]).expect("insert");
    // Another connection to the same file adds the key of packet(1) behind the writer's
    // back: the writer's map no longer holds every key.
    let other = Connection::open(&store.path).expect("second connection");
    let p = keyed_packet(1, 2);
    let outside_id = tuple_row_id(&other, &(p.tuple, p.direction)).expect("outside insert");
    drop(other);
    store
        .insert_packets(&[p])
        .expect("insert after the outside key");
    assert!(!store.tuples.complete, "falls back to looking keys up");
    assert_eq!(
        store.tuples.ids.get(&(p.tuple, p.direction)),
        Some(&outside_id)
    );
    assert_eq!(tuple_rows(&store), 2);
}

#[test]
fn size_cap_fails_as_full_and_lifting_it_recovers() {
    let (_dir, mut store) = temp_store();
    store.insert_packets(&[packet(0)]).expect("insert");
    store.set_max_bytes(Some(1)).expect("cap");
    let many: Vec<Packet> = (0..5_000).map(packet).collect();
    let err = store.insert_packets(&many).expect_err("no room");
    assert_eq!(err.kind(), ErrorKind::Full, "{err}");
    store.set_max_bytes(None).expect("uncap");
    store.insert_packets(&many).expect("room again");
    assert_eq!(store.row_counts().expect("count").packets, 5_001);
}

#[test]
fn notices_removal_of_its_file() {
    let (dir, store) = temp_store();
    assert!(!store.is_replaced());
    fs::remove_file(dir.path().join("h.db")).expect("remove");
    assert!(store.is_replaced());
}

#[test]
fn history_kind_parses_api_names() {
    assert_eq!(HistoryKind::parse("raw"), Some(HistoryKind::Raw));
    assert_eq!(
        HistoryKind::parse("aggregated"),
        Some(HistoryKind::Aggregated)
    );
    assert_eq!(HistoryKind::parse("flows"), None);
}
