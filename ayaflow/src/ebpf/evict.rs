//! Flow mode: sweeps the kernel's `FLOWS` map every second and turns it into per-connection
//! deltas for the live table and the aggregated history.
//!
//! How (after netobserv's `pkg/tracer/tracer.go`): collect the keys first, then read each
//! entry's per-CPU values and subtract what the previous sweep already reported (a shadow map
//! in userspace). Entries idle for longer than [`IDLE_AFTER`] are removed with
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which returns the final values and deletes the entry in one
//! step, so a packet that lands between a read and a delete is never lost (aya 0.14 has no
//! wrapper for it on per-CPU hash maps, hence the raw syscall). New keys created during a sweep
//! are picked up by the next one.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd as _, AsRawFd},
    time::Duration,
};

use aya::maps::{Map, MapData, PerCpuHashMap};
use ayaflow_common::flow::{Direction, FlowKey, FlowStats};

use crate::flow::FiveTuple;

/// How often the map is swept. This bounds how stale the live view is in flow mode.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// An entry whose last packet is older than this is removed from the kernel map.
pub const IDLE_AFTER: Duration = Duration::from_secs(2);

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// What one connection direction added since the previous sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowDelta {
    pub tuple: FiveTuple,
    pub direction: Direction,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_unix_ns: u64,
    pub last_seen_unix_ns: u64,
    pub tcp_flags: u8,
}

/// Per-CPU values summed into one.
fn merge(values: impl IntoIterator<Item = FlowStats>) -> FlowStats {
    let mut total = FlowStats::default();
    for v in values {
        if v.packets == 0 {
            continue;
        }
        if v.first_seen_ns != 0
            && (total.first_seen_ns == 0 || v.first_seen_ns < total.first_seen_ns)
        {
            total.first_seen_ns = v.first_seen_ns;
        }
        total.last_seen_ns = total.last_seen_ns.max(v.last_seen_ns);
        total.packets += v.packets;
        total.bytes += v.bytes;
        total.tcp_flags |= v.tcp_flags;
    }
    total
}

/// Owns the `FLOWS` map and the shadow of what was already reported.
pub struct FlowSweeper {
    map: Map,
    /// Totals reported so far, per live kernel entry.
    reported: HashMap<FlowKey, (u64, u64)>,
    possible_cpus: usize,
    boot_to_unix_ns: u64,
}

impl FlowSweeper {
    pub fn new(map: Map, boot_to_unix_ns: u64) -> io::Result<FlowSweeper> {
        let possible_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(FlowSweeper {
            map,
            reported: HashMap::new(),
            possible_cpus,
            boot_to_unix_ns,
        })
    }

    fn data(&self) -> &MapData {
        match &self.map {
            Map::PerCpuHashMap(d) => d,
            _ => unreachable!("checked when the sweeper was built from FLOWS"),
        }
    }

    /// One sweep; `now_boot_ns` is CLOCK_BOOTTIME now.
    pub fn sweep(&mut self, now_boot_ns: u64) -> Vec<FlowDelta> {
        let Ok(view) = PerCpuHashMap::<&MapData, FlowKey, FlowStats>::try_from(&self.map) else {
            return Vec::new();
        };
        let keys: Vec<FlowKey> = view.keys().filter_map(Result::ok).collect();
        let mut deltas = Vec::new();
        for key in keys {
            let Ok(values) = view.get(&key, 0) else {
                continue;
            };
            let mut total = merge(values.iter().copied());
            let idle =
                now_boot_ns.saturating_sub(total.last_seen_ns) > IDLE_AFTER.as_nanos() as u64;
            if idle {
                match self.lookup_and_delete(&key) {
                    Ok(last) => total = last,
                    // Someone else removed it, or the kernel refused: retry on the next sweep.
                    Err(_) => continue,
                }
            }
            let (seen_packets, seen_bytes) = self.reported.get(&key).copied().unwrap_or((0, 0));
            if total.packets > seen_packets {
                deltas.push(FlowDelta {
                    tuple: FiveTuple::from(&key),
                    direction: Direction::from_u8(key.direction).unwrap_or(Direction::Ingress),
                    packets: total.packets - seen_packets,
                    bytes: total.bytes.saturating_sub(seen_bytes),
                    first_seen_unix_ns: total.first_seen_ns + self.boot_to_unix_ns,
                    last_seen_unix_ns: total.last_seen_ns + self.boot_to_unix_ns,
                    tcp_flags: total.tcp_flags,
                });
            }
            if idle {
                self.reported.remove(&key);
            } else {
                self.reported.insert(key, (total.packets, total.bytes));
            }
        }
        // Oldest first, so that a connection seen in both directions in one sweep is oriented
        // from its initiator when the table creates its entry.
        deltas.sort_by_key(|d| d.first_seen_unix_ns);
        deltas
    }

    /// Reads the final per-CPU values of `key` and deletes the entry, atomically.
    fn lookup_and_delete(&self, key: &FlowKey) -> io::Result<FlowStats> {
        // Per-CPU values are laid out one per possible CPU, each rounded up to 8 bytes.
        let stride = size_of::<FlowStats>().div_ceil(8) * 8;
        let mut buf = vec![0u8; stride * self.possible_cpus];
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let attr = ElemAttr {
            map_fd: self.data().fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key as *const FlowKey as u64,
            value: buf.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: attr points at a key and a buffer sized for every possible CPU, both alive
        // for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &attr as *const ElemAttr,
                size_of::<ElemAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let values = buf.chunks_exact(stride).map(|c| {
            // SAFETY: each chunk holds one FlowStats (plain old data) written by the kernel.
            unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<FlowStats>()) }
        });
        Ok(merge(values))
    }

    /// Entries currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.reported.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_and_spans_cpus() {
        let a = FlowStats {
            first_seen_ns: 10,
            last_seen_ns: 20,
            packets: 2,
            bytes: 100,
            tcp_flags: 0x02,
            ..Default::default()
        };
        let b = FlowStats {
            first_seen_ns: 5,
            last_seen_ns: 30,
            packets: 1,
            bytes: 60,
            tcp_flags: 0x10,
            ..Default::default()
        };
        let idle_cpu = FlowStats::default();
        let m = merge([a, idle_cpu, b]);
        assert_eq!(
            (
                m.first_seen_ns,
                m.last_seen_ns,
                m.packets,
                m.bytes,
                m.tcp_flags
            ),
            (5, 30, 3, 160, 0x12)
        );
    }
}
