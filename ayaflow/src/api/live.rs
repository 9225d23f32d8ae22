//! `GET /api/live`: the top connections of the live table, with the kernel's exact totals.
//!
//! ```json
//! {"connections": [{"connection": {"src": "192.168.1.5:443", "dst": "10.0.0.2:34560", "proto": "TCP"},
//!                   "stats": {"packets_count": 150, "bytes_count": 120450,
//!                             "first_seen": 1678886000, "last_seen": 1678886005,
//!                             "ingress_packets": 150, "ingress_bytes": 120450,
//!                             "egress_packets": 0, "egress_bytes": 0}}],
//!  "total_packets": 12050, "total_bytes": 8504320, "time_ms": 1678886005123,
//!  "directions": {"ingress": {"packets": 7000, "bytes": 5000000}, "egress": {"packets": 5050, "bytes": 3504320}},
//!  "protocols": {"tcp": 9000, "udp": 3000, "icmp": 50, "other_ip": 0, "non_ip": 0},
//!  "losses": {"ayaflow_ringbuf_drops_total": 0, ...}}
//! ```
//! Query: `limit` (1-1000, default 50), `sort` (`packets` default, `bytes`, `last_seen`,
//! `first_seen`), always descending.
//!
//! The connections come from the table's shared ranking (`connections::LiveRanking`), built at
//! most once per tick and at most [`crate::connections::MAX_AGE`] (0.5 s) old when served, so
//! a request costs a copy of `limit` entries, not a walk of the table; the kernel totals and
//! counters are read at the request.
//!
//! `directions`, `protocols` and `losses` are samples of `/metrics` read at the same moment
//! (the metrics source's families, so both always agree): the kernel's exact packets and bytes
//! per hook, its packets per protocol (both hooks), and the loss counters
//! ([`LOSS_COUNTERS`], summed over their labels). A rate is the difference between two
//! documents over the difference of their `time_ms`; the web UI draws its charts from them.

use std::collections::{BTreeMap, HashMap};

use axum::{
    Json,
    extract::{Query, State},
};
use serde::Serialize;

use super::{AppState, error::ApiError, params::Params};
use crate::{
    clock::unix_now_ns,
    connections::{ConnectionSnapshot, SortKey},
    metrics::Family,
};

/// Connections in `/api/live` and each `/api/stream` frame unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// The `/api/live` document (and each stream frame). Field names are the documented API:
/// fields may be added, never renamed.
#[derive(Serialize)]
pub struct LiveDoc {
    /// The top connections, highest first.
    pub connections: Vec<LiveConnection>,
    /// Packets the kernel counted, both directions, since the program was attached (exact).
    pub total_packets: u64,
    /// Bytes the kernel counted, both directions (exact).
    pub total_bytes: u64,
    /// When the document was built, Unix milliseconds.
    pub time_ms: u64,
    /// `ingress` and `egress`: the kernel's exact packets and bytes of each hook
    /// (`ayaflow_packets_total`, `ayaflow_bytes_total`); 0 for a hook not attached.
    pub directions: BTreeMap<&'static str, DirectionTotals>,
    /// Packets by protocol, both hooks (`ayaflow_protocol_packets_total`): `tcp`, `udp`,
    /// `icmp` (ICMP and ICMPv6), `other_ip`, `non_ip`.
    pub protocols: BTreeMap<&'static str, u64>,
    /// The loss counters by `/metrics` sample name (`ayaflow_ringbuf_drops_total`, ...),
    /// summed over their labels; `GET /api/status` has their help texts.
    pub losses: BTreeMap<String, u64>,
}

/// Packets and bytes of one hook.
#[derive(Serialize, Default, Clone, Copy)]
pub struct DirectionTotals {
    /// Packets the hook saw since the program was attached (exact).
    pub packets: u64,
    /// Their bytes on the wire (exact).
    pub bytes: u64,
}

/// The metric families (without `_total`) the web UI shows as losses: each counts packets,
/// rows, records or frames missing from some view (the live table, the history, the export,
/// the stream), or readings that failed. Not in the list: counters of work done another way
/// (flow fallbacks go through the ring buffer; window overflow rows keep totals exact; parse
/// errors are still counted). Families the agent does not export (IPFIX without collectors)
/// are left out.
pub const LOSS_COUNTERS: &[&str] = &[
    "ayaflow_ringbuf_drops",
    "ayaflow_connection_table_overflow_packets",
    "ayaflow_events_malformed",
    "ayaflow_storage_rows_dropped",
    "ayaflow_storage_errors",
    "ayaflow_storage_undecodable_blocks",
    "ayaflow_kernel_read_errors",
    "ayaflow_ipfix_records_dropped",
    "ayaflow_stream_frames_skipped",
    "ayaflow_stream_clients_dropped",
];

/// The protocol labels of `ayaflow_protocol_packets`, in the order the UI shows them.
const PROTOCOLS: [&str; 5] = ["tcp", "udp", "icmp", "other_ip", "non_ip"];

