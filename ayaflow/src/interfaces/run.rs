//! Start-up and the follower's task: which interfaces the selection names, attaching to what
//! exists before the agent says it is ready, then following link changes until shutdown.

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::{Context, Result};

use super::follow::{FollowView, Follower, LinkInfo};
use crate::{
    config::InterfaceSelection,
    ebpf::{self, LoadError},
    links::{self, LinkEvent, LinkWatch},
    shutdown::Shutdown,
};

/// How often released counter slots are read for the last time and freed.
const TICK: Duration = Duration::from_secs(1);

/// The selection with `auto` replaced by the default route's interface; fails, before
/// anything is attached, when a named interface does not exist or `auto` finds none.
pub fn resolve(selection: &InterfaceSelection) -> Result<InterfaceSelection, LoadError> {
    let mut resolved = selection.clone();
    if selection.has_auto() {
        let default = ebpf::interface::default_interface();
        match &default {
            Some(i) => {
                tracing::info!(interface = %i, "auto: using the default route's interface");
                if !ebpf::interface::is_ethernet(i) {
                    tracing::warn!(
                        interface = %i,
                        link_type = ?ebpf::interface::link_type(i),
                        "the default interface has no Ethernet header (a tunnel, VPN or \
                         point-to-point link): its frames are parsed from the IP header and \
                         carry no MAC or VLAN; pass --interface to observe another one"
                    );
                }
            }
            None if selection.named().is_empty() && !selection.has_patterns() => {
                return Err(LoadError::NoDefaultInterface);
            }
            None => tracing::warn!(
                "auto: there is no default route and no up, non-loopback interface; observing \
                 the other interfaces of --interface"
            ),
        }
        resolved = resolved.resolve_auto(default);
    }
    for name in resolved.named() {
        if ebpf::interface::index(name).is_none() {
            return Err(LoadError::NoInterface {
                name: name.to_string(),
            });
        }
    }
    Ok(resolved)
}

/// Attaches to every selected interface that exists now and spawns the task that follows link
/// changes until `shutdown`; the task gives the program back when it ends. Fails, with nothing
/// left attached, if a named interface cannot be attached.
pub async fn start(
    mut follower: Follower,
    pinned: bool,
    shutdown: Shutdown,
) -> Result<(FollowView, tokio::task::JoinHandle<ebpf::KernelProgram>)> {
    let LinkWatch {
        links: initial,
        mut events,
        task: mut watcher,
    } = links::watch_links(links::EVENTS_CAPACITY)
        .await
        .context("watching the network interfaces (rtnetlink)")?;
    follower.replace_all(initial.into_iter().map(link_info).collect());
    let view = follower.view();
    if let Some(failed) = view
        .interfaces()
        .into_iter()
        .find(|i| i.state != super::InterfaceState::Attached && follower.is_named(&i.name))
    {
        anyhow::bail!(
            "interface {}: {}",
            failed.name,
            failed.reason.unwrap_or_default()
        );
    }
    if pinned {
        follower.program().remove_other_pinned_links()?;
        follower.release_stale_slots();
    }
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(e) => apply(&mut follower, e),
                    None => {
                        let why = match (&mut watcher).await {
                            Ok(Err(e)) => e.to_string(),
                            Ok(Ok(())) => "it ended".to_string(),
                            Err(e) => e.to_string(),
                        };
                        tracing::error!(
                            "the link watcher stopped ({why}): interfaces that appear or go from \
                             now on are not followed (restart the agent); not ready"
                        );
                        follower.view().named_ready.store(false, Ordering::Relaxed);
                        (&mut stop).await;
                        break;
                    }
                },
                _ = tick.tick() => follower.tick(),
                () = &mut stop => break,
            }
        }
        follower.into_program()
    });
    Ok((view, task))
}

fn apply(follower: &mut Follower, event: LinkEvent) {
    match event {
        LinkEvent::Added(l) | LinkEvent::Changed { now: l, .. } => follower.upsert(link_info(l)),
        LinkEvent::Removed { ifindex, .. } => follower.remove(ifindex),
    }
}

fn link_info(l: links::Link) -> LinkInfo {
    LinkInfo {
        ifindex: l.ifindex,
        name: l.name,
        link_type: l.link_type,
    }
}
