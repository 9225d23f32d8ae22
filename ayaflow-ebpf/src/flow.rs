//! Per-packet accounting: counters, then an event (raw mode) or the flow table (flow mode).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_ns},
    programs::TcContext,
};
use ayaflow_common::{
    counters::{Counter, IFINDEX_DIRECT, counter_index},
    event::{EVENT_FLAG_FLOW_FALLBACK, EVENT_FLAG_PARSE_ERROR, PacketEvent},
    flow::{
        ETH_P_IP, ETH_P_IPV6, FLOW_PROBES, FlowKey, FlowSlot, INDEX_EMPTY, INDEX_RESERVED,
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, KEY_WORDS, SLOT_LIVE, counts,
        flow_hash, free_stack,
    },
    globals::CAPTURE_MODE_FLOWS,
};

use crate::{
    maps::{
        COUNTERS, EVENTS, FLOW_CLAIMS, FLOW_FREE, FLOW_FREE_TOP, FLOW_INDEX, FLOWS, FLOWS_USED,
        IFACE_SLOTS, IFACE_SLOTS_HIGH,
    },
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

/// Load-time constant set by the agent (`globals::FLOW_HASH_SEED`).
#[unsafe(no_mangle)]
static FLOW_HASH_SEED: u64 = 0;

/// Load-time constant set by the agent (`globals::FLOW_INDEX_MASK`): `FLOW_INDEX` positions
/// minus one.
#[unsafe(no_mangle)]
static FLOW_INDEX_MASK: u32 = 0;

/// Load-time constant set by the agent (`globals::FLOW_SLOTS`): slots of `FLOWS`.
#[unsafe(no_mangle)]
static FLOW_SLOTS: u32 = 0;

/// Counts and records one packet seen by the hook of `direction`; `L3`: on a link without a
/// link-layer header (see `parse`).
#[inline(always)]
pub fn observe<const L3: bool>(ctx: &TcContext, direction: u8) {
    let mut p = Parsed::default();
    p.key.direction = direction;
    // SAFETY: reading a field of the context the kernel handed us.
    p.key.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if parse::<L3>(ctx, &mut p).is_err() {
        p.flags |= EVENT_FLAG_PARSE_ERROR;
    }
    // SAFETY: reading a field of the context the kernel handed us.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs };
    let packets = if gso_segs > 1 { gso_segs } else { 1 };
    // A GSO aggregate carries its headers once; on the wire every segment repeats them. An
    // offloaded VLAN tag is in no segment's skb data, yet on the wire in each.
    let bytes = ctx.len() + (packets - 1) * p.header_len + packets * p.offloaded_tag as u32;

    let proto_counter = match p.key.ether_type {
        ETH_P_IP | ETH_P_IPV6 => match p.key.protocol {
            IPPROTO_TCP => Counter::Tcp,
            IPPROTO_UDP => Counter::Udp,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => Counter::Icmp,
            _ => Counter::OtherIp,
        },
        _ => Counter::NonIp,
    };
    let counters = COUNTERS.get_ptr_mut(counter_index(
        interface_slot(p.key.ifindex),
        direction as u32,
    ));
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
        // No clock read per packet (the boot clock costs about 30 ns here, a third of the
        // program, BENCHMARKS.md section 1): a new connection's slot gets its first-seen time
        // once, and the agent dates what a sweep takes by the sweep.
        if add_to_flow(&p, packets, bytes) {
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

/// The `COUNTERS` slot the agent gave interface `ifindex`, 0 if none.
#[inline(always)]
fn interface_slot(ifindex: u32) -> u32 {
    if ifindex < IFINDEX_DIRECT {
        IFACE_SLOTS.get(ifindex).copied().unwrap_or(0)
    } else {
        // SAFETY: a plain lookup; the value is a u32 the agent writes whole.
        unsafe { IFACE_SLOTS_HIGH.get(&ifindex) }
            .copied()
            .unwrap_or(0)
    }
}

#[inline(always)]
fn bump(counters: Option<*mut ayaflow_common::counters::CounterBlock>, counter: Counter) {
    if let Some(c) = counters {
        // SAFETY: as in `observe`.
        unsafe { (*c).values[counter as usize] += 1 };
    }
}

/// Adds the packet to its connection's slot, claiming a free slot for a new connection.
/// Returns false when none of the [`FLOW_PROBES`] index positions from the key's hash on is the
/// connection's or free, when no slot is free, or when the connection's slot has no room left
/// until the next sweep (see `counts`).
///
/// Probing stops at the first empty position: a connection indexed further on (a position
/// before it was emptied since) gets a second slot here. The agent sums slots by key, and the
/// old slot goes idle and is freed, so nothing is lost; lookups stay short.
#[inline(always)]
fn add_to_flow(p: &Parsed, packets: u32, bytes: u32) -> bool {
    // SAFETY: load-time constants, as CAPTURE_MODE.
    let (seed, mask) = unsafe {
        (
            core::ptr::read_volatile(&FLOW_HASH_SEED),
            core::ptr::read_volatile(&FLOW_INDEX_MASK),
        )
    };
    let mut pos = flow_hash(&p.key, seed);
    let mut reserved = None;
    for _ in 0..FLOW_PROBES {
        pos &= mask;
        let Some(e) = FLOW_INDEX.get_ptr_mut(pos) else {
            return false;
        };
        // SAFETY: `e` is a position of the index, valid while the program runs; changed by
        // others only atomically. A slot is read as in `same_key`/`add`.
        unsafe {
            let v = core::ptr::read_volatile(e);
            if v == INDEX_EMPTY {
                if cmpxchg32(e, INDEX_EMPTY, INDEX_RESERVED) == INDEX_EMPTY {
                    reserved = Some(e);
                    break;
                }
            } else if v != INDEX_RESERVED
                && let Some(s) = FLOWS.get_ptr_mut(v - 1)
                && core::ptr::read_volatile(&raw const (*s).state) == SLOT_LIVE
                && same_key(&raw const (*s).key, &p.key)
            {
                // No room (see `counts`): the packet goes to the ring buffer instead.
                return add(s, p, packets, bytes);
            }
        }
        pos = pos.wrapping_add(1);
    }
    match reserved {
        // SAFETY: this program reserved `e`.
        Some(e) => unsafe { claim(e, pos, p, packets, bytes) },
        None => false,
    }
}

/// Whether the slot's key is `key`: six 64-bit compares ([`FlowKey::word`]).
#[inline(always)]
unsafe fn same_key(slot: *const FlowKey, key: &FlowKey) -> bool {
    // SAFETY: an 8-aligned 48-byte key (FlowKey's layout); it does not change while the slot
    // is live.
    let a = unsafe { &*slot };
    (0..KEY_WORDS).all(|i| a.word(i) == key.word(i))
}

/// Pops a free slot number off `FLOW_FREE`, or `None` if none is free (or another CPU, or the
/// agent, changed the stack at the same instant: rare, and the packet then goes to the ring
/// buffer, counted, rather than retrying in the program).
#[inline(always)]
fn pop_free_slot() -> Option<u32> {
    let top = FLOW_FREE_TOP.get_ptr_mut(0)?;
    // SAFETY: a load-time constant, as CAPTURE_MODE.
    let slots = unsafe { core::ptr::read_volatile(&FLOW_SLOTS) };
    // SAFETY: the top word, changed by everyone only atomically. Read with a fetching atomic
    // (a full barrier), so that the entry below is read after it on every architecture.
    let word = unsafe { atomic_fetch_add(top, 0) };
    let (generation, taken) = free_stack::split(word);
    if taken >= slots {
        return None;
    }
    let entry = slots - taken - 1;
    // SAFETY: an entry of the stack; the agent writes entries above the top only.
    let stored = unsafe { core::ptr::read_volatile(FLOW_FREE.get_ptr_mut(entry)?) };
    let next = free_stack::top_word(generation.wrapping_add(1), taken + 1);
    // SAFETY: as above. If the word is unchanged, so is the stack: every change bumps the
    // generation.
    if unsafe { cmpxchg64(top, word, next) } != word {
        return None;
    }
    Some(free_stack::encode(stored, entry))
}

/// Claims a free slot for a new connection at index position `pos`, which this program
/// reserved at `e`; returns false (and empties the position) when no slot is free.
///
/// The slot is filled before the position points at it, and made live with an atomic
/// exchange (a full barrier): whoever finds it through the index sees its key.
#[inline(always)]
unsafe fn claim(e: *mut u32, pos: u32, p: &Parsed, packets: u32, bytes: u32) -> bool {
    let slot = pop_free_slot();
    let (Some(n), Some(s), Some(c)) = (
        slot,
        slot.and_then(|n| FLOWS.get_ptr_mut(n)),
        slot.and_then(|n| FLOW_CLAIMS.get_ptr_mut(n)),
    ) else {
        // SAFETY: this program reserved the position.
        unsafe { xchg32(e, INDEX_EMPTY) };
        return false;
    };
    // A new connection's first packet gets the precise clock: the agent orients a connection
    // seen both ways in one sweep by which side came first. Once per connection.
    // SAFETY: a plain helper call.
    let first = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the slot came off the free stack: no one else reads or writes it until it is
    // live, so plain stores do.
    unsafe {
        (*c).first_seen_ns = first;
        (*c).index_pos = pos;
        (*s).key = p.key;
        (*s).tcp_flags = p.tcp_flags;
        (*s).icmp_type = p.icmp_type;
        (*s).icmp_code = p.icmp_code;
        // The agent left the sums at zero when it freed the slot; add, as for a live slot, so
        // that this holds even for a slot the agent never touched.
        atomic_add(&raw mut (*s).counts, counts::pack(packets, bytes));
        xchg32(&raw mut (*s).state, SLOT_LIVE);
        xchg32(e, n + 1);
    }
    mark_used(n);
    true
}

/// Sets the slot's bit in `FLOWS_USED`, so that the agent's sweep visits it. The agent clears
/// a bit before it frees the slot, and the program can claim the slot only once it is free, so
/// this never races with the clearing. A sweep between `claim` and this sees the slot at the
/// next sweep.
#[inline(always)]
fn mark_used(slot: u32) {
    if let Some(word) = FLOWS_USED.get_ptr_mut(slot / 64) {
        // SAFETY: a word of the array; the agent changes it only atomically too.
        unsafe { atomic_or(word, 1u64 << (slot % 64)) };
    }
}

/// Adds to a live slot other CPUs may update at the same time, and the agent empties: packets
/// and bytes with one atomic add to the `counts` word (exact), the TCP flags with an atomic OR
/// (only when a flag is new, which is rare), the ICMP type/code with plain stores (any recent
/// value will do). Returns false, adding nothing, if the word has no room (see `counts`).
#[inline(always)]
fn add(s: *mut FlowSlot, p: &Parsed, packets: u32, bytes: u32) -> bool {
    // SAFETY: `s` points at a live slot (see `add_to_flow`).
    unsafe {
        // A plain read of the line the key compare just loaded; others may add between it and
        // the add, within the margin `counts` leaves.
        if !counts::has_room(core::ptr::read_volatile(&raw const (*s).counts)) {
            return false;
        }
        atomic_add(&raw mut (*s).counts, counts::pack(packets, bytes));
        let flags = p.tcp_flags;
        if flags & !(*s).tcp_flags != 0 {
            // BPF atomics are 32 or 64 bits: OR the 4-aligned word that starts with
            // `tcp_flags` (little endian, so the flags are its low byte).
            atomic_or32((&raw mut (*s).tcp_flags).cast::<u32>(), flags as u32);
        }
        if p.icmp_type != 0 || p.icmp_code != 0 {
            (*s).icmp_type = p.icmp_type;
            (*s).icmp_code = p.icmp_code;
        }
    }
    true
}

// Rust's BPF target has no compare-and-swap, so `core`'s atomics offer no read-modify-write;
// the instructions themselves exist (BPF_ATOMIC: add since kernel 5.2, or, xchg and cmpxchg
// since 5.12), hence the asm.

/// `*ptr += v` as one atomic instruction. `ptr` must be 8-aligned and valid.
#[inline(always)]
unsafe fn atomic_add(ptr: *mut u64, v: u64) {
    // SAFETY: the caller's contract; the instruction touches only *ptr.
    unsafe { core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) ptr, v = in(reg) v) };
}

/// `*ptr += v` as one atomic instruction with a full barrier; returns the old value. `ptr` must
/// be 8-aligned and valid.
#[inline(always)]
unsafe fn atomic_fetch_add(ptr: *mut u64, v: u64) -> u64 {
    let old: u64;
    // SAFETY: as for `atomic_add`.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) ptr,
            v = inout(reg) v => old,
        )
    };
    old
}

