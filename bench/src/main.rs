//! `ayaflow-bench`: the measurements behind BENCHMARKS.md. Run it through `cargo xtask bench`,
//! which installs the tools, builds the release agent and this binary, and runs it as root.
//!
//! Sections (each also runs alone with `--sections`):
//! 1. `kernel`: `BPF_PROG_TEST_RUN` ns/packet of the classifier (raw and flow mode) next to an
//!    empty classifier, and the loaded programs' sizes (`kernel.rs`).
//! 2. and 3. `capture`: generated traffic at the machine's full rate through ayaFlow in each
//!    mode and through tcpdump, softflowd and pmacctd, against a run with no observer
//!    (`capture.rs`, `observer.rs`, `sender.rs`).
//! 4. `storage` and `api`: SQLite rows/s and bytes/row, /api/history over millions of rows,
//!    /api/live and /metrics under wrk, RSS with 100,000 and 1,000,000 connections
//!    (`store_api.rs`).
//! - `live`: issue 18's targets: /api/live at 100,000 and 1,000,000 connections while
//!   capture runs, ring drops, capture's waits for the table's locks, idle RSS (`live.rs`).
//! 5. `ui`: the agent's CPU with the web UI open in headless Chromium, next to none (`ui.rs`).
//! 6. `interfaces`: attaching to and detaching from hundreds of veths as they are created and
//!    deleted, against the kernel's own time for them; memory, idle CPU and BPF descriptors
//!    with 400 attached (`interfaces.rs`).
//!
//! Safety: all traffic stays between two namespaces the bench creates (`netns.rs`), every send
//! is bounded in packets and time, every process the bench starts is stopped by its pid, and
//! the namespaces are removed on exit (and leftovers of dead runs at start).

mod capture;
mod http;
mod inplace;
mod interfaces;
mod kernel;
mod live;
mod memlat;
mod netns;
mod observer;
mod pathcost;
mod procstat;
mod report;
mod sender;
mod store_api;
mod tcp;
mod ui;

/// Section live: packets per second sent to the tracked connections while `/api/live` is
/// measured, so that capture runs the whole time (raw mode: an event, a table update and a
/// stored row per packet; paced so that storage keeps up on 2 CPUs).
const LIVE_LOAD_RATE: u64 = 50_000;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;

use crate::{observer::Observer, sender::Traffic};

/// The agent's allocator, so that section 4 measures `Store` as the agent runs it.
#[global_allocator]
static ALLOCATOR: ayaflow::hugepages::HugePageHint = ayaflow::hugepages::HugePageHint;

#[derive(Parser, Debug, Clone)]
#[command(about = "ayaFlow benchmarks (run through `cargo xtask bench`)")]
pub struct Args {
    /// Smoke mode for CI: every section briefly, asserting only that it works (counts are
    /// non-zero and equal where they must be). Never a speed threshold.
    #[arg(long)]
    pub quick: bool,
    /// Sections to run, comma-separated: kernel, capture, inplace, tcp, storage, api, live, ui,
    /// interfaces.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kernel,capture,inplace,tcp,storage,api,live,ui,interfaces"
    )]
    pub sections: Vec<String>,
    /// Sections live and inplace: also run them against this agent binary (live: first, a
    /// before column; inplace: interleaved, rows marked "(baseline)").
    #[arg(long)]
    pub baseline_agent: Option<std::path::PathBuf>,
    /// Traffic sets for the capture section, comma-separated: v4-1k, v4-100k, v6-1k, v6-100k,
    /// v4-1k-paged (the v4-1k frames from a TX ring, paged; not in the default set).
    #[arg(long, value_delimiter = ',')]
    pub traffic: Vec<String>,
    /// Observers for the capture section, comma-separated (none is always included).
    #[arg(long, value_delimiter = ',')]
    pub observers: Vec<String>,
    /// Timed rounds per configuration (after one warm-up round); medians are over these.
    #[arg(long)]
    pub runs: Option<usize>,
    /// Packets per capture run.
    #[arg(long)]
    pub packets: Option<u64>,
    /// Rows of the synthetic history for the storage and /api/history measurements.
    #[arg(long)]
    pub history_rows: Option<u64>,
    /// The agent binary (a release build).
    #[arg(long, default_value = "target/release/ayaflow")]
    pub agent: PathBuf,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Scratch directory (databases, captures; emptied as it goes).
    #[arg(long, default_value = "target/bench")]
    pub scratch: PathBuf,
    /// Only render the report again from a results.json of an earlier run (no measuring).
    #[arg(long)]
    pub render: Option<PathBuf>,
    /// Internal (the empty-tc observer): hold the empty classifier on this interface's TCX
    /// ingress until interrupted.
    #[arg(long, hide = true)]
    pub hold_empty_tc: Option<String>,
    /// Internal (the touch-tc observer): with --hold-empty-tc, hold the touching variant.
    #[arg(long, hide = true)]
    pub touch: bool,
    /// The command line to print in the report as the way to reproduce it.
    #[arg(long, default_value = "cargo xtask bench")]
    pub command: String,
}

