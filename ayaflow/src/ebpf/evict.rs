//! Flow mode: sweeps the kernel's `FLOWS` map every second and turns it into per-connection
//! deltas for the live table and the aggregated history.
//!
//! How (after netobserv's `pkg/tracer/tracer.go`): read every entry (`BPF_MAP_LOOKUP_BATCH`,
//! thousands of entries per syscall, so a sweep of 100,000 flows costs a few dozen syscalls;
//! the map is shared by all CPUs, so one value per entry) and subtract what the previous sweep
//! already reported (a shadow map in userspace). Entries idle for longer than [`IDLE_AFTER`] are removed with
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which returns the final values and deletes the entry in one
//! step, so a packet that lands between a read and a delete is never lost (aya 0.14 has no
//! wrapper for it on hash maps, hence the raw syscall). New keys created during a sweep
//! are picked up by the next one.

use std::{
    collections::hash_map,
    io,
    os::fd::{AsFd as _, AsRawFd},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use ayaflow_common::flow::{Direction, FlowKey, FlowStats};

use crate::flow::{FiveTuple, WireHashMap};

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

/// A `FlowStats` from the bytes the kernel wrote.
fn stats_at(buf: &[u8]) -> FlowStats {
    assert!(buf.len() >= size_of::<FlowStats>());
    // SAFETY: the buffer holds a whole FlowStats (plain old data) written by the kernel.
    unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<FlowStats>()) }
}

/// Owns the `FLOWS` map and the shadow of what was already reported.
pub struct FlowSweeper {
    map: Map,
    /// Totals reported so far, per live kernel entry.
    reported: WireHashMap<FlowKey, (u64, u64)>,
    /// Added to a [`flow_clock_ns`] time to get Unix time.
    clock_to_unix_ns: u64,
}

impl FlowSweeper {
    pub fn new(map: Map) -> io::Result<FlowSweeper> {
        if !matches!(map, Map::HashMap(_)) {
            return Err(io::Error::other(
                "FLOWS is not a BPF hash map: the kernel object does not match this agent",
            ));
        }
        let clock_to_unix_ns =
            super::ring::clock_ns(libc::CLOCK_REALTIME).saturating_sub(flow_clock_ns());
        Ok(FlowSweeper {
            map,
            reported: WireHashMap::default(),
            clock_to_unix_ns,
        })
    }

    fn data(&self) -> &MapData {
        match &self.map {
            Map::HashMap(d) => d,
            _ => unreachable!("checked in FlowSweeper::new"),
        }
    }

    /// Every entry of the map. One `BPF_MAP_LOOKUP_BATCH`
    /// syscall per [`BATCH`] entries (kernel 5.6+); two syscalls per entry (next key, lookup)
    /// where batches are not supported.
    fn read_all(&self) -> Vec<(FlowKey, FlowStats)> {
        match self.read_batched() {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!("batched read of FLOWS failed ({e}); reading key by key");
                let Ok(view) = HashMap::<&MapData, FlowKey, FlowStats>::try_from(&self.map) else {
                    return Vec::new();
                };
                view.iter().filter_map(Result::ok).collect()
            }
        }
    }

    fn read_batched(&self) -> io::Result<Vec<(FlowKey, FlowStats)>> {
        let stride = size_of::<FlowStats>();
        let mut keys = vec![FlowKey::default(); BATCH];
        let mut values = vec![0u8; BATCH * stride];
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
            // SAFETY: the key and value buffers hold BATCH entries, the batch tokens are 8 bytes,
            // and all outlive the call.
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
                all.push((*key, stats_at(&values[n * stride..(n + 1) * stride])));
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
    ///
    /// One shadow-map operation per entry. Deltas of keys seen for the first time come first,
    /// oldest first, so that a connection seen in both directions in one sweep is oriented from
    /// its initiator when the table creates its entry; the others (most of them, on a busy node)
    /// need no order, and sorting them would be a third of the sweep at 100,000 flows.
    pub fn sweep(&mut self, now: u64) -> Vec<FlowDelta> {
        let idle_after = IDLE_AFTER.as_nanos() as u64;
        let mut fresh = Vec::new();
        let mut known = Vec::with_capacity(self.reported.len());
        for (key, mut total) in self.read_all() {
            let idle = now.saturating_sub(total.last_seen_ns) > idle_after;
            let seen = if idle {
                match self.lookup_and_delete(&key) {
                    Ok(last) => total = last,
                    // Someone else removed it, or the kernel refused: retry on the next sweep.
                    Err(_) => continue,
                }
                self.reported.remove(&key)
            } else {
                match self.reported.entry(key) {
                    hash_map::Entry::Occupied(mut o) => {
                        Some(std::mem::replace(o.get_mut(), (total.packets, total.bytes)))
                    }
                    hash_map::Entry::Vacant(v) => {
                        v.insert((total.packets, total.bytes));
                        None
                    }
                }
            };
            let (seen_packets, seen_bytes) = seen.unwrap_or((0, 0));
            if total.packets <= seen_packets {
                continue;
            }
            let delta = FlowDelta {
                tuple: FiveTuple::from(&key),
                direction: Direction::from_u8(key.direction).unwrap_or(Direction::Ingress),
                packets: total.packets - seen_packets,
                bytes: total.bytes.saturating_sub(seen_bytes),
                first_seen_unix_ns: total.first_seen_ns + self.clock_to_unix_ns,
                last_seen_unix_ns: total.last_seen_ns + self.clock_to_unix_ns,
                tcp_flags: total.tcp_flags,
            };
            if seen.is_some() {
                known.push(delta);
            } else {
                fresh.push(delta);
            }
        }
        fresh.sort_by_key(|d| d.first_seen_unix_ns);
        fresh.append(&mut known);
        fresh
    }

    /// Reads the final values of `key` and deletes the entry, atomically.
    fn lookup_and_delete(&self, key: &FlowKey) -> io::Result<FlowStats> {
        let mut buf = [0u8; size_of::<FlowStats>()];
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
        // SAFETY: attr points at a key and a buffer of one value, both alive for the call.
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
        Ok(stats_at(&buf))
    }

    /// Entries currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.reported.len()
    }
}
