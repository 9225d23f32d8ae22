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

/// SIGINT and SIGTERM, caught from [`Signals::install`] on: installed before the agent says it
/// is ready, so a signal that comes right after (a quick restart) is a clean shutdown, not the
/// default action (an exit without the flush).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM since the install, naming it.
    pub async fn received(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
