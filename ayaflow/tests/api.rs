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
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use ayaflow::{
    aggregate::WindowRow,
    api::{self, AppState, LiveSource, StreamLimits, history::MAX_CONCURRENT_QUERIES},
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

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture addresses are valid")
}

fn tuple(proto: Protocol, src: &str, src_port: u16, dst: &str, dst_port: u16) -> FiveTuple {
    FiveTuple {
        proto,
        src: ip(src),
        src_port,
        dst: ip(dst),
        dst_port,
    }
}

fn packet(tuple: FiveTuple, direction: Direction, ts_unix_ns: u64, bytes: u32) -> Packet {
    Packet {
        tuple,
        direction,
        ts_unix_ns,
        packets: 1,
        bytes,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        flags: 0,
        vlan_id: 0,
    }
}

/// Three connections whose `/api/live` document is written out in full in `live_exact_json`:
/// TCP over IPv4 seen both ways, UDP over IPv6, ICMP.
fn small_table() -> Vec<Packet> {
    let tcp = tuple(Protocol::Tcp, "192.168.1.5", 443, "10.0.0.2", 34560);
    let udp6 = tuple(Protocol::Udp, "fd00::1", 5353, "fd00::2", 53);
    let icmp = tuple(Protocol::Icmp, "10.0.0.9", 0, "10.0.0.1", 0);
    vec![
        packet(tcp, Direction::Ingress, T * SEC + SEC / 2, 1000),
        packet(tcp, Direction::Ingress, (T + 1) * SEC + SEC / 5, 1000),
        // The reply: same connection, still oriented as first seen.
        packet(tcp.reversed(), Direction::Egress, (T + 3) * SEC, 60),
        packet(tcp, Direction::Ingress, (T + 5) * SEC + 9 * SEC / 10, 1000),
        packet(udp6, Direction::Egress, (T + 2) * SEC, 100),
        packet(udp6, Direction::Egress, (T + 3) * SEC + 1, 100),
        packet(icmp, Direction::Ingress, (T + 4) * SEC + 5, 84),
    ]
}

/// One connection of `many_connections`, as the test expects it back.
#[derive(Clone, Copy, Debug)]
struct Model {
    src_port: u16,
    packets: u64,
    bytes: u64,
    first_seen: u64,
    last_seen: u64,
}

/// 60 UDP connections 10.1.0.1:(10000+i) -> 10.2.0.1:53 whose packet counts, byte counts,
/// first and last times each rank them in a different order.
fn many_connections() -> (Vec<Packet>, Vec<Model>) {
    let mut packets = Vec::new();
    let mut models = Vec::new();
    for i in 0..60u64 {
        let port = 10_000 + i as u16;
        let t = tuple(Protocol::Udp, "10.1.0.1", port, "10.2.0.1", 53);
        let n = i + 2;
        let size = (1000 - 15 * i) as u32;
        // 7 and 13 are coprime with 60: two more permutations of 0..60.
        let first = T + (i * 7) % 60;
        let last = T + 1000 + (i * 13) % 60;
        packets.push(packet(t, Direction::Egress, first * SEC, size));
        for _ in 1..n {
            packets.push(packet(t, Direction::Egress, last * SEC, size));
        }
        models.push(Model {
            src_port: port,
            packets: n,
            bytes: n * u64::from(size),
            first_seen: first,
            last_seen: last,
        });
    }
    for key in [
        |m: &Model| m.packets,
        |m: &Model| m.bytes,
        |m: &Model| m.first_seen,
        |m: &Model| m.last_seen,
    ] {
        let distinct: BTreeSet<u64> = models.iter().map(key).collect();
        assert_eq!(
            distinct.len(),
            60,
            "the fixture must not tie on any sort key"
        );
    }
    (packets, models)
}

/// Raw history rows: `n` packets one second apart over four kinds of conversation.
fn raw_rows(n: u64) -> Vec<Packet> {
    (0..n)
        .map(|i| {
            let (t, tcp_flags, icmp_type) = match i % 4 {
                0 => (
                    tuple(
                        Protocol::Tcp,
                        "10.0.0.1",
                        40_000 + (i % 7) as u16,
                        "10.0.0.2",
                        443,
                    ),
                    0x10,
                    0,
                ),
                1 => (tuple(Protocol::Udp, "10.0.0.3", 5353, "10.0.0.1", 53), 0, 0),
                2 => (tuple(Protocol::Icmpv6, "fd00::1", 0, "fd00::2", 0), 0, 128),
                _ => (
                    tuple(Protocol::Tcp, "fd00::2", 50_000, "fd00::3", 8080),
                    0x02,
                    0,
                ),
            };
            let direction = if i % 3 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let mut p = packet(t, direction, (T + i) * SEC + 123_456_789, 60 + i as u32);
            p.tcp_flags = tcp_flags;
            p.icmp_type = icmp_type;
            p
        })
        .collect()
}

/// Aggregated history rows: 12 one-minute windows over two conversations.
fn window_rows() -> Vec<WindowRow> {
    (0..12u64)
        .map(|k| {
            let t = if k % 2 == 0 {
                tuple(Protocol::Udp, "10.0.0.3", 5353, "10.0.0.1", 53)
            } else {
                tuple(Protocol::Tcp, "fd00::2", 50_000, "fd00::3", 8080)
            };
            let start = (T + 60 * k) as i64;
            WindowRow {
                window_start_unix: start,
                window_end_unix: start + 60,
                tuple: t,
                direction: if k % 3 == 0 {
                    Direction::Ingress
                } else {
                    Direction::Egress
                },
                packets: k + 1,
                bytes: 100 * (k + 1),
            }
        })
        .collect()
}

/// `addr:port` as the API writes it.
fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The JSON a raw row must have, built field by field from the fixture.
fn raw_json(id: u64, p: &Packet) -> Value {
    json!({
        "id": id,
        "timestamp": p.ts_unix_ns / SEC,
        "timestamp_ns": p.ts_unix_ns,
        "direction": direction_name(p.direction),
        "proto": p.tuple.proto.to_string(),
        "src": endpoint(p.tuple.src, p.tuple.src_port),
        "dst": endpoint(p.tuple.dst, p.tuple.dst_port),
        "packets": p.packets,
        "bytes": p.bytes,
        "tcp_flags": p.tcp_flags,
        "icmp_type": p.icmp_type,
        "icmp_code": p.icmp_code,
    })
}

