//! Turns the results into BENCHMARKS.md (one table per section, each with the command that
//! reproduces it, and an analysis computed from the numbers), a CSV of every run, and the
//! quick mode's checks.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{
    Args, Plan, Results,
    capture::RunResult,
    median,
    observer::{Observer, WINDOW_SECS},
};

mod analysis;
mod capture;
mod output;
mod sections;

use analysis::*;
use capture::*;
pub use output::{check_quick, write_csv};
use sections::*;

/// The current UTC time, `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn deb_version(pkg: &str) -> String {
    let v = sh("dpkg-query", &["-W", "-f=${Version}", pkg]);
    if v.is_empty() { "?".into() } else { v }
}

/// Machine and versions, for the report's first table.
pub fn machine_lines() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("")
        .trim_matches('"')
        .to_string();
    let commit = sh("git", &["rev-parse", "--short=12", "HEAD"]);
    // The report itself does not count as a change to the code that produced it.
    let dirty = if sh(
        "git",
        &[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!BENCHMARKS.md",
        ],
    )
    .is_empty()
    {
        ""
    } else {
        " (with uncommitted changes)"
    };
    vec![
        ("CPU".into(), format!("{model}, {cpus} CPUs")),
        (
            "Memory".into(),
            format!("{:.1} GiB", mem as f64 / 1048576.0),
        ),
        (
            "Kernel".into(),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        ("OS".into(), os),
        (
            "ayaFlow".into(),
            format!("commit {commit}{dirty}, release build"),
        ),
        ("rustc".into(), sh("rustc", &["--version"])),
        (
            "Peers (Debian)".into(),
            format!(
                "tcpdump {}, libpcap {}, softflowd {}, pmacct {}, wrk {}",
                deb_version("tcpdump"),
                deb_version("libpcap0.8"),
                deb_version("softflowd"),
                deb_version("pmacct"),
                deb_version("wrk")
            ),
        ),
    ]
}

/// Per (traffic, observer): the runs that count (the timed rounds; the warm-up when there are
/// none).
fn groups(plan: &Plan, runs: &[RunResult]) -> BTreeMap<(String, String), Vec<RunResult>> {
    let mut m: BTreeMap<(String, String), Vec<RunResult>> = BTreeMap::new();
    for r in runs {
        if plan.runs > 0 && r.round == 0 {
            continue;
        }
        m.entry((r.traffic.clone(), r.observer.clone()))
            .or_default()
            .push(r.clone());
    }
    m
}

/// Medians of one (traffic, observer) group, per million delivered packets where it says so.
#[derive(Clone, Debug, Default)]
struct Summary {
    delivered: f64,
    counted: Option<f64>,
    obs_drops: Option<f64>,
    events: Option<f64>,
    rows: Option<f64>,
    rows_dropped: Option<f64>,
    windows: Option<f64>,
    mpps: f64,
    veth_drops: f64,
    /// Seconds per million packets.
    user: f64,
    sys: f64,
    proc_cpu: f64,
    /// Process CPU until it was told to stop (without its work at exit).
    proc_observing: f64,
    kernel_ctx: f64,
    /// CPU inside its hook on the packet path, sampled (`pathcost.rs`).
    path: Option<f64>,
    machine: f64,
    peak_mib: f64,
    disk_bytes: Option<f64>,
    /// The last run's note (where a tool says it lost packets).
    note: String,
    /// Rounds in which counted == delivered.
    exact: usize,
    n: usize,
}

