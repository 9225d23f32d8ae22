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
    section_storage(w, cmd, plan, res);
    analysis(w, plan, res);
    s
}

fn section_kernel(w: &mut String, cmd: &str, k: &crate::kernel::Report) {
    let _ = writeln!(
        w,
        "## 1. Kernel cost per packet\n\n`BPF_PROG_TEST_RUN` with {} repetitions per call (the \
         kernel's mean), median of {} calls per cell, the three programs interleaved on the same \
         frames. The empty classifier is `r0 = -1; exit` (the same verdict, TC_ACT_UNSPEC): the \
         floor any TC program pays, here the test runner's own loop. Raw mode includes the ring-buffer \
         reserve + submit of one 64-byte event (the ring is sized so that no event is dropped); flow \
         mode finding the flow's slot through the flow table's index (a seeded hash, one 4-byte \
         index position, five 64-bit key compares) and its one atomic add.\n\nReproduce: `{cmd} -- --sections kernel`\n",
        fmt_n(k.repeat as f64),
        k.runs
    );
    let _ = writeln!(
        w,
        "| frame | bytes | empty ns | ayaflow raw ns | raw / empty | ayaflow flows ns | flows / empty |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &k.rows {
        let _ = writeln!(
            w,
            "| {} | {} | {:.0} | {:.0} | {} | {:.0} | {} |",
            r.frame,
            r.bytes,
            r.empty_ns,
            r.raw_ns,
            ratio(r.raw_ns, r.empty_ns),
            r.flows_ns,
            ratio(r.flows_ns, r.empty_ns)
        );
    }
    let _ = writeln!(
        w,
        "\nLoaded size, from the kernel (`BPF_OBJ_GET_INFO_BY_FD`; the capture mode is a load-time \
         constant, so the verifier removes the other mode's code):\n\n| program | xlated instructions | JIT bytes |\n| --- | ---: | ---: |"
    );
    for z in &k.sizes {
        let _ = writeln!(
            w,
            "| {} | {} | {} |",
            z.program,
            fmt_n(z.xlated_insns as f64),
            fmt_n(z.jited_bytes as f64)
        );
    }
    let _ = writeln!(w);
}

fn section_memory(w: &mut String, cmd: &str, plan: &Plan, rows: &[crate::memlat::Row]) {
    let _ = writeln!(
        w,
        "### One random memory access, by table size\n\nA pointer chase (each load's address is \
         the previous load's value) through a random cycle of the 64-byte lines of a buffer in \
         4 KiB pages, the pages BPF maps are made of; median of {} chases. When packets of many \
         flows come in turn (the capture bench sends its flows round-robin), finding a packet's \
         flow entry is one such access at least, whatever the table's design: at 1,000 flows the \
         table stays in the CPU's caches, at 100,000 it cannot. This is the floor under flow \
         mode's cost per packet at 100,000 flows (section 3, issue 5's criteria).\n\n\
         Reproduce: `{cmd} -- --sections kernel`\n\n\
         | table | bytes | ns per random load |\n| --- | ---: | ---: |",
        plan.kernel_runs
    );
    for r in rows {
        let _ = writeln!(
            w,
            "| {} | {} | {:.1} |",
            r.what,
            fmt_n(r.bytes() as f64),
            r.ns
        );
    }
    let _ = writeln!(w);
}

