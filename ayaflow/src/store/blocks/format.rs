//! How a block packs its rows: the `tuple_ids` and `data` blobs of `packet_blocks` and
//! `packet_block_data`.
//!
//! `tuple_ids` holds the distinct `tuples` ids of the block's rows, ascending: the first as a
//! varint (LEB128), then the gaps to the next (each at least 1). `data` is a format byte
//! ([`FORMAT`]) followed by each row in id order:
//!
//! ```text
//! zigzag(ts - previous ts)  varint   the first row's previous ts is 0; events from several
//!                                    CPUs arrive slightly out of order, hence signed
//! tuple index               varint   position in tuple_ids
//! bytes                     varint
//! mask                      1 byte   which of the fields below differ from their default
//! packets                   varint   if mask & 0x01 (default 1)
//! tcp_flags, icmp_type,     1 byte   each if mask & 0x02, 0x04, 0x08, 0x10 (default 0)
//!   icmp_code, flags
//! vlan_id                   varint   if mask & 0x20 (default 0)
//! ```
//!
//! A typical row takes 5 to 8 bytes (and 1 to 3 more for its key in `tuple_ids`, unless other
//! rows of the block share it). Decoding checks every length and range and fails with a
//! message, never a panic: the caller (`blocks/mod.rs`) reports a damaged block as
//! `StoreError::BadBlock`.

use crate::flow::Packet;
use crate::store::clamp_i64;

/// The first byte of `data`: the row format above. A new format gets a new number.
const FORMAT: u8 = 1;

const MASK_PACKETS: u8 = 0x01;
const MASK_TCP_FLAGS: u8 = 0x02;
const MASK_ICMP_TYPE: u8 = 0x04;
const MASK_ICMP_CODE: u8 = 0x08;
const MASK_FLAGS: u8 = 0x10;
const MASK_VLAN: u8 = 0x20;

/// One raw row as a block holds it: the packet's fields, its time clamped to i64 (as SQLite
/// integers are), and its key: a `tuples` id (`Row<i64>`, what the encoder takes) or a position
/// in the block's `tuple_ids` (`Row<usize>`, what the decoder yields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Row<K = i64> {
    pub key: K,
    pub ts_unix_ns: i64,
    pub packets: u32,
    pub bytes: u32,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub flags: u8,
    pub vlan_id: u16,
}

impl Row {
    pub(super) fn new(p: &Packet, tuple_id: i64) -> Row {
        Row {
            key: tuple_id,
            ts_unix_ns: clamp_i64(p.ts_unix_ns),
            packets: p.packets,
            bytes: p.bytes,
            tcp_flags: p.tcp_flags,
            icmp_type: p.icmp_type,
            icmp_code: p.icmp_code,
            flags: p.flags,
            vlan_id: p.vlan_id,
        }
    }
}

impl<K> Row<K> {
    /// The same row with another form of its key.
    pub(super) fn with_key<L>(self, key: L) -> Row<L> {
        let Row {
            key: _,
            ts_unix_ns,
            packets,
            bytes,
            tcp_flags,
            icmp_type,
            icmp_code,
            flags,
            vlan_id,
        } = self;
        Row {
            key,
            ts_unix_ns,
            packets,
            bytes,
            tcp_flags,
            icmp_type,
            icmp_code,
            flags,
            vlan_id,
        }
    }
}

/// A decoded row: its key is the position of its tuple id in the block's `tuple_ids`.
pub(super) type PackedRow = Row<usize>;

/// One block as the writer inserts it.
pub(super) struct EncodedBlock<'a> {
    /// Smallest and largest `ts_unix_ns` of its rows.
    pub min_ts: i64,
    pub max_ts: i64,
    pub tuple_ids: &'a [u8],
    pub data: &'a [u8],
}

/// Packs rows into blocks; keeps its buffers from one block to the next.
#[derive(Default)]
pub(super) struct BlockEncoder {
    /// The block's (tuple id, row position) pairs, sorted.
    order: Vec<(i64, u32)>,
    /// Each row's position in the block's list of distinct tuple ids.
    index: Vec<u32>,
    tuple_ids: Vec<u8>,
    data: Vec<u8>,
}

