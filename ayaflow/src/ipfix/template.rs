//! The two templates ayaFlow exports (IPv4 flows, IPv6 flows) and the encoding of one record.
//!
//! Fixed templates, every field of fixed length, so a record is a run of big-endian writes and
//! its length is known: no per-record allocation, and a message is filled to its MTU exactly.
//! Element numbers are IANA's ("IP Flow Information Export (IPFIX) Entities").

use std::net::IpAddr;

use crate::flow::Protocol;

use super::FlowRecord;

/// Template id of IPv4 flow records (data set ids 256 and up are templates' ids).
pub const TEMPLATE_V4: u16 = 256;
/// Template id of IPv6 flow records.
pub const TEMPLATE_V6: u16 = 257;

/// An information element and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub id: u16,
    pub name: &'static str,
    pub len: u16,
}

const fn f(id: u16, name: &'static str, len: u16) -> Field {
    Field { id, name, len }
}

/// A template's fields in record order: what both have, with the address family's own four
/// (source address, destination address, ICMP type, ICMP code) in their places.
const fn fields(family: [Field; 4]) -> [Field; 17] {
    let [src, dst, icmp_type, icmp_code] = family;
    [
        f(1, "octetDeltaCount", 8),
        f(2, "packetDeltaCount", 8),
        f(4, "protocolIdentifier", 1),
        f(6, "tcpControlBits", 2),
        f(7, "sourceTransportPort", 2),
        src,
        f(11, "destinationTransportPort", 2),
        dst,
        icmp_type,
        icmp_code,
        f(10, "ingressInterface", 4),
        f(14, "egressInterface", 4),
        f(61, "flowDirection", 1),
        f(152, "flowStartMilliseconds", 8),
        f(153, "flowEndMilliseconds", 8),
        f(136, "flowEndReason", 1),
        f(58, "vlanId", 2),
    ]
}

/// The IPv4 template's fields, in record order.
pub const FIELDS_V4: [Field; 17] = fields([
    f(8, "sourceIPv4Address", 4),
    f(12, "destinationIPv4Address", 4),
    f(176, "icmpTypeIPv4", 1),
    f(177, "icmpCodeIPv4", 1),
]);

/// The IPv6 template's fields, in record order.
pub const FIELDS_V6: [Field; 17] = fields([
    f(27, "sourceIPv6Address", 16),
    f(28, "destinationIPv6Address", 16),
    f(178, "icmpTypeIPv6", 1),
    f(179, "icmpCodeIPv6", 1),
]);

const fn record_len(fields: &[Field]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < fields.len() {
        n += fields[i].len as usize;
        i += 1;
    }
    n
}

/// Bytes of one IPv4 record.
pub const RECORD_LEN_V4: usize = record_len(&FIELDS_V4);
/// Bytes of one IPv6 record.
pub const RECORD_LEN_V6: usize = record_len(&FIELDS_V6);

/// Which template a record uses; `None` for frames that are not IP (not exported).
pub fn template_of(r: &FlowRecord) -> Option<u16> {
    if !r.tuple.proto.is_ip() {
        return None;
    }
    match (r.tuple.src, r.tuple.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some(TEMPLATE_V4),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some(TEMPLATE_V6),
        _ => None,
    }
}

/// Bytes of a record of template `id`.
pub fn record_len_of(id: u16) -> usize {
    if id == TEMPLATE_V4 {
        RECORD_LEN_V4
    } else {
        RECORD_LEN_V6
    }
}

/// The template set (set id 2) announcing both templates.
pub fn template_set() -> Vec<u8> {
    let mut body = Vec::new();
    for (id, fields) in [(TEMPLATE_V4, &FIELDS_V4[..]), (TEMPLATE_V6, &FIELDS_V6[..])] {
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        for field in fields {
            body.extend_from_slice(&field.id.to_be_bytes());
            body.extend_from_slice(&field.len.to_be_bytes());
        }
    }
    let mut set = Vec::with_capacity(4 + body.len());
    set.extend_from_slice(&2u16.to_be_bytes());
    set.extend_from_slice(&((4 + body.len()) as u16).to_be_bytes());
    set.extend_from_slice(&body);
    set
}

