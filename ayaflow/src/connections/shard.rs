//! One shard of the table: a slice of the connections (a [`Store`] per address family), with
//! the per-connection rules (orientation, TCP close, expiry). Single-threaded;
//! [`super::ConnectionTable`] keeps each behind its own mutex and owns what spans shards (the
//! bound, the counters).

use super::{
    store::{Record, Store, StoredKey},
    *,
};

/// What a shard's update did to the table-wide counts, for the caller to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    /// Connections that closed (RST, FIN pair).
    pub(super) closed: usize,
    /// Closed entries reopened by a SYN: back in the active set.
    pub(super) reopened: usize,
}

/// A slice of the connections (those whose key hashes to this shard).
#[derive(Debug, Default)]
pub(super) struct Shard {
    /// The IPv4 connections, keyed by [`canonical`] tuple. Start empty and grow with what is
    /// tracked (see the module docs of `connections` for why not sized to `max_connections` up
    /// front).
    v4: Store<V4Tuple>,
    /// Every other connection (IPv6), keyed likewise.
    wide: Store<FiveTuple>,
    /// Entries marked closed, not yet freed by `expire`.
    pub(super) closing: usize,
    /// No entry of this shard expires or is freed before this time (Unix ns): the earliest
    /// deadline seen by the last scan, lowered by every entry created or closed since. `expire`
    /// skips the scan before it, which at 100,000 connections and four ticks a second was a
    /// tenth of flow mode's agent CPU.
    pub(super) next_deadline_ns: u64,
}

/// Where a shard holds a connection: the store of its family and the position in it.
#[derive(Clone, Copy, Debug)]
enum Slot {
    V4(u32),
    Wide(u32),
}

/// The table-wide settings a shard's update needs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) timeout_ns: u64,
    pub(super) linger_ns: u64,
}

/// What one packet or delta adds to its connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Update {
    pub(super) direction: Direction,
    pub(super) packets: u64,
    pub(super) bytes: u64,
    pub(super) first_seen: u64,
    pub(super) last_seen: u64,
    pub(super) tcp_flags: u8,
}

impl Shard {
    pub(super) fn new() -> Shard {
        Shard {
            next_deadline_ns: u64::MAX,
            ..Shard::default()
        }
    }

    /// Applies `u` to the connection keyed `key` (`along_key`: the packet runs the key's way).
    /// A new connection is created only if `admit()` says there is room; `Err(())` if it
    /// refused.
    pub(super) fn apply(
        &mut self,
        key: FiveTuple,
        along_key: bool,
        u: &Update,
        limits: Limits,
        admit: impl FnOnce() -> bool,
    ) -> Result<Applied, ()> {
        let mut applied = Applied::default();
        // One hash per packet of a known connection; a new one is hashed again to be placed.
        let slot = self.find(&key);
        let mut entry = match slot {
            Some(slot) => {
                let mut entry = self.read(slot);
                if entry.closed && u.tcp_flags & TCP_SYN != 0 {
                    // The tuple is reused by a new connection: start over, oriented by it.
                    entry = Entry::new(along_key, u.first_seen, u.last_seen);
                    self.next_deadline_ns = self
                        .next_deadline_ns
                        .min(u.last_seen.saturating_add(limits.timeout_ns));
                    self.closing -= 1;
                    applied.reopened = 1;
                }
                entry
            }
            None => {
                if !admit() {
                    return Err(());
                }
                self.next_deadline_ns = self
                    .next_deadline_ns
                    .min(u.last_seen.saturating_add(limits.timeout_ns));
                Entry::new(along_key, u.first_seen, u.last_seen)
            }
        };
        self.update(&mut entry, key.proto, along_key, u, limits, &mut applied);
        match slot {
            Some(Slot::V4(pos)) => self.v4.write(pos, &entry),
            Some(Slot::Wide(pos)) => self.wide.write(pos, &entry),
            None => match V4Tuple::pack(&key) {
                Some(k) => self.v4.insert(k, &entry),
                None => self.wide.insert(key, &entry),
            },
        }
        Ok(applied)
    }

