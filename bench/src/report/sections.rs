//! The kernel, memory-latency, storage and web UI sections of BENCHMARKS.md.

use super::*;

pub(super) fn section_kernel(w: &mut String, cmd: &str, k: &crate::kernel::Report) {
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

pub(super) fn section_memory(w: &mut String, cmd: &str, plan: &Plan, rows: &[crate::memlat::Row]) {
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

pub(super) fn section_storage(w: &mut String, cmd: &str, plan: &Plan, res: &Results) {
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

pub(super) fn section_ui(w: &mut String, cmd: &str, u: &crate::ui::UiResult) {
    let pct = |c: &crate::procstat::Cpu| c.total_ns() as f64 / 1e9 / u.secs.max(1e-9) * 100.0;
    let _ = writeln!(
        w,
        "## 5. Web UI

The raw-mode agent of section 4 with {} flows at {} packets/s (so each \
         stream frame carries a full top 50, {} bytes), its CPU (user + system, from \
         /proc/<pid>/stat) over {:.0} s with no page open, then over {:.0} s with the live view \
         open in headless Chromium (`chromium --headless=new` on `http://127.0.0.1:3000/`, which \
         holds `WS /api/stream`, gets a frame a second and redraws; no polling). A hidden tab \
         closes its stream, so it costs what no page costs. The page and its assets are {} bytes \
         ({:.0} KiB), embedded in the binary.\n\nReproduce: `{cmd} -- --sections ui`\n\n\
         | | agent CPU, % of one core | agent CPU seconds |\n| --- | ---: | ---: |\n\
         | no page open | {:.2} | {:.3} |\n\
         | live view open | {:.2} | {:.3} |\n\
         | **the UI's cost** | **{:.2}** | {:.3} |\n\
         | (Chromium itself, on the viewer's side) | {:.1} | {:.3} |\n",
        fmt_n(crate::ui::FLOWS as f64),
        fmt_n(crate::ui::RATE as f64),
        fmt_n(u.frame_bytes as f64),
        u.secs,
        u.secs,
        fmt_n(u.ui_bytes as f64),
        u.ui_bytes as f64 / 1024.0,
        pct(&u.idle),
        u.idle.total_ns() as f64 / 1e9,
        pct(&u.open),
        u.open.total_ns() as f64 / 1e9,
        pct(&u.open) - pct(&u.idle),
        (u.open.total_ns() as f64 - u.idle.total_ns() as f64) / 1e9,
        pct(&u.browser),
        u.browser.total_ns() as f64 / 1e9,
    );
}

pub(super) fn section_interfaces(
    w: &mut String,
    cmd: &str,
    r: &crate::interfaces::InterfacesResult,
) {
    use crate::interfaces::{Batch, Footprint, OBSERVED};
    let ms = |v: f64| v * 1e3;
    let _ = writeln!(
        w,
        "## 6. Many interfaces (issue 19)

The raw-mode agent of section 4 with `--interface '{OBSERVED}*'` in namespace b, where N veth \
         pairs are created in one `ip -n b -batch` (`{OBSERVED}<i>`, which the pattern matches, \
         and a peer that it does not; never set up, so no packet crosses them), then deleted in \
         another. *ip alone*: the same batch with no agent running, in the same round (the \
         kernel's own cost). *until gauge*: from before the batch until `ayaflow_interfaces_attached` \
         reads N (or 0), polled every 10 ms once `ip` is done. The agent's share is what lies \
         beyond its batch (*share*); but the agent also slows the batch itself (it takes the \
         kernel's RTNL lock to attach, which `ip` needs too), so *beyond ip alone* (until gauge \
         minus ip alone) is its whole cost in time. Its CPU (user + system, /proc/<pid>/stat) \
         over the whole time is beside it: on kernels with TCX each attach (`BPF_LINK_CREATE`) \
         waits for an RCU grace period in `tcx_link_attach` while it holds the RTNL lock, so \
         most of the time is spent asleep in the kernel. One program object serves every \
         interface: an attach is a TCX link and a counter slot, no load. Median of {} rounds, \
         N = {}.\n\nReproduce: `{cmd} -- --sections interfaces`\n\n\
         | batch | N | ip alone, ms | ip with the agent, ms | until gauge, ms | share, ms | share per interface, ms | beyond ip alone, per interface, ms | agent CPU per interface, ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        r.rounds,
        r.counts
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (what, batches) in [("create", &r.attach), ("delete", &r.detach)] {
        for &n in &r.counts {
            let of_n: Vec<&Batch> = batches.iter().filter(|b| b.n == n).collect();
            let med =
                |f: &dyn Fn(&Batch) -> f64| median(&of_n.iter().map(|b| f(b)).collect::<Vec<_>>());
            let share = med(&|b| b.until_gauge - b.ip_with_agent);
            let _ = writeln!(
                w,
                "| {what} | {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
                ms(med(&|b| b.ip_alone)),
                ms(med(&|b| b.ip_with_agent)),
                ms(med(&|b| b.until_gauge)),
                ms(share),
                ms(share) / n as f64,
                ms(med(&|b| b.until_gauge - b.ip_alone)) / n as f64,
                ms(med(&|b| b.agent_cpu.total_ns() as f64 / 1e9)) / n as f64
            );
        }
    }
    let full_n = r.counts.last().copied().unwrap_or(0);
    let _ = writeln!(
        w,
        "\nThe agent idle (no traffic) for {:.0} s right after start with no interface matched, \
         then with the {full_n} attached, and after they were all deleted; BPF descriptors it \
         holds, from /proc/<pid>/fdinfo (a link's has `link_type:`, a program's `prog_id:` \
         only). Medians over the rounds.\n\n\
         | | attached | VmRSS MiB | RssAnon MiB | idle CPU, % of one core | BPF link fds | BPF program fds | /metrics bytes |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        r.idle_secs
    );
    let idle_pct =
        |f: &Footprint| f.idle_cpu.total_ns() as f64 / 1e9 / r.idle_secs.max(1e-9) * 100.0;
    let med = |v: &[Footprint], f: &dyn Fn(&Footprint) -> f64| {
        median(&v.iter().map(f).collect::<Vec<_>>())
    };
    for (what, v, idle) in [
        ("none matched, after start", &r.none, true),
        ("all attached, idle", &r.full, true),
        ("after the delete", &r.after, false),
    ] {
        let _ = writeln!(
            w,
            "| {what} | {:.0} | {:.1} | {:.1} | {} | {:.0} | {:.0} | {} |",
            med(v, &|f| f.attached as f64),
            med(v, &|f| f.rss_kb as f64) / 1024.0,
            med(v, &|f| f.rss_anon_kb as f64) / 1024.0,
            if idle {
                format!("{:.2}", med(v, &idle_pct))
            } else {
                "-".into()
            },
            med(v, &|f| f.link_fds as f64),
            med(v, &|f| f.prog_fds as f64),
            fmt_n(med(v, &|f| f.metrics_bytes as f64)),
        );
    }
    let per_if_kb = (med(&r.full, &|f| f.rss_kb as f64) - med(&r.none, &|f| f.rss_kb as f64))
        / full_n.max(1) as f64;
    let leak_free = r
        .after
        .iter()
        .zip(&r.none)
        .all(|(a, n)| a.link_fds == 0 && a.prog_fds == n.prog_fds);
    let polls = r
        .attach
        .iter()
        .filter(|b| b.n == full_n)
        .map(|b| b.polls as f64)
        .collect::<Vec<_>>();
    let scrape_ms = |v: &[Footprint]| med(v, &|f| f.scrape_cpu_ns as f64) / 1e6;
    let _ = writeln!(
        w,
        "\nOne /metrics request costs the agent {:.1} ms of CPU with none matched and {:.1} ms \
         with {full_n} attached (about {} bytes of series per interface; the series of \
         interfaces that went stay, up to {} names, so that every counter only grows). The \
         creation of {full_n} took a median of {:.0} such requests to see the gauge reach \
         {full_n}: up to {:.2} ms per interface of the CPU column is the bench's polling, not \
         the attach.",
        scrape_ms(&r.none),
        scrape_ms(&r.full),
        fmt_n(
            (med(&r.full, &|f| f.metrics_bytes as f64) - med(&r.none, &|f| f.metrics_bytes as f64))
                / full_n.max(1) as f64
        ),
        fmt_n(ayaflow::interfaces::counters::MAX_RETIRED as f64),
        median(&polls),
        median(&polls) * scrape_ms(&r.full) / full_n.max(1) as f64,
    );
    let _ = writeln!(
        w,
        "\n{:.1} KiB of RSS per attached interface; idle CPU {:+.2} points of one core with \
         {full_n} attached against none. {} Attach failures: {}.\n",
        per_if_kb,
        med(&r.full, &idle_pct) - med(&r.none, &idle_pct),
        if leak_free {
            "In every round the link descriptors went back to 0 after the delete and the \
             program descriptors stayed as many as at start."
        } else {
            "**Descriptors leaked in at least one round** (link descriptors not back to 0, or \
             program descriptors not as many as at start)."
        },
        r.failures
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}
