//! `GET /api/history`: stored rows, newest first, with filters and a cursor.
//!
//! Query: `limit` (1-10000, default 100), `before` (cursor: the previous page's
//! `next_cursor`), `from`/`to` (Unix seconds, half-open), `addr` (IPv4/IPv6, matches source or
//! destination), `port` (0-65535, source or destination), `proto` (`TCP`, `UDP`, `ICMP`,
//! `ICMPv6`, `IP-<n>`, `ETH-0x<hex>`), `direction` (`ingress`/`egress`), `kind` (`raw` or
//! `aggregated`; default: what the agent stores). Response:
//! `{"kind": "raw", "rows": [...], "next_cursor": 1234}` (`next_cursor` is null on the last page).

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Query, State},
};
use serde::Serialize;

use super::{AppState, error::ApiError, params::Params};
use crate::{
    flow::{Protocol, parse_direction},
    store::{
        DEFAULT_HISTORY_LIMIT, HistoryKind, HistoryQuery, HistoryRow, MAX_HISTORY_LIMIT, Store,
    },
};

#[derive(Serialize)]
pub struct HistoryDoc {
    pub kind: &'static str,
    pub rows: Vec<HistoryRow>,
    pub next_cursor: Option<i64>,
}

/// Parses the query string into a `HistoryQuery` (400 on anything it cannot accept).
pub fn parse_query(
    q: HashMap<String, String>,
    default_kind: HistoryKind,
) -> Result<HistoryQuery, ApiError> {
    let mut p = Params::new(q);
    let query = HistoryQuery {
        kind: p
            .parsed("kind", "raw or aggregated", HistoryKind::parse)?
            .unwrap_or(default_kind),
        limit: p
            .number("limit", 1, MAX_HISTORY_LIMIT)?
            .unwrap_or(DEFAULT_HISTORY_LIMIT),
        before_id: p.number("before", 1, i64::MAX)?,
        from_unix_s: p.number("from", 0, i64::MAX / 1_000_000_000)?,
        to_unix_s: p.number("to", 0, i64::MAX / 1_000_000_000)?,
        addr: p.parsed("addr", "an IPv4 or IPv6 address", |s| s.parse().ok())?,
        port: p.number("port", 0, u16::MAX)?,
        proto: p.parsed(
            "proto",
            "TCP, UDP, ICMP, ICMPv6, IP-<number> or ETH-0x<hex>",
            Protocol::parse,
        )?,
        direction: p.parsed("direction", "ingress or egress", parse_direction)?,
    };
    p.finish("limit, before, from, to, addr, port, proto, direction, kind")?;
    Ok(query)
}

pub async fn get(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<HistoryDoc>, ApiError> {
    let query = parse_query(q, state.history_kind)?;
    let kind = match query.kind {
        HistoryKind::Raw => "raw",
        HistoryKind::Aggregated => "aggregated",
    };
    let path = state.db_path.clone();
    // SQLite is blocking: run the query on the blocking pool with a read-only connection, so
    // the writer and the capture path are never waited on (WAL readers do not block writers).
    let page =
        tokio::task::spawn_blocking(move || Store::open_read_only(&path)?.query_history(&query))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    Ok(Json(HistoryDoc {
        kind,
        rows: page.rows,
        next_cursor: page.next_cursor,
    }))
}