/// The IP protocol number of a record.
fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Icmp => 1,
        Protocol::Icmpv6 => 58,
        Protocol::Ip(n) => n,
        Protocol::Ether(_) | Protocol::Llc => 0,
    }
}

/// Appends `r` encoded with template `id` (from [`template_of`]) to `out`.
pub fn encode(r: &FlowRecord, id: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.bytes.to_be_bytes());
    out.extend_from_slice(&r.packets.to_be_bytes());
    out.push(protocol_number(r.tuple.proto));
    out.extend_from_slice(&u16::from(r.tcp_flags).to_be_bytes());
    out.extend_from_slice(&r.tuple.src_port.to_be_bytes());
    match (id, r.tuple.src, r.tuple.dst) {
        (TEMPLATE_V4, IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&r.tuple.dst_port.to_be_bytes());
            out.extend_from_slice(&d.octets());
        }
        (_, IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&r.tuple.dst_port.to_be_bytes());
            out.extend_from_slice(&d.octets());
        }
        _ => unreachable!("template_of chose the template from these addresses"),
    }
    out.push(r.icmp_type);
    out.push(r.icmp_code);
    out.extend_from_slice(&r.ingress_interface.to_be_bytes());
    out.extend_from_slice(&r.egress_interface.to_be_bytes());
    out.push(r.flow_direction);
    out.extend_from_slice(&r.start_ms.to_be_bytes());
    out.extend_from_slice(&r.end_ms.to_be_bytes());
    out.push(r.end_reason as u8);
    out.extend_from_slice(&r.vlan_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{flow::FiveTuple, ipfix::EndReason};

    fn record(src: &str, dst: &str) -> FlowRecord {
        FlowRecord {
            tuple: FiveTuple {
                proto: Protocol::Udp,
                src: src.parse().unwrap(),
                src_port: 5353,
                dst: dst.parse().unwrap(),
                dst_port: 53,
                interface: Default::default(),
            },
            packets: 3,
            bytes: 300,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
            ingress_interface: 7,
            egress_interface: 0,
            flow_direction: 0,
            start_ms: 1_000,
            end_ms: 2_000,
            end_reason: EndReason::Idle,
            vlan_id: 0,
        }
    }

    #[test]
    fn records_have_the_templates_length_and_field_order() {
        let mut out = Vec::new();
        let v4 = record("10.0.0.1", "10.0.0.2");
        encode(&v4, template_of(&v4).unwrap(), &mut out);
        assert_eq!(out.len(), RECORD_LEN_V4);
        assert_eq!(
            RECORD_LEN_V4,
            8 + 8 + 1 + 2 + 2 + 4 + 2 + 4 + 1 + 1 + 4 + 4 + 1 + 8 + 8 + 1 + 2
        );
        assert_eq!(&out[..8], &300u64.to_be_bytes(), "octetDeltaCount first");
        assert_eq!(&out[8..16], &3u64.to_be_bytes());
        assert_eq!(out[16], 17);
        assert_eq!(&out[21..25], &[10, 0, 0, 1]);
        let v6 = record("fd00::1", "fd00::2");
        out.clear();
        encode(&v6, template_of(&v6).unwrap(), &mut out);
        assert_eq!(out.len(), RECORD_LEN_V6);
        assert_eq!(RECORD_LEN_V6, RECORD_LEN_V4 + 24);
    }

    #[test]
    fn the_template_set_lists_both_templates() {
        let set = template_set();
        assert_eq!(&set[..2], &2u16.to_be_bytes());
        assert_eq!(u16::from_be_bytes([set[2], set[3]]) as usize, set.len());
        assert_eq!(set.len(), 4 + 2 * (4 + 17 * 4));
        assert_eq!(&set[4..8], &[1, 0, 0, 17], "template 256, 17 fields");
    }

    #[test]
    fn non_ip_frames_have_no_template() {
        let mut r = record("0.0.0.0", "0.0.0.0");
        r.tuple.proto = Protocol::Ether(0x0806);
        assert_eq!(template_of(&r), None);
    }
}
