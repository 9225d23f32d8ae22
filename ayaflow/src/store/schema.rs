//! The history database's tables and indexes, as an append-only list of migrations keyed on
//! `PRAGMA user_version`.
//!
//! Migration `n` (1-based) moves a file from `user_version = n - 1` to `n`. Never edit a
//! migration that has shipped: append a new one, so every file on disk can be brought forward
//! step by step. [`migrate`] runs the missing steps, each in its own `BEGIN IMMEDIATE`
//! transaction together with the `user_version` bump, so a crash mid-way leaves a file at a
//! well-defined version, and two processes opening the same new file cannot both migrate it.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Every migration, oldest first. Index `i` takes a file from version `i` to `i + 1`.
///
/// # Version 5 (current)
///
/// ```text
/// tuples  id | proto src src_port dst dst_port direction interface
/// ```
///
/// A key carries the interface it was seen on (issue 19: a connection seen on a pod's veth and
/// on the uplink is two keys); `''` for rows written before. The unique index `tuples_key` and
/// both views gain the column.
///
/// # Version 4
///
/// ```text
/// id_floors  name | next_id       (the next id never to go below, per kind of row)
/// ```
///
/// The writer gives a row the id after the largest one in its table. Retention deleting every
/// row of a table would then hand out the deleted ids again, and a client paging with an old
/// `next_cursor` (or a reader holding ids between statements) would meet other rows under
/// them. Before deleting, retention records here the id the next row would get (`raw` for
/// `packet_blocks` and `packets`, `windows`, `tuples`); the writer starts at
/// `max(table, floor)`. Migration 4 records the current ids of an existing file.
///
/// The views now join with `CROSS JOIN`, which makes SQLite walk the rows and look each key up
/// by id. With a plain join, a filter on key columns (`WHERE dst_port = 53`) made it walk the
/// matching keys and scan every row for each (no index starts with `tuple_id`): over 12
/// minutes for one count on 530,000 windows.
///
/// # Version 3
///
/// ```text
/// packet_blocks      id | last_id row_count min_ts max_ts | tuple_ids     (raw rows, packed)
/// packet_block_data  id | data
/// ```
///
/// Raw rows are no longer one SQLite row each: the writer packs up to a thousand rows into a
/// block (format in `blocks/format.rs`), which costs about a tenth of a B-tree row with two index
/// inserts per row. The rows of a block have the consecutive ids `id..=last_id` (`row_count`
/// of them), so row ids and paging cursors stay as before; they continue after the largest id
/// of the version 2 `packets` table.
///
/// - `min_ts`/`max_ts`: the smallest and largest `ts_unix_ns` of the block's rows.
///   `packet_blocks_time (max_ts, min_ts, row_count)` serves retention (a block goes whole,
///   once its newest row has expired), time ranges, and `sum(row_count)` without reading
///   blocks.
/// - `tuple_ids`: the block's distinct `tuples` ids, so that key filters skip blocks without
///   decoding their rows, and the sweep of unused keys keeps the keys blocks point at.
/// - `packet_block_data` holds the packed rows of the block with the same id, in a table of
///   its own so that walking the headers reads only headers.
/// - `packets` (version 2) keeps the rows written before the migration, untouched; it gets no
///   new rows. Queries read blocks first, then these rows; retention deletes both.
/// - For `sqlite3` users: `packets_view` shows only the version 2 rows; raw rows in blocks are
///   read through `/api/history` (`tuples` and `windows_view` work as before).
///
/// # Version 2
///
/// ```text
/// tuples   id | proto src src_port dst dst_port direction          (one row per distinct key)
/// packets  id | ts_unix_ns tuple_id bucket | packets bytes tcp_flags icmp_type icmp_code flags vlan_id
/// windows  id | window_start window_end tuple_id bucket | packets bytes
/// ```
///
/// - `tuples` is the dimension table: each distinct (five-tuple, direction) once, addresses as
///   the canonical `IpAddr` display text (`10.0.0.1`, `fd00::1`) so that filters compare
///   strings exactly, `proto` as the `Protocol` display name (`TCP`, `IP-47`, `ETH-0x0806`),
///   `direction` as `ingress` or `egress`. The address, port and protocol filters run here, on
///   a table of conversations rather than of packets. `tuples_key` (unique) finds a key's id
///   when the writer inserts, and serves the `src` filter by its first column.
/// - `packets` and `windows` hold integers only and point at their key with `tuple_id`.
///   `bucket` is always `id >> BUCKET_SHIFT`: the writer assigns ids itself to fill it in.
/// - `packets_view` and `windows_view` show the rows with the columns of version 1 (key
///   inline as text), for reading the file with `sqlite3`; the store never reads them.
/// - Each big-table row costs two index inserts, both near the end of their B-tree, so the
///   pages they touch stay few and cached however large the table grows:
///   - `*_time (time, tuple_id)`: rows arrive roughly in time order. It serves retention and
///     time ranges; with `tuple_id` in it, a time range plus key filters reads the index only.
///   - `*_tuples (bucket, tuple_id)`: within the current bucket the position is random, but
///     the bucket is small (2^16 rows). The rowid that SQLite appends to every entry makes it
///     `(bucket, tuple_id, id)`: the store walks buckets newest first and stops as soon as it
///     has a page of rows, one seek per matching key and bucket.
///
/// # Version 1
///
/// `packets` and `windows` with the key columns inline as text and six single-column indexes
/// each (time, src, dst, src_port, dst_port, proto): six random-order B-tree inserts per row.
/// Migration 2 keeps every row and its id.
const MIGRATIONS: &[&str] = &[
    // 1: raw packets and aggregated windows.
    "CREATE TABLE packets (
        id          INTEGER PRIMARY KEY,
        ts_unix_ns  INTEGER NOT NULL,
        direction   TEXT    NOT NULL,
        proto       TEXT    NOT NULL,
        src         TEXT    NOT NULL,
        src_port    INTEGER NOT NULL,
        dst         TEXT    NOT NULL,
        dst_port    INTEGER NOT NULL,
        packets     INTEGER NOT NULL,
        bytes       INTEGER NOT NULL,
        tcp_flags   INTEGER NOT NULL,
        icmp_type   INTEGER NOT NULL,
        icmp_code   INTEGER NOT NULL,
        flags       INTEGER NOT NULL,
        vlan_id     INTEGER NOT NULL
    );
    CREATE INDEX packets_ts       ON packets (ts_unix_ns);
    CREATE INDEX packets_src      ON packets (src);
    CREATE INDEX packets_dst      ON packets (dst);
    CREATE INDEX packets_src_port ON packets (src_port);
    CREATE INDEX packets_dst_port ON packets (dst_port);
    CREATE INDEX packets_proto    ON packets (proto);

    CREATE TABLE windows (
        id            INTEGER PRIMARY KEY,
        window_start  INTEGER NOT NULL,
        window_end    INTEGER NOT NULL,
        proto         TEXT    NOT NULL,
        src           TEXT    NOT NULL,
        src_port      INTEGER NOT NULL,
        dst           TEXT    NOT NULL,
        dst_port      INTEGER NOT NULL,
        direction     TEXT    NOT NULL,
        packets       INTEGER NOT NULL,
        bytes         INTEGER NOT NULL
    );
    CREATE INDEX windows_start    ON windows (window_start);
    CREATE INDEX windows_src      ON windows (src);
    CREATE INDEX windows_dst      ON windows (dst);
    CREATE INDEX windows_src_port ON windows (src_port);
    CREATE INDEX windows_dst_port ON windows (dst_port);
    CREATE INDEX windows_proto    ON windows (proto);",
    // 2: conversations move to `tuples`; the big tables keep integers and two indexes each.
    // Ids are kept (they are the API's paging cursors); `16` is BUCKET_SHIFT.
    "CREATE TABLE tuples (
        id          INTEGER PRIMARY KEY,
        proto       TEXT    NOT NULL,
        src         TEXT    NOT NULL,
        src_port    INTEGER NOT NULL,
        dst         TEXT    NOT NULL,
        dst_port    INTEGER NOT NULL,
        direction   TEXT    NOT NULL
    );
    CREATE UNIQUE INDEX tuples_key ON tuples (src, dst, src_port, dst_port, proto, direction);
    CREATE INDEX tuples_dst        ON tuples (dst);
    CREATE INDEX tuples_src_port   ON tuples (src_port);
    CREATE INDEX tuples_dst_port   ON tuples (dst_port);

    INSERT INTO tuples (proto, src, src_port, dst, dst_port, direction)
        SELECT proto, src, src_port, dst, dst_port, direction FROM packets
        UNION
        SELECT proto, src, src_port, dst, dst_port, direction FROM windows;

    CREATE TABLE packets_v2 (
        id          INTEGER PRIMARY KEY,
        ts_unix_ns  INTEGER NOT NULL,
        tuple_id    INTEGER NOT NULL,
        bucket      INTEGER NOT NULL,
        packets     INTEGER NOT NULL,
        bytes       INTEGER NOT NULL,
        tcp_flags   INTEGER NOT NULL,
        icmp_type   INTEGER NOT NULL,
        icmp_code   INTEGER NOT NULL,
        flags       INTEGER NOT NULL,
        vlan_id     INTEGER NOT NULL
    );
    INSERT INTO packets_v2
        SELECT p.id, p.ts_unix_ns, t.id, p.id >> 16, p.packets, p.bytes, p.tcp_flags,
               p.icmp_type, p.icmp_code, p.flags, p.vlan_id
        FROM packets AS p JOIN tuples AS t
          ON t.src = p.src AND t.dst = p.dst AND t.src_port = p.src_port
         AND t.dst_port = p.dst_port AND t.proto = p.proto AND t.direction = p.direction
        ORDER BY p.id;
    DROP TABLE packets;
    ALTER TABLE packets_v2 RENAME TO packets;
    CREATE INDEX packets_time   ON packets (ts_unix_ns, tuple_id);
    CREATE INDEX packets_tuples ON packets (bucket, tuple_id);

    CREATE TABLE windows_v2 (
        id            INTEGER PRIMARY KEY,
        window_start  INTEGER NOT NULL,
        window_end    INTEGER NOT NULL,
        tuple_id      INTEGER NOT NULL,
        bucket        INTEGER NOT NULL,
        packets       INTEGER NOT NULL,
        bytes         INTEGER NOT NULL
    );
    INSERT INTO windows_v2
        SELECT w.id, w.window_start, w.window_end, t.id, w.id >> 16, w.packets, w.bytes
        FROM windows AS w JOIN tuples AS t
          ON t.src = w.src AND t.dst = w.dst AND t.src_port = w.src_port
         AND t.dst_port = w.dst_port AND t.proto = w.proto AND t.direction = w.direction
        ORDER BY w.id;
    DROP TABLE windows;
    ALTER TABLE windows_v2 RENAME TO windows;
    CREATE INDEX windows_time   ON windows (window_start, tuple_id);
    CREATE INDEX windows_tuples ON windows (bucket, tuple_id);

    CREATE VIEW packets_view AS
        SELECT p.id, p.ts_unix_ns, k.direction, k.proto, k.src, k.src_port, k.dst, k.dst_port,
               p.packets, p.bytes, p.tcp_flags, p.icmp_type, p.icmp_code, p.flags, p.vlan_id
        FROM packets AS p JOIN tuples AS k ON k.id = p.tuple_id;
    CREATE VIEW windows_view AS
        SELECT w.id, w.window_start, w.window_end, k.proto, k.src, k.src_port, k.dst,
               k.dst_port, k.direction, w.packets, w.bytes
        FROM windows AS w JOIN tuples AS k ON k.id = w.tuple_id;",
    // 3: new raw rows go into blocks; the version 2 `packets` rows stay where they are.
    "CREATE TABLE packet_blocks (
        id         INTEGER PRIMARY KEY,
        last_id    INTEGER NOT NULL,
        row_count  INTEGER NOT NULL,
        min_ts     INTEGER NOT NULL,
        max_ts     INTEGER NOT NULL,
        tuple_ids  BLOB    NOT NULL
    );
    CREATE INDEX packet_blocks_time ON packet_blocks (max_ts, min_ts, row_count);
    CREATE TABLE packet_block_data (
        id    INTEGER PRIMARY KEY,
        data  BLOB    NOT NULL
    );",
    // 4: ids never handed out twice, even after retention empties a table.
    "CREATE TABLE id_floors (
        name     TEXT    PRIMARY KEY,
        next_id  INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO id_floors (name, next_id) VALUES
        ('raw', max(coalesce((SELECT max(max(id, last_id)) FROM packet_blocks), 0),
                    coalesce((SELECT max(id) FROM packets), 0)) + 1),
        ('windows', coalesce((SELECT max(id) FROM windows), 0) + 1),
        ('tuples', coalesce((SELECT max(id) FROM tuples), 0) + 1);

    DROP VIEW packets_view;
    DROP VIEW windows_view;
    CREATE VIEW packets_view AS
        SELECT p.id, p.ts_unix_ns, k.direction, k.proto, k.src, k.src_port, k.dst, k.dst_port,
               p.packets, p.bytes, p.tcp_flags, p.icmp_type, p.icmp_code, p.flags, p.vlan_id
        FROM packets AS p CROSS JOIN tuples AS k ON k.id = p.tuple_id;
    CREATE VIEW windows_view AS
        SELECT w.id, w.window_start, w.window_end, k.proto, k.src, k.src_port, k.dst,
               k.dst_port, k.direction, w.packets, w.bytes
        FROM windows AS w CROSS JOIN tuples AS k ON k.id = w.tuple_id;",
    // 5: keys carry the interface they were seen on ('' for rows from before).
    "ALTER TABLE tuples ADD COLUMN interface TEXT NOT NULL DEFAULT '';
    DROP INDEX tuples_key;
    CREATE UNIQUE INDEX tuples_key
        ON tuples (src, dst, src_port, dst_port, proto, direction, interface);

    DROP VIEW packets_view;
    DROP VIEW windows_view;
    CREATE VIEW packets_view AS
        SELECT p.id, p.ts_unix_ns, k.direction, k.proto, k.src, k.src_port, k.dst, k.dst_port,
               p.packets, p.bytes, p.tcp_flags, p.icmp_type, p.icmp_code, p.flags, p.vlan_id,
               k.interface
        FROM packets AS p CROSS JOIN tuples AS k ON k.id = p.tuple_id;
    CREATE VIEW windows_view AS
        SELECT w.id, w.window_start, w.window_end, k.proto, k.src, k.src_port, k.dst,
               k.dst_port, k.direction, w.packets, w.bytes, k.interface
        FROM windows AS w CROSS JOIN tuples AS k ON k.id = w.tuple_id;",
];

