//! Sections 2 and 3: the same generated traffic through every observer, in the same run.
//!
//! One run of one observer: start it on `if_b`; sample (interface counters, the observer's CPU,
//! the machine's /proc/stat, ksoftirqd); send; wait until the observer has taken in everything
//! (the agent's counters reach the delivered count and its storage queue is empty; a tool's CPU
//! stops moving); read what it counted; stop it (its final CPU and peak RSS come from wait4).
//! The first round is a warm-up with the kernel's BPF statistics on (for the classifier's
//! in-situ run time); the medians are over the later rounds, with statistics off.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    http::metric,
    netns::Pair,
    observer::{self, Observer, Running},
    procstat::{self, Cpu, Machine},
    sender::{self, Limits, Traffic},
};

const PACKETS: &str = "ayaflow_packets_total{direction=\"ingress\"}";
const EVENTS: &str = "ayaflow_events_total";
const DROPS: &str = "ayaflow_ringbuf_drops_total{direction=\"ingress\"}";
const ROWS: &str = "ayaflow_storage_rows_written_total";

/// Everything measured in one run.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    pub traffic: String,
    pub observer: String,
    pub round: usize,
    pub sent: u64,
    /// Frames `if_b` received (its rx_packets delta over the run).
    pub delivered: u64,
    /// Frames lost on the veth itself (if_a tx_dropped + if_b rx_dropped over the run).
    pub veth_drops: u64,
    pub gen_secs: f64,
    /// CPU of the sending thread (send + receive softirq in its context).
    pub gen_cpu_ns: u64,
    pub ksoftirqd_ns: u64,
    /// CPU 0's time inside the observer's hook on the packet path while sending, sampled
    /// (`pathcost.rs`).
    #[serde(default)]
    pub path_ns: Option<u64>,
    /// /proc/stat busy time from traffic start until the observer had exited.
    pub machine: Machine,
    pub window_secs: f64,
    /// The observer's CPU from traffic start to its exit (its whole tree).
    pub obs_cpu: Cpu,
    /// The same until everything was counted and it went idle, before it was told to stop:
    /// without what it does at exit (the agent stores its last, partial window then).
    #[serde(default)]
    pub obs_cpu_observing: Cpu,
    pub obs_peak_kb: u64,
    /// What the observer says it counted (ayaflow: packets_total; tcpdump: captured; softflowd:
    /// packets processed; pmacctd: sum of its table).
    pub counted: Option<u64>,
    /// Drops the observer itself reports (ayaflow: ring buffer; tcpdump/softflowd: by kernel).
    pub obs_drops: Option<u64>,
    pub events: Option<u64>,
    pub rows_written: Option<u64>,
    pub rows_dropped: Option<u64>,
    /// Distinct windows among the stored rows (aggregated modes).
    pub windows: Option<u64>,
    /// Flows/entries the tool ended with (pmacctd entries, softflowd active flows).
    pub entries: Option<u64>,
    /// In-situ BPF run time of tc_ingress per packet (warm-up round only).
    pub bpf_ns_per_pkt: Option<f64>,
    /// IPFIX records the agent exported (sent, or refused by the closed port), by the time
    /// everything was counted.
    #[serde(default)]
    pub ipfix_records: Option<u64>,
    /// Bytes the observer wrote to disk (pcap file or database).
    pub disk_bytes: Option<u64>,
    pub load: f64,
    pub note: String,
}

