//! Helpers for the kernel tests: network namespaces, veth pairs, frames.
