//! The SQLite history: the only module that contains SQL.
//!
//! The storage writer (`storage.rs`) owns the one read-write [`Store`] and calls
//! [`Store::insert_batch`] (raw packets from the ring buffer, closed windows from
//! `aggregate.rs`) and [`Store::delete_older_than`] (retention). The API (`api/history.rs`)
//! opens its own [`Store::open_read_only`] handles and calls [`Store::query_history`]; WAL mode
//! lets those readers run while the writer writes.
//!
//! # Durability
//!
//! The file is in WAL mode with `synchronous=NORMAL`: a committed transaction survives the
//! process being killed (`kill -9`), though the last transactions before a power loss may not.
//! Every write is one short transaction, with a busy timeout of [`BUSY_TIMEOUT`].
//!
//! # Tables
//!
//! `packets` (raw mode, one row per packet event) and `windows` (aggregated mode, one row per
//! five-tuple, direction and window). Addresses are stored as their canonical text
//! (`10.0.0.1`, `fd00::1`), protocols by name (`TCP`, `UDP`, `ICMP`, `ICMPv6`, `IP-<n>`,
//! `ETH-0x<hex>`), directions as `ingress`/`egress`. See `schema.rs` for columns and indexes.
//!
//! # History rows as JSON
//!
//! [`HistoryRow`] serialises to one of two objects. Raw mode (`packets` table):
//!
//! ```json
//! {"id": 42, "timestamp": 1700000000, "timestamp_ns": 1700000000123456789,
//!  "direction": "ingress", "proto": "TCP", "src": "10.0.0.1:51000", "dst": "[fd00::1]:443",
//!  "packets": 1, "bytes": 60, "tcp_flags": 2, "icmp_type": 0, "icmp_code": 0}
//! ```
//!
//! - `timestamp`: Unix seconds (integer, rounded down); `timestamp_ns`: Unix nanoseconds.
//! - `src`/`dst`: `addr:port`, IPv6 as `[addr]:port`; frames that are not IP show
//!   `0.0.0.0:0`.
//! - `tcp_flags`: the TCP flag byte (FIN 1, SYN 2, RST 4, PSH 8, ACK 16, ...), 0 otherwise;
//!   `icmp_type`/`icmp_code`: 0 unless ICMP or ICMPv6.
//!
//! Aggregated mode (`windows` table):
//!
//! ```json
//! {"id": 7, "window_start": 1700000040, "window_end": 1700000100, "direction": "egress",
//!  "proto": "UDP", "src": "10.0.0.1:5353", "dst": "224.0.0.251:5353",
//!  "packets": 10, "bytes": 1200}
//! ```
//!
//! - `window_start`/`window_end`: Unix seconds, `[start, end)`, aligned to the window length.
//!   A key may have several rows for one window (events that arrived after the window was
//!   written); sum them.
//!
//! A page ([`HistoryPage`]) is `{"rows": [...], "next_cursor": 41}`, newest first;
//! `next_cursor` is `null` on the last page, otherwise the `before_id` of the next page.

mod error;
mod schema;

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params, types::Value};
use serde::{Serialize, Serializer, ser::SerializeStruct};

pub use self::{
    error::{ErrorKind, StoreError},
    schema::SCHEMA_VERSION,
};
pub use crate::aggregate::WindowRow;
use crate::flow::{Direction, FiveTuple, Packet, Protocol, direction_name, parse_direction};

/// How long a statement waits for another connection's lock before failing as `locked`.
/// Short, because the writer retries on its own and must not stall shutdown for long.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Rows per history page when the caller does not say.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;

/// The most rows one history page returns; larger limits are capped to this.
pub const MAX_HISTORY_LIMIT: u32 = 10_000;

/// After a checkpoint, SQLite truncates the WAL file to this size, so that a burst of writes
/// does not leave a large `-wal` file behind for ever.
const JOURNAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

const NANOS_PER_SEC: u64 = 1_000_000_000;

const INSERT_PACKET: &str = "INSERT INTO packets (ts_unix_ns, direction, proto, src, src_port, \
     dst, dst_port, packets, bytes, tcp_flags, icmp_type, icmp_code, flags, vlan_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

const INSERT_WINDOW: &str = "INSERT INTO windows (window_start, window_end, proto, src, \
     src_port, dst, dst_port, direction, packets, bytes) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const RAW_COLUMNS: &str = "id, ts_unix_ns, direction, proto, src, src_port, dst, dst_port, \
     packets, bytes, tcp_flags, icmp_type, icmp_code, flags, vlan_id";

