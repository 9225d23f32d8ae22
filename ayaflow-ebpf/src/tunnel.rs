//! The inner headers of an encapsulated GSO aggregate (VXLAN, Geneve), for its wire bytes.
//!
//! The kernel segments such an aggregate (`skb->encapsulation`) into frames that each repeat the
//! outer Ethernet, IP, UDP and tunnel headers *and* the inner Ethernet, IP and TCP (or UDP)
//! headers; counting only the outer ones per segment undercounts every segment by the inner
//! headers. `__sk_buff` exposes neither `encapsulation` nor the inner header offsets, so the
//! tunnel is recognised by its UDP destination port (the IANA ports of VXLAN and Geneve, and
//! Linux's historical VXLAN default) and its headers are parsed. Only GSO aggregates get here:
//! a single frame counts its length, whatever it carries. Best effort: anything unexpected
//! (another protocol inside, a header beyond the linear data) leaves the outer headers' length.

use ayaflow_common::flow::{ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP};

use crate::parse::Source;

const VXLAN_PORT: u16 = 4789;
/// What the Linux vxlan driver uses when `ip link add ... type vxlan` is given no `dstport`.
const VXLAN_LINUX_PORT: u16 = 8472;
const GENEVE_PORT: u16 = 6081;
/// Geneve's protocol type for an inner Ethernet frame ("transparent Ethernet bridging").
const ETH_P_TEB: u16 = 0x6558;
const ETH_P_8021Q: u16 = 0x8100;

/// The end of the inner L4 header of a tunnel packet whose tunnel header starts at `off`
/// (right after the outer UDP header, to port `dst_port`), from the start of the frame; `None`
/// if it is not a tunnel we parse.
#[inline(always)]
pub(crate) fn inner_headers_end<S: Source>(src: &mut S, off: usize, dst_port: u16) -> Option<u32> {
    let (mut off, mut ether_type) = match dst_port {
        VXLAN_PORT | VXLAN_LINUX_PORT => (off + 8, ETH_P_TEB),
        GENEVE_PORT => {
            let g = src.header::<4>(off).ok()?;
            // Options length in 4-byte words, in the low 6 bits of the first byte.
            (off + 8 + (g.byte(0) & 0x3f) as usize * 4, g.be16(2))
        }
        _ => return None,
    };
    if ether_type == ETH_P_TEB {
        let eth = src.header::<14>(off).ok()?;
        ether_type = eth.be16(12);
        off += 14;
        if ether_type == ETH_P_8021Q {
            ether_type = src.header::<4>(off).ok()?.be16(2);
            off += 4;
        }
    }
    let (protocol, l4) = match ether_type {
        ETH_P_IP => {
            let ip = src.header::<20>(off).ok()?;
            (ip.byte(9), off + (ip.byte(0) & 0x0f) as usize * 4)
        }
        // Extension headers inside a tunnel are not walked: the outer length stays.
        ETH_P_IPV6 => (src.header::<40>(off).ok()?.byte(6), off + 40),
        _ => return None,
    };
    match protocol {
        IPPROTO_TCP => {
            let tcp = src.header::<20>(l4).ok()?;
            Some((l4 + (tcp.byte(12) >> 4) as usize * 4) as u32)
        }
        IPPROTO_UDP => Some(l4 as u32 + 8),
        _ => None,
    }
}
