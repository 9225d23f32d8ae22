//! The kernel counters per interface, as `/metrics` labels them: each attached interface's
//! slot, plus what interfaces that went had counted, so that every series only grows and the
//! sum over the `interface` label is the node's total.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use super::InterfaceId;
use crate::{
    ebpf::counters::{CounterReader, Totals},
    sync::lock,
};

/// Names of interfaces that went whose counts keep their own series; past it the oldest are
/// folded into [`GONE`], so a node where pods come and go does not grow series without end.
pub const MAX_RETIRED: usize = 1024;

/// The series of packets counted on hooks without an interface slot (a hook a pinned agent
/// left, or one attached a moment before its slot): counted, never lost.
pub const UNATTRIBUTED: &str = "(none)";

/// The series that sums interfaces folded out past [`MAX_RETIRED`].
pub const GONE: &str = "(gone)";

/// Reads the counters of every interface. Shared by `/metrics`, the live view and the follower
/// (which tells it which slot is which interface).
pub struct InterfaceCounters {
    reader: Arc<CounterReader>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Slots counting now (attached, or released and not yet read for the last time).
    slots: Vec<(u32, InterfaceId)>,
    /// The final counts of slots of interfaces that went, by name.
    retired: HashMap<InterfaceId, Totals>,
    /// `retired`'s names, oldest first.
    retired_order: VecDeque<InterfaceId>,
    /// Interfaces folded out of `retired`.
    gone: Totals,
}

impl InterfaceCounters {
    pub fn new(reader: Arc<CounterReader>) -> InterfaceCounters {
        InterfaceCounters {
            reader,
            state: Mutex::new(State::default()),
        }
    }

    /// Slot `slot` counts interface `id` from now on.
    pub fn counting(&self, slot: u32, id: InterfaceId) {
        let mut s = lock(&self.state);
        s.slots.retain(|&(sl, _)| sl != slot);
        s.slots.push((slot, id));
    }

    /// Slot `slot` was read for the last time (`totals`) and freed: its counts join its
    /// interface's retired ones.
    pub fn retired(&self, slot: u32, totals: &Totals) {
        let mut s = lock(&self.state);
        let Some(at) = s.slots.iter().position(|&(sl, _)| sl == slot) else {
            return;
        };
        let (_, id) = s.slots.swap_remove(at);
        if !s.retired.contains_key(&id) {
            s.retired_order.push_back(id);
        }
        s.retired.entry(id).or_default().add(totals);
        while s.retired_order.len() > MAX_RETIRED {
            let Some(oldest) = s.retired_order.pop_front() else {
                break;
            };
            // A name counting again (re-created) keeps its series.
            if s.slots.iter().any(|&(_, i)| i == oldest) {
                s.retired_order.push_back(oldest);
                break;
            }
            if let Some(t) = s.retired.remove(&oldest) {
                s.gone.add(&t);
            }
        }
    }

    /// Every interface's totals now, by name (attached ones, those that went, and the
    /// [`UNATTRIBUTED`] and [`GONE`] series when not zero), sorted by name.
    pub fn read(&self) -> Result<Vec<(Arc<str>, Totals)>, aya::maps::MapError> {
        let s = lock(&self.state);
        let mut by_id: HashMap<InterfaceId, Totals> = s.retired.clone();
        for &(slot, id) in &s.slots {
            by_id
                .entry(id)
                .or_default()
                .add(&self.reader.read_slot(slot)?);
        }
        let mut out: Vec<(Arc<str>, Totals)> =
            by_id.into_iter().map(|(id, t)| (id.name(), t)).collect();
        let unattributed = self.reader.read_slot(0)?;
        for (name, t) in [(UNATTRIBUTED, unattributed), (GONE, s.gone)] {
            if t != Totals::default() {
                out.push((Arc::from(name), t));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The node's totals: the sum of [`InterfaceCounters::read`].
    pub fn total(&self) -> Result<Totals, aya::maps::MapError> {
        let mut t = Totals::default();
        for (_, each) in self.read()? {
            t.add(&each);
        }
        Ok(t)
    }
}
