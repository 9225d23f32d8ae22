//! Types shared by the kernel program (`ayaflow-ebpf`) and the agent (`ayaflow`).
//!
//! Every type here is `#[repr(C)]`, has explicit padding fields and a size assert, so that the
//! kernel and userspace agree on the byte layout and no uninitialised byte reaches a map key.
#![no_std]

pub mod counters;
pub mod event;
pub mod flow;
pub mod globals;
