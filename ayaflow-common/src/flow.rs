//! The connection key and the per-connection statistics kept by the kernel in flow mode.

/// Which TC hook saw a packet. Recorded by the hook itself, never inferred from `skb_iif`
/// (which is wrong for forwarded traffic).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The interface's ingress hook. This is the default hook.
    Ingress = 0,
    /// The interface's egress hook.
    Egress = 1,
}

impl Direction {
    /// Both directions, in counter-array order.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// Decodes the byte stored in [`FlowKey::direction`].
    pub fn from_u8(v: u8) -> Option<Direction> {
        match v {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// IP protocol numbers the parser understands.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Identifies one direction of one connection as the hook saw it.
///
/// IPv4 addresses sit in the first four bytes of the address arrays, the rest zero; `ether_type`
/// says which family. Frames that are not IP keep their EtherType, protocol 0 and zero addresses.
/// ICMP and ICMPv6 have no ports: both are zero (type and code travel in the event).
///
/// Aligned to 8 so that the kernel program fills and zeroes it with whole 64-bit stores (an
/// align-2 key made LLVM call a byte-by-byte `memset`/`memcpy` loop for every packet).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
    /// Host byte order, after any VLAN tags.
    pub ether_type: u16,
    /// IP protocol number (the last header of an IPv6 extension chain).
    pub protocol: u8,
    /// A [`Direction`] as `u8`.
    pub direction: u8,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8);

/// What the kernel accumulates per [`FlowKey`] in flow mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// CLOCK_MONOTONIC nanoseconds of the first packet (`bpf_ktime_get_ns`, read once per
    /// flow; events use CLOCK_BOOTTIME).
    pub first_seen_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds of the latest packet, at jiffy resolution
    /// (`bpf_ktime_get_coarse_ns`, the clock that is cheap enough for every packet); never
    /// below `first_seen_ns`.
    pub last_seen_ns: u64,
    /// Packets, counting each GSO segment.
    pub packets: u64,
    /// Bytes on the wire, headers of every segment included.
    pub bytes: u64,
    /// OR of every TCP flag byte seen.
    pub tcp_flags: u8,
    /// Type and code of the latest ICMP/ICMPv6 message.
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 40);

#[cfg(feature = "user")]
// SAFETY: plain old data with explicit padding; every bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for FlowStats {}
