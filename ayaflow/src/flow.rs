//! Domain types for one observed packet, converted exactly once from the kernel's `#[repr(C)]`
//! event (`decode.rs` checks the bytes, this module gives them meaning).

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ayaflow_common::{
    event::PacketEvent,
    flow::{
        ETH_P_IP, ETH_P_IPV6, ETH_TYPE_8023, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP,
    },
};
use serde::{Deserialize, Serialize};

pub use ayaflow_common::flow::Direction;

pub use crate::ifname::InterfaceId;

/// A hash map keyed by what arrives off the wire (addresses, ports, protocols): foldhash,
/// randomly seeded per map, so a sender who does not know the seed cannot craft keys that all
/// collide, and several times cheaper than std's SipHash-1-3 on these 40-byte keys (in flow
/// mode every sweep hashes every active flow three times: shadow, table, window).
pub type WireHashMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The protocol of a connection, as the API and the database name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Another IP protocol, by number.
    Ip(u8),
    /// Not IP at all (ARP, LLDP, ...), by EtherType.
    Ether(u16),
    /// An IEEE 802.3 frame whose type field is a length, not an EtherType (the kernel's key
    /// has [`ETH_TYPE_8023`]): its payload starts with an 802.2 LLC header (STP, CDP, ...).
    Llc,
}

impl Protocol {
    /// From the EtherType and IP protocol number of a key.
    pub fn from_numbers(ether_type: u16, ip_protocol: u8) -> Protocol {
        match (ether_type, ip_protocol) {
            (ETH_P_IP | ETH_P_IPV6, IPPROTO_TCP) => Protocol::Tcp,
            (ETH_P_IP | ETH_P_IPV6, IPPROTO_UDP) => Protocol::Udp,
            (ETH_P_IP, IPPROTO_ICMP) => Protocol::Icmp,
            (ETH_P_IPV6, IPPROTO_ICMPV6) => Protocol::Icmpv6,
            (ETH_P_IP | ETH_P_IPV6, p) => Protocol::Ip(p),
            (ETH_TYPE_8023, _) => Protocol::Llc,
            (e, _) => Protocol::Ether(e),
        }
    }

    /// Returns true if and only if this is an IP protocol (IPv4 or IPv6).
    pub fn is_ip(&self) -> bool {
        !matches!(self, Protocol::Ether(_) | Protocol::Llc)
    }

    /// Parses the names written by `Display` (case-insensitive): `TCP`, `UDP`, `ICMP`,
    /// `ICMPv6`, `IP-<n>`, `ETH-0x<hex>`, `LLC`.
    pub fn parse(s: &str) -> Option<Protocol> {
        let u = s.to_ascii_uppercase();
        match u.as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "ICMP" => Some(Protocol::Icmp),
            "ICMPV6" => Some(Protocol::Icmpv6),
            "LLC" => Some(Protocol::Llc),
            _ => {
                if let Some(n) = u.strip_prefix("IP-") {
                    n.parse().ok().map(Protocol::Ip)
                } else if let Some(h) = u.strip_prefix("ETH-0X") {
                    u16::from_str_radix(h, 16).ok().map(Protocol::Ether)
                } else {
                    None
                }
            }
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Icmp => f.write_str("ICMP"),
            Protocol::Icmpv6 => f.write_str("ICMPv6"),
            Protocol::Ip(n) => write!(f, "IP-{n}"),
            Protocol::Ether(e) => write!(f, "ETH-0x{e:04x}"),
            Protocol::Llc => f.write_str("LLC"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Protocol::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown protocol {s:?}")))
    }
}

/// One direction of a conversation as a packet carried it: protocol and both endpoints, and
/// the interface it was seen on (the same conversation on a pod's veth and on the uplink is
/// two tuples, each counted once). Frames that are not IP have unspecified IPv4 addresses and
/// port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    pub proto: Protocol,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub interface: InterfaceId,
}

impl FiveTuple {
    /// The same conversation seen from the other side.
    pub fn reversed(&self) -> FiveTuple {
        FiveTuple {
            proto: self.proto,
            src: self.dst,
            src_port: self.dst_port,
            dst: self.src,
            dst_port: self.src_port,
            interface: self.interface,
        }
    }

    /// The same tuple seen on `interface`.
    pub fn on(self, interface: InterfaceId) -> FiveTuple {
        FiveTuple { interface, ..self }
    }

    /// `addr:port`, with IPv6 as `[addr]:port`, as the API writes endpoints.
    pub fn src_endpoint(&self) -> String {
        endpoint(self.src, self.src_port)
    }

    /// See [`FiveTuple::src_endpoint`].
    pub fn dst_endpoint(&self) -> String {
        endpoint(self.dst, self.dst_port)
    }
}