/// The sum of the samples of family `name` whose labels include every `(label, value)` of
/// `with`; 0 if there is no such family.
fn sum(families: &[Family], name: &str, with: &[(&str, &str)]) -> u64 {
    families
        .iter()
        .filter(|f| f.name == name)
        .flat_map(|f| &f.samples)
        .filter(|(labels, _)| {
            with.iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// One connection of [`LiveDoc`].
#[derive(Serialize)]
pub struct LiveConnection {
    pub connection: Endpoints,
    pub stats: Stats,
}

/// Who talks to whom, oriented as first seen (`src` sent the first packet).
#[derive(Serialize)]
pub struct Endpoints {
    /// `addr:port`, IPv6 as `[addr]:port`.
    pub src: String,
    /// Like `src`.
    pub dst: String,
    /// `TCP`, `UDP`, `ICMP`, `ICMPv6`, `IP-<n>`, `ETH-0x<hex>` or `LLC`.
    pub proto: String,
    /// The interface the connection was seen on (a connection that crosses two observed
    /// interfaces is listed once per interface).
    pub interface: String,
}

/// Counters of one connection; times are Unix seconds, rounded down.
#[derive(Serialize)]
pub struct Stats {
    pub packets_count: u64,
    pub bytes_count: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub egress_bytes: u64,
}

impl From<&ConnectionSnapshot> for LiveConnection {
    fn from(c: &ConnectionSnapshot) -> LiveConnection {
        LiveConnection {
            connection: Endpoints {
                src: c.tuple.src_endpoint(),
                dst: c.tuple.dst_endpoint(),
                proto: c.tuple.proto.to_string(),
                interface: c.tuple.interface.to_string(),
            },
            stats: Stats {
                packets_count: c.packets,
                bytes_count: c.bytes,
                first_seen: c.first_seen_unix_ns / 1_000_000_000,
                last_seen: c.last_seen_unix_ns / 1_000_000_000,
                ingress_packets: c.ingress_packets,
                ingress_bytes: c.ingress_bytes,
                egress_packets: c.egress_packets,
                egress_bytes: c.egress_bytes,
            },
        }
    }
}

/// Builds the document from the table and the kernel totals.
pub fn document(state: &AppState, limit: usize, sort: SortKey) -> LiveDoc {
    let top = state.live.top(limit, sort);
    let (total_packets, total_bytes) = state.live.totals();
    let families = state.metrics.families();
    let directions = ["ingress", "egress"]
        .into_iter()
        .map(|d| {
            let with = [("direction", d)];
            let totals = DirectionTotals {
                packets: sum(&families, "ayaflow_packets", &with),
                bytes: sum(&families, "ayaflow_bytes", &with),
            };
            (d, totals)
        })
        .collect();
    let protocols = PROTOCOLS
        .into_iter()
        .map(|p| {
            let n = sum(&families, "ayaflow_protocol_packets", &[("protocol", p)]);
            (p, n)
        })
        .collect();
    let losses = LOSS_COUNTERS
        .iter()
        .filter(|name| families.iter().any(|f| f.name == **name))
        .map(|name| (format!("{name}_total"), sum(&families, name, &[])))
        .collect();
    LiveDoc {
        connections: top.iter().map(LiveConnection::from).collect(),
        total_packets,
        total_bytes,
        time_ms: unix_now_ns() / 1_000_000,
        directions,
        protocols,
        losses,
    }
}

/// Parses `limit` and `sort` (shared with the stream).
pub fn options(params: &mut Params) -> Result<(usize, SortKey), ApiError> {
    let limit = params
        .number("limit", 1, MAX_LIMIT)?
        .unwrap_or(DEFAULT_LIMIT);
    let sort = params
        .parsed(
            "sort",
            "one of packets, bytes, last_seen, first_seen",
            |s| match s {
                "packets" => Some(SortKey::Packets),
                "bytes" => Some(SortKey::Bytes),
                "last_seen" => Some(SortKey::LastSeen),
                "first_seen" => Some(SortKey::FirstSeen),
                _ => None,
            },
        )?
        .unwrap_or(SortKey::Packets);
    Ok((limit, sort))
}

/// Builds the document on the blocking pool: reading the ranking may wait for a pass over
/// the table (see [`super::LiveSource`]) and the counters are system calls. A panic while
/// building it is resumed here, so it ends the request's connection as a panic in the handler
/// would (`serve` contains it).
pub async fn document_off_workers(
    state: &AppState,
    limit: usize,
    sort: SortKey,
) -> Result<LiveDoc, ApiError> {
    let state = state.clone();
    match tokio::task::spawn_blocking(move || document(&state, limit, sort)).await {
        Ok(doc) => Ok(doc),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(ApiError::internal(e)),
        },
    }
}

/// `GET /api/live`.
pub async fn get(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<LiveDoc>, ApiError> {
    let mut params = Params::new(q);
    let (limit, sort) = options(&mut params)?;
    params.finish("limit, sort")?;
    Ok(Json(document_off_workers(&state, limit, sort).await?))
}
