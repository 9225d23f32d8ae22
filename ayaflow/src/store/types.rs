//! What a caller of the store sees: history queries, pages and rows, and their JSON.

use super::*;

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
    /// Only rows seen on the interface of this name.
    pub interface: Option<String>,
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
            interface: None,
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
        let mut m = s.serialize_struct("RawRecord", 13)?;
        m.serialize_field("id", &self.id)?;
        m.serialize_field("timestamp", &(p.ts_unix_ns / NANOS_PER_SEC))?;
        m.serialize_field("timestamp_ns", &p.ts_unix_ns)?;
        m.serialize_field("direction", direction_name(p.direction))?;
        m.serialize_field("interface", &p.tuple.interface)?;
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
        let mut m = s.serialize_struct("WindowRecord", 10)?;
        m.serialize_field("id", &self.id)?;
        m.serialize_field("window_start", &w.window_start_unix)?;
        m.serialize_field("window_end", &w.window_end_unix)?;
        m.serialize_field("direction", direction_name(w.direction))?;
        m.serialize_field("interface", &w.tuple.interface)?;
        m.serialize_field("proto", &w.tuple.proto)?;
        m.serialize_field("src", &w.tuple.src_endpoint())?;
        m.serialize_field("dst", &w.tuple.dst_endpoint())?;
        m.serialize_field("packets", &w.packets)?;
        m.serialize_field("bytes", &w.bytes)?;
        m.end()
    }
}