/// `*ptr |= v` as one atomic instruction. `ptr` must be 8-aligned and valid.
#[inline(always)]
unsafe fn atomic_or(ptr: *mut u64, v: u64) {
    // SAFETY: as for `atomic_add`.
    unsafe { core::arch::asm!("lock *(u64 *)({p} + 0) |= {v}", p = in(reg) ptr, v = in(reg) v) };
}

/// `*ptr |= v` as one atomic instruction. `ptr` must be 4-aligned and valid.
#[inline(always)]
unsafe fn atomic_or32(ptr: *mut u32, v: u32) {
    // SAFETY: as for `atomic_add`.
    unsafe { core::arch::asm!("lock *(u32 *)({p} + 0) |= {v}", p = in(reg) ptr, v = in(wreg) v) };
}

/// Sets `*ptr` to `v` and returns the old value, atomically, with a full barrier. `ptr` must be
/// 4-aligned and valid.
#[inline(always)]
unsafe fn xchg32(ptr: *mut u32, v: u32) -> u32 {
    let old: u32;
    // SAFETY: as for `atomic_add`.
    unsafe {
        core::arch::asm!("{v} = xchg32_32({p} + 0, {v})", p = in(reg) ptr, v = inout(wreg) v => old)
    };
    old
}

/// If `*ptr == expected`, sets it to `new`; returns the value found, atomically, with a full
/// barrier. `ptr` must be 4-aligned and valid.
#[inline(always)]
unsafe fn cmpxchg32(ptr: *mut u32, expected: u32, new: u32) -> u32 {
    let found: u32;
    // SAFETY: as for `atomic_add`. BPF_CMPXCHG compares with and returns into r0 (w0).
    unsafe {
        core::arch::asm!(
            "w0 = cmpxchg32_32({p} + 0, w0, {n})",
            p = in(reg) ptr,
            n = in(wreg) new,
            inout("w0") expected => found,
        )
    };
    found
}

/// If `*ptr == expected`, sets it to `new`; returns the value found, atomically, with a full
/// barrier. `ptr` must be 8-aligned and valid.
#[inline(always)]
unsafe fn cmpxchg64(ptr: *mut u64, expected: u64, new: u64) -> u64 {
    let found: u64;
    // SAFETY: as for `atomic_add`. BPF_CMPXCHG compares with and returns into r0.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {n})",
            p = in(reg) ptr,
            n = in(reg) new,
            inout("r0") expected => found,
        )
    };
    found
}
