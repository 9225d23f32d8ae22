//! Wires the agent together and runs it until SIGINT/SIGTERM.
//!
//! Start-up order (each step fails before anything is attached, except the last two):
//! resolve the interface -> open storage -> load the program -> attach -> bind the API.
//! Shutdown order: stop the API -> final ring-buffer drain -> flush the current window ->
//! storage writes everything queued and closes the database -> drop the program (detaches).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use ayaflow_common::{counters::Counter, globals};

use crate::{
    aggregate::Aggregator,
    api::{self, AppState, LiveSource},
    config::{CaptureMode, Config},
    connections::{ConnectionSnapshot, ConnectionTable, SortKey},
    ebpf::{self, KernelProgram, LoadError, LoadOptions, counters::CounterReader},
    metrics::{Family, Kind, MetricsSource},
    pipeline::{Pipeline, PipelineStats, lock, now_unix_ns},
    shutdown::{Shutdown, signal_received},
    storage::{DropReason, Storage, StorageConfig, StorageStats},
    store::{ErrorKind, HistoryKind},
};

/// How often idle connections are expired and finished windows handed to storage.
const TICK: Duration = Duration::from_millis(250);

/// Runs the agent until a signal arrives; returns once everything is flushed and detached.
pub async fn run(config: Config) -> Result<()> {
    let interface = match &config.interface {
        Some(i) => i.clone(),
        None => {
            let i = ebpf::interface::default_interface().ok_or(LoadError::NoDefaultInterface)?;
            tracing::info!(interface = %i, "no --interface given: using the default route's interface");
            i
        }
    };
    if ebpf::interface::index(&interface).is_none() {
        return Err(LoadError::NoInterface { name: interface }.into());
    }
    let mut storage_config = StorageConfig::new(&config.db_path);
    storage_config.retention = config.data_retention;
    let storage = Storage::spawn(storage_config)
        .with_context(|| format!("opening the history database {}", config.db_path.display()))?;

    // TODO(issue 5): the agent does not sweep the kernel's FLOWS map yet, so flow mode would
    // report totals only. Capture raw events (aggregated in userspace when a window is set).
    if config.capture_mode == CaptureMode::Flows {
        tracing::warn!(
            "capture_mode flows is not available yet: capturing raw events (windows are aggregated in the agent)"
        );
    }
    let capture_mode = globals::CAPTURE_MODE_RAW;
    let mut program = KernelProgram::load(&LoadOptions {
        capture_mode,
        ring_buffer_size: config.ring_buffer_size,
        flow_map_size: config.flow_map_size,
    })?;
    program.attach(&interface, &config.direction.directions())?;
    let ring = program.take_events()?;
    let counters = Arc::new(program.take_counters()?);

    let table = Arc::new(Mutex::new(ConnectionTable::new(
        config.max_connections,
        config.connection_timeout,
    )));
    let pipeline = Pipeline {
        table: table.clone(),
        aggregator: config
            .aggregation_window
            .map(|w| Arc::new(Mutex::new(Aggregator::new(w)))),
        storage: storage.sender(),
        stats: Arc::new(PipelineStats::default()),
    };
    let live = Arc::new(Live {
        table: table.clone(),
        counters: counters.clone(),
    });
    let state = AppState::new(
        live,
        // Replaced below, once the source can hold the API's own counters.
        Arc::new(Vec::<Family>::new()),
        config.db_path.clone(),
        if config.aggregation_window.is_some() {
            HistoryKind::Aggregated
        } else {
            HistoryKind::Raw
        },
        config.allowed_ips.clone(),
    );
    let source = AgentMetrics {
        counters,
        table,
        pipeline: pipeline.stats.clone(),
        storage: storage.stats(),
        api: state.stats.clone(),
    };
    let state = AppState {
        metrics: Arc::new(source),
        ..state
    };

    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = api::bind(addr).await.with_context(|| {
        format!("binding the API to {addr}: is the port in use? choose another with --port")
    })?;
    tracing::info!(address = %listener.local_addr()?, "API listening");
    state.ready.store(true, Ordering::Relaxed);

    let (stop_tx, shutdown) = Shutdown::new();
    let api_task = tokio::spawn(api::serve(listener, state.clone(), shutdown.clone()));
    let stream_task = tokio::spawn(api::stream::publish(
        state.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    let tick_task = tokio::spawn(tick(pipeline.clone(), shutdown.clone()));
    let mut sink = pipeline.clone();
    let ring_shutdown = shutdown.clone();
    let ring_task =
        tokio::spawn(async move { ebpf::ring::run(ring, &mut sink, ring_shutdown.wait()).await });

    let signal = signal_received()
        .await
        .context("installing signal handlers")?;
    tracing::info!("{signal} received: shutting down");
    state.ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    if let Err(e) = api_task.await? {
        tracing::warn!("API server: {e}");
    }
    let _ = stream_task.await;
    ring_task.await?.context("reading the ring buffer")?;
    tick_task.await?;
    pipeline.flush();
    drop(pipeline);
    let stats = storage.shutdown();
    tracing::info!(
        rows_written = stats.rows_written,
        rows_dropped = stats.rows_dropped_total(),
        "history flushed and closed"
    );
    drop(program);
    tracing::info!("detached; bye");
    Ok(())
}

async fn tick(pipeline: Pipeline, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(TICK);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = interval.tick() => pipeline.tick(now_unix_ns()),
            () = &mut stop => return,
        }
    }
}

