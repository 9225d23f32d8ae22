//! The size budget's side of the store: how much of the file holds history, the WAL's share,
//! and deleting the oldest history whatever its age (`storage/budget.rs` decides when).

use super::*;

impl Store {
    /// Bytes of the database file that hold data: its pages less the free ones, which SQLite
    /// reuses before growing the file. What a write needs beyond the free pages grows the file.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let (page_size, pages, free): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT page_size, page_count, freelist_count \
                 FROM pragma_page_size, pragma_page_count, pragma_freelist_count",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| StoreError::sqlite(&self.path, "reading the file's page counts", e))?;
        Ok(u64::try_from((pages - free).max(0) * page_size).unwrap_or(0))
    }

    /// Bounds the `-wal` file at about `max_bytes` plus one transaction: the writer
    /// checkpoints once the WAL holds that much, and a checkpoint truncates the file to it.
    /// `None` restores the defaults ([`WAL_AUTOCHECKPOINT_PAGES`], [`JOURNAL_SIZE_LIMIT_BYTES`]).
    ///
    /// A reader in the middle of a query holds the WAL's content (its snapshot) until it ends,
    /// so the WAL can pass this while a long query runs.
    pub fn set_wal_limit(&mut self, max_bytes: Option<u64>) -> Result<(), StoreError> {
        let err = |e| StoreError::sqlite(&self.path, "setting the WAL's size limit", e);
        let page_size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(err)?;
        let (pages, bytes) = match max_bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)) {
            None => (WAL_AUTOCHECKPOINT_PAGES, JOURNAL_SIZE_LIMIT_BYTES),
            Some(b) => (
                (b / page_size.max(1)).clamp(1, WAL_AUTOCHECKPOINT_PAGES),
                b.min(JOURNAL_SIZE_LIMIT_BYTES),
            ),
        };
        self.conn
            .pragma_update(None, "wal_autocheckpoint", pages)
            .map_err(err)?;
        self.conn
            .pragma_update(None, "journal_size_limit", bytes)
            .map_err(err)?;
        Ok(())
    }

    /// Deletes about `max_rows` of the oldest history, whatever its age: the oldest raw block
    /// (whole) or the oldest window's rows, whichever ended first, and on while fewer than
    /// `max_rows` went. Returns the rows deleted, 0 once nothing is left.
    pub fn delete_oldest(&mut self, max_rows: usize) -> Result<usize, StoreError> {
        let Some(cutoff) = self.oldest_end_ns()? else {
            return Ok(0);
        };
        self.delete_before(cutoff, max_rows, "deleting the oldest history rows")
    }

    /// Just past the end of the oldest history: the newest row of the oldest raw block (or
    /// version 2 row) plus 1 ns, or the end of the oldest window, whichever is earlier.
    fn oldest_end_ns(&self) -> Result<Option<u64>, StoreError> {
        let ends: (Option<i64>, Option<i64>, Option<i64>) = self
            .conn
            .query_row(
                "SELECT (SELECT min(ts_unix_ns) FROM packets), \
                 (SELECT max_ts FROM packet_blocks INDEXED BY packet_blocks_time \
                  ORDER BY max_ts LIMIT 1), \
                 (SELECT window_end FROM windows INDEXED BY windows_time \
                  ORDER BY window_start LIMIT 1)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| StoreError::sqlite(&self.path, "finding the oldest history", e))?;
        let ns = |v: i64| u64::try_from(v).unwrap_or(0);
        let raw = [ends.0, ends.1]
            .into_iter()
            .flatten()
            .map(|ts| ns(ts).saturating_add(1));
        let window = ends.2.map(|end| ns(end).saturating_mul(NANOS_PER_SEC));
        Ok(raw.chain(window).min())
    }
}