impl BlockEncoder {
    /// Encodes `rows` (not empty).
    pub(super) fn encode(&mut self, rows: &[Row]) -> EncodedBlock<'_> {
        // One sort gives both the distinct ids (ascending) and each row's index among them.
        self.order.clear();
        self.order
            .extend(rows.iter().zip(0u32..).map(|(r, i)| (r.key, i)));
        self.order.sort_unstable();
        self.index.clear();
        self.index.resize(rows.len(), 0);
        self.tuple_ids.clear();
        let (mut prev, mut distinct) = (None, 0u32);
        for &(id, row) in &self.order {
            if prev != Some(id) {
                // Ascending and (being rowids) positive, so every gap is at least 1.
                put_varint(
                    &mut self.tuple_ids,
                    id.wrapping_sub(prev.unwrap_or(0)) as u64,
                );
                prev = Some(id);
                distinct += 1;
            }
            self.index[row as usize] = distinct - 1;
        }
        self.data.clear();
        self.data.push(FORMAT);
        let (mut min_ts, mut max_ts, mut prev_ts) = (i64::MAX, i64::MIN, 0i64);
        for (p, &index) in rows.iter().zip(&self.index) {
            let ts = p.ts_unix_ns;
            (min_ts, max_ts) = (min_ts.min(ts), max_ts.max(ts));
            // Both in [0, i64::MAX]: the difference cannot overflow.
            put_varint(&mut self.data, zigzag(ts - prev_ts));
            prev_ts = ts;
            put_varint(&mut self.data, index.into());
            put_varint(&mut self.data, p.bytes.into());
            let mask = (MASK_PACKETS * u8::from(p.packets != 1))
                | (MASK_TCP_FLAGS * u8::from(p.tcp_flags != 0))
                | (MASK_ICMP_TYPE * u8::from(p.icmp_type != 0))
                | (MASK_ICMP_CODE * u8::from(p.icmp_code != 0))
                | (MASK_FLAGS * u8::from(p.flags != 0))
                | (MASK_VLAN * u8::from(p.vlan_id != 0));
            self.data.push(mask);
            if mask & MASK_PACKETS != 0 {
                put_varint(&mut self.data, p.packets.into());
            }
            for (bit, v) in [
                (MASK_TCP_FLAGS, p.tcp_flags),
                (MASK_ICMP_TYPE, p.icmp_type),
                (MASK_ICMP_CODE, p.icmp_code),
                (MASK_FLAGS, p.flags),
            ] {
                if mask & bit != 0 {
                    self.data.push(v);
                }
            }
            if mask & MASK_VLAN != 0 {
                put_varint(&mut self.data, p.vlan_id.into());
            }
        }
        EncodedBlock {
            min_ts,
            max_ts,
            tuple_ids: &self.tuple_ids,
            data: &self.data,
        }
    }
}

/// Decodes a `tuple_ids` blob; fails on anything the encoder never writes.
pub(super) fn decode_tuple_ids(blob: &[u8]) -> Result<Vec<i64>, String> {
    // Every id takes at least one byte.
    let mut ids = Vec::with_capacity(blob.len());
    for id in TupleIdIter::new(blob) {
        ids.push(id?);
    }
    Ok(ids)
}

/// Returns true if and only if the `tuple_ids` blob holds one of `keys` (ascending). It stops
/// at the first match, or once its ids are past the largest key, without allocating: a query
/// whose keys are rare tests every block this way.
pub(super) fn holds_any(blob: &[u8], keys: &[i64]) -> Result<bool, String> {
    let mut rest = keys;
    for id in TupleIdIter::new(blob) {
        let id = id?;
        rest = &rest[rest.partition_point(|&k| k < id)..];
        match rest.first() {
            None => return Ok(false),
            Some(&k) if k == id => return Ok(true),
            Some(_) => {}
        }
    }
    Ok(false)
}

/// The ids of a `tuple_ids` blob, in order; an error (then nothing more) on a malformed blob.
pub(super) struct TupleIdIter<'a> {
    blob: &'a [u8],
    pos: usize,
    prev: i64,
}

impl TupleIdIter<'_> {
    pub(super) fn new(blob: &[u8]) -> TupleIdIter<'_> {
        TupleIdIter {
            blob,
            pos: 0,
            prev: 0,
        }
    }
}

