//! Retention: deleting old history a batch at a time, and sweeping keys no row uses.

use super::*;

/// Retention sweeps `tuples` for keys no row points at once this many keys were created since
/// the last sweep (or as many as the sweep left, if more), so the sweep's full read of the
/// indexes is paid at most once per doubling of the table.
pub(super) const MIN_TUPLES_BEFORE_SWEEP: u64 = 1 << 16;

impl Store {
    /// Deletes about `max_rows` of the oldest rows that are older than `cutoff_unix_ns`: raw
    /// rows first (packet time before the cutoff), then windows (ended at or before the
    /// cutoff). Returns how many rows it deleted.
    ///
    /// Raw rows in blocks go a whole block at a time, once the block's newest row is older
    /// than the cutoff, so a call may delete up to a block's rows more than `max_rows`, and a
    /// row may outlive the cutoff by the time its block spans (at most two minutes, see
    /// `blocks/mod.rs`). Rows of the version 2 `packets` table go one by one.
    ///
    /// One small transaction, so the write lock is held only briefly: callers loop while the
    /// result is at least `max_rows`, letting other writes in between.
    pub fn delete_older_than(
        &mut self,
        cutoff_unix_ns: u64,
        max_rows: usize,
    ) -> Result<usize, StoreError> {
        if max_rows == 0 {
            return Ok(0);
        }
        self.delete_before(cutoff_unix_ns, max_rows, "deleting expired history rows")
    }

    /// The deletion of [`Store::delete_older_than`], also used by the size budget
    /// (`budget.rs`), which picks the cutoff just past the oldest row.
    pub(super) fn delete_before(
        &mut self,
        cutoff_unix_ns: u64,
        max_rows: usize,
        operation: &'static str,
    ) -> Result<usize, StoreError> {
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, operation, e);
        let cutoff_ns = clamp_i64(cutoff_unix_ns);
        // A window [start, end) is expired iff end * 1e9 <= cutoff, i.e. end <= floor(cutoff/1e9).
        let cutoff_s = (cutoff_unix_ns / NANOS_PER_SEC) as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        record_id_floors(&tx).map_err(err)?;
        // Version 2 rows are older than every block: they go first.
        let mut packets = tx
            .prepare_cached(
                "DELETE FROM packets WHERE id IN (SELECT id FROM packets \
                 WHERE ts_unix_ns < ?1 ORDER BY ts_unix_ns LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![cutoff_ns, clamp_i64(max_rows as u64)]))
            .map_err(err)?;
        if packets < max_rows {
            packets += blocks::delete_blocks_older_than(&tx, cutoff_ns, max_rows - packets)
                .map_err(err)?;
        }
        let mut windows = 0;
        if packets < max_rows {
            // `window_start < cutoff` lets the window_start index find the candidates.
            windows = tx
                .prepare_cached(
                    "DELETE FROM windows WHERE id IN (SELECT id FROM windows \
                     WHERE window_start < ?1 AND window_end <= ?1 \
                     ORDER BY window_start LIMIT ?2)",
                )
                .and_then(|mut s| {
                    s.execute(params![cutoff_s, clamp_i64((max_rows - packets) as u64)])
                })
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        if packets + windows > 0 {
            self.sweep_tuples_if_grown()?;
        }
        Ok(packets + windows)
    }

    /// Deletes the `tuples` rows no history row points at any more, if the table has grown by
    /// [`MIN_TUPLES_BEFORE_SWEEP`] keys, or by as many as the last sweep kept, since then.
    ///
    /// It reads every `tuple_id` of both version 2 tables once (an index scan, about a second
    /// for ten million rows) and the list of keys of every block (not their rows; about 0.2 s
    /// for ten million rows, see `blocks::tuples_used_by_blocks`) inside one write transaction:
    /// readers go on, the writer's next insert waits for it.
    pub(super) fn sweep_tuples_if_grown(&mut self) -> Result<(), StoreError> {
        let t = &self.tuples;
        if t.created_since_sweep < t.kept_by_sweep.max(MIN_TUPLES_BEFORE_SWEEP) {
            return Ok(());
        }
        self.sweep_unused_keys()
    }

    /// Deletes the `tuples` rows no history row points at any more, now (see
    /// [`Store::sweep_tuples_if_grown`] for the cost). The size budget calls it when deleting
    /// rows freed little: the file is then mostly keys (a flood of distinct tuples).
    pub fn sweep_unused_keys(&mut self) -> Result<(), StoreError> {
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, "deleting unused conversation keys", e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let started = std::time::Instant::now();
        record_id_floors(&tx).map_err(err)?;
        // Keys no row of the version 2 tables points at, less those a block points at.
        let unused: Vec<i64> = tx
            .prepare_cached(
                "SELECT id FROM tuples WHERE id NOT IN (SELECT tuple_id FROM packets) \
                 AND id NOT IN (SELECT tuple_id FROM windows)",
            )
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(err)?;
        let in_blocks = blocks::tuples_used_by_blocks(&tx, path, &unused)?;
        let removed: HashSet<i64> = unused
            .into_iter()
            .filter(|id| !in_blocks.contains(id))
            .collect();
        let list: Array = Rc::new(removed.iter().copied().map(Value::Integer).collect());
        tx.prepare_cached("DELETE FROM tuples WHERE id IN rarray(?1)")
            .and_then(|mut s| s.execute([list]))
            .map_err(err)?;
        let kept: i64 = tx
            .query_row("SELECT count(*) FROM tuples", [], |r| r.get(0))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        let t = &mut self.tuples;
        t.ids.retain(|id| !removed.contains(&id));
        t.created_since_sweep = 0;
        t.kept_by_sweep = u64::try_from(kept).unwrap_or(0);
        tracing::debug!(
            path = %self.path.display(),
            removed = removed.len(),
            kept,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "swept unused conversation keys"
        );
        Ok(())
    }

    /// Number of rows in each table.
    pub fn row_counts(&self) -> Result<RowCounts, StoreError> {
        let count = |table_sql: &str| -> Result<u64, StoreError> {
            let n: i64 = self
                .conn
                .prepare_cached(table_sql)
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(|e| StoreError::sqlite(&self.path, "counting history rows", e))?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok(RowCounts {
            packets: count("SELECT count(*) FROM packets")?
                + count("SELECT coalesce(sum(row_count), 0) FROM packet_blocks")?,
            windows: count("SELECT count(*) FROM windows")?,
        })
    }
}
