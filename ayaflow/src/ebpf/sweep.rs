//! Flow mode: sweeps the kernel's flow table every second and turns it into per-connection
//! deltas for the live table and the aggregated history.
//!
//! The table (see `ayaflow_common::flow::FlowSlot`) is BPF arrays that this module maps into
//! the agent's memory (`BPF_F_MMAPABLE`), so a sweep is a walk over memory, without a system
//! call. The kernel adds to a slot's sums (one word, `ayaflow_common::flow::counts`) with an
//! atomic add; a sweep takes them with an atomic exchange (`swap(0)`), so what it reads is
//! exactly what was added since the previous sweep: no copy of the previous totals is kept,
//! and no packet is lost or counted twice.
//!
//! A slot's `state` says who may do what (see `ayaflow_common::flow`):
//! - `EMPTY` -> `LIVE`: the kernel program, for a connection's first packet, with a slot it
//!   popped off the free stack and then pointed an index position at.
//! - `LIVE` -> `DRAINING`: a sweep, once no packet was added for [`IDLE_AFTER`]. The kernel
//!   program no longer matches a draining slot (a new packet of that connection gets a new
//!   slot), but a program that matched it just before may still be adding.
//! - `DRAINING` -> `EMPTY`: a later sweep, at least [`DRAIN_GRACE`] after and once an RCU grace
//!   period has passed (every program run that may have matched the slot has ended): it takes
//!   what was added meanwhile, empties the slot's index position, clears the key,
//!   and pushes the slot back onto the free stack.
//!
//! The kernel reads no clock per packet, so a delta's last-seen time is the sweep that took it
//! (within [`SWEEP_INTERVAL`] of the packet); first-seen times are the kernel's, exact.

