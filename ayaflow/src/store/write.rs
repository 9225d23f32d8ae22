//! The write path: multi-row inserts of raw rows and windows, and the writer's cache of key
//! ids (`TupleIds`).

use super::{key_ids::KeyIds, *};

/// Rows per multi-row `INSERT` statement: one statement step instead of many amortises
/// SQLite's per-statement work (binding stays per value). The rest of a batch goes row by row.
/// Measured (3 million raw rows): 1 row per statement 280,000 rows/s, 16 rows 370,000,
/// 64 rows 400,000, 256 rows 415,000.
pub(super) const ROWS_PER_INSERT: usize = 64;

/// Most keys the writer keeps in its [`TupleIds`] map (33 bytes a bucket for an IPv4 key, 65
/// for others: `key_ids`); beyond, it starts over, and keys are looked up in `tuples` again as
/// they come. 7/8 of 2^18: what a map of 2^18 buckets holds before it doubles, so the map (kept
/// across restarts) is 8.5 MiB for IPv4 keys; one key more (2^18 keys) took 2^19 buckets.
pub(super) const MAX_CACHED_TUPLES: usize = 7 << 15;

/// A version 2 raw row's columns after `id`, in `INSERT` order (tests write such rows).
#[cfg(test)]
pub(super) const RAW_INSERT_COLUMNS: &str = "ts_unix_ns, tuple_id, bucket, packets, bytes, tcp_flags, \
     icmp_type, icmp_code, flags, vlan_id";

#[cfg(test)]
pub(super) const RAW_INSERT_VALUES: usize = 11;

/// A window row's columns after `id`, in `INSERT` order.
pub(super) const WINDOW_INSERT_COLUMNS: &str =
    "window_start, window_end, tuple_id, bucket, packets, bytes";

pub(super) const WINDOW_INSERT_VALUES: usize = 7;

