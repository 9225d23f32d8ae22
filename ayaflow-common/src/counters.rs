//! The per-CPU `COUNTERS` array: one [`CounterBlock`] per direction (index `Direction as u32`).
//!
//! Totals come from here, not from events, so they stay exact when the ring buffer overflows.
//! One block per direction means one map lookup per packet for every counter it bumps.

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

/// Entries in the `COUNTERS` array: one per direction.
pub const COUNTER_BLOCKS: u32 = 2;

#[cfg(feature = "user")]
// SAFETY: an array of u64, no padding.
unsafe impl aya::Pod for CounterBlock {}
