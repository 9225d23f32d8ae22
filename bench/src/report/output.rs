//! The CSV of every run, and the checks of the quick mode.

use super::*;

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
            if !obs.is_flow_mode()
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
    if let Some(u) = &res.ui
        && (u.open.total_ns() == 0 || u.frame_bytes == 0 || u.ui_bytes == 0)
    {
        errs.push(format!("ui: nothing measured ({u:?})"));
    }
    if let Some(i) = &res.interfaces {
        let n = i.counts.last().copied().unwrap_or(0) as u64;
        if i.attach.is_empty() || i.full.iter().any(|f| f.attached != n || f.link_fds == 0) {
            errs.push(format!("interfaces: not all {n} attached ({:?})", i.full));
        }
        for (a, s) in i.after.iter().zip(&i.none) {
            if a.link_fds != 0 || a.prog_fds != s.prog_fds {
                errs.push(format!(
                    "interfaces: after the delete {} link fds (want 0), {} program fds (at start {})",
                    a.link_fds, a.prog_fds, s.prog_fds
                ));
            }
        }
        if i.failures.iter().any(|&f| f != 0) {
            errs.push(format!("interfaces: attach failures {:?}", i.failures));
        }
    }
    if !errs.is_empty() {
        bail!("quick mode checks failed:\n  {}", errs.join("\n  "));
    }
    Ok(())
}