impl Iterator for TupleIdIter<'_> {
    type Item = Result<i64, String>;

    fn next(&mut self) -> Option<Result<i64, String>> {
        let &b = self.blob.get(self.pos)?;
        // Fast path: most gaps fit one byte.
        let gap = if b < 0x80 {
            self.pos += 1;
            Ok(u64::from(b))
        } else {
            get_varint(self.blob, &mut self.pos)
        };
        let id = gap.and_then(|gap| {
            i64::try_from(gap)
                .ok()
                .filter(|&g| g > 0)
                .and_then(|g| self.prev.checked_add(g))
                .ok_or_else(|| format!("tuple_ids: gap {gap} after id {}", self.prev))
        });
        match id {
            Ok(id) => self.prev = id,
            // Stop after the error.
            Err(_) => self.pos = self.blob.len(),
        }
        Some(id)
    }
}

/// Decodes the `rows` rows of a `data` blob whose block lists `tuples` distinct keys; fails on
/// anything the encoder never writes (wrong format, short or trailing bytes, out-of-range
/// values).
pub(super) fn decode_rows(
    data: &[u8],
    tuples: usize,
    rows: usize,
) -> Result<Vec<PackedRow>, String> {
    let Some((&format, rest)) = data.split_first() else {
        return Err("data is empty".into());
    };
    if format != FORMAT {
        return Err(format!("data format {format}, not {FORMAT}"));
    }
    // A row takes at least four bytes: cap the allocation by what the blob can hold.
    let mut out = Vec::with_capacity(rows.min(rest.len() / 4));
    let mut r = Reader { data: rest, pos: 0 };
    let mut prev_ts = 0i64;
    for i in 0..rows {
        let row = decode_row(&mut r, &mut prev_ts, tuples).map_err(|e| format!("row {i}: {e}"))?;
        out.push(row);
    }
    if r.pos != rest.len() {
        return Err(format!("{} bytes after the last row", rest.len() - r.pos));
    }
    Ok(out)
}

fn decode_row(r: &mut Reader<'_>, prev_ts: &mut i64, tuples: usize) -> Result<PackedRow, String> {
    let delta = unzigzag(r.varint("ts")?);
    let ts = prev_ts
        .checked_add(delta)
        .filter(|&t| t >= 0)
        .ok_or_else(|| format!("ts {prev_ts} + {delta} out of range"))?;
    *prev_ts = ts;
    let index = r.varint("tuple index")?;
    let tuple_index = usize::try_from(index)
        .ok()
        .filter(|&t| t < tuples)
        .ok_or_else(|| format!("tuple index {index} past the block's {tuples} keys"))?;
    let bytes = r.u32("bytes")?;
    let mask = r.byte("field mask")?;
    if mask & !0x3f != 0 {
        return Err(format!("field mask {mask:#04x}"));
    }
    let packets = if mask & MASK_PACKETS != 0 {
        r.u32("packets")?
    } else {
        1
    };
    let mut byte = |bit: u8, what: &str| -> Result<u8, String> {
        if mask & bit == 0 { Ok(0) } else { r.byte(what) }
    };
    let tcp_flags = byte(MASK_TCP_FLAGS, "tcp_flags")?;
    let icmp_type = byte(MASK_ICMP_TYPE, "icmp_type")?;
    let icmp_code = byte(MASK_ICMP_CODE, "icmp_code")?;
    let flags = byte(MASK_FLAGS, "flags")?;
    let vlan_id = if mask & MASK_VLAN != 0 {
        let v = r.varint("vlan_id")?;
        u16::try_from(v).map_err(|_| format!("vlan_id {v}"))?
    } else {
        0
    };
    Ok(PackedRow {
        key: tuple_index,
        ts_unix_ns: ts,
        packets,
        bytes,
        tcp_flags,
        icmp_type,
        icmp_code,
        flags,
        vlan_id,
    })
}

/// A position in a blob; every read checks the length.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| format!("ends before {what}"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        get_varint(self.data, &mut self.pos).map_err(|e| format!("{what}: {e}"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| format!("{what} {v} out of range"))
    }
}

