//! What an observer costs inside the kernel's packet path, by sampling: `perf record` on CPU 0
//! (where the veth runs the receive path, in the sender's context) while the traffic flows,
//! then the share of samples whose call chain passes through the observer's hook. This is
//! immune to how fast the machine happens to run during a round (the generator-side difference
//! is not: in this VM the baseline alone varies by a factor of two between rounds), and it is
//! the same method for every observer.
//!
//! Hooks: ayaFlow and the empty classifier are their JIT-ed programs (`bpf_prog_<tag>_<name>`);
//! the libpcap tools are AF_PACKET's receive functions (`tpacket_rcv`, `packet_rcv`), which copy
//! each packet into the tool's ring and wake it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use crate::observer::Observer;

/// Sampling frequency, Hz. `cpu-clock` ticks whether CPU 0 is busy or idle.
const FREQ: &str = "1999";

pub struct Sampler {
    child: Child,
    out: PathBuf,
    started: Instant,
}

impl Sampler {
    /// Starts sampling CPU 0, or returns None if `perf` cannot run (the column stays empty).
    pub fn start(dir: &Path) -> Option<Sampler> {
        let out = dir.join("perf.data");
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-C",
                "0",
                "-F",
                FREQ,
                "-g",
                "-e",
                "cpu-clock",
                "-o",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // perf needs a moment to open its ring buffers before the traffic starts.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Some(Sampler {
            child,
            out,
            started: Instant::now(),
        })
    }

    /// Stops sampling and returns the nanoseconds CPU 0 spent inside `obs`'s hook.
    pub fn finish(mut self, obs: Observer) -> Option<u64> {
        let wall = self.started.elapsed();
        // SAFETY: kill on our own, not yet reaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().ok()?;
        let script = Command::new("perf")
            .args(["script", "-F", "ip,sym", "-i"])
            .arg(&self.out)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&self.out);
        let text = String::from_utf8_lossy(&script.stdout);
        let (hits, total) = count(&text, |sym| in_hook(obs, sym));
        (total > 0).then(|| (wall.as_nanos() as f64 * hits as f64 / total as f64) as u64)
    }
}

/// True if and only if `sym` is a frame of `obs`'s hook.
fn in_hook(obs: Observer, sym: &str) -> bool {
    match obs {
        o if o.is_ayaflow() => sym.starts_with("bpf_prog_") && sym.ends_with("_tc_ingress"),
        Observer::EmptyTc => sym.starts_with("bpf_prog_") && sym.ends_with("_empty_cls"),
        Observer::TouchTc => sym.starts_with("bpf_prog_") && sym.ends_with("_touch_cls"),
        Observer::None => false,
        _ => sym == "tpacket_rcv" || sym == "packet_rcv",
    }
}

/// (samples with a frame matching `hook`, all samples) in `perf script -F ip,sym` output: one
/// sample per run of non-empty lines, one frame (`<address> <symbol>`) per line.
fn count(text: &str, hook: impl Fn(&str) -> bool) -> (u64, u64) {
    let (mut hits, mut total) = (0, 0);
    let (mut in_sample, mut hit) = (false, false);
    for line in text.lines().chain([""]) {
        let line = line.trim();
        if line.is_empty() {
            if in_sample {
                total += 1;
                hits += u64::from(hit);
            }
            (in_sample, hit) = (false, false);
            continue;
        }
        in_sample = true;
        hit |= line.split_whitespace().last().is_some_and(&hook);
    }
    (hits, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_samples_through_the_hook_once() {
        let text = "\n\tffffffffa0001234 bpf_prog_870f84efff982bce_tc_ingress\n\tffffffff81000000 tcx_run\n\n\
                    \tffffffff81000001 udp_rcv\n\tffffffff81000002 ip_rcv\n\n\
                    \tffffffff81000003 tpacket_rcv\n\tffffffff81000004 __netif_receive_skb_core\n";
        let aya = count(text, |s| in_hook(Observer::AyaFlows, s));
        let tcpdump = count(text, |s| in_hook(Observer::TcpdumpNull, s));
        assert_eq!((aya, tcpdump), ((1, 3), (1, 3)));
    }
}