/// `bucket = id >> BUCKET_SHIFT` in `packets` and `windows` (see [`MIGRATIONS`], version 2).
/// Migration 2 writes the literal `16`: changing this needs a new migration.
pub(crate) const BUCKET_SHIFT: u32 = 16;

/// The schema version this build writes and reads: the number of migrations.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Reads `PRAGMA user_version`.
pub(crate) fn user_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| StoreError::sqlite(path, "reading the schema version", e))
}

/// Brings the file up to [`SCHEMA_VERSION`], or fails with [`StoreError::NewerSchema`] if it is
/// already past it (an older agent must not write into tables it does not know).
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    migrate_to(conn, path, SCHEMA_VERSION)
}

/// Brings the file up to version `target` (at most [`SCHEMA_VERSION`]); tests use it to build
/// files as older agents left them.
pub(crate) fn migrate_to(
    conn: &mut Connection,
    path: &Path,
    target: i64,
) -> Result<(), StoreError> {
    // Cheap check first so that an up-to-date file needs no write lock at all.
    let found = user_version(conn, path)?;
    check_not_newer(found, path)?;
    if found >= target {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().take(target as usize) {
        let target = i as i64 + 1;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::sqlite(path, "starting a schema migration", e))?;
        // Re-read under the write lock: another process may have migrated meanwhile.
        let current = user_version(&tx, path)?;
        check_not_newer(current, path)?;
        if current >= target {
            continue;
        }
        if found > 0 {
            // Only files that had a schema (and so may hold rows) are slow to migrate
            // (migration 2: about 6 s per million rows). A new file is created: its steps
            // are DDL on empty tables, and saying "migrating" would mislead.
            tracing::info!(
                path = %path.display(),
                from = current,
                to = target,
                "migrating the history database; this rewrites its tables and takes about a \
                 minute per ten million rows"
            );
        }
        tx.execute_batch(sql)
            .map_err(|e| StoreError::sqlite(path, "creating tables and indexes", e))?;
        // `user_version` lives in the file header, so this bump commits or rolls back together
        // with the migration's DDL.
        tx.pragma_update(None, "user_version", target)
            .map_err(|e| StoreError::sqlite(path, "recording the schema version", e))?;
        tx.commit()
            .map_err(|e| StoreError::sqlite(path, "committing a schema migration", e))?;
        tracing::debug!(path = %path.display(), version = target, "migrated the history database");
    }
    if found == 0 {
        tracing::info!(
            path = %path.display(),
            version = target,
            "created the history database"
        );
    }
    Ok(())
}

