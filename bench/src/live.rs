//! Section `live` (issue 18, the agent at scale): `/api/live?limit=50` latency at 100,000 and
//! 1,000,000 tracked connections *while capture runs* over those connections, the ring drops
//! meanwhile, the histogram of how long capture waited for the live table's locks, and the
//! agent's memory (idle with default options, and per tracked connection).
//!
//! The stream's frame is the same document (`api::live::document_off_workers` with limit 50,
//! sort packets, from the same shared ranking), built once a second: its cost is the
//! `/api/live?limit=50` latency less the HTTP exchange, so it is not measured apart.
//!
//! With `--baseline-agent` the section runs twice, the baseline binary first, so before and
//! after come from the same run.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;

use crate::{
    http::metric,
    netns::Pair,
    observer::Running,
    procstat,
    sender::{self, Limits, Traffic},
    store_api::{WrkResult, wrk},
};

/// Resident memory of a process, KiB (`/proc/<pid>/status`).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Rss {
    pub vm_rss: u64,
    pub anon: u64,
    pub file: u64,
}

impl Rss {
    fn of(pid: i32) -> Rss {
        let kb = |f| procstat::status_kb(pid, f).unwrap_or(0);
        Rss {
            vm_rss: kb("VmRSS"),
            anon: kb("RssAnon"),
            file: kb("RssFile"),
        }
    }
}

/// One table size under load.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LiveStep {
    pub connections: u64,
    pub rss: Rss,
    pub wrk: WrkResult,
    /// Packets sent to the tracked connections while wrk ran, per second.
    pub sent_pps: f64,
    /// `ayaflow_ringbuf_drops_total` gained while wrk ran.
    pub ring_drops: u64,
    /// Capture's lock waits while wrk ran, per bucket (`up_to` label, count); empty for an
    /// agent without the metric.
    pub lock_waits: Vec<(String, u64)>,
    /// The longest lock wait since the agent started, ns (None: no such metric).
    pub lock_wait_max_ns: Option<u64>,
    /// Updates capture left for a shard's holder instead of waiting, while wrk ran (None: an
    /// agent without the metric).
    #[serde(default)]
    pub deferred: Option<u64>,
}

/// The section for one agent binary.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LiveRun {
    /// Which binary: "baseline" or "this commit".
    pub agent: String,
    /// Idle, default options (only `--interface`, `--db-path` and the API's address set).
    pub idle_default: Rss,
    /// Idle with the bench's `--max-connections 1100000`.
    pub idle_big: Rss,
    pub steps: Vec<LiveStep>,
}

/// The lock-wait buckets of the agent's metrics text.
const BUCKETS: [&str; 7] = ["1us", "10us", "100us", "1ms", "10ms", "100ms", "+Inf"];

fn lock_waits(text: &str) -> Vec<(String, u64)> {
    BUCKETS
        .iter()
        .filter_map(|b| {
            let sample = format!("ayaflow_connection_table_lock_waits_total{{up_to=\"{b}\"}}");
            metric(text, &sample).map(|n| (b.to_string(), n))
        })
        .collect()
}

