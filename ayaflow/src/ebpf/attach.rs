//! Attaching the loaded program to interfaces' hooks and detaching it again, one interface at
//! a time (the link follower adds and removes interfaces while the agent runs): a TCX link per
//! hook (a clsact qdisc + netlink filter on kernels before TCX), or the pinned link of a
//! previous agent, atomically replaced.

use std::path::PathBuf;

use aya::programs::{
    SchedClassifier,
    links::{FdLink, PinnedLink},
    tc::{self, SchedClassifierLink, SchedClassifierLinkId},
};
use ayaflow_common::flow::Direction;

use super::{Framing, KernelProgram, LoadError, attach_type, interface, program_name};
use crate::flow::direction_name;

/// One hook this program is attached to.
#[derive(Debug)]
pub(super) struct Hook {
    pub(super) interface: String,
    pub(super) ifindex: u32,
    pub(super) direction: Direction,
    framing: Framing,
    /// The link, while this process owns it (not pinned).
    link: Option<SchedClassifierLinkId>,
    /// Where the link is pinned, with `--pin`.
    pin: Option<PathBuf>,
}

impl KernelProgram {
    /// Attaches the classifier of each of `directions` to `interface` (TCX links on kernels
    /// that have them, a clsact qdisc + netlink filter otherwise): the `_l3` programs if its
    /// frames start at the IP header ([`interface::framing`]). On error the hooks of this
    /// interface attached so far are detached again.
    ///
    /// With pins, a hook whose link is pinned gets this program through that link, atomically;
    /// the others get a new link, pinned. [`KernelProgram::remove_other_pinned_links`] removes
    /// the pins of hooks no longer observed.
    ///
    /// Gives the interface a counter slot first ([`slots`]); a failure to get one is an error
    /// of kind [`LoadError::InterfaceSlot`] and nothing is attached.
    pub fn attach(&mut self, interface: &str, directions: &[Direction]) -> Result<u32, LoadError> {
        let Some(ifindex) = interface::index(interface) else {
            return Err(LoadError::NoInterface {
                name: interface.to_string(),
            });
        };
        let framing = interface::framing(interface);
        self.attach_index(interface, ifindex, framing, directions)?;
        Ok(ifindex)
    }

    /// [`KernelProgram::attach`] for a known index and framing (the link watcher's).
    pub fn attach_index(
        &mut self,
        interface: &str,
        ifindex: u32,
        framing: Framing,
        directions: &[Direction],
    ) -> Result<(), LoadError> {
        self.slots
            .assign(ifindex)
            .map_err(|e| LoadError::InterfaceSlot {
                interface: interface.to_string(),
                reason: e.to_string(),
            })?;
        let before = self.attached.len();
        for &d in directions {
            if let Err(e) = self.attach_hook(interface, ifindex, framing, d) {
                let ours: Vec<Hook> = self.attached.drain(before..).collect();
                for hook in ours {
                    self.detach_hook(hook);
                }
                self.slots.release(ifindex);
                return Err(e);
            }
        }
        Ok(())
    }

    fn attach_hook(
        &mut self,
        interface: &str,
        ifindex: u32,
        framing: Framing,
        d: Direction,
    ) -> Result<(), LoadError> {
        let name = program_name(d, framing);
        let pin = self
            .pins
            .as_ref()
            .map(|p| p.link_path(interface, ifindex, d));
        if let Some(path) = &pin
            && self.adopt_link(interface, d, framing, path)
        {
            self.attached.push(Hook {
                interface: interface.to_string(),
                ifindex,
                direction: d,
                framing,
                link: None,
                pin,
            });
            return Ok(());
        }
        check_not_attached(interface, d)?;
        // Legacy (netlink) attachment, before TCX (6.6, as aya decides), needs a clsact qdisc;
        // with TCX none is added, so the interface's configuration stays as it was. An
        // existing one is fine.
        use aya::util::KernelVersion;
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if !tcx && let Err(e) = tc::qdisc_add_clsact(interface) {
            tracing::debug!(
                "clsact qdisc on {interface}: {e} (expected if it exists or TCX is used)"
            );
        }
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .expect("checked in load")
            .try_into()
            .expect("checked in load");
        let id = prog.attach(interface, attach_type(d)).map_err(|e| {
            LoadError::from_aya(
                format!("attaching {name} to {interface} {}", direction_name(d)),
                e,
            )
        })?;
        let link = match &pin {
            Some(path) => {
                pin_link(prog, id, interface, path)?;
                None
            }
            None => Some(id),
        };
        self.attached.push(Hook {
            interface: interface.to_string(),
            ifindex,
            direction: d,
            framing,
            link,
            pin,
        });
        tracing::info!(
            interface,
            ifindex,
            hook = direction_name(d),
            program = name,
            "attached"
        );
        Ok(())
    }

