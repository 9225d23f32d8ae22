//! One shard's connections, stored densely: records packed to the size of their key's address
//! family, in fixed-size chunks, found through an index of their positions.
//!
//! Why not a hash map of `(FiveTuple, Entry)`: its slots are 104 bytes whatever the family (two
//! `IpAddr` are 34 bytes for 8 bytes of IPv4 address), and a map is 44 to 88 % full, so a
//! connection cost 120 to 240 bytes. Here an IPv4 record is 72 bytes and the only sparse part
//! is the index, 5 bytes per bucket (a `u32` position and a control byte). Records live in
//! chunks of [`CHUNK`] that are allocated and freed whole, never reallocated: a shard holds at
//! most one partly empty chunk, and every chunk of a family has the same size, so the allocator
//! reuses a freed one as it is instead of keeping holes between grown and shrunk vectors.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use super::*;

/// Records per chunk: 4.5 KiB of IPv4 records, so the one partly empty chunk of each shard
/// costs little even at 100,000 connections over 512 shards.
pub(super) const CHUNK: usize = 64;

/// Index buckets up to this many are never shrunk: too small to matter.
const SHRINK_FROM: usize = 64;

/// A key as a record holds it: packed for its family ([`V4Tuple`] for IPv4; every other key,
/// IPv6 and the mixed pairs a `FiveTuple` can express, as it is), unpacked to the same
/// [`FiveTuple`].
pub(super) trait StoredKey: Copy + Eq + Hash {
    fn unpack(&self) -> FiveTuple;
}

impl StoredKey for V4Tuple {
    fn unpack(&self) -> FiveTuple {
        V4Tuple::unpack(self)
    }
}

impl StoredKey for FiveTuple {
    fn unpack(&self) -> FiveTuple {
        *self
    }
}

/// Bits of [`Record::state`], one per flag of [`Entry`].
const SRC_IS_KEY_SRC: u8 = 1;
const FIN_FROM_SRC: u8 = 2;
const FIN_FROM_DST: u8 = 4;
const CLOSED: u8 = 8;

/// A key and its [`Entry`], flattened so that the compiler packs the key's 4-byte fields and
/// the flags after the counters (a nested `Entry` would keep its own padding): 72 bytes with a
/// [`V4Tuple`], 104 with a [`FiveTuple`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Record<K> {
    key: K,
    packets: [u64; 2],
    bytes: [u64; 2],
    first_seen: u64,
    last_seen: u64,
    tcp_flags: u8,
    /// The flags of [`Entry`], as the bits above.
    state: u8,
}

impl<K: StoredKey> Record<K> {
    fn new(key: K, e: &Entry) -> Record<K> {
        let mut r = Record {
            key,
            packets: [0; 2],
            bytes: [0; 2],
            first_seen: 0,
            last_seen: 0,
            tcp_flags: 0,
            state: 0,
        };
        r.set(e);
        r
    }

    pub(super) fn entry(&self) -> Entry {
        let bit = |b: u8| self.state & b != 0;
        Entry {
            packets: self.packets,
            bytes: self.bytes,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            tcp_flags: self.tcp_flags,
            src_is_key_src: bit(SRC_IS_KEY_SRC),
            fin_from_src: bit(FIN_FROM_SRC),
            fin_from_dst: bit(FIN_FROM_DST),
            closed: bit(CLOSED),
        }
    }

    fn set(&mut self, e: &Entry) {
        let bit = |on: bool, b: u8| if on { b } else { 0 };
        self.packets = e.packets;
        self.bytes = e.bytes;
        self.first_seen = e.first_seen;
        self.last_seen = e.last_seen;
        self.tcp_flags = e.tcp_flags;
        self.state = bit(e.src_is_key_src, SRC_IS_KEY_SRC)
            | bit(e.fin_from_src, FIN_FROM_SRC)
            | bit(e.fin_from_dst, FIN_FROM_DST)
            | bit(e.closed, CLOSED);
    }

    pub(super) fn tuple(&self) -> FiveTuple {
        self.key.unpack()
    }

    pub(super) fn closed(&self) -> bool {
        self.state & CLOSED != 0
    }
}