const WINDOW_COLUMNS: &str = "id, window_start, window_end, direction, proto, src, src_port, \
     dst, dst_port, packets, bytes";

/// Which history table a query reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HistoryKind {
    /// One row per packet event (`packets` table). This is the default.
    #[default]
    Raw,
    /// One row per five-tuple, direction and window (`windows` table).
    Aggregated,
}

impl HistoryKind {
    /// Parses `raw` or `aggregated`, as the API's `kind` parameter spells them.
    pub fn parse(s: &str) -> Option<HistoryKind> {
        match s {
            "raw" => Some(HistoryKind::Raw),
            "aggregated" => Some(HistoryKind::Aggregated),
            _ => None,
        }
    }
}

/// A history query: filters are ANDed, rows come newest first (`id DESC`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Which table to read.
    pub kind: HistoryKind,
    /// Rows per page, clamped to `1..=MAX_HISTORY_LIMIT`.
    pub limit: u32,
    /// Cursor: only rows with `id < before_id` (the previous page's `next_cursor`).
    pub before_id: Option<i64>,
    /// Only rows at or after this Unix second (raw: packet time; aggregated: window start).
    pub from_unix_s: Option<i64>,
    /// Only rows strictly before this Unix second (half-open `[from, to)`).
    pub to_unix_s: Option<i64>,
    /// Only rows whose source or destination address is this one (exact match).
    pub addr: Option<IpAddr>,
    /// Only rows whose source or destination port is this one.
    pub port: Option<u16>,
    /// Only rows of this protocol.
    pub proto: Option<Protocol>,
    /// Only rows seen by this hook.
    pub direction: Option<Direction>,
}

impl Default for HistoryQuery {
    /// Raw rows, [`DEFAULT_HISTORY_LIMIT`] per page, no filter.
    fn default() -> HistoryQuery {
        HistoryQuery {
            kind: HistoryKind::Raw,
            limit: DEFAULT_HISTORY_LIMIT,
            before_id: None,
            from_unix_s: None,
            to_unix_s: None,
            addr: None,
            port: None,
            proto: None,
            direction: None,
        }
    }
}

/// One stored packet event with its row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Row id: increases with insertion, the paging cursor.
    pub id: i64,
    /// The event as it was inserted.
    pub packet: Packet,
}

/// One stored window row with its row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowRecord {
    /// Row id: increases with insertion, the paging cursor.
    pub id: i64,
    /// The window row as it was inserted.
    pub window: WindowRow,
}

/// One history row; serialises to the JSON objects shown in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum HistoryRow {
    /// A row of the `packets` table.
    Raw(RawRecord),
    /// A row of the `windows` table.
    Aggregated(WindowRecord),
}

impl HistoryRow {
    /// The row id, which orders rows by insertion.
    pub fn id(&self) -> i64 {
        match self {
            HistoryRow::Raw(r) => r.id,
            HistoryRow::Aggregated(w) => w.id,
        }
    }
}

/// One page of history, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryPage {
    /// At most `limit` rows, newest (highest id) first.
    pub rows: Vec<HistoryRow>,
    /// The `before_id` that fetches the next (older) page; `None` if this page is the last.
    pub next_cursor: Option<i64>,
}

/// Number of rows in each history table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Rows in `packets` (raw mode).
    pub packets: u64,
    /// Rows in `windows` (aggregated mode).
    pub windows: u64,
}

impl Serialize for RawRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = &self.packet;
        let mut m = s.serialize_struct("RawRecord", 12)?;
        m.serialize_field("id", &self.id)?;
        m.serialize_field("timestamp", &(p.ts_unix_ns / NANOS_PER_SEC))?;
        m.serialize_field("timestamp_ns", &p.ts_unix_ns)?;
        m.serialize_field("direction", direction_name(p.direction))?;
        m.serialize_field("proto", &p.tuple.proto)?;
        m.serialize_field("src", &p.tuple.src_endpoint())?;
        m.serialize_field("dst", &p.tuple.dst_endpoint())?;
        m.serialize_field("packets", &p.packets)?;
        m.serialize_field("bytes", &p.bytes)?;
        m.serialize_field("tcp_flags", &p.tcp_flags)?;
        m.serialize_field("icmp_type", &p.icmp_type)?;
        m.serialize_field("icmp_code", &p.icmp_code)?;
        m.end()
    }
}

