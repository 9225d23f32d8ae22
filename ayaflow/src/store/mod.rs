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
//! protocols by name (`TCP`, `UDP`, `ICMP`, `ICMPv6`, `IP-<n>`, `ETH-0x<hex>`, `LLC`),
//! directions as `ingress`/`egress`. See `schema.rs` for columns and indexes.
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
//!
//! # Layout
//! - this file: [`Store`] and the limits shared by its parts;
//! - `types`: what callers see (queries, pages, rows) and their JSON;
//! - `open`: opening (writer, reader), connection settings, replacement check;
//! - `write`: the write path and the writer's key-id cache (`key_ids`: its map);
//! - `retention`: deleting old history, sweeping unused keys;
//! - `budget`: the file's used size, the WAL's limit, deleting the oldest history;
//! - `plan`: the query planner and reading the rows it picks;
//! - `decode`: stored rows checked and decoded;
//! - `blocks`: raw rows packed into compressed blocks;
//! - `schema`: creating and migrating the schema; `error`: [`StoreError`] and its kinds.

mod blocks;
mod budget;
mod decode;
mod error;
mod key_ids;
mod open;
mod plan;
mod retention;
mod schema;
mod types;
mod write;

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
use decode::*;
use open::*;
use plan::*;
#[cfg(test)]
use retention::MIN_TUPLES_BEFORE_SWEEP;
pub use types::*;
use write::*;

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
    /// Newest blocks this writer found undecodable and closed; see
    /// [`Store::undecodable_blocks`].
    undecodable_blocks: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod consistency_tests;
#[cfg(test)]
mod tests;
