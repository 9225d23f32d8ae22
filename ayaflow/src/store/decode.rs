//! Rows as stored, checked and decoded into the types callers see.

use super::*;
use crate::ifname::InterfaceId;

/// Key columns of a row as SQLite returns them (`NULL`s if its `tuple_id` has no key).
pub(super) struct StoredKey {
    pub(super) tuple_id: i64,
    pub(super) direction: Option<String>,
    pub(super) proto: Option<String>,
    pub(super) src: Option<String>,
    pub(super) src_port: Option<i64>,
    pub(super) dst: Option<String>,
    pub(super) dst_port: Option<i64>,
    pub(super) interface: Option<String>,
}

impl StoredKey {
    /// The key of a `tuple_id` that has no row in `tuples`; decoding it fails.
    pub(super) fn missing(tuple_id: i64) -> StoredKey {
        StoredKey {
            tuple_id,
            direction: None,
            proto: None,
            src: None,
            src_port: None,
            dst: None,
            dst_port: None,
            interface: None,
        }
    }

    /// Reads [`KEY_COLUMNS`] starting at column `at`.
    pub(super) fn read(
        r: &rusqlite::Row<'_>,
        tuple_id: i64,
        at: usize,
    ) -> rusqlite::Result<StoredKey> {
        Ok(StoredKey {
            tuple_id,
            direction: r.get(at)?,
            proto: r.get(at + 1)?,
            src: r.get(at + 2)?,
            src_port: r.get(at + 3)?,
            dst: r.get(at + 4)?,
            dst_port: r.get(at + 5)?,
            interface: r.get(at + 6)?,
        })
    }

    pub(super) fn decode(self, d: &Decoder<'_>) -> Result<(FiveTuple, Direction), StoreError> {
        let (
            Some(direction),
            Some(proto),
            Some(src),
            Some(src_port),
            Some(dst),
            Some(dst_port),
            Some(interface),
        ) = (
            self.direction,
            self.proto,
            self.src,
            self.src_port,
            self.dst,
            self.dst_port,
            self.interface,
        )
        else {
            return Err(d.bad(format!("tuple_id {}, which no key has", self.tuple_id)));
        };
        Ok((
            d.tuple(&proto, &src, src_port, &dst, dst_port)?
                .on(InterfaceId::intern(&interface)),
            d.direction(&direction)?,
        ))
    }
}

/// A `packets` row joined to its key as SQLite returns it, before validation.
pub(super) struct StoredRaw {
    pub(super) id: i64,
    pub(super) key: StoredKey,
    pub(super) ts_unix_ns: i64,
    pub(super) packets: i64,
    pub(super) bytes: i64,
    pub(super) tcp_flags: i64,
    pub(super) icmp_type: i64,
    pub(super) icmp_code: i64,
    pub(super) flags: i64,
    pub(super) vlan_id: i64,
}

impl StoredRaw {
    /// Reads [`RAW_COLUMNS`] then [`KEY_COLUMNS`].
    pub(super) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRaw> {
        Ok(StoredRaw {
            id: r.get(0)?,
            key: StoredKey::read(r, r.get(1)?, 10)?,
            ts_unix_ns: r.get(2)?,
            packets: r.get(3)?,
            bytes: r.get(4)?,
            tcp_flags: r.get(5)?,
            icmp_type: r.get(6)?,
            icmp_code: r.get(7)?,
            flags: r.get(8)?,
            vlan_id: r.get(9)?,
        })
    }

    pub(super) fn decode(self, path: &Path) -> Result<RawRecord, StoreError> {
        let d = Decoder { path, id: self.id };
        let (tuple, direction) = self.key.decode(&d)?;
        Ok(RawRecord {
            id: self.id,
            packet: Packet {
                tuple,
                direction,
                ts_unix_ns: d.int(self.ts_unix_ns, "ts_unix_ns")?,
                packets: d.int(self.packets, "packets")?,
                bytes: d.int(self.bytes, "bytes")?,
                tcp_flags: d.int(self.tcp_flags, "tcp_flags")?,
                icmp_type: d.int(self.icmp_type, "icmp_type")?,
                icmp_code: d.int(self.icmp_code, "icmp_code")?,
                flags: d.int(self.flags, "flags")?,
                vlan_id: d.int(self.vlan_id, "vlan_id")?,
            },
        })
    }
}

/// A `windows` row joined to its key as SQLite returns it, before validation.
pub(super) struct StoredWindow {
    pub(super) id: i64,
    pub(super) key: StoredKey,
    pub(super) window_start: i64,
    pub(super) window_end: i64,
    pub(super) packets: i64,
    pub(super) bytes: i64,
}

impl StoredWindow {
    /// Reads [`WINDOW_COLUMNS`] then [`KEY_COLUMNS`].
    pub(super) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredWindow> {
        Ok(StoredWindow {
            id: r.get(0)?,
            key: StoredKey::read(r, r.get(1)?, 6)?,
            window_start: r.get(2)?,
            window_end: r.get(3)?,
            packets: r.get(4)?,
            bytes: r.get(5)?,
        })
    }

    pub(super) fn decode(self, path: &Path) -> Result<WindowRecord, StoreError> {
        let d = Decoder { path, id: self.id };
        let (tuple, direction) = self.key.decode(&d)?;
        Ok(WindowRecord {
            id: self.id,
            window: WindowRow {
                window_start_unix: self.window_start,
                window_end_unix: self.window_end,
                tuple,
                direction,
                packets: d.int(self.packets, "packets")?,
                bytes: d.int(self.bytes, "bytes")?,
            },
        })
    }
}

/// Turns stored text and integers back into domain values, naming the row on failure.
pub(super) struct Decoder<'a> {
    pub(super) path: &'a Path,
    pub(super) id: i64,
}

impl Decoder<'_> {
    pub(super) fn bad(&self, detail: String) -> StoreError {
        StoreError::BadRow {
            path: self.path.to_owned(),
            id: self.id,
            detail,
        }
    }

    pub(super) fn int<T: TryFrom<i64>>(&self, v: i64, column: &str) -> Result<T, StoreError> {
        T::try_from(v).map_err(|_| self.bad(format!("{column} = {v}, out of range")))
    }

    pub(super) fn direction(&self, s: &str) -> Result<Direction, StoreError> {
        parse_direction(s).ok_or_else(|| self.bad(format!("direction {s:?}")))
    }

    pub(super) fn addr(&self, s: &str) -> Result<IpAddr, StoreError> {
        s.parse().map_err(|_| self.bad(format!("address {s:?}")))
    }

    pub(super) fn tuple(
        &self,
        proto: &str,
        src: &str,
        src_port: i64,
        dst: &str,
        dst_port: i64,
    ) -> Result<FiveTuple, StoreError> {
        Ok(FiveTuple {
            proto: Protocol::parse(proto).ok_or_else(|| self.bad(format!("protocol {proto:?}")))?,
            src: self.addr(src)?,
            src_port: self.int(src_port, "src_port")?,
            dst: self.addr(dst)?,
            dst_port: self.int(dst_port, "dst_port")?,
            interface: InterfaceId::NONE,
        })
    }
}
