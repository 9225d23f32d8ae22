//! The server under test

use super::*;

/// The live view: a real connection table and fixed kernel totals.
pub(crate) struct FakeLive {
    pub(crate) table: ConnectionTable,
    pub(crate) totals: (u64, u64),
    /// Panic in `top`, standing in for a bug.
    pub(crate) broken: bool,
}

impl FakeLive {
    pub(crate) fn table(&self) -> &ConnectionTable {
        &self.table
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
pub(crate) const KERNEL: [(Direction, u64, u64); 2] = [
    (Direction::Ingress, 7_000, 5_000_000),
    (Direction::Egress, 5_050, 3_504_320),
];

/// The agent's catalogue over fixed kernel counters, the fake table and the API's own stats.
pub(crate) struct FixedMetrics {
    pub(crate) live: Arc<FakeLive>,
    pub(crate) pipeline: PipelineStats,
    pub(crate) api: Arc<api::ApiStats>,
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
        let t = self.live.table();
        let (active, table, lock_waits) = (t.active_len() as u64, t.stats(), t.lock_waits());
        ayaflow::telemetry::agent_families(&Readings {
            kernel: Some(vec![(std::sync::Arc::from("eth0"), kernel)]),
            interfaces: &Default::default(),
            kernel_read_errors: 0,
            active_connections: active,
            table,
            lock_waits,
            pipeline: &self.pipeline,
            storage: StorageStatsSnapshot::default(),
            api: &self.api,
            ipfix: &[],
        })
    }
}

/// How to build one server.
pub(crate) struct Setup {
    pub(crate) live: Vec<Packet>,
    pub(crate) raw: Vec<Packet>,
    pub(crate) windows: Vec<WindowRow>,
    pub(crate) history_kind: HistoryKind,
    pub(crate) allowed_ips: Vec<&'static str>,
    /// Ask every route but the probes for this bearer token.
    pub(crate) api_token: Option<&'static str>,
    pub(crate) limits: StreamLimits,
    /// The connection cap and timeouts of `api::serve`.
    pub(crate) serve: ServeLimits,
    /// Run `stream::publish` with this period.
    pub(crate) publish: Option<Duration>,
    pub(crate) bind: SocketAddr,
    /// Point the API at a database file that does not exist.
    pub(crate) missing_db: bool,
    /// A live source that panics.
    pub(crate) broken_live: bool,
    /// What `/api/status` reports (the default `Status` if `None`).
    pub(crate) status: Option<api::Status>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            live: small_table(),
            raw: Vec::new(),
            windows: Vec::new(),
            history_kind: HistoryKind::Raw,
            allowed_ips: Vec::new(),
            api_token: None,
            limits: StreamLimits::default(),
            serve: ServeLimits::default(),
            publish: None,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            missing_db: false,
            broken_live: false,
            status: None,
        }
    }
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    /// Shares its `stats`, `ready` and slots with the served copy.
    pub(crate) state: AppState,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: JoinHandle<std::io::Result<()>>,
    pub(crate) client: reqwest::Client,
    /// The writer's connection stays open for the server's life, as in the agent.
    pub(crate) _store: Store,
    pub(crate) _dir: tempfile::TempDir,
}

/// Binds, fills the table and the database, and serves; `None` if `setup.bind` cannot be
/// bound (no IPv6 here).
pub(crate) async fn try_start(setup: Setup) -> Option<Server> {
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

    let table = ConnectionTable::new(10_000, Duration::from_secs(3600));
    table.record_batch(&setup.live);
    let live = Arc::new(FakeLive {
        table,
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
    let state = match setup.api_token {
        Some(token) => state.with_api_token(token),
        None => state,
    };
    let state = match setup.status {
        Some(status) => state.with_status(status),
        None => state,
    };
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
    let task = tokio::spawn(api::serve(
        listener,
        state.clone(),
        setup.serve,
        shutdown.clone(),
    ));
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

pub(crate) async fn start(setup: Setup) -> Server {
    try_start(setup).await.expect("loopback IPv4 can be bound")
}

/// A response read whole.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
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
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub(crate) async fn request(&self, method: reqwest::Method, path: &str) -> Reply {
        send(self.client.request(method, self.url(path))).await
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.request(reqwest::Method::GET, path).await
    }

    /// GET, expecting 200 and JSON.
    pub(crate) async fn ok_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// A WebSocket upgrade sent by hand, to read the body of a refusal.
    pub(crate) async fn upgrade_by_hand(&self, path: &str) -> Reply {
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

    pub(crate) async fn connect(&self) -> Result<Ws, tungstenite::Error> {
        tokio_tungstenite::connect_async(self.ws_url("/api/stream"))
            .await
            .map(|(ws, _)| ws)
    }
}

pub(crate) async fn send(req: reqwest::RequestBuilder) -> Reply {
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
pub(crate) fn assert_error(reply: &Reply, status: u16, word: &str) -> Value {
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
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next text frame, skipping pings; panics after `PATIENCE` or on anything else.
pub(crate) async fn next_text(ws: &mut Ws) -> String {
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
