//! Builders for Ethernet frames (checksums are left zero: the classifier never reads them).

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

/// TC_ACT_UNSPEC as the kernel reports it: "not my decision", the packet goes on.
pub const PASS: u32 = -1i32 as u32;
/// Addresses of the crafted frames (documentation ranges).
pub const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// Ethernet header + payload.
pub fn eth(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet header with VLAN tags (outermost first: (TPID, VLAN ID)) + payload.
pub fn eth_vlan(tags: &[(u16, u16)], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header (with `options`, a multiple of 4 bytes) + payload. `frag` is the 16-bit
/// flags+fragment-offset field.
pub fn ipv4(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = (20 + options.len()) / 4;
    let total = 20 + options.len() + payload.len();
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

/// IPv6 header + payload (extension headers go in `payload`, built with [`ipv6_ext`]).
pub fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A generic IPv6 extension header (hop-by-hop, routing, destination options) of
/// `8 * (len_units + 1)` bytes, followed by `rest`.
pub fn ipv6_ext(next: u8, len_units: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next, len_units];
    h.resize(8 * (len_units as usize + 1), 0);
    h.extend_from_slice(rest);
    h
}

/// An IPv6 fragment header with the given 13-bit offset (in 8-byte units), followed by `rest`.
pub fn ipv6_frag(next: u8, offset: u16, more: bool, rest: &[u8]) -> Vec<u8> {
    let field = (offset << 3) | more as u16;
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1]);
    h.extend_from_slice(rest);
    h
}

/// TCP header (20 bytes, no options) + payload.
pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

/// UDP header + payload.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// ICMP or ICMPv6 header (type, code, checksum, 4 bytes rest) + payload.
pub fn icmp(ty: u8, code: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, code, 0, 0, 0, 1, 0, 1];
    h.extend_from_slice(payload);
    h
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `frame` (untagged Ethernet, IPv4 or IPv6 without extension headers, then UDP or TCP) with
/// the MAC addresses set and every checksum filled in, so that a receiving stack accepts it.
pub fn deliverable(mut frame: Vec<u8>, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    let (l4, proto, mut pseudo) = match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP => {
            let ihl = (frame[14] & 0x0f) as usize * 4;
            frame[24..26].fill(0);
            let c = inet_checksum(&frame[14..14 + ihl]);
            frame[24..26].copy_from_slice(&c.to_be_bytes());
            (14 + ihl, frame[23], frame[26..34].to_vec())
        }
        ETH_P_IPV6 => (54, frame[20], frame[22..54].to_vec()),
        other => panic!("deliverable: EtherType {other:#06x} is not IP"),
    };
    let len = frame.len() - l4;
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    let at = match proto {
        17 => l4 + 6,
        6 => l4 + 16,
        p => panic!("deliverable: IP protocol {p} is neither UDP nor TCP"),
    };
    frame[at..at + 2].fill(0);
    pseudo.extend_from_slice(&frame[l4..]);
    let c = inet_checksum(&pseudo);
    // UDP sends a computed 0 as 0xffff (0 means "no checksum").
    let c = if c == 0 && proto == 17 { 0xffff } else { c };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    frame
}
