//! The HTTP API (axum): `/metrics`, `/api/live`, `/api/stream`, `/api/history`, `/healthz`,
//! `/readyz`, every route behind the `allowed_ips` check.
//!
//! Shutdown: `serve` stops accepting when the shutdown handle fires and lets requests in
//! flight finish (axum's graceful shutdown); stream clients get a close frame.

mod error;
pub mod history;
pub mod live;
mod params;
pub mod stream;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
pub use error::ApiError;
use ipnet::IpNet;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, broadcast},
};

use crate::{
    connections::{ConnectionSnapshot, SortKey},
    metrics::{Format, MetricsSource},
    shutdown::Shutdown,
    store::HistoryKind,
};

/// What the live routes read: the connection table and the kernel's totals.
pub trait LiveSource: Send + Sync + 'static {
    /// The top `limit` active connections by `sort`, descending.
    fn top(&self, limit: usize, sort: SortKey) -> Vec<ConnectionSnapshot>;
    /// (packets, bytes) seen by the kernel, both directions.
    fn totals(&self) -> (u64, u64);
}

/// Counters of the API itself, exported as metrics.
#[derive(Debug, Default)]
pub struct ApiStats {
    pub denied: AtomicU64,
    pub stream_clients: AtomicU64,
    pub stream_rejected: AtomicU64,
    pub stream_frames_skipped: AtomicU64,
    pub stream_dropped_slow: AtomicU64,
}

/// Shared by every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    pub live: Arc<dyn LiveSource>,
    /// What `/metrics` encodes, read on every scrape.
    pub metrics: Arc<dyn MetricsSource>,
    /// The SQLite file; `/api/history` opens it read-only per request.
    pub db_path: PathBuf,
    /// What `/api/history` returns without `kind`.
    pub history_kind: HistoryKind,
    /// Empty: everyone allowed.
    pub allowed_ips: Arc<Vec<IpNet>>,
    /// True once the program is attached and the store is open.
    pub ready: Arc<AtomicBool>,
    pub stream: broadcast::Sender<Arc<String>>,
    pub stream_slots: Arc<Semaphore>,
    pub stats: Arc<ApiStats>,
}

impl AppState {
    pub fn new(
        live: Arc<dyn LiveSource>,
        metrics: Arc<dyn MetricsSource>,
        db_path: PathBuf,
        history_kind: HistoryKind,
        allowed_ips: Vec<IpNet>,
    ) -> AppState {
        AppState {
            live,
            metrics,
            db_path,
            history_kind,
            allowed_ips: Arc::new(allowed_ips),
            ready: Arc::new(AtomicBool::new(false)),
            stream: broadcast::channel(stream::CHANNEL_FRAMES).0,
            stream_slots: Arc::new(Semaphore::new(stream::MAX_CLIENTS)),
            stats: Arc::new(ApiStats::default()),
        }
    }
}

/// The router with every route and the allowlist in front of all of them.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/live", get(live::get))
        .route("/api/stream", get(stream::upgrade))
        .route("/api/history", get(history::get))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                error: "no such route".into(),
                hint: "routes: /metrics, /api/live, /api/stream, /api/history, /healthz, /readyz"
                    .into(),
            }
        })
        .layer(middleware::from_fn_with_state(state.clone(), allowlist))
        .with_state(state)
}

/// True if and only if `peer` may use the API (IPv4-mapped IPv6 peers match as IPv4).
pub fn is_allowed(allowed: &[IpNet], peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    allowed.is_empty() || allowed.iter().any(|net| net.contains(&peer))
}

async fn allowlist(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if is_allowed(&state.allowed_ips, peer.ip()) {
        next.run(req).await
    } else {
        state.stats.denied.fetch_add(1, Ordering::Relaxed);
        ApiError::forbidden(peer.ip()).into_response()
    }
}

/// `GET /metrics` in the format the `Accept` header asks for (see [`Format::negotiate`]).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let text = crate::metrics::encode(&*state.metrics, format).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], text).into_response())
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.ready.load(Ordering::Relaxed) {
        Ok("ready")
    } else {
        Err(ApiError::unavailable(
            "not ready",
            "the program is not attached or the store is not open yet",
        ))
    }
}

/// Binds `addr`. The default `::` falls back to `0.0.0.0` where IPv6 is disabled.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Err(e) if addr.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) => {
            tracing::info!(
                "binding {addr} failed ({e}); trying 0.0.0.0:{}",
                addr.port()
            );
            TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, addr.port())).await
        }
        r => r,
    }
}

/// Serves until `shutdown` fires, then finishes requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.wait())
        .await
}
