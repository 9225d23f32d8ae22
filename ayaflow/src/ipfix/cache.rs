//! The export's flow cache: per connection and direction, what was counted since its last
//! record, and when a record is due (RFC 7011 terms: active and idle timeouts, end of flow).
//!
//! It is fed what feeds the live table (raw mode: every packet; flow mode: every sweep's
//! deltas), so the records of a flow sum to exactly what ayaFlow counted for it. Bounded: when
//! full, a new flow's counts go out at once as a record of their own ("lack of resources"),
//! so nothing is dropped to make room.

use std::collections::HashMap;

use ayaflow_common::flow::Direction;

use crate::{
    flow::{FiveTuple, TCP_FIN, TCP_RST},
    ifname::IfindexNames,
};

use super::{EndReason, FlowRecord};

/// What one observation adds to a flow.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub tuple: FiveTuple,
    pub direction: Direction,
    pub packets: u64,
    pub bytes: u64,
    /// Unix nanoseconds of the first and the last packet observed.
    pub first_ns: u64,
    pub last_ns: u64,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub vlan_id: u16,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    icmp_type: u8,
    icmp_code: u8,
    vlan_id: u16,
    /// First and last packet of the current record.
    start_ns: u64,
    end_ns: u64,
    /// When the current record began (the flow's first packet, or its last record).
    period_ns: u64,
}

/// The flow cache. Not thread-safe; the exporter keeps it behind a mutex.
pub struct FlowCache {
    entries: HashMap<(FiveTuple, Direction), Entry, foldhash::fast::RandomState>,
    capacity: usize,
    active_ns: u64,
    idle_ns: u64,
    /// The index of each record's interface: `ingressInterface` of ingress records,
    /// `egressInterface` of egress ones.
    names: IfindexNames,
    /// Records due before the next expiry (end of flow, lack of resources).
    due: Vec<FlowRecord>,
    /// Records sent at once because the cache was full.
    pub overflow_records: u64,
}

impl FlowCache {
    pub fn new(capacity: usize, active_ns: u64, idle_ns: u64, names: IfindexNames) -> FlowCache {
        FlowCache {
            entries: HashMap::default(),
            capacity: capacity.max(1),
            active_ns,
            idle_ns,
            names,
            due: Vec::new(),
            overflow_records: 0,
        }
    }

    /// Flows in the cache.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no flow is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `o` to its flow. Frames that are not IP are not exported (no template has room for
    /// them) and are ignored.
    pub fn add(&mut self, o: &Observation) {
        if !o.tuple.proto.is_ip() || o.packets == 0 {
            return;
        }
        let key = (o.tuple, o.direction);
        let full = self.entries.len() >= self.capacity;
        let entry = match self.entries.get_mut(&key) {
            Some(e) => e,
            None if full => {
                self.overflow_records += 1;
                let e = new_entry(o).with(o);
                let r = self.record(&key, &e, EndReason::LackOfResources);
                self.due.push(r);
                return;
            }
            None => self.entries.entry(key).or_insert(new_entry(o)),
        };
        if entry.packets == 0 {
            // The first packets since the flow's last record.
            entry.start_ns = o.first_ns.max(entry.period_ns);
        }
        entry.packets += o.packets;
        entry.bytes += o.bytes;
        entry.tcp_flags |= o.tcp_flags;
        entry.end_ns = entry.end_ns.max(o.last_ns);
        if o.icmp_type != 0 || o.icmp_code != 0 {
            entry.icmp_type = o.icmp_type;
            entry.icmp_code = o.icmp_code;
        }
        if o.vlan_id != 0 {
            entry.vlan_id = o.vlan_id;
        }
        if o.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            let e = self.entries.remove(&key).expect("looked up above");
            let r = self.record(&key, &e, EndReason::EndOfFlow);
            self.due.push(r);
        }
    }

    /// Takes the records due at `now_ns`: those already due, flows idle for the idle timeout
    /// (removed), and flows whose current record is as old as the active timeout (kept, their
    /// counts start again).
    pub fn take_due(&mut self, now_ns: u64, out: &mut Vec<FlowRecord>) {
        out.append(&mut self.due);
        let (active, idle, names) = (self.active_ns, self.idle_ns, &self.names);
        self.entries.retain(|key, e| {
            if now_ns.saturating_sub(e.end_ns) >= idle {
                if e.packets > 0 {
                    out.push(make_record(names, key, e, EndReason::Idle));
                }
                return false;
            }
            if e.packets > 0 && now_ns.saturating_sub(e.period_ns) >= active {
                out.push(make_record(names, key, e, EndReason::Active));
                e.packets = 0;
                e.bytes = 0;
                e.tcp_flags = 0;
                e.period_ns = now_ns;
            }
            true
        });
    }

    /// At shutdown: every flow's last record ("forced end"), the cache emptied.
    pub fn take_all(&mut self, out: &mut Vec<FlowRecord>) {
        out.append(&mut self.due);
        let names = &self.names;
        for (key, e) in self.entries.drain() {
            if e.packets > 0 {
                out.push(make_record(names, &key, &e, EndReason::Forced));
            }
        }
    }

    fn record(&self, key: &(FiveTuple, Direction), e: &Entry, reason: EndReason) -> FlowRecord {
        make_record(&self.names, key, e, reason)
    }
}

/// A flow's entry before its first observation is counted.
fn new_entry(o: &Observation) -> Entry {
    Entry {
        packets: 0,
        bytes: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        vlan_id: 0,
        start_ns: o.first_ns,
        end_ns: o.last_ns,
        period_ns: o.first_ns,
    }
}

impl Entry {
    /// The entry with `o` counted (for one that never enters the cache).
    fn with(mut self, o: &Observation) -> Entry {
        self.packets = o.packets;
        self.bytes = o.bytes;
        self.tcp_flags = o.tcp_flags;
        self.icmp_type = o.icmp_type;
        self.icmp_code = o.icmp_code;
        self.vlan_id = o.vlan_id;
        self
    }
}

fn make_record(
    names: &IfindexNames,
    (tuple, direction): &(FiveTuple, Direction),
    e: &Entry,
    end_reason: EndReason,
) -> FlowRecord {
    let ingress = *direction == Direction::Ingress;
    let ifindex = names.index_of(tuple.interface).unwrap_or(0);
    FlowRecord {
        tuple: *tuple,
        packets: e.packets,
        bytes: e.bytes,
        tcp_flags: e.tcp_flags,
        icmp_type: e.icmp_type,
        icmp_code: e.icmp_code,
        ingress_interface: if ingress { ifindex } else { 0 },
        egress_interface: if ingress { 0 } else { ifindex },
        flow_direction: if ingress { 0 } else { 1 },
        start_ms: e.start_ns / 1_000_000,
        end_ms: e.end_ns.max(e.start_ns) / 1_000_000,
        end_reason,
        vlan_id: e.vlan_id,
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
