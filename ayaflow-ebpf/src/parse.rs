//! Header parsing: Ethernet -> up to two VLAN tags -> IPv4 / IPv6 (+ extension headers) ->
//! TCP / UDP / ICMP / ICMPv6, into a `FlowKey` and the per-packet extras.
//!
//! On links without a link-layer header (tun, WireGuard, ipip, sit, GRE, PPP: the agent picks
//! the `_l3` programs for them by the interface's ARPHRD type) the frame starts at the network
//! header and the EtherType is the skb's `protocol`.
//!
//! The parser never changes the skb (an observer must not: `bpf_skb_pull_data` on a clone
//! reallocates its head and copies it, an allocation and a copy per packet). It reads each
//! header from one of two [`Source`]s:
//! - [`Direct`]: in place, bounds-checked against the linear data (direct packet access): one
//!   check per header, then whole-word loads inside it (see [`Header::word`] for why they are
//!   typed). Every frame whose linear part holds at least Ethernet and a minimal IPv4 header is
//!   tried this way first; a TCP segment's headers are linear even when its payload is paged.
//! - [`Copied`]: `bpf_skb_load_bytes` of the frame's first 96 bytes into a stack buffer, in one
//!   call (a header beyond them gets a call of its own), which reads paged data (an AF_PACKET
//!   TX ring's frames are linear only up to the Ethernet header) and leaves the skb as it is.
//!   Used for a non-linear skb whose linear part is shorter than that, or when the direct
//!   parse ran past its linear end (then it starts again from the first header).
//!
//! The copying parse is its own function, never inlined: inlined into one body, LLVM merges
//! the two paths into one load through a selected pointer (packet or stack), which the verifier
//! rejects (pointer arithmetic on a select). A failure leaves what was parsed so far in
//! `Parsed`.

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_load_bytes, programs::TcContext};
use ayaflow_common::{
    event::EVENT_FLAG_FRAGMENT,
    flow::{
        ETH_P_802_3_MIN, ETH_P_IP, ETH_P_IPV6, ETH_TYPE_8023, FlowKey, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    },
};

use crate::tunnel;

const ETH_HLEN: usize = 14;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// 802.1Q / 802.1ad tags read before giving up on the EtherType (QinQ is two).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers accepted before the upper-layer header (README: "up to 8"); a chain
/// with more is declared bogus.
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
    /// Bytes of L2 to L4 headers in the frame: what every GSO segment repeats on the wire
    /// (besides an offloaded VLAN tag, see `offloaded_tag`).
    pub header_len: u32,
    /// The outermost VLAN tag's VLAN ID (offloaded or in the frame); 0 if untagged.
    pub vlan_id: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `EVENT_FLAG_*` bits.
    pub flags: u8,
    /// Bytes of a VLAN tag held as skb metadata rather than in the frame (rx/tx VLAN offload):
    /// 4 or 0. On the wire every frame (every GSO segment) carries it.
    pub offloaded_tag: u8,
    /// Makes the size a multiple of 8, so zeroing is eight 64-bit stores rather than a call to
    /// a byte-wise `memset` loop.
    _pad: [u8; 5],
}
const _: () = assert!(size_of::<Parsed>() == 64);

/// The frame ended before a header it announced, or a header was invalid.
pub struct Malformed;

/// `LEN` bytes of one header, either in the packet's linear data or in a stack copy; valid
/// until the next [`Source::header`] call.
#[derive(Clone, Copy)]
pub(crate) struct Header(*const u8);

impl Header {
    #[inline(always)]
    pub(crate) fn byte(self, at: usize) -> u8 {
        // SAFETY: `at` is inside the range the source checked or copied (callers pass
        // constants below the `LEN` they asked for).
        unsafe { *self.0.add(at) }
    }

    /// A whole `T` (u16, u32 or u64) at `at`, in network byte order, in one load.
    ///
    /// Typed rather than `read_unaligned`: LLVM's BPF backend splits an align-1 load into byte
    /// loads, shifts and ORs (about 10 instructions per word, 90 for an IPv6 address pair). The
    /// load itself has no alignment requirement on the machines TC programs run on: the
    /// verifier only enforces packet alignment with `BPF_F_STRICT_ALIGNMENT` or on CPUs without
    /// efficient unaligned access, and C programs read `struct iphdr` fields the same way. In
    /// the stack copies, which the verifier always checks for alignment, every field read is
    /// naturally aligned (see [`Copied`]).
    #[inline(always)]
    fn word<T: Copy>(self, at: usize) -> T {
        // SAFETY: inside the range as for `byte`; see above on alignment.
        unsafe { core::ptr::read(self.0.add(at).cast::<T>()) }
    }