/// The records of one family in one shard.
#[derive(Debug)]
pub(super) struct Store<K> {
    /// Records `0..len`, [`CHUNK`] to a chunk; every chunk but the last is full, and the last
    /// is never empty. Each chunk is allocated with room for exactly `CHUNK`.
    chunks: Vec<Vec<Record<K>>>,
    /// The position in `chunks` of every record, hashed by its key with `hasher`.
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl<K> Default for Store<K> {
    fn default() -> Store<K> {
        Store {
            chunks: Vec::new(),
            index: HashTable::new(),
            hasher: Default::default(),
        }
    }
}

impl<K: StoredKey> Store<K> {
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Records the index has room for without growing.
    pub(super) fn capacity(&self) -> usize {
        self.index.capacity()
    }

    /// Records the chunks have room for (allocated, filled or not).
    #[cfg(test)]
    pub(super) fn room(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }

    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn at(&self, pos: u32) -> &Record<K> {
        let pos = pos as usize;
        &self.chunks[pos / CHUNK][pos % CHUNK]
    }

    fn at_mut(&mut self, pos: u32) -> &mut Record<K> {
        let pos = pos as usize;
        &mut self.chunks[pos / CHUNK][pos % CHUNK]
    }

    /// The position of the record keyed `key`.
    pub(super) fn find(&self, key: &K) -> Option<u32> {
        let chunks = &self.chunks;
        self.index
            .find(self.hash(key), |&p| {
                chunks[p as usize / CHUNK][p as usize % CHUNK].key == *key
            })
            .copied()
    }

    pub(super) fn write(&mut self, pos: u32, e: &Entry) {
        self.at_mut(pos).set(e);
    }

