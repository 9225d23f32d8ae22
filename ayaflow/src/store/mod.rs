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
//! Raw rows (raw mode, one row per packet event) are packed into blocks of up to about a
//! thousand rows, one `packet_blocks` row each (`blocks/`); rows written before schema
//! version 3 stay in `packets`, one SQLite row each. `windows` (aggregated mode, one row per
//! five-tuple, direction and window) holds one SQLite row per window row. Rows hold integers
//! only and point at a row of `tuples`, which holds every distinct five-tuple and direction
//! once. There, addresses are stored as their canonical text (`10.0.0.1`, `fd00::1`),
//! protocols by name (`TCP`, `UDP`, `ICMP`, `ICMPv6`, `IP-<n>`, `ETH-0x<hex>`), directions as
//! `ingress`/`egress`. See `schema.rs` for columns and indexes.
//!
//! # Writing
//!
//! The writer keeps a map from key to `tuples.id` ([`TupleIds`]). Raw rows are packed in Rust
//! into blocks of up to `blocks::BLOCK_ROWS` rows and a minute (each batch first fills up the
//! newest block), so a raw row costs a few bytes of a blob; a window row costs one cached
//! multi-row `INSERT` and two index inserts near the end of their B-trees. The writer assigns
//! row ids itself (the next after the largest one, read under the write lock): consecutive ids
//! for the rows of a block, and
//! `bucket = id >> 16` for windows. Retention deletes rows oldest first (raw rows in blocks a
//! whole block at a time, once its newest row has expired), and removes the `tuples` rows
//! nothing points at any more once the table has grown by as many keys as it held after the
//! last such sweep.
//!
//! # Reading
//!
//! [`Store::query_history`] reads raw rows from the blocks first, newest first: it skips blocks
//! by their time bounds and their list of keys, and decodes only the blocks that may hold a
//! matching row (see `blocks/mod.rs`). Every block's ids are above the ids of the version 2
//! `packets` table, so a page that is not full continues there, like a query of windows.
//! There, the query first finds the ids of matching rows, newest first, then reads those rows
//! joined to their key. Without a time range, key filters (address, port, protocol, direction)
//! are first tried on the newest thousand rows below the cursor, which fills the page when
//! many keys match. Otherwise they select `tuples` ids, and the row ids come from whichever of
//! three plans reads least: the time index (a time range covering at most a quarter of the
//! rows), the buckets newest first (few matching keys), or the table by id, newest first (many
//! matching keys, or no filter but the cursor).
//!
//! # History rows as JSON
//!
//! [`HistoryRow`] serialises to one of two objects. Raw mode (`packet_blocks` and `packets`):
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

mod blocks;
mod error;
mod schema;

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    rc::Rc,
    time::Duration,
};

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Statement, TransactionBehavior, params, types::Value,
    vtab::array::Array,
};
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

use crate::clock::NANOS_PER_SEC;

/// Rows per multi-row `INSERT` statement: one statement step instead of many amortises
/// SQLite's per-statement work (binding stays per value). The rest of a batch goes row by row.
/// Measured (3 million raw rows): 1 row per statement 280,000 rows/s, 16 rows 370,000,
/// 64 rows 400,000, 256 rows 415,000.
const ROWS_PER_INSERT: usize = 64;

/// The writer checkpoints the WAL into the database file once it holds this many pages
/// (`PRAGMA wal_autocheckpoint`, SQLite's default is 1,000): 32 MiB with 4 KiB pages. Index
/// pages written by several transactions in a row are then copied once instead of once per
/// transaction: 10 to 40 % more rows per second measured with 50,000 rows per transaction.
/// The `-wal` file may reach this size besides the database file (and the size cap of
/// [`Store::set_max_bytes`], which counts the database file only); it stays below
/// [`JOURNAL_SIZE_LIMIT_BYTES`].
///
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;

/// The writer's page cache (`cache_size`), in KiB, allocated as pages are read: 16 MiB rather
/// than SQLite's 2 MiB. Appending rows touches few pages (see `schema.rs`), but a burst of new
/// connections inserts its keys at random places of the `tuples` indexes (about 20 MiB at
/// 100,000 keys); with 2 MiB the transaction spilled pages to the WAL and read them back.
/// Measured (`cargo xtask bench -- --sections storage`, 100,000 new keys in the first million
/// rows): the first million rows 1.3 to 2 times faster; 32 MiB was no faster than 16.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// Rows [`Store::query_history`] tests one by one against their keys before it reads the list
/// of matching keys (see `matching_ids`): about half a millisecond.
const PROBE_ROWS: i64 = 1024;

