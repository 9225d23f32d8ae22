//! Section `inplace`: the classifier's cost per packet on linear and on paged frames, in situ.
//!
//! The same 1,000 IPv4 flows as section 2, once from `sendmmsg` (each frame one linear skb) and
//! once from a TX ring (each skb linear only up to the Ethernet header, the rest in page
//! fragments), through the empty classifier, ayaFlow in flow mode and ayaFlow in raw mode;
//! rounds interleaved, the kernel's BPF statistics on throughout (run time / run count of the
//! program on `if_b`'s TCX ingress). Before issue 17 the classifier pulled a paged frame's
//! headers into the linear part (`bpf_skb_pull_data`); it now copies the headers it reads.
//! With `--baseline-agent`, each round also runs ayaFlow's observers with that binary, right
//! after this commit's, so that a change to the classifier is compared within one run.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};

use crate::{
    capture::{self, RunResult},
    median,
    netns::Pair,
    observer::{BpfStats, Observer},
    sender::Traffic,
};

pub const OBSERVERS: [Observer; 4] = [
    Observer::EmptyTc,
    Observer::TouchTc,
    Observer::AyaFlows,
    Observer::AyaRaw,
];

/// The two kinds of frames.
pub fn traffic() -> [Traffic; 2] {
    [false, true].map(|paged| Traffic {
        v6: false,
        flows: 1000,
        paged,
    })
}

/// What the baseline binary's rows are called: the observer's name with this after it.
const BASELINE: &str = " (baseline)";

/// `rounds` rounds of `packets` packets per (frames, observer), statistics on; with a
/// `baseline` agent binary, its ayaFlow observers too.
pub fn run(
    pair: &Pair,
    agent: &Path,
    baseline: Option<&Path>,
    scratch: &Path,
    rounds: usize,
    packets: u64,
) -> Result<Vec<RunResult>> {
    let _stats = BpfStats::enable()?;
    let mut out = Vec::new();
    for round in 0..rounds {
        for t in traffic() {
            for o in OBSERVERS {
                let mut agents = vec![(agent, "")];
                if let Some(b) = baseline.filter(|_| o.is_ayaflow()) {
                    agents.push((b, BASELINE));
                }
                for (bin, suffix) in agents {
                    crate::interrupted()?;
                    let mut r = capture::run_one(pair, bin, scratch, o, t, packets, round)
                        .with_context(|| {
                            format!("{}{suffix} on {}, round {round}", o.name(), t.name())
                        })?;
                    r.observer.push_str(suffix);
                    eprintln!(
                        "bench: inplace round {round} {:<12} {:<24} delivered {} counted {:?} bpf {:?} ns/pkt",
                        t.name(),
                        r.observer,
                        r.delivered,
                        r.counted,
                        r.bpf_ns_per_pkt
                    );
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

/// The section's table: per frames and observer, the median ns per packet with the spread,
/// and paged ÷ linear.
pub fn render(w: &mut String, cmd: &str, runs: &[RunResult]) {
    let rounds = runs.iter().map(|r| r.round).max().map_or(0, |m| m + 1);
    let _ = writeln!(
        w,
        "### Linear and paged frames, in place\n\nThe v4-1k frames of section 2 sent twice: with \
         `sendmmsg` (every skb linear) and from an AF_PACKET TX ring (`v4-1k-paged`: each skb linear \
         up to the Ethernet header only, the rest page fragments of the ring, as trafgen sends). \
         The classifier's run time per packet on `if_b`'s ingress from the kernel's BPF statistics \
         (on throughout: they add two clock reads per run, which the empty classifier shows), \
         median of {rounds} interleaved rounds of {} packets, min–max in brackets. Paged frames are \
         parsed from copies of the headers they carry (`bpf_skb_load_bytes`), never pulled.\n\n\
         Reproduce: `{cmd} -- --sections inplace` (add `--baseline-agent <binary>` for rows of another build)\n\n\
         The agent's CPU (user + system, until everything was counted) per million packets is \
         the median over the same rounds: in raw mode it is the ring buffer's reader.\n\n\
         | observer | linear ns/pkt | paged ns/pkt | paged ÷ linear | agent CPU s/M, linear / paged | counted = delivered |\n\
         | --- | ---: | ---: | ---: | ---: | --- |",
        runs.first().map_or(0, |r| r.sent)
    );
    let [linear, paged] = traffic().map(|t| t.name());
    let cell = |name: &str, t: &str| -> (f64, String) {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.observer == name && r.traffic == t)
            .filter_map(|r| r.bpf_ns_per_pkt)
            .collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        let m = median(&v);
        (m, format!("{m:.0} ({lo:.0}–{hi:.0})"))
    };
    let agent_cpu = |name: &str, t: &str| -> f64 {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.observer == name && r.traffic == t)
            .map(|r| {
                r.obs_cpu_observing.total_ns() as f64 / 1e9 / (r.delivered.max(1) as f64 / 1e6)
            })
            .collect();
        median(&v)
    };
    let baseline = runs.iter().any(|r| r.observer.ends_with(BASELINE));
    for o in OBSERVERS {
        let names = [o.name().to_string(), format!("{}{BASELINE}", o.name())];
        let names = if baseline && o.is_ayaflow() {
            &names[..]
        } else {
            &names[..1]
        };
        for name in names {
            let (l, ls) = cell(name, &linear);
            let (p, ps) = cell(name, &paged);
            let exact = runs
                .iter()
                .filter(|r| &r.observer == name && o.is_ayaflow())
                .all(|r| r.counted == Some(r.delivered));
            let exact = if o.is_ayaflow() {
                if exact { "yes, every run" } else { "**no**" }
            } else {
                "-"
            };
            let cpu = if o.is_ayaflow() {
                format!(
                    "{:.3} / {:.3}",
                    agent_cpu(name, &linear),
                    agent_cpu(name, &paged)
                )
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                w,
                "| {name} | {ls} | {ps} | {:.2} | {cpu} | {exact} |",
                p / l
            );
        }
    }
    let _ = writeln!(w);
}
