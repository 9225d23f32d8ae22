//! The HTTP API (axum): `/metrics`, `/api/status`, `/api/live`, `/api/stream`, `/api/history`,
//! `/healthz`, `/readyz` and the web UI (`/`, `/ui/*`, `ui.rs`), every route behind the
//! `allowed_ips` check.
//!
//! The agent (`agent.rs`) builds one [`AppState`] over its connection table ([`LiveSource`]),
//! the metrics registry (`metrics.rs`), the SQLite path (`store/`) and what it observes
//! ([`Status`]), then runs [`serve`] and [`stream::publish`]. Every error is JSON `{"error", "hint"}` (`error.rs`); every bounded
//! resource (stream clients, concurrent history queries) answers 503 when full and counts it in
//! [`ApiStats`], which `metrics.rs` exports.
//!
//! No handler can panic on any input: parameters are parsed into 400s (`params.rs`), locks
//! recover from poisoning, and SQLite runs in `spawn_blocking`, whose panics come back as a
//! 500. Should a bug panic anyway, [`serve`] serves each connection in its own task, so the
//! panic ends that one connection and never the agent (`tests/api` checks this); hence no
//! catch-panic layer.
//!
//! Connections (`serve.rs`): at most [`MAX_CONNECTIONS`] at once (more wait to be accepted),
//! each closed when it takes over [`HEADER_READ_TIMEOUT`] to send a request's headers.
//! Shutdown: [`serve`] stops accepting when the shutdown handle fires and lets requests in
//! flight finish, for at most [`DRAIN_TIMEOUT`]; stream clients get a close frame (1001, going
//! away), since an upgraded connection is no longer hyper's to wait for.

mod error;
pub mod history;
pub mod live;
mod params;
mod serve;
pub mod status;
pub mod stream;
pub mod ui;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
pub use error::ApiError;
use ipnet::IpNet;
pub use serve::{
    CAP_LOG_PERIOD, DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, ServeLimits, bind, serve,
};
pub use status::{InterfaceList, InterfaceState, InterfaceStatus, Status};
use tokio::sync::{Semaphore, broadcast};

use crate::{
    connections::{ConnectionSnapshot, SortKey},
    metrics::{Format, MetricsSource},
    shutdown::Shutdown,
    store::HistoryKind,
};

/// What the live routes read: the connection table and the kernel's totals. Both methods may
/// block (the agent's `top` may wait for one pass over the table when its shared ranking is
/// stale): the routes call them on the blocking pool.
pub trait LiveSource: Send + Sync + 'static {
    /// The top `limit` active connections by `sort`, descending, as of at most
    /// [`crate::connections::MAX_AGE`] ago.
    fn top(&self, limit: usize, sort: SortKey) -> Vec<ConnectionSnapshot>;
    /// (packets, bytes) seen by the kernel, both directions.
    fn totals(&self) -> (u64, u64);
}

/// Counters of the API itself, exported as metrics (`metrics.rs`). Live for the whole process.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// Requests refused because the peer is outside `allowed_ips` (403).
    pub denied: AtomicU64,
    /// Requests refused for a missing or wrong bearer token (401).
    pub unauthorized: AtomicU64,
    /// Stream clients connected now (a gauge).
    pub stream_clients: AtomicU64,
    /// Stream upgrades refused at the client cap (503).
    pub stream_rejected: AtomicU64,
    /// Stream upgrades refused because a web page of another origin asked (403).
    pub stream_refused_origin: AtomicU64,
    /// Frames that slow stream clients skipped (broadcast lag).
    pub stream_frames_skipped: AtomicU64,
    /// Stream clients disconnected for not taking a frame within the send timeout.
    pub stream_dropped_slow: AtomicU64,
    /// History requests refused because [`history::MAX_CONCURRENT_QUERIES`] were running (503).
    pub history_rejected: AtomicU64,
    /// Requests that failed inside the agent (500); the cause is in the log.
    pub internal_errors: AtomicU64,
    /// HTTP connections open now (a gauge); an upgraded stream client leaves it for
    /// `stream_clients`.
    pub connections: AtomicU64,
    /// Times [`serve`] found all [`ServeLimits::max_connections`] slots held when it went to
    /// accept the next connection, and waited for one to free.
    pub connection_cap_reached: AtomicU64,
}

