//! Per-packet accounting: counters, then an event (raw mode) or the flow map (flow mode).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::TcContext,
};
use ayaflow_common::{
    counters::Counter,
    event::{EVENT_FLAG_FLOW_FALLBACK, EVENT_FLAG_PARSE_ERROR, PacketEvent},
    flow::{
        ETH_P_IP, ETH_P_IPV6, FlowStats, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    },
    globals::CAPTURE_MODE_FLOWS,
};

use crate::{
    maps::{COUNTERS, EVENTS, FLOWS},
    parse::{Parsed, parse},
};

/// Load-time constant set by the agent (`globals::CAPTURE_MODE`); the verifier sees the value,
/// so the mode not chosen is dead code.
#[unsafe(no_mangle)]
static CAPTURE_MODE: u32 = 0;

/// Load-time constant set by the agent (`globals::WAKEUP_BYTES`): a submit wakes the agent only
/// when more than this is waiting; otherwise its timer drains the ring.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

const EEXIST: i64 = 17;

#[inline(always)]
pub fn observe(ctx: &TcContext, direction: u8) {
    let mut p = Parsed::default();
    p.key.direction = direction;
    if parse(ctx, &mut p).is_err() {
        p.flags |= EVENT_FLAG_PARSE_ERROR;
    }
    // SAFETY: reading a field of the context the kernel handed us.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs };
    let packets = if gso_segs > 1 { gso_segs } else { 1 };
    // A GSO aggregate carries its headers once; on the wire every segment repeats them.
    let bytes = ctx.len() + (packets - 1) * p.header_len;

    let proto_counter = match p.key.ether_type {
        ETH_P_IP | ETH_P_IPV6 => match p.key.protocol {
            IPPROTO_TCP => Counter::Tcp,
            IPPROTO_UDP => Counter::Udp,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => Counter::Icmp,
            _ => Counter::OtherIp,
        },
        _ => Counter::NonIp,
    };
    let counters = COUNTERS.get_ptr_mut(direction as u32);
    if let Some(c) = counters {
        // SAFETY: per-CPU slot of this CPU; TC runs with preemption off.
        let c = unsafe { &mut *c };
        c.values[Counter::Packets as usize] += packets as u64;
        c.values[Counter::Bytes as usize] += bytes as u64;
        c.values[proto_counter as usize] += packets as u64;
        if p.flags & EVENT_FLAG_PARSE_ERROR != 0 {
            c.values[Counter::ParseErrors as usize] += 1;
        }
    }

    // SAFETY: a load-time constant; volatile so the compiler does not fold the default.
    let mode = unsafe { core::ptr::read_volatile(&CAPTURE_MODE) };
    if mode == CAPTURE_MODE_FLOWS {
        // The coarse CLOCK_MONOTONIC (jiffy resolution, a plain read) rather than
        // `bpf_ktime_get_boot_ns`, which costs about 30 ns here, a third of the whole program
        // (BENCHMARKS.md, section 1). The sweep reads the map once a second, so first/last-seen
        // times need no finer grain.
        // SAFETY: a plain helper call.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        if add_to_flow(&p, packets, bytes, now) {
            return;
        }
        p.flags |= EVENT_FLAG_FLOW_FALLBACK;
        bump(counters, Counter::FlowFallbacks);
    }

    // Events keep nanosecond CLOCK_BOOTTIME times: raw history orders packets by them.
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };

    match EVENTS.reserve::<PacketEvent>(0) {
        Some(mut entry) => {
            entry.write(PacketEvent {
                timestamp_ns: now,
                key: p.key,
                bytes,
                packets,
                tcp_flags: p.tcp_flags,
                icmp_type: p.icmp_type,
                icmp_code: p.icmp_code,
                flags: p.flags,
                vlan_id: p.vlan_id,
                _pad: [0; 2],
            });
            // SAFETY: a load-time constant, as CAPTURE_MODE.
            let wake_at = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > wake_at {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags as u64);
        }
        None => bump(counters, Counter::RingbufDrops),
    }
}

