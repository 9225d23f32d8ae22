//! bpffs pinning (`--pin`): the program's links and the maps whose state must outlive the agent
//! live under the pin path, so a restart (an upgrade, a config change, a crash) neither
//! detaches the program nor resets its counters.
//!
//! ```text
//! <pin path>/                          the directory is flock'ed by the agent using it
//!   maps-v<LAYOUT_VERSION>-<layout>/   COUNTERS, EVENTS, FLOWS and its companions
//!   links/<interface>-<ifindex>-<hook> a TCX link each
//! ```
//!
//! - **Maps**: a starting agent adopts the maps whose directory name is its own layout (the
//!   version of the shared structures and every map's size: ring buffer and flow table sizes
//!   are part of it). Another layout cannot be reused: its pins are removed, with a warning
//!   saying what was lost (the counters start again at zero, the flows and events they held
//!   are gone). bpffs holds only BPF objects and directories, so the layout is the directory's
//!   name rather than a file next to the pins.
//! - **Links**: an existing link of a hook gets the new program atomically (`bpf_link_update`:
//!   no packet crosses the hook unobserved, even when the program changed); a hook without one
//!   gets a new TCX link, pinned. Links of hooks the agent no longer observes are removed, and
//!   so is a link whose interface is gone (the ifindex is in its name: an interface re-created
//!   under the same name is a new interface).
//! - **The flow table's hash seed** is chosen anew by each agent: connections the previous
//!   program had placed are then found in new slots, and their old slots drain when idle. Every
//!   packet is still counted once, in one slot or the other.
//! - **On exit** the agent closes its descriptors; the pins keep the links attached and the maps
//!   alive. [`detach`] (`ayaflow detach`) removes all of it.

use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

use ayaflow_common::{
    counters::{COUNTER_BLOCKS, CounterBlock},
    event::PacketEvent,
    flow::{Direction, FlowSlot, INDEX_POSITIONS_PER_SLOT, SlotClaim},
    globals,
};

use super::{LoadError, LoadOptions, flow_table_slots};
use crate::flow::direction_name;

/// `statfs.f_type` of a BPF filesystem (`include/uapi/linux/magic.h`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Bumped whenever a pinned map's content changes meaning (the layout of `FlowSlot`,
/// `CounterBlock`, `PacketEvent`, the free stack's encoding...) while its size stays the same,
/// so an agent never reads maps a different build wrote differently.
pub const LAYOUT_VERSION: u32 = 2;

/// The maps that are pinned: the counters (so `ayaflow_packets_total` never goes back), the ring
/// buffer (events written while no agent runs), the flow table and its companions.
pub const PINNED_MAPS: &[&str] = &[
    globals::MAP_COUNTERS,
    // Which interface each counter slot counts: adopted with the counters.
    globals::MAP_IFACE_SLOTS,
    globals::MAP_IFACE_SLOTS_HIGH,
    globals::MAP_EVENTS,
    globals::MAP_FLOWS,
    globals::MAP_FLOWS_USED,
    globals::MAP_FLOW_CLAIMS,
    globals::MAP_FLOW_INDEX,
    globals::MAP_FLOW_FREE,
    globals::MAP_FLOW_FREE_TOP,
];

/// The name of the maps' directory for `opts`: what must match for maps to be reused.
pub fn layout_name(opts: &LoadOptions) -> String {
    let slots = flow_table_slots(opts.flow_map_size);
    // The sizes of the shared structures, so a change to one without a version bump still
    // starts clean rather than misreads.
    let structs = [
        size_of::<FlowSlot>(),
        size_of::<SlotClaim>(),
        size_of::<CounterBlock>(),
        size_of::<PacketEvent>(),
        COUNTER_BLOCKS as usize,
        INDEX_POSITIONS_PER_SLOT as usize,
    ]
    .map(|n| n.to_string())
    .join("-");
    format!(
        "maps-v{LAYOUT_VERSION}-ring{}-slots{slots}-s{structs}",
        opts.ring_buffer_size
    )
}

/// The pin directory in use by this agent: locked for as long as it lives.
#[derive(Debug)]
pub struct Pins {
    root: PathBuf,
    maps: PathBuf,
    links: PathBuf,
    /// Whether the maps existed (adopted) rather than being created now.
    pub adopted_maps: bool,
    /// Held with `flock(LOCK_EX)`: a second agent on the same pins is refused.
    _lock: File,
}

