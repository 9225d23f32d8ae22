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
/// The key's `ether_type` for an IEEE 802.3 frame, whose type field (below 0x0600, as the
/// kernel's `eth_proto_is_802_3` decides) is the payload's length rather than an EtherType; the
/// payload is an 802.2 LLC header (STP, CDP, ...). 0x0000 is no EtherType, so it names no other
/// protocol.
pub const ETH_TYPE_8023: u16 = 0;
/// Type-field values from here on are EtherTypes; below, lengths (IEEE 802.3 clause 3.2.6).
pub const ETH_P_802_3_MIN: u16 = 0x0600;
/// IP protocol numbers the parser understands.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Identifies one direction of one connection as the hook saw it.
///
/// IPv4 addresses sit in the first four bytes of the address arrays, the rest zero; `ether_type`
/// says which family. Frames that are not IP keep their EtherType, protocol 0 and zero addresses;
/// IEEE 802.3 length frames have [`ETH_TYPE_8023`].
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
    /// The kernel's index of the interface whose hook saw the packet (`skb->ifindex`): the same
    /// connection seen on two interfaces is two keys, each counted once.
    pub ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8);

/// A slot of the flow table ([`FlowSlot::state`]) that holds no connection.
pub const SLOT_EMPTY: u32 = 0;
/// The slot holds a connection: the kernel adds to it, the agent takes the sums away.
pub const SLOT_LIVE: u32 = 2;
/// The agent found the connection idle; the kernel no longer matches it, and the agent frees
/// the slot at a later sweep, after reading what was added meanwhile.
pub const SLOT_DRAINING: u32 = 3;

/// A position of the flow table's index (`FLOW_INDEX`) that points at no slot.
pub const INDEX_EMPTY: u32 = 0;
/// A position the kernel program took for a new connection and is about to point at a slot.
/// Any other value is a slot number plus one.
pub const INDEX_RESERVED: u32 = u32::MAX;

/// Index positions the kernel program tries, from the key's hash onwards (linear probing),
/// before a new connection falls back to a ring-buffer event.
pub const FLOW_PROBES: u32 = 8;

/// Index positions per slot: the index is kept at most half full, so probe runs stay short.
pub const INDEX_POSITIONS_PER_SLOT: u32 = 2;

/// One slot of the flow table (flow mode): a connection's key and what its packets added since
/// the agent last took the sums. Exactly one cache line, the only memory of the table a packet
/// of a known connection writes.
///
/// The table is two-level. A hash of the key picks a position of `FLOW_INDEX` (a 4-byte value,
/// which the BPF array stores in 8 bytes), which holds the number of the connection's slot;
/// slots are handed out densely from a free stack, so the slots in use stay packed together.
/// Measured (BENCHMARKS.md): with 100,000 connections a packet's slot was a cache and TLB miss
/// in a sparse table of 80-byte slots; the dense slots touch far fewer pages, and the index
/// position, now the larger miss (perf in the capture bench), is a small part of a cache line.
///
/// The slots are a BPF array that the agent maps into its memory (`BPF_F_MMAPABLE`). The
/// kernel adds a packet to its slot's [`counts`] word with one atomic add; the agent takes the
/// sums with an atomic exchange (`swap(0)`), so no packet is lost or counted twice between the
/// two sides, and the agent reads the table without a system call. Ownership of a slot moves
/// with `state` (see the `SLOT_*` constants): the kernel fills a slot it popped from the free
/// stack and makes it live, the agent drains idle ones and pushes them back.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// `SLOT_*`.
    pub state: u32,
    /// OR of the TCP flag bytes seen (the kernel ORs the 32-bit word that starts here).
    pub tcp_flags: u8,
    /// Type and code of the latest ICMP/ICMPv6 message.
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: u8,
    pub key: FlowKey,
    /// Packets (each GSO segment counted) and bytes on the wire (headers of every segment
    /// included) since the agent last took them, packed in one word ([`counts`]).
    pub counts: u64,
}
const _: () = assert!(core::mem::size_of::<FlowSlot>() == 64);
const _: () = assert!(core::mem::offset_of!(FlowSlot, key) == 8);