#[inline(always)]
fn bump(counters: Option<*mut ayaflow_common::counters::CounterBlock>, counter: Counter) {
    if let Some(c) = counters {
        // SAFETY: as in `observe`.
        unsafe { (*c).values[counter as usize] += 1 };
    }
}

/// Adds the packet to its `FLOWS` entry. Returns false when the map is full.
#[inline(always)]
fn add_to_flow(p: &Parsed, packets: u32, bytes: u32, now: u64) -> bool {
    if let Some(s) = FLOWS.get_ptr_mut(&p.key) {
        add(s, p, packets, bytes, now);
        return true;
    }
    // A new connection's first packet gets the precise clock (the same CLOCK_MONOTONIC as the
    // coarse one): the agent orients a connection seen both ways in one sweep by which side
    // came first, and SYN and SYN-ACK are usually within one jiffy. Once per flow, not per packet.
    // SAFETY: a plain helper call.
    let first = unsafe { bpf_ktime_get_ns() }.max(now);
    let fresh = FlowStats {
        first_seen_ns: first,
        last_seen_ns: first,
        packets: packets as u64,
        bytes: bytes as u64,
        tcp_flags: p.tcp_flags,
        icmp_type: p.icmp_type,
        icmp_code: p.icmp_code,
        _pad: [0; 5],
    };
    match FLOWS.insert(&p.key, &fresh, BPF_NOEXIST as u64) {
        Ok(()) => true,
        // Another CPU inserted the key between our lookup and insert: add to its entry.
        Err(e) if e as i64 == -EEXIST => match FLOWS.get_ptr_mut(&p.key) {
            Some(s) => {
                add(s, p, packets, bytes, now);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

/// Adds to an entry other CPUs may update at the same time: the sums with atomic adds (exact),
/// the TCP flags with an atomic OR (only when a flag is new, which is rare), the last-seen time
/// and ICMP type/code with plain stores (any recent value will do: last-seen only decides when
/// an idle entry is removed).
#[inline(always)]
fn add(s: *mut FlowStats, p: &Parsed, packets: u32, bytes: u32, now: u64) {
    // SAFETY: `s` points at a live map value (RCU keeps it valid while the program runs).
    unsafe {
        atomic_add(&raw mut (*s).packets, packets as u64);
        atomic_add(&raw mut (*s).bytes, bytes as u64);
        // Coarse time can lag the precise first-seen time by up to a jiffy.
        if now > (*s).last_seen_ns {
            (*s).last_seen_ns = now;
        }
        let flags = p.tcp_flags;
        if flags & !(*s).tcp_flags != 0 {
            // BPF atomics are 32 or 64 bits: OR the 8-aligned word that starts with
            // `tcp_flags` (little endian, so the flags are its low byte).
            atomic_or((&raw mut (*s).tcp_flags).cast::<u64>(), flags as u64);
        }
        if p.icmp_type != 0 || p.icmp_code != 0 {
            (*s).icmp_type = p.icmp_type;
            (*s).icmp_code = p.icmp_code;
        }
    }
}

// Rust's BPF target has no compare-and-swap, so `core`'s atomics offer no read-modify-write;
// the instructions themselves exist (BPF_ATOMIC, the OR since kernel 5.12), hence the asm.

/// `*ptr += v` as one atomic instruction. `ptr` must be 8-aligned and valid.
#[inline(always)]
unsafe fn atomic_add(ptr: *mut u64, v: u64) {
    // SAFETY: the caller's contract; the instruction touches only *ptr.
    unsafe { core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) ptr, v = in(reg) v) };
}

/// `*ptr |= v` as one atomic instruction. `ptr` must be 8-aligned and valid.
#[inline(always)]
unsafe fn atomic_or(ptr: *mut u64, v: u64) {
    // SAFETY: as for `atomic_add`.
    unsafe { core::arch::asm!("lock *(u64 *)({p} + 0) |= {v}", p = in(reg) ptr, v = in(reg) v) };
}
