//! Waits for SIGINT or SIGTERM and tells every task through a `watch` channel.
//!
//! Order on shutdown (see `agent.rs`): the API stops accepting; the capture tasks drain the
//! ring buffer (and sweep the flow table) one last time; the pipeline flushes the current
//! aggregation window; storage writes everything queued and closes the database; then the
//! kernel program is dropped, which detaches it.

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
