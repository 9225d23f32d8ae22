//! CPU and memory readings from /proc: a process tree's CPU and peak RSS, the machine's busy
//! and softirq time (/proc/stat), and the ksoftirqd threads' run time.

use std::{collections::BTreeSet, fs};

/// Nanoseconds per clock tick (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ns_per_tick() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    1_000_000_000 / hz
}

/// User and system CPU of a process (all its threads, including exited ones), nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cpu {
    pub user_ns: u64,
    pub sys_ns: u64,
}

impl Cpu {
    pub fn total_ns(&self) -> u64 {
        self.user_ns + self.sys_ns
    }

    /// `self - earlier`, saturating.
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            user_ns: self.user_ns.saturating_sub(earlier.user_ns),
            sys_ns: self.sys_ns.saturating_sub(earlier.sys_ns),
        }
    }

    pub fn add(&self, o: &Cpu) -> Cpu {
        Cpu {
            user_ns: self.user_ns + o.user_ns,
            sys_ns: self.sys_ns + o.sys_ns,
        }
    }
}

/// Fields of /proc/<pid>/stat after the command name (field 3 is index 0).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// The CPU of `pid` itself plus that of the children it has reaped.
pub fn process_cpu(pid: i32) -> Option<Cpu> {
    let f = stat_fields(pid)?;
    let t = ns_per_tick();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime 14, stime 15, cutime 16, cstime 17 (1-based) -> indexes 11..14.
    Some(Cpu {
        user_ns: (n(11) + n(13)) * t,
        sys_ns: (n(12) + n(14)) * t,
    })
}

/// `root` and all its descendants alive now.
pub fn tree(root: i32) -> Vec<i32> {
    let mut parent = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(f) = stat_fields(pid) {
                let ppid = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                parent.push((pid, ppid));
            }
        }
    }
    let mut set = BTreeSet::from([root]);
    loop {
        let before = set.len();
        for &(pid, ppid) in &parent {
            if set.contains(&ppid) {
                set.insert(pid);
            }
        }
        if set.len() == before {
            break;
        }
    }
    set.into_iter().collect()
}

/// CPU of the whole tree under `root` (reaped children included through their parents).
pub fn tree_cpu(root: i32) -> Cpu {
    tree(root)
        .into_iter()
        .filter_map(process_cpu)
        .fold(Cpu::default(), |a, c| a.add(&c))
}

/// A `VmHWM`/`VmRSS` style field of /proc/<pid>/status, in KiB.
pub fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Sum of the peak RSS (`VmHWM`) of every process of the tree, KiB.
pub fn tree_hwm_kb(root: i32) -> u64 {
    tree(root)
        .into_iter()
        .filter_map(|p| status_kb(p, "VmHWM"))
        .sum()
}

/// Machine-wide CPU time from the first line of /proc/stat, nanoseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// user + nice + system + irq + softirq, all CPUs.
    pub busy_ns: u64,
    pub softirq_ns: u64,
}

impl Machine {
    pub fn now() -> Machine {
        let s = fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = s
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let g = |i: usize| f.get(i).copied().unwrap_or(0) * ns_per_tick();
        // user nice system idle iowait irq softirq steal ...
        Machine {
            busy_ns: g(0) + g(1) + g(2) + g(5) + g(6),
            softirq_ns: g(6),
        }
    }

    pub fn since(&self, e: &Machine) -> Machine {
        Machine {
            busy_ns: self.busy_ns.saturating_sub(e.busy_ns),
            softirq_ns: self.softirq_ns.saturating_sub(e.softirq_ns),
        }
    }
}

/// Run time of every `ksoftirqd/N` thread, nanoseconds (softirq work deferred out of the
/// sender's context lands there).
pub fn ksoftirqd_ns() -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("ksoftirqd/") {
                total += fs::read_to_string(format!("/proc/{pid}/schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
