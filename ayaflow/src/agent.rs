//! Wires the agent together and runs it until SIGINT/SIGTERM.
//!
//! Start-up order (each step fails before anything is attached, except the last two):
//! resolve the interface -> open storage -> load the program -> attach -> bind the API.
//!
//! Shutdown, on a signal or when capture stops by itself (a failed ring reader or sweeper,
//! which also makes the exit code non-zero): not ready -> stop the API -> detach the program
//! and wait for the runs in flight (an RCU grace period) -> final ring-buffer drain and flow
//! sweep -> flush the current window and the IPFIX records of every open flow -> storage
//! writes everything queued and closes the database. Detaching first is what makes the history
//! complete: a packet the kernel counts after the final drain would be counted and never
//! stored. Every step is bounded (`STEP_LIMIT`; storage has its own drain timeout), so a stuck
//! request cannot hold the shutdown.
//!
//! With `--pin` (`ebpf/pin.rs`) the program is not detached: it keeps counting into the pinned
//! maps, and what it records after the final drain and sweep (an ordinary sweep then, which
//! frees no slot the program may still use) is read by the next agent.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use ayaflow_common::{counters::Counter, globals};

use crate::{
    aggregate::Aggregator,
    api::{self, AppState, LiveSource},
    clock::unix_now_ns,
    config::{CaptureMode, Config},
    connections::{ConnectionSnapshot, ConnectionTable, LiveRanking, SortKey},
    ebpf::{
        self, KernelProgram, LoadOptions,
        sweep::{self, FlowSweeper},
    },
    interfaces,
    interfaces::{IfindexNames, counters::InterfaceCounters, follow::Follower},
    ipfix::{self, ExportConfig, IpfixExport},
    metrics::{Family, MetricsSource},
    pipeline::{Pipeline, PipelineStats},
    shutdown::{Shutdown, Signals},
    storage::{Storage, StorageConfig, StorageStats},
    store::HistoryKind,
    sync::lock,
    telemetry::{Readings, agent_families},
};

/// How often idle connections are expired and finished windows handed to storage.
const TICK: Duration = Duration::from_millis(250);

/// The longest a shutdown step may take (stopping the API with its open requests, the final
/// drain and sweep) before it is abandoned with a warning.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// How long the last windows, sent at shutdown, may wait for room in the storage queue.
const FINAL_WINDOWS_WAIT: Duration = Duration::from_secs(5);