/// Most keys the writer keeps in its [`TupleIds`] map (about 100 bytes each); beyond, it
/// starts over, and keys are looked up in `tuples` again as they come.
const MAX_CACHED_TUPLES: usize = 1 << 18;

/// Retention sweeps `tuples` for keys no row points at once this many keys were created since
/// the last sweep (or as many as the sweep left, if more), so the sweep's full read of the
/// indexes is paid at most once per doubling of the table.
const MIN_TUPLES_BEFORE_SWEEP: u64 = 1 << 16;

/// A version 2 raw row's columns after `id`, in `INSERT` order (tests write such rows).
#[cfg(test)]
const RAW_INSERT_COLUMNS: &str = "ts_unix_ns, tuple_id, bucket, packets, bytes, tcp_flags, \
     icmp_type, icmp_code, flags, vlan_id";
#[cfg(test)]
const RAW_INSERT_VALUES: usize = 11;

/// A window row's columns after `id`, in `INSERT` order.
const WINDOW_INSERT_COLUMNS: &str = "window_start, window_end, tuple_id, bucket, packets, bytes";
const WINDOW_INSERT_VALUES: usize = 7;

/// Key columns read back from `tuples` (aliased `k`), after the row's own columns.
const KEY_COLUMNS: &str = "k.direction, k.proto, k.src, k.src_port, k.dst, k.dst_port";

const RAW_COLUMNS: &str = "r.id, r.tuple_id, r.ts_unix_ns, r.packets, r.bytes, r.tcp_flags, \
     r.icmp_type, r.icmp_code, r.flags, r.vlan_id";

const WINDOW_COLUMNS: &str = "r.id, r.tuple_id, r.window_start, r.window_end, r.packets, r.bytes";

/// `INSERT OR FAIL INTO {table} (id, {columns}) VALUES (...), (...)` with `rows` rows of
/// `values` placeholders each.
///
/// `OR FAIL`, not the default `ABORT`: to undo the earlier rows of a failing multi-row
/// statement, ABORT makes SQLite copy every page the statement touches into a statement
/// journal (a temporary file) first. FAIL keeps those rows instead, which is safe here because
/// every caller rolls the whole transaction back on any error.
fn insert_sql(table: &str, columns: &str, values: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; values].join(", "));
    format!(
        "INSERT OR FAIL INTO {table} (id, {columns}) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// The two history tables, as query plans see them.
#[derive(Clone, Copy)]
struct Table {
    name: &'static str,
    /// Time column: nanoseconds (raw) or seconds (window start).
    time: &'static str,
    /// Index `(time, tuple_id)`.
    time_index: &'static str,
    /// Index `(bucket, tuple_id)`.
    tuples_index: &'static str,
}

const PACKETS: Table = Table {
    name: "packets",
    time: "ts_unix_ns",
    time_index: "packets_time",
    tuples_index: "packets_tuples",
};

const WINDOWS: Table = Table {
    name: "windows",
    time: "window_start",
    time_index: "windows_time",
    tuples_index: "windows_tuples",
};

/// How [`Store::query_history`] finds row ids; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Walk the time index over the range, collect ids, keep the newest.
    Time,
    /// Walk `(bucket, tuple_id)` bucket by bucket, newest first, one seek per matching key.
    Buckets,
    /// Walk the table by id, newest first, testing every row.
    Ids,
}

/// A key of the `tuples` table.
type TupleKey = (FiveTuple, Direction);

/// Hashes [`TupleKey`]s: one hash per stored row, so a fast one (see Cargo.toml).
type KeyHasher = foldhash::fast::RandomState;

/// The writer's map from key to `tuples.id`, valid for the rows committed to this file.
#[derive(Debug, Default)]
struct TupleIds {
    ids: HashMap<TupleKey, i64, KeyHasher>,
    /// `ids` holds every row of `tuples`, so a key missing from it is new: it is inserted
    /// without looking it up first, many keys per statement. True from the open (when
    /// `tuples` fits in [`MAX_CACHED_TUPLES`]) until the map starts over.
    complete: bool,
    /// Keys inserted into `tuples` since the last sweep.
    created_since_sweep: u64,
    /// Keys left in `tuples` after the last sweep.
    kept_by_sweep: u64,
}