use std::{
    io,
    marker::PhantomData,
    os::fd::AsFd as _,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use super::mapping::{Mapping, page_size};
use crate::ifname::{IfindexNames, IfindexReader};
use aya::maps::Map;
use ayaflow_common::flow::{
    Direction, FlowKey, FlowSlot, INDEX_EMPTY, SLOT_DRAINING, SLOT_EMPTY, SLOT_LIVE, SlotClaim,
    counts, free_stack,
};

use crate::flow::FiveTuple;

/// How often the table is swept. This bounds how stale the live view is in flow mode.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// A slot to which no packet was added for this long is drained and freed.
pub const IDLE_AFTER: Duration = Duration::from_secs(2);
/// How long a draining slot waits before it is freed, at least: far longer than a run of the
/// kernel program (microseconds), which may have matched the slot just before it was drained.
/// The sweep also waits for an RCU grace period (`wait_for_program_runs`), which covers a run
/// delayed past this.
pub const DRAIN_GRACE: Duration = Duration::from_millis(100);

/// CLOCK_MONOTONIC now: the clock of the flow table's first-seen times (the kernel reads it
/// with `bpf_ktime_get_ns`) and of the sweeps.
pub fn flow_clock_ns() -> u64 {
    crate::clock::clock_ns(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds to add to a [`flow_clock_ns`] time to get Unix time, as the clocks are now.
fn clock_to_unix_ns() -> u64 {
    crate::clock::clock_ns(libc::CLOCK_REALTIME).saturating_sub(flow_clock_ns())
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
    /// The TCP flags first seen in this delta's packets (bits reported before are left out).
    pub tcp_flags: u8,
    /// Type and code of the connection's latest ICMP/ICMPv6 message (0 otherwise).
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// A BPF array created with `BPF_F_MMAPABLE`, mapped into this process and accessed in place.
struct Mapped<T> {
    mapping: Mapping,
    len: usize,
    _values: PhantomData<T>,
}

impl<T> Mapped<T> {
    fn map(name: &str, map: &Map) -> io::Result<Mapped<T>> {
        let Map::Array(data) = map else {
            return Err(io::Error::other(format!(
                "{name} is not a BPF array: the kernel object does not match this agent"
            )));
        };
        let info = data.info().map_err(io::Error::other)?;
        if info.value_size() as usize != size_of::<T>() {
            return Err(io::Error::other(format!(
                "{name} holds {}-byte values, this agent expects {}: the kernel object does not \
                 match this agent",
                info.value_size(),
                size_of::<T>()
            )));
        }
        let len = info.max_entries() as usize;
        let page = page_size();
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        Ok(Mapped {
            mapping: Mapping::new(data.fd().as_fd(), bytes, prot, 0, name)?,
            len,
            _values: PhantomData,
        })
    }

    fn at(&self, i: usize) -> *mut T {
        assert!(i < self.len);
        // SAFETY: in bounds of the mapping (checked above); the base is page-aligned and the
        // values are 8-byte multiples, so every value is 8-aligned.
        unsafe { self.mapping.ptr().cast::<T>().add(i) }
    }
}

/// What a sweep knows about a slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Seen {
    /// Empty, or live but not reported yet: its first delta is a new connection's.
    #[default]
    New,
    /// Reported; packets were last added before the sweep at this [`flow_clock_ns`] time.
    Active(u64),
    /// Set to draining at this [`flow_clock_ns`] time.
    Draining(u64),
}

/// The flow table's maps, as `KernelProgram::take_flows` takes them.
pub struct FlowMaps {
    /// `FLOWS`: the slots.
    pub slots: Map,
    /// `FLOW_CLAIMS`: first-seen time and index position of each slot.
    pub claims: Map,
    /// `FLOW_INDEX`: the hash index.
    pub index: Map,
    /// `FLOW_FREE` and `FLOW_FREE_TOP`: the free stack.
    pub free: Map,
    pub free_top: Map,
    /// `FLOWS_USED`: one bit per slot in use.
    pub used: Map,
}

/// Owns the flow table: its slots, their claims, index, free stack and used bits.
pub struct FlowSweeper {
    table: Mapped<FlowSlot>,
    claims: Mapped<SlotClaim>,
    index: Mapped<u32>,
    free: Mapped<u32>,
    free_top: Mapped<u64>,
    /// Bit `i % 64` of word `i / 64` is set while slot `i` may hold a connection.
    used: Mapped<u64>,
    seen: Vec<Seen>,
    /// Which interface each key's ifindex is.
    names: IfindexNames,
    /// The TCP flags already reported for each slot. The kernel ORs a connection's flags into
    /// its slot for as long as the slot lives; a delta carries only the bits new since the
    /// slot's last delta, so that a SYN seen in one sweep is not seen again with the FIN of a
    /// later one (which the live table would take for a new connection).
    reported_flags: Vec<u8>,
    /// Added to a [`flow_clock_ns`] time to get Unix time. Taken again at every sweep: the
    /// system clock can be stepped (NTP, an operator) while the monotonic clock runs on.
    clock_to_unix_ns: u64,
    /// Kept from sweep to sweep: with 100,000 flows a sweep's deltas are megabytes, which a
    /// fresh allocation would have the kernel zero again every second (perf: about 8 % of the
    /// agent's samples at 100,000 flows, with the copy that joined the two lists).
    slots: Vec<usize>,
    /// Draining slots past their grace, freed at the end of a sweep.
    drained: Vec<usize>,
    fresh: Vec<FlowDelta>,
    known: Vec<FlowDelta>,
}

impl FlowSweeper {
    /// Maps the flow table's arrays (the maps themselves may be dropped after: the mappings
    /// keep the memory alive).
    pub fn new(maps: &FlowMaps) -> io::Result<FlowSweeper> {
        let table = Mapped::<FlowSlot>::map("FLOWS", &maps.slots)?;
        let claims = Mapped::<SlotClaim>::map("FLOW_CLAIMS", &maps.claims)?;
        let index = Mapped::<u32>::map("FLOW_INDEX", &maps.index)?;
        let free = Mapped::<u32>::map("FLOW_FREE", &maps.free)?;
        let free_top = Mapped::<u64>::map("FLOW_FREE_TOP", &maps.free_top)?;
        let used = Mapped::<u64>::map("FLOWS_USED", &maps.used)?;
        let n = table.len;
        if used.len * 64 < n || claims.len != n || free.len != n || free_top.len != 1 {
            return Err(io::Error::other(format!(
                "the flow table's arrays do not match ({n} slots, {} claims, {} free entries,                  {} used bits): the kernel object does not match this agent",
                claims.len,
                free.len,
                used.len * 64
            )));
        }
        Ok(FlowSweeper {
            seen: vec![Seen::New; n],
            names: IfindexNames::default(),
            reported_flags: vec![0; n],
            table,
            claims,
            index,
            free,
            free_top,
            used,
            clock_to_unix_ns: clock_to_unix_ns(),
            slots: Vec::new(),
            drained: Vec::new(),
            fresh: Vec::new(),
            known: Vec::new(),
        })
    }

    /// The bits of `FLOWS_USED` word `w`.
    fn used_word(&self, w: usize) -> &AtomicU64 {
        // SAFETY: a valid, aligned u64 of the mapping, changed by the kernel only atomically.
        unsafe { AtomicU64::from_ptr(self.used.at(w)) }
    }

    /// One sweep; `now` is [`flow_clock_ns`] now (`u64::MAX` treats every slot as idle).
    ///
    /// Deltas of connections seen for the first time come first, oldest first, so that a
    /// connection seen in both directions in one sweep is oriented from its initiator when the
    /// table creates its entry; the others (most of them, on a busy node) need no order.
    ///
    /// The deltas are in buffers the sweeper keeps and reuses (no allocation per sweep on a busy
    /// node): they are valid until the next sweep; `.copied().collect()` keeps them longer.
    pub fn sweep(&mut self, now: u64) -> impl Iterator<Item = &FlowDelta> + Clone {
        let idle_after = IDLE_AFTER.as_nanos() as u64;
        let grace = DRAIN_GRACE.as_nanos() as u64;
        self.clock_to_unix_ns = clock_to_unix_ns();
        let clock = flow_clock_ns();
        let last_seen_unix_ns = clock + self.clock_to_unix_ns;
        let mut fresh = std::mem::take(&mut self.fresh);
        let mut known = std::mem::take(&mut self.known);
        fresh.clear();
        known.clear();
        let mut slots = std::mem::take(&mut self.slots);
        self.used_slots(&mut slots);
        let mut drained = std::mem::take(&mut self.drained);
        drained.clear();
        let names = self.names.clone();
        let mut names = names.reader();
        for &i in &slots {
            // SAFETY: `i` is a slot of the mapping; fields the kernel changes are accessed
            // atomically, the others only while the state forbids the kernel to change them (a
            // live or draining slot's key, its claim).
            let s = unsafe { SlotRef::new(self.table.at(i)) };
            match s.state().load(Ordering::Acquire) {
                SLOT_LIVE => {
                    let mut last_active = match self.seen[i] {
                        Seen::Active(t) => t,
                        _ => clock,
                    };
                    if let Some(mut d) = s.take(&mut names) {
                        self.date(i, &mut d, last_seen_unix_ns);
                        self.report_new_flags(i, &mut d);
                        if self.seen[i] == Seen::New {
                            fresh.push(d);
                        } else {
                            known.push(d);
                        }
                        last_active = clock;
                    }
                    self.seen[i] = Seen::Active(last_active);
                    if now.saturating_sub(last_active) > idle_after
                        && s.state()
                            .compare_exchange(
                                SLOT_LIVE,
                                SLOT_DRAINING,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                    {
                        self.seen[i] = Seen::Draining(clock);
                    }
                }
                SLOT_DRAINING => {
                    let since = match self.seen[i] {
                        Seen::Draining(t) => t,
                        // Not set by this sweeper (cannot happen with one agent per table):
                        // give it the full grace from now.
                        _ => {
                            self.seen[i] = Seen::Draining(clock);
                            continue;
                        }
                    };
                    if clock.saturating_sub(since) >= grace {
                        drained.push(i);
                    }
                }
                // Empty, or being claimed by the kernel right now (the next sweep reads it).
                _ => {}
            }
        }
        if !drained.is_empty() {
            // Every program run that saw one of these slots live has ended once an RCU grace
            // period has passed (programs run inside RCU read-side sections): only then are
            // their additions all in and the slot safe to free. The time grace alone was not
            // enough: a run delayed past it (a preempted BPF_PROG_TEST_RUN, a descheduled
            // vCPU) added to a slot already freed, and its packet was lost.
            wait_for_program_runs();
        }
        for &i in &drained {
            // SAFETY: as above.
            let s = unsafe { SlotRef::new(self.table.at(i)) };
            // Late additions: from programs that matched the slot just before it was drained.
            if let Some(mut d) = s.take(&mut names) {
                self.date(i, &mut d, last_seen_unix_ns);
                self.report_new_flags(i, &mut d);
                known.push(d);
            }
            self.free_slot(i, &s);
        }
        self.drained = drained;
        fresh.sort_by_key(|d| d.first_seen_unix_ns);
        self.slots = slots;
        self.fresh = fresh;
        self.known = known;
        self.fresh.iter().chain(self.known.iter())
    }

    /// Dates a delta taken from slot `i`: first seen from the slot's claim (the kernel's
    /// clock), last seen by the sweep (`last_seen_unix_ns`), never before the first.
    fn date(&self, i: usize, d: &mut FlowDelta, last_seen_unix_ns: u64) {
        // SAFETY: written by the kernel before the slot went live; the slot is live or draining.
        let first =
            unsafe { std::ptr::read_volatile(&raw const (*self.claims.at(i)).first_seen_ns) };
        d.first_seen_unix_ns = first + self.clock_to_unix_ns;
        d.last_seen_unix_ns = last_seen_unix_ns.max(d.first_seen_unix_ns);
    }

    /// Keeps in `d` only the TCP flags slot `i` has not reported yet (the slot's flags only
    /// ever gain bits while it lives).
    fn report_new_flags(&mut self, i: usize, d: &mut FlowDelta) {
        let seen = d.tcp_flags;
        d.tcp_flags &= !self.reported_flags[i];
        self.reported_flags[i] = seen;
    }

    /// Frees drained slot `i`: empties its index position, clears its bit and key, and pushes
    /// it onto the free stack. Nothing can reach the slot any more once the position is empty
    /// (a program that read the position just before finds the slot draining, or, after the
    /// slot is reused, a key it compares).
    fn free_slot(&mut self, i: usize, s: &SlotRef) {
        // SAFETY: written by the kernel before the slot went live.
        let pos = unsafe { std::ptr::read_volatile(&raw const (*self.claims.at(i)).index_pos) };
        if (pos as usize) < self.index.len {
            let p = self.index.at(pos as usize);
            // SAFETY: a valid, aligned u32 of the mapping, changed by the kernel only
            // atomically. Only this slot's number is cleared: nothing else points here.
            let e = unsafe { AtomicU32::from_ptr(p) };
            let _ = e.compare_exchange(
                i as u32 + 1,
                INDEX_EMPTY,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        // The bit first: the kernel can claim the slot (and set the bit) only once it is free.
        self.used_word(i / 64)
            .fetch_and(!(1u64 << (i % 64)), Ordering::AcqRel);
        s.free();
        self.seen[i] = Seen::New;
        self.reported_flags[i] = 0;
        self.push_free(i as u32);
    }

    /// Pushes slot `n` onto the free stack (see `ayaflow_common::flow::free_stack`). The
    /// kernel pops at the same time; a compare-and-exchange of the top word that fails is
    /// retried.
    fn push_free(&self, n: u32) {
        let slots = self.table.len as u32;
        // SAFETY: the mapping's one top word, changed by the kernel only atomically.
        let top = unsafe { AtomicU64::from_ptr(self.free_top.at(0)) };
        let mut word = top.load(Ordering::Acquire);
        loop {
            let (generation, taken) = free_stack::split(word);
            // Every slot is either on the stack or taken, so a slot being freed is taken.
            debug_assert!(taken > 0 && taken <= slots);
            let entry = slots - taken;
            // SAFETY: an entry just above the top, which the kernel does not read until the
            // exchange below succeeds.
            unsafe {
                AtomicU32::from_ptr(self.free.at(entry as usize))
                    .store(free_stack::encode(n, entry), Ordering::Relaxed)
            };
            let next = free_stack::top_word(generation.wrapping_add(1), taken - 1);
            match top.compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => word = now,
            }
        }
    }

    /// Indices of the slots whose `FLOWS_USED` bit is set, as the bits are now.
    fn used_slots(&self, slots: &mut Vec<usize>) {
        slots.clear();
        for w in 0..self.used.len {
            let mut bits = self.used_word(w).load(Ordering::Acquire);
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                if i < self.table.len {
                    slots.push(i);
                }
                bits &= bits - 1;
            }
        }
    }

    /// Numbers of the slots the kernel has claimed and the sweeper not freed yet, ascending.
    pub fn slots_in_use(&self) -> Vec<usize> {
        let mut slots = Vec::new();
        self.used_slots(&mut slots);
        slots
    }

    /// Resolves the keys' interfaces with `names` (the agent's link follower fills it); by
    /// default an ifindex shows as `if<ifindex>`.
    pub fn set_interface_names(&mut self, names: IfindexNames) {
        self.names = names;
    }

    /// Slots holding a connection (live or draining), for tests and metrics.
    pub fn tracked(&self) -> usize {
        self.seen.iter().filter(|s| **s != Seen::New).count()
    }

    /// Slots in the table.
    pub fn capacity(&self) -> usize {
        self.table.len
    }
}

/// Waits until every BPF program run that started before the call has ended: an RCU grace
/// period, through `membarrier(MEMBARRIER_CMD_GLOBAL)` (which calls `synchronize_rcu`; kernel
/// 4.3 and later). Where that is refused (a kernel with `nohz_full`, a seccomp profile without
/// `membarrier`), slots are freed after [`DRAIN_GRACE`] alone, which a program run delayed
/// longer than that can miss; this is logged once.
pub fn wait_for_program_runs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    static WARNED: std::sync::Once = std::sync::Once::new();
    // SAFETY: a syscall with integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        let e = io::Error::last_os_error();
        WARNED.call_once(|| {
            tracing::warn!(
                "membarrier(MEMBARRIER_CMD_GLOBAL) failed ({e}): flow-table slots are freed \
                 after a {DRAIN_GRACE:?} grace instead of an RCU grace period; allow the \
                 membarrier syscall (seccomp) so that no late addition can be missed"
            )
        });
    }
}

/// Access to one mapped slot.
struct SlotRef(*mut FlowSlot);

impl SlotRef {
    /// # Safety
    /// `slot` must point at a valid, 8-aligned `FlowSlot` for as long as the value is used.
    unsafe fn new(slot: *mut FlowSlot) -> SlotRef {
        SlotRef(slot)
    }

    fn state(&self) -> &AtomicU32 {
        // SAFETY: a valid, aligned u32 (see `new`), changed by the kernel only atomically.
        unsafe { AtomicU32::from_ptr(&raw mut (*self.0).state) }
    }

    fn u64_at(&self, field: *mut u64) -> &AtomicU64 {
        // SAFETY: `field` is an 8-aligned u64 of this slot.
        unsafe { AtomicU64::from_ptr(field) }
    }

    /// Takes the sums added since the last take, with what the slot says about its connection
    /// (times are left at zero for the caller); `None` if nothing was added. One exchange takes
    /// both sums (`ayaflow_common::flow::counts`), so they always agree.
    fn take(&self, names: &mut IfindexReader<'_>) -> Option<FlowDelta> {
        // SAFETY: fields of this slot; the key does not change while the slot is live or
        // draining; flags and ICMP bytes are read as one atomic word.
        unsafe {
            let word = self
                .u64_at(&raw mut (*self.0).counts)
                .swap(0, Ordering::AcqRel);
            if word == 0 {
                return None;
            }
            let (packets, bytes) = counts::split(word);
            let key: FlowKey = std::ptr::read_volatile(&raw const (*self.0).key);
            let extras = AtomicU32::from_ptr((&raw mut (*self.0).tcp_flags).cast::<u32>())
                .load(Ordering::Relaxed);
            Some(FlowDelta {
                tuple: FiveTuple::from_key(&key, names.get(key.ifindex)),
                direction: Direction::from_u8(key.direction).unwrap_or(Direction::Ingress),
                packets,
                bytes,
                first_seen_unix_ns: 0,
                last_seen_unix_ns: 0,
                tcp_flags: extras as u8,
                icmp_type: (extras >> 8) as u8,
                icmp_code: (extras >> 16) as u8,
            })
        }
    }

    /// Clears a drained slot (the caller then frees it).
    fn free(&self) {
        // SAFETY: the slot is draining, past its grace and no longer indexed: no one else
        // writes it.
        unsafe { std::ptr::write_volatile(&raw mut (*self.0).key, FlowKey::default()) };
        self.state().store(SLOT_EMPTY, Ordering::Release);
    }
}
