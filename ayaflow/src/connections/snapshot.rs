//! What the table reports: a connection's snapshot, the sort keys of the top-N, and the
//! table's lifetime counters.

use super::*;

/// Counters of the table's lifetime, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Packets of connections refused because the table was full.
    pub overflow_packets: u64,
    /// Refused attempts to add a connection: one per [`ConnectionTable::record`] or
    /// [`ConnectionTable::record_delta`] call for an unknown connection while the table was full.
    /// The table remembers nothing of refused connections, so one that keeps sending while the
    /// table stays full counts once per call. Raise `max_connections` if this grows.
    pub overflow_connections: u64,
    /// Connections that left the active set: inactivity timeouts, RSTs and FIN pairs.
    pub closed_total: u64,
}

/// How a [`Ranking`] orders connections, largest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Total packets, both directions. This is the default.
    #[default]
    Packets,
    /// Total bytes, both directions.
    Bytes,
    /// Most recently active first.
    LastSeen,
    /// Most recently opened first.
    FirstSeen,
}

impl SortKey {
    /// Every sort key, in the order of [`SortKey::index`].
    pub const ALL: [SortKey; 4] = [
        SortKey::Packets,
        SortKey::Bytes,
        SortKey::LastSeen,
        SortKey::FirstSeen,
    ];

    /// This key's position in [`SortKey::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One active connection as a [`Ranking`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSnapshot {
    /// Oriented as first seen: `src` sent the first packet the table saw, normally the
    /// initiator.
    pub tuple: FiveTuple,
    /// Packets in both directions.
    pub packets: u64,
    /// Bytes in both directions.
    pub bytes: u64,
    /// Packets seen by the ingress hook.
    pub ingress_packets: u64,
    /// Bytes seen by the ingress hook.
    pub ingress_bytes: u64,
    /// Packets seen by the egress hook.
    pub egress_packets: u64,
    /// Bytes seen by the egress hook.
    pub egress_bytes: u64,
    /// First packet, nanoseconds since the Unix epoch.
    pub first_seen_unix_ns: u64,
    /// Latest packet, nanoseconds since the Unix epoch.
    pub last_seen_unix_ns: u64,
    /// OR of the TCP flags of every packet, both directions (`flow::TCP_*`).
    pub tcp_flags: u8,
}
