//! Store: retention and migrations

use super::*;

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
pub(crate) const SCHEMA_V1: &str = "
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
        json!([{"id": 3, "window_start": T, "window_end": T + 60, "direction": "egress", "interface": "",
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
