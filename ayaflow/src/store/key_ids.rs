//! The writer's map from conversation key to `tuples.id`, packed for IPv4.
//!
//! Why two maps: the writer keeps up to [`MAX_CACHED_TUPLES`] keys, one per conversation and
//! direction, and a `(FiveTuple, Direction)` key with its id takes 64 bytes a bucket, 48 of them
//! the tuple (two `IpAddr` for 8 bytes of IPv4 address). An IPv4 key packed ([`V4Tuple`]) takes
//! 32: the map a node of IPv4 conversations fills is 8.5 MiB instead of 17.

use crate::flow::V4Tuple;

use super::*;

/// `(key, id)` lookups and updates, whatever the family; see the module docs.
#[derive(Debug, Default)]
pub(super) struct KeyIds {
    v4: HashMap<(V4Tuple, Direction), i64, KeyHasher>,
    other: HashMap<TupleKey, i64, KeyHasher>,
}

impl KeyIds {
    pub(super) fn len(&self) -> usize {
        self.v4.len() + self.other.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn get(&self, (tuple, direction): &TupleKey) -> Option<&i64> {
        match V4Tuple::pack(tuple) {
            Some(v4) => self.v4.get(&(v4, *direction)),
            None => self.other.get(&(*tuple, *direction)),
        }
    }

    pub(super) fn insert(&mut self, (tuple, direction): TupleKey, id: i64) {
        match V4Tuple::pack(&tuple) {
            Some(v4) => self.v4.insert((v4, direction), id),
            None => self.other.insert((tuple, direction), id),
        };
    }

    /// Forgets every key; keeps the maps' memory (they fill again as rows come).
    pub(super) fn clear(&mut self) {
        self.v4.clear();
        self.other.clear();
    }

    /// Keeps the keys whose id `keep` says to keep.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(i64) -> bool) {
        self.v4.retain(|_, id| keep(*id));
        self.other.retain(|_, id| keep(*id));
    }
}

impl Extend<(TupleKey, i64)> for KeyIds {
    fn extend<I: IntoIterator<Item = (TupleKey, i64)>>(&mut self, keys: I) {
        for (key, id) in keys {
            self.insert(key, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    fn key(src: IpAddr, direction: Direction) -> TupleKey {
        let tuple = FiveTuple {
            proto: Protocol::Udp,
            src,
            src_port: 5353,
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            dst_port: 53,
            interface: Default::default(),
        };
        (tuple, direction)
    }

    #[test]
    fn keys_of_either_family_and_direction_keep_their_own_ids() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let keys = [
            key(v4, Direction::Ingress),
            key(v4, Direction::Egress),
            key(v6, Direction::Ingress),
            key(v6, Direction::Egress),
        ];
        let mut ids = KeyIds::default();
        ids.extend(keys.iter().zip(1..).map(|(k, id)| (*k, id)));
        assert_eq!(ids.len(), 4);
        assert_eq!((ids.v4.len(), ids.other.len()), (2, 2), "IPv4 keys packed");
        for (k, id) in keys.iter().zip(1..) {
            assert_eq!(ids.get(k), Some(&id));
        }
        let other_port = (
            FiveTuple {
                src_port: 1,
                ..keys[0].0
            },
            keys[0].1,
        );
        assert_eq!(ids.get(&other_port), None);
        ids.retain(|id| id % 2 == 0);
        assert_eq!(
            keys.iter().map(|k| ids.get(k).copied()).collect::<Vec<_>>(),
            [None, Some(2), None, Some(4)]
        );
        ids.clear();
        assert!(ids.is_empty());
        assert_eq!(size_of::<((V4Tuple, Direction), i64)>(), 32);
    }
}
