//! Every map of the program, each with its key, value and sizing.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use ayaflow_common::{
    counters::{COUNTER_BLOCKS, CounterBlock, IFINDEX_DIRECT, INTERFACE_SLOTS},
    flow::{FlowSlot, SlotClaim},
};

/// Per-packet events for userspace (`PacketEvent`, 72 B + 8 B ring header each).
/// 8 MiB holds ~105k events: about 0.3 s of a 0.4 Mpps flood if userspace stalls. The agent
/// overrides the size from `--ring-buffer-bytes`; every failed reservation is counted.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Key: `counter_index(interface slot, direction)`; value: a `CounterBlock` (10 × u64) per
/// CPU: 1,024 × 80 B × nCPU.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(COUNTER_BLOCKS, 0);

/// Key: ifindex below `IFINDEX_DIRECT`; value: the interface's slot of `COUNTERS`, 0 for none.
/// Written by the agent when it attaches to or leaves an interface.
#[map(name = "IFACE_SLOTS")]
pub static IFACE_SLOTS: Array<u32> = Array::with_max_entries(IFINDEX_DIRECT, 0);

/// `IFACE_SLOTS` for the interfaces with larger indexes (missing: slot 0).
#[map(name = "IFACE_SLOTS_HIGH")]
pub static IFACE_SLOTS_HIGH: HashMap<u32, u32> = HashMap::with_max_entries(INTERFACE_SLOTS, 0);

/// Flow mode: the flow table's slots, `FlowSlot`s (64 B, one cache line each), in an array
/// the agent maps into its memory. The agent sets the size (`--flow-map-size` rounded up to a
/// power of two). The program finds a connection's slot through `FLOW_INDEX`, see `flow.rs`.
///
/// Arrays rather than a BPF hash map, measured (BENCHMARKS.md): the hash map's lookup was half
/// of flow mode's cost (`jhash` over the 40-byte key of the time, then the bucket and the element), and its
/// sweep needed system calls, a userspace copy of every entry's last totals, and a syscall per
/// removed entry. Shared by all CPUs and updated with atomic adds: a per-CPU value would
/// multiply the table by the CPUs, and one flow's packets arrive on one CPU (RSS), so the
/// atomics rarely contend.
#[map(name = "FLOWS")]
pub static FLOWS: Array<FlowSlot> = Array::with_max_entries(65536, BPF_F_MMAPABLE);

/// Flow mode: per slot, what the program wrote when it claimed it (first-seen time, index
/// position). Same numbering and size as `FLOWS`.
#[map(name = "FLOW_CLAIMS")]
pub static FLOW_CLAIMS: Array<SlotClaim> = Array::with_max_entries(65536, BPF_F_MMAPABLE);

/// Flow mode: the hash index, `INDEX_POSITIONS_PER_SLOT` positions per slot, each
/// `INDEX_EMPTY`, `INDEX_RESERVED` or a slot number plus one: 4-byte values, which a BPF array
/// stores 8 bytes apart.
#[map(name = "FLOW_INDEX")]
pub static FLOW_INDEX: Array<u32> = Array::with_max_entries(131072, BPF_F_MMAPABLE);

/// Flow mode: the stack of free slots (see `ayaflow_common::flow::free_stack`): the program
/// pops, the agent pushes what it frees. Last in, first out, so the slots in use stay packed
/// at one end of `FLOWS` however many connections came and went.
#[map(name = "FLOW_FREE")]
pub static FLOW_FREE: Array<u32> = Array::with_max_entries(65536, BPF_F_MMAPABLE);

/// Flow mode: the free stack's top word (generation and slots taken).
#[map(name = "FLOW_FREE_TOP")]
pub static FLOW_FREE_TOP: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Flow mode: one bit per `FLOWS` slot, set by the program when it claims the slot and cleared
/// by the agent when it frees it, so that a sweep visits the slots in use rather than the whole
/// table. The agent sets the size (slots / 64) and maps it into its memory.
#[map(name = "FLOWS_USED")]
pub static FLOWS_USED: Array<u64> = Array::with_max_entries(1024, BPF_F_MMAPABLE);
