//! Section `tcp`: real TCP between the bench's namespaces with GSO and GRO on, under each
//! observer. Per run: an iperf3 bulk transfer a -> b (throughput), then small request/response
//! transactions (64 bytes each way, one at a time, TCP_NODELAY: transactions per second), with
//! the observer on `if_b`; for ayaFlow, its packet and byte counters against `if_b`'s own.
//! Rounds interleave the observers.
//!
//! Offloads: TSO off and GSO on at `if_a`, so the stack segments just before the veth and the
//! veth counts real segments; GRO on at `if_b`, so its ingress hook sees GRO aggregates. They are
//! set for the section and turned off again after it (the other sections want one frame per skb).

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    http::metric,
    median,
    netns::{self, Pair, in_ns},
    observer::{Observer, Running},
};

pub const OBSERVERS: [Observer; 5] = [
    Observer::None,
    Observer::TcpdumpNull,
    Observer::Softflowd,
    Observer::AyaRaw,
    Observer::AyaFlows,
];

const IPERF_PORT: &str = "5201";
const RR_ADDR: &str = "192.0.2.2:5202";

/// One run of one observer.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TcpRun {
    pub observer: String,
    pub round: usize,
    /// iperf3's received throughput, Gbit/s.
    pub bulk_gbps: f64,
    /// Request/response transactions per second.
    pub tps: f64,
    /// `if_b`'s rx counters over the run (its bytes lack the Ethernet header: with GRO on, a
    /// veth counts in NAPI, after `eth_type_trans`; the report adds 14 per packet).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// ayaFlow's `ayaflow_packets_total` / `ayaflow_bytes_total` (ingress) over the run.
    pub counted_packets: Option<u64>,
    pub counted_bytes: Option<u64>,
}

/// `rounds` rounds of every observer, each with `secs` seconds of bulk and of transactions.
pub fn run(
    pair: &Pair,
    agent: &Path,
    scratch: &Path,
    rounds: usize,
    secs: u32,
) -> Result<Vec<TcpRun>> {
    netns::set_offloads(pair, &["tso", "off", "gso", "on", "gro", "on"])?;
    let result = (|| {
        let mut out = Vec::new();
        for round in 0..rounds {
            for o in OBSERVERS {
                crate::interrupted()?;
                let r = run_one(pair, agent, scratch, o, round, secs)
                    .with_context(|| format!("tcp: {} round {round}", o.name()))?;
                eprintln!(
                    "bench: tcp round {round} {:<13} {:.2} Gbit/s {:.0} tps rx {} counted {:?}",
                    o.name(),
                    r.bulk_gbps,
                    r.tps,
                    r.rx_packets,
                    r.counted_packets
                );
                out.push(r);
            }
        }
        Ok(out)
    })();
    netns::set_offloads(pair, &["tso", "off", "gso", "off", "gro", "off"])?;
    result
}

fn ayaflow_counts(r: &Running) -> Option<(u64, u64)> {
    let t = r.metrics()?;
    Some((
        metric(&t, "ayaflow_packets_total{direction=\"ingress\"}")?,
        metric(&t, "ayaflow_bytes_total{direction=\"ingress\"}")?,
    ))
}