    #[inline(always)]
    pub(crate) fn be16(self, at: usize) -> u16 {
        u16::from_be(self.word::<u16>(at))
    }
}

/// Where the parser reads headers from.
pub(crate) trait Source {
    /// The `LEN` bytes at `off` from the start of the frame, or `Err` if the frame (or, for
    /// [`Direct`], its linear part) ends before them.
    fn header<const LEN: usize>(&mut self, off: usize) -> Result<Header, Malformed>;

    /// The packet's context.
    fn skb(&self) -> *mut __sk_buff;
}

/// The linear data, in place.
struct Direct<'a>(&'a TcContext);

impl Source for Direct<'_> {
    #[inline(always)]
    fn header<const LEN: usize>(&mut self, off: usize) -> Result<Header, Malformed> {
        let start = self.0.data() + off;
        if start + LEN > self.0.data_end() {
            return Err(Malformed);
        }
        Ok(Header(start as *const u8))
    }

    #[inline(always)]
    fn skb(&self) -> *mut __sk_buff {
        self.0.skb.skb
    }
}

/// The largest header read at once (the fixed IPv6 header).
const MAX_HEADER: usize = 40;

/// Bytes from the start of the frame that [`Copied`] copies at once: Ethernet, two VLAN tags,
/// IPv4 with 34 bytes of options or IPv6 with an 8-byte extension header, and TCP.
const SPAN: usize = 96;
/// Where an Ethernet frame starts in [`Copied::first`]: 2 bytes in, so that the IP header after
/// its 14-byte header (and any 4-byte tags) is 4-aligned, and so are its addresses and the L4
/// header after it. A frame of a link without a link-layer header starts with the IP header:
/// at 0.
const ETH_SHIFT: usize = 2;

/// Copies with `bpf_skb_load_bytes`, which reads paged data too: the first [`SPAN`] bytes (or
/// the whole frame, if shorter) in one call rather than one per header (three for IPv4/UDP):
/// each call walks the skb's fragments again, and a quick run of the bench's `inplace` section
/// measured one call 30 ns cheaper per paged frame; a header beyond them gets a call of its own.
///
/// The verifier checks every stack access for alignment, also at offsets known only at run
/// time; it can prove them here because every header offset is 2 (Ethernet, VLAN tags) or 4
/// (IPv4 options, IPv6 extension headers) times a count, and the typed reads inside a header
/// are at offsets of their own alignment (see [`Header::word`]).
struct Copied<'b, const SHIFT: usize> {
    skb: *mut __sk_buff,
    /// The first `span` bytes of the frame, from byte `SHIFT` on (see [`ETH_SHIFT`]).
    first: &'b mut MaybeUninit<[u64; FIRST_WORDS]>,
    span: usize,
    /// A header beyond `span`, copied by a call of its own.
    buf: &'b mut MaybeUninit<[u64; MAX_HEADER / 8]>,
}

/// Words of [`Copied::first`]: the span and the shift before it.
const FIRST_WORDS: usize = (SPAN + ETH_SHIFT).div_ceil(8);

impl<'b, const SHIFT: usize> Copied<'b, SHIFT> {
    /// Copies the first [`SPAN`] bytes of `skb` into `first`. The buffers are the caller's
    /// locals, left uninitialised: a struct that owned them was built, zeroed (18 stores) and
    /// then moved to another stack slot (20 more loads and stores) on every paged frame. The
    /// verifier counts the bytes the helper may write (up to [`SPAN`]) as written, and
    /// [`Source::header`] reads none beyond what it did write.
    #[inline(always)]
    fn new(
        skb: *mut __sk_buff,
        first: &'b mut MaybeUninit<[u64; FIRST_WORDS]>,
        buf: &'b mut MaybeUninit<[u64; MAX_HEADER / 8]>,
    ) -> Self {
        // SAFETY: reading a field of the context the kernel handed us.
        let len = unsafe { (*skb).len } as usize;
        let span = if len < SPAN { len } else { SPAN };
        // SAFETY: the helper writes `span` <= SPAN bytes from byte SHIFT of `first`, which
        // holds SHIFT + SPAN.
        let copied = span > 0
            && unsafe {
                bpf_skb_load_bytes(
                    skb as *const _,
                    0,
                    first.as_mut_ptr().cast::<u8>().add(SHIFT).cast(),
                    span as u32,
                )
            } == 0;
        Copied {
            skb,
            first,
            span: if copied { span } else { 0 },
            buf,
        }
    }
}

