//! What `/api/status` says about each interface.

use serde::Serialize;

/// One observed interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceStatus {
    /// The interface's name (`ip link`).
    pub name: String,
    /// Its index in the agent's network namespace.
    pub ifindex: u32,
    /// Whether the program is attached to it.
    pub state: InterfaceState,
    /// Unix seconds since which `state` holds.
    pub since_unix: i64,
    /// Why the interface is not attached; `None` (null) while it is.
    pub reason: Option<String>,
}

/// Whether the program observes an interface. Ordered as `/api/status` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceState {
    /// The program is attached to the interface's hooks.
    Attached,
    /// Named by `--interface` and does not exist (`/readyz` is 503 meanwhile).
    Missing,
    /// Selected, but attaching failed; `reason` says why (tried again when it changes).
    Failed,
    /// Selected, but its link type cannot be parsed: not attached; `reason` says which.
    Skipped,
    /// Was attached; went (deleted, moved, renamed) or left the selection; `reason` says which.
    Detached,
}
