//! Section 4: SQLite write rate and bytes per row (through the agent's own `Store`), the API's
//! latency under `wrk` (inside namespace `b`, to 127.0.0.1) with 100,000 tracked connections
//! and over a history of millions of rows, and the agent's memory idle and with 100,000 and
//! 1,000,000 tracked connections.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ayaflow::{
    flow::{FiveTuple, Packet, Protocol},
    store::Store,
};
use ayaflow_common::flow::Direction;

use crate::{
    http::{self, metric},
    netns::Pair,
    observer::{AGENT_PORT, Running},
    procstat,
    sender::{self, Limits, Traffic},
};

/// Rows per transaction, as the agent's writer does (`storage::MAX_ROWS_PER_TRANSACTION`).
const TX_ROWS: usize = 50_000;

/// The time span the synthetic history covers, ending now.
const HISTORY_SPAN_S: u64 = 24 * 3600;

/// The synthetic row `i` of `n`: 100,000 conversations between 250 sources (IPv4 and IPv6,
/// documentation ranges) and a few servers, times spread over the last 24 hours.
fn row(i: u64, n: u64, now_ns: u64) -> Packet {
    let conv = i % 100_000;
    let host = (conv % 250) as u8;
    let v6 = conv % 4 == 3;
    let src = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, host as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, host))
    };
    let dst = if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            2,
            0,
            0,
            0,
            0,
            (conv % 7) as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, (conv % 7) as u8))
    };
    let tcp = !conv.is_multiple_of(3);
    let span = HISTORY_SPAN_S * 1_000_000_000;
    Packet {
        tuple: FiveTuple {
            proto: if tcp { Protocol::Tcp } else { Protocol::Udp },
            src,
            src_port: 1024 + (conv / 250) as u16,
            dst,
            dst_port: [443, 53, 80][(conv % 3) as usize],
            interface: Default::default(),
        },
        direction: Direction::Ingress,
        ts_unix_ns: now_ns - span + span / n.max(1) * i,
        packets: 1,
        bytes: 60 + (i % 1400) as u32,
        tcp_flags: if tcp { 0x10 } else { 0 },
        icmp_type: 0,
        icmp_code: 0,
        flags: 0,
        vlan_id: 0,
    }
}

/// The SQLite write measurement.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreResult {
    pub rows: u64,
    pub secs: f64,
    /// Rows per second over the first and the last tenth of the rows (indexes grow).
    pub first_rate: f64,
    pub last_rate: f64,
    pub bytes: u64,
}

/// Writes `rows` raw rows into a new database at `db` in transactions of [`TX_ROWS`].
pub fn write_history(db: &Path, rows: u64) -> Result<StoreResult> {
    for ext in ["db", "db-wal", "db-shm"] {
        let _ = std::fs::remove_file(db.with_extension(ext));
    }
    let mut store = Store::open(db).context("opening the history database")?;
    let now = ayaflow::clock::unix_now_ns();
    let tenth = (rows / 10).max(1);
    let start = Instant::now();
    // (rows so far, seconds so far) after each transaction.
    let mut marks = vec![(0u64, 0.0f64)];
    let mut batch = Vec::with_capacity(TX_ROWS);
    let mut i = 0;
    while i < rows {
        batch.clear();
        let n = (TX_ROWS as u64).min(rows - i);
        batch.extend((i..i + n).map(|k| row(k, rows, now)));
        store.insert_packets(&batch)?;
        i += n;
        marks.push((i, start.elapsed().as_secs_f64()));
        if sender::STOP.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("interrupted");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = |a: (u64, f64), b: (u64, f64)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1e-9);
    let first_end = marks
        .iter()
        .find(|m| m.0 >= tenth)
        .copied()
        .unwrap_or((rows, secs));
    let first = rate(marks[0], first_end);
    let last_begin = marks
        .iter()
        .rev()
        .find(|m| m.0 <= rows - tenth)
        .copied()
        .unwrap_or(marks[0]);
    let last_rate = rate(last_begin, (rows, secs));
    drop(store);
    Ok(StoreResult {
        rows,
        secs,
        first_rate: first,
        last_rate,
        bytes: crate::capture::db_bytes(db),
    })
}

/// One `wrk` measurement.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WrkResult {
    pub what: String,
    pub path: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rps: f64,
    pub non_2xx: u64,
}

/// Runs `wrk --latency` for `secs` inside `ns` against the agent.
pub fn wrk(ns: &str, path: &str, secs: u32, what: &str) -> Result<WrkResult> {
    let url = format!("http://127.0.0.1:{AGENT_PORT}{path}");
    let out = Pair::command(ns, "wrk")
        .args([
            "-t1",
            "-c2",
            &format!("-d{secs}s"),
            "--timeout",
            "30s",
            "--latency",
        ])
        .arg(&url)
        .output()
        .context("running wrk (package wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk {url} failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dur = |v: &str| -> Option<f64> {
        let (num, mul) = if let Some(n) = v.strip_suffix("us") {
            (n, 0.001)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1000.0)
        } else {
            return None;
        };
        num.parse::<f64>().ok().map(|x| x * mul)
    };
    let pct = |p: &str| {
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == p).then(|| dur(it.next()?)).flatten()
        })
    };
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(WrkResult {
        what: what.to_string(),
        path: path.to_string(),
        p50_ms: pct("50%").context("wrk printed no 50% latency")?,
        p99_ms: pct("99%").context("wrk printed no 99% latency")?,
        rps,
        non_2xx,
    })
}