/// Appends `v` as LEB128: seven bits per byte, low first, high bit set on all but the last.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 number at `*pos`, moving past it; at most ten bytes, the tenth 0 or 1.
fn get_varint(data: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let &b = data.get(*pos).ok_or("ends inside a number")?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err("a number longer than 64 bits".into());
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

/// Signed to unsigned with small magnitudes staying small: 0, -1, 1, -2 ... -> 0, 1, 2, 3 ...
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::blocks::tests::{extremes, packet, to_rows};

    #[test]
    fn encoding_round_trips_and_stays_small() {
        let rows = extremes();
        let ids: Vec<i64> = (0..rows.len() as i64)
            .map(|i| [5, 1, 1 << 40][i as usize % 3])
            .collect();
        let mut enc = BlockEncoder::default();
        let b = enc.encode(&to_rows(&rows, &ids));
        assert_eq!((b.min_ts, b.max_ts), (0, i64::MAX));
        let tuples = decode_tuple_ids(b.tuple_ids).expect("tuple ids");
        assert_eq!(tuples, [1, 5, 1 << 40]);
        let decoded = decode_rows(b.data, tuples.len(), rows.len()).expect("rows");
        for ((p, row), id) in rows.iter().zip(&decoded).zip(&ids) {
            assert_eq!(tuples[row.key], *id);
            let back = (
                row.ts_unix_ns as u64,
                row.packets,
                row.bytes,
                row.tcp_flags,
                row.icmp_type,
                row.icmp_code,
                row.flags,
                row.vlan_id,
            );
            let want = (
                p.ts_unix_ns.min(i64::MAX as u64),
                p.packets,
                p.bytes,
                p.tcp_flags,
                p.icmp_type,
                p.icmp_code,
                p.flags,
                p.vlan_id,
            );
            assert_eq!(back, want);
        }
        // A typical row (1 µs after the previous, 60 bytes, default fields): 5 bytes.
        let plain: Vec<Packet> = (0..1000)
            .map(|i| Packet {
                bytes: 60,
                ..packet(i)
            })
            .collect();
        let b = enc.encode(&to_rows(&plain, &[3; 1000]));
        assert_eq!(
            b.data.len(),
            1 + 1000 * 5 + 7,
            "the first row's time takes 9 bytes, not 2"
        );
    }

    proptest! {
        #[test]
        fn holds_any_agrees_with_a_search(
            ids in proptest::collection::btree_set(1i64..2000, 0..60),
            keys in proptest::collection::btree_set(1i64..2000, 0..20),
        ) {
            let mut blob = Vec::new();
            let mut prev = 0;
            for &id in &ids {
                put_varint(&mut blob, (id - prev) as u64);
                prev = id;
            }
            let keys: Vec<i64> = keys.into_iter().collect();
            prop_assert_eq!(
                decode_tuple_ids(&blob).expect("ids"),
                ids.iter().copied().collect::<Vec<_>>()
            );
            prop_assert_eq!(
                holds_any(&blob, &keys).expect("ids"),
                keys.iter().any(|k| ids.contains(k))
            );
        }

        #[test]
        fn arbitrary_blobs_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64),
                                       tuples in 0usize..4, rows in 0usize..20) {
            let _ = decode_rows(&data, tuples, rows);
            let _ = decode_tuple_ids(&data);
            let _ = holds_any(&data, &[1, 5, 1 << 20]);
        }

        #[test]
        fn any_rows_round_trip(fields in proptest::collection::vec(
            (
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                1i64..1 << 50,
            ),
            1..50,
        )) {
            let rows: Vec<Packet> = fields
                .iter()
                .map(|&(ts, packets, bytes, b, vlan_id, _)| Packet {
                    ts_unix_ns: ts,
                    packets,
                    bytes,
                    tcp_flags: b[0],
                    icmp_type: b[1],
                    icmp_code: b[2],
                    flags: b[3],
                    vlan_id,
                    ..packet(0)
                })
                .collect();
            let ids: Vec<i64> = fields.iter().map(|f| f.5).collect();
            let mut enc = BlockEncoder::default();
            let b = enc.encode(&to_rows(&rows, &ids));
            let tuples = decode_tuple_ids(b.tuple_ids).expect("tuple ids");
            let decoded = decode_rows(b.data, tuples.len(), rows.len()).expect("rows");
            for ((p, row), id) in rows.iter().zip(&decoded).zip(&ids) {
                prop_assert_eq!(tuples[row.key], *id);
                prop_assert_eq!(row.ts_unix_ns, clamp_i64(p.ts_unix_ns));
                prop_assert_eq!(
                    (row.packets, row.bytes, row.tcp_flags, row.icmp_type),
                    (p.packets, p.bytes, p.tcp_flags, p.icmp_type)
                );
                prop_assert_eq!(
                    (row.icmp_code, row.flags, row.vlan_id),
                    (p.icmp_code, p.flags, p.vlan_id)
                );
            }
        }
    }
}
