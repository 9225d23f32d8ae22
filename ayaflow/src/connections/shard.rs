//! One shard of the table: a hash map of a slice of the connections, with the per-connection
//! rules (orientation, TCP close, expiry). Single-threaded; [`super::ConnectionTable`] keeps
//! each behind its own mutex and owns what spans shards (the bound, the counters).

use super::*;

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
    /// Keyed by [`canonical`] tuple. Starts empty and grows with what is tracked (see the
    /// module docs of `connections` for why not sized to `max_connections` up front).
    pub(super) map: WireHashMap<FiveTuple, Entry>,
    /// Entries of `map` marked closed, not yet freed by `expire`.
    pub(super) closing: usize,
    /// No entry of this shard expires or is freed before this time (Unix ns): the earliest
    /// deadline seen by the last scan, lowered by every entry created or closed since. `expire`
    /// skips the scan before it, which at 100,000 connections and four ticks a second was a
    /// tenth of flow mode's agent CPU.
    pub(super) next_deadline_ns: u64,
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
        // One hash per packet of a known connection: the entry API finds or places the key.
        let entry = match self.map.entry(key) {
            hash_map::Entry::Occupied(o) => {
                let entry = o.into_mut();
                if entry.closed && u.tcp_flags & TCP_SYN != 0 {
                    // The tuple is reused by a new connection: start over, oriented by it.
                    *entry = Entry::new(along_key, u.first_seen, u.last_seen);
                    self.next_deadline_ns = self
                        .next_deadline_ns
                        .min(u.last_seen.saturating_add(limits.timeout_ns));
                    self.closing -= 1;
                    applied.reopened = 1;
                }
                entry
            }
            hash_map::Entry::Vacant(v) => {
                if !admit() {
                    return Err(());
                }
                self.next_deadline_ns = self
                    .next_deadline_ns
                    .min(u.last_seen.saturating_add(limits.timeout_ns));
                v.insert(Entry::new(along_key, u.first_seen, u.last_seen))
            }
        };

        let hook = u.direction as usize;
        entry.packets[hook] = entry.packets[hook].saturating_add(u.packets);
        entry.bytes[hook] = entry.bytes[hook].saturating_add(u.bytes);
        entry.first_seen = entry.first_seen.min(u.first_seen);
        entry.last_seen = entry.last_seen.max(u.last_seen);
        entry.tcp_flags |= u.tcp_flags;

        if key.proto != Protocol::Tcp || entry.closed {
            return Ok(applied);
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
        Ok(applied)
    }

    /// Drops the entries due at `now_unix_ns`; returns (connections timed out, closed entries
    /// freed). Gives memory back when the map is mostly empty after a burst, so the table stays
    /// sized to what it tracks; the shard is a small slice of the table, so this stays short.
    pub(super) fn expire(&mut self, now_unix_ns: u64, limits: Limits) -> (usize, usize) {
        if now_unix_ns < self.next_deadline_ns {
            // Nothing can be due yet (see `next_deadline_ns`): the scan would remove nothing.
            return (0, 0);
        }
        let (timeout, linger) = (limits.timeout_ns, limits.linger_ns);
        let mut expired = 0;
        let mut freed = 0;
        let mut next_deadline = u64::MAX;
        self.map.retain(|_, e| {
            // A clock that stepped back makes everything look fresh rather than expire it.
            let idle = now_unix_ns.saturating_sub(e.last_seen);
            let (keep, allowed) = if e.closed {
                let keep = idle < linger;
                freed += usize::from(!keep);
                (keep, linger)
            } else {
                let keep = idle < timeout;
                expired += usize::from(!keep);
                (keep, timeout)
            };
            if keep {
                next_deadline = next_deadline.min(e.last_seen.saturating_add(allowed));
            }
            keep
        });
        self.next_deadline_ns = next_deadline;
        self.closing -= freed;
        // A quarter full or less: halve the room (still twice what is held, so a table that
        // only breathes does not shrink and regrow every tick).
        if self.map.capacity() > SHRINK_FROM && self.map.len() * 4 <= self.map.capacity() {
            self.map.shrink_to(self.map.len() * 2);
        }
        (expired, freed)
    }
}

/// Maps with at most this much room are never shrunk: too small to matter.
const SHRINK_FROM: usize = 64;