fn check_not_newer(found: i64, path: &Path) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_an_empty_database_to_the_latest_version() {
        let mut conn = Connection::open_in_memory().expect("in-memory SQLite always opens");
        let path = Path::new(":memory:");
        migrate(&mut conn, path).expect("migrations apply to an empty database");
        assert_eq!(user_version(&conn, path).expect("readable"), SCHEMA_VERSION);

        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("sqlite_master is readable");
        assert_eq!(
            tables,
            [
                "id_floors",
                "packet_block_data",
                "packet_blocks",
                "packets",
                "tuples",
                "windows"
            ]
        );
        let views: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("sqlite_master is readable");
        assert_eq!(views, ["packets_view", "windows_view"]);

        // A key filter on a view walks the rows once, looking each key up by id (a plain join
        // scanned every row per matching key).
        let plan: Vec<String> = conn
            .prepare("EXPLAIN QUERY PLAN SELECT count(*) FROM windows_view WHERE dst_port = 53")
            .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(3))?.collect())
            .expect("plan");
        assert!(plan[0].starts_with("SCAN w"), "{plan:?}");
        assert!(
            plan[1].starts_with("SEARCH k") && plan[1].contains("rowid=?"),
            "{plan:?}"
        );

        // Running again is a no-op, not a "table already exists" error.
        migrate(&mut conn, path).expect("migrating twice is idempotent");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().expect("in-memory SQLite always opens");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("user_version is writable");
        let err = migrate(&mut conn, Path::new("/tmp/h.db")).expect_err("newer schema refused");
        assert!(
            matches!(err, StoreError::NewerSchema { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err:?}"
        );
    }
}