/// Bounds of `WS /api/stream`. The default is [`stream::MAX_CLIENTS`] and
/// [`stream::SEND_TIMEOUT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Clients connected at once; one more gets 503.
    pub max_clients: usize,
    /// How long one frame may take to be written to a client before the client is dropped.
    pub send_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            max_clients: stream::MAX_CLIENTS,
            send_timeout: stream::SEND_TIMEOUT,
        }
    }
}

/// Shared by every handler (cheap to clone). Built once by the agent, lives as long as the API.
#[derive(Clone)]
pub struct AppState {
    /// The connection table and the kernel's totals.
    pub live: Arc<dyn LiveSource>,
    /// Encoded on every `GET /metrics`.
    /// What `/metrics` encodes, read on every scrape.
    pub metrics: Arc<dyn MetricsSource>,
    /// The SQLite file; `/api/history` opens it read-only per request.
    pub db_path: PathBuf,
    /// What `/api/history` returns without `kind`.
    pub history_kind: HistoryKind,
    /// Networks allowed to use the API. Empty: everyone allowed.
    pub allowed_ips: Arc<Vec<IpNet>>,
    /// The bearer token every route but the probes asks for; `None`: none asked.
    pub api_token: Option<Arc<str>>,
    /// True once the program is attached and the store is open; false again on shutdown.
    pub ready: Arc<AtomicBool>,
    /// Frames from [`stream::publish`] to every stream client (DropNewest for slow ones).
    pub stream: broadcast::Sender<Arc<String>>,
    /// The stream's client cap and send timeout; see [`AppState::with_stream_limits`].
    pub stream_limits: StreamLimits,
    /// One permit per stream client, `stream_limits.max_clients` in all.
    pub stream_slots: Arc<Semaphore>,
    /// One permit per running history query, [`history::MAX_CONCURRENT_QUERIES`] in all.
    pub history_slots: Arc<Semaphore>,
    /// Fires when the server shuts down, so stream clients can be closed. [`serve`] sets it;
    /// `None` (a router served some other way) leaves stream clients open until they leave.
    pub shutdown: Option<Shutdown>,
    /// The API's own counters.
    pub stats: Arc<ApiStats>,
    /// What `/api/status` says about the agent; see [`AppState::with_status`].
    pub status: Status,
}

impl AppState {
    /// A state with the default stream limits, not ready yet.
    pub fn new(
        live: Arc<dyn LiveSource>,
        metrics: Arc<dyn MetricsSource>,
        db_path: PathBuf,
        history_kind: HistoryKind,
        allowed_ips: Vec<IpNet>,
    ) -> AppState {
        let stream_limits = StreamLimits::default();
        AppState {
            live,
            metrics,
            db_path,
            history_kind,
            allowed_ips: Arc::new(allowed_ips),
            api_token: None,
            ready: Arc::new(AtomicBool::new(false)),
            stream: broadcast::channel(stream::CHANNEL_FRAMES).0,
            stream_limits,
            stream_slots: Arc::new(Semaphore::new(stream_limits.max_clients)),
            history_slots: Arc::new(Semaphore::new(history::MAX_CONCURRENT_QUERIES)),
            shutdown: None,
            stats: Arc::new(ApiStats::default()),
            status: Status::default(),
        }
    }

    /// The same state with what `/api/status` reports (by default: this version, raw mode,
    /// ingress, started when the state was built, no interface).
    pub fn with_status(self, status: Status) -> AppState {
        AppState { status, ..self }
    }

