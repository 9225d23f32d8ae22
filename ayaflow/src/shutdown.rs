//! Waits for SIGINT or SIGTERM and tells tasks through a `watch` channel.
//!
//! The agent uses two of these (see `agent.rs` for the order): one stops the API, the live
//! stream and the tick; the other, once the kernel program is detached, has the capture tasks
//! drain the ring buffer (and sweep the flow table) one last time.

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

/// A cloneable handle that resolves once shutdown has begun.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A trigger and its first handle.
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// Resolves when shutdown begins (at once if it already has).
    pub async fn wait(mut self) {
        // An Err means the sender is gone, which also means: stop.
        let _ = self.0.wait_for(|&stop| stop).await;
    }

    /// True if and only if shutdown has begun.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }
}

/// Resolves on the first SIGINT or SIGTERM, naming it.
pub async fn signal_received() -> std::io::Result<&'static str> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    })
}
