//! The HTTP API over real HTTP and WebSocket on loopback, through the public API only:
//! `api::serve` on an ephemeral port, with a fake `LiveSource` over a real `ConnectionTable`
//! filled with known packets, a real SQLite file written with `Store` (raw and window rows),
//! and the agent's metric catalogue (`telemetry::agent_families`) over fixed readings.
//!
//! Timing assertions poll with generous limits; none relies on a fixed sleep.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use ayaflow::{
    aggregate::WindowRow,
    api::{self, AppState, LiveSource, ServeLimits, StreamLimits, history::MAX_CONCURRENT_QUERIES},
    connections::{ConnectionSnapshot, ConnectionTable, SortKey},
    ebpf::counters::Totals,
    flow::{Direction, FiveTuple, Packet, Protocol},
    metrics::{self, Family, MetricsSource},
    pipeline::PipelineStats,
    shutdown::Shutdown,
    storage::StorageStatsSnapshot,
    store::{HistoryKind, Store},
    telemetry::Readings,
};
use ayaflow_common::counters::Counter;
use futures_util::StreamExt;
use ipnet::IpNet;
use openmetrics_parser::{OpenMetricsType, OpenMetricsValue};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, protocol::frame::coding::CloseCode},
};

const SEC: u64 = 1_000_000_000;
/// 2023-11-14T22:13:20Z, a round base time for fixtures (Unix seconds).
const T: u64 = 1_700_000_000;
/// Kernel totals the fake live source reports.
const TOTALS: (u64, u64) = (12_050, 8_504_320);
/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

mod errors;
mod fixtures;
mod history;
mod limits;
mod live;
mod scrape;
mod server;
mod stream;
mod ui;

use fixtures::*;
use server::*;
