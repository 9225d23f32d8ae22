//! The per-packet event pushed on the `EVENTS` ring buffer.

use crate::flow::FlowKey;

/// The frame could not be fully parsed (truncated, bad IHL, endless IPv6 chain): the key holds
/// what was parsed before the fault.
pub const EVENT_FLAG_PARSE_ERROR: u8 = 1;
/// A non-first IP fragment: it has no ports.
pub const EVENT_FLAG_FRAGMENT: u8 = 2;
/// In flow mode: the flow table had no free slot for its connection, so this packet came through the ring buffer instead.
pub const EVENT_FLAG_FLOW_FALLBACK: u8 = 4;

/// One packet (or one GSO aggregate, `packets` segments long) seen by a hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketEvent {
    /// CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`); the agent converts to wall time.
    pub timestamp_ns: u64,
    pub key: FlowKey,
    /// Bytes on the wire, L2 header included; for a GSO aggregate, the bytes of all its segments.
    pub bytes: u32,
    /// 1, or the number of segments of a GSO/GRO aggregate.
    pub packets: u32,
    /// TCP flag byte (CWR ECE URG ACK PSH RST SYN FIN), 0 for other protocols.
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `EVENT_FLAG_*` bits.
    pub flags: u8,
    /// Outer VLAN ID, 0 when untagged.
    pub vlan_id: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PacketEvent>() == 72);