/// The live view: the connection table plus the kernel's totals.
struct Live {
    table: Arc<Mutex<ConnectionTable>>,
    counters: Arc<CounterReader>,
}

impl LiveSource for Live {
    fn top(&self, limit: usize, sort: SortKey) -> Vec<ConnectionSnapshot> {
        lock(&self.table).top(limit, sort)
    }

    fn totals(&self) -> (u64, u64) {
        match self.counters.read() {
            Ok(t) => (t.sum(Counter::Packets), t.sum(Counter::Bytes)),
            Err(e) => {
                tracing::warn!("reading the kernel counters: {e}");
                (0, 0)
            }
        }
    }
}

/// Every metric of the agent, read at scrape time.
struct AgentMetrics {
    counters: Arc<CounterReader>,
    table: Arc<Mutex<ConnectionTable>>,
    pipeline: Arc<PipelineStats>,
    storage: Arc<StorageStats>,
    api: Arc<api::ApiStats>,
}

fn per_direction(
    t: &ebpf::counters::Totals,
    c: Counter,
) -> Vec<(Vec<(&'static str, String)>, u64)> {
    ayaflow_common::flow::Direction::ALL
        .iter()
        .map(|&d| {
            (
                vec![("direction", crate::flow::direction_name(d).to_string())],
                t.get(d, c),
            )
        })
        .collect()
}

impl MetricsSource for AgentMetrics {
    fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        if let Ok(t) = self.counters.read() {
            let kernel = [
                (
                    "ayaflow_packets",
                    "Packets seen by the TC hooks (GSO segments counted one by one), exact.",
                    Counter::Packets,
                ),
                (
                    "ayaflow_bytes",
                    "Bytes on the wire seen by the TC hooks, exact.",
                    Counter::Bytes,
                ),
                (
                    "ayaflow_parse_errors",
                    "Frames the kernel parser could not fully read (still counted in packets).",
                    Counter::ParseErrors,
                ),
                (
                    "ayaflow_ringbuf_drops",
                    "Packet events lost because the ring buffer was full; raise --ring-buffer-size.",
                    Counter::RingbufDrops,
                ),
                (
                    "ayaflow_flow_fallbacks",
                    "Flow mode: packets sent as events because the flow map was full; raise --flow-map-size.",
                    Counter::FlowFallbacks,
                ),
            ];
            for (name, help, c) in kernel {
                out.push(Family {
                    name,
                    help,
                    kind: Kind::Counter,
                    samples: per_direction(&t, c),
                });
            }
            let mut samples = Vec::new();
            for d in ayaflow_common::flow::Direction::ALL {
                for (label, c) in [
                    ("tcp", Counter::Tcp),
                    ("udp", Counter::Udp),
                    ("icmp", Counter::Icmp),
                    ("other_ip", Counter::OtherIp),
                    ("non_ip", Counter::NonIp),
                ] {
                    samples.push((
                        vec![
                            ("direction", crate::flow::direction_name(d).to_string()),
                            ("protocol", label.to_string()),
                        ],
                        t.get(d, c),
                    ));
                }
            }
            out.push(Family {
                name: "ayaflow_protocol_packets",
                help: "Packets by protocol and direction.",
                kind: Kind::Counter,
                samples,
            });
        }
        let (active, table) = {
            let t = lock(&self.table);
            (t.active_len() as u64, t.stats())
        };
        out.push(Family::single(
            "ayaflow_active_connections",
            "Connections in the live table.",
            Kind::Gauge,
            active,
        ));
        out.push(Family::single("ayaflow_connection_table_overflow_packets", "Packets of new connections refused because the table was full; raise --max-connections.", Kind::Counter, table.overflow_packets));
        out.push(Family::single(
            "ayaflow_connection_table_overflow_connections",
            "New connections refused because the table was full; raise --max-connections.",
            Kind::Counter,
            table.overflow_connections,
        ));
        out.push(Family::single(
            "ayaflow_connections_closed",
            "Connections closed (timeout, FIN from both sides, or RST).",
            Kind::Counter,
            table.closed_total,
        ));
        out.push(Family::single(
            "ayaflow_events",
            "Packet events read from the ring buffer.",
            Kind::Counter,
            self.pipeline.events.load(Ordering::Relaxed),
        ));
        out.push(Family::single(
            "ayaflow_events_malformed",
            "Ring-buffer records of the wrong size (kernel/agent mismatch).",
            Kind::Counter,
            self.pipeline.malformed.load(Ordering::Relaxed),
        ));
        let s = self.storage.snapshot();
        out.push(Family::single(
            "ayaflow_storage_rows_written",
            "History rows committed to SQLite.",
            Kind::Counter,
            s.rows_written,
        ));
        out.push(Family {
            name: "ayaflow_storage_rows_dropped",
            help: "History rows dropped, by reason (never silently).",
            kind: Kind::Counter,
            samples: DropReason::ALL
                .iter()
                .map(|&r| (vec![("reason", r.label().to_string())], s.rows_dropped(r)))
                .collect(),
        });
        out.push(Family {
            name: "ayaflow_storage_errors",
            help: "SQLite write errors, by kind.",
            kind: Kind::Counter,
            samples: ErrorKind::ALL
                .iter()
                .map(|&k| (vec![("kind", k.label().to_string())], s.write_errors(k)))
                .collect(),
        });
        out.push(Family::single(
            "ayaflow_storage_queued_rows",
            "Rows waiting for the storage writer.",
            Kind::Gauge,
            s.queued_rows,
        ));
        out.push(Family::single(
            "ayaflow_retention_deleted_rows",
            "History rows deleted by retention.",
            Kind::Counter,
            s.retention_deleted,
        ));
        out.push(Family::single(
            "ayaflow_api_denied",
            "API requests refused by allowed_ips.",
            Kind::Counter,
            self.api.denied.load(Ordering::Relaxed),
        ));
        out.push(Family::single(
            "ayaflow_stream_clients",
            "Connected /api/stream clients.",
            Kind::Gauge,
            self.api.stream_clients.load(Ordering::Relaxed),
        ));
        out.push(Family::single(
            "ayaflow_stream_rejected",
            "Stream clients refused at the client cap.",
            Kind::Counter,
            self.api.stream_rejected.load(Ordering::Relaxed),
        ));
        out.push(Family::single(
            "ayaflow_stream_frames_skipped",
            "Stream frames skipped by slow clients.",
            Kind::Counter,
            self.api.stream_frames_skipped.load(Ordering::Relaxed),
        ));
        out.push(Family::single(
            "ayaflow_stream_clients_dropped",
            "Stream clients dropped for not taking a frame in time.",
            Kind::Counter,
            self.api.stream_dropped_slow.load(Ordering::Relaxed),
        ));
        out
    }
}
