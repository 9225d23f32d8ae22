//! Section `interfaces` (issue 19): what following many interfaces costs the agent. Veth pairs
//! are created and deleted in namespace `b`, N at a time in one `ip -batch`, both ends in `b`:
//! `ayi<i>` matches the agent's `--interface 'ayi*'`, the peer `ayp<i>` does not. The links are
//! never set up, so no packet crosses them and the agent's work is the attach and detach alone.
//!
//! Each round first runs the batches with no agent (the kernel's own cost, the baseline), then
//! with the raw-mode agent of section 4 and times from before each batch until
//! `ayaflow_interfaces_attached` reads N (or 0): what lies beyond the batch is the agent's
//! share. With the largest N attached and idle it reads the agent's memory and CPU against the
//! same agent with none matched, and after the last delete its BPF descriptors (one program
//! object for every interface, so program descriptors must not change and link descriptors
//! must go back to 0).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    http::metric,
    netns::Pair,
    observer::Running,
    procstat::{self, Cpu},
};

/// Names of the observed ends (`ayi0`...); the peers are `ayp0`...
pub const OBSERVED: &str = "ayi";
const PEER: &str = "ayp";
const GAUGE: &str = "ayaflow_interfaces_attached";

/// One batch of N creations or deletions.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    pub round: usize,
    pub n: usize,
    /// `ip -batch` with no agent running, seconds.
    pub ip_alone: f64,
    /// `ip -batch` with the agent running, seconds.
    pub ip_with_agent: f64,
    /// From before the batch until the gauge read N (or 0), seconds.
    pub until_gauge: f64,
    /// The agent's CPU over that time.
    pub agent_cpu: Cpu,
    /// /metrics requests made to read the gauge (their cost is part of `agent_cpu`).
    #[serde(default)]
    pub polls: usize,
}

/// The agent's footprint at one moment.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Footprint {
    pub attached: u64,
    pub rss_kb: u64,
    pub rss_anon_kb: u64,
    /// CPU over the idle measurement.
    pub idle_cpu: Cpu,
    /// Descriptors of BPF links and of programs the agent holds (/proc/<pid>/fdinfo).
    pub link_fds: usize,
    pub prog_fds: usize,
    /// Bytes of one /metrics answer.
    pub metrics_bytes: usize,
    /// The agent's CPU per /metrics request, nanoseconds (what polling the gauge costs it).
    #[serde(default)]
    pub scrape_cpu_ns: u64,
}

/// The section's numbers.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct InterfacesResult {
    pub counts: Vec<usize>,
    pub rounds: usize,
    pub idle_secs: f64,
    pub attach: Vec<Batch>,
    pub detach: Vec<Batch>,
    /// Per round: right after start with none matched, with the largest N attached, after the
    /// last delete.
    pub none: Vec<Footprint>,
    pub full: Vec<Footprint>,
    pub after: Vec<Footprint>,
    /// `ayaflow_interface_attach_failures_total` at the end of each round.
    pub failures: Vec<u64>,
}

/// Writes the batch that adds or deletes `n` pairs and returns its path.
fn batch_file(dir: &Path, n: usize, add: bool) -> Result<std::path::PathBuf> {
    let lines: String = (0..n)
        .map(|i| match add {
            true => format!("link add {OBSERVED}{i} type veth peer name {PEER}{i}\n"),
            // Deleting one end deletes its peer.
            false => format!("link del {OBSERVED}{i}\n"),
        })
        .collect();
    let path = dir.join(format!("{}-{n}.batch", if add { "add" } else { "del" }));
    std::fs::write(&path, lines)?;
    Ok(path)
}