    /// The rules of one update of a connection's `entry` (counters, TCP close).
    fn update(
        &mut self,
        entry: &mut Entry,
        proto: Protocol,
        along_key: bool,
        u: &Update,
        limits: Limits,
        applied: &mut Applied,
    ) {
        let hook = u.direction as usize;
        entry.packets[hook] = entry.packets[hook].saturating_add(u.packets);
        entry.bytes[hook] = entry.bytes[hook].saturating_add(u.bytes);
        entry.first_seen = entry.first_seen.min(u.first_seen);
        entry.last_seen = entry.last_seen.max(u.last_seen);
        entry.tcp_flags |= u.tcp_flags;

        if proto != Protocol::Tcp || entry.closed {
            return;
        }
        if u.tcp_flags & TCP_FIN != 0 {
            // From the oriented src if the packet runs the way the entry is oriented.
            if along_key == entry.src_is_key_src {
                entry.fin_from_src = true;
            } else {
                entry.fin_from_dst = true;
            }
        }
        if u.tcp_flags & TCP_RST != 0 || (entry.fin_from_src && entry.fin_from_dst) {
            entry.closed = true;
            self.closing += 1;
            self.next_deadline_ns = self
                .next_deadline_ns
                .min(entry.last_seen.saturating_add(limits.linger_ns));
            applied.closed = 1;
        }
    }

    fn find(&self, key: &FiveTuple) -> Option<Slot> {
        match V4Tuple::pack(key) {
            Some(k) => self.v4.find(&k).map(Slot::V4),
            None => self.wide.find(key).map(Slot::Wide),
        }
    }

    fn read(&self, slot: Slot) -> Entry {
        match slot {
            Slot::V4(pos) => self.v4.at(pos).entry(),
            Slot::Wide(pos) => self.wide.at(pos).entry(),
        }
    }

    /// The connection keyed `key`, closed or not.
    pub(super) fn get(&self, key: &FiveTuple) -> Option<Entry> {
        self.find(key).map(|slot| self.read(slot))
    }

    /// Connections held, closed ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.v4.len() + self.wide.len()
    }

    /// Connections the indexes have room for without growing.
    pub(super) fn capacity(&self) -> usize {
        self.v4.capacity() + self.wide.capacity()
    }

    /// Records the chunks have room for (tests).
    #[cfg(test)]
    pub(super) fn room(&self) -> usize {
        self.v4.room() + self.wide.room()
    }

    /// The open connections, keyed by [`canonical`] tuple.
    pub(super) fn open(&self) -> impl Iterator<Item = (FiveTuple, Entry)> {
        fn open<K: StoredKey>(r: &Record<K>) -> Option<(FiveTuple, Entry)> {
            (!r.closed()).then(|| (r.tuple(), r.entry()))
        }
        (self.v4.iter().filter_map(open)).chain(self.wide.iter().filter_map(open))
    }

    /// Drops the entries due at `now_unix_ns`; returns (connections timed out, closed entries
    /// freed). Gives memory back as records go and when an index is mostly empty after a burst
    /// (see [`Store::retain`]), so the table stays sized to what it tracks; the shard is a
    /// small slice of the table, so this stays short.
    pub(super) fn expire(&mut self, now_unix_ns: u64, limits: Limits) -> (usize, usize) {
        if now_unix_ns < self.next_deadline_ns {
            // Nothing can be due yet (see `next_deadline_ns`): the scan would remove nothing.
            return (0, 0);
        }
        let (timeout, linger) = (limits.timeout_ns, limits.linger_ns);
        let mut expired = 0;
        let mut freed = 0;
        let mut next_deadline = u64::MAX;
        let mut due = |r: &Entry| {
            // A clock that stepped back makes everything look fresh rather than expire it.
            let idle = now_unix_ns.saturating_sub(r.last_seen);
            let (keep, allowed) = if r.closed {
                let keep = idle < linger;
                freed += usize::from(!keep);
                (keep, linger)
            } else {
                let keep = idle < timeout;
                expired += usize::from(!keep);
                (keep, timeout)
            };
            if keep {
                next_deadline = next_deadline.min(r.last_seen.saturating_add(allowed));
            }
            keep
        };
        self.v4.retain(|r| due(&r.entry()));
        self.wide.retain(|r| due(&r.entry()));
        self.next_deadline_ns = next_deadline;
        self.closing -= freed;
        (expired, freed)
    }
}