impl<const SHIFT: usize> Source for Copied<'_, SHIFT> {
    #[inline(always)]
    fn header<const LEN: usize>(&mut self, off: usize) -> Result<Header, Malformed> {
        const { assert!(LEN <= MAX_HEADER) };
        if off + LEN <= self.span {
            // SAFETY: inside the `span` bytes copied to `first` (written by the helper).
            return Ok(Header(unsafe {
                self.first.as_ptr().cast::<u8>().add(SHIFT + off)
            }));
        }
        // SAFETY: the helper writes at most LEN bytes into `buf`, which holds MAX_HEADER.
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.skb as *const _,
                off as u32,
                self.buf.as_mut_ptr().cast(),
                LEN as u32,
            )
        };
        if ret < 0 {
            return Err(Malformed);
        }
        // The helper wrote all LEN bytes (it returned 0).
        Ok(Header(self.buf.as_ptr().cast()))
    }

    #[inline(always)]
    fn skb(&self) -> *mut __sk_buff {
        self.skb
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

/// Parses the frame in `ctx` into `p`; `L3`: the frame starts at the network header (see the
/// module documentation). On `Err`, `p` holds the headers parsed before the fault.
#[inline(always)]
pub fn parse<const L3: bool>(ctx: &TcContext, p: &mut Parsed) -> Result<(), Malformed> {
    let r = parse_frame::<L3>(ctx, p);
    // With VLAN offload the outermost tag is skb metadata, not in the frame: on receive the
    // NIC (or, for a tag that arrived in the frame, the stack's `skb_vlan_untag` in
    // `__netif_receive_skb_core`, before the TC hook) moved it there; on send the stack leaves
    // it for the NIC to insert. It is still the outermost tag on the wire; an inner 802.1Q tag
    // of 802.1ad stays in the frame and is walked like any other.
    // SAFETY: reading fields of the context the kernel handed us.
    let (present, tci) = unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).vlan_tci) };
    if present != 0 {
        p.vlan_id = (tci & 0x0fff) as u16;
        p.offloaded_tag = 4;
    }
    r
}

/// Linear bytes a frame needs for its first headers to be read in place: Ethernet and a
/// minimal IPv4 header, or (`L3`) the IPv4 header alone.
const fn min_linear(l3: bool) -> usize {
    if l3 { 20 } else { ETH_HLEN + 20 }
}

#[inline(always)]
fn parse_frame<const L3: bool>(ctx: &TcContext, p: &mut Parsed) -> Result<(), Malformed> {
    // Whether the skb has no paged part; asked only off the common path (a frame whose first
    // headers are linear and parse).
    let whole = || ctx.data_end() - ctx.data() >= ctx.len() as usize;
    // A non-linear frame too short in its linear part for even the first headers (an AF_PACKET
    // TX ring's frames are linear up to the Ethernet header only) is copied at once, rather
    // than parsed in place up to where it fails and then parsed again. Compared as pointers,
    // as the verifier tracks packet bounds (LLVM then drops the Ethernet header's own check).
    if ctx.data() + min_linear(L3) <= ctx.data_end() || whole() {
        if parse_from::<_, L3>(&mut Direct(ctx), p).is_ok() {
            return Ok(());
        }
        if whole() {
            // Everything is linear: the frame itself is short or invalid.
            return Err(Malformed);
        }
        // A header reaches past the linear part: start again from copies. Rare (some
        // drivers' receive paths), and never for a frame whose headers the stack wrote
        // itself. What `observe` set before parsing (the hook's direction and interface)
        // stays.
        let (direction, ifindex) = (p.key.direction, p.key.ifindex);
        *p = Parsed::default();
        p.key.direction = direction;
        p.key.ifindex = ifindex;
    }
    parse_copied::<L3>(ctx.skb.skb, p)
}

/// [`parse_from`] a [`Copied`] source. Never inlined: see the module documentation.
#[inline(never)]
fn parse_copied<const L3: bool>(skb: *mut __sk_buff, p: &mut Parsed) -> Result<(), Malformed> {
    let mut first = MaybeUninit::uninit();
    let mut buf = MaybeUninit::uninit();
    if L3 {
        parse_from::<_, L3>(&mut Copied::<0>::new(skb, &mut first, &mut buf), p)
    } else {
        parse_from::<_, L3>(&mut Copied::<ETH_SHIFT>::new(skb, &mut first, &mut buf), p)
    }
}

