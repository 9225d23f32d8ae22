//! `WS /api/stream`: the `/api/live` document pushed every second to each client.
//!
//! One task builds the frame each second and publishes it on a `broadcast` channel (policy
//! DropNewest for slow readers): a client that falls behind gets `Lagged(n)`, skips to the
//! newest frame and the skipped frames are counted; a client whose socket does not take a frame
//! within [`SEND_TIMEOUT`] is disconnected and counted. Neither ever slows capture or other
//! clients. Clients are capped by a semaphore ([`MAX_CLIENTS`]); one over the cap gets 503.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use axum::{
    extract::{
        State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    response::Response,
};
use tokio::sync::broadcast;

use super::{AppState, error::ApiError, live};
use crate::connections::SortKey;

/// Concurrent stream clients.
pub const MAX_CLIENTS: usize = 64;
/// How long one frame may take to be written to a client before it is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames kept for slow clients before they start skipping.
pub const CHANNEL_FRAMES: usize = 4;

/// Publishes a frame every `period` until `shutdown`; returns when it fires.
pub async fn publish(state: AppState, period: Duration, shutdown: crate::shutdown::Shutdown) {
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
        let doc = live::document(&state, live::DEFAULT_LIMIT, SortKey::Packets);
        match serde_json::to_string(&doc) {
            Ok(text) => {
                let _ = state.stream.send(Arc::new(text));
            }
            Err(e) => tracing::warn!("encoding a stream frame: {e}"),
        }
    }
}

pub async fn upgrade(
    State(state): State<AppState>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Ok(permit) = state.stream_slots.clone().try_acquire_owned() else {
        state.stats.stream_rejected.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::unavailable(
            format!("already {MAX_CLIENTS} stream clients"),
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

async fn serve(mut socket: WebSocket, mut rx: broadcast::Receiver<Arc<String>>, state: &AppState) {
    loop {
        let frame = tokio::select! {
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
                match tokio::time::timeout(SEND_TIMEOUT, send).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        state
                            .stats
                            .stream_dropped_slow
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "dropping a stream client that took over {SEND_TIMEOUT:?} to take a frame"
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
