//! Follows the interfaces as they come and go: keeps the program attached to every interface
//! the selection matches, and nothing else.
//!
//! It works from the set of links that exist (kept current from the link watcher's events)
//! and reconciles after each change: what is selected and not attached is attached, what is
//! attached and no longer selected (gone, renamed out, re-created under another index) is
//! detached and its counter slot released. A link that failed is not tried again until it
//! changes, so one bad interface does not fill the log.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use super::{
    IfindexNames,
    counters::InterfaceCounters,
    status::{InterfaceState, InterfaceStatus},
};
use crate::{
    clock::{NANOS_PER_SEC, unix_now_ns},
    config::InterfaceSelection,
    ebpf::{KernelProgram, LoadError, interface::framing_of},
    flow::Direction,
    sync::lock,
};

/// Interfaces that went, kept in `/api/status` (the most recent ones).
const GONE_SHOWN: usize = 64;

/// A link as the follower needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    /// ARPHRD type (`/sys/class/net/<name>/type`).
    pub link_type: u16,
}

/// Why an interface that the selection matches is not observed, as the
/// `ayaflow_interface_attach_failures_total{reason}` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    /// Its frames are neither Ethernet nor a known IP-framed link: skipped.
    UnsupportedLinkType,
    /// Every counter slot is taken.
    NoSlot,
    /// Another ayaflow is attached to it.
    AlreadyAttached,
    /// Attaching failed otherwise (see the log and `/api/status`).
    Error,
}

impl FailureReason {
    pub const ALL: [FailureReason; 4] = [
        FailureReason::UnsupportedLinkType,
        FailureReason::NoSlot,
        FailureReason::AlreadyAttached,
        FailureReason::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureReason::UnsupportedLinkType => "unsupported_link_type",
            FailureReason::NoSlot => "no_slot",
            FailureReason::AlreadyAttached => "already_attached",
            FailureReason::Error => "error",
        }
    }
}

/// What the follower reports to `/metrics`.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Interfaces attached now.
    pub attached: AtomicU64,
    /// Attach failures, by [`FailureReason`] (`FailureReason::ALL` order).
    pub failures: [AtomicU64; 4],
}

/// What the follower shares with the API: the interfaces' states and whether every named
/// interface is attached (`/readyz`).
#[derive(Clone, Default)]
pub struct FollowView {
    status: Arc<Mutex<Vec<InterfaceStatus>>>,
    /// False while a named (non-pattern) interface is missing or not attached.
    pub named_ready: Arc<AtomicBool>,
    pub stats: Arc<FollowStats>,
}

impl FollowView {
    /// The interfaces' states now, attached ones first.
    pub fn interfaces(&self) -> Vec<InterfaceStatus> {
        lock(&self.status).clone()
    }
}

/// Keeps the program attached to the selected interfaces.
pub struct Follower {
    program: KernelProgram,
    selection: InterfaceSelection,
    directions: Vec<Direction>,
    names: IfindexNames,
    counters: Arc<InterfaceCounters>,
    view: FollowView,
    /// The links that exist, by ifindex.
    links: HashMap<u32, LinkInfo>,
    /// Attached: ifindex -> (name, since).
    attached: HashMap<u32, (String, i64)>,
    /// Selected but not observed: ifindex -> (the link as it was, why, since). Retried when
    /// the link changes.
    failed: HashMap<u32, (LinkInfo, FailureReason, String, i64)>,
    /// Interfaces detached because they went or left the selection, newest last.
    gone: Vec<InterfaceStatus>,
}

impl Follower {
    pub fn new(
        program: KernelProgram,
        selection: InterfaceSelection,
        directions: Vec<Direction>,
        names: IfindexNames,
        counters: Arc<InterfaceCounters>,
    ) -> Follower {
        Follower {
            program,
            selection,
            directions,
            names,
            counters,
            view: FollowView::default(),
            links: HashMap::new(),
            attached: HashMap::new(),
            failed: HashMap::new(),
            gone: Vec::new(),
        }
    }

    /// The view the API reads.
    pub fn view(&self) -> FollowView {
        self.view.clone()
    }