/// What the kernel program writes once, when it claims a slot: kept beside the slots
/// (`FLOW_CLAIMS`, same numbering) so that a slot stays one cache line.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotClaim {
    /// CLOCK_MONOTONIC nanoseconds of the connection's first packet (`bpf_ktime_get_ns`).
    pub first_seen_ns: u64,
    /// The `FLOW_INDEX` position that points at the slot, which the agent empties when it
    /// frees the slot.
    pub index_pos: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SlotClaim>() == 16);

/// The free stack of slots (`FLOW_FREE`, with its top word `FLOW_FREE_TOP`), as both sides
/// read it. The kernel program pops, the agent pushes, both with a compare-and-exchange of the
/// top word, which holds a generation count (high 32 bits, bumped by every change, so a stale
/// compare-and-exchange always fails) and how many slots are taken (low 32 bits).
///
/// Entry `i` of `FLOW_FREE` holds a slot number XOR `i`, so the all-zero array the kernel
/// creates is already a full stack of every slot: no set-up is needed before the program runs.
/// With `taken` slots out, the top of the stack is entry `slots - taken - 1`.
pub mod free_stack {
    /// The top word for `generation` and `taken`.
    #[inline(always)]
    pub fn top_word(generation: u32, taken: u32) -> u64 {
        ((generation as u64) << 32) | taken as u64
    }

    /// The generation and the number of slots taken in a top word.
    #[inline(always)]
    pub fn split(top: u64) -> (u32, u32) {
        ((top >> 32) as u32, top as u32)
    }

    /// The `FLOW_FREE` value that stores `slot` at entry `entry`, and back.
    #[inline(always)]
    pub fn encode(slot: u32, entry: u32) -> u32 {
        slot ^ entry
    }
}

/// A slot's `counts` word: packets in the top [`PACKET_BITS`](counts::PACKET_BITS) bits, bytes
/// in the others, so that one atomic add counts a packet (two were a quarter of the program's
/// time on the packet path, measured with `perf` in the capture bench: each is a locked
/// instruction).
///
/// Neither field may overflow into the other. The kernel adds only while both are below half
/// their range ([`counts::has_room`]) and otherwise sends the packet to the ring buffer,
/// counted as a fallback, until the agent's next sweep empties the word. The half left holds
/// what 2,048 CPUs add if each passes the check at the same instant with the largest skb
/// (65,535 segments, 512 KiB with BIG TCP). Reaching half takes 2^27 packets or 32 GiB of one
/// direction of one connection between two sweeps (a second apart): in practice only an agent
/// that stopped sweeping.
pub mod counts {
    /// Bits of the packet count, at the top of the word.
    pub const PACKET_BITS: u32 = 28;
    /// Bits of the byte count, at the bottom of the word.
    pub const BYTE_BITS: u32 = 64 - PACKET_BITS;
    const BYTE_MASK: u64 = (1 << BYTE_BITS) - 1;

    /// The word that adds `packets` (an skb's segments: below 2^16) and `bytes`.
    #[inline(always)]
    pub fn pack(packets: u32, bytes: u32) -> u64 {
        ((packets as u64) << BYTE_BITS) | bytes as u64
    }

    /// The packets and bytes of a word.
    #[inline(always)]
    pub fn split(word: u64) -> (u64, u64) {
        (word >> BYTE_BITS, word & BYTE_MASK)
    }

    /// Whether the kernel may add to a word that holds `word`: both fields below half their
    /// range.
    #[inline(always)]
    pub fn has_room(word: u64) -> bool {
        word >> (64 - 1) == 0 && word & (1 << (BYTE_BITS - 1)) == 0
    }
}

/// 64-bit words of a [`FlowKey`].
pub const KEY_WORDS: usize = core::mem::size_of::<FlowKey>() / 8;

/// The flow table's index position for `key`: where linear probing starts. The kernel program
/// computes it; the agent never needs to (a slot's [`SlotClaim`] says where it is indexed). A
/// seeded multiply-xor over the key's [`KEY_WORDS`] words, a few instructions (the kernel's
/// hash map spent about as long in `jhash` as in the rest of the program). The seed is random
/// per agent start, so where keys collide cannot be known in advance; a run of
/// [`FLOW_PROBES`] taken positions only sends the new connection to the ring buffer, counted.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u64) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed;
    for i in 0..KEY_WORDS {
        h = (h ^ key.word(i)).wrapping_mul(K);
        h ^= h >> 29;
    }
    (h >> 32) as u32
}