/// Latency of `path` over sequential requests (one at a time, up to 200 or `secs` seconds, at
/// least 5): slow queries would time out under wrk.
fn sequential(ns: &str, path: &str, what: &str, rows: u64, secs: u32) -> Result<WrkResult> {
    let start = Instant::now();
    let mut lat = Vec::new();
    while lat.len() < 200 && (lat.len() < 5 || start.elapsed() < Duration::from_secs(secs as u64)) {
        let t = Instant::now();
        let (code, body) =
            http::get(ns, AGENT_PORT, path).with_context(|| format!("GET {path}"))?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        if code != 200 || !body.contains("\"rows\":[{") {
            bail!("GET {path} over {rows} rows: {code} {body:.200}");
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    Ok(WrkResult {
        what: format!("{what}; {} sequential requests", lat.len()),
        path: path.to_string(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        rps: lat.len() as f64 / start.elapsed().as_secs_f64(),
        non_2xx: 0,
    })
}

/// Memory and live-API results.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LiveResult {
    pub idle_rss_kb: u64,
    /// (tracked connections, RSS KiB, peak RSS KiB)
    pub rss: Vec<(u64, u64, u64)>,
    pub wrk: Vec<WrkResult>,
}

/// Starts a raw-mode agent, fills its connection table with `steps` (e.g. 100,000 then
/// 1,000,000) distinct flows at a paced rate (so that storage keeps up), and measures RSS at
/// each step and the live API under wrk.
pub fn live_and_memory(
    pair: &Pair,
    agent_bin: &Path,
    dir: &Path,
    steps: &[u32],
    wrk_secs: u32,
    rate: u64,
) -> Result<LiveResult> {
    std::fs::create_dir_all(dir)?;
    // The raw agent of section 2, with a table big enough for the largest step.
    let agent = Running::start_agent(pair, dir, agent_bin, &dir.join("ayaflow.db"))?;
    std::thread::sleep(Duration::from_secs(2));
    let mut res = LiveResult {
        idle_rss_kb: procstat::status_kb(agent.pid(), "VmRSS").unwrap_or(0),
        ..LiveResult::default()
    };
    for &flows in steps {
        let active = track_flows(pair, &agent, flows, rate)?;
        res.rss.push((
            active,
            procstat::status_kb(agent.pid(), "VmRSS").unwrap_or(0),
            procstat::status_kb(agent.pid(), "VmHWM").unwrap_or(0),
        ));
        for (what, path) in [
            ("/api/live", "/api/live?limit=50"),
            ("/metrics", "/metrics"),
        ] {
            let mut w = wrk(
                &pair.ns_b,
                path,
                wrk_secs,
                &format!("{what}, {active} connections"),
            )?;
            w.what = format!("{what} with {active} tracked connections");
            res.wrk.push(w);
        }
    }
    agent.stop()?;
    Ok(res)
}

/// `/api/history` latency over the database at `db`.
pub fn history(
    pair: &Pair,
    agent_bin: &Path,
    dir: &Path,
    db: &Path,
    rows: u64,
    wrk_secs: u32,
) -> Result<Vec<WrkResult>> {
    let agent = Running::start_agent(pair, dir, agent_bin, db)?;
    let now_s = ayaflow::clock::unix_now_ns() / 1_000_000_000;
    let from = now_s - HISTORY_SPAN_S / 2;
    let to = from + 600;
    let queries = [
        (
            "one address (0.4 % of rows), newest 100",
            "/api/history?addr=198.51.100.77&limit=100".to_string(),
        ),
        (
            "address + port + protocol, newest 100",
            "/api/history?addr=198.51.100.77&port=1024&proto=TCP&limit=100".to_string(),
        ),
        (
            "10-minute range + address, 100",
            format!("/api/history?from={from}&to={to}&addr=198.51.100.77&limit=100"),
        ),
        (
            "10-minute range, 1,000 rows",
            format!("/api/history?from={from}&to={to}&limit=1000"),
        ),
    ];
    let mut out = Vec::new();
    for (what, path) in queries {
        out.push(sequential(&pair.ns_b, &path, what, rows, wrk_secs)?);
    }
    agent.stop()?;
    Ok(out)
}

/// Sends one packet to each of `flows` distinct IPv4 flows at `rate` packets/s and waits (at
/// most 120 s) until the agent tracks them all and has stored them; returns the connections it
/// tracks then.
pub(crate) fn track_flows(pair: &Pair, agent: &Running, flows: u32, rate: u64) -> Result<u64> {
    let traffic = Traffic {
        v6: false,
        flows,
        paged: false,
    };
    let limits = Limits {
        packets: flows as u64,
        max_time: Duration::from_secs(120),
        rate: Some(rate),
    };
    sender::send(&pair.ns_a, &pair.if_a, traffic, limits)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut active = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(t) = agent.metrics() {
            active = metric(&t, "ayaflow_active_connections").unwrap_or(0);
            let q = metric(&t, "ayaflow_storage_queued_rows").unwrap_or(1);
            if active >= flows as u64 && q == 0 {
                break;
            }
        }
    }
    Ok(active)
}
