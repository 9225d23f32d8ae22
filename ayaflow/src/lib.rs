//! ayaFlow's agent: loads the TC classifier, turns its events and counters into live connection
//! state, a SQLite history, IPFIX records and an HTTP API.
//!
//! The data path, top to bottom (no import cycle between modules: `tests/module_graph.rs`
//! checks):
//!
//! ```text
//! kernel (ayaflow-ebpf) --raw: ebpf::ring (drain)--+
//!                       --flows: ebpf::sweep ------+--> pipeline --> connections (live table)
//!                                                  |             --> aggregate (windows)
//!                                                  |             --> ipfix (flow cache -> UDP)
//!                                                  |             --> storage (queue, writer
//!                                                  |                 thread) --> store (SQLite)
//! api (status, live, stream, history, and the web UI over them) and telemetry -> metrics
//! read the table, the store and the kernel counters (ebpf::counters).
//! ```
//!
//! - `agent`: wires it all and runs it (start-up, shutdown order); `config` + `cli`: every
//!   option, declared once; `shutdown`: signals.
//! - `links`: the namespace's interfaces, followed over rtnetlink as they come and go.
//! - `decode` + `flow`: length-checked kernel records -> the domain `Packet`, `FiveTuple`.
//! - Leaves used everywhere: `clock` (time), `sync` (locks), `ratelimit` (log lines),
//!   `metrics` (the encoder), `hugepages` (the binary's allocator), `alloc` (freed memory
//!   given back).

pub mod agent;
pub mod aggregate;
pub mod alloc;
pub mod api;
pub mod clock;
pub mod config;
/// The command line (declared with the options, in `config`).
pub use config::cli;
pub mod connections;
pub mod decode;
pub mod ebpf;
pub mod flow;
pub mod hugepages;
pub mod ifname;
pub mod interfaces;
pub mod ipfix;
pub mod links;
pub mod metrics;
pub mod pipeline;
pub mod ratelimit;
pub mod shutdown;
pub mod storage;
pub mod store;
pub mod sync;
pub mod telemetry;