/// Runs the agent until a signal arrives; returns once everything is flushed and detached.
pub async fn run(config: Config) -> Result<()> {
    // Caught from here on: a signal right after start-up still flushes and exits cleanly.
    let mut signals = Signals::install().context("installing signal handlers")?;
    let started_at = std::time::Instant::now();
    // First: a bad token file stops the agent before it attaches anything.
    let api_token = config
        .api_token_file
        .as_deref()
        .map(read_api_token)
        .transpose()?;
    let selection = interfaces::run::resolve(&config.interfaces)?;
    let mut storage_config = StorageConfig::new(&config.db_path);
    storage_config.retention = config.data_retention;
    storage_config.max_db_bytes = config.max_db_bytes;
    let storage = Storage::spawn(storage_config)
        .with_context(|| format!("opening the history database {}", config.db_path.display()))?;

    let flows = config.capture_mode == CaptureMode::Flows;
    let capture_mode = if flows {
        globals::CAPTURE_MODE_FLOWS
    } else {
        globals::CAPTURE_MODE_RAW
    };
    if flows && config.aggregation_window.is_none() {
        tracing::warn!(
            "capture_mode flows keeps no per-packet rows: history stays empty unless --aggregation-window is set"
        );
    }
    let mut program = KernelProgram::load(&LoadOptions {
        capture_mode,
        ring_buffer_size: config.ring_buffer_size,
        flow_map_size: config.flow_map_size,
        pin_path: config.pin.then(|| config.pin_path.clone()),
    })?;
    let pinned = program.pinned();
    let names = IfindexNames::default();
    let ring = program.take_events()?;
    let sweeper = if flows {
        let mut s = program.take_flows()?;
        s.set_interface_names(names.clone());
        Some(s)
    } else {
        None
    };
    let counters = Arc::new(InterfaceCounters::new(Arc::new(program.take_counters()?)));
    // Attached from here on; the follower owns the program until shutdown.
    let (stop_follow_tx, follow_shutdown) = Shutdown::new();
    let follower = Follower::new(
        program,
        selection.clone(),
        config.direction.directions().to_vec(),
        names.clone(),
        counters.clone(),
    );
    let (follow, follow_task) = interfaces::run::start(follower, pinned, follow_shutdown).await?;

    let (ipfix, ipfix_task) = match ipfix_export(&config) {
        Some(export) => {
            tracing::info!(
                collectors = ?export.collectors,
                observation_domain = export.observation_domain,
                "IPFIX export on"
            );
            let (x, task) = IpfixExport::start(&export, names.clone());
            (Some(x), Some(task))
        }
        None => (None, None),
    };

    let table = Arc::new(ConnectionTable::new(
        config.max_connections,
        config.connection_timeout,
    ));
    let ranking = Arc::new(LiveRanking::new(table.clone(), api::live::MAX_LIMIT));
    let pipeline = Pipeline {
        table: table.clone(),
        aggregator: config.aggregation_window.map(|w| {
            Arc::new(Mutex::new(Aggregator::new(
                w,
                config.window_entries_bound(),
            )))
        }),
        store_raw: !flows,
        storage: storage.sender(),
        ipfix: ipfix.clone(),
        stats: Arc::new(PipelineStats::default()),
    };
    let live = Arc::new(Live {
        ranking: ranking.clone(),
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
    let kernel_totals = counters.clone();
    let source = AgentMetrics {
        counters,
        interfaces: follow.stats.clone(),
        table,
        pipeline: pipeline.stats.clone(),
        storage: storage.stats(),
        api: state.stats.clone(),
        ipfix,
        kernel_read_errors: AtomicU64::new(0),
    };
    let state = AppState {
        metrics: Arc::new(source),
        ..state
    };
    let state = match api_token {
        Some(token) => state.with_api_token(token),
        None => state,
    };
    let follow_view = follow.clone();
    let state = state.with_status(api::Status {
        version: env!("CARGO_PKG_VERSION"),
        capture_mode: config.capture_mode,
        direction: config.direction,
        started_at,
        interfaces: Arc::new(move || follow_view.interfaces()),
        interfaces_ready: follow.named_ready.clone(),
    });

    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = api::bind(addr).await.with_context(|| {
        format!("binding the API to {addr}: is the port in use? choose another with --port")
    })?;
    tracing::info!(address = %listener.local_addr()?, "API listening");
    if !config.bind_address.is_loopback()
        && config.allowed_ips.is_empty()
        && config.api_token_file.is_none()
    {
        tracing::warn!(
            address = %addr,
            "the API answers anyone who reaches this port (live connections, history): set \
             --allowed-ips to the networks that may read it, set --api-token-file, or bind to 127.0.0.1"
        );
    }
    // Set up: what loading and attaching allocated for a moment (the kernel's BTF above all)
    // goes back to the system instead of staying in the idle agent's RSS.
    crate::alloc::return_free_memory();
    state.ready.store(true, Ordering::Relaxed);

    let (stop_tx, shutdown) = Shutdown::new();
    // The capture tasks stop later, once the program is detached.
    let (capture_stop_tx, capture_shutdown) = Shutdown::new();
    let api_task = tokio::spawn(api::serve(
        listener,
        state.clone(),
        api::ServeLimits::default(),
        shutdown.clone(),
    ));
    let stream_task = tokio::spawn(api::stream::publish(
        state.clone(),
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    let tick_task = tokio::spawn(tick(pipeline.clone(), ranking, shutdown.clone()));
    let windows_task = tokio::spawn(store_windows(pipeline.clone(), shutdown.clone()));
    let mut sink = pipeline.clone();
    let ring_shutdown = capture_shutdown.clone();
    let ring_names = names.clone();
    let drain_interval = if flows {
        ebpf::ring::FLOW_MODE_DRAIN_INTERVAL
    } else {
        ebpf::ring::DRAIN_INTERVAL
    };
    let mut ring_task = tokio::spawn(async move {
        ebpf::ring::run(
            ring,
            &ring_names,
            &mut sink,
            ring_shutdown.wait(),
            drain_interval,
        )
        .await
    });

    let mut sweep_task =
        sweeper.map(|s| spawn_sweeper(s, pipeline.clone(), capture_shutdown.clone(), pinned));

    // Until a signal, or until capture stops by itself: then the agent no longer sees traffic,
    // and says so (not ready, a non-zero exit) rather than serve a view that stopped.
    let mut ring_done = false;
    let mut sweep_done = false;
    let capture_failure = tokio::select! {
        signal = signals.received() => {
            tracing::info!("{signal} received: shutting down");
            None
        }
        r = &mut ring_task => {
            ring_done = true;
            Some(match r {
                Ok(Ok(())) => "the ring-buffer reader stopped".to_string(),
                Ok(Err(e)) => format!("reading the ring buffer: {e}"),
                Err(e) => format!("the ring-buffer reader failed: {e}"),
            })
        }
        r = async { sweep_task.as_mut().expect("only polled in flow mode").await }, if sweep_task.is_some() => {
            sweep_done = true;
            Some(match r {
                Ok(()) => "the flow sweeper stopped".to_string(),
                Err(e) => format!("the flow sweeper failed: {e}"),
            })
        }
    };
    state.ready.store(false, Ordering::Relaxed);
    if let Some(why) = &capture_failure {
        tracing::error!("capture stopped ({why}): shutting down");
    }
    let _ = stop_tx.send(true);
    if let Some(Err(e)) = bounded("stopping the API", api_task).await {
        tracing::warn!("API server: {e}");
    }
    bounded("stopping the live stream", stream_task).await;

    let _ = stop_follow_tx.send(true);
    // Dropping the program detaches every hook not pinned.
    drop(bounded("stopping the interface follower", follow_task).await);
    if pinned {
        // Still counting, into the pinned maps: what comes after the final drain and sweep is
        // there for the next agent.
        tracing::info!(pin_path = %config.pin_path.display(), "the program stays attached (pinned)");
    } else {
        ebpf::sweep::wait_for_program_runs();
        tracing::info!("detached");
    }
    let _ = capture_stop_tx.send(true);
    if !ring_done && let Some(Err(e)) = bounded("the final ring-buffer drain", ring_task).await {
        tracing::error!("reading the ring buffer: {e}");
    }
    if let Some(t) = sweep_task.filter(|_| !sweep_done) {
        bounded("the final flow sweep", t).await;
    }
    bounded("stopping the tick", tick_task).await;
    bounded("storing the closed windows", windows_task).await;
    // Bounded by its own wait: no `bounded` step needed.
    let last_windows = pipeline.flush();
    pipeline
        .storage
        .send_windows_within(last_windows, FINAL_WINDOWS_WAIT)
        .await;
    drop(pipeline);
    if let Some(t) = ipfix_task {
        bounded("sending the final IPFIX records", t).await;
    }
    let stats = storage.shutdown();
    tracing::info!(
        rows_written = stats.rows_written,
        rows_dropped = stats.rows_dropped_total(),
        "history flushed and closed"
    );
    log_final_totals(&kernel_totals);
    match capture_failure {
        Some(why) => Err(anyhow::anyhow!(
            "capture stopped: {why}; the history holds what was captured until then"
        )),
        None => {
            tracing::info!("bye");
            Ok(())
        }
    }
}

/// The API token in `path` (surrounding whitespace, such as the newline of `echo`, is not
/// part of it).
fn read_api_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the API token file {} (--api-token-file): create it with the token on one \
             line, readable by the agent",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!(
            "the API token file {} (--api-token-file) is empty: write the token to it, e.g. \
             `head -c 32 /dev/urandom | base64 > {}`",
            path.display(),
            path.display()
        );
    }
    Ok(token.to_owned())
}

/// The export's settings, if collectors are configured.
fn ipfix_export(config: &Config) -> Option<ExportConfig> {
    (!config.ipfix_collectors.is_empty()).then(|| ExportConfig {
        collectors: config.ipfix_collectors.clone(),
        active_timeout: config.ipfix_active_timeout,
        idle_timeout: config
            .ipfix_idle_timeout
            .unwrap_or(config.connection_timeout),
        template_refresh: config.ipfix_template_refresh,
        observation_domain: config
            .ipfix_observation_domain
            .unwrap_or_else(ipfix::default_observation_domain),
        mtu: config.ipfix_mtu,
        // An entry per connection and direction.
        max_flows: config.max_connections.saturating_mul(2),
    })
}

/// Awaits `task` for at most [`STEP_LIMIT`]; past that it is aborted and the shutdown goes on.
/// `None` if it was abandoned or failed (both logged).
async fn bounded<T>(what: &str, mut task: tokio::task::JoinHandle<T>) -> Option<T> {
    match tokio::time::timeout(STEP_LIMIT, &mut task).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::error!("{what} failed: {e}");
            None
        }
        Err(_) => {
            task.abort();
            tracing::warn!("{what} took longer than {STEP_LIMIT:?}: abandoned");
            None
        }
    }
}

