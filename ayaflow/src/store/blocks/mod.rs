//! Raw rows packed into blocks: the `packet_blocks` and `packet_block_data` tables (schema
//! version 3).
//!
//! The writer packs up to [`BLOCK_ROWS`] consecutive rows into one block, so a raw row costs a
//! few bytes of a blob instead of a B-tree row and two index inserts. A block's header and
//! list of keys (`packet_blocks`) are kept apart from its packed rows (`packet_block_data`,
//! same id), so that walking the headers does not read the rows. A block's rows have the
//! consecutive ids `id..=last_id`: the block's own id is the id of its first row, so row ids
//! (the API's paging cursors) stay what they were with one SQLite row per
//! packet. How the rows and keys are packed: `format.rs`.
//!
//! # Reading
//!
//! [`Store::query_blocks`] walks the blocks newest first (by id, or within the id range a time
//! index gives), skips a block by its time bounds and by its `tuple_ids` when the query has key
//! filters, decodes the blocks that may hold matches and stops at a page of rows. Only the
//! rows it returns have their key read from `tuples`.

use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
};

use rusqlite::{Connection, OptionalExtension, params, types::Value, vtab::array::Array};

use self::format::{
    BlockEncoder, PackedRow, Row, TupleIdIter, decode_rows, decode_tuple_ids, holds_any,
};
use super::{
    Decoder, HistoryQuery, KEY_COLUMNS, NANOS_PER_SEC, RawRecord, Store, StoreError, StoredKey,
    clamp_i64,
};
use crate::flow::{Direction, FiveTuple, Packet};

mod format;

/// Most rows in one block. Measured with the storage bench (10 million rows over 100,000
/// conversations, 50,000 rows per transaction; `cargo xtask bench -- --sections storage,api`):
/// 1,024 and 4,096 rows write equally fast (about 3 million rows/s, 13 bytes a row), but with
/// 4,096 a block's list of keys (about 4 KiB here) spills into overflow pages, and the query
/// that tests every block's list took 35 ms instead of 19 ms (p50).
pub(super) const BLOCK_ROWS: usize = 1024;

/// A block ends before the first row outside the minute its first row is in (or the minute
/// before, for rows that arrive late; see [`in_span`]). Retention frees whole blocks, once their
/// newest row has expired, so it keeps a row at most two minutes past its expiry. The writer
/// appends each batch to the newest block while that has room and the rows are in its minute,
/// so that a slow trickle of rows (a batch every flush interval) still fills blocks: the number
/// of blocks, which bounds what a query with rare matches reads, stays at most one per minute
/// of history or per [`BLOCK_ROWS`] rows, whichever is more.
const BLOCK_SPAN_NS: i64 = 60 * NANOS_PER_SEC as i64;

/// Returns true if and only if a row at `ts` may join a block whose first row is at `first`:
/// `ts` is in the [`BLOCK_SPAN_NS`] slice of time `first` falls in, or in the slice before
/// (events from several CPUs arrive slightly out of order; a row much older starts a block of
/// its own). No slice starts after the one of i64::MAX, the clamp of later times.
fn in_span(first: i64, ts: i64) -> bool {
    let start = first / BLOCK_SPAN_NS * BLOCK_SPAN_NS;
    ts >= start - BLOCK_SPAN_NS && start.checked_add(BLOCK_SPAN_NS).is_none_or(|end| ts < end)
}

/// How many of `rows` (from the start) go into the next block: at most [`BLOCK_ROWS`], and
/// none outside the first row's slice of time.
fn block_len(rows: &[Row]) -> usize {
    let Some(first) = rows.first() else {
        return 0;
    };
    let n = rows.len().min(BLOCK_ROWS);
    rows[..n]
        .iter()
        .position(|r| !in_span(first.ts_unix_ns, r.ts_unix_ns))
        .unwrap_or(n)
}