/// The JSON a window row must have.
fn window_json(id: u64, w: &WindowRow) -> Value {
    json!({
        "id": id,
        "window_start": w.window_start_unix,
        "window_end": w.window_end_unix,
        "direction": direction_name(w.direction),
        "proto": w.tuple.proto.to_string(),
        "src": endpoint(w.tuple.src, w.tuple.src_port),
        "dst": endpoint(w.tuple.dst, w.tuple.dst_port),
        "packets": w.packets,
        "bytes": w.bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// The live view: a real connection table and fixed kernel totals.
struct FakeLive {
    table: Mutex<ConnectionTable>,
    totals: (u64, u64),
    /// Panic in `top`, standing in for a bug.
    broken: bool,
}

impl FakeLive {
    fn table(&self) -> std::sync::MutexGuard<'_, ConnectionTable> {
        self.table
            .lock()
            .expect("poisoned only if a test already panicked")
    }
}

impl LiveSource for FakeLive {
    fn top(&self, limit: usize, sort: SortKey) -> Vec<ConnectionSnapshot> {
        assert!(!self.broken, "a deliberately broken live source");
        self.table().top(limit, sort)
    }

    fn totals(&self) -> (u64, u64) {
        self.totals
    }
}

/// Packets/bytes per direction the fixed kernel readings report.
const KERNEL: [(Direction, u64, u64); 2] = [
    (Direction::Ingress, 7_000, 5_000_000),
    (Direction::Egress, 5_050, 3_504_320),
];

/// The agent's catalogue over fixed kernel counters, the fake table and the API's own stats.
struct FixedMetrics {
    live: Arc<FakeLive>,
    pipeline: PipelineStats,
    api: Arc<api::ApiStats>,
}

impl MetricsSource for FixedMetrics {
    fn families(&self) -> Vec<Family> {
        let mut kernel = Totals::default();
        for (d, packets, bytes) in KERNEL {
            let block = &mut kernel.by_direction[d as usize].values;
            block[Counter::Packets as usize] = packets;
            block[Counter::Bytes as usize] = bytes;
            block[Counter::RingbufDrops as usize] = 3;
        }
        let (active, table) = {
            let t = self.live.table();
            (t.active_len() as u64, t.stats())
        };
        ayaflow::telemetry::agent_families(&Readings {
            kernel: Some(kernel),
            kernel_read_errors: 0,
            active_connections: active,
            table,
            pipeline: &self.pipeline,
            storage: StorageStatsSnapshot::default(),
            api: &self.api,
        })
    }
}

/// How to build one server.
struct Setup {
    live: Vec<Packet>,
    raw: Vec<Packet>,
    windows: Vec<WindowRow>,
    history_kind: HistoryKind,
    allowed_ips: Vec<&'static str>,
    limits: StreamLimits,
    /// Run `stream::publish` with this period.
    publish: Option<Duration>,
    bind: SocketAddr,
    /// Point the API at a database file that does not exist.
    missing_db: bool,
    /// A live source that panics.
    broken_live: bool,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            live: small_table(),
            raw: Vec::new(),
            windows: Vec::new(),
            history_kind: HistoryKind::Raw,
            allowed_ips: Vec::new(),
            limits: StreamLimits::default(),
            publish: None,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            missing_db: false,
            broken_live: false,
        }
    }
}

struct Server {
    addr: SocketAddr,
    /// Shares its `stats`, `ready` and slots with the served copy.
    state: AppState,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    client: reqwest::Client,
    /// The writer's connection stays open for the server's life, as in the agent.
    _store: Store,
    _dir: tempfile::TempDir,
}