/// Logs what the kernel counted, once nothing can add to it any more (after the detach): with
/// every packet in the history (raw mode, no drop), the rows add up to these numbers.
fn log_final_totals(counters: &InterfaceCounters) {
    match counters.total() {
        Ok(t) => tracing::info!(
            ingress_packets = t.get(ayaflow_common::flow::Direction::Ingress, Counter::Packets),
            egress_packets = t.get(ayaflow_common::flow::Direction::Egress, Counter::Packets),
            ring_drops = t.sum(Counter::RingbufDrops),
            "the kernel's final totals"
        ),
        Err(e) => tracing::warn!("reading the kernel's final totals: {e}"),
    }
}

/// Every [`TICK`]: expires idle connections and rebuilds the live ranking if someone reads it.
/// Both walk the table (one shard at a time, see `connections`), so they run on the blocking
/// pool, not on the async workers that serve the API; a tick that takes longer than [`TICK`]
/// delays the next rather than piling up.
async fn tick(pipeline: Pipeline, ranking: Arc<LiveRanking>, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = &mut stop => return,
        }
        let (p, r) = (pipeline.clone(), ranking.clone());
        let work = tokio::task::spawn_blocking(move || {
            p.tick(unix_now_ns());
            r.refresh();
        });
        if let Err(e) = work.await {
            tracing::error!("the tick's expiry failed: {e}");
        }
    }
}