    /// Gives the program back (at shutdown: dropping it detaches everything not pinned).
    pub fn into_program(self) -> KernelProgram {
        self.program
    }

    /// The program, for taking its maps.
    pub fn program(&mut self) -> &mut KernelProgram {
        &mut self.program
    }

    /// Every link that exists now (the watcher's first dump, or a resync): replaces what was
    /// known, then reconciles.
    pub fn replace_all(&mut self, links: Vec<LinkInfo>) {
        self.links = links.into_iter().map(|l| (l.ifindex, l)).collect();
        self.reconcile();
    }

    /// A link appeared or changed (name, type).
    pub fn upsert(&mut self, link: LinkInfo) {
        if self.links.get(&link.ifindex) == Some(&link) {
            return;
        }
        self.links.insert(link.ifindex, link);
        self.reconcile();
    }

    /// A link went (deleted, or moved to another namespace).
    pub fn remove(&mut self, ifindex: u32) {
        if self.links.remove(&ifindex).is_some() {
            self.reconcile();
        }
    }

    /// Reads and frees the counter slots of interfaces that went a tick ago or more (see
    /// `ebpf::slots`): call once per tick.
    pub fn tick(&mut self) {
        for (slot, totals) in self.program.slots().retire_released() {
            self.counters.retired(slot, &totals);
        }
    }

    fn reconcile(&mut self) {
        let now = (unix_now_ns() / NANOS_PER_SEC) as i64;
        // Detach what is no longer selected under the same index and name.
        let stale: Vec<u32> = self
            .attached
            .iter()
            .filter(|(i, (name, _))| {
                !self
                    .links
                    .get(i)
                    .is_some_and(|l| &l.name == name && self.selection.matches(name))
            })
            .map(|(&i, _)| i)
            .collect();
        for ifindex in stale {
            let (name, _) = self.attached.remove(&ifindex).expect("listed above");
            let reason = match self.links.get(&ifindex) {
                None => "the interface went (deleted or moved to another namespace)".to_string(),
                Some(l) if l.name != name => format!("renamed to {}", l.name),
                Some(_) => "no longer selected".to_string(),
            };
            tracing::info!(
                interface = name,
                ifindex,
                reason,
                "interface left: detaching"
            );
            self.program.detach_index(ifindex);
            self.gone.push(InterfaceStatus {
                name,
                ifindex,
                state: InterfaceState::Detached,
                since_unix: now,
                reason: Some(reason),
            });
        }
        if self.gone.len() > GONE_SHOWN {
            let extra = self.gone.len() - GONE_SHOWN;
            self.gone.drain(..extra);
        }
        // Forget failures of links that changed or went: they are tried again below.
        self.failed
            .retain(|i, (l, ..)| self.links.get(i) == Some(l) && self.selection.matches(&l.name));
        // Attach what is selected and not attached yet, in index order (stable logs).
        let mut todo: Vec<LinkInfo> = self
            .links
            .values()
            .filter(|l| {
                self.selection.matches(&l.name)
                    && !self.attached.contains_key(&l.ifindex)
                    && !self.failed.contains_key(&l.ifindex)
            })
            .cloned()
            .collect();
        todo.sort_by_key(|l| l.ifindex);
        for link in todo {
            self.attach(link, now);
        }
        self.publish();
    }

    fn attach(&mut self, link: LinkInfo, now: i64) {
        let (framing, known) = framing_of(link.link_type);
        if !known {
            let why = format!(
                "link type {} is neither Ethernet nor a known IP-framed link: skipped",
                link.link_type
            );
            tracing::warn!(interface = link.name, ifindex = link.ifindex, "{why}");
            self.fail(link, FailureReason::UnsupportedLinkType, why, now);
            return;
        }
        let started = Instant::now();
        let attached =
            self.program
                .attach_index(&link.name, link.ifindex, framing, &self.directions);
        match attached {
            Ok(()) => {
                let id = self.names.set(link.ifindex, &link.name);
                if let Some(slot) = self.program.slots().slot_of(link.ifindex) {
                    self.counters.counting(slot, id);
                }
                tracing::info!(
                    interface = link.name,
                    ifindex = link.ifindex,
                    took_us = started.elapsed().as_micros() as u64,
                    "interface attached"
                );
                self.attached.insert(link.ifindex, (link.name, now));
            }
            Err(e) => {
                let reason = match &e {
                    LoadError::InterfaceSlot { .. } => FailureReason::NoSlot,
                    LoadError::AlreadyAttached { .. } => FailureReason::AlreadyAttached,
                    _ => FailureReason::Error,
                };
                tracing::warn!(
                    interface = link.name,
                    ifindex = link.ifindex,
                    "not observed: {e}"
                );
                self.fail(link, reason, e.to_string(), now);
            }
        }
    }