/// Sizes of one bench run.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub runs: usize,
    pub packets: u64,
    pub traffic: Vec<Traffic>,
    pub observers: Vec<Observer>,
    pub repeat: u32,
    pub kernel_runs: usize,
    pub history_rows: u64,
    pub wrk_secs: u32,
    pub memory_steps: Vec<u32>,
    pub memory_rate: u64,
    /// Seconds of each web UI measurement (section 5).
    #[serde(default)]
    pub ui_secs: f64,
}

impl Plan {
    fn from(a: &Args) -> Result<Plan> {
        let all_traffic = [
            Traffic {
                v6: false,
                flows: 1000,
                paged: false,
            },
            Traffic {
                v6: false,
                flows: 100_000,
                paged: false,
            },
            Traffic {
                v6: true,
                flows: 1000,
                paged: false,
            },
            Traffic {
                v6: true,
                flows: 100_000,
                paged: false,
            },
            // Paged frames (a TX ring): only when asked for by name.
            Traffic {
                v6: false,
                flows: 1000,
                paged: true,
            },
        ];
        let traffic = if a.traffic.is_empty() {
            if a.quick {
                vec![all_traffic[0], all_traffic[3]]
            } else {
                all_traffic[..4].to_vec()
            }
        } else {
            a.traffic
                .iter()
                .map(|n| {
                    all_traffic
                        .iter()
                        .find(|t| t.name() == *n)
                        .copied()
                        .with_context(|| {
                            format!(
                                "unknown traffic {n:?}: v4-1k, v4-100k, v6-1k, v6-100k, v4-1k-paged"
                            )
                        })
                })
                .collect::<Result<_>>()?
        };
        let mut observers = vec![Observer::None];
        if a.observers.is_empty() {
            observers = Observer::ALL.to_vec();
        } else {
            for n in &a.observers {
                let o = Observer::parse(n).with_context(|| {
                    format!(
                        "unknown observer {n:?}: {}",
                        Observer::ALL.map(|o| o.name()).join(", ")
                    )
                })?;
                if !observers.contains(&o) {
                    observers.push(o);
                }
            }
        }
        Ok(if a.quick {
            Plan {
                runs: a.runs.unwrap_or(0),
                packets: a.packets.unwrap_or(200_000),
                traffic,
                observers,
                repeat: 100_000,
                kernel_runs: 3,
                history_rows: a.history_rows.unwrap_or(200_000),
                wrk_secs: 2,
                memory_steps: vec![10_000, 50_000],
                memory_rate: 100_000,
                ui_secs: 5.0,
            }
        } else {
            Plan {
                runs: a.runs.unwrap_or(3),
                packets: a.packets.unwrap_or(3_000_000),
                traffic,
                observers,
                repeat: 1_000_000,
                kernel_runs: 5,
                history_rows: a.history_rows.unwrap_or(10_000_000),
                wrk_secs: 10,
                memory_steps: vec![100_000, 1_000_000],
                memory_rate: 50_000,
                ui_secs: 60.0,
            }
        })
    }
}

/// Everything measured, for the report (also saved as results.json, so that the report can be
/// rendered again with `--render`).
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Results {
    pub plan: Plan,
    /// The command that produced these results (as shown in the report).
    #[serde(default)]
    pub command: String,
    /// Set when the report is rendered again from results.json: the commit that rendered it.
    #[serde(default)]
    pub rerendered_by: Option<String>,
    pub kernel: Option<kernel::Report>,
    /// Section 1's random-access cost by table size.
    #[serde(default)]
    pub memory_access: Vec<memlat::Row>,
    /// Set when section 1 was measured again apart from the rest: on which commit, and why.
    #[serde(default)]
    pub kernel_rerun: Option<String>,
    pub capture: Vec<capture::RunResult>,
    /// Section `inplace`: linear and paged frames, BPF statistics on.
    #[serde(default)]
    pub inplace: Vec<capture::RunResult>,
    /// Section `tcp`: real TCP under each observer.
    #[serde(default)]
    pub tcp: Vec<tcp::TcpRun>,
    pub store: Option<store_api::StoreResult>,
    pub history: Vec<store_api::WrkResult>,
    pub live: Option<store_api::LiveResult>,
    /// Section live (issue 18): per agent binary, baseline first.
    #[serde(default)]
    pub scale: Vec<live::LiveRun>,
    /// Section 5.
    #[serde(default)]
    pub ui: Option<ui::UiResult>,
    /// Section 6.
    #[serde(default)]
    pub interfaces: Option<interfaces::InterfacesResult>,
    pub load_start: f64,
    pub load_end: f64,
    pub started: String,
    pub elapsed: Duration,
    /// Machine and version facts, taken at the start (the commit that ran).
    pub machine: Vec<(String, String)>,
}