    /// Adds a record for `key`, which the store must not hold yet (see [`Store::find`]).
    pub(super) fn insert(&mut self, key: K, e: &Entry) {
        let pos = u32::try_from(self.len()).expect("a shard holds far fewer than 2^32 records");
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(Record::new(key, e)),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(Record::new(key, e));
                self.chunks.push(chunk);
            }
        }
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index.insert_unique(self.hash(&key), pos, |&p| {
            hasher.hash_one(chunks[p as usize / CHUNK][p as usize % CHUNK].key)
        });
    }

    /// Removes the record at `pos`; the last record moves into its place (the index follows).
    fn swap_remove(&mut self, pos: u32) {
        let hash = self.hash(&self.at(pos).key);
        self.index
            .find_entry(hash, |&p| p == pos)
            .expect("every record is indexed")
            .remove();
        let last_chunk = self.chunks.last_mut().expect("a record to remove");
        let moved = last_chunk.pop().expect("the last chunk is never empty");
        if last_chunk.is_empty() {
            self.chunks.pop();
        }
        let last = u32::try_from(self.len()).expect("positions fit in u32");
        if pos != last {
            let hash = self.hash(&moved.key);
            *self
                .index
                .find_mut(hash, |&p| p == last)
                .expect("every record is indexed") = pos;
            *self.at_mut(pos) = moved;
        }
    }

    /// Keeps the records `keep` says to keep, then gives back index memory if it is at most
    /// a quarter used (down to twice what is held, so a table that only breathes does not
    /// shrink and regrow every tick).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Record<K>) -> bool) {
        let mut pos = 0;
        while (pos as usize) < self.len() {
            if keep(self.at(pos)) {
                pos += 1;
            } else {
                // The record moved here from the end is looked at next.
                self.swap_remove(pos);
            }
        }
        if self.index.capacity() > SHRINK_FROM && self.len() * 4 <= self.index.capacity() {
            let (chunks, hasher) = (&self.chunks, &self.hasher);
            self.index.shrink_to(self.len() * 2, |&p| {
                hasher.hash_one(chunks[p as usize / CHUNK][p as usize % CHUNK].key)
            });
            self.chunks.shrink_to_fit();
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Record<K>> {
        self.chunks.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    fn key(n: u32) -> FiveTuple {
        FiveTuple {
            proto: Protocol::Udp,
            src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)),
            src_port: 1000,
            dst: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
            dst_port: 53,
            interface: Default::default(),
        }
    }

    fn entry(n: u64) -> Entry {
        let mut e = Entry::new(n.is_multiple_of(2), n, n);
        e.packets = [n, 1];
        e
    }

    /// Every record is found at its own position and holds what was written for it.
    fn assert_consistent(s: &Store<V4Tuple>, live: &[u32]) {
        assert_eq!(s.len(), live.len());
        assert_eq!(s.iter().count(), live.len());
        for &n in live {
            let k = V4Tuple::pack(&key(n)).expect("IPv4");
            let pos = s.find(&k).unwrap_or_else(|| panic!("{n} indexed"));
            assert_eq!(s.at(pos).key, k);
            assert_eq!(s.at(pos).entry().packets, [u64::from(n), 1]);
        }
        assert_eq!(s.room().div_ceil(CHUNK), s.chunks.len());
        assert!(s.room() < s.len() + CHUNK, "one partly empty chunk at most");
    }

    #[test]
    fn swap_remove_keeps_every_position_indexed() {
        let mut s = Store::<V4Tuple>::default();
        let n = 3 * CHUNK as u32 + 5;
        for i in 0..n {
            s.insert(V4Tuple::pack(&key(i)).expect("IPv4"), &entry(i.into()));
        }
        assert_consistent(&s, &(0..n).collect::<Vec<_>>());
        // Drop the multiples of 3 (first, last and middle of chunks among them).
        s.retain(|r| !r.entry().packets[0].is_multiple_of(3));
        let live: Vec<u32> = (0..n).filter(|i| i % 3 != 0).collect();
        assert_consistent(&s, &live);
        for i in (0..n).filter(|i| i % 3 == 0) {
            assert_eq!(s.find(&V4Tuple::pack(&key(i)).expect("IPv4")), None);
        }
        // Removing the last record moves nothing.
        let last = *live.last().expect("some left");
        s.retain(|r| r.entry().packets[0] != u64::from(last));
        assert_consistent(&s, &live[..live.len() - 1]);
    }

    #[test]
    fn chunks_come_and_go_whole_and_the_index_shrinks() {
        let mut s = Store::<V4Tuple>::default();
        assert_eq!((s.room(), s.capacity()), (0, 0), "nothing up front");
        let n = 4096u32;
        for i in 0..n {
            s.insert(V4Tuple::pack(&key(i)).expect("IPv4"), &entry(i.into()));
            assert_eq!(s.room(), (i as usize + 1).div_ceil(CHUNK) * CHUNK);
        }
        // A hash table at most 7/8 full grows by doubling: 4,096 records need 8,192 buckets.
        assert_eq!(s.capacity(), 7168);
        s.retain(|r| r.entry().packets[0] < 1000);
        assert_consistent(&s, &(0..1000).collect::<Vec<_>>());
        assert_eq!(s.room(), 1000usize.div_ceil(CHUNK) * CHUNK);
        assert!(
            s.capacity() < 7168 && s.capacity() >= 2000,
            "{}",
            s.capacity()
        );
        s.retain(|_| false);
        assert_eq!((s.len(), s.room(), s.chunks.capacity()), (0, 0, 0));
        assert!(s.capacity() <= SHRINK_FROM);
    }

    #[test]
    fn records_hold_their_family_compactly_and_round_trip() {
        assert_eq!(std::mem::size_of::<V4Tuple>(), 20);
        assert_eq!(std::mem::size_of::<Record<V4Tuple>>(), 72);
        assert_eq!(std::mem::size_of::<Record<FiveTuple>>(), 104);
        let v4 = key(7);
        assert_eq!(V4Tuple::pack(&v4).map(|k| k.unpack()), Some(v4));
        let v6 = FiveTuple {
            proto: Protocol::Ether(0x88cc),
            src: IpAddr::V6(Ipv6Addr::LOCALHOST),
            src_port: 1,
            dst: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            dst_port: 2,
            interface: Default::default(),
        };
        assert_eq!(V4Tuple::pack(&v6), None, "IPv6 does not fit 4 bytes");
        let mixed = FiveTuple { dst: v4.dst, ..v6 };
        assert_eq!(V4Tuple::pack(&mixed), None);
        assert_eq!(StoredKey::unpack(&v6), v6);
        // Every flag survives the packing on its own.
        for bit in 0..4 {
            let mut e = entry(3);
            e.tcp_flags = 0x12;
            e.src_is_key_src = bit == 0;
            e.fin_from_src = bit == 1;
            e.fin_from_dst = bit == 2;
            e.closed = bit == 3;
            let r = Record::new(V4Tuple::pack(&v4).expect("IPv4"), &e);
            let back = r.entry();
            assert_eq!(
                (
                    back.src_is_key_src,
                    back.fin_from_src,
                    back.fin_from_dst,
                    back.closed,
                    back.tcp_flags,
                    back.packets,
                    back.first_seen
                ),
                (
                    e.src_is_key_src,
                    e.fin_from_src,
                    e.fin_from_dst,
                    e.closed,
                    0x12,
                    e.packets,
                    3
                )
            );
            assert_eq!(r.closed(), e.closed);
        }
    }
}
