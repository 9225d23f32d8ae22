//! The links (network interfaces) of the agent's network namespace, followed as they come,
//! change and go, over rtnetlink.
//!
//! [`watch_links`] lists every link once and then reports each real change as a [`LinkEvent`]
//! on a bounded channel; whoever attaches the programs decides from those which interfaces to
//! observe (with `config::InterfaceSelection::matches`) and which program variant each gets
//! ([`Link::framing`]). Nothing here attaches anything.
//!
//! # Layout
//! - `parse`: the dump request and the decoding of rtnetlink datagrams into link messages;
//! - `table`: the links known, by ifindex: turns messages into events, only on real changes;
//! - `watch`: the socket, the task that follows it, resynchronisation after lost messages.

use crate::ebpf::interface::{Framing, framing_of};

mod parse;
mod table;
mod watch;

pub use watch::{EVENTS_CAPACITY, LinkWatch, WatchError, watch_links};

/// One link of the namespace, as far as attaching cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The kernel's index: stable for the link's life (a rename keeps it), never reused while
    /// the link exists; a link deleted and created again gets a new one.
    pub ifindex: u32,
    /// The current name (`IFLA_IFNAME`).
    pub name: String,
    /// The ARPHRD link type (`ifi_type`, what /sys/class/net/<name>/type shows).
    pub link_type: u16,
    /// True if and only if the link is administratively up (`IFF_UP`, `ip link set up`).
    /// Carrier and operational state are not followed: the TC hooks work either way.
    pub up: bool,
}

impl Link {
    /// How this link's frames start, which picks the program variant to attach, and whether
    /// the link type is one we know; an unknown type is best skipped, with the type logged.
    pub fn framing(&self) -> (Framing, bool) {
        framing_of(self.link_type)
    }
}

/// A change of the namespace's links, in the order the kernel reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link that was not there: created, or moved into this namespace (which may keep its
    /// ifindex).
    Added(Link),
    /// The name, link type or up state of a known link changed (same ifindex). A rename is a
    /// `Changed` whose names differ: the attachment stays valid, but the new name may no
    /// longer be selected, or may be selected now.
    Changed {
        /// The link as it was.
        before: Link,
        /// The link as it is.
        now: Link,
    },
    /// A link that is gone: deleted, or moved to another namespace.
    Removed {
        /// Its index, which the kernel may give to a link moved in later.
        ifindex: u32,
        /// Its last name.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_follows_the_link_type() {
        let link = |link_type| Link {
            ifindex: 2,
            name: "x".to_owned(),
            link_type,
            up: true,
        };
        assert_eq!(link(1).framing(), (Framing::Ethernet, true));
        assert_eq!(link(65534).framing(), (Framing::Ip, true));
        assert_eq!(
            link(32).framing(),
            (Framing::Ip, false),
            "infiniband: unknown"
        );
    }
}
