//! The interfaces the agent observes: which ones the selection matches as they come and go
//! ([`follow`], fed by the link watcher in [`run`]), their counters per name ([`counters`]),
//! and what `/api/status` says about each ([`status`]).

pub mod counters;
pub mod follow;
pub mod run;
pub mod status;

pub use crate::ifname::{IfindexNames, InterfaceId};
pub use status::{InterfaceState, InterfaceStatus};
