//! The API's listener and accept loop: one task per HTTP/1 connection, at most
//! [`ServeLimits::max_connections`] of them at once, each closed when a request's headers take
//! longer than [`ServeLimits::header_read_timeout`], and all of them given
//! [`ServeLimits::drain_timeout`] to finish once the shutdown handle fires.
//!
//! `mod.rs` builds the router; this module only decides which sockets it gets and for how
//! long. `axum::serve` offers neither a cap nor a header timeout, so a client that opens
//! sockets and sends a byte now and then (slowloris) could hold any number of them, and since
//! its graceful shutdown waits for every connection, keep the agent from stopping. Here:
//!
//! - **Full is `Block`** (STYLE.md section 3): with every slot held the loop stops accepting,
//!   so new clients wait in the kernel's listen backlog (no file descriptor, no task) and get
//!   the slots in the order they arrived. Accepting and closing them instead would hand each
//!   freed slot to whoever reconnects fastest, which is the client holding the others. Each
//!   time the loop finds the cap reached it counts it (`ApiStats::connection_cap_reached`) and
//!   logs, at most once per [`CAP_LOG_PERIOD`].
//! - **The header timeout also bounds idle keep-alive connections**: hyper starts it whenever
//!   it waits for a request, the next one on a kept-alive connection included. A slot is thus
//!   held longer than the timeout only by a connection whose request is being served.
//! - **An upgraded connection (`WS /api/stream`) leaves its slot**: hyper hands the socket to
//!   the stream, whose own cap (`StreamLimits::max_clients`) bounds it, and which closes its
//!   clients on shutdown itself (`stream.rs`).
//! - **Shutdown**: the listener closes, each connection finishes the request it is serving and
//!   closes (hyper's graceful shutdown, as `axum::serve` does it), and connections still open
//!   after the drain timeout are dropped. Keep that below the agent's step limit for stopping
//!   the API (`agent.rs`), which abandons the whole task.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{Extension, Router, extract::ConnectInfo, serve::Listener};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{JoinError, JoinSet},
};
use tower::Layer as _;

use super::{ApiStats, AppState, router};
use crate::{ratelimit::RateLimit, shutdown::Shutdown};

/// HTTP connections served at once by default. The API's clients are a Prometheus scrape, a
/// dashboard or two and scripts, each needing one connection (keep-alive); 256 leaves room
/// for many while bounding the sockets and tasks a flood of idle connections can take.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a connection may take, by default, to send a request's complete headers (or,
/// kept alive, to start its next request). Every route is a GET without a body, so a real
/// client sends its headers in one go: seconds are ample on a slow link, and a slot held by a
/// stalled client frees soon. 12 s rather than a round 10 s: equal to a common scrape
/// interval (5, 10, 15, 30, 60 s), Prometheus's next request on its kept-alive connection
/// would arrive just as the server closes it, and fail now and then.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(12);

/// How long shutdown waits, by default, for open connections to finish before dropping them.
/// Requests take milliseconds (history queries are bounded by their row limit); what is still
/// open after 5 s is a client that stopped reading or sending.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// At most one "connection cap reached" line per period: a flood would otherwise log once per
/// freed slot.
pub const CAP_LOG_PERIOD: Duration = Duration::from_secs(60);

/// The bounds [`serve`] holds its connections to. The default is [`MAX_CONNECTIONS`],
/// [`HEADER_READ_TIMEOUT`] and [`DRAIN_TIMEOUT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// HTTP connections served at once (at least 1). With all of them open the API stops
    /// accepting; new clients wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, counted from when the
    /// server starts waiting for them (when it connects, and after each response on a
    /// keep-alive connection); past it the connection is closed.
    pub header_read_timeout: Duration,
    /// How long shutdown lets open connections finish the requests they are serving; those
    /// still open then are dropped.
    pub drain_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }
}

/// Binds `addr`. The default `::` falls back to `0.0.0.0` where IPv6 is disabled.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Err(e) if addr.ip() == IpAddr::from(Ipv6Addr::UNSPECIFIED) => {
            tracing::info!(
                "binding {addr} failed ({e}); trying 0.0.0.0:{}",
                addr.port()
            );
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, addr.port())).await
        }
        r => r,
    }
}