/// Median of `v` (0 for an empty slice).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    sender::STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(ifname) = &args.hold_empty_tc {
        if let Err(e) = kernel::hold_empty_tc(ifname, args.touch) {
            eprintln!("bench: error: {e:#}");
        }
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn interrupted() -> Result<()> {
    if sender::STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    if let Some(json) = &args.render {
        let mut res: Results = serde_json::from_slice(
            &std::fs::read(json).with_context(|| format!("reading {}", json.display()))?,
        )
        .with_context(|| format!("parsing {}", json.display()))?;
        let mut args = args.clone();
        if !res.command.is_empty() {
            args.command = std::mem::take(&mut res.command);
        }
        let args = &args;
        res.rerendered_by = report::machine_lines()
            .into_iter()
            .find(|(k, _)| k == "ayaFlow")
            .map(|(_, v)| v);
        std::fs::write(&args.out, report::render(args, &res.plan, &res))
            .with_context(|| format!("writing {}", args.out.display()))?;
        eprintln!(
            "bench: wrote {} from {}",
            args.out.display(),
            json.display()
        );
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the bench loads BPF programs and creates network namespaces: run it as root (cargo xtask bench does)"
        );
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let plan = Plan::from(args)?;
    let agent = std::fs::canonicalize(&args.agent).with_context(|| {
        format!(
            "the agent binary {} is missing: build it with `cargo xtask build --release`",
            args.agent.display()
        )
    })?;
    std::fs::create_dir_all(&args.scratch)?;
    let scratch = std::fs::canonicalize(&args.scratch)?;
    netns::cleanup_leftovers()?;
    let started = Instant::now();
    let mut res = Results {
        load_start: procstat::loadavg(),
        started: report::utc_now(),
        machine: report::machine_lines(),
        plan: plan.clone(),
        command: args.command.clone(),
        ..Results::default()
    };
    let want = |s: &str| args.sections.iter().any(|x| x == s);

    if want("kernel") {
        eprintln!(
            "bench: section 1, BPF_PROG_TEST_RUN ({} repeats x {} runs)",
            plan.repeat, plan.kernel_runs
        );
        res.kernel = Some(kernel::run(plan.repeat, plan.kernel_runs)?);
        eprintln!("bench: section 1, random loads by table size");
        res.memory_access = memlat::run(
            if args.quick { 200_000 } else { 4_000_000 },
            plan.kernel_runs,
        )?;
    }
    interrupted()?;
    if want("capture")
        || want("storage")
        || want("api")
        || want("inplace")
        || want("tcp")
        || want("ui")
        || want("live")
        || want("interfaces")
    {
        let pair = netns::Pair::create().context("creating the bench's namespaces")?;
        if want("capture") {
            capture_all(&pair, &agent, &scratch, &plan, &mut res)?;
        }
        if want("inplace") {
            eprintln!("bench: section inplace, linear and paged frames");
            let (rounds, packets) = if args.quick {
                (1, 100_000)
            } else {
                (5, 1_000_000)
            };
            res.inplace = inplace::run(
                &pair,
                &agent,
                args.baseline_agent.as_deref(),
                &scratch,
                rounds,
                packets,
            )?;
        }
        interrupted()?;
        if want("tcp") {
            eprintln!("bench: section tcp, real TCP with GSO and GRO");
            let (rounds, secs) = if args.quick { (1, 1) } else { (5, 4) };
            res.tcp = tcp::run(&pair, &agent, &scratch, rounds, secs)?;
        }
        interrupted()?;
        let db = scratch.join("history.db");
        if want("storage") || want("api") {
            eprintln!(
                "bench: section 4, writing {} history rows",
                plan.history_rows
            );
            res.store = Some(store_api::write_history(&db, plan.history_rows)?);
        }
        interrupted()?;
        if want("api") {
            eprintln!(
                "bench: section 4, /api/history over {} rows",
                plan.history_rows
            );
            res.history = store_api::history(
                &pair,
                &agent,
                &scratch.join("history-agent"),
                &db,
                plan.history_rows,
                plan.wrk_secs,
            )?;
            interrupted()?;
            eprintln!("bench: section 4, memory and /api/live");
            res.live = Some(store_api::live_and_memory(
                &pair,
                &agent,
                &scratch.join("live-agent"),
                &plan.memory_steps,
                plan.wrk_secs,
                plan.memory_rate,
            )?);
        }
        interrupted()?;
        if want("live") {
            let mut agents = Vec::new();
            if let Some(b) = &args.baseline_agent {
                agents.push(("baseline", b.clone()));
            }
            agents.push(("this commit", agent.clone()));
            for (label, bin) in agents {
                eprintln!("bench: section live, {label} ({})", bin.display());
                res.scale.push(live::run(
                    &pair,
                    &bin,
                    label,
                    &scratch.join("scale-agent"),
                    &plan.memory_steps,
                    plan.wrk_secs,
                    plan.memory_rate,
                    LIVE_LOAD_RATE,
                )?);
                let _ = std::fs::remove_dir_all(scratch.join("scale-agent"));
                interrupted()?;
            }
        }
        if want("ui") {
            eprintln!(
                "bench: section 5, the agent's CPU with the web UI open ({} s each)",
                plan.ui_secs
            );
            res.ui = Some(ui::run(
                &pair,
                &agent,
                &scratch.join("ui-agent"),
                plan.ui_secs,
            )?);
        }
        interrupted()?;
        if want("interfaces") {
            // Quick mode only checks that it works, in a few seconds.
            let (counts, rounds, idle) = if args.quick {
                (vec![20], 1, 2.0)
            } else {
                (vec![50, 200, 400], 3, 10.0)
            };
            eprintln!(
                "bench: section 6, attaching to {counts:?} veths created at once ({rounds} rounds)"
            );
            res.interfaces = Some(interfaces::run(
                &pair,
                &agent,
                &scratch.join("interfaces-agent"),
                &counts,
                rounds,
                idle,
            )?);
        }
        for ext in ["db", "db-wal", "db-shm"] {
            let _ = std::fs::remove_file(db.with_extension(ext));
        }
        let _ = std::fs::remove_dir_all(scratch.join("history-agent"));
        let _ = std::fs::remove_dir_all(scratch.join("live-agent"));
    }
    res.load_end = procstat::loadavg();
    res.elapsed = started.elapsed();
    let md = report::render(args, &plan, &res);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(&args.out, md).with_context(|| format!("writing {}", args.out.display()))?;
    report::write_csv(&scratch.join("runs.csv"), &res.capture)?;
    std::fs::write(
        scratch.join("results.json"),
        serde_json::to_string_pretty(&res)?,
    )?;
    eprintln!(
        "bench: wrote {} (and every run in {}) in {:.0} s",
        args.out.display(),
        scratch.join("runs.csv").display(),
        res.elapsed.as_secs_f64()
    );
    if args.quick {
        report::check_quick(&plan, &res)?;
        eprintln!("bench: quick mode checks passed");
    }
    Ok(())
}