impl Serialize for WindowRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let w = &self.window;
        let mut m = s.serialize_struct("WindowRecord", 9)?;
        m.serialize_field("id", &self.id)?;
        m.serialize_field("window_start", &w.window_start_unix)?;
        m.serialize_field("window_end", &w.window_end_unix)?;
        m.serialize_field("direction", direction_name(w.direction))?;
        m.serialize_field("proto", &w.tuple.proto)?;
        m.serialize_field("src", &w.tuple.src_endpoint())?;
        m.serialize_field("dst", &w.tuple.dst_endpoint())?;
        m.serialize_field("packets", &w.packets)?;
        m.serialize_field("bytes", &w.bytes)?;
        m.end()
    }
}

/// Which file a path pointed to when we opened it, to notice removal or replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A connection to the history database, read-write (the writer) or read-only (API readers).
///
/// Not `Sync`: each thread opens its own. The connection closes when the `Store` is dropped; the
/// last connection to close checkpoints the WAL into the main file.
pub struct Store {
    conn: Connection,
    /// The path as given to `open`, for error messages and the replacement check.
    path: PathBuf,
    /// Device and inode of the file at open time; see [`Store::is_replaced`].
    file_id: Option<FileId>,
    /// SQLite's `max_page_count` before any cap, restored by `set_max_bytes(None)`.
    default_max_pages: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` for writing: WAL journal,
    /// `synchronous=NORMAL`, [`BUSY_TIMEOUT`], and the schema migrated to
    /// [`SCHEMA_VERSION`].
    ///
    /// Fails with [`StoreError::NewerSchema`] if a newer ayaFlow wrote the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_owned();
        // No SQLITE_OPEN_URI: the path is a file name, never interpreted as `file:` URI.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(&path, flags).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        configure(&conn, &path)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| StoreError::sqlite(&path, "switching to WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal { path, mode });
        }
        // In WAL mode NORMAL syncs at checkpoints only: commits survive a crash of the process
        // (the WAL is in the OS page cache), only a power loss can undo the latest ones.
        // https://www.sqlite.org/pragma.html#pragma_synchronous
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| StoreError::sqlite(&path, "setting synchronous=NORMAL", e))?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)
            .map_err(|e| StoreError::sqlite(&path, "setting journal_size_limit", e))?;
        schema::migrate(&mut conn, &path)?;
        Store::finish(conn, path)
    }

    /// Opens an existing database for reading only (API readers). WAL lets it read while the
    /// writer writes; it sees each committed transaction whole.
    ///
    /// Fails if the file does not exist or its schema is not [`SCHEMA_VERSION`]
    /// (start the agent once to create or migrate it).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_owned();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(&path, flags).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        configure(&conn, &path)?;
        let found = schema::user_version(&conn, &path)?;
        if found > schema::SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path,
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        if found != schema::SCHEMA_VERSION {
            return Err(StoreError::SchemaMismatch {
                path,
                found,
                expected: schema::SCHEMA_VERSION,
            });
        }
        Store::finish(conn, path)
    }

    fn finish(conn: Connection, path: PathBuf) -> Result<Store, StoreError> {
        let default_max_pages = conn
            .pragma_query_value(None, "max_page_count", |r| r.get(0))
            .map_err(|e| StoreError::sqlite(&path, "reading max_page_count", e))?;
        Ok(Store {
            file_id: FileId::of(&path),
            conn,
            path,
            default_max_pages,
        })
    }

    /// The path this store was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns true if and only if the file at [`Store::path`] is gone or is no longer the file
    /// this store opened (removed, or replaced by another file).
    ///
    /// SQLite keeps writing into an unlinked file without any error in WAL mode, so the writer
    /// asks this before writing and reopens the path when it returns true.
    pub fn is_replaced(&self) -> bool {
        FileId::of(&self.path) != self.file_id
    }

    /// Copies every committed transaction from the WAL into the database file and truncates
    /// the WAL to zero bytes. Returns true if and only if it completed; readers still using
    /// old WAL frames make it stop early (after [`BUSY_TIMEOUT`]).
    ///
    /// The writer calls it before letting go of a file that was removed or replaced, so the
    /// `-wal` left at the path is empty and cannot be replayed into whatever file is there now
    /// (<https://www.sqlite.org/howtocorrupt.html#unlink>).
    pub fn checkpoint(&mut self) -> Result<bool, StoreError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(|e| StoreError::sqlite(&self.path, "checkpointing the WAL", e))?;
        Ok(busy == 0)
    }

    /// Caps the database file at about `max_bytes` (rounded up to whole pages), or removes the
    /// cap with `None`. Writes that would grow the file past the cap fail as
    /// [`ErrorKind::Full`], exactly like a full disk; pages freed by retention are reused.
    ///
    /// SQLite never shrinks the cap below the file's current size, so a tiny cap means "no
    /// growth from now on". The cap lasts as long as this connection.
    pub fn set_max_bytes(&mut self, max_bytes: Option<u64>) -> Result<(), StoreError> {
        let pages = match max_bytes {
            None => self.default_max_pages,
            Some(bytes) => {
                let page_size: i64 = self
                    .conn
                    .pragma_query_value(None, "page_size", |r| r.get(0))
                    .map_err(|e| StoreError::sqlite(&self.path, "reading page_size", e))?;
                let page_size = u64::try_from(page_size).unwrap_or(4096).max(1);
                i64::try_from(bytes.div_ceil(page_size))
                    .unwrap_or(i64::MAX)
                    .clamp(1, self.default_max_pages)
            }
        };
        self.conn
            .pragma_update_and_check(None, "max_page_count", pages, |r| r.get::<_, i64>(0))
            .map_err(|e| StoreError::sqlite(&self.path, "setting max_page_count", e))?;
        Ok(())
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
        if !packets.is_empty() {
            let mut stmt = tx.prepare_cached(INSERT_PACKET).map_err(err)?;
            for p in packets {
                stmt.execute(params![
                    clamp_i64(p.ts_unix_ns),
                    direction_name(p.direction),
                    p.tuple.proto.to_string(),
                    p.tuple.src.to_string(),
                    p.tuple.src_port,
                    p.tuple.dst.to_string(),
                    p.tuple.dst_port,
                    p.packets,
                    p.bytes,
                    p.tcp_flags,
                    p.icmp_type,
                    p.icmp_code,
                    p.flags,
                    p.vlan_id,
                ])
                .map_err(err)?;
            }
        }
        if !windows.is_empty() {
            let mut stmt = tx.prepare_cached(INSERT_WINDOW).map_err(err)?;
            for w in windows {
                stmt.execute(params![
                    w.window_start_unix,
                    w.window_end_unix,
                    w.tuple.proto.to_string(),
                    w.tuple.src.to_string(),
                    w.tuple.src_port,
                    w.tuple.dst.to_string(),
                    w.tuple.dst_port,
                    direction_name(w.direction),
                    clamp_i64(w.packets),
                    clamp_i64(w.bytes),
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Deletes up to `max_rows` of the oldest rows that are older than `cutoff_unix_ns`, from
    /// `packets` first (packet time before the cutoff), then from `windows` (windows that ended
    /// at or before the cutoff). Returns how many rows it deleted.
    ///
    /// One small transaction, so the write lock is held only briefly: callers loop while the
    /// result equals `max_rows`, letting other writes in between.
    pub fn delete_older_than(
        &mut self,
        cutoff_unix_ns: u64,
        max_rows: usize,
    ) -> Result<usize, StoreError> {
        if max_rows == 0 {
            return Ok(0);
        }
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, "deleting expired history rows", e);
        let cutoff_ns = clamp_i64(cutoff_unix_ns);
        // A window [start, end) is expired iff end * 1e9 <= cutoff, i.e. end <= floor(cutoff/1e9).
        let cutoff_s = (cutoff_unix_ns / NANOS_PER_SEC) as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let packets = tx
            .prepare_cached(
                "DELETE FROM packets WHERE id IN (SELECT id FROM packets \
                 WHERE ts_unix_ns < ?1 ORDER BY ts_unix_ns LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![cutoff_ns, clamp_i64(max_rows as u64)]))
            .map_err(err)?;
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
        Ok(packets + windows)
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
            packets: count("SELECT count(*) FROM packets")?,
            windows: count("SELECT count(*) FROM windows")?,
        })
    }

    /// Runs a history query: the newest `limit` rows matching every filter, below the cursor.
    ///
    /// The SQL is assembled from fixed fragments only; every value is a bound parameter.
    pub fn query_history(&self, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let (table, time_col, columns) = match q.kind {
            HistoryKind::Raw => ("packets", "ts_unix_ns", RAW_COLUMNS),
            HistoryKind::Aggregated => ("windows", "window_start", WINDOW_COLUMNS),
        };
        // Raw rows are filtered on nanoseconds, windows on seconds.
        let time = |s: i64| match q.kind {
            HistoryKind::Raw => s.saturating_mul(NANOS_PER_SEC as i64),
            HistoryKind::Aggregated => s,
        };
        let mut sql = format!("SELECT {columns} FROM {table} WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        let mut bind = |sql: &mut String, fragment: &str, v: Value| {
            args.push(v);
            // `?N` lets a fragment use its value twice (src OR dst).
            sql.push_str(&fragment.replace("?N", &format!("?{}", args.len())));
        };
        if let Some(id) = q.before_id {
            bind(&mut sql, " AND id < ?N", Value::Integer(id));
        }
        if let Some(from) = q.from_unix_s {
            bind(
                &mut sql,
                &format!(" AND {time_col} >= ?N"),
                Value::Integer(time(from)),
            );
        }
        if let Some(to) = q.to_unix_s {
            bind(
                &mut sql,
                &format!(" AND {time_col} < ?N"),
                Value::Integer(time(to)),
            );
        }
        if let Some(addr) = q.addr {
            bind(
                &mut sql,
                " AND (src = ?N OR dst = ?N)",
                Value::Text(addr.to_string()),
            );
        }
        if let Some(port) = q.port {
            bind(
                &mut sql,
                " AND (src_port = ?N OR dst_port = ?N)",
                Value::Integer(port.into()),
            );
        }
        if let Some(proto) = q.proto {
            bind(&mut sql, " AND proto = ?N", Value::Text(proto.to_string()));
        }
        if let Some(d) = q.direction {
            bind(
                &mut sql,
                " AND direction = ?N",
                Value::Text(direction_name(d).to_owned()),
            );
        }
        let limit = q.limit.clamp(1, MAX_HISTORY_LIMIT) as usize;
        // One row more than asked tells whether another page exists.
        bind(
            &mut sql,
            " ORDER BY id DESC LIMIT ?N",
            Value::Integer(limit as i64 + 1),
        );

        let err = |e| StoreError::sqlite(&self.path, "querying history", e);
        let mut stmt = self.conn.prepare_cached(&sql).map_err(err)?;
        let mut rows = match q.kind {
            HistoryKind::Raw => stmt
                .query_map(rusqlite::params_from_iter(args), StoredRaw::read)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(err)?
                .into_iter()
                .map(|r| r.decode(&self.path).map(HistoryRow::Raw))
                .collect::<Result<Vec<_>, _>>()?,
            HistoryKind::Aggregated => stmt
                .query_map(rusqlite::params_from_iter(args), StoredWindow::read)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(err)?
                .into_iter()
                .map(|r| r.decode(&self.path).map(HistoryRow::Aggregated))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(HistoryRow::id)
        } else {
            None
        };
        Ok(HistoryPage { rows, next_cursor })
    }
}

/// Connection settings shared by writers and readers.
fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StoreError::sqlite(path, "setting the busy timeout", e))?;
    // Each combination of history filters is its own statement; keep them all prepared.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(())
}

/// SQLite integers are i64; values beyond are stored as the maximum.
fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `packets` row as SQLite returns it, before validation.
struct StoredRaw {
    id: i64,
    ts_unix_ns: i64,
    direction: String,
    proto: String,
    src: String,
    src_port: i64,
    dst: String,
    dst_port: i64,
    packets: i64,
    bytes: i64,
    tcp_flags: i64,
    icmp_type: i64,
    icmp_code: i64,
    flags: i64,
    vlan_id: i64,
}

impl StoredRaw {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRaw> {
        Ok(StoredRaw {
            id: r.get(0)?,
            ts_unix_ns: r.get(1)?,
            direction: r.get(2)?,
            proto: r.get(3)?,
            src: r.get(4)?,
            src_port: r.get(5)?,
            dst: r.get(6)?,
            dst_port: r.get(7)?,
            packets: r.get(8)?,
            bytes: r.get(9)?,
            tcp_flags: r.get(10)?,
            icmp_type: r.get(11)?,
            icmp_code: r.get(12)?,
            flags: r.get(13)?,
            vlan_id: r.get(14)?,
        })
    }

    fn decode(self, path: &Path) -> Result<RawRecord, StoreError> {
        let d = Decoder { path, id: self.id };
        Ok(RawRecord {
            id: self.id,
            packet: Packet {
                tuple: d.tuple(
                    &self.proto,
                    &self.src,
                    self.src_port,
                    &self.dst,
                    self.dst_port,
                )?,
                direction: d.direction(&self.direction)?,
                ts_unix_ns: d.int(self.ts_unix_ns, "ts_unix_ns")?,
                packets: d.int(self.packets, "packets")?,
                bytes: d.int(self.bytes, "bytes")?,
                tcp_flags: d.int(self.tcp_flags, "tcp_flags")?,
                icmp_type: d.int(self.icmp_type, "icmp_type")?,
                icmp_code: d.int(self.icmp_code, "icmp_code")?,
                flags: d.int(self.flags, "flags")?,
                vlan_id: d.int(self.vlan_id, "vlan_id")?,
            },
        })
    }
}

/// A `windows` row as SQLite returns it, before validation.
struct StoredWindow {
    id: i64,
    window_start: i64,
    window_end: i64,
    direction: String,
    proto: String,
    src: String,
    src_port: i64,
    dst: String,
    dst_port: i64,
    packets: i64,
    bytes: i64,
}

impl StoredWindow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredWindow> {
        Ok(StoredWindow {
            id: r.get(0)?,
            window_start: r.get(1)?,
            window_end: r.get(2)?,
            direction: r.get(3)?,
            proto: r.get(4)?,
            src: r.get(5)?,
            src_port: r.get(6)?,
            dst: r.get(7)?,
            dst_port: r.get(8)?,
            packets: r.get(9)?,
            bytes: r.get(10)?,
        })
    }

    fn decode(self, path: &Path) -> Result<WindowRecord, StoreError> {
        let d = Decoder { path, id: self.id };
        Ok(WindowRecord {
            id: self.id,
            window: WindowRow {
                window_start_unix: self.window_start,
                window_end_unix: self.window_end,
                tuple: d.tuple(
                    &self.proto,
                    &self.src,
                    self.src_port,
                    &self.dst,
                    self.dst_port,
                )?,
                direction: d.direction(&self.direction)?,
                packets: d.int(self.packets, "packets")?,
                bytes: d.int(self.bytes, "bytes")?,
            },
        })
    }
}

/// Turns stored text and integers back into domain values, naming the row on failure.
struct Decoder<'a> {
    path: &'a Path,
    id: i64,
}

impl Decoder<'_> {
    fn bad(&self, detail: String) -> StoreError {
        StoreError::BadRow {
            path: self.path.to_owned(),
            id: self.id,
            detail,
        }
    }

    fn int<T: TryFrom<i64>>(&self, v: i64, column: &str) -> Result<T, StoreError> {
        T::try_from(v).map_err(|_| self.bad(format!("{column} = {v}, out of range")))
    }

    fn direction(&self, s: &str) -> Result<Direction, StoreError> {
        parse_direction(s).ok_or_else(|| self.bad(format!("direction {s:?}")))
    }

    fn addr(&self, s: &str) -> Result<IpAddr, StoreError> {
        s.parse().map_err(|_| self.bad(format!("address {s:?}")))
    }

    fn tuple(
        &self,
        proto: &str,
        src: &str,
        src_port: i64,
        dst: &str,
        dst_port: i64,
    ) -> Result<FiveTuple, StoreError> {
        Ok(FiveTuple {
            proto: Protocol::parse(proto).ok_or_else(|| self.bad(format!("protocol {proto:?}")))?,
            src: self.addr(src)?,
            src_port: self.int(src_port, "src_port")?,
            dst: self.addr(dst)?,
            dst_port: self.int(dst_port, "dst_port")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn packet(i: u32) -> Packet {
        Packet {
            tuple: FiveTuple {
                proto: Protocol::Tcp,
                src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                src_port: 40_000,
                dst: IpAddr::V6(Ipv6Addr::LOCALHOST),
                dst_port: 443,
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

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path().join("h.db")).expect("store opens in a temp dir");
        (dir, store)
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
            .execute("UPDATE packets SET src = 'not-an-ip'", [])
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
            for mask in 0u8..128 {
                let on = |bit: u8| mask & (1 << bit) != 0;
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
                };
                let page = store.query_history(&q).expect("every combination runs");
                let want = usize::from(kind == HistoryKind::Raw);
                assert_eq!(page.rows.len(), want, "{q:?}");
            }
        }
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
}
