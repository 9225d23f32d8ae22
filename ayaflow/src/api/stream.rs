//! `WS /api/stream`: the `/api/live` document (top [`live::DEFAULT_LIMIT`] by packets) pushed
//! every second to each client.
//!
//! One task ([`publish`]) builds the frame each second and publishes it on a `broadcast`
//! channel (policy DropNewest for slow readers): a client that falls behind gets `Lagged(n)`,
//! skips to the newest frame and the skipped frames are counted; a client whose socket does not
//! take a frame within the send timeout ([`SEND_TIMEOUT`] by default) is disconnected and
//! counted. Each client has its own task, so neither ever slows capture or other clients.
//! Clients are capped by a semaphore ([`MAX_CLIENTS`] by default); one over the cap gets 503.
//! On shutdown every client gets a close frame (1001, going away).
//!
//! A browser lets any web page open a WebSocket to any host and sends the page's `Origin`: an
//! upgrade whose `Origin` is present and names another host than the one the client asked
//! for (`Host`) is refused with 403 and counted, so a page open in a browser inside the
//! allowlist cannot read the stream (cross-site WebSocket hijacking). Tools (curl, websocat,
//! the tests) send no `Origin` and are served. Clients send nothing: a message over
//! [`MAX_CLIENT_MESSAGE`] bytes ends the connection instead of being buffered.
//!
//! A client that offers subprotocols gets [`PROTOCOL`] if it offers it (the web UI does, next to
//! the token it cannot send as a header: `super::STREAM_TOKEN_PROTOCOL`); the frames are the
//! same with or without.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    extract::{
        Query, State,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code,
            rejection::WebSocketUpgradeRejection,
        },
    },
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use tokio::sync::broadcast;

use super::{AppState, error::ApiError, live, params::Params};
use crate::{connections::SortKey, shutdown::Shutdown};

/// Concurrent stream clients by default; see [`super::StreamLimits`].
pub const MAX_CLIENTS: usize = 64;
/// How long one frame may take to be written to a client before it is dropped, by default.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest message or frame a client may send (clients send nothing; the library's default
/// would buffer 64 MiB).
pub const MAX_CLIENT_MESSAGE: usize = 4096;
/// Frames kept for slow clients before they start skipping.
pub const CHANNEL_FRAMES: usize = 4;
/// The subprotocol the server selects when a client offers it.
pub const PROTOCOL: &str = "ayaflow";

/// Publishes a frame every `period` until `shutdown`; returns when it fires. Builds nothing
/// while no client is connected.
pub async fn publish(state: AppState, period: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        if state.stream.receiver_count() == 0 {
            continue;
        }
        let doc =
            match live::document_off_workers(&state, live::DEFAULT_LIMIT, SortKey::Packets).await {
                Ok(doc) => doc,
                Err(e) => {
                    tracing::warn!("building a stream frame: {}", e.error);
                    continue;
                }
            };
        match serde_json::to_string(&doc) {
            Ok(text) => {
                // Err only means no receiver is left, which is fine.
                let _ = state.stream.send(Arc::new(text));
            }
            Err(e) => tracing::warn!("encoding a stream frame: {e}"),
        }
    }
}

/// Upgrades to a WebSocket if a client slot is free (503 otherwise).
pub async fn upgrade(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    Params::new(q).finish(&format!(
        "none (every client gets the top {} by packets; GET /api/live takes limit and sort)",
        live::DEFAULT_LIMIT
    ))?;
    let ws = ws.map_err(|rejection| ApiError {
        status: rejection.status(),
        error: format!("not a WebSocket upgrade: {}", rejection.body_text()),
        hint:
            "connect with a WebSocket client (ws://<host>:<port>/api/stream), or poll GET /api/live"
                .into(),
    })?;
    if let Some(origin) = foreign_origin(&headers) {
        state
            .stats
            .stream_refused_origin
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            error: format!("a WebSocket from the web page at {origin} to another host"),
            hint: "open the stream from a page served by this agent, or from a client that \
                   sends no Origin (websocat, a script)"
                .into(),
        });
    }
    let ws = ws
        .protocols([PROTOCOL])
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE);
    let Ok(permit) = state.stream_slots.clone().try_acquire_owned() else {
        state.stats.stream_rejected.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::unavailable(
            format!("already {} stream clients", state.stream_limits.max_clients),
            "retry later, or poll GET /api/live instead",
        ));
    };
    let rx = state.stream.subscribe();
    Ok(ws.on_upgrade(move |socket| async move {
        state.stats.stream_clients.fetch_add(1, Ordering::Relaxed);
        serve(socket, rx, &state).await;
        state.stats.stream_clients.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    }))
}

/// The request's `Origin` if it is present and its host and port differ from `Host`'s.
fn foreign_origin(headers: &HeaderMap) -> Option<String> {
    let origin = headers
        .get(header::ORIGIN)?
        .to_str()
        .unwrap_or("(not text)");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    // `scheme://host[:port]`; `null` (a sandboxed page, a file) never matches.
    let authority = origin
        .split_once("://")
        .map(|(_, a)| a.trim_end_matches('/'));
    match authority {
        Some(a) if !host.is_empty() && a.eq_ignore_ascii_case(host) => None,
        _ => Some(origin.to_string()),
    }
}

/// Resolves when `shutdown` fires; never without one.
async fn stopped(shutdown: Option<Shutdown>) {
    match shutdown {
        Some(s) => s.wait().await,
        None => std::future::pending().await,
    }
}

async fn serve(mut socket: WebSocket, mut rx: broadcast::Receiver<Arc<String>>, state: &AppState) {
    let send_timeout = state.stream_limits.send_timeout;
    let stop = stopped(state.shutdown.clone());
    tokio::pin!(stop);
    loop {
        let frame = tokio::select! {
            () = &mut stop => {
                let close = Message::Close(Some(CloseFrame {
                    code: close_code::AWAY,
                    reason: "ayaflow is shutting down".into(),
                }));
                // Best effort: a stuck client must not hold up shutdown.
                let _ = tokio::time::timeout(send_timeout, socket.send(close)).await;
                return;
            }
            f = rx.recv() => f,
            // Reading lets us notice a client that closed; what it sends is ignored.
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        match frame {
            Ok(text) => {
                let send = socket.send(Message::Text(text.as_str().into()));
                match tokio::time::timeout(send_timeout, send).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        state
                            .stats
                            .stream_dropped_slow
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "dropped a stream client that took over {send_timeout:?} to take a frame"
                        );
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                state
                    .stats
                    .stream_frames_skipped
                    .fetch_add(n, Ordering::Relaxed);
            }
            Err(broadcast::error::RecvError::Closed) => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}
