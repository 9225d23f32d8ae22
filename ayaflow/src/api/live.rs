//! `GET /api/live`: the top connections of the live table, with the kernel's exact totals.
//!
//! ```json
//! {"connections": [{"connection": {"src": "192.168.1.5:443", "dst": "10.0.0.2:34560", "proto": "TCP"},
//!                   "stats": {"packets_count": 150, "bytes_count": 120450,
//!                             "first_seen": 1678886000, "last_seen": 1678886005,
//!                             "ingress_packets": 150, "ingress_bytes": 120450,
//!                             "egress_packets": 0, "egress_bytes": 0}}],
//!  "total_packets": 12050, "total_bytes": 8504320}
//! ```
//! Query: `limit` (1-1000, default 50), `sort` (`packets` default, `bytes`, `last_seen`,
//! `first_seen`), always descending.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Query, State},
};
use serde::Serialize;

use super::{AppState, error::ApiError, params::Params};
use crate::connections::{ConnectionSnapshot, SortKey};

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
    LiveDoc {
        connections: top.iter().map(LiveConnection::from).collect(),
        total_packets,
        total_bytes,
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

/// `GET /api/live`.
pub async fn get(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<LiveDoc>, ApiError> {
    let mut params = Params::new(q);
    let (limit, sort) = options(&mut params)?;
    params.finish("limit, sort")?;
    Ok(Json(document(&state, limit, sort)))
}