/// Runs `ip -n ns -batch file` and returns how long it took.
fn ip_batch(ns: &str, file: &Path) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["-n", ns, "-batch"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .context("running `ip -batch` (package iproute2)")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "ip -batch {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

fn gauge(agent: &Running) -> Option<u64> {
    metric(&agent.metrics()?, GAUGE)
}

/// Runs the batch, then polls the gauge every 10 ms until it reads `want` (only after the
/// batch: the gauge cannot get there before the last link exists or is gone, and polling
/// meanwhile would only add the agent's /metrics work to what is measured).
fn timed(agent: &Running, ns: &str, file: &Path, want: u64) -> Result<(f64, f64, Cpu, usize)> {
    let cpu = agent.cpu();
    let started = Instant::now();
    let ip = ip_batch(ns, file)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut polls = 1;
    while gauge(agent) != Some(want) {
        polls += 1;
        if Instant::now() > deadline {
            bail!("{GAUGE} did not reach {want} within 120 s: {}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let until = started.elapsed();
    Ok((
        ip.as_secs_f64(),
        until.as_secs_f64(),
        agent.cpu().since(&cpu),
        polls,
    ))
}

/// (link, program) descriptors `pid` holds. A link's fdinfo names its program too, so a
/// descriptor counts as a program only without `link_type:`.
pub fn bpf_fds(pid: i32) -> (usize, usize) {
    let (mut links, mut progs) = (0, 0);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        if info.contains("link_type:") {
            links += 1;
        } else if info.contains("prog_id:") {
            progs += 1;
        }
    }
    (links, progs)
}

fn footprint(agent: &Running, idle_secs: f64) -> Footprint {
    let pid = agent.pid();
    let cpu = agent.cpu();
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let idle_cpu = agent.cpu().since(&cpu);
    let (link_fds, prog_fds) = bpf_fds(pid);
    // Enough requests to rise well above the clock tick's resolution (10 ms).
    const SCRAPES: u64 = 20;
    let cpu = agent.cpu();
    for _ in 0..SCRAPES {
        let _ = agent.metrics();
    }
    let scrape_cpu_ns = agent.cpu().since(&cpu).total_ns() / SCRAPES;
    let text = agent.metrics().unwrap_or_default();
    Footprint {
        attached: metric(&text, GAUGE).unwrap_or(0),
        rss_kb: procstat::status_kb(pid, "VmRSS").unwrap_or(0),
        rss_anon_kb: procstat::status_kb(pid, "RssAnon").unwrap_or(0),
        idle_cpu,
        link_fds,
        prog_fds,
        metrics_bytes: text.len(),
        scrape_cpu_ns,
    }
}

/// `rounds` rounds over `counts` (ascending); idle readings over `idle_secs`.
pub fn run(
    pair: &Pair,
    agent_bin: &Path,
    dir: &Path,
    counts: &[usize],
    rounds: usize,
    idle_secs: f64,
) -> Result<InterfacesResult> {
    std::fs::create_dir_all(dir)?;
    let ns = &pair.ns_b;
    let files: Vec<_> = counts
        .iter()
        .map(|&n| Ok((n, batch_file(dir, n, true)?, batch_file(dir, n, false)?)))
        .collect::<Result<_>>()?;
    let mut res = InterfacesResult {
        counts: counts.to_vec(),
        rounds,
        idle_secs,
        ..InterfacesResult::default()
    };
    for round in 0..rounds {
        let mut alone = Vec::new();
        for (_, add, del) in &files {
            crate::interrupted()?;
            alone.push((ip_batch(ns, add)?, ip_batch(ns, del)?));
        }
        let pattern = format!("{OBSERVED}*");
        let agent =
            Running::start_agent_on(pair, dir, agent_bin, &dir.join("ayaflow.db"), &pattern)?;
        res.none.push(footprint(&agent, idle_secs));
        for ((n, add, del), (add_alone, del_alone)) in files.iter().zip(alone) {
            crate::interrupted()?;
            let batch =
                |ip_alone: Duration, (ip_with_agent, until_gauge, agent_cpu, polls)| Batch {
                    round,
                    n: *n,
                    ip_alone: ip_alone.as_secs_f64(),
                    ip_with_agent,
                    until_gauge,
                    agent_cpu,
                    polls,
                };
            res.attach
                .push(batch(add_alone, timed(&agent, ns, add, *n as u64)?));
            if Some(n) == counts.last() {
                res.full.push(footprint(&agent, idle_secs));
            }
            res.detach
                .push(batch(del_alone, timed(&agent, ns, del, 0)?));
            eprintln!(
                "bench: interfaces round {round} n={n}: attach {:.0} ms (ip alone {:.0} ms), detach {:.0} ms (ip alone {:.0} ms)",
                res.attach.last().map_or(0.0, |b| b.until_gauge * 1e3),
                add_alone.as_secs_f64() * 1e3,
                res.detach.last().map_or(0.0, |b| b.until_gauge * 1e3),
                del_alone.as_secs_f64() * 1e3,
            );
            // Slots of deleted interfaces are freed a tick (1 s) later: let them go before the
            // next, larger batch needs them.
            std::thread::sleep(Duration::from_millis(2500));
        }
        // Link descriptors are closed as each interface is detached; give a straggler a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while bpf_fds(agent.pid()).0 != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        res.after.push(footprint(&agent, 0.0));
        res.failures.push(
            agent
                .metrics()
                .and_then(|t| metric(&t, "ayaflow_interface_attach_failures_total"))
                .unwrap_or(u64::MAX),
        );
        agent.stop()?;
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(res)
}