/// The id the next raw row gets: after the last block and after every row of the version 2
/// `packets` table, so ids keep increasing across the migration. Read under the write lock.
/// `max(id, last_id)`: a damaged `last_id` below the block's id must not make the next block
/// replace (`OR REPLACE`) the damaged one. Never below the floor retention recorded
/// (`id_floors`, see `write::next_id`).
pub(in crate::store) fn next_raw_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "SELECT max(max(coalesce((SELECT max(id, last_id) FROM packet_blocks \
         ORDER BY id DESC LIMIT 1), 0), \
         coalesce((SELECT max(id) FROM packets), 0)) + 1, \
         coalesce((SELECT next_id FROM id_floors WHERE name = 'raw'), 1))",
    )?
    .query_row([], |r| r.get(0))
}

/// Appends `packets` as blocks (see [`block_len`]) with ids from the next free one; `tuple_id`
/// gives each row's `tuples` id. The first rows go into the newest block if it has room and
/// they are in its span of time: the block is decoded and written again, longer, under the
/// same id.
///
/// If the newest block does not decode, it is left as it is (closed) and the rows start a new
/// block: otherwise every later insert would fail on it. Returns that block's error then, for
/// the caller to count and log once the rows are committed.
pub(super) fn insert_blocks(
    conn: &Connection,
    path: &std::path::Path,
    packets: &[Packet],
    mut tuple_id: impl FnMut(&Packet) -> rusqlite::Result<i64>,
) -> Result<Option<StoreError>, StoreError> {
    let err = |e| StoreError::sqlite(path, "inserting history rows", e);
    let Some(first) = packets.first() else {
        return Ok(None);
    };
    let mut next = next_raw_id(conn).map_err(err)?;
    let mut rows = Vec::with_capacity(packets.len());
    let mut closed = None;
    let tail = match open_tail(conn, path, next) {
        Ok(tail) => tail,
        Err(e @ StoreError::BadBlock { .. }) => {
            closed = Some(e);
            None
        }
        Err(e) => return Err(e),
    };
    if let Some((id, tail)) = tail
        && tail.len() < BLOCK_ROWS
        && in_span(tail[0].ts_unix_ns, clamp_i64(first.ts_unix_ns))
    {
        next = id;
        rows.extend(tail);
    }
    for p in packets {
        rows.push(Row::new(p, tuple_id(p).map_err(err)?));
    }
    // OR REPLACE: the newest block, when rows were appended to it.
    let mut insert = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO packet_blocks \
             (id, last_id, row_count, min_ts, max_ts, tuple_ids) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(err)?;
    let mut insert_data = conn
        .prepare_cached("INSERT OR REPLACE INTO packet_block_data (id, data) VALUES (?1, ?2)")
        .map_err(err)?;
    let mut encoder = BlockEncoder::default();
    let mut rest = &rows[..];
    while !rest.is_empty() {
        let (block, tail) = rest.split_at(block_len(rest));
        let b = encoder.encode(block);
        let last = next + block.len() as i64 - 1;
        insert
            .execute(params![
                next,
                last,
                block.len() as i64,
                b.min_ts,
                b.max_ts,
                b.tuple_ids
            ])
            .map_err(err)?;
        insert_data.execute(params![next, b.data]).map_err(err)?;
        next = last + 1;
        rest = tail;
    }
    Ok(closed)
}

/// The newest block's id and rows, if its rows are the newest (`next` follows its last id).
fn open_tail(
    conn: &Connection,
    path: &std::path::Path,
    next: i64,
) -> Result<Option<(i64, Vec<Row>)>, StoreError> {
    let err = |e| StoreError::sqlite(path, "inserting history rows", e);
    let head: Option<(i64, i64, i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT id, last_id, row_count, tuple_ids FROM packet_blocks ORDER BY id DESC LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()
        })
        .map_err(err)?;
    let Some((id, last_id, row_count, tuple_blob)) = head else {
        return Ok(None);
    };
    if last_id.checked_add(1) != Some(next) || row_count >= BLOCK_ROWS as i64 {
        return Ok(None);
    }
    let bad = |detail| bad_block(path, id, detail);
    if row_count < 1 || last_id - id != row_count - 1 {
        return Err(bad(format!(
            "row_count {row_count} for the ids {id}..={last_id}"
        )));
    }
    let data: Vec<u8> = conn
        .prepare_cached("SELECT data FROM packet_block_data WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(err)?
        .ok_or_else(|| bad("its packed rows are missing".into()))?;
    let tuples = decode_tuple_ids(&tuple_blob).map_err(bad)?;
    let rows = decode_rows(&data, tuples.len(), row_count as usize).map_err(bad)?;
    Ok(Some((
        id,
        rows.iter().map(|r| r.with_key(tuples[r.key])).collect(),
    )))
}