    /// The same state asking every request but `/healthz` and `/readyz` for `token`
    /// (`Authorization: Bearer <token>`).
    pub fn with_api_token(self, token: impl Into<Arc<str>>) -> AppState {
        AppState {
            api_token: Some(token.into()),
            ..self
        }
    }

    /// The same state with other stream limits (and a fresh set of client slots, so call it
    /// before serving).
    pub fn with_stream_limits(self, limits: StreamLimits) -> AppState {
        AppState {
            stream_limits: limits,
            stream_slots: Arc::new(Semaphore::new(limits.max_clients)),
            ..self
        }
    }
}

/// The router with every route and the allowlist in front of all of them.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status::get))
        .route("/api/live", get(live::get))
        .route("/api/stream", get(stream::upgrade))
        .route("/api/history", get(history::get))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                error: "no such route".into(),
                hint: ROUTES.into(),
            }
        })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                error: "method not allowed".into(),
                hint: format!("every route takes GET only; {ROUTES}"),
            }
        })
        .layer(middleware::from_fn_with_state(state.clone(), allowlist))
        .with_state(state)
}

/// Every route, for the hint of a 404 or 405.
const ROUTES: &str = "routes: / (the web UI), /metrics, /api/status, /api/live, /api/stream, \
                      /api/history, /healthz, /readyz";

/// Returns true if and only if `peer` may use the API: `allowed` is empty, or one of its
/// networks contains `peer`. An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`, how a dual-stack
/// socket reports IPv4 clients) matches both as IPv4 and as written.
pub fn is_allowed(allowed: &[IpNet], peer: IpAddr) -> bool {
    let as_v4 = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    allowed.is_empty()
        || allowed
            .iter()
            .any(|net| net.contains(&peer) || as_v4.is_some_and(|v4| net.contains(&v4)))
}

/// Returns true if and only if a token does not guard `path`: the orchestrator's probes carry
/// no credentials, and a browser loading the web UI cannot send any (the page and its assets
/// hold no data; the page sends the token on each API request it makes).
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/") || path.starts_with("/ui/")
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in constant time (the
/// length of the token aside), so response times do not tell how much of a guess was right.
pub fn has_token(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| bool::from(given.ct_eq(token.as_bytes())))
}

/// The prefix of the WebSocket subprotocol that carries the token: a browser's `WebSocket`
/// cannot set `Authorization`, so the web UI offers the protocols `ayaflow` and
/// `ayaflow.bearer.<token as lower-case hex>` (hex, since a protocol name allows no `/`, `+` or
/// `=`), and the server answers with `ayaflow` ([`stream::PROTOCOL`]).
pub const STREAM_TOKEN_PROTOCOL: &str = "ayaflow.bearer.";

/// Whether one of the `Sec-WebSocket-Protocol` values of `headers` is
/// [`STREAM_TOKEN_PROTOCOL`] followed by `token` in hex, compared in constant time like
/// [`has_token`].
pub fn has_stream_token(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix(STREAM_TOKEN_PROTOCOL))
        .filter_map(decode_hex)
        // Every offered value is compared, so the time does not tell which one matched.
        .fold(false, |found, given| {
            found | bool::from(given.ct_eq(token.as_bytes()))
        })
}

/// `hex` (either case) as bytes; `None` if it is not an even number of hex digits.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16);
    let b = hex.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