/// Binds, fills the table and the database, and serves; `None` if `setup.bind` cannot be
/// bound (no IPv6 here).
async fn try_start(setup: Setup) -> Option<Server> {
    let listener = match TcpListener::bind(setup.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot bind {}: {e}", setup.bind);
            return None;
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");

    let mut table = ConnectionTable::new(10_000, Duration::from_secs(3600));
    for p in &setup.live {
        table.record(p);
    }
    let live = Arc::new(FakeLive {
        table: Mutex::new(table),
        totals: TOTALS,
        broken: setup.broken_live,
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let db_path: PathBuf = dir.path().join("history.db");
    let mut store = Store::open(&db_path).expect("a new database in a temp dir opens");
    store.insert_packets(&setup.raw).expect("insert raw rows");
    store
        .insert_windows(&setup.windows)
        .expect("insert windows");

    let allowed: Vec<IpNet> = setup
        .allowed_ips
        .iter()
        .map(|s| s.parse().expect("fixture networks are valid"))
        .collect();
    let state = AppState::new(
        live.clone(),
        Arc::new(Vec::<metrics::Family>::new()),
        if setup.missing_db {
            dir.path().join("missing.db")
        } else {
            db_path
        },
        setup.history_kind,
        allowed,
    )
    .with_stream_limits(setup.limits);
    let pipeline = PipelineStats::default();
    pipeline.events.store(42, Ordering::Relaxed);
    let source = FixedMetrics {
        live,
        pipeline,
        api: state.stats.clone(),
    };
    let state = AppState {
        metrics: Arc::new(source),
        ..state
    };

    let (stop, shutdown) = Shutdown::new();
    let task = tokio::spawn(api::serve(listener, state.clone(), shutdown.clone()));
    if let Some(period) = setup.publish {
        tokio::spawn(api::stream::publish(state.clone(), period, shutdown));
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .expect("a plain HTTP client builds");
    Some(Server {
        addr,
        state,
        stop,
        task,
        client,
        _store: store,
        _dir: dir,
    })
}

async fn start(setup: Setup) -> Server {
    try_start(setup).await.expect("loopback IPv4 can be bound")
}

/// A response read whole.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        assert!(
            self.content_type.starts_with("application/json"),
            "content type {:?}, body {}",
            self.content_type,
            self.body
        );
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    async fn request(&self, method: reqwest::Method, path: &str) -> Reply {
        send(self.client.request(method, self.url(path))).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.request(reqwest::Method::GET, path).await
    }

    /// GET, expecting 200 and JSON.
    async fn ok_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// A WebSocket upgrade sent by hand, to read the body of a refusal.
    async fn upgrade_by_hand(&self, path: &str) -> Reply {
        send(
            self.client
                .get(self.url(path))
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        )
        .await
    }

    async fn connect(&self) -> Result<Ws, tungstenite::Error> {
        tokio_tungstenite::connect_async(self.ws_url("/api/stream"))
            .await
            .map(|(ws, _)| ws)
    }
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    let r = req.send().await.expect("the server answers");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("ASCII content type").to_owned())
        .unwrap_or_default();
    let body = r.text().await.expect("a readable body");
    Reply {
        status,
        content_type,
        body,
    }
}

/// Asserts `reply` is a JSON error `{"error", "hint"}` with `status` whose text names `word`.
fn assert_error(reply: &Reply, status: u16, word: &str) -> Value {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    let v = reply.json();
    let obj = v.as_object().expect("the error body is an object");
    assert_eq!(
        obj.keys().map(String::as_str).collect::<Vec<_>>(),
        ["error", "hint"],
        "{v}"
    );
    let error = v["error"].as_str().expect("error is a string");
    let hint = v["hint"].as_str().expect("hint is a string");
    assert!(!hint.is_empty(), "{v}");
    assert!(
        error.contains(word) || hint.contains(word),
        "{word:?} not named in {v}"
    );
    v
}

/// Polls `cond` every 20 ms until it holds; panics after `PATIENCE`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next text frame, skipping pings; panics after `PATIENCE` or on anything else.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("the stream is open")
            .expect("a well-formed frame");
        match msg {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GET /api/live
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn live_exact_json() {
    let s = start(Setup::default()).await;
    let doc = s.ok_json("/api/live").await;
    let want = json!({
        "connections": [
            {"connection": {"src": "192.168.1.5:443", "dst": "10.0.0.2:34560", "proto": "TCP"},
             "stats": {"packets_count": 4, "bytes_count": 3060,
                       "first_seen": T, "last_seen": T + 5,
                       "ingress_packets": 3, "ingress_bytes": 3000,
                       "egress_packets": 1, "egress_bytes": 60}},
            {"connection": {"src": "[fd00::1]:5353", "dst": "[fd00::2]:53", "proto": "UDP"},
             "stats": {"packets_count": 2, "bytes_count": 200,
                       "first_seen": T + 2, "last_seen": T + 3,
                       "ingress_packets": 0, "ingress_bytes": 0,
                       "egress_packets": 2, "egress_bytes": 200}},
            {"connection": {"src": "10.0.0.9:0", "dst": "10.0.0.1:0", "proto": "ICMP"},
             "stats": {"packets_count": 1, "bytes_count": 84,
                       "first_seen": T + 4, "last_seen": T + 4,
                       "ingress_packets": 1, "ingress_bytes": 84,
                       "egress_packets": 0, "egress_bytes": 0}},
        ],
        "total_packets": TOTALS.0,
        "total_bytes": TOTALS.1,
    });
    assert_eq!(doc, want);
}

#[tokio::test]
async fn live_sort_keys_order_the_small_table() {
    let s = start(Setup::default()).await;
    let protos = |doc: Value| -> Vec<String> {
        doc["connections"]
            .as_array()
            .expect("connections is an array")
            .iter()
            .map(|c| c["connection"]["proto"].as_str().expect("proto").to_owned())
            .collect()
    };
    for (query, want) in [
        ("", ["TCP", "UDP", "ICMP"]),
        ("?sort=packets", ["TCP", "UDP", "ICMP"]),
        ("?sort=bytes", ["TCP", "UDP", "ICMP"]),
        ("?sort=last_seen", ["TCP", "ICMP", "UDP"]),
        ("?sort=first_seen", ["ICMP", "UDP", "TCP"]),
    ] {
        let got = protos(s.ok_json(&format!("/api/live{query}")).await);
        assert_eq!(got, want, "/api/live{query}");
    }
    let one = s.ok_json("/api/live?limit=1&sort=first_seen").await;
    assert_eq!(protos(one), ["ICMP"]);
}

#[tokio::test]
async fn live_default_limit_is_50_and_each_sort_key_ranks_all_60() {
    let (packets, models) = many_connections();
    let s = start(Setup {
        live: packets,
        ..Setup::default()
    })
    .await;
    let ports = |doc: &Value| -> Vec<u64> {
        doc["connections"]
            .as_array()
            .expect("connections is an array")
            .iter()
            .map(|c| {
                let src = c["connection"]["src"].as_str().expect("src");
                src.rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("src ends in :port")
            })
            .collect()
    };
    let expect = |key: fn(&Model) -> u64, n: usize| -> Vec<u64> {
        let mut m = models.clone();
        m.sort_by_key(|x| std::cmp::Reverse(key(x)));
        m.iter().take(n).map(|x| u64::from(x.src_port)).collect()
    };

    let doc = s.ok_json("/api/live").await;
    assert_eq!(doc["connections"].as_array().map(Vec::len), Some(50));
    assert_eq!(ports(&doc), expect(|m| m.packets, 50));
    let first = &doc["connections"][0]["stats"];
    let top = models.iter().max_by_key(|m| m.packets).expect("60 models");
    assert_eq!(first["packets_count"], top.packets);
    assert_eq!(first["bytes_count"], top.bytes);
    assert_eq!(first["first_seen"], top.first_seen);
    assert_eq!(first["last_seen"], top.last_seen);

    type SortCase = (&'static str, fn(&Model) -> u64);
    let keys: [SortCase; 4] = [
        ("packets", |m| m.packets),
        ("bytes", |m| m.bytes),
        ("first_seen", |m| m.first_seen),
        ("last_seen", |m| m.last_seen),
    ];
    let mut orders = BTreeSet::new();
    for (name, key) in keys {
        let doc = s
            .ok_json(&format!("/api/live?sort={name}&limit=1000"))
            .await;
        let got = ports(&doc);
        assert_eq!(got.len(), 60, "sort={name}: all 60 fit in limit=1000");
        assert_eq!(got, expect(key, 60), "sort={name}");
        orders.insert(got);
        let doc = s.ok_json(&format!("/api/live?sort={name}")).await;
        assert_eq!(ports(&doc), expect(key, 50), "sort={name}, default limit");
    }
    assert_eq!(orders.len(), 4, "each sort key gives its own order");

    for (limit, n) in [(1, 1), (7, 7), (50, 50), (59, 59), (60, 60), (1000, 60)] {
        let doc = s.ok_json(&format!("/api/live?limit={limit}")).await;
        assert_eq!(ports(&doc), expect(|m| m.packets, n), "limit={limit}");
    }
}

// ---------------------------------------------------------------------------------------------
// WS /api/stream
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stream_pushes_the_live_document_every_second_despite_a_stuck_client() {
    let s = start(Setup {
        publish: Some(Duration::from_secs(1)),
        ..Setup::default()
    })
    .await;
    let live = s.ok_json("/api/live").await;
    // Connected first and never read from.
    let _stuck = s.connect().await.expect("the stuck client connects");
    let mut ws = s.connect().await.expect("the reader connects");
    eventually("both clients are counted", || {
        s.state.stats.stream_clients.load(Ordering::Relaxed) == 2
    })
    .await;

    let mut arrivals = Vec::new();
    for _ in 0..4 {
        let frame = next_text(&mut ws).await;
        arrivals.push(Instant::now());
        let doc: Value = serde_json::from_str(&frame).expect("frames are JSON");
        assert_eq!(doc, live, "each frame is the /api/live document");
    }
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(500) && gap <= Duration::from_millis(2500),
            "frames {gap:?} apart, expected about 1 s"
        );
    }
}

#[tokio::test]
async fn stream_drops_a_client_that_stops_reading_and_keeps_serving_the_others() {
    let (packets, _) = many_connections();
    let s = start(Setup {
        live: packets,
        // ~16 KB frames every 20 ms fill a stuck client's socket buffers within seconds.
        publish: Some(Duration::from_millis(20)),
        limits: StreamLimits {
            max_clients: 4,
            send_timeout: Duration::from_millis(500),
        },
        ..Setup::default()
    })
    .await;

    // A tiny receive buffer (which also turns off its autotuning) so the stuck client's side
    // fills quickly.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = sock.connect(s.addr).await.expect("connect");
    let (stuck, _) = tokio_tungstenite::client_async(s.ws_url("/api/stream"), tcp)
        .await
        .expect("the stuck client connects");

    let mut ws = s.connect().await.expect("the reader connects");
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let stats = s.state.stats.clone();
    eventually("the stuck client is dropped", || {
        stats.stream_dropped_slow.load(Ordering::Relaxed) >= 1
    })
    .await;
    eventually("only the reader is left", || {
        stats.stream_clients.load(Ordering::Relaxed) == 1
    })
    .await;
    let before = received.load(Ordering::Relaxed);
    assert!(
        before > 0,
        "the reader got frames while the other was stuck"
    );
    eventually("the reader still gets frames", || {
        received.load(Ordering::Relaxed) >= before + 10
    })
    .await;
    assert!(!reader.is_finished(), "the reader was not dropped");
    assert_eq!(stats.stream_dropped_slow.load(Ordering::Relaxed), 1);
    drop(stuck);
}

#[tokio::test]
async fn stream_client_cap_gives_503_json_and_frees_slots() {
    let s = start(Setup {
        limits: StreamLimits {
            max_clients: 2,
            ..StreamLimits::default()
        },
        ..Setup::default()
    })
    .await;
    let mut first = s.connect().await.expect("slot 1");
    let _second = s.connect().await.expect("slot 2");
    match s.connect().await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            if let Some(body) = resp.body().as_deref().filter(|b| !b.is_empty()) {
                let v: Value = serde_json::from_slice(body).expect("a JSON body");
                assert!(v["error"].is_string() && v["hint"].is_string(), "{v}");
            }
        }
        Err(e) => panic!("expected a 503 response, got {e}"),
        Ok(_) => panic!("a third client got in past a cap of 2"),
    }
    let reply = s.upgrade_by_hand("/api/stream").await;
    let v = assert_error(&reply, 503, "already 2 stream clients");
    assert!(
        v["hint"].as_str().is_some_and(|h| h.contains("/api/live")),
        "{v}"
    );
    assert_eq!(s.state.stats.stream_rejected.load(Ordering::Relaxed), 2);

    first.close(None).await.expect("close handshake starts");
    let deadline = Instant::now() + PATIENCE;
    let _third = loop {
        match s.connect().await {
            Ok(ws) => break ws,
            Err(tungstenite::Error::Http(resp)) if resp.status().as_u16() == 503 => {
                assert!(
                    Instant::now() < deadline,
                    "the closed client's slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("connecting after a close: {e}"),
        }
    };
}

#[tokio::test]
async fn stream_refuses_plain_gets_and_parameters_with_json() {
    let s = start(Setup::default()).await;
    let reply = s.get("/api/stream").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_error(&reply, 400, "not a WebSocket upgrade");
    let reply = s.get("/api/stream?limit=5").await;
    assert_error(&reply, 400, "limit");
    match tokio_tungstenite::connect_async(s.ws_url("/api/stream?sort=bytes")).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn shutdown_closes_stream_clients_and_stops_the_server() {
    let s = start(Setup {
        publish: Some(Duration::from_secs(1)),
        ..Setup::default()
    })
    .await;
    let mut ws = s.connect().await.expect("connects");
    eventually("the client is counted", || {
        s.state.stats.stream_clients.load(Ordering::Relaxed) == 1
    })
    .await;
    s.stop.send(true).expect("the server still listens");
    let close = loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the server closes the stream in time")
            .expect("a close frame before the end")
            .expect("a well-formed frame");
        match msg {
            Message::Close(frame) => break frame,
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    let served = tokio::time::timeout(PATIENCE, s.task)
        .await
        .expect("serve returns after shutdown")
        .expect("serve did not panic");
    served.expect("serve ends cleanly");
    assert!(
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("http://{}/healthz", s.addr))
            .send()
            .await
            .is_err(),
        "nothing listens after shutdown"
    );
}

// ---------------------------------------------------------------------------------------------
// GET /api/history
// ---------------------------------------------------------------------------------------------

fn ids(doc: &Value) -> Vec<u64> {
    doc["rows"]
        .as_array()
        .expect("rows is an array")
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect()
}

#[tokio::test]
async fn history_raw_rows_exact_json_default_limit_and_kind() {
    let raw = raw_rows(130);
    let s = start(Setup {
        raw: raw.clone(),
        windows: window_rows(),
        ..Setup::default()
    })
    .await;
    let doc = s.ok_json("/api/history").await;
    let keys: Vec<&str> = doc
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["kind", "next_cursor", "rows"]);
    assert_eq!(doc["kind"], "raw");
    // Default limit 100, newest first; the next page starts below the last id shown.
    let want: Vec<u64> = (31..=130).rev().collect();
    assert_eq!(ids(&doc), want);
    assert_eq!(doc["next_cursor"], 31);
    // One row written out by hand (the newest: i = 129, UDP, ingress)...
    assert_eq!(
        doc["rows"][0],
        json!({"id": 130, "timestamp": T + 129, "timestamp_ns": (T + 129) * SEC + 123_456_789,
               "direction": "ingress", "proto": "UDP", "src": "10.0.0.3:5353",
               "dst": "10.0.0.1:53", "packets": 1, "bytes": 189, "tcp_flags": 0,
               "icmp_type": 0, "icmp_code": 0})
    );
    // ... and an IPv6 ICMPv6 one (i = 126).
    assert_eq!(
        doc["rows"][3],
        json!({"id": 127, "timestamp": T + 126, "timestamp_ns": (T + 126) * SEC + 123_456_789,
               "direction": "ingress", "proto": "ICMPv6", "src": "[fd00::1]:0",
               "dst": "[fd00::2]:0", "packets": 1, "bytes": 186, "tcp_flags": 0,
               "icmp_type": 128, "icmp_code": 0})
    );
    // Every row, field by field.
    let all = s.ok_json("/api/history?limit=10000").await;
    let want: Vec<Value> = raw
        .iter()
        .enumerate()
        .rev()
        .map(|(i, p)| raw_json(i as u64 + 1, p))
        .collect();
    assert_eq!(all["rows"], Value::Array(want));
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(s.ok_json("/api/history?kind=raw").await, doc);
}

#[tokio::test]
async fn history_aggregated_rows_and_the_agents_default_kind() {
    let windows = window_rows();
    for (kind, query) in [
        (HistoryKind::Raw, "?kind=aggregated"),
        (HistoryKind::Aggregated, ""),
    ] {
        let s = start(Setup {
            raw: raw_rows(5),
            windows: windows.clone(),
            history_kind: kind,
            ..Setup::default()
        })
        .await;
        let doc = s.ok_json(&format!("/api/history{query}")).await;
        assert_eq!(doc["kind"], "aggregated", "{query}");
        assert_eq!(
            doc["rows"][0],
            json!({"id": 12, "window_start": T + 660, "window_end": T + 720,
                   "direction": "egress", "proto": "TCP", "src": "[fd00::2]:50000",
                   "dst": "[fd00::3]:8080", "packets": 12, "bytes": 1200})
        );
        let want: Vec<Value> = windows
            .iter()
            .enumerate()
            .rev()
            .map(|(i, w)| window_json(i as u64 + 1, w))
            .collect();
        assert_eq!(doc["rows"], Value::Array(want));
        assert_eq!(doc["next_cursor"], Value::Null);
        // The other table is still reachable by name.
        let raw = s.ok_json("/api/history?kind=raw").await;
        assert_eq!(raw["kind"], "raw");
        assert_eq!(ids(&raw), [5, 4, 3, 2, 1]);
    }
}

#[tokio::test]
async fn history_filters_match_the_fixture() {
    let raw = raw_rows(130);
    let windows = window_rows();
    let s = start(Setup {
        raw: raw.clone(),
        windows: windows.clone(),
        ..Setup::default()
    })
    .await;
    let secs = |p: &Packet| p.ts_unix_ns / SEC;
    let has_addr = |t: &FiveTuple, a: &str| t.src == ip(a) || t.dst == ip(a);
    let has_port = |t: &FiveTuple, port: u16| t.src_port == port || t.dst_port == port;
    type RawCase = (String, Box<dyn Fn(&Packet) -> bool>);
    let cases: Vec<RawCase> = vec![
        (
            format!("from={}&to={}", T + 10, T + 20),
            Box::new(move |p| (T + 10..T + 20).contains(&secs(p))),
        ),
        (
            format!("from={}", T + 100),
            Box::new(move |p| secs(p) >= T + 100),
        ),
        (format!("to={}", T + 7), Box::new(move |p| secs(p) < T + 7)),
        (format!("from={0}&to={0}", T + 7), Box::new(|_| false)),
        (
            "addr=10.0.0.1".into(),
            Box::new(move |p| has_addr(&p.tuple, "10.0.0.1")),
        ),
        (
            "addr=10.0.0.2".into(),
            Box::new(move |p| has_addr(&p.tuple, "10.0.0.2")),
        ),
        (
            "addr=fd00::2".into(),
            Box::new(move |p| has_addr(&p.tuple, "fd00::2")),
        ),
        // Any spelling of an address finds its rows.
        (
            "addr=fd00:0:0:0::2".into(),
            Box::new(move |p| has_addr(&p.tuple, "fd00::2")),
        ),
        ("addr=192.0.2.1".into(), Box::new(|_| false)),
        (
            "port=443".into(),
            Box::new(move |p| has_port(&p.tuple, 443)),
        ),
        (
            "port=5353".into(),
            Box::new(move |p| has_port(&p.tuple, 5353)),
        ),
        ("port=53".into(), Box::new(move |p| has_port(&p.tuple, 53))),
        (
            "port=40003".into(),
            Box::new(move |p| has_port(&p.tuple, 40_003)),
        ),
        (
            "proto=TCP".into(),
            Box::new(|p| p.tuple.proto == Protocol::Tcp),
        ),
        (
            "proto=udp".into(),
            Box::new(|p| p.tuple.proto == Protocol::Udp),
        ),
        (
            "proto=ICMPv6".into(),
            Box::new(|p| p.tuple.proto == Protocol::Icmpv6),
        ),
        ("proto=ICMP".into(), Box::new(|_| false)),
        (
            "direction=ingress".into(),
            Box::new(|p| p.direction == Direction::Ingress),
        ),
        (
            "direction=egress".into(),
            Box::new(|p| p.direction == Direction::Egress),
        ),
        (
            format!("proto=TCP&direction=egress&addr=fd00::3&from={}", T + 50),
            Box::new(move |p| {
                p.tuple.proto == Protocol::Tcp
                    && p.direction == Direction::Egress
                    && has_addr(&p.tuple, "fd00::3")
                    && secs(p) >= T + 50
            }),
        ),
    ];
    for (query, keep) in &cases {
        let want: Vec<u64> = (1..=raw.len() as u64)
            .rev()
            .filter(|&id| keep(&raw[id as usize - 1]))
            .collect();
        assert!(want.len() < raw.len(), "{query} must filter something out");
        let doc = s
            .ok_json(&format!("/api/history?limit=10000&{query}"))
            .await;
        assert_eq!(ids(&doc), want, "{query}");
        assert_eq!(doc["next_cursor"], Value::Null, "{query}");
    }

    type WindowCase = (String, Box<dyn Fn(&WindowRow) -> bool>);
    let start_s = |w: &WindowRow| w.window_start_unix as u64;
    let cases: Vec<WindowCase> = vec![
        (
            format!("from={}&to={}", T + 120, T + 300),
            Box::new(move |w| (T + 120..T + 300).contains(&start_s(w))),
        ),
        (
            "addr=10.0.0.3".into(),
            Box::new(move |w| has_addr(&w.tuple, "10.0.0.3")),
        ),
        (
            "port=8080".into(),
            Box::new(move |w| has_port(&w.tuple, 8080)),
        ),
        (
            "proto=UDP".into(),
            Box::new(|w| w.tuple.proto == Protocol::Udp),
        ),
        (
            "direction=ingress".into(),
            Box::new(|w| w.direction == Direction::Ingress),
        ),
    ];
    for (query, keep) in &cases {
        let want: Vec<u64> = (1..=windows.len() as u64)
            .rev()
            .filter(|&id| keep(&windows[id as usize - 1]))
            .collect();
        assert!(!want.is_empty() && want.len() < windows.len(), "{query}");
        let doc = s
            .ok_json(&format!("/api/history?kind=aggregated&{query}"))
            .await;
        assert_eq!(doc["kind"], "aggregated");
        assert_eq!(ids(&doc), want, "kind=aggregated&{query}");
    }
}

/// Follows `next_cursor` from the first page of `query`; returns every page's ids.
async fn walk(s: &Server, query: &str) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
        let doc = s.ok_json(&format!("/api/history?{query}{cursor}")).await;
        let page = ids(&doc);
        pages.push(page.clone());
        assert!(pages.len() <= 1000, "paging does not end");
        match doc["next_cursor"].as_u64() {
            None => {
                assert_eq!(doc["next_cursor"], Value::Null);
                return pages;
            }
            Some(next) => {
                assert_eq!(page.last(), Some(&next), "the cursor is the page's last id");
                before = Some(next);
            }
        }
    }
}