/// An IPv4 [`FiveTuple`], packed: both addresses as 4 bytes, 20 bytes where a `FiveTuple`
/// takes 48 (two `IpAddr` are 34 bytes for 8 bytes of IPv4 address). For the maps that keep a
/// key per conversation: the live table's records, the history writer's key ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct V4Tuple {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    proto: Protocol,
    interface: InterfaceId,
}

impl V4Tuple {
    /// `None` unless both of `t`'s addresses are IPv4.
    pub fn pack(t: &FiveTuple) -> Option<V4Tuple> {
        match (t.src, t.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(V4Tuple {
                src,
                dst,
                src_port: t.src_port,
                dst_port: t.dst_port,
                proto: t.proto,
                interface: t.interface,
            }),
            _ => None,
        }
    }

    /// The tuple it was packed from.
    pub fn unpack(&self) -> FiveTuple {
        FiveTuple {
            proto: self.proto,
            src: IpAddr::V4(self.src),
            src_port: self.src_port,
            dst: IpAddr::V4(self.dst),
            dst_port: self.dst_port,
            interface: self.interface,
        }
    }
}

/// `addr:port`, IPv6 in brackets.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl FiveTuple {
    /// The tuple of a kernel key seen on `interface` (the key's ifindex, resolved).
    pub fn from_key(k: &FlowKey, interface: InterfaceId) -> FiveTuple {
        let addr = |b: &[u8; 16]| -> IpAddr {
            match k.ether_type {
                ETH_P_IPV6 => IpAddr::V6(Ipv6Addr::from(*b)),
                _ => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            }
        };
        FiveTuple {
            proto: Protocol::from_numbers(k.ether_type, k.protocol),
            src: addr(&k.src_addr),
            src_port: k.src_port,
            dst: addr(&k.dst_addr),
            dst_port: k.dst_port,
            interface,
        }
    }
}

/// One packet (or GSO aggregate) as userspace works with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub tuple: FiveTuple,
    /// The hook that saw it.
    pub direction: Direction,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_unix_ns: u64,
    /// Packets on the wire (GSO segments).
    pub packets: u32,
    /// Bytes on the wire.
    pub bytes: u32,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `ayaflow_common::event::EVENT_FLAG_*` bits.
    pub flags: u8,
    pub vlan_id: u16,
}

/// TCP flag bits of [`Packet::tcp_flags`].
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

impl Packet {
    /// Converts a kernel event seen on `interface` (its key's ifindex, resolved);
    /// `boot_to_unix_ns` is wall time minus CLOCK_BOOTTIME, in ns.
    pub fn from_event(e: &PacketEvent, boot_to_unix_ns: u64, interface: InterfaceId) -> Packet {
        Packet {
            tuple: FiveTuple::from_key(&e.key, interface),
            direction: Direction::from_u8(e.key.direction).unwrap_or(Direction::Ingress),
            ts_unix_ns: e.timestamp_ns.wrapping_add(boot_to_unix_ns),
            packets: e.packets,
            bytes: e.bytes,
            tcp_flags: e.tcp_flags,
            icmp_type: e.icmp_type,
            icmp_code: e.icmp_code,
            flags: e.flags,
            vlan_id: e.vlan_id,
        }
    }
}

/// Direction as the API and the database write it.
pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// Inverse of [`direction_name`].
pub fn parse_direction(s: &str) -> Option<Direction> {
    match s {
        "ingress" => Some(Direction::Ingress),
        "egress" => Some(Direction::Egress),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_round_trip() {
        for p in [
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Icmp,
            Protocol::Icmpv6,
            Protocol::Ip(47),
            Protocol::Ether(0x0806),
            Protocol::Llc,
        ] {
            assert_eq!(Protocol::parse(&p.to_string()), Some(p));
        }
        assert_eq!(Protocol::parse("icmpv6"), Some(Protocol::Icmpv6));
        assert_eq!(Protocol::parse("SCTP"), None);
    }

    #[test]
    fn ieee_802_3_length_frames_are_llc_not_an_ethertype() {
        assert_eq!(Protocol::from_numbers(ETH_TYPE_8023, 0), Protocol::Llc);
        assert_eq!(Protocol::Llc.to_string(), "LLC");
        assert!(!Protocol::Llc.is_ip() && !Protocol::Ether(0x0806).is_ip());
        assert!(Protocol::Ip(47).is_ip() && Protocol::Tcp.is_ip());
    }

    #[test]
    fn endpoints_bracket_ipv6() {
        assert_eq!(endpoint("10.0.0.1".parse().unwrap(), 80), "10.0.0.1:80");
        assert_eq!(endpoint("fd00::1".parse().unwrap(), 443), "[fd00::1]:443");
    }
}