/// Which history table a query reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HistoryKind {
    /// One row per packet event (`packet_blocks`, and `packets` for rows written before schema
    /// version 3). This is the default.
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
    /// A raw row: one packet event.
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
    /// Raw rows: the rows of every block plus the rows of `packets` (raw mode).
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
    /// The writer's key ids (empty in readers); only ids of committed `tuples` rows go in.
    tuples: TupleIds,
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
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(|e| StoreError::sqlite(&path, "setting wal_autocheckpoint", e))?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(|e| StoreError::sqlite(&path, "setting cache_size", e))?;
        schema::migrate(&mut conn, &path)?;
        // Only the writer needs the keys' ids.
        let tuples = TupleIds::load(&conn, &path);
        Store::finish(conn, path, tuples)
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
        // A reader (one per history request) inserts nothing: no map of keys to read.
        Store::finish(conn, path, TupleIds::default())
    }

    fn finish(conn: Connection, path: PathBuf, tuples: TupleIds) -> Result<Store, StoreError> {
        let default_max_pages = conn
            .pragma_query_value(None, "max_page_count", |r| r.get(0))
            .map_err(|e| StoreError::sqlite(&path, "reading max_page_count", e))?;
        Ok(Store {
            file_id: FileId::of(&path),
            conn,
            path,
            default_max_pages,
            tuples,
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
        let result = self.try_insert_batch(packets, windows);
        if result.is_err() && self.tuples.complete && !self.tuples.matches_count(&self.conn) {
            // Nothing of the batch is stored, and `tuples` changed under this writer (another
            // process writes the same file): look keys up from now on, and try again.
            self.tuples.complete = false;
            return self.try_insert_batch(packets, windows);
        }
        result
    }

    fn try_insert_batch(
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
        let t = &mut self.tuples;
        t.created_since_sweep += created.len() as u64;
        if t.ids.len() + created.len() > MAX_CACHED_TUPLES {
            t.ids.clear();
            t.complete = false;
        }
        t.ids.extend(created);
        Ok(())
    }

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
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, "deleting expired history rows", e);
        let cutoff_ns = clamp_i64(cutoff_unix_ns);
        // A window [start, end) is expired iff end * 1e9 <= cutoff, i.e. end <= floor(cutoff/1e9).
        let cutoff_s = (cutoff_unix_ns / NANOS_PER_SEC) as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
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
    fn sweep_tuples_if_grown(&mut self) -> Result<(), StoreError> {
        let t = &self.tuples;
        if t.created_since_sweep < t.kept_by_sweep.max(MIN_TUPLES_BEFORE_SWEEP) {
            return Ok(());
        }
        let path = &self.path;
        let err = |e| StoreError::sqlite(path, "deleting unused conversation keys", e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let started = std::time::Instant::now();
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
        t.ids.retain(|_, id| !removed.contains(id));
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

    /// Runs a history query: the newest `limit` rows matching every filter, below the cursor.
    ///
    /// The SQL is assembled from fixed fragments only; every value is a bound parameter. The
    /// plan (see the module docs) only changes how fast the page comes, never which rows.
    pub fn query_history(&self, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let err = |e| StoreError::sqlite(&self.path, "querying history", e);
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
            rows.extend(self.read_rows(q.kind, &ids)?);
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
    fn matching_ids(
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
    fn planned_ids(
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
    fn id_bounds(&self, table: Table) -> rusqlite::Result<Option<(i64, i64)>> {
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
    fn rows_in_time_range(
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
    fn tuple_count_estimate(&self) -> rusqlite::Result<i64> {
        let n: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(id) FROM tuples")?
            .query_row([], |r| r.get(0))?;
        Ok(n.unwrap_or(0))
    }

    /// The `tuples` ids that pass the key filters of `q` (address, port, protocol, direction),
    /// ascending; `None` if `q` has no key filter.
    fn matching_tuples(&self, q: &HistoryQuery) -> rusqlite::Result<Option<Vec<i64>>> {
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
    fn read_rows(&self, kind: HistoryKind, ids: &[i64]) -> Result<Vec<HistoryRow>, StoreError> {
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

/// Connection settings shared by writers and readers.
fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StoreError::sqlite(path, "setting the busy timeout", e))?;
    // Each combination of history filters is its own statement; keep them all prepared.
    conn.set_prepared_statement_cache_capacity(256);
    // `rarray(?)`: binds a list of ids as one parameter.
    rusqlite::vtab::array::load_module(conn)
        .map_err(|e| StoreError::sqlite(path, "registering the rarray module", e))?;
    Ok(())
}

/// The key filters of `q` as SQL conditions on `tuples` columns (prefixed with `prefix`, e.g.
/// `k.`), each starting with ` AND `, numbering parameters from `?first`; `None` if `q` has no
/// key filter. Fixed fragments only; the values are returned to be bound.
fn key_conditions(q: &HistoryQuery, prefix: &str, first: usize) -> Option<(String, Vec<Value>)> {
    if q.addr.is_none() && q.port.is_none() && q.proto.is_none() && q.direction.is_none() {
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
    Some((sql, args))
}

/// The id the next row of `table` gets: ids are assigned by the writer so that `bucket` can be
/// filled in (`bucket = id >> BUCKET_SHIFT`). Read under the write lock.
/// Appends `rows` to `table` with ids from the next free one. `columns` are the columns after
/// `id` and how many values a row binds; `bind` binds one row at a parameter offset given its id
/// and tuple id.
fn insert_rows<T>(
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
fn insert_many<T>(
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

fn next_id(conn: &Connection, table: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached(&format!("SELECT coalesce(max(id), 0) + 1 FROM {table}"))?
        .query_row([], |r| r.get(0))
}

/// The `tuples` id of `key`, inserting the row if it is new.
fn tuple_row_id(conn: &Connection, key: &TupleKey) -> rusqlite::Result<i64> {
    let (t, direction) = key;
    let (proto, src, dst) = (t.proto.to_string(), t.src.to_string(), t.dst.to_string());
    let dir = direction_name(*direction);
    let found = conn
        .prepare_cached(
            "SELECT id FROM tuples WHERE src = ?1 AND dst = ?2 AND src_port = ?3 \
             AND dst_port = ?4 AND proto = ?5 AND direction = ?6",
        )?
        .query_row(params![src, dst, t.src_port, t.dst_port, proto, dir], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached(
        "INSERT INTO tuples (src, dst, src_port, dst_port, proto, direction) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![src, dst, t.src_port, t.dst_port, proto, dir])?;
    Ok(conn.last_insert_rowid())
}

/// Inserts new `tuples` rows with the ids given, in key order (which keeps the unique index's
/// inserts local).
fn insert_tuples(conn: &Connection, keys: &[(TupleKey, i64)]) -> rusqlite::Result<()> {
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
            )
        })
        .collect();
    rows.sort_unstable();
    let columns = ("src, dst, src_port, dst_port, proto, direction", 7);
    insert_many(conn, "tuples", columns, &rows, |stmt, at, r| {
        stmt.raw_bind_parameter(at + 1, r.6)?;
        stmt.raw_bind_parameter(at + 2, &r.0)?;
        stmt.raw_bind_parameter(at + 3, &r.1)?;
        stmt.raw_bind_parameter(at + 4, r.2)?;
        stmt.raw_bind_parameter(at + 5, r.3)?;
        stmt.raw_bind_parameter(at + 6, &r.4)?;
        stmt.raw_bind_parameter(at + 7, r.5)
    })
}

impl TupleIds {
    /// Reads every key of `tuples` if there are at most [`MAX_CACHED_TUPLES`]: a complete map.
    /// Otherwise, or if a row cannot be read, an empty map that looks keys up as they come.
    fn load(conn: &Connection, path: &Path) -> TupleIds {
        let read = || -> Result<Option<HashMap<TupleKey, i64, KeyHasher>>, StoreError> {
            let sql = |e| StoreError::sqlite(path, "reading conversation keys", e);
            let count: i64 = conn
                .query_row("SELECT count(*) FROM tuples", [], |r| r.get(0))
                .map_err(sql)?;
            if count > MAX_CACHED_TUPLES as i64 {
                return Ok(None);
            }
            let mut stmt = conn
                .prepare("SELECT id, direction, proto, src, src_port, dst, dst_port FROM tuples")
                .map_err(sql)?;
            let mut rows = stmt.query([]).map_err(sql)?;
            let mut ids = HashMap::with_capacity_and_hasher(count as usize, KeyHasher::default());
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
    fn matches_count(&self, conn: &Connection) -> bool {
        conn.query_row("SELECT count(*) FROM tuples", [], |r| r.get::<_, i64>(0))
            .is_ok_and(|n| usize::try_from(n).is_ok_and(|n| n == self.ids.len()))
    }
}

/// Binds one version 2 raw row at parameter offset `at` (0-based) of a multi-row insert.
#[cfg(test)]
fn bind_packet(
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
fn bind_window(
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
fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Key columns of a row as SQLite returns them (`NULL`s if its `tuple_id` has no key).
struct StoredKey {
    tuple_id: i64,
    direction: Option<String>,
    proto: Option<String>,
    src: Option<String>,
    src_port: Option<i64>,
    dst: Option<String>,
    dst_port: Option<i64>,
}

impl StoredKey {
    /// The key of a `tuple_id` that has no row in `tuples`; decoding it fails.
    fn missing(tuple_id: i64) -> StoredKey {
        StoredKey {
            tuple_id,
            direction: None,
            proto: None,
            src: None,
            src_port: None,
            dst: None,
            dst_port: None,
        }
    }

    /// Reads [`KEY_COLUMNS`] starting at column `at`.
    fn read(r: &rusqlite::Row<'_>, tuple_id: i64, at: usize) -> rusqlite::Result<StoredKey> {
        Ok(StoredKey {
            tuple_id,
            direction: r.get(at)?,
            proto: r.get(at + 1)?,
            src: r.get(at + 2)?,
            src_port: r.get(at + 3)?,
            dst: r.get(at + 4)?,
            dst_port: r.get(at + 5)?,
        })
    }

    fn decode(self, d: &Decoder<'_>) -> Result<(FiveTuple, Direction), StoreError> {
        let (Some(direction), Some(proto), Some(src), Some(src_port), Some(dst), Some(dst_port)) = (
            self.direction,
            self.proto,
            self.src,
            self.src_port,
            self.dst,
            self.dst_port,
        ) else {
            return Err(d.bad(format!("tuple_id {}, which no key has", self.tuple_id)));
        };
        Ok((
            d.tuple(&proto, &src, src_port, &dst, dst_port)?,
            d.direction(&direction)?,
        ))
    }
}

/// A `packets` row joined to its key as SQLite returns it, before validation.
struct StoredRaw {
    id: i64,
    key: StoredKey,
    ts_unix_ns: i64,
    packets: i64,
    bytes: i64,
    tcp_flags: i64,
    icmp_type: i64,
    icmp_code: i64,
    flags: i64,
    vlan_id: i64,
}

impl StoredRaw {
    /// Reads [`RAW_COLUMNS`] then [`KEY_COLUMNS`].
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRaw> {
        Ok(StoredRaw {
            id: r.get(0)?,
            key: StoredKey::read(r, r.get(1)?, 10)?,
            ts_unix_ns: r.get(2)?,
            packets: r.get(3)?,
            bytes: r.get(4)?,
            tcp_flags: r.get(5)?,
            icmp_type: r.get(6)?,
            icmp_code: r.get(7)?,
            flags: r.get(8)?,
            vlan_id: r.get(9)?,
        })
    }

    fn decode(self, path: &Path) -> Result<RawRecord, StoreError> {
        let d = Decoder { path, id: self.id };
        let (tuple, direction) = self.key.decode(&d)?;
        Ok(RawRecord {
            id: self.id,
            packet: Packet {
                tuple,
                direction,
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

/// A `windows` row joined to its key as SQLite returns it, before validation.
struct StoredWindow {
    id: i64,
    key: StoredKey,
    window_start: i64,
    window_end: i64,
    packets: i64,
    bytes: i64,
}

impl StoredWindow {
    /// Reads [`WINDOW_COLUMNS`] then [`KEY_COLUMNS`].
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredWindow> {
        Ok(StoredWindow {
            id: r.get(0)?,
            key: StoredKey::read(r, r.get(1)?, 6)?,
            window_start: r.get(2)?,
            window_end: r.get(3)?,
            packets: r.get(4)?,
            bytes: r.get(5)?,
        })
    }

    fn decode(self, path: &Path) -> Result<WindowRecord, StoreError> {
        let d = Decoder { path, id: self.id };
        let (tuple, direction) = self.key.decode(&d)?;
        Ok(WindowRecord {
            id: self.id,
            window: WindowRow {
                window_start_unix: self.window_start,
                window_end_unix: self.window_end,
                tuple,
                direction,
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

    /// Appends `packets` to the version 2 `packets` table, one SQLite row each, as agents
    /// before schema version 3 wrote them.
    pub(super) fn insert_v2_packets(conn: &mut Connection, packets: &[Packet]) {
        let tx = conn.transaction().expect("transaction");
        insert_rows(
            &tx,
            "packets",
            (RAW_INSERT_COLUMNS, RAW_INSERT_VALUES),
            packets,
            |p| tuple_row_id(&tx, &(p.tuple, p.direction)),
            bind_packet,
        )
        .expect("version 2 rows");
        tx.commit().expect("commit");
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
                if (plan == Some(Plan::Time) && !has_time)
                    || (plan == Some(Plan::Buckets) && !has_keys)
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
}