/// Deletes the oldest blocks whose newest row is older than `cutoff_ns`, whole, until they
/// held at least `max_rows` rows (or none is left). Returns the rows deleted.
pub(super) fn delete_blocks_older_than(
    conn: &Connection,
    cutoff_ns: i64,
    max_rows: usize,
) -> rusqlite::Result<usize> {
    let mut ids = Vec::new();
    let mut rows = 0usize;
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, row_count FROM packet_blocks INDEXED BY packet_blocks_time \
             WHERE max_ts < ?1 ORDER BY max_ts",
        )?;
        let mut it = stmt.query([cutoff_ns])?;
        while rows < max_rows
            && let Some(r) = it.next()?
        {
            ids.push(Value::Integer(r.get(0)?));
            rows += usize::try_from(r.get::<_, i64>(1)?).unwrap_or(0);
        }
    }
    if !ids.is_empty() {
        let ids: Array = Rc::new(ids);
        conn.prepare_cached("DELETE FROM packet_blocks WHERE id IN rarray(?1)")?
            .execute([ids.clone()])?;
        conn.prepare_cached("DELETE FROM packet_block_data WHERE id IN rarray(?1)")?
            .execute([ids])?;
    }
    Ok(rows)
}

/// Which of `candidates` (`tuples` ids) some block points at. Reads the `tuple_ids` of every
/// block (not its rows) until each candidate is found, testing each id against a bitmap of the
/// candidates not found yet. Measured (`sweep_cost` below, release build): 10 million rows in
/// blocks, 100,000 candidate keys: 0.22 s when one of them is in no block (every block is
/// read), 0.05 s when all turn up early.
pub(super) fn tuples_used_by_blocks(
    conn: &Connection,
    path: &std::path::Path,
    candidates: &[i64],
) -> Result<HashSet<i64>, StoreError> {
    let mut used = HashSet::new();
    let Some(max) = candidates.iter().copied().filter(|&c| c >= 0).max() else {
        return Ok(used);
    };
    // One bit per id up to the largest candidate: about 12 KiB per 100,000 keys.
    let mut wanted = vec![0u64; (max / 64 + 1) as usize];
    let mut left = 0usize;
    for &c in candidates.iter().filter(|&&c| c >= 0) {
        let (word, bit) = ((c / 64) as usize, 1 << (c % 64));
        left += usize::from(wanted[word] & bit == 0);
        wanted[word] |= bit;
    }
    let err = |e| StoreError::sqlite(path, "reading the keys of packet blocks", e);
    let mut stmt = conn
        .prepare_cached("SELECT id, tuple_ids FROM packet_blocks")
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        let id: i64 = r.get(0).map_err(err)?;
        let blob = r.get_ref(1).and_then(|v| Ok(v.as_blob()?)).map_err(err)?;
        for t in TupleIdIter::new(blob) {
            let t = t.map_err(|detail| bad_block(path, id, detail))?;
            // Ascending: nothing after this can be a candidate.
            if t > max {
                break;
            }
            let (word, bit) = ((t / 64) as usize, 1 << (t % 64));
            // Each candidate found once: its bit goes, and the walk ends when none is left.
            if wanted[word] & bit != 0 {
                wanted[word] &= !bit;
                used.insert(t);
                left -= 1;
                if left == 0 {
                    return Ok(used);
                }
            }
        }
    }
    Ok(used)
}

fn bad_block(path: &std::path::Path, id: i64, detail: String) -> StoreError {
    StoreError::BadBlock {
        path: path.to_owned(),
        id,
        detail,
    }
}

/// For each of a block's tuple ids (ascending), whether it is one of `keys` (ascending): a
/// binary search of the shorter list's ids in the longer one.
fn select(block: &[i64], keys: &[i64]) -> Vec<bool> {
    let mut selected = vec![false; block.len()];
    if keys.len() <= block.len() {
        for k in keys {
            if let Ok(i) = block.binary_search(k) {
                selected[i] = true;
            }
        }
    } else {
        for (s, id) in selected.iter_mut().zip(block) {
            *s = keys.binary_search(id).is_ok();
        }
    }
    selected
}

