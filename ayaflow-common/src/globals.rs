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
/// `u32`: positions of the `FLOW_INDEX` index minus one (its size is a power of two).
pub const FLOW_INDEX_MASK: &str = "FLOW_INDEX_MASK";
/// `u32`: slots of the `FLOWS` table (and entries of `FLOW_CLAIMS` and `FLOW_FREE`).
pub const FLOW_SLOTS: &str = "FLOW_SLOTS";

/// Map names, shared so that a typo cannot split kernel and agent.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_FLOWS_USED: &str = "FLOWS_USED";
pub const MAP_FLOW_CLAIMS: &str = "FLOW_CLAIMS";
pub const MAP_FLOW_INDEX: &str = "FLOW_INDEX";
pub const MAP_FLOW_FREE: &str = "FLOW_FREE";
pub const MAP_FLOW_FREE_TOP: &str = "FLOW_FREE_TOP";
pub const MAP_IFACE_SLOTS: &str = "IFACE_SLOTS";
pub const MAP_IFACE_SLOTS_HIGH: &str = "IFACE_SLOTS_HIGH";
/// Program names.
pub const PROG_INGRESS: &str = "tc_ingress";
pub const PROG_EGRESS: &str = "tc_egress";
/// The same programs for links without a link-layer header (frames start at the IP header).
pub const PROG_INGRESS_L3: &str = "tc_ingress_l3";
pub const PROG_EGRESS_L3: &str = "tc_egress_l3";