#[tokio::test]
async fn history_pages_through_every_row_with_the_cursor() {
    let raw = raw_rows(130);
    let s = start(Setup {
        raw: raw.clone(),
        ..Setup::default()
    })
    .await;
    let pages = walk(&s, "limit=7").await;
    assert_eq!(pages.len(), 130usize.div_ceil(7));
    assert!(pages[..pages.len() - 1].iter().all(|p| p.len() == 7));
    let all: Vec<u64> = pages.concat();
    assert_eq!(all, (1..=130).rev().collect::<Vec<u64>>());

    // With a filter, pages hold only matching rows and still cover all of them.
    let tcp: Vec<u64> = (1..=130u64)
        .rev()
        .filter(|&id| raw[id as usize - 1].tuple.proto == Protocol::Tcp)
        .collect();
    let pages = walk(&s, "limit=5&proto=TCP").await;
    assert_eq!(pages.concat(), tcp);
    assert!(pages.iter().all(|p| p.len() <= 5));

    // An exact multiple of the limit ends with next_cursor null, not an empty page.
    let pages = walk(&s, "limit=10&to=1700000020").await;
    assert_eq!(pages.len(), 2);
    assert_eq!(pages.concat(), (1..=20).rev().collect::<Vec<u64>>());

    let doc = s.ok_json("/api/history?before=50&limit=3").await;
    assert_eq!(ids(&doc), [49, 48, 47]);
    assert_eq!(doc["next_cursor"], 47);
    let doc = s.ok_json("/api/history?before=1").await;
    assert_eq!(ids(&doc), Vec::<u64>::new());
    assert_eq!(doc["next_cursor"], Value::Null);
}

