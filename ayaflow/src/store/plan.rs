//! The history query planner: which of three plans answers a query fastest, and reading the
//! rows it finds.

use super::*;

/// Rows [`Store::query_history`] tests one by one against their keys before it reads the list
/// of matching keys (see `matching_ids`): about half a millisecond.
pub(super) const PROBE_ROWS: i64 = 1024;

/// Key columns read back from `tuples` (aliased `k`), after the row's own columns.
pub(super) const KEY_COLUMNS: &str =
    "k.direction, k.proto, k.src, k.src_port, k.dst, k.dst_port, k.interface";

pub(super) const RAW_COLUMNS: &str = "r.id, r.tuple_id, r.ts_unix_ns, r.packets, r.bytes, r.tcp_flags, \
     r.icmp_type, r.icmp_code, r.flags, r.vlan_id";

pub(super) const WINDOW_COLUMNS: &str =
    "r.id, r.tuple_id, r.window_start, r.window_end, r.packets, r.bytes";

/// The two history tables, as query plans see them.
#[derive(Clone, Copy)]
pub(super) struct Table {
    pub(super) name: &'static str,
    /// Time column: nanoseconds (raw) or seconds (window start).
    pub(super) time: &'static str,
    /// Index `(time, tuple_id)`.
    pub(super) time_index: &'static str,
    /// Index `(bucket, tuple_id)`.
    pub(super) tuples_index: &'static str,
}

pub(super) const PACKETS: Table = Table {
    name: "packets",
    time: "ts_unix_ns",
    time_index: "packets_time",
    tuples_index: "packets_tuples",
};

pub(super) const WINDOWS: Table = Table {
    name: "windows",
    time: "window_start",
    time_index: "windows_time",
    tuples_index: "windows_tuples",
};

/// How [`Store::query_history`] finds row ids; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// Walk the time index over the range, collect ids, keep the newest.
    Time,
    /// Walk `(bucket, tuple_id)` bucket by bucket, newest first, one seek per matching key.
    Buckets,
    /// Walk the table by id, newest first, testing every row.
    Ids,
}

/// The key filters of `q` as SQL conditions on `tuples` columns (prefixed with `prefix`, e.g.
/// `k.`), each starting with ` AND `, numbering parameters from `?first`; `None` if `q` has no
/// key filter. Fixed fragments only; the values are returned to be bound.
pub(super) fn key_conditions(
    q: &HistoryQuery,
    prefix: &str,
    first: usize,
) -> Option<(String, Vec<Value>)> {
    if q.addr.is_none()
        && q.port.is_none()
        && q.proto.is_none()
        && q.direction.is_none()
        && q.interface.is_none()
    {
        return None;
    }
    let mut sql = String::new();
    let mut args: Vec<Value> = Vec::new();
    let mut bind = |fragment: &str, v: Value| {
        // `?N` lets a fragment use its value twice (src OR dst).
        let n = format!("?{}", first + args.len());
        args.push(v);
        sql.push_str(&fragment.replace("?N", &n).replace("$.", prefix));
    };
    if let Some(addr) = q.addr {
        bind(
            " AND ($.src = ?N OR $.dst = ?N)",
            Value::Text(addr.to_string()),
        );
    }
    if let Some(port) = q.port {
        bind(
            " AND ($.src_port = ?N OR $.dst_port = ?N)",
            Value::Integer(port.into()),
        );
    }
    if let Some(proto) = q.proto {
        bind(" AND $.proto = ?N", Value::Text(proto.to_string()));
    }
    if let Some(d) = q.direction {
        bind(
            " AND $.direction = ?N",
            Value::Text(direction_name(d).to_owned()),
        );
    }
    if let Some(i) = &q.interface {
        bind(" AND $.interface = ?N", Value::Text(i.clone()));
    }
    Some((sql, args))
}

impl Store {
    /// Runs a history query: the newest `limit` rows matching every filter, below the cursor.
    ///
    /// The SQL is assembled from fixed fragments only; every value is a bound parameter. The
    /// plan (see the module docs) only changes how fast the page comes, never which rows.
    ///
    /// Its statements (blocks, then ids, then the rows and their keys) run in one read
    /// transaction, so they all see the file as it was at the first: retention deleting rows
    /// or keys in between cannot drop rows from the page or pair a row with another key.
    pub fn query_history(&self, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.query_history_between(q, || {})
    }

