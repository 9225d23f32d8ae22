//! Reads the per-CPU `COUNTERS` array: the exact totals (every packet and byte, per interface
//! slot and direction, plus parse errors, ring-buffer drops and flow-map fallbacks).

use aya::maps::{Map, MapData, PerCpuArray};
use ayaflow_common::{
    counters::{Counter, CounterBlock, INTERFACE_SLOTS, counter_index},
    flow::Direction,
};

use super::LoadError;

/// Sums of every counter over all CPUs, per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Indexed by `Direction as usize`.
    pub by_direction: [CounterBlock; 2],
}

impl Totals {
    /// One counter of one direction.
    pub fn get(&self, d: Direction, c: Counter) -> u64 {
        self.by_direction[d as usize].get(c)
    }

    /// One counter summed over both directions.
    pub fn sum(&self, c: Counter) -> u64 {
        Direction::ALL.iter().map(|&d| self.get(d, c)).sum()
    }

    /// Adds `other` counter by counter.
    pub fn add(&mut self, other: &Totals) {
        for (mine, theirs) in self.by_direction.iter_mut().zip(&other.by_direction) {
            for (a, b) in mine.values.iter_mut().zip(theirs.values) {
                *a = a.wrapping_add(b);
            }
        }
    }
}

/// Shared read access to `COUNTERS` (reading needs only `&self`).
pub struct CounterReader {
    map: PerCpuArray<MapData, CounterBlock>,
}

impl CounterReader {
    pub(super) fn new(map: Map) -> Result<CounterReader, LoadError> {
        let map =
            PerCpuArray::try_from(map).map_err(|e| LoadError::from_aya("opening COUNTERS", e))?;
        Ok(CounterReader { map })
    }

    /// Reads and sums every CPU's counters of every interface slot now (a lookup per slot and
    /// direction: the agent reads only the slots in use, with [`CounterReader::read_slot`]).
    pub fn read(&self) -> Result<Totals, aya::maps::MapError> {
        let mut t = Totals::default();
        for slot in 0..INTERFACE_SLOTS {
            t.add(&self.read_slot(slot)?);
        }
        Ok(t)
    }

    /// Reads and sums every CPU's counters of interface slot `slot`.
    pub fn read_slot(&self, slot: u32) -> Result<Totals, aya::maps::MapError> {
        let mut t = Totals::default();
        for d in Direction::ALL {
            let per_cpu = self.map.get(&counter_index(slot, d as u32), 0)?;
            for block in per_cpu.iter() {
                for (sum, v) in t.by_direction[d as usize]
                    .values
                    .iter_mut()
                    .zip(block.values)
                {
                    *sum += v;
                }
            }
        }
        Ok(t)
    }
}