fn summarize(rs: &[RunResult]) -> Summary {
    let per_m = |ns: u64, r: &RunResult| ns as f64 / 1e9 / (r.delivered.max(1) as f64 / 1e6);
    let med = |f: &dyn Fn(&RunResult) -> f64| median(&rs.iter().map(f).collect::<Vec<_>>());
    let med_opt = |f: &dyn Fn(&RunResult) -> Option<u64>| {
        let v: Vec<f64> = rs.iter().filter_map(|r| f(r).map(|x| x as f64)).collect();
        (!v.is_empty()).then(|| median(&v))
    };
    Summary {
        delivered: med(&|r| r.delivered as f64),
        counted: med_opt(&|r| r.counted),
        obs_drops: med_opt(&|r| r.obs_drops),
        events: med_opt(&|r| r.events),
        rows: med_opt(&|r| r.rows_written),
        rows_dropped: med_opt(&|r| r.rows_dropped),
        windows: med_opt(&|r| r.windows),
        mpps: med(&|r| r.sent as f64 / r.gen_secs / 1e6),
        veth_drops: med(&|r| r.veth_drops as f64),
        user: med(&|r| per_m(r.obs_cpu.user_ns, r)),
        sys: med(&|r| per_m(r.obs_cpu.sys_ns, r)),
        proc_cpu: med(&|r| per_m(r.obs_cpu.total_ns(), r)),
        proc_observing: med(&|r| per_m(r.obs_cpu_observing.total_ns(), r)),
        kernel_ctx: med(&|r| per_m(r.gen_cpu_ns + r.ksoftirqd_ns, r)),
        path: {
            let v: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.path_ns.map(|ns| per_m(ns, r)))
                .collect();
            (!v.is_empty()).then(|| median(&v))
        },
        machine: med(&|r| per_m(r.machine.busy_ns, r)),
        peak_mib: med(&|r| r.obs_peak_kb as f64 / 1024.0),
        disk_bytes: med_opt(&|r| r.disk_bytes),
        note: rs.last().map(|r| r.note.clone()).unwrap_or_default(),
        exact: rs.iter().filter(|r| r.counted == Some(r.delivered)).count(),
        n: rs.len(),
    }
}

fn fmt_n(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt_n(v: Option<f64>) -> String {
    v.map(fmt_n).unwrap_or_else(|| "-".into())
}

fn ratio(a: f64, b: f64) -> String {
    if b <= 1e-9 || a < 0.0 {
        "-".into()
    } else {
        format!("{:.2}", a / b)
    }
}

fn bpf_in_situ(rs: &[RunResult], traffic: &str, obs: &str) -> Option<f64> {
    rs.iter()
        .find(|r| r.traffic == traffic && r.observer == obs && r.bpf_ns_per_pkt.is_some())
        .and_then(|r| r.bpf_ns_per_pkt)
}

/// The markdown report.
pub fn render(args: &Args, plan: &Plan, res: &Results) -> String {
    let mut s = String::new();
    let cmd = &args.command;
    let w = &mut s;
    let _ = writeln!(w, "# ayaFlow benchmarks\n");
    let _ = writeln!(
        w,
        "Written by `{cmd}` on {} (took {:.0} min). Every number below comes from that one run on \
         this machine; ratios compare measurements taken in the same run. Benchmarks are not \
         tests: CI runs `cargo xtask bench --quick` only to check that every section works.\n",
        res.started,
        res.elapsed.as_secs_f64() / 60.0
    );
    if let Some(by) = &res.rerendered_by {
        let _ = writeln!(
            w,
            "The text was rendered again from that run's saved results (`ayaflow-bench --render \
             target/bench/results.json`) by {by}: the numbers are the run's own.\n"
        );
    }
    let _ = writeln!(w, "## Machine\n\n| | |\n| --- | --- |");
    for (k, v) in &res.machine {
        let _ = writeln!(w, "| {k} | {v} |");
    }
    let busy = res.load_start.max(res.load_end);
    let _ = writeln!(
        w,
        "| Load average (1 min) | {:.2} at start, {:.2} at end{} |\n",
        res.load_start,
        res.load_end,
        if busy > 0.5 {
            ": **other work was running on this machine during the bench** (other builds and \
             tests); per-process and per-thread CPU times are unaffected by it, the machine-wide \
             /proc/stat column is not"
        } else {
            ""
        }
    );

    if let Some(k) = &res.kernel {
        section_kernel(w, cmd, k);
        if let Some(why) = &res.kernel_rerun {
            let _ = writeln!(
                w,
                "**This section was measured again, apart from the rest:** {why}\n"
            );
        }
    }
    if !res.memory_access.is_empty() {
        section_memory(w, cmd, plan, &res.memory_access);
    }
    if !res.capture.is_empty() {
        section_capture(w, cmd, plan, res);
    }
    if !res.inplace.is_empty() {
        crate::inplace::render(w, cmd, &res.inplace);
    }
    if !res.tcp.is_empty() {
        crate::tcp::render(w, cmd, &res.tcp);
    }
    section_storage(w, cmd, plan, res);
    crate::live::render(w, cmd, &res.scale, crate::LIVE_LOAD_RATE, plan.wrk_secs);
    if let Some(u) = &res.ui {
        section_ui(w, cmd, u);
    }
    if let Some(i) = &res.interfaces {
        section_interfaces(w, cmd, i);
    }
    analysis(w, plan, res);
    s
}