    /// [`Store::query_history`], calling `between` after the ids of the rows are found and
    /// before the rows are read: tests write there, as another connection could.
    pub(super) fn query_history_between(
        &self,
        q: &HistoryQuery,
        between: impl FnOnce(),
    ) -> Result<HistoryPage, StoreError> {
        let err = |e| StoreError::sqlite(&self.path, "querying history", e);
        // DEFERRED: the snapshot is taken at the first read and held until the end (WAL mode:
        // the writer goes on meanwhile). Dropped without commit on error: a rollback, which for
        // a read transaction only ends it. Inside a caller's transaction, that one is the
        // snapshot.
        let tx = match self.conn.is_autocommit() {
            true => Some(self.conn.unchecked_transaction().map_err(err)?),
            false => None,
        };
        let table = match q.kind {
            HistoryKind::Raw => PACKETS,
            HistoryKind::Aggregated => WINDOWS,
        };
        let limit = q.limit.clamp(1, MAX_HISTORY_LIMIT) as usize;
        // One row more than asked tells whether another page exists.
        let want = limit + 1;
        let mut rows: Vec<HistoryRow> = match q.kind {
            HistoryKind::Raw => self
                .query_blocks(q, want)?
                .into_iter()
                .map(HistoryRow::Raw)
                .collect(),
            HistoryKind::Aggregated => Vec::new(),
        };
        // Version 2 raw rows (ids below every block's) and windows.
        if rows.len() < want {
            let ids = self
                .matching_ids(table, q, want - rows.len(), None)
                .map_err(err)?;
            between();
            rows.extend(self.read_rows(q.kind, &ids)?);
        } else {
            between();
        }
        if let Some(tx) = tx {
            tx.commit().map_err(err)?;
        }
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(HistoryRow::id)
        } else {
            None
        };
        Ok(HistoryPage { rows, next_cursor })
    }

    /// The ids of the newest `want` rows of `table` that match `q`, newest first.
    ///
    /// With key filters but no time range it first tests the newest [`PROBE_ROWS`] rows below
    /// the cursor against their keys: a filter that matches many keys (a protocol, a common
    /// port) fills the page there, before the list of matching keys is even read. `force` skips
    /// that and overrides the plan (tests compare them); the time plan needs a time filter,
    /// the bucket plan a key filter.
    pub(super) fn matching_ids(
        &self,
        table: Table,
        q: &HistoryQuery,
        want: usize,
        force: Option<Plan>,
    ) -> rusqlite::Result<Vec<i64>> {
        let has_time = q.from_unix_s.is_some() || q.to_unix_s.is_some();
        let Some((keys_sql, key_args)) = key_conditions(q, "k.", 4) else {
            return self.planned_ids(table, q, want, force);
        };
        if force.is_some() || has_time {
            return self.planned_ids(table, q, want, force);
        }
        let Some((_, max_id)) = self.id_bounds(table)? else {
            return Ok(Vec::new());
        };
        // Ids in [floor, top) are tested here, the rest by a plan.
        let top = q
            .before_id
            .unwrap_or(i64::MAX)
            .min(max_id.saturating_add(1));
        let floor = top.saturating_sub(PROBE_ROWS);
        // CROSS JOIN keeps `r` the outer loop: walk ids down, look each key up.
        let sql = format!(
            "SELECT r.id FROM {} AS r NOT INDEXED CROSS JOIN tuples AS k ON k.id = r.tuple_id \
             WHERE r.id < ?2 AND r.id >= ?3{keys_sql} ORDER BY r.id DESC LIMIT ?1",
            table.name
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut args = vec![
            Value::Integer(want as i64),
            Value::Integer(top),
            Value::Integer(floor),
        ];
        args.extend(key_args);
        let mut ids = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        if ids.len() < want {
            let older = HistoryQuery {
                before_id: Some(floor),
                ..q.clone()
            };
            ids.extend(self.planned_ids(table, &older, want - ids.len(), None)?);
        }
        Ok(ids)
    }

    /// [`Store::matching_ids`] through one of the plans, chosen by cost unless `force`d.
    pub(super) fn planned_ids(
        &self,
        table: Table,
        q: &HistoryQuery,
        want: usize,
        force: Option<Plan>,
    ) -> rusqlite::Result<Vec<i64>> {
        // Raw rows are filtered on nanoseconds, windows on seconds.
        let time = |s: i64| match q.kind {
            HistoryKind::Raw => s.saturating_mul(NANOS_PER_SEC as i64),
            HistoryKind::Aggregated => s,
        };
        let from = q.from_unix_s.map(time).unwrap_or(i64::MIN);
        let to = q.to_unix_s.map(time).unwrap_or(i64::MAX);
        let has_time = q.from_unix_s.is_some() || q.to_unix_s.is_some();
        let before = q.before_id.unwrap_or(i64::MAX);
        let Some((min_id, max_id)) = self.id_bounds(table)? else {
            return Ok(Vec::new());
        };
        let keys = self.matching_tuples(q)?;
        if keys.as_ref().is_some_and(Vec::is_empty) || from >= to || before <= min_id {
            return Ok(Vec::new());
        }
        let rows = (max_id - min_id).saturating_add(1);
        let in_range = if has_time {
            self.rows_in_time_range(table, from, to, min_id, max_id)?
        } else {
            rows
        };
        let plan = match &keys {
            _ if let Some(plan) = force => plan,
            _ if has_time && in_range.saturating_mul(4) <= rows => Plan::Time,
            None => Plan::Ids,
            Some(keys) => {
                // Buckets cost about one seek per key and bucket until `want` rows are found:
                // (want / matches per bucket) * keys = want * all keys / bucket size, at least
                // `keys`. Walking ids costs `want * all keys / keys` rows. Both assume rows
                // spread evenly over the keys.
                let all_keys = self.tuple_count_estimate()?.max(1);
                let m = keys.len() as i64;
                let ids_cost = (want as i64).saturating_mul(all_keys) / m;
                let bucket_cost =
                    ((want as i64).saturating_mul(all_keys) >> schema::BUCKET_SHIFT).max(m);
                if ids_cost < bucket_cost {
                    Plan::Ids
                } else {
                    Plan::Buckets
                }
            }
        };
        let keys: Option<Array> =
            keys.map(|k| Rc::new(k.into_iter().map(Value::Integer).collect()));
        // Row filters as SQL fragments on ?1 (cursor), ?2 (from), ?3 (to), ?4 (keys), bound
        // only when present so that a missing bound compares nothing (rows clamped to
        // i64::MAX stay visible without a `to`).
        let (t, tc) = (table.name, table.time);
        let mut filters = String::from("id < ?1");
        if q.from_unix_s.is_some() {
            filters.push_str(&format!(" AND {tc} >= ?2"));
        }
        if q.to_unix_s.is_some() {
            filters.push_str(&format!(" AND {tc} < ?3"));
        }
        let bind = |stmt: &mut Statement<'_>| -> rusqlite::Result<()> {
            stmt.raw_bind_parameter(1, before)?;
            if q.from_unix_s.is_some() {
                stmt.raw_bind_parameter(2, from)?;
            }
            if q.to_unix_s.is_some() {
                stmt.raw_bind_parameter(3, to)?;
            }
            if let Some(k) = &keys {
                stmt.raw_bind_parameter(4, k.clone())?;
            }
            Ok(())
        };
        let read_ids = |stmt: &mut Statement<'_>| -> rusqlite::Result<Vec<i64>> {
            let mut rows = stmt.raw_query();
            let mut ids = Vec::new();
            while let Some(r) = rows.next()? {
                ids.push(r.get(0)?);
            }
            Ok(ids)
        };
        match plan {
            Plan::Time | Plan::Ids => {
                let access = if plan == Plan::Time {
                    format!("INDEXED BY {}", table.time_index)
                } else {
                    "NOT INDEXED".to_owned()
                };
                // `+tuple_id`: test membership per row, never loop over the keys.
                let key_filter = if keys.is_some() {
                    " AND +tuple_id IN rarray(?4)"
                } else {
                    ""
                };
                let sql = format!(
                    "SELECT id FROM {t} {access} WHERE {filters}{key_filter} \
                     ORDER BY id DESC LIMIT ?5"
                );
                let mut stmt = self.conn.prepare_cached(&sql)?;
                bind(&mut stmt)?;
                stmt.raw_bind_parameter(5, want as i64)?;
                read_ids(&mut stmt)
            }
            Plan::Buckets => {
                let sql = format!(
                    "SELECT id FROM {t} INDEXED BY {} WHERE bucket = ?5 \
                     AND tuple_id IN rarray(?4) AND {filters}",
                    table.tuples_index
                );
                let mut stmt = self.conn.prepare_cached(&sql)?;
                bind(&mut stmt)?;
                let mut ids: Vec<i64> = Vec::new();
                let top = before.saturating_sub(1).min(max_id);
                let mut bucket = top >> schema::BUCKET_SHIFT;
                let last = min_id >> schema::BUCKET_SHIFT;
                // Every id of bucket b is above every id of bucket b - 1: once a bucket brings
                // the total to `want`, older buckets cannot hold anything newer.
                while bucket >= last && ids.len() < want {
                    stmt.raw_bind_parameter(5, bucket)?;
                    ids.extend(read_ids(&mut stmt)?);
                    bucket -= 1;
                }
                ids.sort_unstable_by(|a, b| b.cmp(a));
                ids.truncate(want);
                Ok(ids)
            }
        }
    }

    /// Smallest and largest id of `table`, or `None` if it is empty.
    pub(super) fn id_bounds(&self, table: Table) -> rusqlite::Result<Option<(i64, i64)>> {
        let t = table.name;
        let min: Option<i64> = self
            .conn
            .prepare_cached(&format!("SELECT min(id) FROM {t}"))?
            .query_row([], |r| r.get(0))?;
        let max: Option<i64> = self
            .conn
            .prepare_cached(&format!("SELECT max(id) FROM {t}"))?
            .query_row([], |r| r.get(0))?;
        Ok(min.zip(max))
    }

    /// About how many rows of `table` lie in `[from, to)`: the id span between the first row
    /// at or after `from` and the last before `to` in time order. Exact for rows written in
    /// time order; only used to choose a plan.
    pub(super) fn rows_in_time_range(
        &self,
        table: Table,
        from: i64,
        to: i64,
        min_id: i64,
        max_id: i64,
    ) -> rusqlite::Result<i64> {
        let (t, tc, ix) = (table.name, table.time, table.time_index);
        let first: Option<i64> = self
            .conn
            .prepare_cached(&format!(
                "SELECT id FROM {t} INDEXED BY {ix} WHERE {tc} >= ?1 ORDER BY {tc} LIMIT 1"
            ))?
            .query_row([from], |r| r.get(0))
            .optional()?;
        let last: Option<i64> = self
            .conn
            .prepare_cached(&format!(
                "SELECT id FROM {t} INDEXED BY {ix} WHERE {tc} < ?1 ORDER BY {tc} DESC LIMIT 1"
            ))?
            .query_row([to], |r| r.get(0))
            .optional()?;
        let (first, last) = (first.unwrap_or(max_id), last.unwrap_or(min_id));
        Ok((last - first).saturating_add(1).max(0))
    }

    /// An upper bound of the number of keys in `tuples` (its largest id), cheap to read.
    pub(super) fn tuple_count_estimate(&self) -> rusqlite::Result<i64> {
        let n: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(id) FROM tuples")?
            .query_row([], |r| r.get(0))?;
        Ok(n.unwrap_or(0))
    }

    /// The `tuples` ids that pass the key filters of `q` (address, port, protocol, direction),
    /// ascending; `None` if `q` has no key filter.
    pub(super) fn matching_tuples(&self, q: &HistoryQuery) -> rusqlite::Result<Option<Vec<i64>>> {
        let Some((conditions, args)) = key_conditions(q, "", 1) else {
            return Ok(None);
        };
        let mut sql = format!("SELECT id FROM tuples WHERE 1 = 1{conditions}");
        sql.push_str(" ORDER BY id");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let ids = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        Ok(Some(ids))
    }

    /// Reads the rows with these ids, joined to their keys, in the order given.
    pub(super) fn read_rows(
        &self,
        kind: HistoryKind,
        ids: &[i64],
    ) -> Result<Vec<HistoryRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e| StoreError::sqlite(&self.path, "querying history", e);
        let (table, columns) = match kind {
            HistoryKind::Raw => ("packets", RAW_COLUMNS),
            HistoryKind::Aggregated => ("windows", WINDOW_COLUMNS),
        };
        let list: Array = Rc::new(ids.iter().copied().map(Value::Integer).collect());
        let sql = format!(
            "SELECT {columns}, {KEY_COLUMNS} FROM {table} AS r \
             LEFT JOIN tuples AS k ON k.id = r.tuple_id \
             WHERE r.id IN rarray(?1) ORDER BY r.id DESC"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(err)?;
        match kind {
            HistoryKind::Raw => stmt
                .query_map([list], StoredRaw::read)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(err)?
                .into_iter()
                .map(|r| r.decode(&self.path).map(HistoryRow::Raw))
                .collect(),
            HistoryKind::Aggregated => stmt
                .query_map([list], StoredWindow::read)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(err)?
                .into_iter()
                .map(|r| r.decode(&self.path).map(HistoryRow::Aggregated))
                .collect(),
        }
    }
}
