//! The analysis closing BENCHMARKS.md, computed from the numbers of the same run.

use super::*;

pub(super) fn analysis(w: &mut String, plan: &Plan, res: &Results) {
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
