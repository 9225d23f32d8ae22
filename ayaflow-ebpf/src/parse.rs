//! Header parsing: Ethernet -> up to two VLAN tags -> IPv4 / IPv6 (+ extension headers) ->
//! TCP / UDP / ICMP / ICMPv6, into a `FlowKey` and the per-packet extras.
//!
//! Every read is bounds-checked against the linear packet data (direct packet access): one check
//! per header, then whole-word loads inside it (see [`Header::word`] for why they are typed). A
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

/// What the parser learnt about one frame. Laid out so that zeroing it and filling the key are
/// whole 64-bit stores.
#[repr(C)]
#[derive(Default)]
pub struct Parsed {
    pub key: FlowKey,
    /// Bytes of L2 to L4 headers: what every GSO segment repeats on the wire.
    pub header_len: u32,
    pub vlan_id: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `EVENT_FLAG_*` bits.
    pub flags: u8,
    /// Makes the size a multiple of 8, so zeroing is seven 64-bit stores rather than a call to
    /// a byte-wise `memset` loop.
    _pad: [u8; 6],
}
const _: () = assert!(size_of::<Parsed>() == 56);

/// The frame ended before a header it announced, or a header was invalid.
pub struct Malformed;

/// Bytes from the start of the frame that must be linear for the parser: Ethernet, two VLAN
/// tags, IPv4 with options or IPv6 with a few extension headers, and the L4 header.
pub const HEADER_SPAN: u32 = 256;

/// `len` bytes of the linear data, checked once against `data_end`.
#[derive(Clone, Copy)]
struct Header(*const u8);

impl Header {
    #[inline(always)]
    fn at(ctx: &TcContext, off: usize, len: usize) -> Result<Header, Malformed> {
        let start = ctx.data() + off;
        if start + len > ctx.data_end() {
            return Err(Malformed);
        }
        Ok(Header(start as *const u8))
    }

    #[inline(always)]
    fn byte(self, at: usize) -> u8 {
        // SAFETY: `at` is inside the range checked in `Header::at` (callers pass constants
        // below the `len` they checked).
        unsafe { *self.0.add(at) }
    }

    /// A whole `T` (u16, u32 or u64) at `at`, in network byte order, in one load.
    ///
    /// Typed rather than `read_unaligned`: LLVM's BPF backend splits an align-1 load into byte
    /// loads, shifts and ORs (about 10 instructions per word, 90 for an IPv6 address pair). The
    /// load itself has no alignment requirement on the machines TC programs run on: the
    /// verifier only enforces packet alignment with `BPF_F_STRICT_ALIGNMENT` or on CPUs without
    /// efficient unaligned access, and C programs read `struct iphdr` fields the same way.
    #[inline(always)]
    fn word<T: Copy>(self, at: usize) -> T {
        // SAFETY: inside the checked range as for `byte`; see above on alignment.
        unsafe { core::ptr::read(self.0.add(at).cast::<T>()) }
    }

    #[inline(always)]
    fn be16(self, at: usize) -> u16 {
        u16::from_be(self.word::<u16>(at))
    }
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

/// Copies `N` 32-bit words of an address from `h` at `at` into `dst` (an address of the key,
/// which is 8-aligned, so the stores are whole words too).
#[inline(always)]
fn copy_addr<const N: usize>(dst: &mut [u8; 16], h: Header, at: usize) {
    let dst = dst.as_mut_ptr().cast::<u32>();
    for i in 0..N {
        // SAFETY: `dst` is 4-aligned (offset 0 or 16 of an 8-aligned FlowKey) and N <= 4.
        unsafe { *dst.add(i) = h.word::<u32>(at + 4 * i) };
    }
}

/// Parses the frame in `ctx` into `p`. On `Err`, `p` holds the headers parsed before the fault.
#[inline(always)]
pub fn parse(ctx: &TcContext, p: &mut Parsed) -> Result<(), Malformed> {
    ensure_linear(ctx);
    let eth = Header::at(ctx, 0, ETH_HLEN)?;
    let mut ether_type = eth.be16(12);
    let mut off = ETH_HLEN;
    p.header_len = off as u32;
    p.key.ether_type = ether_type;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag = Header::at(ctx, off, 4)?;
        if p.vlan_id == 0 {
            p.vlan_id = tag.be16(0) & 0x0fff;
        }
        ether_type = tag.be16(2);
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
    let ip = Header::at(ctx, off, 20)?;
    let protocol = ip.byte(9);
    p.key.protocol = protocol;
    copy_addr::<1>(&mut p.key.src_addr, ip, 12);
    copy_addr::<1>(&mut p.key.dst_addr, ip, 16);
    let version_ihl = ip.byte(0);
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Err(Malformed);
    }
    // Only the first fragment (offset 0) carries the L4 header.
    if ip.be16(6) & 0x1fff != 0 {
        p.flags |= EVENT_FLAG_FRAGMENT;
    }
    Ok((protocol, off + ihl))
}

/// Returns (protocol after the extension headers, offset of the L4 header).
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize, p: &mut Parsed) -> Result<(u8, usize), Malformed> {
    let ip = Header::at(ctx, off, 40)?;
    if ip.byte(0) >> 4 != 6 {
        return Err(Malformed);
    }
    copy_addr::<4>(&mut p.key.src_addr, ip, 8);
    copy_addr::<4>(&mut p.key.dst_addr, ip, 24);
    let mut next = ip.byte(6);
    p.key.protocol = next;
    let mut off = off + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h = Header::at(ctx, off, 2)?;
                next = h.byte(0);
                off += (h.byte(1) as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let h = Header::at(ctx, off, 2)?;
                next = h.byte(0);
                off += (h.byte(1) as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h = Header::at(ctx, off, 4)?;
                next = h.byte(0);
                off += 8;
                if h.be16(2) >> 3 != 0 {
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
            let tcp = Header::at(ctx, off, 20)?;
            p.key.src_port = tcp.be16(0);
            p.key.dst_port = tcp.be16(2);
            p.tcp_flags = tcp.byte(13);
            let doff = ((tcp.byte(12) >> 4) as u32) * 4;
            if doff < 20 {
                return Err(Malformed);
            }
            p.header_len = off as u32 + doff;
        }
        IPPROTO_UDP | IPPROTO_UDPLITE => {
            let udp = Header::at(ctx, off, 8)?;
            p.key.src_port = udp.be16(0);
            p.key.dst_port = udp.be16(2);
            p.header_len = off as u32 + 8;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp = Header::at(ctx, off, 2)?;
            p.icmp_type = icmp.byte(0);
            p.icmp_code = icmp.byte(1);
        }
        _ => {}
    }
    Ok(())
}