#[tokio::test]
async fn history_limit_is_capped_at_10000() {
    let s = start(Setup {
        raw: raw_rows(10_050),
        ..Setup::default()
    })
    .await;
    let doc = s.ok_json("/api/history?limit=10000").await;
    let page = ids(&doc);
    assert_eq!(page.len(), 10_000);
    assert_eq!(page.first(), Some(&10_050));
    assert_eq!(doc["next_cursor"], 51);
    let doc = s.ok_json("/api/history?limit=10000&before=51").await;
    assert_eq!(ids(&doc).len(), 50);
    assert_eq!(doc["next_cursor"], Value::Null);
    let reply = s.get("/api/history?limit=10001").await;
    let v = assert_error(&reply, 400, "limit");
    assert!(
        v["hint"].as_str().is_some_and(|h| h.contains("10000")),
        "{v}"
    );
}

#[tokio::test]
async fn history_queries_beyond_the_concurrency_bound_get_503() {
    let s = start(Setup {
        raw: raw_rows(3),
        ..Setup::default()
    })
    .await;
    // Stand-ins for queries that are still running.
    let running = s
        .state
        .history_slots
        .clone()
        .try_acquire_many_owned(MAX_CONCURRENT_QUERIES as u32)
        .expect("all slots are free");
    let reply = s.get("/api/history").await;
    assert_error(&reply, 503, "history queries running");
    assert_eq!(s.state.stats.history_rejected.load(Ordering::Relaxed), 1);
    drop(running);
    assert_eq!(ids(&s.ok_json("/api/history").await), [3, 2, 1]);
    assert_eq!(
        s.state.history_slots.available_permits(),
        MAX_CONCURRENT_QUERIES,
        "a finished query gives its slot back"
    );
}

