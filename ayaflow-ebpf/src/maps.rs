//! Every map of the program, each with its key, value and sizing.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use ayaflow_common::{
    counters::{COUNTER_BLOCKS, CounterBlock},
    flow::{FlowKey, FlowStats},
};

/// Per-packet events for userspace (`PacketEvent`, 64 B + 8 B ring header each).
/// 8 MiB holds ~116k events: about 0.3 s of a 0.4 Mpps flood if userspace stalls. The agent
/// overrides the size from `--ring-buffer-bytes`; every failed reservation is counted.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Key: `Direction as u32`; value: a `CounterBlock` (10 × u64) per CPU: 2 × 80 B × nCPU.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(COUNTER_BLOCKS, 0);

/// Flow mode: key `FlowKey` (40 B), value `FlowStats` (40 B), one value shared by all CPUs and
/// updated with atomic adds (no lock). Memory is about `max_entries × 128 B` (preallocated); the
/// agent sets `max_entries` from `--flow-map-size`.
///
/// Shared rather than per-CPU, measured (BENCHMARKS.md): the per-CPU value lives apart from the
/// key, one more cache miss per packet (in situ at 100,000 flows most of the classifier's time
/// is such misses), and the agent's sweep must read `nCPU` values per entry, 64 times the data
/// on a 64-CPU node. One flow's packets arrive on one CPU (RSS), so the atomics rarely contend.
#[map(name = "FLOWS")]
pub static FLOWS: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(65536, 0);