fn run_one(
    pair: &Pair,
    agent: &Path,
    scratch: &Path,
    obs: Observer,
    round: usize,
    secs: u32,
) -> Result<TcpRun> {
    let dir = scratch.join(format!("tcp-{}-{round}", obs.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let running = match obs {
        Observer::None => None,
        o => Some(Running::start(o, pair, &dir, agent)?),
    };
    let counts = || {
        running
            .as_ref()
            .filter(|r| r.observer.is_ayaflow())
            .and_then(ayaflow_counts)
    };
    let (c0, rx0) = (counts(), pair.rx_stats()?);

    let mut server = Pair::command(&pair.ns_b, "iperf3")
        .args(["-s", "-1", "-B", "192.0.2.2", "-p", IPERF_PORT])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 (package iperf3)")?;
    let mut bulk = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while bulk.is_none() && Instant::now() < deadline {
        let out = Pair::command(&pair.ns_a, "iperf3")
            .args(["-c", "192.0.2.2", "-p", IPERF_PORT, "-J", "-t"])
            .arg(secs.to_string())
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        bulk = v["end"]["sum_received"]["bits_per_second"].as_f64();
        if bulk.is_none() {
            // The server was not listening yet.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let Some(bulk) = bulk else {
        bail!("iperf3 gave no result within 10 s");
    };
    let tps = transactions(pair, Duration::from_secs(secs as u64))?;

    // Wait until the link is quiet and, for ayaFlow, its counters stand still.
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (c1, rx1) = loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = (counts(), pair.rx_stats()?.rx_packets);
        if last == Some(now) || Instant::now() > deadline {
            break (now.0, pair.rx_stats()?);
        }
        last = Some(now);
    };
    if let Some(r) = running {
        r.stop()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let diff = |a: Option<(u64, u64)>, b: Option<(u64, u64)>| {
        a.zip(b).map(|(a, b)| (b.0 - a.0, b.1 - a.1))
    };
    let counted = diff(c0, c1);
    Ok(TcpRun {
        observer: obs.name().to_string(),
        round,
        bulk_gbps: bulk / 1e9,
        tps,
        rx_packets: rx1.rx_packets - rx0.rx_packets,
        rx_bytes: rx1.rx_bytes - rx0.rx_bytes,
        counted_packets: counted.map(|c| c.0),
        counted_bytes: counted.map(|c| c.1),
    })
}

/// Request/response over one connection a -> b for `dur`: 64 bytes out, 64 back, one at a time.
fn transactions(pair: &Pair, dur: Duration) -> Result<f64> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns_b = pair.ns_b.clone();
    let server = std::thread::spawn(move || {
        in_ns(&ns_b, move || -> Result<()> {
            let l = TcpListener::bind(RR_ADDR)?;
            ready_tx.send(()).ok();
            let (mut c, _) = l.accept()?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = [0u8; 64];
            while c.read_exact(&mut buf).is_ok() {
                c.write_all(&buf)?;
            }
            Ok(())
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the transaction server did not start")?;
    let n = in_ns(&pair.ns_a, move || -> Result<f64> {
        let mut c = TcpStream::connect(RR_ADDR)?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (start, mut n, mut buf) = (Instant::now(), 0u64, [7u8; 64]);
        while start.elapsed() < dur {
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("transaction server panicked"))???;
    Ok(n)
}

/// The section's table: medians with min–max, the cost against no observer, and ayaFlow's
/// counts against the interface's.
pub fn render(w: &mut String, cmd: &str, runs: &[TcpRun]) {
    let rounds = runs.iter().map(|r| r.round).max().map_or(0, |m| m + 1);
    let stat = |o: Observer, f: &dyn Fn(&TcpRun) -> f64| -> (f64, f64, f64) {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.observer == o.name())
            .map(f)
            .collect();
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (median(&v), lo, hi)
    };
    let base_g = stat(Observer::None, &|r| r.bulk_gbps).0;
    let base_t = stat(Observer::None, &|r| r.tps).0;
    let _ = writeln!(
        w,
        "### Real TCP with GSO and GRO\n\nTCP between the two namespaces (TSO off and GSO on at \
         `if_a`, so the veth carries and counts real segments; GRO on at `if_b`, whose ingress \
         hook the observers watch): an iperf3 bulk transfer a → b, then request/response \
         transactions (64 bytes each way, one at a time, TCP_NODELAY) over one connection, each \
         for the same time; median of {rounds} rounds, observers interleaved, min–max in \
         brackets. *loss* is the drop against no observer. *counted*: ayaFlow's ingress packets \
         and bytes against `if_b`'s counters over the run (the veth counts 14 bytes less per \
         frame with GRO on, in NAPI after the Ethernet header is pulled; added back here).\n\n\
         Reproduce: `{cmd} -- --sections tcp`\n\n\
         | observer | bulk Gbit/s | bulk loss | transactions/s | transaction loss | counted = interface (packets, bytes) |\n\
         | --- | ---: | ---: | ---: | ---: | --- |"
    );
    for o in OBSERVERS {
        let (g, gl, gh) = stat(o, &|r| r.bulk_gbps);
        let (t, tl, th) = stat(o, &|r| r.tps);
        let mine: Vec<_> = runs.iter().filter(|r| r.observer == o.name()).collect();
        let exact = if o.is_ayaflow() {
            let ok = mine
                .iter()
                .filter(|r| {
                    r.counted_packets == Some(r.rx_packets)
                        && r.counted_bytes == Some(r.rx_bytes + 14 * r.rx_packets)
                })
                .count();
            format!("{ok} of {} runs exact", mine.len())
        } else {
            "-".into()
        };
        let _ = writeln!(
            w,
            "| {} | {g:.2} ({gl:.2}–{gh:.2}) | {:.1} % | {t:.0} ({tl:.0}–{th:.0}) | {:.1} % | {exact} |",
            o.name(),
            100.0 * (1.0 - g / base_g),
            100.0 * (1.0 - t / base_t),
        );
    }
    let loss = |o: Observer| {
        (
            1.0 - stat(o, &|r| r.bulk_gbps).0 / base_g,
            1.0 - stat(o, &|r| r.tps).0 / base_t,
        )
    };
    let (fg, ft) = loss(Observer::AyaFlows);
    let (tg, tt) = loss(Observer::TcpdumpNull);
    let _ = writeln!(
        w,
        "\nFlow mode's loss against tcpdump's (goal: at most a third): bulk {:.1} % vs {:.1} % \
         (ratio {:.2}), transactions {:.1} % vs {:.1} % (ratio {:.2}). Losses within the spread of \
         the baseline's own rounds are noise.\n",
        100.0 * fg,
        100.0 * tg,
        fg / tg,
        100.0 * ft,
        100.0 * tt,
        ft / tt
    );
}