/// Runs the section against `agent_bin`: `steps` tracked connections (filled at `fill_rate`
/// packets/s), then `wrk_secs` of `/api/live?limit=50` while `load_rate` packets/s go to the
/// same connections.
#[expect(
    clippy::too_many_arguments,
    reason = "the plan's sizes, passed as the other sections take them"
)]
pub fn run(
    pair: &Pair,
    agent_bin: &Path,
    label: &str,
    dir: &Path,
    steps: &[u32],
    wrk_secs: u32,
    fill_rate: u64,
    load_rate: u64,
) -> Result<LiveRun> {
    std::fs::create_dir_all(dir)?;
    let mut out = LiveRun {
        agent: label.to_string(),
        ..LiveRun::default()
    };
    let idle = Running::start_default_agent(pair, dir, agent_bin, &dir.join("default.db"))?;
    std::thread::sleep(Duration::from_secs(3));
    out.idle_default = Rss::of(idle.pid());
    idle.stop()?;

    let agent = Running::start_agent(pair, dir, agent_bin, &dir.join("ayaflow.db"))?;
    std::thread::sleep(Duration::from_secs(3));
    out.idle_big = Rss::of(agent.pid());
    for &flows in steps {
        let traffic = Traffic {
            v6: false,
            flows,
            paged: false,
        };
        let active = crate::store_api::track_flows(pair, &agent, flows, fill_rate)?;
        let rss = Rss::of(agent.pid());
        let before = agent.metrics().unwrap_or_default();
        // Capture runs over the tracked connections while wrk asks for the top 50.
        let (ns_a, if_a) = (pair.ns_a.clone(), pair.if_a.clone());
        let secs = u64::from(wrk_secs) + 1;
        let load = std::thread::spawn(move || {
            sender::send(
                &ns_a,
                &if_a,
                traffic,
                Limits {
                    packets: load_rate * secs,
                    max_time: Duration::from_secs(secs + 5),
                    rate: Some(load_rate),
                },
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let w = wrk(
            &pair.ns_b,
            "/api/live?limit=50",
            wrk_secs,
            &format!("/api/live with {active} tracked connections"),
        )?;
        let sent = load
            .join()
            .map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
        let after = agent.metrics().unwrap_or_default();
        let drops = |t: &str| {
            ["ingress", "egress"]
                .iter()
                .filter_map(|d| {
                    metric(
                        t,
                        &format!("ayaflow_ringbuf_drops_total{{direction=\"{d}\"}}"),
                    )
                })
                .sum::<u64>()
        };
        let (w0, w1) = (lock_waits(&before), lock_waits(&after));
        let deferred = |t: &str| metric(t, "ayaflow_connection_table_deferred_updates_total");
        out.steps.push(LiveStep {
            connections: active,
            rss,
            wrk: w,
            sent_pps: sent.packets as f64 / sent.elapsed.as_secs_f64().max(1e-9),
            ring_drops: drops(&after).saturating_sub(drops(&before)),
            lock_waits: w1
                .iter()
                .map(|(b, n)| {
                    let was = w0.iter().find(|(c, _)| c == b).map_or(0, |(_, n)| *n);
                    (b.clone(), n - was)
                })
                .collect(),
            // Bounded by the buckets: the agent does not export the exact longest wait.
            lock_wait_max_ns: None,
            deferred: deferred(&after).map(|n| n - deferred(&before).unwrap_or(0)),
        });
    }
    agent.stop()?;
    Ok(out)
}

/// The section's Markdown.
pub fn render(w: &mut String, cmd: &str, runs: &[LiveRun], load_rate: u64, wrk_secs: u32) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "## The agent at scale (issue 18)\n\n\
         A raw-mode agent (`--max-connections 1100000`) tracking each number of connections (one \
         packet per distinct IPv4 flow, sent paced so that storage keeps up), then \
         `wrk -t1 -c2 -d{wrk_secs}s --latency` on `/api/live?limit=50` inside namespace b while \
         {load_rate} packets/s go to those same connections (capture runs the whole time). \
         Lock waits: how often capture found a live-table lock taken while wrk ran, by how long \
         it waited (`ayaflow_connection_table_lock_waits_total`), and the longest wait since the \
         agent started; deferred: updates capture left for the holder of a taken lock to apply \
         instead of waiting (`ayaflow_connection_table_deferred_updates_total`, agents since \
         issue 18's inboxes). The stream's frame is the same document from the same ranking (limit \
         50, sort packets), built once a second. Memory from /proc/<pid>/status; idle with \
         default options is the agent with only `--interface`, `--db-path` and the API address \
         set, 3 s after start. Per connection: (RSS at the step - idle RSS) / connections.\n\n\
         Reproduce: `{cmd} -- --sections live` (add `--baseline-agent <binary>` for a before \
         column)\n"
    );
    let _ = writeln!(
        w,
        "| agent | connections | /api/live p50 ms | p99 ms | requests/s | sent packets/s | ring drops | lock waits (≤1us/10us/100us/1ms/10ms/100ms/more) | longest wait ms | deferred |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
    );
    for r in runs {
        for s in &r.steps {
            let waits = if s.lock_waits.is_empty() {
                "not measured".to_string()
            } else {
                s.lock_waits
                    .iter()
                    .map(|(_, n)| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let _ = writeln!(
                w,
                "| {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {} | {} | {} |",
                r.agent,
                s.connections,
                s.wrk.p50_ms,
                s.wrk.p99_ms,
                s.wrk.rps,
                s.sent_pps,
                s.ring_drops,
                waits,
                s.lock_wait_max_ns.map_or_else(
                    || {
                        // The bucket of the longest wait.
                        s.lock_waits
                            .iter()
                            .rev()
                            .find(|(_, n)| *n > 0)
                            .map_or("-".to_string(), |(b, _)| format!("≤ {b}"))
                    },
                    |ns| format!("{:.3}", ns as f64 / 1e6),
                ),
                s.deferred.map_or("-".to_string(), |n| n.to_string()),
            );
        }
    }
    let _ = writeln!(
        w,
        "\n| agent | state | connections | VmRSS MiB | RssAnon MiB | RssFile MiB | bytes per connection |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    let mib = |kb: u64| kb as f64 / 1024.0;
    for r in runs {
        for (state, n, rss) in [
            ("idle, default options", 0, r.idle_default),
            ("idle, --max-connections 1100000", 0, r.idle_big),
        ]
        .into_iter()
        .chain(r.steps.iter().map(|s| ("tracking", s.connections, s.rss)))
        {
            let per = if n == 0 {
                "-".to_string()
            } else {
                format!(
                    "{:.0}",
                    (rss.vm_rss as f64 - r.idle_big.vm_rss as f64) * 1024.0 / n as f64
                )
            };
            let _ = writeln!(
                w,
                "| {} | {state} | {n} | {:.1} | {:.1} | {:.1} | {per} |",
                r.agent,
                mib(rss.vm_rss),
                mib(rss.anon),
                mib(rss.file),
            );
        }
    }
    let _ = writeln!(w);
}
