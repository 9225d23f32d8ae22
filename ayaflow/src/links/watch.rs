//! The rtnetlink socket and the task that follows it.
//!
//! One `NETLINK_ROUTE` socket, subscribed to `RTNLGRP_LINK` when it is bound, before the
//! `RTM_GETLINK` dump is requested: a change made between the two is then both notified and
//! listed (the table keeps one copy), never in neither. Dump replies and notifications are
//! read from that one socket in the order the kernel queued them, so applying them in turn
//! gives the current state.
//!
//! Backpressure (`Block`): when the event channel is full the task waits for room and stops
//! reading; notifications pile up in the socket's receive buffer. When that overflows the
//! kernel drops them and the next read fails with `ENOBUFS`; the task then lists every link
//! again and sends the differences from what it had reported (`Removed`, then `Added` and
//! `Changed`), so the consumer ends up with the right links, missing only states that came
//! and went in between. A dump interrupted by changes (`NLM_F_DUMP_INTR`) is done again too.

use std::io;

use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};
use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    Link, LinkEvent,
    parse::{self, DumpId, Message},
    table::LinkTable,
};

/// A capacity for [`watch_links`]' channel: link changes come in bursts of a few (a veth pair
/// is two links, a pod start a handful), so 256 lets the consumer take a burst of a hundred
/// pods at once; beyond that the watcher waits (see the module docs).
pub const EVENTS_CAPACITY: usize = 256;

/// The socket receive buffer asked for: room for a few hundred link notifications (about 1 to
/// 2 KiB each, statistics included) while the consumer is busy. The kernel caps it at
/// `net.core.rmem_max` (208 KiB by default); past the buffer a resync recovers.
const RECEIVE_BUFFER: libc::c_int = 1 << 20;

/// Dumps in a row that may be spoilt by changes (or lost notifications) before giving up.
const MAX_DUMP_ATTEMPTS: u32 = 20;

/// A running watcher: the links when it started, and what changed since.
#[derive(Debug)]
pub struct LinkWatch {
    /// Every link of the namespace when the watch started, by ifindex.
    pub links: Vec<Link>,
    /// Each change after `links`, in order. Dropping the receiver stops the task.
    pub events: mpsc::Receiver<LinkEvent>,
    /// The task: it returns `Ok` once `events` is dropped, or the error that stopped it (the
    /// socket failed, or the kernel refused to list links); it never ends otherwise.
    pub task: JoinHandle<Result<(), WatchError>>,
}

/// Why the link watcher could not start or stopped.
#[derive(Debug, Error)]
pub enum WatchError {
    #[error(
        "opening a netlink route socket to follow interfaces: {source}; reading links needs no \
         privilege, so check the open-files limit (ulimit -n) and that no seccomp profile or \
         sandbox denies AF_NETLINK sockets"
    )]
    Open { source: io::Error },
    #[error(
        "subscribing to link notifications (binding the netlink socket to RTNLGRP_LINK): \
         {source}; check that no seccomp profile or sandbox denies netlink multicast groups"
    )]
    Subscribe { source: io::Error },
    #[error("asking the kernel for the list of links (RTM_GETLINK): {source}")]
    Request { source: io::Error },
    #[error("reading link notifications from the netlink socket: {source}")]
    Receive { source: io::Error },
    #[error("the kernel refused to list the links (RTM_GETLINK): {source}")]
    DumpRefused { source: io::Error },
    #[error(
        "the links changed during each of {attempts} listings in a row (or notifications were \
         lost each time); something is creating and deleting interfaces without pause"
    )]
    DumpUnstable { attempts: u32 },
}

/// Lists the links of the calling thread's network namespace, then follows them on a task
/// spawned on the current tokio runtime; its events go to a channel of `capacity` (at least 1;
/// [`EVENTS_CAPACITY`] is a good one).
pub async fn watch_links(capacity: usize) -> Result<LinkWatch, WatchError> {
    let mut watcher = Watcher::open()?;
    let fresh = watcher.dump().await?;
    // The links at start are returned as a list rather than sent as `Added` events.
    let _ = watcher.table.replace_all(fresh);
    let links = watcher.table.links();
    let (tx, events) = mpsc::channel(capacity.max(1));
    let task = tokio::spawn(watcher.run(tx));
    Ok(LinkWatch {
        links,
        events,
        task,
    })
}

/// What a read of the socket gave.
enum Received {
    /// A datagram from the kernel.
    Datagram(Vec<u8>),
    /// `ENOBUFS`: the receive buffer overflowed and notifications were dropped.
    Overrun,
}

struct Watcher {
    /// Subscribed to `RTNLGRP_LINK`, also where dump requests are sent from.
    socket: TokioSocket,
    /// The socket's netlink port id, which our dump's replies are addressed to.
    port: u32,
    /// The sequence number of the last dump requested.
    seq: u32,
    /// The links as last reported to the consumer.
    table: LinkTable,
}