/// Aggregated mode: every tick, hands the windows that have ended to storage, waiting (at most
/// [`windows_wait`]) for the writer to make room when a window has more rows than the queue
/// holds. Its own task, so that wait never delays the table's expiry.
async fn store_windows(pipeline: Pipeline, shutdown: Shutdown) {
    let Some(window) = pipeline.aggregator.as_ref().map(|a| lock(a).window_secs()) else {
        return;
    };
    let wait = windows_wait(window);
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let rows = pipeline.closed_windows(unix_now_ns());
                if !rows.is_empty() {
                    pipeline.storage.send_windows_within(rows, wait).await;
                }
            }
            () = &mut stop => return,
        }
    }
}

/// How long a closed window may wait for room in the storage queue: its own length (the next
/// one is due then), from 5 s (a short window's rows are few) to 60 s.
fn windows_wait(window_secs: i64) -> Duration {
    Duration::from_secs(window_secs.clamp(5, 60) as u64)
}

/// Flow mode: sweeps the kernel map every `SWEEP_INTERVAL` on the blocking pool (a sweep walks
/// every slot in use and updates the table and windows of each), and once more at shutdown
/// with every entry treated as idle, so the kernel's last counts reach the table and the
/// windows before they are flushed. With `pinned`, the program goes on adding to the table
/// after the agent exits: the last sweep is an ordinary one, leaving live slots to the next
/// agent (freeing them would race the program).
fn spawn_sweeper(
    sweeper: FlowSweeper,
    pipeline: Pipeline,
    shutdown: Shutdown,
    pinned: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sweeper = Arc::new(Mutex::new(sweeper));
        let mut interval = tokio::time::interval(sweep::SWEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            let last = tokio::select! {
                _ = interval.tick() => false,
                () = &mut stop => true,
            };
            let (s, p) = (sweeper.clone(), pipeline.clone());
            let now = if last && !pinned {
                u64::MAX
            } else {
                ebpf::sweep::flow_clock_ns()
            };
            let swept = tokio::task::spawn_blocking(move || p.deltas(lock(&s).sweep(now))).await;
            if let Err(e) = swept {
                tracing::error!("flow sweep failed: {e}");
            }
            if last {
                return;
            }
        }
    })
}

/// The live view: the shared ranking of the connection table plus the kernel's totals.
struct Live {
    ranking: Arc<LiveRanking>,
    counters: Arc<InterfaceCounters>,
}

impl LiveSource for Live {
    fn top(&self, limit: usize, sort: SortKey) -> Vec<ConnectionSnapshot> {
        self.ranking.get().top(limit, sort)
    }

    fn totals(&self) -> (u64, u64) {
        match self.counters.total() {
            Ok(t) => (t.sum(Counter::Packets), t.sum(Counter::Bytes)),
            Err(e) => {
                tracing::warn!("reading the kernel counters: {e}");
                (0, 0)
            }
        }
    }
}

/// Every metric of the agent, read at scrape time (the catalogue is `telemetry::agent_families`).
struct AgentMetrics {
    counters: Arc<InterfaceCounters>,
    interfaces: Arc<crate::interfaces::follow::FollowStats>,
    table: Arc<ConnectionTable>,
    pipeline: Arc<PipelineStats>,
    storage: Arc<StorageStats>,
    api: Arc<api::ApiStats>,
    ipfix: Option<Arc<IpfixExport>>,
    /// Scrapes whose read of the kernel counters failed.
    kernel_read_errors: AtomicU64,
}

impl MetricsSource for AgentMetrics {
    fn families(&self) -> Vec<Family> {
        let kernel = match self.counters.read() {
            Ok(t) => Some(t),
            Err(e) => {
                self.kernel_read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("reading the kernel counters for /metrics: {e}");
                None
            }
        };
        let (active, table, lock_waits) = (
            self.table.active_len() as u64,
            self.table.stats(),
            self.table.lock_waits(),
        );
        agent_families(&Readings {
            kernel,
            interfaces: &self.interfaces,
            kernel_read_errors: self.kernel_read_errors.load(Ordering::Relaxed),
            active_connections: active,
            table,
            lock_waits,
            pipeline: &self.pipeline,
            storage: self.storage.snapshot(),
            api: &self.api,
            ipfix: self.ipfix.as_ref().map_or(&[], |x| x.collectors()),
        })
    }
}
