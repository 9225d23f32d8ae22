//! `GET /api/history`: stored rows, newest first, with filters and a cursor.
//!
//! Query: `limit` (1-10000, default 100), `before` (cursor: the previous page's
//! `next_cursor`), `from`/`to` (Unix seconds, half-open), `addr` (IPv4/IPv6, matches source or
//! destination), `port` (0-65535, source or destination), `proto` (`TCP`, `UDP`, `ICMP`,
//! `ICMPv6`, `IP-<n>`, `ETH-0x<hex>`, `LLC`), `direction` (`ingress`/`egress`), `interface`
//! (a name, exact), `kind` (`raw` or `aggregated`; default: what the agent stores). Response:
//! `{"kind": "raw", "rows": [...], "next_cursor": 1234}` (`next_cursor` is null on the last page).
//! Row shapes: see `store/mod.rs`.
//!
//! Bounds: a page holds at most `MAX_HISTORY_LIMIT` rows (one more is read to know whether a
//! next page exists), paging is by row id (no offset to skip through), and at most
//! [`MAX_CONCURRENT_QUERIES`] queries run at once on the blocking pool, each with its own
//! read-only connection; one more gets 503. So a flood of history requests costs a bounded
//! amount of memory and threads, and never touches the storage writer or the capture path.

use std::{collections::HashMap, sync::atomic::Ordering};

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

/// History queries running at once; one more gets 503. Each may hold a page of up to
/// `MAX_HISTORY_LIMIT` rows (a few MB as JSON), so this bounds their memory, and leaves the
/// blocking pool to everything else.
pub const MAX_CONCURRENT_QUERIES: usize = 8;

/// The `/api/history` response.
#[derive(Serialize)]
pub struct HistoryDoc {
    /// `raw` or `aggregated`: which table the rows come from.
    pub kind: &'static str,
    /// Newest first.
    pub rows: Vec<HistoryRow>,
    /// The `before` of the next (older) page; `None` (null) on the last page.
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
            "TCP, UDP, ICMP, ICMPv6, IP-<number>, ETH-0x<hex> or LLC",
            Protocol::parse,
        )?,
        direction: p.parsed("direction", "ingress or egress", parse_direction)?,
        interface: p.parsed(
            "interface",
            "an interface name of 1 to 15 characters",
            |s| (!s.is_empty() && s.len() < 16).then(|| s.to_string()),
        )?,
    };
    p.finish("limit, before, from, to, addr, port, proto, direction, interface, kind")?;
    if let (Some(from), Some(to)) = (query.from_unix_s, query.to_unix_s)
        && to < from
    {
        return Err(ApiError::bad_param(
            "to",
            &to.to_string(),
            &format!("at or after from ({from}): the range is [from, to)"),
        ));
    }
    Ok(query)
}

/// `GET /api/history`.
pub async fn get(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<HistoryDoc>, ApiError> {
    let query = parse_query(q, state.history_kind)?;
    let Ok(permit) = state.history_slots.clone().try_acquire_owned() else {
        state.stats.history_rejected.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::unavailable(
            format!("already {MAX_CONCURRENT_QUERIES} history queries running"),
            "retry in a moment; narrowing the query (from, to, addr, port, proto) makes each finish sooner",
        ));
    };
    let kind = match query.kind {
        HistoryKind::Raw => "raw",
        HistoryKind::Aggregated => "aggregated",
    };
    let path = state.db_path.clone();
    // SQLite is blocking: run the query on the blocking pool with a read-only connection, so
    // the writer and the capture path are never waited on (WAL readers do not block writers).
    // The permit moves into the closure: a client that hangs up does not stop the query, so
    // its slot is released only when the query is done.
    let page = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        Store::open_read_only(&path)?.query_history(&query)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(HistoryDoc {
        kind,
        rows: page.rows,
        next_cursor: page.next_cursor,
    }))
}