fn section_capture(w: &mut String, cmd: &str, plan: &Plan, res: &Results) {
    let g = groups(plan, &res.capture);
    let rounds = if plan.runs == 0 {
        "the single warm-up round (quick mode)".to_string()
    } else {
        format!("medians of {} rounds (after a warm-up round)", plan.runs)
    };
    let _ = writeln!(
        w,
        "## 2. Capture at full rate\n\nTwo namespaces joined by a veth pair (offloads off). The \
         sender, one thread pinned to CPU 0 in namespace a, writes prebuilt UDP frames (60 B IPv4, \
         64 B IPv6, without FCS) with `sendmmsg` on an AF_PACKET socket that bypasses the qdisc, as \
         fast as it can, {} packets per run, the flows round-robin. They arrive on `if_b` in \
         namespace b, where the observer runs, and end in a UDP socket that is never read. The veth \
         delivers in the sender's context, so the receive softirq (TC hook, AF_PACKET taps, IP, UDP) \
         runs on CPU 0 and is charged to the sending thread. Numbers are {rounds}.\n\n\
         - *delivered*: `if_b` rx_packets over the run (the truth). *counted*: `ayaflow_packets_total`. \
         *events*: `ayaflow_events_total`; *ring drops*: `ayaflow_ringbuf_drops_total`; *stored*: rows \
         in the SQLite file after the agent exited; *storage drops*: `ayaflow_storage_rows_dropped_total`.\n\
         - *agent CPU*: user + sys of the agent process from the first packet until it exited \
         (it drains, stores, flushes its last window and checkpoints), per million delivered packets; \
         *at exit*: the part spent after it was told to stop (in aggregated modes mostly storing the \
         last, partial window: one row per flow, which a long-running agent pays once per window).\n\
         - *kernel-side extra*: CPU of the sending thread (send + receive softirq) plus ksoftirqd, \
         minus the same with no observer: what the observer adds inside the kernel's packet path.\n\
         - *BPF in situ*: the classifier's run time per packet on this traffic, from the kernel's \
         BPF statistics (warm-up round only, as they cost a little themselves: two clock reads per \
         run, which the empty classifier on the same hook shows below the table).\n\
         - Agent flags: `--max-connections 262144 --flow-map-size 262144` so that 100,000 flows fit \
         (the same table for 1,000 flows: its 26 MiB (slots, claims, index, free stack) are mapped into the agent, which shows in its \
         RSS); aggregated modes use `--aggregation-window {WINDOW_SECS}`.\n",
        fmt_n(plan.packets as f64)
    );
    let _ = writeln!(
        w,
        "| traffic | mode | Mpps | delivered | counted | events | ring drops | stored rows | storage drops | agent CPU s/M (user + sys) | of it at exit | kernel-side extra s/M | BPF in situ ns | peak RSS MiB | loss | reproduce |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    );
    for t in &plan.traffic {
        let base = g.get(&(t.name(), "none".into())).map(|v| summarize(v));
        for o in [Observer::AyaRaw, Observer::AyaAgg, Observer::AyaFlows] {
            let Some(rs) = g.get(&(t.name(), o.name().into())) else {
                continue;
            };
            let m = summarize(rs);
            let kx = base.as_ref().map(|b| m.kernel_ctx - b.kernel_ctx);
            let mut loss = Vec::new();
            if m.exact < m.n {
                loss.push(format!(
                    "counter != delivered in {}/{} rounds",
                    m.n - m.exact,
                    m.n
                ));
            }
            if m.obs_drops.unwrap_or(0.0) > 0.0 {
                loss.push(format!("ring buffer: {}", opt_n(m.obs_drops)));
            }
            if m.veth_drops > 0.0 {
                loss.push(format!("veth: {}", fmt_n(m.veth_drops)));
            }
            if m.rows_dropped.unwrap_or(0.0) > 0.0 {
                loss.push(format!("storage queue: {} rows", opt_n(m.rows_dropped)));
            }
            if o == Observer::AyaRaw
                && m.rows.unwrap_or(0.0) + m.rows_dropped.unwrap_or(0.0) < m.events.unwrap_or(0.0)
            {
                loss.push("rows not stored".into());
            }
            let loss = if loss.is_empty() {
                "none".to_string()
            } else {
                loss.join("; ")
            };
            let _ = writeln!(
                w,
                "| {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {:.3} ({:.3} + {:.3}) | {:.3} | {} | {} | {:.1} | {} | `{cmd} -- --sections capture --traffic {} --observers {}` |",
                t.name(),
                o.name(),
                m.mpps,
                fmt_n(m.delivered),
                opt_n(m.counted),
                opt_n(m.events),
                opt_n(m.obs_drops),
                opt_n(m.rows),
                opt_n(m.rows_dropped),
                m.proc_cpu,
                m.user,
                m.sys,
                m.proc_cpu - m.proc_observing,
                kx.map(|x| format!("{x:.3}")).unwrap_or("-".into()),
                bpf_in_situ(&res.capture, &t.name(), o.name())
                    .map(|x| format!("{x:.0}"))
                    .unwrap_or("-".into()),
                m.peak_mib,
                loss,
                t.name(),
                o.name()
            );
        }
    }

    let floors: Vec<String> = plan
        .traffic
        .iter()
        .filter_map(|t| {
            bpf_in_situ(&res.capture, &t.name(), Observer::EmptyTc.name())
                .map(|x| format!("{} {x:.0} ns", t.name()))
        })
        .collect();
    if !floors.is_empty() {
        let _ = writeln!(
            w,
            "\nThe empty classifier on the same hook, with the same statistics on (`empty-tc`): {}. \
             That is the statistics' own cost plus the hook's dispatch, included in every *BPF in \
             situ* figure above.",
            floors.join(", ")
        );
    }
    let _ = writeln!(
        w,
        "\n## 3. Side by side with the tools users would pick instead\n\nSame traffic, same run, \
         same namespaces; each tool on `if_b` as a user would start it:\n"
    );
    for o in Observer::ALL.iter().filter(|o| o.is_peer()) {
        let _ = writeln!(w, "- {}: `{}`", o.name(), o.command_line());
    }
    let _ = writeln!(
        w,
        "- pmacctd's config: `pcap_interface: <if>`, `aggregate: src_host,dst_host,src_port,dst_port,proto`, \
         `plugins: memory` (its in-memory table, read with `pmacct -s`), and the buffers its own \
         warning asks for at this rate (`plugin_buffer_size: 102400`, `plugin_pipe_size: 102400000`; \
         with the defaults it loses most packets between its core and its plugin).\n\n\
         *process CPU* is the tool's whole process tree (pmacctd's core and plugin), from the first \
         packet until it exited. *machine extra* is what the whole machine spends per million \
         packets beyond the run with no observer (the issue-5 measure), computed three ways: \
         *sampled* = process CPU + *in its hook* (below; the criteria use it), *attributed* = process \
         CPU + kernel-side extra (other processes do not move it, the machine's speed drifting \
         between rounds does), and */proc/stat* = all CPUs' busy time over the run minus the \
         baseline's (includes everything else running). *in its hook* is CPU 0's time inside the observer's hook on the packet path, \
         sampled with `perf record -C 0` while the traffic flows (ayaFlow's and the empty \
         classifier's JIT-ed program; AF_PACKET's `tpacket_rcv`/`packet_rcv` for the libpcap tools, \
         which copy every packet into the tool's ring and wake it): the same method for every \
         observer, and immune to the speed of the machine drifting between rounds, which moves the \
         generator-side columns by ±0.3 s/M here. *machine extra (sampled)* = process CPU + in its \
         hook. *counted*: tcpdump's \"packets captured\", softflowd's \"Packets processed\", \
         pmacctd's table summed; the pcap tools also see a few frames of neighbour discovery. Ratios \
         are ayaFlow's machine extra (sampled) divided by the tool's.\n"
    );
    for t in &plan.traffic {
        let Some(base) = g.get(&(t.name(), "none".into())).map(|v| summarize(v)) else {
            continue;
        };
        let _ = writeln!(
            w,
            "### {} ({} flows, {})\n\nNo observer: {:.2} Mpps, {:.3} s/M on the sender's CPU \
             (send + receive path), {:.3} s/M machine-wide.\n\n\
             | observer | counted / delivered | drops it reports | process CPU s/M | in its hook s/M (sampled) | machine extra s/M (sampled) | kernel-side extra s/M | machine extra s/M (attributed) | machine extra s/M (/proc/stat) | peak RSS MiB | raw ÷ it | agg ÷ it | flows ÷ it | notes |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            t.name(),
            fmt_n(t.flows as f64),
            if t.v6 { "IPv6" } else { "IPv4" },
            base.mpps,
            base.kernel_ctx,
            base.machine
        );
        let extra = |o: Observer| -> Option<(Summary, f64, f64, Option<f64>)> {
            let m = summarize(g.get(&(t.name(), o.name().into()))?);
            let kx = m.kernel_ctx - base.kernel_ctx;
            let att = m.proc_cpu + kx;
            let mach = m.machine - base.machine;
            let sampled = m.path.map(|p| m.proc_cpu + p);
            Some((m, att, mach, sampled))
        };
        let aya: Vec<Option<f64>> = [Observer::AyaRaw, Observer::AyaAgg, Observer::AyaFlows]
            .iter()
            .map(|&o| extra(o).and_then(|x| x.3))
            .collect();
        for &o in &plan.observers {
            if o == Observer::None {
                continue;
            }
            let Some((m, att, mach, sampled)) = extra(o) else {
                continue;
            };
            let rat = |a: Option<f64>| match (o.is_peer(), a, sampled) {
                (true, Some(a), Some(s)) => ratio(a, s),
                (true, _, _) => "-".into(),
                _ => "".into(),
            };
            let f3 = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or("-".into());
            let _ = writeln!(
                w,
                "| {} | {} / {} | {} | {:.3} | {} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {} | {} | {} | {} |",
                o.name(),
                opt_n(m.counted),
                fmt_n(m.delivered),
                opt_n(m.obs_drops),
                m.proc_cpu,
                f3(m.path),
                f3(sampled),
                m.kernel_ctx - base.kernel_ctx,
                att,
                mach,
                m.peak_mib,
                rat(aya[0]),
                rat(aya[1]),
                rat(aya[2]),
                m.note
            );
        }
        let _ = writeln!(
            w,
            "\nReproduce: `{cmd} -- --sections capture --traffic {}`\n",
            t.name()
        );
    }
    goals(w, plan, &g, &res.memory_access);
}

/// The acceptance criteria of issue 5, evaluated on this run.
fn goals(
    w: &mut String,
    plan: &Plan,
    g: &BTreeMap<(String, String), Vec<RunResult>>,
    memory: &[crate::memlat::Row],
) {
    let _ = writeln!(
        w,
        "### Issue 5's criteria on this run\n\n\
         Extra CPU per million packets is measured the same way for every observer: its process \
         CPU plus its sampled time inside its hook on the packet path (*machine extra (sampled)* \
         above). For flow mode the process CPU is the agent's while observing, plus storing the \
         windows at steady state: the agent stores one row per flow and window, so the last window \
         it stores at exit (*at exit* in section 2) is what a long-running agent pays once per \
         {WINDOW_SECS}-second window; it is spread over the packets of one window at the measured \
         rate. The generator-side (*attributed*) figures are shown next to it; they move by about \
         ±0.3 s/M between rounds on this machine, more than the quantities being compared.\n\n\
         | traffic | criterion | measured | met |\n| --- | --- | --- | --- |"
    );
    // Flow mode's total and the best peer's, per (IPv6, flows), for the floor below.
    let mut flow_totals = BTreeMap::new();
    for t in &plan.traffic {
        let Some(base) = g.get(&(t.name(), "none".into())).map(|v| summarize(v)) else {
            continue;
        };
        let get = |o: Observer| {
            g.get(&(t.name(), o.name().into())).map(|v| {
                let m = summarize(v);
                let att = m.proc_cpu + m.kernel_ctx - base.kernel_ctx;
                (m, att)
            })
        };
        let best_peer = [
            Observer::TcpdumpNull,
            Observer::TcpdumpFile,
            Observer::Softflowd,
            Observer::Pmacctd,
        ]
        .into_iter()
        .filter_map(|o| get(o).and_then(|(m, a)| Some((o, m.proc_cpu + m.path?, a))))
        .min_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some((m, _)), Some((peer, pa, peer_att))) = (get(Observer::AyaFlows), best_peer) {
            let zero = m.exact == m.n;
            let path = m.path.unwrap_or(f64::NAN);
            let kx = m.kernel_ctx - base.kernel_ctx;
            // Seconds the exit flush took in one run, over the packets of one window.
            let flush_run_s = (m.proc_cpu - m.proc_observing).max(0.0) * m.delivered / 1e6;
            let flush = flush_run_s / (m.mpps * f64::from(WINDOW_SECS)).max(1e-9);
            let total = m.proc_observing + path + flush;
            flow_totals.insert((t.v6, t.flows), (total, pa));
            let _ = writeln!(
                w,
                "| {} | flow mode: extra CPU ≤ 1/3 of the best peer's, zero loss | {:.3} s/M (agent while observing {:.3} + classifier {:.3} + windows {:.3}; attributed {:.3}) vs {} {:.3} s/M (attributed {:.3}): ratio {}; counted = delivered in {}/{} rounds | {} |",
                t.name(),
                total,
                m.proc_observing,
                path,
                flush,
                m.proc_observing + kx + flush,
                peer.name(),
                pa,
                peer_att,
                ratio(total, pa),
                m.exact,
                m.n,
                if pa > 0.0 && total <= pa / 3.0 && zero {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
        if let Some((m, att)) = get(Observer::AyaRaw) {
            let events_ok = m.events.unwrap_or(0.0) >= m.counted.unwrap_or(f64::MAX)
                && m.obs_drops.unwrap_or(0.0) == 0.0;
            let stored_ok = m.rows.unwrap_or(0.0) >= m.events.unwrap_or(f64::MAX);
            // Compared like flow mode, by the sampled figure (process + in its hook); the
            // attributed one moves with the machine's speed between rounds.
            let sampled = |m: &Summary| m.path.map(|p| m.proc_cpu + p);
            let file = get(Observer::TcpdumpFile)
                .and_then(|(f, fa)| Some((sampled(&f)?, fa)))
                .zip(sampled(&m))
                .map(|((f, fa), s)| {
                    format!(
                        "; tcpdump -w file {f:.3} s/M (attributed {fa:.3}): ratio {}",
                        ratio(s, f)
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                w,
                "| {} | raw mode: zero loss of packets and events, every packet stored | counted = delivered in {}/{} rounds; events {} of {}; stored {}; {} s/M (attributed {:.3}){} | {} |",
                t.name(),
                m.exact,
                m.n,
                opt_n(m.events),
                opt_n(m.counted),
                opt_n(m.rows),
                sampled(&m).map_or("-".into(), |s| format!("{s:.3}")),
                att,
                file,
                if m.exact == m.n && events_ok && stored_ok {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
    }
    let _ = writeln!(w);
    flow_floor(w, &flow_totals, memory);
}

/// What the 100,000-flow criterion would need, against the floor of one random access per
/// packet (section 1): the same-family 1,000-flow total plus what a random load in the smallest
/// possible 100,000-flow table costs beyond one in the 1,000-flow table.
fn flow_floor(
    w: &mut String,
    totals: &BTreeMap<(bool, u32), (f64, f64)>,
    memory: &[crate::memlat::Row],
) {
    use crate::memlat::{MIN_ENTRY_V4, MIN_ENTRY_V6, SLOT, lookup};
    let Some(small) = lookup(memory, 1_000, SLOT) else {
        return;
    };
    let mut lines = Vec::new();
    for v6 in [false, true] {
        let (Some(&(base, _)), Some(&(_, peer)), Some(min), Some(ours)) = (
            totals.get(&(v6, 1_000)),
            totals.get(&(v6, 100_000)),
            lookup(
                memory,
                100_000,
                if v6 { MIN_ENTRY_V6 } else { MIN_ENTRY_V4 },
            ),
            lookup(memory, 100_000, SLOT),
        ) else {
            continue;
        };
        let floor = base + (min - small) / 1e3;
        lines.push(format!(
            "- {}-100k: the criterion allows {:.3} s/M (a third of {:.3}), {:.0} ns per packet in \
             all. The {} 1,000-flow total is {:.3} s/M; a random load in a table of 100,000 of \
             the smallest {} entries ({} bytes each) costs {:.1} ns here against {:.1} ns in the \
             1,000-flow table, so no flow table that keeps every flow's exact counts gets below \
             about {:.3} s/M on this traffic (ratio {}), {} the limit. ayaFlow's 64-byte slots cost \
             {:.1} ns per random load at 100,000 flows.",
            if v6 { "v6" } else { "v4" },
            peer / 3.0,
            peer,
            peer / 3.0 * 1e3,
            if v6 { "IPv6" } else { "IPv4" },
            base,
            if v6 { "IPv6" } else { "IPv4" },
            if v6 { MIN_ENTRY_V6 } else { MIN_ENTRY_V4 },
            min,
            small,
            floor,
            ratio(floor, peer),
            if floor > peer / 3.0 {
                "above"
            } else {
                "within"
            },
            ours,
        ));
    }
    if !lines.is_empty() {
        let _ = writeln!(
            w,
            "**The floor at 100,000 flows.** The capture bench sends its flows round-robin, so \
             with 100,000 flows each packet's flow entry was last touched 99,999 packets ago: \
             finding it is a random access to memory (section 1's second table), on top of what \
             a packet costs when its entry is in cache (the 1,000-flow run).\n\n{}\n",
            lines.join("\n")
        );
    }
}
fn section_storage(w: &mut String, cmd: &str, plan: &Plan, res: &Results) {
    if res.store.is_none() && res.live.is_none() && res.history.is_empty() {
        return;
    }
    let _ = writeln!(w, "## 4. Storage and API\n");
    if let Some(st) = &res.store {
        let _ = writeln!(
            w,
            "Raw rows written through the agent's own `Store::insert_packets` in transactions of \
             50,000 rows (as its writer does), 100,000 conversations over 24 hours, IPv4 and IPv6, \
             schema version 3 (each conversation stored once in `tuples`; raw rows packed a few bytes \
             each into blocks of up to 1,024 rows, one SQLite row per block; the first tenth also \
             creates the 100,000 conversations). Bytes per row: the file (and WAL) after close, \
             divided by the rows.\n\n\
             Reproduce: `{cmd} -- --sections storage`\n\n\
             | rows | seconds | rows/s overall | rows/s, first 10 % | rows/s, last 10 % | bytes on disk | bytes/row |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | {:.1} | {} | {} | {} | {} | {:.0} |\n",
            fmt_n(st.rows as f64),
            st.secs,
            fmt_n(st.rows as f64 / st.secs),
            fmt_n(st.first_rate),
            fmt_n(st.last_rate),
            fmt_n(st.bytes as f64),
            st.bytes as f64 / st.rows.max(1) as f64
        );
    }
    let g = groups(plan, &res.capture);
    let agg: Vec<_> = g
        .iter()
        .filter(|((_, o), _)| o == "ayaflow-agg" || o == "ayaflow-flows")
        .collect();
    if !agg.is_empty() {
        let _ = writeln!(
            w,
            "Aggregated modes (from section 2's runs, {WINDOW_SECS}-second windows; a run of a few \
             seconds spans one or two windows; rows per window ≈ the flows, as each five-tuple gets \
             one row per window):\n\n| traffic | mode | packets | stored rows | windows | rows per window | bytes on disk |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |"
        );
        for ((t, o), rs) in agg {
            let m = summarize(rs);
            let _ = writeln!(
                w,
                "| {t} | {o} | {} | {} | {} | {} | {} |",
                fmt_n(m.delivered),
                opt_n(m.rows),
                opt_n(m.windows),
                match (m.rows, m.windows) {
                    (Some(r), Some(n)) if n > 0.0 => fmt_n(r / n),
                    _ => "-".into(),
                },
                opt_n(m.disk_bytes)
            );
        }
        let _ = writeln!(w);
    }
    if !res.history.is_empty() || res.live.is_some() {
        let _ = writeln!(
            w,
            "API latency inside namespace b against the agent on 127.0.0.1 (a raw-mode agent attached \
             to `if_b`; the machine has 2 CPUs shared by the client and the agent): `/api/live` and \
             `/metrics` under `wrk -t1 -c2 -d{}s --latency`; `/api/history` with sequential requests \
             (one at a time, as a dashboard pages), since a slow query would only time out under wrk.\n\nReproduce: `{cmd} -- --sections api`\n\n\
             | request | p50 ms | p99 ms | requests/s |\n| --- | ---: | ---: | ---: |",
            plan.wrk_secs
        );
        if let Some(l) = &res.live {
            for r in &l.wrk {
                let _ = writeln!(
                    w,
                    "| `{}` ({}) | {:.2} | {:.2} | {} |",
                    r.path,
                    r.what,
                    r.p50_ms,
                    r.p99_ms,
                    fmt_n(r.rps)
                );
            }
        }
        for r in &res.history {
            let _ = writeln!(
                w,
                "| `{}` ({}, {} rows in the history) | {:.2} | {:.2} | {} |",
                r.path,
                r.what,
                fmt_n(plan.history_rows as f64),
                r.p50_ms,
                r.p99_ms,
                fmt_n(r.rps)
            );
        }
        let _ = writeln!(w);
    }
    if let Some(l) = &res.live {
        let _ = writeln!(
            w,
            "Memory of the agent (raw mode, `--max-connections 1100000`), connections made by one \
             packet per distinct IPv4 flow sent at {} packets/s:\n\n| state | tracked connections | RSS MiB | peak RSS MiB |\n| --- | ---: | ---: | ---: |\n| idle, after start | 0 | {:.1} | - |",
            fmt_n(plan.memory_rate as f64),
            l.idle_rss_kb as f64 / 1024.0
        );
        for (n, rss, hwm) in &l.rss {
            let _ = writeln!(
                w,
                "| after {} flows | {} | {:.1} | {:.1} |",
                fmt_n(*n as f64),
                fmt_n(*n as f64),
                *rss as f64 / 1024.0,
                *hwm as f64 / 1024.0
            );
        }
        let _ = writeln!(w);
    }
}

fn analysis(w: &mut String, plan: &Plan, res: &Results) {
    let _ = writeln!(
        w,
        "## Where the time goes, and what would move each number\n"
    );
    let g = groups(plan, &res.capture);
    let t = plan.traffic.first().map(|t| t.name()).unwrap_or_default();
    let s = |o: &str| g.get(&(t.clone(), o.to_string())).map(|v| summarize(v));
    let base = s("none");
    if let Some(k) = &res.kernel
        && let Some(r) = k.rows.first()
    {
        let _ = writeln!(
            w,
            "- **Kernel (the classifier).** {:.0} ns per IPv4/TCP packet in raw mode, {:.0} ns in flow \
             mode, {:.0} ns for the empty classifier (`BPF_PROG_TEST_RUN`). The two modes differ by \
             {:.0} ns: both parse (one bounds check per header, whole-word loads) and update the \
             per-CPU counter block; raw mode adds the precise boot-time clock (about 30 ns in this VM) \
             and the ring-buffer reserve/submit of a 64-byte event, flow mode no clock, a seeded \
             multiply-xor hash of the 40-byte key, one index position and one 64-byte slot of the \
             flow table (five word compares) and one atomic add (packets and bytes share a word). In \
             situ the flow-mode figure is higher than here: with many flows the index position and \
             the slot are cache and TLB misses (here one flow is hit again and again); slots are \
             handed out densely, so the flows in use share as few pages as they can. What would \
             move it: a smaller index (a BPF array stores its 4-byte positions in 8 bytes), and in \
             raw mode a smaller event.",
            r.raw_ns,
            r.flows_ns,
            r.empty_ns,
            (r.raw_ns - r.flows_ns).abs()
        );
    }
    if let (Some(b), Some(raw)) = (&base, s("ayaflow-raw")) {
        let hook = |o: &str| {
            s(o).and_then(|m| m.path)
                .map(|x| format!("{x:.3}"))
                .unwrap_or("?".into())
        };
        let situ = |o: &str, tr: &str| {
            bpf_in_situ(&res.capture, tr, o)
                .map(|x| format!("{x:.0}"))
                .unwrap_or("?".into())
        };
        let big = plan
            .traffic
            .iter()
            .find(|x| x.flows >= 100_000)
            .map(|x| x.name())
            .unwrap_or_default();
        let _ = writeln!(
            w,
            "- **Kernel, on real traffic** ({t}): the kernel's BPF statistics (warm-up round; they \
             add two clock reads per run themselves) give {} ns per packet in raw mode, {} in \
             aggregated mode (raw capture) and {} in flow mode, {} in flow mode with {big}: more \
             than under `BPF_PROG_TEST_RUN`, where the same frame and map entry stay hot. Real \
             packets and, with many flows, map entries are cold, and in raw mode a submit wakes \
             the agent only when a quarter of the ring is waiting (otherwise events are submitted \
             with `BPF_RB_NO_WAKEUP` and the agent drains every 10 ms; a wake-up per event used to \
             be most of raw capture's kernel cost). Sampled without the statistics (section 3, *in \
             its hook*): {} s per million packets in raw mode, {} in aggregated mode, {} in flow \
             mode. The generator-side difference says {:.3} s per million packets for raw mode: the \
             noisiest column of the report, as it moves with the machine's speed between rounds. \
             What would move it: a cheaper classifier (above), or flow mode.",
            situ("ayaflow-raw", &t),
            situ("ayaflow-agg", &t),
            situ("ayaflow-flows", &t),
            situ("ayaflow-flows", &big),
            hook("ayaflow-raw"),
            hook("ayaflow-agg"),
            hook("ayaflow-flows"),
            raw.kernel_ctx - b.kernel_ctx
        );
    }
    if let (Some(raw), Some(agg)) = (s("ayaflow-raw"), s("ayaflow-agg")) {
        let _ = writeln!(
            w,
            "- **Ring buffer + userspace parse + connection table** ({t}): in aggregated mode with raw \
             capture the agent reads every event, decodes it, updates the live table and sums windows, \
             storing only a row per flow and window: {:.3} s per million packets ({:.0} ns per packet, \
             {:.3} s of it in the kernel: timer wake-ups and ring-buffer reads). What would move it: \
             hashing the five-tuple once for both the table and the aggregator, a smaller key than \
             `IpAddr` pairs; or flow mode, which removes the per-packet event.",
            agg.proc_cpu,
            agg.proc_cpu * 1000.0,
            agg.sys
        );
        let _ = writeln!(
            w,
            "- **Storage** ({t}): raw mode costs {:.3} s per million packets in the agent, {:.3} s more \
             than aggregated mode, for a stored row per packet (schema 3: rows packed a few bytes \
             each into blocks of up to 1,024, the conversation once in `tuples`). It stored {} of {} events; {} rows were \
             dropped at the bounded storage queue (counted, never silently). SQLite alone takes about {} \
             rows/s here (section 4), but in the agent the writer shares two CPUs with the generator \
             and the ring-buffer reader, so a rate close to that is partly dropped. What would move \
             it: a writer thread with a CPU of its own, a cheaper map from conversation to its id \
             (one lookup per row), or storing windows (aggregated or flow mode).",
            raw.proc_cpu,
            raw.proc_cpu - agg.proc_cpu,
            opt_n(raw.rows),
            opt_n(raw.events),
            opt_n(raw.rows_dropped),
            res.store
                .as_ref()
                .map(|st| fmt_n(st.rows as f64 / st.secs))
                .unwrap_or("?".into())
        );
    }
    if let Some(fl) = s("ayaflow-flows") {
        let big = plan
            .traffic
            .iter()
            .find(|x| x.flows >= 100_000 && x.v6 == plan.traffic[0].v6)
            .and_then(|x| g.get(&(x.name(), "ayaflow-flows".to_string())))
            .map(|v| summarize(v));
        let _ = writeln!(
            w,
            "- **Flow mode** ({t}): {:.3} s per million packets in the agent and {} ring-buffer events: \
             the kernel aggregates, the agent sweeps the flow table every second (mapped into its \
             memory: the slots in use, found from a bitmap, their sums taken with atomic exchanges, \
             no system call), so its work is per flow and second, not per packet.{} What would move \
             it: one userspace map per flow for the live table and the window instead of two, and \
             skipping flows with no new packets.",
            fl.proc_cpu,
            opt_n(fl.events),
            big.map(|b| format!(
                " With 100,000 flows it costs {:.3} s per million packets: every second the sweep \
                 reads every slot in use and updates the live table and the window of each flow.",
                b.proc_cpu
            ))
            .unwrap_or_default()
        );
    }
    if let (Some(b), Some(td)) = (&base, s("tcpdump-null")) {
        let pm = s("pmacctd")
            .map(|p| {
                format!(
                    " pmacctd spends {:.3} s per million packets in its core and plugin processes.",
                    p.proc_cpu
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            w,
            "- **The peers** ({t}): pcap-based tools pay in the kernel for copying every frame into \
             their TPACKET_V3 ring and waking the reader ({} s per million packets in `tpacket_rcv` \
             for tcpdump, sampled) and little in userspace when they only write ({:.3} s per million \
             for `tcpdump -w /dev/null`).{pm} The baseline (no observer) costs {:.3} s per million \
             packets on the sender's CPU: generator, veth, IP and UDP receive path.",
            td.path.map(|x| format!("{x:.3}")).unwrap_or("?".into()),
            td.proc_cpu,
            b.kernel_ctx
        );
    }
    if let Some(l) = &res.live
        && l.rss.len() >= 2
    {
        let (n1, r1, _) = l.rss[0];
        let (n2, r2, _) = l.rss[l.rss.len() - 1];
        if n2 > n1 {
            let _ = writeln!(
                w,
                "- **Memory**: idle {:.0} MiB; {:.0} MiB with {} connections and {:.0} MiB with {}, \
                 that is at most {:.0} bytes per connection at {} ((RSS - idle RSS) / connections). \
                 RSS is what the process holds: the live table, the raw-mode storage queue (up to \
                 262,144 rows), SQLite's page cache, and memory the allocator keeps after freeing for \
                 reuse, so it grows in steps rather than linearly. What would move it: a compact \
                 connection key (fixed-size address arrays), a smaller per-connection record, a \
                 smaller storage queue.",
                l.idle_rss_kb as f64 / 1024.0,
                r1 as f64 / 1024.0,
                fmt_n(n1 as f64),
                r2 as f64 / 1024.0,
                fmt_n(n2 as f64),
                (r2 as f64 - l.idle_rss_kb as f64) * 1024.0 / n2.max(1) as f64,
                fmt_n(n2 as f64)
            );
        }
    }
    if let Some(l) = &res.live {
        let live: Vec<&crate::store_api::WrkResult> = l
            .wrk
            .iter()
            .filter(|r| r.path.starts_with("/api/live"))
            .collect();
        if let (Some(a), Some(b)) = (live.first(), live.last())
            && live.len() >= 2
        {
            let _ = writeln!(
                w,
                "- **API**: `/api/live` takes {:.0} ms (p50) with the first table size and {:.0} ms with \
                 the last: each request walks the whole table under its lock, selects the top N and \
                 builds snapshots, so it is linear in connections and briefly holds up the capture \
                 pipeline. What would move it: a maintained top-N, or ranking on a precomputed key \
                 outside the lock. `/metrics` reads counters only and stays well under a \
                 millisecond at p50.",
                a.p50_ms, b.p50_ms
            );
        }
    }
    if let (Some(fast), Some(slow)) = (
        res.history
            .iter()
            .min_by(|a, b| a.p50_ms.total_cmp(&b.p50_ms)),
        res.history
            .iter()
            .max_by(|a, b| a.p50_ms.total_cmp(&b.p50_ms)),
    ) {
        let _ = writeln!(
            w,
            "- **History queries** over {} rows: from {:.0} ms (`{}`) to {:.0} ms (`{}`) at p50. \
             A filter is resolved against the small `tuples` table first, then the blocks of raw rows \
             are walked newest first, skipping a block by its time bounds or its list of \
             conversations, and only blocks that may hold a match are decoded. The slowest query \
             matches about one row in 100,000, so it tests the list of every block. What would move \
             it: a warm read connection per API worker instead of one per request (each query starts \
             with a cold SQLite cache), and a summary per block that is smaller than its list.",
            fmt_n(plan.history_rows as f64),
            fast.p50_ms,
            fast.path,
            slow.p50_ms,
            slow.path
        );
        {
            let _ = ();
        }
    }
    let _ = writeln!(
        w,
        "- **Loss.** Every loss has a counter: the kernel counters are exact whatever happens after \
         them; a full ring buffer shows in `ayaflow_ringbuf_drops_total` (raise `--ring-buffer-size`, \
         or make the reader faster); a full storage queue in \
         `ayaflow_storage_rows_dropped_total{{reason=\"queue_full\"}}` (faster storage, or \
         aggregated mode).\n"
    );
}

/// Every capture run, one line each.
pub fn write_csv(path: &Path, runs: &[RunResult]) -> Result<()> {
    let mut s = String::from(
        "traffic,observer,round,sent,delivered,veth_drops,gen_secs,gen_cpu_ns,ksoftirqd_ns,machine_busy_ns,machine_softirq_ns,window_secs,obs_user_ns,obs_sys_ns,obs_peak_kb,counted,obs_drops,events,rows_written,rows_dropped,windows,entries,bpf_ns_per_pkt,disk_bytes,load,note\n",
    );
    let o = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in runs {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.4},{},{},{},{},{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{:.2},{}",
            r.traffic,
            r.observer,
            r.round,
            r.sent,
            r.delivered,
            r.veth_drops,
            r.gen_secs,
            r.gen_cpu_ns,
            r.ksoftirqd_ns,
            r.machine.busy_ns,
            r.machine.softirq_ns,
            r.window_secs,
            r.obs_cpu.user_ns,
            r.obs_cpu.sys_ns,
            r.obs_peak_kb,
            o(r.counted),
            o(r.obs_drops),
            o(r.events),
            o(r.rows_written),
            o(r.rows_dropped),
            o(r.windows),
            o(r.entries),
            r.bpf_ns_per_pkt
                .map(|x| format!("{x:.1}"))
                .unwrap_or_default(),
            o(r.disk_bytes),
            r.load,
            r.note.replace(',', ";")
        );
    }
    std::fs::write(path, s)?;
    Ok(())
}

/// Quick mode: every section produced numbers, and the counts that must be exact are.
pub fn check_quick(plan: &Plan, res: &Results) -> Result<()> {
    let mut errs = Vec::new();
    if let Some(k) = &res.kernel {
        for r in &k.rows {
            if !(r.raw_ns > 0.0 && r.flows_ns > 0.0) {
                errs.push(format!("kernel: no timing for {}", r.frame));
            }
        }
        if k.sizes.iter().any(|z| z.xlated_insns == 0) {
            errs.push("kernel: a program size is 0".into());
        }
    }
    for r in &res.capture {
        let name = format!("{} on {} (round {})", r.observer, r.traffic, r.round);
        if r.sent == 0 || r.delivered == 0 {
            errs.push(format!("{name}: sent {} delivered {}", r.sent, r.delivered));
        }
        let obs = Observer::parse(&r.observer).unwrap_or(Observer::None);
        if obs.is_ayaflow() {
            if r.counted != Some(r.delivered) {
                errs.push(format!(
                    "{name}: counted {:?} != delivered {}",
                    r.counted, r.delivered
                ));
            }
            if obs != Observer::AyaFlows
                && r.events.unwrap_or(0) + r.obs_drops.unwrap_or(0) != r.counted.unwrap_or(0)
            {
                errs.push(format!(
                    "{name}: events {:?} + ring drops {:?} != counted {:?}",
                    r.events, r.obs_drops, r.counted
                ));
            }
            if r.rows_written.unwrap_or(0) == 0 {
                errs.push(format!("{name}: nothing stored"));
            }
            if obs == Observer::AyaRaw
                && r.rows_written.unwrap_or(0) + r.rows_dropped.unwrap_or(0) < r.events.unwrap_or(0)
            {
                errs.push(format!(
                    "{name}: stored {:?} + dropped {:?} < events {:?}",
                    r.rows_written, r.rows_dropped, r.events
                ));
            }
        } else if obs.is_peer() && r.counted.unwrap_or(0) == 0 {
            errs.push(format!("{name}: counted nothing"));
        }
        if obs != Observer::None && r.obs_cpu.total_ns() == 0 && obs.is_ayaflow() {
            errs.push(format!("{name}: no CPU measured"));
        }
    }
    if let Some(s) = &res.store
        && (s.rows == 0 || s.bytes == 0)
    {
        errs.push("storage: nothing written".into());
    }
    for r in res
        .history
        .iter()
        .chain(res.live.iter().flat_map(|l| &l.wrk))
    {
        if r.rps <= 0.0 || r.non_2xx > 0 {
            errs.push(format!(
                "api: {} answered {} req/s, {} non-2xx",
                r.path, r.rps, r.non_2xx
            ));
        }
    }
    if let Some(l) = &res.live {
        for (i, &(n, _, _)) in l.rss.iter().enumerate() {
            if n < plan.memory_steps[i] as u64 {
                errs.push(format!(
                    "memory: {n} connections tracked, {} sent",
                    plan.memory_steps[i]
                ));
            }
        }
    }
    if !errs.is_empty() {
        bail!("quick mode checks failed:\n  {}", errs.join("\n  "));
    }
    Ok(())
}