fn capture_all(
    pair: &netns::Pair,
    agent: &std::path::Path,
    scratch: &std::path::Path,
    plan: &Plan,
    res: &mut Results,
) -> Result<()> {
    let total = (plan.runs + 1) * plan.traffic.len() * plan.observers.len();
    let mut n = 0;
    for round in 0..=plan.runs {
        // Round 0 is the warm-up, with the kernel's BPF run-time statistics on.
        let stats = if round == 0 {
            Some(observer::BpfStats::enable()?)
        } else {
            None
        };
        for &t in &plan.traffic {
            for &o in &plan.observers {
                interrupted()?;
                n += 1;
                let r = capture::run_one(pair, agent, scratch, o, t, plan.packets, round)
                    .with_context(|| format!("{} on {}, round {round}", o.name(), t.name()))?;
                eprintln!(
                    "bench: [{n}/{total}] round {round} {:>8} {:<13} sent {} delivered {} ({:.2} Mpps) counted {:?} cpu {:.3} s gen {:.3} s load {:.1}",
                    t.name(),
                    o.name(),
                    r.sent,
                    r.delivered,
                    r.sent as f64 / r.gen_secs / 1e6,
                    r.counted,
                    r.obs_cpu.total_ns() as f64 / 1e9,
                    r.gen_cpu_ns as f64 / 1e9,
                    r.load
                );
                res.capture.push(r);
            }
        }
        drop(stats);
    }
    Ok(())
}