/// In front of every route: refuses peers outside `allowed_ips`, then requests without the
/// token (when one is set; the probes and the UI's files stay open; the stream also takes it
/// as a subprotocol), and counts internal errors.
async fn allowlist(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if !is_allowed(&state.allowed_ips, peer.ip()) {
        state.stats.denied.fetch_add(1, Ordering::Relaxed);
        return ApiError::forbidden(peer.ip()).into_response();
    }
    if let Some(token) = &state.api_token
        && !is_public(req.uri().path())
        && !has_token(req.headers(), token)
        && !(req.uri().path() == "/api/stream" && has_stream_token(req.headers(), token))
    {
        state.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        return ApiError::unauthorized().into_response();
    }
    let response = next.run(req).await;
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
        state.stats.internal_errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let text = crate::metrics::encode(&*state.metrics, format).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], text).into_response())
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if !state.ready.load(Ordering::Relaxed) {
        Err(ApiError::unavailable(
            "not ready",
            "the program is not attached or the store is not open yet",
        ))
    } else if state.status.interfaces_ready.load(Ordering::Relaxed) {
        Ok("ready")
    } else {
        Err(ApiError::unavailable(
            "not ready",
            "an interface named by --interface is missing or not attached: see /api/status",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| s.parse().expect("fixture networks are valid"))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("fixture addresses are valid")
    }

    fn protocols(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::SEC_WEBSOCKET_PROTOCOL,
                v.parse().expect("fixture headers are valid"),
            );
        }
        h
    }

    #[test]
    fn the_stream_token_is_read_from_a_subprotocol() {
        // "s3cr/t=" in hex.
        let hex = "73336372 2f743d".replace(' ', "");
        let offered = format!("ayaflow, ayaflow.bearer.{hex}");
        assert!(has_stream_token(&protocols(&[&offered]), "s3cr/t="));
        assert!(has_stream_token(
            &protocols(&["ayaflow", &format!("ayaflow.bearer.{}", hex.to_uppercase())]),
            "s3cr/t="
        ));
        assert!(!has_stream_token(&protocols(&[&offered]), "s3cr/t"));
        assert!(!has_stream_token(&protocols(&["ayaflow"]), "s3cr/t="));
        // Odd length and non-hex digits are refused, never panics.
        assert!(!has_stream_token(&protocols(&["ayaflow.bearer.733"]), "s"));
        assert!(!has_stream_token(&protocols(&["ayaflow.bearer.zz"]), "s"));
        assert!(!has_stream_token(&protocols(&["ayaflow.bearer."]), "s"));
    }

    #[test]
    fn only_the_probes_and_the_ui_are_public() {
        for path in ["/healthz", "/readyz", "/", "/ui/main.js", "/ui/nothing"] {
            assert!(is_public(path), "{path}");
        }
        for path in [
            "/metrics",
            "/api/status",
            "/api/live",
            "/api/stream",
            "/uix",
            "/index.html",
        ] {
            assert!(!is_public(path), "{path}");
        }
    }

    #[test]
    fn empty_list_allows_everyone() {
        assert!(is_allowed(&[], ip("203.0.113.9")));
        assert!(is_allowed(&[], ip("2001:db8::1")));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let allowed = nets(&["127.0.0.0/8", "10.1.0.0/16"]);
        assert!(is_allowed(&allowed, ip("127.0.0.1")));
        assert!(is_allowed(&allowed, ip("::ffff:127.0.0.1")));
        assert!(is_allowed(&allowed, ip("::ffff:10.1.2.3")));
        assert!(!is_allowed(&allowed, ip("::ffff:10.2.0.1")));
        assert!(!is_allowed(&allowed, ip("192.0.2.1")));
        // ::1 is loopback too, but not IPv4: only an IPv6 entry admits it.
        assert!(!is_allowed(&allowed, ip("::1")));
    }

    #[test]
    fn ipv6_networks_match_ipv6_peers_and_mapped_entries_still_work() {
        let allowed = nets(&["::1/128", "::ffff:192.0.2.0/120"]);
        assert!(is_allowed(&allowed, ip("::1")));
        assert!(!is_allowed(&allowed, ip("::2")));
        // A mapped network written in the list admits the mapped peer as written.
        assert!(is_allowed(&allowed, ip("::ffff:192.0.2.7")));
        // A plain IPv4 peer is not rewritten to mapped form: IPv4 entries are the way to
        // admit it (the mapped form exists only on dual-stack sockets).
        assert!(!is_allowed(&allowed, ip("192.0.2.7")));
    }
}
