//! `GET /api/status`: what this agent is and what it observes (version, capture mode, hooks,
//! uptime, history kind, interfaces), and the loss counters with what each means.
//!
//! ```json
//! {"version": "0.1.0", "capture_mode": "raw", "direction": "ingress", "uptime_seconds": 42,
//!  "history": "raw",
//!  "interfaces": [{"name": "eth0", "ifindex": 2, "state": "attached", "since_unix": 1700000000,
//!                  "reason": null}],
//!  "counters": [{"name": "ayaflow_ringbuf_drops_total", "value": 0, "help": "Packet events lost ..."}]}
//! ```
//!
//! The agent fills a [`Status`] once at start (`agent.rs`); the interface list is read through
//! [`InterfaceList`] on every request, so an interface watcher can later keep it current
//! without the API knowing. `counters` are the loss counters of `/metrics`
//! ([`live::LOSS_COUNTERS`]) read at the same moment, summed over their labels, with their help
//! text; each stream frame carries their values again (`losses` in `live.rs`).

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Instant,
};

use axum::{Json, extract::State};
use serde::Serialize;

use super::{AppState, live};
pub use crate::interfaces::status::{InterfaceState, InterfaceStatus};
use crate::{
    config::{CaptureMode, DirectionChoice},
    store::HistoryKind,
};

/// Reads the interfaces the agent observes now, on every `GET /api/status`.
pub type InterfaceList = Arc<dyn Fn() -> Vec<InterfaceStatus> + Send + Sync>;

/// What `/api/status` reports about the agent itself. Built once by the agent; lives as long
/// as the API.
#[derive(Clone)]
pub struct Status {
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub version: &'static str,
    /// How the kernel reports traffic.
    pub capture_mode: CaptureMode,
    /// Which hooks are attached.
    pub direction: DirectionChoice,
    /// When the agent started; `uptime_seconds` counts from here.
    pub started_at: Instant,
    /// The interfaces observed, read on every request.
    pub interfaces: InterfaceList,
    /// False while an interface named by `--interface` is missing or not attached: `/readyz`
    /// is then 503.
    pub interfaces_ready: Arc<AtomicBool>,
}

impl Default for Status {
    /// This version, raw mode, ingress, started now, no interface.
    fn default() -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION"),
            capture_mode: CaptureMode::Raw,
            direction: DirectionChoice::Ingress,
            started_at: Instant::now(),
            interfaces: Arc::new(Vec::new),
            interfaces_ready: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// The `/api/status` document. Field names are the documented API: fields may be added, never
/// renamed.
#[derive(Serialize)]
pub struct StatusDoc {
    /// The agent's version.
    pub version: &'static str,
    /// `raw` or `flows`.
    pub capture_mode: &'static str,
    /// `ingress`, `egress` or `both`.
    pub direction: &'static str,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
    /// What `/api/history` returns without `kind`: `raw` or `aggregated`.
    pub history: &'static str,
    /// The interfaces observed.
    pub interfaces: Vec<InterfaceStatus>,
    /// The loss counters, in [`live::LOSS_COUNTERS`] order.
    pub counters: Vec<Counter>,
}

/// One loss counter of [`StatusDoc`].
#[derive(Serialize)]
pub struct Counter {
    /// The sample name in `/metrics` (with `_total`).
    pub name: String,
    /// Summed over its labels.
    pub value: u64,
    /// The metric's help text: what it counts and what to do about it.
    pub help: &'static str,
}

/// `raw` or `flows`.
pub fn capture_mode_name(mode: CaptureMode) -> &'static str {
    match mode {
        CaptureMode::Raw => "raw",
        CaptureMode::Flows => "flows",
    }
}

/// `ingress`, `egress` or `both`.
pub fn direction_choice_name(direction: DirectionChoice) -> &'static str {
    match direction {
        DirectionChoice::Ingress => "ingress",
        DirectionChoice::Egress => "egress",
        DirectionChoice::Both => "both",
    }
}

/// `raw` or `aggregated`, as `/api/history` spells them.
pub fn history_kind_name(kind: HistoryKind) -> &'static str {
    match kind {
        HistoryKind::Raw => "raw",
        HistoryKind::Aggregated => "aggregated",
    }
}

/// `GET /api/status`.
pub async fn get(State(state): State<AppState>) -> Json<StatusDoc> {
    let s = &state.status;
    let families = state.metrics.families();
    let counters = live::LOSS_COUNTERS
        .iter()
        .filter_map(|&name| {
            let f = families.iter().find(|f| f.name == name)?;
            Some(Counter {
                name: format!("{name}_total"),
                value: f.samples.iter().map(|(_, v)| *v).sum(),
                help: f.help,
            })
        })
        .collect();
    Json(StatusDoc {
        version: s.version,
        capture_mode: capture_mode_name(s.capture_mode),
        direction: direction_choice_name(s.direction),
        uptime_seconds: s.started_at.elapsed().as_secs(),
        history: history_kind_name(state.history_kind),
        interfaces: (s.interfaces)(),
        counters,
    })
}
