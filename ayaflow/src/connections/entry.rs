//! What the table keeps per connection, and the direction-independent key of a conversation.

use super::*;

/// What the table keeps per connection, as the rules read and change it; a shard stores it
/// packed with its key (`store::Record`, see the module docs for the bytes per connection).
#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    /// Packets per hook, indexed by `Direction as usize`; the total is their sum.
    pub(super) packets: [u64; 2],
    /// Bytes per hook, indexed like `packets`.
    pub(super) bytes: [u64; 2],
    pub(super) first_seen: u64,
    pub(super) last_seen: u64,
    pub(super) tcp_flags: u8,
    /// True if the oriented `src` is the key's `src`, false if it is the key's `dst`. Set when
    /// the entry is created and never changed.
    pub(super) src_is_key_src: bool,
    /// A FIN was seen from the oriented `src`.
    pub(super) fin_from_src: bool,
    /// A FIN was seen from the oriented `dst`.
    pub(super) fin_from_dst: bool,
    /// Closed by RST or FINs: out of the active set, kept until `expire` frees the slot after
    /// `CLOSED_LINGER`.
    pub(super) closed: bool,
}

impl Entry {
    pub(super) fn new(src_is_key_src: bool, first_seen: u64, last_seen: u64) -> Entry {
        Entry {
            packets: [0; 2],
            bytes: [0; 2],
            first_seen,
            last_seen,
            tcp_flags: 0,
            src_is_key_src,
            fin_from_src: false,
            fin_from_dst: false,
            closed: false,
        }
    }

    pub(super) fn total_packets(&self) -> u64 {
        self.packets[0].saturating_add(self.packets[1])
    }

    pub(super) fn total_bytes(&self) -> u64 {
        self.bytes[0].saturating_add(self.bytes[1])
    }

    pub(super) fn oriented(&self, key: &FiveTuple) -> FiveTuple {
        if self.src_is_key_src {
            *key
        } else {
            key.reversed()
        }
    }

    pub(super) fn snapshot(&self, key: &FiveTuple) -> ConnectionSnapshot {
        let ingress = Direction::Ingress as usize;
        let egress = Direction::Egress as usize;
        ConnectionSnapshot {
            tuple: self.oriented(key),
            packets: self.total_packets(),
            bytes: self.total_bytes(),
            ingress_packets: self.packets[ingress],
            ingress_bytes: self.bytes[ingress],
            egress_packets: self.packets[egress],
            egress_bytes: self.bytes[egress],
            first_seen_unix_ns: self.first_seen,
            last_seen_unix_ns: self.last_seen,
            tcp_flags: self.tcp_flags,
        }
    }
}

/// The key of a conversation whichever way a packet went: the smaller of the tuple and its
/// reverse. Returns the key and whether `tuple` runs the same way as the key.
pub(super) fn canonical(tuple: &FiveTuple) -> (FiveTuple, bool) {
    let reversed = tuple.reversed();
    if reversed < *tuple {
        (reversed, false)
    } else {
        (*tuple, true)
    }
}
