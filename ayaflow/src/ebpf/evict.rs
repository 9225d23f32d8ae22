//! Flow mode: sweeps the kernel's `FLOWS` map every second and turns it into per-connection
//! deltas for the live table and the aggregated history.
//!
//! How (after netobserv's `pkg/tracer/tracer.go`): read every entry with its per-CPU values
//! (`BPF_MAP_LOOKUP_BATCH`, thousands of entries per syscall, so a sweep of 100,000 flows costs
//! a few dozen syscalls) and subtract what the previous sweep already reported (a shadow map in
//! userspace). Entries idle for longer than [`IDLE_AFTER`] are removed with
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

/// CLOCK_MONOTONIC now: the clock of the flow map's first/last-seen times (the kernel reads it
/// with `bpf_ktime_get_coarse_ns`, which lags this by at most a jiffy).
pub fn flow_clock_ns() -> u64 {
    super::ring::clock_ns(libc::CLOCK_MONOTONIC)
}

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

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: usize = 4096;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Per-CPU values are laid out one per possible CPU, each rounded up to 8 bytes.
fn value_stride() -> usize {
    size_of::<FlowStats>().div_ceil(8) * 8
}

/// The `FlowStats` of each CPU in a buffer the kernel filled.
fn per_cpu_values(buf: &[u8], stride: usize) -> impl Iterator<Item = FlowStats> + '_ {
    buf.chunks_exact(stride).map(|c| {
        // SAFETY: each chunk starts with one FlowStats (plain old data) written by the kernel.
        unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<FlowStats>()) }
    })
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
    /// Added to a [`flow_clock_ns`] time to get Unix time.
    clock_to_unix_ns: u64,
}

impl FlowSweeper {
    pub fn new(map: Map) -> io::Result<FlowSweeper> {
        let possible_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let clock_to_unix_ns =
            super::ring::clock_ns(libc::CLOCK_REALTIME).saturating_sub(flow_clock_ns());
        Ok(FlowSweeper {
            map,
            reported: HashMap::new(),
            possible_cpus,
            clock_to_unix_ns,
        })
    }

    fn data(&self) -> &MapData {
        match &self.map {
            Map::PerCpuHashMap(d) => d,
            _ => unreachable!("checked when the sweeper was built from FLOWS"),
        }
    }

    /// Every entry of the map with its per-CPU values merged. One `BPF_MAP_LOOKUP_BATCH`
    /// syscall per [`BATCH`] entries (kernel 5.6+); two syscalls per entry (next key, lookup)
    /// where batches are not supported.
    fn read_all(&self) -> Vec<(FlowKey, FlowStats)> {
        match self.read_batched() {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!("batched read of FLOWS failed ({e}); reading key by key");
                let Ok(view) = PerCpuHashMap::<&MapData, FlowKey, FlowStats>::try_from(&self.map)
                else {
                    return Vec::new();
                };
                let keys: Vec<FlowKey> = view.keys().filter_map(Result::ok).collect();
                keys.into_iter()
                    .filter_map(|k| Some((k, merge(view.get(&k, 0).ok()?.iter().copied()))))
                    .collect()
            }
        }
    }

    fn read_batched(&self) -> io::Result<Vec<(FlowKey, FlowStats)>> {
        let stride = value_stride();
        let mut keys = vec![FlowKey::default(); BATCH];
        let mut values = vec![0u8; BATCH * stride * self.possible_cpus];
        // The hash map's batch token is a bucket index (u32); 8 bytes leave room.
        let (mut in_batch, mut out_batch) = (0u64, 0u64);
        let mut all = Vec::new();
        let mut first = true;
        loop {
            let attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &in_batch as *const u64 as u64
                },
                out_batch: &mut out_batch as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: self.data().fd().as_fd().as_raw_fd() as u32,
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: the key and value buffers hold BATCH entries (values for every possible
            // CPU), the batch tokens are 8 bytes, and all outlive the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &attr as *const BatchAttr,
                    size_of::<BatchAttr>() as u32,
                )
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            // The kernel reports how many entries it filled, also with ENOENT at the end.
            let filled = attr.count as usize;
            for (n, key) in keys.iter().enumerate().take(filled) {
                let per_cpu =
                    &values[n * stride * self.possible_cpus..(n + 1) * stride * self.possible_cpus];
                all.push((*key, merge(per_cpu_values(per_cpu, stride))));
            }
            match err {
                None => {}
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(all),
                Some(e) => return Err(e),
            }
            in_batch = out_batch;
            first = false;
        }
    }

    /// One sweep; `now` is [`flow_clock_ns`] now.
    pub fn sweep(&mut self, now: u64) -> Vec<FlowDelta> {
        let mut deltas = Vec::new();
        for (key, mut total) in self.read_all() {
            let idle = now.saturating_sub(total.last_seen_ns) > IDLE_AFTER.as_nanos() as u64;
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
                    first_seen_unix_ns: total.first_seen_ns + self.clock_to_unix_ns,
                    last_seen_unix_ns: total.last_seen_ns + self.clock_to_unix_ns,
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
        let stride = value_stride();
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
        Ok(merge(per_cpu_values(&buf, stride)))
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