/// Runs one observer once on `traffic`.
pub fn run_one(
    pair: &Pair,
    agent_bin: &Path,
    scratch: &Path,
    obs: Observer,
    traffic: Traffic,
    packets: u64,
    round: usize,
) -> Result<RunResult> {
    let dir = scratch.join(format!("{}-{}-{round}", obs.name(), traffic.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let load = procstat::loadavg();
    let running = if obs == Observer::None {
        None
    } else {
        Some(Running::start(obs, pair, &dir, agent_bin)?)
    };
    let prog = obs.tcx_program();
    let bpf0 = prog.and_then(|name| observer::tcx_run_stats(pair, name));

    // The agent's counters before the traffic: frames of neighbour discovery may have arrived
    // between its attach and now, and must not count against this run.
    let m0_text = running
        .as_ref()
        .filter(|r| r.observer.is_ayaflow())
        .and_then(|r| r.metrics());
    let before = |s: &str| m0_text.as_deref().and_then(|t| metric(t, s)).unwrap_or(0);
    let (p_before, ev_before, dr_before, rows_before) =
        (before(PACKETS), before(EVENTS), before(DROPS), before(ROWS));
    let rx0 = pair.rx_stats()?;
    let tx0 = pair.tx_stats()?;
    let cpu0 = running.as_ref().map(|r| r.cpu()).unwrap_or_default();
    let m0 = Machine::now();
    let k0 = procstat::ksoftirqd_ns();
    let sampler = (obs != Observer::None)
        .then(|| crate::pathcost::Sampler::start(&dir))
        .flatten();
    let t0 = Instant::now();
    let sent = sender::send(
        &pair.ns_a,
        &pair.if_a,
        traffic,
        Limits {
            packets,
            max_time: Duration::from_secs(120),
            rate: None,
        },
    )?;
    let path_ns = sampler.and_then(|s| s.finish(obs));
    let rx1 = pair.rx_stats()?;
    let tx1 = pair.tx_stats()?;
    let delivered = rx1.rx_packets - rx0.rx_packets;
    let veth_drops = (rx1.rx_dropped - rx0.rx_dropped) + (tx1.tx_dropped - tx0.tx_dropped);

    let mut r = RunResult {
        traffic: traffic.name(),
        observer: obs.name().to_string(),
        round,
        sent: sent.packets,
        delivered,
        veth_drops,
        gen_secs: sent.elapsed.as_secs_f64(),
        gen_cpu_ns: sent.thread_cpu_ns,
        path_ns,
        load,
        ..RunResult::default()
    };

    let Some(running) = running else {
        r.ksoftirqd_ns = procstat::ksoftirqd_ns() - k0;
        r.machine = Machine::now().since(&m0);
        r.window_secs = t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(r);
    };

    if obs.is_ayaflow() {
        let rx_base = rx0.rx_packets;
        let text = wait_agent(&running, obs, p_before, || {
            pair.rx_stats()
                .map(|s| s.rx_packets - rx_base)
                .unwrap_or(delivered)
        });
        // Frames that arrived after the sender stopped (neighbour discovery) count too.
        r.delivered = pair.rx_stats()?.rx_packets - rx0.rx_packets;
        let g = |s: &str| text.as_deref().and_then(|t| metric(t, s));
        r.counted = g(PACKETS).map(|v| v - p_before);
        r.obs_drops = g(DROPS).map(|v| v - dr_before);
        r.events = g(EVENTS).map(|v| v - ev_before);
        r.rows_dropped = text.as_deref().map(|t| {
            t.lines()
                .filter(|l| l.starts_with("ayaflow_storage_rows_dropped_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        });
        r.ipfix_records = text.as_deref().and_then(|t| {
            let sum = |prefix: &str| -> u64 {
                t.lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum()
            };
            (obs == Observer::AyaFlowsIpfix).then(|| {
                sum("ayaflow_ipfix_records_sent_total{")
                    + sum("ayaflow_ipfix_records_dropped_total{")
            })
        });
        if obs.is_flow_mode() {
            // Counted is not done: the sweeps that hand the last deltas over and remove the
            // idle entries (IDLE_AFTER, 2 s) belong to observing this traffic too.
            wait_idle(&running);
        }
    } else {
        wait_idle(&running);
        r.delivered = pair.rx_stats()?.rx_packets - rx0.rx_packets;
    }
    if let (Some(b0), Some(b1)) = (bpf0, prog.and_then(|n| observer::tcx_run_stats(pair, n)))
        && b1.1 > b0.1
    {
        r.bpf_ns_per_pkt = Some((b1.0 - b0.0) as f64 / (b1.1 - b0.1) as f64);
    }
    // Tool counts (queried after the CPU has settled; the queries cost the tool CPU too).
    let hwm = running.hwm_kb();
    let cpu_before_stop = running.cpu();
    match obs {
        Observer::Softflowd => {
            let s = running.softflowd_stats()?;
            let field = |name: &str| {
                s.lines()
                    .find_map(|l| l.trim().strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            };
            r.counted = field("Packets processed:");
            r.obs_drops = field("Packets dropped by libpcap:")
                .zip(field("Packets dropped by interface:"))
                .map(|(a, b)| a + b);
            r.entries = field("Number of active flows:");
            r.note = format!(
                "libpcap received {}",
                field("Packets received by libpcap:").unwrap_or(0)
            );
        }
        Observer::Pmacctd => {
            let (p, e) = running.pmacct_totals()?;
            r.counted = Some(p);
            r.entries = Some(e);
        }
        _ => {}
    }
    let exit = running.stop()?;
    r.ksoftirqd_ns = procstat::ksoftirqd_ns() - k0;
    r.machine = Machine::now().since(&m0);
    r.window_secs = t0.elapsed().as_secs_f64();
    let end = if exit.cpu.total_ns() >= cpu_before_stop.total_ns() {
        exit.cpu
    } else {
        cpu_before_stop
    };
    r.obs_cpu = end.since(&cpu0);
    r.obs_cpu_observing = cpu_before_stop.since(&cpu0);
    // VmHWM, not wait4's ru_maxrss: a forked child inherits its parent's (the bench's) maxrss.
    r.obs_peak_kb = hwm;

    match obs {
        Observer::TcpdumpNull | Observer::TcpdumpFile => {
            let n = |suffix: &str| {
                exit.log.lines().find_map(|l| {
                    l.strip_suffix(suffix)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
            };
            r.counted = n(" packets captured");
            r.obs_drops = n(" packets dropped by kernel");
            if obs == Observer::TcpdumpFile {
                r.disk_bytes = std::fs::metadata(dir.join("capture.pcap"))
                    .ok()
                    .map(|m| m.len());
            }
        }
        Observer::Pmacctd => {
            // "[if,0] received_packets=N dropped_packets=M" at exit.
            let field = |k: &str| {
                exit.log.lines().rev().find_map(|l| {
                    let v = &l[l.find(k)? + k.len()..];
                    v.split_whitespace().next()?.parse::<u64>().ok()
                })
            };
            r.obs_drops = field("dropped_packets=");
            r.note = format!("pcap received {}", field("received_packets=").unwrap_or(0));
            if exit.log.contains("Missing data detected") {
                r.note
                    .push_str("; its log: Missing data detected (core to plugin pipe)");
            }
        }
        o if o.is_ayaflow() => {
            let db = dir.join("ayaflow.db");
            let (rows, windows) = stored_rows(&db, obs != Observer::AyaRaw)
                .with_context(|| format!("reading {}", db.display()))?;
            r.rows_written = Some(rows.saturating_sub(rows_before));
            r.windows = windows;
            r.disk_bytes = Some(db_bytes(&db));
        }
        _ => {}
    }
    // AYAFLOW_BENCH_KEEP=1 keeps each run's directory (logs, databases) for debugging.
    if std::env::var_os("AYAFLOW_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(r)
}

/// Polls the agent until its kernel counters reach what `if_b` received (`delivered()`), every
/// event is accounted for (received or dropped), the storage queue is empty, and nothing moves
/// between two polls (at most 120 s). Returns the last /metrics text.
fn wait_agent(
    agent: &Running,
    obs: Observer,
    p_before: u64,
    delivered: impl Fn() -> u64,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last: Option<(u64, u64, u64)> = None;
    let mut text = None;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let Some(t) = agent.metrics() else { continue };
        let p = metric(&t, PACKETS).unwrap_or(0);
        let ev = metric(&t, EVENTS).unwrap_or(0);
        let dr = metric(&t, DROPS).unwrap_or(0);
        let q = metric(&t, "ayaflow_storage_queued_rows").unwrap_or(0);
        let w = metric(&t, ROWS).unwrap_or(0);
        let now = (p, ev, w);
        let events_done = obs.is_flow_mode() || ev + dr >= p;
        let done = p - p_before >= delivered() && events_done && q == 0 && last == Some(now);
        last = Some(now);
        text = Some(t);
        if done {
            break;
        }
    }
    text
}

/// Waits until the tool's CPU stops moving (no more than 5 ms in 300 ms), at least 1.5 s (libpcap
/// hands over a TPACKET_V3 block when it fills or when its 1 s timeout expires) and at most 60 s.
fn wait_idle(r: &Running) {
    std::thread::sleep(Duration::from_millis(1500));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut prev = r.cpu().total_ns();
    let mut quiet = 0;
    while Instant::now() < deadline && quiet < 2 {
        std::thread::sleep(Duration::from_millis(300));
        let now = r.cpu().total_ns();
        quiet = if now - prev <= 5_000_000 {
            quiet + 1
        } else {
            0
        };
        prev = now;
    }
}

/// Rows in the history file, and (aggregated modes) the number of distinct windows.
fn stored_rows(db: &Path, windows: bool) -> Result<(u64, Option<u64>)> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    if windows {
        let (n, w): (i64, i64) = c.query_row(
            "SELECT COUNT(*), COUNT(DISTINCT window_start) FROM windows",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((n as u64, Some(w as u64)))
    } else {
        // Raw rows are packed in blocks: the store counts them.
        drop(c);
        let n = ayaflow::store::Store::open_read_only(db)?
            .row_counts()?
            .packets;
        Ok((n, None))
    }
}

/// Size of a SQLite file with its WAL.
pub fn db_bytes(db: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(db) + size(&db.with_extension("db-wal"))
}