impl Pins {
    /// Opens (creating) the pin directory `root` for the maps of layout `layout`: checks that it
    /// is on a bpffs, takes its lock, removes maps of any other layout (logging what is lost).
    pub fn open(root: &Path, layout: &str) -> Result<Pins, LoadError> {
        check_on_bpffs(root)?;
        let err = |action: String| {
            move |e: io::Error| LoadError::Pin {
                action,
                path: root.to_owned(),
                source: e,
            }
        };
        fs::create_dir_all(root).map_err(err("creating the pin directory".into()))?;
        // Only root (the agent) reads the pins: the maps hold the node's traffic.
        let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o700));
        let lock = File::open(root).map_err(err("opening the pin directory".into()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(LoadError::PinsInUse {
                path: root.to_owned(),
            });
        }
        let maps = root.join(layout);
        let links = root.join("links");
        for entry in fs::read_dir(root).map_err(err("listing the pin directory".into()))? {
            let entry = entry.map_err(err("listing the pin directory".into()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("maps-") && name != "links" {
                return Err(LoadError::StalePins {
                    path: root.to_owned(),
                    entry: name,
                });
            }
            if name.starts_with("maps-") && name != layout {
                tracing::warn!(
                    pin_path = %root.display(),
                    found = name,
                    wanted = layout,
                    "the pinned maps have another layout (another ring buffer or flow table \
                     size, or another ayaflow version): starting clean; their counters, the \
                     flows and the events they held are lost"
                );
                fs::remove_dir_all(entry.path())
                    .map_err(err(format!("removing the old maps {name}")))?;
            }
        }
        let adopted_maps = maps.join(globals::MAP_COUNTERS).exists();
        fs::create_dir_all(&maps).map_err(err("creating the maps directory".into()))?;
        fs::create_dir_all(&links).map_err(err("creating the links directory".into()))?;
        Ok(Pins {
            root: root.to_owned(),
            maps,
            links,
            adopted_maps,
            _lock: lock,
        })
    }

    /// The pin of map `name`.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps.join(name)
    }

    /// The pin of the link of `interface` (index `ifindex`) at hook `d`.
    pub fn link_path(&self, interface: &str, ifindex: u32, d: Direction) -> PathBuf {
        self.links
            .join(format!("{interface}-{ifindex}-{}", direction_name(d)))
    }

    /// Removes the pinned links that are not in `wanted` (an interface gone or re-created, a
    /// hook no longer observed): each detaches when its pin goes.
    pub fn remove_other_links(&self, wanted: &[PathBuf]) -> Result<(), LoadError> {
        let entries = fs::read_dir(&self.links).map_err(|e| LoadError::Pin {
            action: "listing the pinned links".into(),
            path: self.links.clone(),
            source: e,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !wanted.contains(&path) {
                tracing::info!(link = %path.display(), "removing a pinned link this agent does not use");
                fs::remove_file(&path).map_err(|e| LoadError::Pin {
                    action: "removing a pinned link".into(),
                    path: path.clone(),
                    source: e,
                })?;
            }
        }
        Ok(())
    }

    /// The pin directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Fails unless `path` (or, if it does not exist yet, its nearest existing parent) is on a BPF
/// filesystem.
fn check_on_bpffs(path: &Path) -> Result<(), LoadError> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).map_err(|_| {
        LoadError::NotBpffs {
            path: path.to_owned(),
        }
    })?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    if ok && st.f_type as i64 == BPF_FS_MAGIC {
        Ok(())
    } else {
        Err(LoadError::NotBpffs {
            path: path.to_owned(),
        })
    }
}

/// What [`detach`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Detached {
    pub links: usize,
    pub maps: usize,
}

/// `ayaflow detach`: removes every link and map ayaflow pinned under `root`, and `root` itself.
/// The links detach as their pins go (nothing else holds them once no agent runs); the maps
/// and programs are freed with their last reference.
pub fn detach(root: &Path) -> Result<Detached, LoadError> {
    if !root.exists() {
        return Ok(Detached::default());
    }
    check_on_bpffs(root)?;
    let lock = File::open(root).map_err(|e| LoadError::Pin {
        action: "opening the pin directory".into(),
        path: root.to_owned(),
        source: e,
    })?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(LoadError::PinsInUse {
            path: root.to_owned(),
        });
    }
    let mut done = Detached::default();
    let err = |path: &Path| {
        let path = path.to_owned();
        move |e: io::Error| LoadError::Pin {
            action: "removing".into(),
            path,
            source: e,
        }
    };
    for dir in fs::read_dir(root).map_err(err(root))?.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let count = fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0);
        if name == "links" {
            done.links += count;
        } else if name.starts_with("maps-") {
            done.maps += count;
        }
        fs::remove_dir_all(dir.path()).map_err(err(&dir.path()))?;
    }
    drop(lock);
    fs::remove_dir(root).map_err(err(root))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_changes_with_every_map_size() {
        let a = LoadOptions::default();
        let b = LoadOptions {
            ring_buffer_size: a.ring_buffer_size * 2,
            ..a.clone()
        };
        let c = LoadOptions {
            flow_map_size: a.flow_map_size * 2,
            ..a.clone()
        };
        let d = LoadOptions {
            capture_mode: globals::CAPTURE_MODE_FLOWS,
            ..a.clone()
        };
        assert_ne!(layout_name(&a), layout_name(&b));
        assert_ne!(layout_name(&a), layout_name(&c));
        // The capture mode changes the program, not the maps: they are adopted.
        assert_eq!(layout_name(&a), layout_name(&d));
        assert!(layout_name(&a).starts_with("maps-v2-ring8388608-slots65536-"));
    }

    #[test]
    fn a_path_off_bpffs_is_refused_with_the_mount_command() {
        let dir = tempfile::tempdir().expect("temp dir");
        let e = Pins::open(&dir.path().join("pins"), "maps-x").expect_err("not a bpffs");
        let msg = e.to_string();
        assert!(msg.contains("mount -t bpf bpf"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}
