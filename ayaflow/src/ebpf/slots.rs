//! Counter slots of interfaces: which `COUNTERS` blocks count which interface.
//!
//! The program finds the slot of a packet's interface by its ifindex (`IFACE_SLOTS`, and
//! `IFACE_SLOTS_HIGH` for large indexes); slot 0 counts interfaces without one. A slot is
//! zeroed before it is given out. When an interface goes, its entry is removed first and its
//! slot is read and freed only later ([`InterfaceSlots::retire_released`], a tick after), once
//! no program run that looked the old entry up can still be adding to it (an RCU grace period
//! is far shorter than a tick): its last counts are kept by the caller, none is lost.

use std::collections::HashMap;

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray};
use ayaflow_common::{
    counters::{CounterBlock, IFINDEX_DIRECT, INTERFACE_SLOTS, counter_index},
    flow::Direction,
};

use super::{LoadError, counters::Totals};

/// The slot maps of the loaded program and which slots are in use.
pub struct InterfaceSlots {
    direct: Array<MapData, u32>,
    high: BpfHashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, CounterBlock>,
    /// ifindex -> slot, for the interfaces that have one.
    assigned: HashMap<u32, u32>,
    /// Slots whose interface went, to be read and freed at the next tick.
    released: Vec<u32>,
    /// Slots nobody holds, highest last (handed out from the end).
    free: Vec<u32>,
}

/// Every slot is taken: the interface is counted in slot 0 (the node's totals stay exact) but
/// not under its own name.
#[derive(Debug, thiserror::Error)]
#[error(
    "all {} interface counter slots are in use: narrow --interface (or add to \
     --exclude-interface) so that fewer interfaces are observed at once",
    INTERFACE_SLOTS - 1
)]
pub struct NoFreeSlot;

impl InterfaceSlots {
    pub(super) fn new(direct: Map, high: Map, counters: Map) -> Result<InterfaceSlots, LoadError> {
        let direct =
            Array::try_from(direct).map_err(|e| LoadError::from_aya("opening IFACE_SLOTS", e))?;
        let high = BpfHashMap::try_from(high)
            .map_err(|e| LoadError::from_aya("opening IFACE_SLOTS_HIGH", e))?;
        let counters = PerCpuArray::try_from(counters)
            .map_err(|e| LoadError::from_aya("opening COUNTERS for the slots", e))?;
        let mut slots = InterfaceSlots {
            direct,
            high,
            counters,
            assigned: HashMap::new(),
            released: Vec::new(),
            free: Vec::new(),
        };
        slots
            .adopt()
            .map_err(|e| LoadError::from_aya("reading IFACE_SLOTS", e))?;
        Ok(slots)
    }

    /// Reads what the maps already hold (pinned maps of a previous agent): those slots stay
    /// taken, so their counts continue; the rest are free.
    fn adopt(&mut self) -> Result<(), MapError> {
        for (ifindex, slot) in self.direct.iter().enumerate() {
            let slot = slot?;
            if slot != 0 {
                self.assigned.insert(ifindex as u32, slot);
            }
        }
        for entry in self.high.iter() {
            let (ifindex, slot) = entry?;
            self.assigned.insert(ifindex, slot);
        }
        let mut taken = vec![false; INTERFACE_SLOTS as usize];
        for &s in self.assigned.values() {
            if let Some(t) = taken.get_mut(s as usize) {
                *t = true;
            }
        }
        self.free = (1..INTERFACE_SLOTS)
            .rev()
            .filter(|&s| !taken[s as usize])
            .collect();
        Ok(())
    }

    /// The slot of `ifindex`, if it has one.
    pub fn slot_of(&self, ifindex: u32) -> Option<u32> {
        self.assigned.get(&ifindex).copied()
    }

    /// Every (ifindex, slot) held.
    pub fn assigned(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.assigned.iter().map(|(&i, &s)| (i, s))
    }

    /// Gives `ifindex` a zeroed slot (or returns the one it has: a pinned agent's).
    pub fn assign(&mut self, ifindex: u32) -> Result<u32, AssignError> {
        if let Some(s) = self.slot_of(ifindex) {
            return Ok(s);
        }
        let slot = self.free.pop().ok_or(AssignError::Full(NoFreeSlot))?;
        let done = self.zero(slot).and_then(|()| self.point(ifindex, slot));
        if let Err(e) = done {
            self.free.push(slot);
            return Err(AssignError::Map(e));
        }
        self.assigned.insert(ifindex, slot);
        Ok(slot)
    }

    /// Removes `ifindex`'s entry: its packets from now on count in slot 0 (an interface that
    /// went has none). The slot is read and freed by the next [`retire_released`].
    ///
    /// [`retire_released`]: InterfaceSlots::retire_released
    pub fn release(&mut self, ifindex: u32) -> Option<u32> {
        let slot = self.assigned.remove(&ifindex)?;
        let removed = if ifindex < IFINDEX_DIRECT {
            self.direct.set(ifindex, 0, 0)
        } else {
            self.high.remove(&ifindex)
        };
        if let Err(e) = removed {
            tracing::warn!(ifindex, "removing the interface's counter slot: {e}");
        }
        self.released.push(slot);
        Some(slot)
    }

    /// Reads the final counts of the slots released before this call and frees them: each
    /// (slot, totals). Call it at least a tick after `release`.
    pub fn retire_released(&mut self) -> Vec<(u32, Totals)> {
        let mut out = Vec::new();
        for slot in std::mem::take(&mut self.released) {
            match self.read(slot) {
                Ok(t) => out.push((slot, t)),
                Err(e) => tracing::warn!(slot, "reading a released counter slot: {e}"),
            }
            // Zeroed again when handed out.
            self.free.push(slot);
        }
        out
    }

    fn read(&self, slot: u32) -> Result<Totals, MapError> {
        let mut t = Totals::default();
        for d in Direction::ALL {
            for block in self.counters.get(&counter_index(slot, d as u32), 0)?.iter() {
                for (sum, v) in t.by_direction[d as usize]
                    .values
                    .iter_mut()
                    .zip(block.values)
                {
                    *sum = sum.wrapping_add(v);
                }
            }
        }
        Ok(t)
    }

    fn zero(&mut self, slot: u32) -> Result<(), MapError> {
        for d in Direction::ALL {
            let index = counter_index(slot, d as u32);
            let cpus = self.counters.get(&index, 0)?.len();
            let zeros = aya::maps::PerCpuValues::try_from(vec![CounterBlock::default(); cpus])?;
            self.counters.set(index, zeros, 0)?;
        }
        Ok(())
    }

    fn point(&mut self, ifindex: u32, slot: u32) -> Result<(), MapError> {
        if ifindex < IFINDEX_DIRECT {
            self.direct.set(ifindex, slot, 0)
        } else {
            self.high.insert(ifindex, slot, 0)
        }
    }
}

/// Why an interface got no counter slot.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error(transparent)]
    Full(NoFreeSlot),
    #[error("writing the interface's counter slot: {0}")]
    Map(MapError),
}