#[tokio::test]
async fn history_failure_is_a_json_500_and_counted() {
    let s = start(Setup {
        missing_db: true,
        ..Setup::default()
    })
    .await;
    let reply = s.get("/api/history").await;
    let v = assert_error(&reply, 500, "missing.db");
    assert_eq!(v["hint"], "see the agent's log");
    assert_eq!(s.state.stats.internal_errors.load(Ordering::Relaxed), 1);
    let text = s.get("/metrics").await.body;
    assert!(
        text.contains("\nayaflow_api_internal_errors_total 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_panicking_handler_ends_only_its_own_request() {
    let s = start(Setup {
        broken_live: true,
        raw: raw_rows(3),
        ..Setup::default()
    })
    .await;
    for _ in 0..3 {
        let answer = s.client.get(s.url("/api/live")).send().await;
        assert!(answer.is_err(), "the broken request gets no answer");
    }
    assert_eq!(s.get("/healthz").await.status, 200);
    assert_eq!(ids(&s.ok_json("/api/history").await), [3, 2, 1]);
    assert!(!s.task.is_finished(), "the server is still serving");
}

// ---------------------------------------------------------------------------------------------
// 400, 403, 404, 405, health
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_parameters_get_400_naming_the_parameter() {
    let s = start(Setup {
        raw: raw_rows(3),
        ..Setup::default()
    })
    .await;
    // (path, the parameter the answer must name)
    let cases = [
        ("/api/live?limit=abc", "limit"),
        ("/api/live?limit=-1", "limit"),
        ("/api/live?limit=0", "limit"),
        ("/api/live?limit=1001", "limit"),
        ("/api/live?limit=", "limit"),
        ("/api/live?limit=2.5", "limit"),
        ("/api/live?limit=99999999999999999999999", "limit"),
        ("/api/live?sort=size", "sort"),
        ("/api/live?sort=", "sort"),
        ("/api/live?top=5", "top"),
        ("/api/history?limit=x", "limit"),
        ("/api/history?limit=-5", "limit"),
        ("/api/history?limit=0", "limit"),
        ("/api/history?before=0", "before"),
        ("/api/history?before=-1", "before"),
        ("/api/history?before=abc", "before"),
        ("/api/history?from=-1", "from"),
        ("/api/history?from=yesterday", "from"),
        ("/api/history?to=99999999999", "to"),
        ("/api/history?from=200&to=100", "to"),
        ("/api/history?port=65536", "port"),
        ("/api/history?port=-1", "port"),
        ("/api/history?port=http", "port"),
        ("/api/history?proto=SCTP", "proto"),
        ("/api/history?proto=IP-300", "proto"),
        ("/api/history?proto=ETH-0xZZ", "proto"),
        ("/api/history?direction=up", "direction"),
        ("/api/history?direction=INGRESS", "direction"),
        ("/api/history?kind=flows", "kind"),
        ("/api/history?addr=not-an-ip", "addr"),
        ("/api/history?addr=10.0.0.0/8", "addr"),
        ("/api/history?offset=100", "offset"),
        ("/api/history?limit=5&bogus=1", "bogus"),
        ("/api/stream?limit=5", "limit"),
    ];
    for (path, name) in cases {
        let reply = s.get(path).await;
        let v = assert_error(&reply, 400, name);
        let error = v["error"].as_str().expect("error");
        assert!(
            error.contains(name),
            "{path}: error {error:?} names {name:?}"
        );
        let hint = v["hint"].as_str().expect("hint");
        if error.starts_with("unknown") {
            assert!(hint.starts_with("accepted parameters: "), "{path}: {hint}");
        } else {
            assert!(
                hint.starts_with(&format!("{name} must be ")),
                "{path}: {hint}"
            );
        }
    }
}

#[tokio::test]
async fn peers_outside_allowed_ips_get_403_json_everywhere() {
    let s = start(Setup {
        allowed_ips: vec!["10.0.0.0/8"],
        raw: raw_rows(3),
        publish: Some(Duration::from_secs(1)),
        ..Setup::default()
    })
    .await;
    s.state.ready.store(true, Ordering::Relaxed);
    let paths = [
        "/metrics",
        "/api/live",
        "/api/live?limit=bad",
        "/api/history",
        "/api/history?limit=5",
        "/api/stream",
        "/healthz",
        "/readyz",
        "/no/such/route",
    ];
    for path in paths {
        let reply = s.get(path).await;
        let v = assert_error(&reply, 403, "127.0.0.1");
        assert!(
            v["hint"]
                .as_str()
                .is_some_and(|h| h.contains("allowed_ips")),
            "{path}: {v}"
        );
    }
    assert_error(
        &s.request(reqwest::Method::POST, "/api/live").await,
        403,
        "127.0.0.1",
    );
    // The WebSocket upgrade, from a real client and by hand (to read the body).
    match s.connect().await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        Err(e) => panic!("expected a 403 response, got {e}"),
        Ok(_) => panic!("a denied peer got a stream"),
    }
    assert_error(&s.upgrade_by_hand("/api/stream").await, 403, "127.0.0.1");
    assert_eq!(s.state.stats.stream_clients.load(Ordering::Relaxed), 0);
    let denied = paths.len() as u64 + 3;
    assert_eq!(s.state.stats.denied.load(Ordering::Relaxed), denied);
}

#[tokio::test]
async fn dual_stack_listener_matches_mapped_ipv4_peers_as_ipv4() {
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let Some(v4_only) = try_start(Setup {
        allowed_ips: vec!["127.0.0.1/32"],
        bind: any6,
        ..Setup::default()
    })
    .await
    else {
        eprintln!("skipping: IPv6 is not available here");
        return;
    };
    let port = v4_only.addr.port();
    let client = &v4_only.client;
    let get = |host: &str| {
        let url = format!("http://{host}:{port}/api/live");
        async move { send(client.get(url)).await }
    };
    let via_v4 = match client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) => {
            // net.ipv6.bindv6only=1: the [::] socket takes no IPv4.
            eprintln!("skipping the IPv4 half: [::] does not accept IPv4 here ({e})");
            false
        }
    };
    if via_v4 {
        // The socket reports ::ffff:127.0.0.1, which must match 127.0.0.1/32.
        assert_eq!(get("127.0.0.1").await.status, 200);
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/api/stream"))
            .await
            .expect("the mapped IPv4 peer may stream");
        drop(ws);
    }
    assert_error(&get("[::1]").await, 403, "::1 is not in allowed_ips");

    let v6_only = start(Setup {
        allowed_ips: vec!["::1/128"],
        bind: any6,
        ..Setup::default()
    })
    .await;
    let port = v6_only.addr.port();
    let client = &v6_only.client;
    let get = |host: &str| {
        let url = format!("http://{host}:{port}/api/live");
        async move { send(client.get(url)).await }
    };
    assert_eq!(get("[::1]").await.status, 200);
    if via_v4 {
        let v = assert_error(&get("127.0.0.1").await, 403, "127.0.0.1");
        // Named as the IPv4 address it is, not as ::ffff:127.0.0.1.
        assert_eq!(v["error"], "127.0.0.1 is not in allowed_ips");
    }
}