/// Serves until `shutdown` fires, within `limits`; then finishes requests in flight (for at
/// most `limits.drain_timeout`) and closes stream clients. Fails only if `listener` has no
/// local address; errors of one connection or one `accept` are logged and served past.
pub async fn serve(
    mut listener: TcpListener,
    state: AppState,
    limits: ServeLimits,
    shutdown: Shutdown,
) -> io::Result<()> {
    let port = listener.local_addr()?.port();
    let stats = state.stats.clone();
    let app = router(AppState {
        shutdown: Some(shutdown.clone()),
        ..state
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let cap_log = RateLimit::new(CAP_LOG_PERIOD);
    let mut connections = JoinSet::new();
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);

    loop {
        // Finished tasks wait in the set until joined; reaping them before each accept keeps
        // it at about the open connections.
        while let Some(ended) = connections.try_join_next() {
            note_end(ended);
        }
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                stats.connection_cap_reached.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = cap_log.ready() {
                    tracing::warn!(
                        suppressed,
                        "the API holds {max} connections, its cap: new clients wait until one \
                         closes (one that sends no complete request headers within {:?}, idle \
                         keep-alive ones included, is closed). Counted in \
                         ayaflow_api_connection_cap_reached_total; see who holds them with \
                         `ss -tn state established '( sport = :{port} )'`, and have clients \
                         reuse one keep-alive connection",
                        limits.header_read_timeout
                    );
                }
                tokio::select! {
                    () = &mut stop => break,
                    // The semaphore is never closed, so acquiring cannot fail.
                    slot = slots.clone().acquire_owned() => slot.expect("the slots are never closed"),
                }
            }
        };
        // axum's `accept` retries by itself: it skips connections reset before being accepted
        // and waits a second after other errors (out of file descriptors).
        let (socket, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = Listener::accept(&mut listener) => accepted,
        };
        let open = Open::new(stats.clone(), slot);
        connections.spawn(connection(
            http.clone(),
            socket,
            peer,
            app.clone(),
            shutdown.clone(),
            open,
        ));
    }

    drop(listener);
    drain(connections, limits.drain_timeout).await;
    Ok(())
}

/// Serves one connection until it closes, or until shutdown lets it finish the request it is
/// serving. `open` holds its slot and its place in the gauge until then.
async fn connection(
    http: http1::Builder,
    socket: TcpStream,
    peer: SocketAddr,
    app: Router,
    shutdown: Shutdown,
    open: Open,
) {
    // What `into_make_service_with_connect_info` does: the `ConnectInfo` extractor (the
    // allowlist's) reads the peer from each request's extensions.
    let service = TowerToHyperService::new(Extension(ConnectInfo(peer)).layer(app));
    let conn = http
        .serve_connection(TokioIo::new(socket), service)
        .with_upgrades();
    tokio::pin!(conn);
    // hyper-util's `GracefulShutdown` cannot watch an HTTP/1 connection with upgrades (its
    // `GracefulConnection` has no impl for it in 0.1.21), so this is its loop written out, as
    // `axum::serve` does it.
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        // A header timeout, a reset, a malformed request: that client's affair.
        tracing::debug!(%peer, "API connection closed: {e}");
    }
    drop(open);
}

/// Waits up to `limit` for every connection to end, then drops the rest.
async fn drain(mut connections: JoinSet<()>, limit: Duration) {
    let all_ended = async {
        while let Some(ended) = connections.join_next().await {
            note_end(ended);
        }
    };
    if tokio::time::timeout(limit, all_ended).await.is_err() {
        tracing::info!(
            "{} API connections still open {limit:?} after shutdown began: closing them",
            connections.len()
        );
        connections.shutdown().await;
    }
}

fn note_end(ended: Result<(), JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!(
            "serving an API connection panicked, a bug (the panic message is above; please \
             report it): that connection was closed, the API goes on serving"
        );
    }
}

/// One accepted connection: holds its slot, and counts itself in [`ApiStats::connections`]
/// from the accept until it is dropped (the connection closed, or its task aborted).
struct Open {
    stats: Arc<ApiStats>,
    _slot: OwnedSemaphorePermit,
}

impl Open {
    fn new(stats: Arc<ApiStats>, slot: OwnedSemaphorePermit) -> Open {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        Open { stats, _slot: slot }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