/// `INSERT OR FAIL INTO {table} (id, {columns}) VALUES (...), (...)` with `rows` rows of
/// `values` placeholders each.
///
/// `OR FAIL`, not the default `ABORT`: to undo the earlier rows of a failing multi-row
/// statement, ABORT makes SQLite copy every page the statement touches into a statement
/// journal (a temporary file) first. FAIL keeps those rows instead, which is safe here because
/// every caller rolls the whole transaction back on any error.
pub(super) fn insert_sql(table: &str, columns: &str, values: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; values].join(", "));
    format!(
        "INSERT OR FAIL INTO {table} (id, {columns}) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// A key of the `tuples` table.
pub(super) type TupleKey = (FiveTuple, Direction);

/// Hashes [`TupleKey`]s: one hash per stored row, so a fast one (see Cargo.toml).
pub(super) type KeyHasher = foldhash::fast::RandomState;

/// The writer's map from key to `tuples.id`, valid for the rows committed to this file.
#[derive(Debug, Default)]
pub(super) struct TupleIds {
    pub(super) ids: KeyIds,
    /// `ids` holds every row of `tuples`, so a key missing from it is new: it is inserted
    /// without looking it up first, many keys per statement. True from the open (when
    /// `tuples` fits in [`MAX_CACHED_TUPLES`]) until the map starts over.
    pub(super) complete: bool,
    /// Keys inserted into `tuples` since the last sweep.
    pub(super) created_since_sweep: u64,
    /// Keys left in `tuples` after the last sweep.
    pub(super) kept_by_sweep: u64,
}

/// The id the next row of `table` gets: ids are assigned by the writer so that `bucket` can be
/// filled in (`bucket = id >> BUCKET_SHIFT`). Read under the write lock.
/// Appends `rows` to `table` with ids from the next free one. `columns` are the columns after
/// `id` and how many values a row binds; `bind` binds one row at a parameter offset given its id
/// and tuple id.
pub(super) fn insert_rows<T>(
    conn: &Connection,
    table: &str,
    (columns, values): (&str, usize),
    rows: &[T],
    mut tuple_id: impl FnMut(&T) -> rusqlite::Result<i64>,
    bind: fn(&mut Statement<'_>, usize, i64, i64, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut next = next_id(conn, table)?;
    insert_many(conn, table, (columns, values), rows, |stmt, at, row| {
        bind(stmt, at, next, tuple_id(row)?, row)?;
        next += 1;
        Ok(())
    })
}

/// Inserts `rows` into `table`: [`ROWS_PER_INSERT`] rows per statement, then the remainder one
/// by one. `columns` are the columns after `id` and how many values a row binds (its id
/// included); `bind` binds one row, its id first, at a parameter offset.
pub(super) fn insert_many<T>(
    conn: &Connection,
    table: &str,
    (columns, values): (&str, usize),
    rows: &[T],
    mut bind: impl FnMut(&mut Statement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut many = conn.prepare_cached(&insert_sql(table, columns, values, ROWS_PER_INSERT))?;
    let mut one = conn.prepare_cached(&insert_sql(table, columns, values, 1))?;
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    for chunk in &mut chunks {
        for (i, row) in chunk.iter().enumerate() {
            bind(&mut many, i * values, row)?;
        }
        many.raw_execute()?;
    }
    for row in chunks.remainder() {
        bind(&mut one, 0, row)?;
        one.raw_execute()?;
    }
    Ok(())
}

/// The id the next row of `table` (`windows` or `tuples`) gets: after its largest id and never
/// below the floor retention recorded before deleting (`schema.rs`, version 4), so an id is
/// never handed out twice. Read under the write lock.
pub(super) fn next_id(conn: &Connection, table: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached(&format!(
        "SELECT max(coalesce((SELECT max(id) FROM {table}), 0) + 1, \
         coalesce((SELECT next_id FROM id_floors WHERE name = '{table}'), 1))"
    ))?
    .query_row([], |r| r.get(0))
}

/// Records, before rows are deleted, the ids the next rows will get, so that deleting every
/// row of a table does not make the writer hand its ids out again ([`next_id`]).
pub(super) fn record_id_floors(conn: &Connection) -> rusqlite::Result<()> {
    let raw = blocks::next_raw_id(conn)?;
    let windows = next_id(conn, "windows")?;
    let tuples = next_id(conn, "tuples")?;
    conn.prepare_cached(
        "INSERT INTO id_floors (name, next_id) VALUES ('raw', ?1), ('windows', ?2), \
         ('tuples', ?3) ON CONFLICT (name) DO UPDATE SET next_id = max(next_id, excluded.next_id)",
    )?
    .execute(params![raw, windows, tuples])?;
    Ok(())
}

/// The `tuples` id of `key`, inserting the row if it is new.
pub(super) fn tuple_row_id(conn: &Connection, key: &TupleKey) -> rusqlite::Result<i64> {
    let (t, direction) = key;
    let (proto, src, dst) = (t.proto.to_string(), t.src.to_string(), t.dst.to_string());
    let dir = direction_name(*direction);
    let interface = t.interface.name();
    let columns = params![src, dst, t.src_port, t.dst_port, proto, dir, &*interface];
    let found = conn
        .prepare_cached(
            "SELECT id FROM tuples WHERE src = ?1 AND dst = ?2 AND src_port = ?3 \
             AND dst_port = ?4 AND proto = ?5 AND direction = ?6 AND interface = ?7",
        )?
        .query_row(columns, |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    let id = next_id(conn, "tuples")?;
    conn.prepare_cached(
        "INSERT INTO tuples (src, dst, src_port, dst_port, proto, direction, interface, id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(rusqlite::params_from_iter(
        columns.iter().copied().chain([&id as &dyn rusqlite::ToSql]),
    ))?;
    Ok(id)
}

/// Inserts new `tuples` rows with the ids given, in key order (which keeps the unique index's
/// inserts local).
pub(super) fn insert_tuples(conn: &Connection, keys: &[(TupleKey, i64)]) -> rusqlite::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<_> = keys
        .iter()
        .map(|((t, direction), id)| {
            (
                t.src.to_string(),
                t.dst.to_string(),
                t.src_port,
                t.dst_port,
                t.proto.to_string(),
                direction_name(*direction),
                *id,
                t.interface.name(),
            )
        })
        .collect();
    rows.sort_unstable();
    let columns = (
        "src, dst, src_port, dst_port, proto, direction, interface",
        8,
    );
    insert_many(conn, "tuples", columns, &rows, |stmt, at, r| {
        stmt.raw_bind_parameter(at + 1, r.6)?;
        stmt.raw_bind_parameter(at + 2, &r.0)?;
        stmt.raw_bind_parameter(at + 3, &r.1)?;
        stmt.raw_bind_parameter(at + 4, r.2)?;
        stmt.raw_bind_parameter(at + 5, r.3)?;
        stmt.raw_bind_parameter(at + 6, &r.4)?;
        stmt.raw_bind_parameter(at + 7, r.5)?;
        stmt.raw_bind_parameter(at + 8, &*r.7)
    })
}

impl TupleIds {
    /// Reads every key of `tuples` if there are at most [`MAX_CACHED_TUPLES`]: a complete map.
    /// Otherwise, or if a row cannot be read, an empty map that looks keys up as they come.
    pub(super) fn load(conn: &Connection, path: &Path) -> TupleIds {
        let read = || -> Result<Option<KeyIds>, StoreError> {
            let sql = |e| StoreError::sqlite(path, "reading conversation keys", e);
            let count: i64 = conn
                .query_row("SELECT count(*) FROM tuples", [], |r| r.get(0))
                .map_err(sql)?;
            if count > MAX_CACHED_TUPLES as i64 {
                return Ok(None);
            }
            let mut stmt = conn
                .prepare(
                    "SELECT id, direction, proto, src, src_port, dst, dst_port, interface \
                     FROM tuples",
                )
                .map_err(sql)?;
            let mut rows = stmt.query([]).map_err(sql)?;
            let mut ids = KeyIds::default();
            while let Some(r) = rows.next().map_err(sql)? {
                let id: i64 = r.get(0).map_err(sql)?;
                let key = StoredKey::read(r, id, 1)
                    .map_err(sql)?
                    .decode(&Decoder { path, id })?;
                ids.insert(key, id);
            }
            Ok(Some(ids))
        };
        match read() {
            Ok(Some(ids)) => TupleIds {
                ids,
                complete: true,
                ..TupleIds::default()
            },
            Ok(None) => TupleIds::default(),
            Err(e) => {
                tracing::warn!("conversation keys will be looked up one by one: {e}");
                TupleIds::default()
            }
        }
    }

    /// Returns true if and only if `tuples` holds as many rows as the map (and can be read).
    pub(super) fn matches_count(&self, conn: &Connection) -> bool {
        conn.query_row("SELECT count(*) FROM tuples", [], |r| r.get::<_, i64>(0))
            .is_ok_and(|n| usize::try_from(n).is_ok_and(|n| n == self.ids.len()))
    }
}

/// Binds one version 2 raw row at parameter offset `at` (0-based) of a multi-row insert.
#[cfg(test)]
pub(super) fn bind_packet(
    stmt: &mut Statement<'_>,
    at: usize,
    id: i64,
    tuple_id: i64,
    p: &Packet,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(at + 1, id)?;
    stmt.raw_bind_parameter(at + 2, clamp_i64(p.ts_unix_ns))?;
    stmt.raw_bind_parameter(at + 3, tuple_id)?;
    stmt.raw_bind_parameter(at + 4, id >> schema::BUCKET_SHIFT)?;
    stmt.raw_bind_parameter(at + 5, p.packets)?;
    stmt.raw_bind_parameter(at + 6, p.bytes)?;
    stmt.raw_bind_parameter(at + 7, p.tcp_flags)?;
    stmt.raw_bind_parameter(at + 8, p.icmp_type)?;
    stmt.raw_bind_parameter(at + 9, p.icmp_code)?;
    stmt.raw_bind_parameter(at + 10, p.flags)?;
    stmt.raw_bind_parameter(at + 11, p.vlan_id)
}

/// Binds one window row at parameter offset `at` (0-based) of a multi-row insert.
pub(super) fn bind_window(
    stmt: &mut Statement<'_>,
    at: usize,
    id: i64,
    tuple_id: i64,
    w: &WindowRow,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(at + 1, id)?;
    stmt.raw_bind_parameter(at + 2, w.window_start_unix)?;
    stmt.raw_bind_parameter(at + 3, w.window_end_unix)?;
    stmt.raw_bind_parameter(at + 4, tuple_id)?;
    stmt.raw_bind_parameter(at + 5, id >> schema::BUCKET_SHIFT)?;
    stmt.raw_bind_parameter(at + 6, clamp_i64(w.packets))?;
    stmt.raw_bind_parameter(at + 7, clamp_i64(w.bytes))
}

/// SQLite integers are i64; values beyond are stored as the maximum.
pub(super) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// How many blocks of raw rows this store found undecodable when it went to append to
    /// them (the newest block), since it was opened. The writer closes such a block and starts
    /// a new one, so inserts go on; the rows in the damaged block stay unreadable.
    pub fn undecodable_blocks(&self) -> u64 {
        self.undecodable_blocks
    }

    /// Inserts packet events (raw mode) in one transaction.
    pub fn insert_packets(&mut self, packets: &[Packet]) -> Result<(), StoreError> {
        self.insert_batch(packets, &[])
    }

    /// Inserts window rows (aggregated mode) in one transaction.
    pub fn insert_windows(&mut self, windows: &[WindowRow]) -> Result<(), StoreError> {
        self.insert_batch(&[], windows)
    }

    /// Inserts packet events and window rows in one transaction: all are stored, or none.
    ///
    /// Timestamps past `i64::MAX` nanoseconds (year 2262) are stored as `i64::MAX`, sums past
    /// `i64::MAX` likewise: SQLite integers are signed 64-bit.
    pub fn insert_batch(
        &mut self,
        packets: &[Packet],
        windows: &[WindowRow],
    ) -> Result<(), StoreError> {
        let result = self.try_insert_batch(packets, windows);
        if result.is_err() && self.tuples.complete && !self.tuples.matches_count(&self.conn) {
            // Nothing of the batch is stored, and `tuples` changed under this writer (another
            // process writes the same file): look keys up from now on, and try again.
            self.tuples.complete = false;
            return self.try_insert_batch(packets, windows);
        }
        result
    }

    pub(super) fn try_insert_batch(
        &mut self,
        packets: &[Packet],
        windows: &[WindowRow],
    ) -> Result<(), StoreError> {
        if packets.is_empty() && windows.is_empty() {
            return Ok(());
        }
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, "inserting history rows", e);
        // IMMEDIATE takes the write lock up front, so waiting for it happens in the busy handler
        // at BEGIN rather than half-way through the batch.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        // Keys this transaction created: they join the map only once it commits.
        let mut created: HashMap<TupleKey, i64, KeyHasher> = HashMap::default();
        let cached = &self.tuples.ids;
        // With a complete map, new keys get the next ids here and are inserted together after
        // the rows (in the same transaction), in key order: a key costs one row of a multi-row
        // insert rather than a lookup and an insert statement of its own.
        let complete = self.tuples.complete;
        let mut next_tuple_id = if complete {
            next_id(&tx, "tuples").map_err(err)?
        } else {
            0
        };
        let mut new_keys = Vec::new();
        let mut tuple_id = |tuple: &FiveTuple, direction: Direction| -> rusqlite::Result<i64> {
            let key = (*tuple, direction);
            if let Some(&id) = cached.get(&key).or_else(|| created.get(&key)) {
                return Ok(id);
            }
            let id = if complete {
                new_keys.push((key, next_tuple_id));
                next_tuple_id += 1;
                next_tuple_id - 1
            } else {
                tuple_row_id(&tx, &key)?
            };
            created.insert(key, id);
            Ok(id)
        };
        let closed =
            blocks::insert_blocks(&tx, path, packets, |p| tuple_id(&p.tuple, p.direction))?;
        insert_rows(
            &tx,
            "windows",
            (WINDOW_INSERT_COLUMNS, WINDOW_INSERT_VALUES),
            windows,
            |w| tuple_id(&w.tuple, w.direction),
            bind_window,
        )
        .map_err(err)?;
        insert_tuples(&tx, &new_keys).map_err(err)?;
        tx.commit().map_err(err)?;
        // Counted and logged after the commit: a rolled-back batch finds the same block again.
        // Once committed, a newer block follows it, so each damaged block is reported once.
        if let Some(e) = closed {
            self.undecodable_blocks += 1;
            tracing::warn!(
                "{e}; the writer closed that block and writes new rows into a new one, the rows \
                 in the damaged block cannot be read"
            );
        }
        let t = &mut self.tuples;
        t.created_since_sweep += created.len() as u64;
        if t.ids.len() + created.len() > MAX_CACHED_TUPLES {
            t.ids.clear();
            t.complete = false;
        }
        t.ids.extend(created);
        Ok(())
    }
}