#[tokio::test]
async fn health_readiness_and_unknown_routes() {
    let s = start(Setup::default()).await;
    let h = s.get("/healthz").await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok"));
    assert_error(&s.get("/readyz").await, 503, "not ready");
    s.state.ready.store(true, Ordering::Relaxed);
    let r = s.get("/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready"));
    s.state.ready.store(false, Ordering::Relaxed);
    assert_error(&s.get("/readyz").await, 503, "not ready");

    let v = assert_error(&s.get("/api/nope").await, 404, "no such route");
    assert!(
        v["hint"]
            .as_str()
            .is_some_and(|h| h.contains("/api/history")),
        "{v}"
    );
    assert_error(&s.get("/").await, 404, "no such route");
    for path in ["/api/live", "/api/history", "/metrics"] {
        let reply = s.request(reqwest::Method::POST, path).await;
        assert_error(&reply, 405, "GET");
        let reply = s.request(reqwest::Method::DELETE, path).await;
        assert_error(&reply, 405, "GET");
    }
}

// ---------------------------------------------------------------------------------------------
// GET /metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_the_documented_names_and_types() {
    let s = start(Setup::default()).await;
    // Something for the API counters to count.
    assert_eq!(s.get("/api/live?limit=x").await.status, 400);
    // What Prometheus sends: OpenMetrics first (see metrics::tests for the negotiation).
    let reply = send(s.client.get(s.url("/metrics")).header(
        "accept",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    ))
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(reply.content_type, metrics::OPENMETRICS_CONTENT_TYPE);
    let text = &reply.body;
    assert!(text.ends_with("# EOF\n"), "{text}");

    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{text}"));
    let types: BTreeMap<&str, OpenMetricsType> = parsed
        .families
        .values()
        .map(|f| (f.family_name.as_str(), f.family_type))
        .collect();
    let counters = [
        "ayaflow_packets",
        "ayaflow_bytes",
        "ayaflow_parse_errors",
        "ayaflow_ringbuf_drops",
        "ayaflow_flow_fallbacks",
        "ayaflow_protocol_packets",
        "ayaflow_kernel_read_errors",
        "ayaflow_connection_table_overflow_packets",
        "ayaflow_connection_table_overflow_connections",
        "ayaflow_connections_closed",
        "ayaflow_events",
        "ayaflow_events_malformed",
        "ayaflow_storage_rows_written",
        "ayaflow_storage_rows_dropped",
        "ayaflow_storage_errors",
        "ayaflow_storage_reopens",
        "ayaflow_retention_deleted_rows",
        "ayaflow_api_denied",
        "ayaflow_api_internal_errors",
        "ayaflow_api_history_rejected",
        "ayaflow_stream_rejected",
        "ayaflow_stream_frames_skipped",
        "ayaflow_stream_clients_dropped",
    ];
    let gauges = [
        "ayaflow_active_connections",
        "ayaflow_storage_queued_rows",
        "ayaflow_stream_clients",
    ];
    let want: BTreeMap<&str, OpenMetricsType> = counters
        .iter()
        .map(|&n| (n, OpenMetricsType::Counter))
        .chain(gauges.iter().map(|&n| (n, OpenMetricsType::Gauge)))
        .collect();
    assert_eq!(types, want);
    for family in parsed.families.values() {
        assert!(
            family.help.len() > 10,
            "{} has no real HELP text: {:?}",
            family.family_name,
            family.help
        );
        let help_line = format!("# HELP {} {}\n", family.family_name, family.help);
        assert!(text.contains(&help_line), "missing {help_line:?}");
    }

    // The three families the documented queries use, sample by sample.
    let value = |family: &str, labels: &[(&str, &str)]| -> f64 {
        let f = &parsed.families[family];
        let sample = f
            .iter_samples()
            .find(|s| {
                let set = s.get_labelset().expect("bound to its family");
                labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .unwrap_or_else(|| panic!("{family}{labels:?} missing"));
        match &sample.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            other => panic!("{family}: unexpected value {other:?}"),
        }
    };
    for (d, packets, bytes) in KERNEL {
        let dir = direction_name(d);
        assert_eq!(
            value("ayaflow_packets", &[("direction", dir)]),
            packets as f64
        );
        assert_eq!(value("ayaflow_bytes", &[("direction", dir)]), bytes as f64);
        // PromQL sees the `_total` name: rate(ayaflow_packets_total[1m]).
        assert!(
            text.contains(&format!(
                "\nayaflow_packets_total{{direction=\"{dir}\"}} {packets}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "\nayaflow_bytes_total{{direction=\"{dir}\"}} {bytes}\n"
            )),
            "{text}"
        );
        assert_eq!(value("ayaflow_ringbuf_drops", &[("direction", dir)]), 3.0);
    }
    assert_eq!(value("ayaflow_active_connections", &[]), 3.0);
    assert!(text.contains("\nayaflow_active_connections 3\n"), "{text}");
    assert_eq!(value("ayaflow_events", &[]), 42.0);
    assert_eq!(value("ayaflow_api_denied", &[]), 0.0);
}