#[inline(always)]
fn parse_from<S: Source, const L3: bool>(src: &mut S, p: &mut Parsed) -> Result<(), Malformed> {
    if L3 {
        // SAFETY: reading a field of the context the kernel handed us.
        let ether_type = u16::from_be(unsafe { (*src.skb()).protocol } as u16);
        p.key.ether_type = ether_type;
        return parse_ip(src, 0, ether_type, p);
    }
    let eth = src.header::<ETH_HLEN>(0)?;
    let mut ether_type = eth.be16(12);
    let mut off = ETH_HLEN;
    p.header_len = off as u32;
    p.key.ether_type = ether_type;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag = src.header::<4>(off)?;
        if p.vlan_id == 0 {
            p.vlan_id = tag.be16(0) & 0x0fff;
        }
        ether_type = tag.be16(2);
        off += 4;
        p.header_len = off as u32;
        p.key.ether_type = ether_type;
    }
    if ether_type < ETH_P_802_3_MIN {
        // A length, not an EtherType: an IEEE 802.3 frame (LLC: STP, CDP, ...), counted as
        // non-IP under one name rather than one "EtherType" per frame length.
        p.key.ether_type = ETH_TYPE_8023;
        return Ok(());
    }
    parse_ip(src, off, ether_type, p)
}

/// The IP header at `off` and what follows, if `ether_type` is IPv4 or IPv6.
#[inline(always)]
fn parse_ip<S: Source>(
    src: &mut S,
    off: usize,
    ether_type: u16,
    p: &mut Parsed,
) -> Result<(), Malformed> {
    let (protocol, l4_off) = match ether_type {
        ETH_P_IP => parse_ipv4(src, off, p)?,
        ETH_P_IPV6 => parse_ipv6(src, off, p)?,
        _ => return Ok(()),
    };
    p.key.protocol = protocol;
    p.header_len = l4_off as u32;
    if p.flags & EVENT_FLAG_FRAGMENT != 0 {
        return Ok(());
    }
    parse_l4(src, l4_off, p)
}

/// Returns (protocol, offset of the L4 header).
#[inline(always)]
fn parse_ipv4<S: Source>(
    src: &mut S,
    off: usize,
    p: &mut Parsed,
) -> Result<(u8, usize), Malformed> {
    let ip = src.header::<20>(off)?;
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
fn parse_ipv6<S: Source>(
    src: &mut S,
    off: usize,
    p: &mut Parsed,
) -> Result<(u8, usize), Malformed> {
    let ip = src.header::<40>(off)?;
    if ip.byte(0) >> 4 != 6 {
        return Err(Malformed);
    }
    copy_addr::<4>(&mut p.key.src_addr, ip, 8);
    copy_addr::<4>(&mut p.key.dst_addr, ip, 24);
    let mut next = ip.byte(6);
    p.key.protocol = next;
    let mut off = off + 40;
    // One more round than headers accepted: the last one only finds the upper-layer header.
    for _ in 0..=MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h = src.header::<2>(off)?;
                next = h.byte(0);
                off += (h.byte(1) as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let h = src.header::<2>(off)?;
                next = h.byte(0);
                off += (h.byte(1) as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let h = src.header::<4>(off)?;
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
    // Still inside the chain after more than MAX_IPV6_EXT headers: a bogus or hostile chain.
    Err(Malformed)
}

#[inline(always)]
fn parse_l4<S: Source>(src: &mut S, off: usize, p: &mut Parsed) -> Result<(), Malformed> {
    match p.key.protocol {
        IPPROTO_TCP => {
            let tcp = src.header::<20>(off)?;
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
            let udp = src.header::<8>(off)?;
            p.key.src_port = udp.be16(0);
            p.key.dst_port = udp.be16(2);
            p.header_len = off as u32 + 8;
            // A GSO aggregate to a tunnel port: every segment also repeats the inner headers.
            // SAFETY: reading a field of the context the kernel handed us.
            if unsafe { (*src.skb()).gso_segs } > 1
                && let Some(end) = tunnel::inner_headers_end(src, off + 8, p.key.dst_port)
            {
                p.header_len = end;
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp = src.header::<2>(off)?;
            p.icmp_type = icmp.byte(0);
            p.icmp_code = icmp.byte(1);
        }
        _ => {}
    }
    Ok(())
}