impl Watcher {
    fn open() -> Result<Watcher, WatchError> {
        let mut socket =
            TokioSocket::new(NETLINK_ROUTE).map_err(|source| WatchError::Open { source })?;
        if let Err(e) = socket.socket_ref().set_rx_buf_sz(RECEIVE_BUFFER) {
            tracing::debug!(error = %e, "keeping the default netlink receive buffer");
        }
        // Port 0: the kernel picks our port id.
        let mut addr = SocketAddr::new(0, libc::RTMGRP_LINK as u32);
        let subscribe = |source| WatchError::Subscribe { source };
        socket.socket_mut().bind(&addr).map_err(subscribe)?;
        socket
            .socket_ref()
            .get_address(&mut addr)
            .map_err(subscribe)?;
        Ok(Watcher {
            socket,
            port: addr.port_number(),
            seq: 0,
            table: LinkTable::default(),
        })
    }

    fn dump_id(&self) -> DumpId {
        DumpId {
            port: self.port,
            seq: self.seq,
        }
    }

    /// Follows the links until the receiver of `tx` is dropped or the socket fails.
    async fn run(mut self, tx: mpsc::Sender<LinkEvent>) -> Result<(), WatchError> {
        loop {
            let received = tokio::select! {
                // Nobody left to tell: stop, even while no link changes.
                () = tx.closed() => return Ok(()),
                r = self.receive() => r?,
            };
            let events = match received {
                Received::Overrun => {
                    tracing::warn!(
                        "link notifications were lost (the netlink socket overran: ENOBUFS, the \
                         consumer was slow or a burst was larger than the receive buffer); \
                         listing every link again"
                    );
                    self.resync().await?
                }
                Received::Datagram(bytes) => match parse::decode(&bytes, self.dump_id()) {
                    Ok(d) => d
                        .messages
                        .into_iter()
                        .filter_map(|m| self.apply(m))
                        .collect(),
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            "a link notification could not be decoded; listing every link again"
                        );
                        self.resync().await?
                    }
                },
            };
            for event in events {
                if tx.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// A notification applied to the table: the event, if it is news.
    fn apply(&mut self, m: Message) -> Option<LinkEvent> {
        match m {
            Message::NewLink(link) => self.table.new_link(link),
            Message::DelLink(ifindex) => self.table.del_link(ifindex),
            // Replies to a dump, which `dump` reads; none is running here.
            Message::DumpDone | Message::DumpRefused(_) => None,
        }
    }

    /// Lists every link again; the differences from what was reported.
    async fn resync(&mut self) -> Result<Vec<LinkEvent>, WatchError> {
        let fresh = self.dump().await?;
        let events = self.table.replace_all(fresh);
        tracing::info!(changes = events.len(), "links listed again");
        Ok(events)
    }

    /// Every link now: a dump, with the notifications that arrive meanwhile applied in order.
    /// Done again when the kernel flags it as interrupted by changes or notifications were
    /// lost during it (the dump itself is never dropped: the kernel writes it only as the
    /// buffer has room).
    async fn dump(&mut self) -> Result<LinkTable, WatchError> {
        for _ in 0..MAX_DUMP_ATTEMPTS {
            self.seq = self.seq.wrapping_add(1);
            let request = parse::dump_request(self.seq);
            self.socket
                .send_to(&request, &SocketAddr::new(0, 0))
                .await
                .map_err(|source| WatchError::Request { source })?;
            let mut fresh = LinkTable::default();
            let mut spoilt = false;
            let mut done = false;
            while !done {
                let bytes = match self.receive().await? {
                    Received::Overrun => {
                        spoilt = true;
                        continue;
                    }
                    Received::Datagram(bytes) => bytes,
                };
                let datagram = match parse::decode(&bytes, self.dump_id()) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "a link message could not be decoded");
                        spoilt = true;
                        continue;
                    }
                };
                spoilt |= datagram.dump_interrupted;
                for m in datagram.messages {
                    match m {
                        Message::NewLink(link) => _ = fresh.new_link(link),
                        Message::DelLink(ifindex) => _ = fresh.del_link(ifindex),
                        Message::DumpDone => done = true,
                        Message::DumpRefused(errno) => {
                            return Err(WatchError::DumpRefused {
                                source: io::Error::from_raw_os_error(errno),
                            });
                        }
                    }
                }
            }
            if !spoilt {
                return Ok(fresh);
            }
            tracing::debug!("the links changed while being listed; listing them again");
        }
        Err(WatchError::DumpUnstable {
            attempts: MAX_DUMP_ATTEMPTS,
        })
    }

    /// The next datagram from the kernel (anything another process sends us is skipped).
    async fn receive(&self) -> Result<Received, WatchError> {
        loop {
            match self.socket.recv_from_full().await {
                Ok((bytes, from)) if from.port_number() == 0 => {
                    return Ok(Received::Datagram(bytes));
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Received::Overrun),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(WatchError::Receive { source }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_this_namespaces_links_and_stops_with_its_receiver() {
        // Read-only and unprivileged: the links of the namespace the tests run in.
        let watch = watch_links(EVENTS_CAPACITY).await.expect("watching links");
        let lo = watch
            .links
            .iter()
            .find(|l| l.name == "lo")
            .unwrap_or_else(|| panic!("no lo in {:?}", watch.links));
        assert_eq!(Some(lo.ifindex), crate::ebpf::interface::index("lo"));
        assert_eq!(lo.link_type, libc::ARPHRD_LOOPBACK);
        let names = std::fs::read_dir("/sys/class/net")
            .expect("listing /sys/class/net")
            .count();
        assert_eq!(watch.links.len(), names, "{:?}", watch.links);
        drop(watch.events);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), watch.task)
            .await
            .expect("the task stops once its receiver is dropped");
        assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    }
}