    fn fail(&mut self, link: LinkInfo, reason: FailureReason, why: String, now: i64) {
        let at = FailureReason::ALL
            .iter()
            .position(|&r| r == reason)
            .expect("in ALL");
        self.view.stats.failures[at].fetch_add(1, Ordering::Relaxed);
        self.failed.insert(link.ifindex, (link, reason, why, now));
    }

    /// The interface list and readiness, for the API.
    fn publish(&self) {
        let mut list: Vec<InterfaceStatus> = Vec::new();
        let mut by_name: BTreeSet<&str> = BTreeSet::new();
        for (&ifindex, (name, since)) in &self.attached {
            by_name.insert(name);
            list.push(InterfaceStatus {
                name: name.clone(),
                ifindex,
                state: InterfaceState::Attached,
                since_unix: *since,
                reason: None,
            });
        }
        for (&ifindex, (link, reason, why, since)) in &self.failed {
            by_name.insert(&link.name);
            list.push(InterfaceStatus {
                name: link.name.clone(),
                ifindex,
                state: match reason {
                    FailureReason::UnsupportedLinkType => InterfaceState::Skipped,
                    _ => InterfaceState::Failed,
                },
                since_unix: *since,
                reason: Some(why.clone()),
            });
        }
        let mut named_ready = true;
        for name in self.selection.named() {
            if by_name.contains(name) {
                named_ready &= self.attached.values().any(|(n, _)| n == name);
                continue;
            }
            named_ready = false;
            list.push(InterfaceStatus {
                name: name.to_string(),
                ifindex: 0,
                state: InterfaceState::Missing,
                since_unix: self
                    .gone
                    .iter()
                    .rev()
                    .find(|g| g.name == name)
                    .map_or(0, |g| g.since_unix),
                reason: Some("named by --interface but does not exist".to_string()),
            });
        }
        list.sort_by(|a, b| (a.state, &a.name, a.ifindex).cmp(&(b.state, &b.name, b.ifindex)));
        let shown_gone = self
            .gone
            .iter()
            .rev()
            .filter(|g| !by_name.contains(g.name.as_str()))
            .cloned();
        list.extend(shown_gone);
        *lock(&self.view.status) = list;
        if self.view.named_ready.swap(named_ready, Ordering::Relaxed) != named_ready {
            match named_ready {
                true => tracing::info!("every interface named by --interface is attached: ready"),
                false => tracing::warn!(
                    "an interface named by --interface is missing or not attached: /readyz \
                     says not ready until it is back"
                ),
            }
        }
        self.view
            .stats
            .attached
            .store(self.attached.len() as u64, Ordering::Relaxed);
    }

    /// Whether `name` is one the selection names (not a pattern): it must be attached.
    pub fn is_named(&self, name: &str) -> bool {
        self.selection.named().contains(&name)
    }

    /// Releases the counter slots adopted from pinned maps whose interface this agent does
    /// not observe (it went, or is no longer selected, while no agent ran): what they counted
    /// joins the series `if<ifindex>` (the name is not known any more), and the slots are free.
    pub fn release_stale_slots(&mut self) {
        let stale: Vec<(u32, u32)> = self
            .program
            .slots()
            .assigned()
            .filter(|(i, _)| !self.attached.contains_key(i))
            .collect();
        for (ifindex, slot) in stale {
            tracing::info!(
                ifindex,
                "a pinned counter slot of an interface no longer observed: its counts stay in \
                 the series if{ifindex}"
            );
            self.counters.counting(slot, self.names.get(ifindex));
            self.program.slots().release(ifindex);
        }
    }
}
