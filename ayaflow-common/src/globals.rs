//! Names and values of the load-time constants the agent sets in the kernel program.

/// `u32`: [`CAPTURE_MODE_RAW`] or [`CAPTURE_MODE_FLOWS`].
pub const CAPTURE_MODE: &str = "CAPTURE_MODE";
/// One event per packet on the ring buffer. This is the default.
pub const CAPTURE_MODE_RAW: u32 = 0;
/// Aggregate per connection in the `FLOWS` table; events only when it has no slot free.
pub const CAPTURE_MODE_FLOWS: u32 = 1;

/// `u64`: bytes waiting in the ring buffer past which a submit wakes the agent. Below it events
/// are submitted without a wake-up and the agent drains the ring on a timer (`ring.rs`): a
/// wake-up per event was most of raw capture's kernel cost (BENCHMARKS.md).
pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";

/// `u64`: the seed of [`crate::flow::flow_hash`], random per agent start.
pub const FLOW_HASH_SEED: &str = "FLOW_HASH_SEED";
/// `u32`: slots of the `FLOWS` table minus one (the table's size is a power of two).
pub const FLOW_SLOT_MASK: &str = "FLOW_SLOT_MASK";

/// Map names, shared so that a typo cannot split kernel and agent.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_FLOWS_USED: &str = "FLOWS_USED";
/// Program names.
pub const PROG_INGRESS: &str = "tc_ingress";
pub const PROG_EGRESS: &str = "tc_egress";