impl FlowKey {
    /// 64-bit word `i` (below [`KEY_WORDS`]) of the key, read from memory (volatile): the
    /// kernel program hashes and compares whole words in place. Read this way, LLVM neither
    /// splits the key into bytes in registers (which it did, rebuilding every word byte by
    /// byte) nor copies it to the stack (the 512-byte stack is shared with the parser).
    #[inline(always)]
    pub fn word(&self, i: usize) -> u64 {
        let p = (self as *const FlowKey).cast::<u64>();
        // SAFETY: FlowKey is 48 bytes, 8-aligned, plain old data: KEY_WORDS u64 words; the
        // caller's index is below KEY_WORDS (the loops here are bounded by it).
        unsafe { core::ptr::read_volatile(p.add(i % KEY_WORDS)) }
    }
}

#[cfg(feature = "user")]
// SAFETY: plain old data with explicit padding; every bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for FlowSlot {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SlotClaim {}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;

    #[test]
    fn counts_pack_add_and_split_exactly() {
        let mut word = 0u64;
        for (packets, bytes) in [(1, 60), (65_535, 512 << 10), (3, u32::MAX)] {
            word += counts::pack(packets, bytes);
        }
        assert_eq!(
            counts::split(word),
            (65_539, 60 + (512 << 10) + u64::from(u32::MAX))
        );
    }

    #[test]
    fn counts_have_room_only_below_half_of_each_field() {
        let half_packets = 1u64 << (counts::PACKET_BITS - 1);
        let half_bytes = 1u64 << (counts::BYTE_BITS - 1);
        let below = counts::pack((half_packets - 1) as u32, 0) | (half_bytes - 1);
        assert!(counts::has_room(below));
        assert!(!counts::has_room(counts::pack(half_packets as u32, 0)));
        assert!(!counts::has_room(half_bytes));
        // From just below half, the largest skb from each of 2,048 CPUs still fits in each
        // field: nothing carries from the bytes into the packets, nor out of the word.
        let mut word = below;
        for _ in 0..2048 {
            word += counts::pack(65_535, 512 << 10);
        }
        let (packets, bytes) = counts::split(word);
        assert_eq!(packets, half_packets - 1 + 2048 * 65_535);
        assert_eq!(bytes, half_bytes - 1 + 2048 * (512 << 10));
    }

    /// 100,000 connections that differ only in a port (the worst case for a weak hash: the
    /// bench's traffic) in an index of 262,144 positions, inserted as the kernel program does
    /// (linear probing, at most FLOW_PROBES positions): almost all find a position. Measured in
    /// situ with 262,144 slots: 30 of 100,000 fell back; a hash that kept the port's low bits
    /// together would fail by the thousand.
    #[test]
    fn sequential_ports_spread_over_the_table() {
        const SLOTS: u32 = 1 << 18;
        let mut taken = vec![false; SLOTS as usize];
        let mut fallbacks = 0;
        for seed in [0, 0x1234_5678_9abc_def0] {
            taken.iter_mut().for_each(|t| *t = false);
            fallbacks = 0;
            for i in 0..100_000u32 {
                let key = FlowKey {
                    src_addr: [
                        10,
                        0,
                        (i >> 16) as u8,
                        1,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ],
                    dst_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    src_port: i as u16,
                    dst_port: 53,
                    ether_type: ETH_P_IP,
                    protocol: IPPROTO_UDP,
                    direction: 0,
                    ifindex: 7,
                    _pad: 0,
                };
                let start = flow_hash(&key, seed);
                let free = (0..FLOW_PROBES)
                    .map(|p| (start.wrapping_add(p) & (SLOTS - 1)) as usize)
                    .find(|&s| !taken[s]);
                match free {
                    Some(s) => taken[s] = true,
                    None => fallbacks += 1,
                }
            }
            assert!(
                fallbacks < 200,
                "seed {seed:#x}: {fallbacks} of 100,000 fell back"
            );
        }
        assert!(fallbacks < 200);
    }

    #[test]
    fn the_seed_moves_every_key() {
        let key = FlowKey {
            src_port: 1000,
            ether_type: ETH_P_IP,
            ..FlowKey::default()
        };
        assert_ne!(flow_hash(&key, 1), flow_hash(&key, 2));
    }
}
