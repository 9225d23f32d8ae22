//! The per-CPU `COUNTERS` array: one [`CounterBlock`] per interface and direction (index
//! [`counter_index`]).
//!
//! Totals come from here, not from events, so they stay exact when the ring buffer overflows.
//! One block per interface and direction means one map lookup per packet for every counter it
//! bumps. The agent gives each interface it attaches to a slot (`IFACE_SLOTS`, by ifindex);
//! slot 0 counts packets of hooks whose interface has none (an interface the agent has not
//! registered yet, or one left attached by a pinned agent), so nothing goes uncounted.

/// One per-CPU `u64` counter, per direction.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets, counting each GSO segment.
    Packets = 0,
    /// Bytes on the wire.
    Bytes,
    /// Packets by protocol: TCP, UDP, ICMP (v4 and v6), other IP protocols, not IP at all.
    Tcp,
    Udp,
    Icmp,
    OtherIp,
    NonIp,
    /// Frames the parser could not fully read (still counted above).
    ParseErrors,
    /// Events lost because the ring buffer was full (the packet is still counted above).
    RingbufDrops,
    /// Flow mode: packets sent through the ring buffer because the flow table had no free slot for them.
    FlowFallbacks,
}

impl Counter {
    /// Slots per direction.
    pub const COUNT: u32 = 10;
    /// Every counter, in slot order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Packets,
        Counter::Bytes,
        Counter::Tcp,
        Counter::Udp,
        Counter::Icmp,
        Counter::OtherIp,
        Counter::NonIp,
        Counter::ParseErrors,
        Counter::RingbufDrops,
        Counter::FlowFallbacks,
    ];
}

/// Every counter of one direction on one CPU, indexed by `Counter as usize`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterBlock {
    pub values: [u64; Counter::COUNT as usize],
}

impl CounterBlock {
    /// The value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }
}

/// Interface slots of the `COUNTERS` array, slot 0 included: at most `INTERFACE_SLOTS - 1`
/// interfaces are observed at once. 80 B × 2 directions × slots per CPU: 80 KiB per CPU.
pub const INTERFACE_SLOTS: u32 = 512;

/// Entries in the `COUNTERS` array: one per interface slot and direction.
pub const COUNTER_BLOCKS: u32 = INTERFACE_SLOTS * 2;

/// The `COUNTERS` entry of interface slot `slot` and direction `direction` (`Direction as u32`).
#[inline(always)]
pub fn counter_index(slot: u32, direction: u32) -> u32 {
    slot * 2 + direction
}

/// Interfaces with an ifindex below this find their slot in the `IFACE_SLOTS` array (one
/// lookup, no hashing); others in the `IFACE_SLOTS_HIGH` hash map. Indexes grow by one per
/// interface created in a namespace, so a node with much pod churn passes it.
pub const IFINDEX_DIRECT: u32 = 16384;

#[cfg(feature = "user")]
// SAFETY: an array of u64, no padding.
unsafe impl aya::Pod for CounterBlock {}