/// A matching row found in a block: its id, its `tuples` id, its fields.
type Found = (i64, i64, PackedRow);

impl Store {
    /// The newest `want` raw rows stored in blocks that match `q` (cursor, time range, key
    /// filters), newest first. Every block id is above every id of the version 2 `packets`
    /// table, so the caller continues there when this returns fewer than `want`.
    pub(super) fn query_blocks(
        &self,
        q: &HistoryQuery,
        want: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        let err = |e| StoreError::sqlite(&self.path, "querying history", e);
        let keys = self.matching_tuples(q).map_err(err)?;
        let ns = |s: i64| s.saturating_mul(NANOS_PER_SEC as i64);
        let (from, to) = (q.from_unix_s.map(ns), q.to_unix_s.map(ns));
        if keys.as_ref().is_some_and(Vec::is_empty) || from.zip(to).is_some_and(|(f, t)| f >= t) {
            return Ok(Vec::new());
        }
        // Time bounds on ?3 and ?4, present only when given so that a missing bound compares
        // nothing (rows clamped to i64::MAX stay visible without a `to`).
        let mut time_sql = String::new();
        if from.is_some() {
            time_sql.push_str(" AND max_ts >= ?3");
        }
        if to.is_some() {
            time_sql.push_str(" AND min_ts < ?4");
        }
        let bind_time = |stmt: &mut rusqlite::Statement<'_>| -> rusqlite::Result<()> {
            if let Some(f) = from {
                stmt.raw_bind_parameter(3, f)?;
            }
            if let Some(t) = to {
                stmt.raw_bind_parameter(4, t)?;
            }
            Ok(())
        };
        let mut top = q.before_id.unwrap_or(i64::MAX);
        let mut floor = i64::MIN;
        if from.is_some() || to.is_some() {
            // The time index (small, and covering) gives the id range of the blocks in the
            // time range, so the walk below does not read the newer blocks one by one.
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT min(id), max(id) FROM packet_blocks INDEXED BY packet_blocks_time \
                     WHERE 1 = 1{time_sql}"
                ))
                .map_err(err)?;
            bind_time(&mut stmt).map_err(err)?;
            let mut rows = stmt.raw_query();
            let bounds = match rows.next().map_err(err)? {
                Some(r) => r
                    .get::<_, Option<i64>>(0)
                    .and_then(|lo| Ok(lo.zip(r.get::<_, Option<i64>>(1)?)))
                    .map_err(err)?,
                None => None,
            };
            let Some((lo, hi)) = bounds else {
                return Ok(Vec::new());
            };
            top = top.min(hi.saturating_add(1));
            floor = lo;
        }
        let found = self.walk_blocks(
            q,
            want,
            keys.as_deref(),
            (from, to),
            (top, floor),
            &time_sql,
            &bind_time,
        )?;
        self.resolve_keys(found)
    }

    /// Walks the blocks with ids in `[floor, top)` newest first, collecting up to `want` rows
    /// below the cursor that match the time range and `keys`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one query, computed once"
    )]
    fn walk_blocks(
        &self,
        q: &HistoryQuery,
        want: usize,
        keys: Option<&[i64]>,
        (from, to): (Option<i64>, Option<i64>),
        (top, floor): (i64, i64),
        time_sql: &str,
        bind_time: &dyn Fn(&mut rusqlite::Statement<'_>) -> rusqlite::Result<()>,
    ) -> Result<Vec<Found>, StoreError> {
        let err = |e| StoreError::sqlite(&self.path, "querying history", e);
        let before = q.before_id.unwrap_or(i64::MAX);
        let head_sql = format!(
            "SELECT id, last_id, row_count, tuple_ids FROM packet_blocks \
             WHERE id < ?1 AND id >= ?2{time_sql} ORDER BY id DESC"
        );
        let mut heads = self.conn.prepare_cached(&head_sql).map_err(err)?;
        heads.raw_bind_parameter(1, top).map_err(err)?;
        heads.raw_bind_parameter(2, floor).map_err(err)?;
        bind_time(&mut heads).map_err(err)?;
        let mut body = self
            .conn
            .prepare_cached("SELECT data FROM packet_block_data WHERE id = ?1")
            .map_err(err)?;
        let mut found: Vec<Found> = Vec::new();
        let mut rows = heads.raw_query();
        while found.len() < want
            && let Some(r) = rows.next().map_err(err)?
        {
            let id: i64 = r.get(0).map_err(err)?;
            let last_id: i64 = r.get(1).map_err(err)?;
            let row_count: i64 = r.get(2).map_err(err)?;
            let bad = |detail| bad_block(&self.path, id, detail);
            let blob = r.get_ref(3).and_then(|v| Ok(v.as_blob()?)).map_err(err)?;
            // Skip the block unless one of its keys passes the key filters.
            if let Some(keys) = keys
                && !holds_any(blob, keys).map_err(bad)?
            {
                continue;
            }
            let tuple_ids = decode_tuple_ids(blob).map_err(bad)?;
            let selected = keys.map(|keys| select(&tuple_ids, keys));
            if row_count < 1 || last_id.checked_sub(id) != Some(row_count - 1) {
                return Err(bad(format!(
                    "row_count {row_count} for the ids {id}..={last_id}"
                )));
            }
            let data: Vec<u8> = body
                .query_row([id], |r| r.get(0))
                .optional()
                .map_err(err)?
                .ok_or_else(|| bad("its packed rows are missing".into()))?;
            let packed = decode_rows(&data, tuple_ids.len(), row_count as usize).map_err(bad)?;
            for (i, row) in packed.iter().enumerate().rev() {
                let row_id = id + i as i64;
                let wanted = row_id < before
                    && from.is_none_or(|f| row.ts_unix_ns >= f)
                    && to.is_none_or(|t| row.ts_unix_ns < t)
                    && selected.as_ref().is_none_or(|s| s[row.key]);
                if wanted {
                    found.push((row_id, tuple_ids[row.key], *row));
                    if found.len() == want {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Turns found rows into records: reads the keys of their `tuples` ids, once each.
    fn resolve_keys(&self, found: Vec<Found>) -> Result<Vec<RawRecord>, StoreError> {
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let err = |e| StoreError::sqlite(&self.path, "querying history", e);
        let mut ids: Vec<i64> = found.iter().map(|f| f.1).collect();
        ids.sort_unstable();
        ids.dedup();
        let list: Array = Rc::new(ids.into_iter().map(Value::Integer).collect());
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT k.id, {KEY_COLUMNS} FROM tuples AS k WHERE k.id IN rarray(?1)"
            ))
            .map_err(err)?;
        let mut stored: HashMap<i64, StoredKey> = stmt
            .query_map([list], |r| {
                let id = r.get(0)?;
                Ok((id, StoredKey::read(r, id, 1)?))
            })
            .and_then(|it| it.collect())
            .map_err(err)?;
        let mut keys: HashMap<i64, (FiveTuple, Direction)> = HashMap::new();
        let mut out = Vec::with_capacity(found.len());
        for (id, tuple_id, row) in found {
            let (tuple, direction) = match keys.get(&tuple_id) {
                Some(&k) => k,
                None => {
                    // A missing key decodes to an error naming the row.
                    let key = stored
                        .remove(&tuple_id)
                        .unwrap_or_else(|| StoredKey::missing(tuple_id));
                    let k = key.decode(&Decoder {
                        path: &self.path,
                        id,
                    })?;
                    keys.insert(tuple_id, k);
                    k
                }
            };
            out.push(RawRecord {
                id,
                packet: Packet {
                    tuple,
                    direction,
                    // Decoded rows are in [0, i64::MAX].
                    ts_unix_ns: row.ts_unix_ns as u64,
                    packets: row.packets,
                    bytes: row.bytes,
                    tcp_flags: row.tcp_flags,
                    icmp_type: row.icmp_type,
                    icmp_code: row.icmp_code,
                    flags: row.flags,
                    vlan_id: row.vlan_id,
                },
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
