//! Header parsing: Ethernet -> up to two VLAN tags -> IPv4 / IPv6 (+ extension headers) ->
//! TCP / UDP / ICMP / ICMPv6, into a `FlowKey` and the per-packet extras.
//!
//! Every read is bounds-checked against the linear packet data (direct packet access). A
//! non-linear skb whose headers are not all in the linear part is first made linear up to
//! [`HEADER_SPAN`] bytes with `bpf_skb_pull_data`, which moves bytes but changes none, so only a
//! frame that is really too short fails. A failure leaves what was parsed so far in `Parsed`.
//!
//! Why not fall back to `bpf_skb_load_bytes` per read: LLVM merges the two paths into one load
//! through a selected pointer, which the verifier rejects (pointer arithmetic on a select).

use aya_ebpf::programs::TcContext;
use ayaflow_common::{
    event::EVENT_FLAG_FRAGMENT,
    flow::{ETH_P_IP, ETH_P_IPV6, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

const ETH_HLEN: usize = 14;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// 802.1Q / 802.1ad tags read before giving up on the EtherType (QinQ is two).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the chain is declared bogus.
const MAX_IPV6_EXT: usize = 8;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_UDPLITE: u8 = 136;

/// What the parser learnt about one frame.
#[derive(Default)]
pub struct Parsed {
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `EVENT_FLAG_*` bits.
    pub flags: u8,
    pub vlan_id: u16,
    /// Bytes of L2 to L4 headers: what every GSO segment repeats on the wire.
    pub header_len: u32,
}

/// The frame ended before a header it announced, or a header was invalid.
pub struct Malformed;

/// Bytes from the start of the frame that must be linear for the parser: Ethernet, two VLAN
/// tags, IPv4 with options or IPv6 with a few extension headers, and the L4 header.
pub const HEADER_SPAN: u32 = 256;

/// Reads a `T` (a byte array) at `off` of the linear data.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(Malformed);
    }
    // SAFETY: the range was checked against data_end just above.
    Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

/// Makes the first `HEADER_SPAN` bytes (or the whole frame, if shorter) linear.
#[inline(always)]
fn ensure_linear(ctx: &TcContext) {
    let want = if ctx.len() < HEADER_SPAN {
        ctx.len()
    } else {
        HEADER_SPAN
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // On failure the parser simply stops at the linear end; the packet is still counted.
        let _ = ctx.pull_data(want);
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses the frame in `ctx` into `p`. On `Err`, `p` holds the headers parsed before the fault.
#[inline(always)]
pub fn parse(ctx: &TcContext, p: &mut Parsed) -> Result<(), Malformed> {
    ensure_linear(ctx);
    let eth: [u8; ETH_HLEN] = read(ctx, 0)?;
    let mut ether_type = be16([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    p.header_len = off as u32;
    p.key.ether_type = ether_type;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag: [u8; 4] = read(ctx, off)?;
        if p.vlan_id == 0 {
            p.vlan_id = be16([tag[0], tag[1]]) & 0x0fff;
        }
        ether_type = be16([tag[2], tag[3]]);
        off += 4;
        p.header_len = off as u32;
        p.key.ether_type = ether_type;
    }
    let (protocol, l4_off) = match ether_type {
        ETH_P_IP => parse_ipv4(ctx, off, p)?,
        ETH_P_IPV6 => parse_ipv6(ctx, off, p)?,
        _ => return Ok(()),
    };
    p.key.protocol = protocol;
    p.header_len = l4_off as u32;
    if p.flags & EVENT_FLAG_FRAGMENT != 0 {
        return Ok(());
    }
    parse_l4(ctx, l4_off, p)
}

/// Returns (protocol, offset of the L4 header).
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, off: usize, p: &mut Parsed) -> Result<(u8, usize), Malformed> {
    let ip: [u8; 20] = read(ctx, off)?;
    p.key.protocol = ip[9];
    p.key.src_addr[..4].copy_from_slice(&ip[12..16]);
    p.key.dst_addr[..4].copy_from_slice(&ip[16..20]);
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 {
        return Err(Malformed);
    }
    // Only the first fragment (offset 0) carries the L4 header.
    if be16([ip[6], ip[7]]) & 0x1fff != 0 {
        p.flags |= EVENT_FLAG_FRAGMENT;
    }
    Ok((ip[9], off + ihl))
}

/// Returns (protocol after the extension headers, offset of the L4 header).
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize, p: &mut Parsed) -> Result<(u8, usize), Malformed> {
    let ip: [u8; 40] = read(ctx, off)?;
    if ip[0] >> 4 != 6 {
        return Err(Malformed);
    }
    p.key.src_addr.copy_from_slice(&ip[8..24]);
    p.key.dst_addr.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    p.key.protocol = next;
    let mut off = off + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h: [u8; 2] = read(ctx, off)?;
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let h: [u8; 2] = read(ctx, off)?;
                next = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h: [u8; 4] = read(ctx, off)?;
                next = h[0];
                off += 8;
                if be16([h[2], h[3]]) >> 3 != 0 {
                    p.flags |= EVENT_FLAG_FRAGMENT;
                    return Ok((next, off));
                }
            }
            _ => return Ok((next, off)),
        }
        p.key.protocol = next;
    }
    // Still inside the chain after MAX_IPV6_EXT headers: a bogus or hostile chain.
    Err(Malformed)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, p: &mut Parsed) -> Result<(), Malformed> {
    match p.key.protocol {
        IPPROTO_TCP => {
            let tcp: [u8; 20] = read(ctx, off)?;
            p.key.src_port = be16([tcp[0], tcp[1]]);
            p.key.dst_port = be16([tcp[2], tcp[3]]);
            p.tcp_flags = tcp[13];
            let doff = ((tcp[12] >> 4) as u32) * 4;
            if doff < 20 {
                return Err(Malformed);
            }
            p.header_len = off as u32 + doff;
        }
        IPPROTO_UDP | IPPROTO_UDPLITE => {
            let udp: [u8; 8] = read(ctx, off)?;
            p.key.src_port = be16([udp[0], udp[1]]);
            p.key.dst_port = be16([udp[2], udp[3]]);
            p.header_len = off as u32 + 8;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp: [u8; 2] = read(ctx, off)?;
            p.icmp_type = icmp[0];
            p.icmp_code = icmp[1];
        }
        _ => {}
    }
    Ok(())
}
