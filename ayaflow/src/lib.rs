//! ayaFlow's agent: loads the TC classifier, turns its events and counters into live connection
//! state, a SQLite history and an HTTP API.
//!
//! Layout (data flows top to bottom):
//! - `ebpf`: loads and attaches the embedded kernel program, drains its ring buffer, reads its
//!   per-CPU counters (and, in flow mode, sweeps its flow table).
//! - `decode` + `flow`: length-checked bytes -> `PacketEvent` -> the domain `Packet`.
//! - `connections`: the bounded live connection table (timeouts, FIN/RST, top-N).
//! - `pipeline`: fans packets out to the connection table and, through a bounded queue, to the
//!   storage writer; aggregates windows when configured.
//! - `store`: SQLite, the only module with SQL (raw rows, windows, retention, history queries).
//! - `api`, `metrics`: axum routes and the Prometheus registry.
//! - `cli` + `config`: flags/env/YAML as typed, then validated; `shutdown`: signal handling;
//!   `hugepages`: the binary's allocator (huge pages for the big tables).

pub mod agent;
pub mod aggregate;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod decode;
pub mod ebpf;
pub mod flow;
pub mod hugepages;
pub mod ipfix;
pub mod metrics;
pub mod pipeline;
pub mod ratelimit;
pub mod shutdown;
pub mod storage;
pub mod store;
pub mod sync;
pub mod telemetry;