    /// Detaches every hook of interface `ifindex` (gone, renamed out of the selection) and
    /// releases its counter slot (see [`slots::InterfaceSlots::release`]). With pins, its
    /// pinned links are removed. Returns whether it was attached.
    pub fn detach_index(&mut self, ifindex: u32) -> bool {
        let (ours, rest): (Vec<Hook>, Vec<Hook>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|h| h.ifindex == ifindex);
        self.attached = rest;
        let found = !ours.is_empty();
        for hook in ours {
            tracing::info!(
                interface = hook.interface,
                ifindex,
                hook = direction_name(hook.direction),
                "detaching"
            );
            self.detach_hook(hook);
        }
        self.slots.release(ifindex);
        found
    }

    fn detach_hook(&mut self, hook: Hook) {
        if let Some(id) = hook.link {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(program_name(hook.direction, hook.framing))
                .expect("checked in load")
                .try_into()
                .expect("checked in load");
            // Fails when the interface is gone, which detached it already.
            if let Err(e) = prog.detach(id) {
                tracing::debug!(interface = hook.interface, "detaching: {e}");
            }
        }
        if let Some(path) = &hook.pin
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(link = %path.display(), "removing a pinned link: {e}");
        }
    }

    /// With pins: removes the pinned links of hooks this agent does not observe (an interface
    /// gone or re-created while no agent ran, a hook no longer selected).
    pub fn remove_other_pinned_links(&self) -> Result<(), LoadError> {
        let Some(p) = &self.pins else { return Ok(()) };
        let wanted: Vec<PathBuf> = self.attached.iter().filter_map(|h| h.pin.clone()).collect();
        p.remove_other_links(&wanted)
    }

    /// Gives hook `d` of `interface` this program through its pinned link at `path`, if there
    /// is one that still works (`bpf_link_update`: the hook never runs without a program).
    /// A stale pin (its interface gone, a link of another kind) is removed: false then.
    fn adopt_link(
        &mut self,
        interface: &str,
        d: Direction,
        framing: Framing,
        path: &std::path::Path,
    ) -> bool {
        if !path.exists() {
            return false;
        }
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program_name(d, framing))
            .expect("checked in load")
            .try_into()
            .expect("checked in load");
        let adopted = PinnedLink::from_pin(path)
            .map_err(|e| e.to_string())
            .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
            .and_then(|link| prog.attach_to_link(link).map_err(|e| e.to_string()));
        match adopted {
            Ok(_) => {
                tracing::info!(
                    interface,
                    hook = direction_name(d),
                    "attached through the pinned link (program replaced in place)"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    interface,
                    hook = direction_name(d),
                    link = %path.display(),
                    "the pinned link cannot be reused ({e}): removing it and attaching anew"
                );
                let _ = std::fs::remove_file(path);
                false
            }
        }
    }
}

/// Pins the new TCX link `id` of `prog` at `path`, so it outlives this agent.
fn pin_link(
    prog: &mut SchedClassifier,
    id: SchedClassifierLinkId,
    interface: &str,
    path: &std::path::Path,
) -> Result<(), LoadError> {
    let link = prog
        .take_link(id)
        .map_err(|e| LoadError::from_aya("taking the new link", e))?;
    let fd: FdLink = link.try_into().map_err(|_| LoadError::PinNeedsTcx {
        interface: interface.to_string(),
    })?;
    fd.pin(path).map_err(|e| LoadError::Pin {
        action: "pinning the link".into(),
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(())
}

/// Refuses to attach a second ayaflow to the same hook (two would double every count).
fn check_not_attached(interface: &str, d: Direction) -> Result<(), LoadError> {
    // Kernels before TCX (6.6) cannot be queried this way; the netlink attach then proceeds.
    let progs = match SchedClassifier::query_tcx(interface, attach_type(d)) {
        Ok((_, progs)) => progs,
        Err(e) => {
            // Programs are attached, but naming them opens each by id (BPF_PROG_GET_FD_BY_ID),
            // which needs CAP_SYS_ADMIN: with only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the
            // container set-up) they cannot be identified, so say so rather than pass silently.
            if matches!(
                LoadError::from_aya("checking the hook", e),
                LoadError::Permission { .. }
            ) {
                tracing::warn!(
                    interface,
                    hook = direction_name(d),
                    "another program is attached to this hook and cannot be identified without \
                     CAP_SYS_ADMIN; if it is another ayaflow, every packet is counted twice: run \
                     one agent per node"
                );
            }
            return Ok(());
        }
    };
    // Either framing's program is an ayaflow on this hook.
    let ours = [
        program_name(d, Framing::Ethernet),
        program_name(d, Framing::Ip),
    ];
    match progs
        .iter()
        .find(|p| p.name_as_str().is_some_and(|n| ours.contains(&n)))
    {
        Some(p) => Err(LoadError::AlreadyAttached {
            interface: interface.to_string(),
            hook: direction_name(d),
            prog_id: p.id(),
        }),
        None => Ok(()),
    }
}
