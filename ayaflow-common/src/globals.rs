//! Names and values of the load-time constants the agent sets in the kernel program.

/// `u32`: [`CAPTURE_MODE_RAW`] or [`CAPTURE_MODE_FLOWS`].
pub const CAPTURE_MODE: &str = "CAPTURE_MODE";
/// One event per packet on the ring buffer. This is the default.
pub const CAPTURE_MODE_RAW: u32 = 0;
/// Aggregate per connection in the `FLOWS` map; events only when the map is full.
pub const CAPTURE_MODE_FLOWS: u32 = 1;

/// `u64`: bytes waiting in the ring buffer past which a submit wakes the agent. Below it events
/// are submitted without a wake-up and the agent drains the ring on a timer (`ring.rs`): a
/// wake-up per event was most of raw capture's kernel cost (BENCHMARKS.md).
pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";

/// Map names, shared so that a typo cannot split kernel and agent.
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_FLOWS: &str = "FLOWS";
/// Program names.
pub const PROG_INGRESS: &str = "tc_ingress";
pub const PROG_EGRESS: &str = "tc_egress";
