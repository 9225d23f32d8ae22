//! Loads the embedded kernel program, attaches it to interfaces' TC hooks (`attach.rs`, one
//! interface at a time, as they come and go), and hands out its maps: the `EVENTS` ring buffer
//! (`ring.rs`), the per-CPU `COUNTERS` (`counters.rs`) with the interfaces' slots in them
//! (`slots.rs`) and, in flow mode, the `FLOWS` map.
//!
//! Detaching: the links belong to the `Ebpf` object inside [`KernelProgram`]; dropping it
//! detaches them, so every exit path (error, signal, panic unwinding) leaves nothing attached.
//! With pinning (`pin.rs`) the links and the stateful maps are pinned instead: dropping the
//! object leaves them attached and counting, for the next agent to adopt.

mod attach;
pub mod counters;
mod error;
pub mod event_ring;
pub mod interface;
mod mapping;
pub mod pin;
pub mod ring;
pub mod slots;
pub mod sweep;
pub mod test_run;

use std::{
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{ProgramError, SchedClassifier, TcAttachType},
};
use ayaflow_common::{
    flow::{Direction, INDEX_POSITIONS_PER_SLOT},
    globals,
};
pub use error::LoadError;
pub use interface::Framing;

pub use event_ring::EventRing;

use crate::flow::direction_name;

/// The kernel object, built with this binary's profile by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AYAFLOW_EBPF_OBJECT"));

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Load-time settings of the kernel program.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// `globals::CAPTURE_MODE_RAW` or `globals::CAPTURE_MODE_FLOWS`.
    pub capture_mode: u32,
    /// Bytes of the `EVENTS` ring buffer (a power of two, at least a page).
    pub ring_buffer_size: u32,
    /// Connections the `FLOWS` table is sized for: it gets this many slots, rounded up to a
    /// power of two (see [`flow_table_slots`]).
    pub flow_map_size: u32,
    /// Pin the links and the stateful maps under this directory of a bpffs (`pin.rs`);
    /// `None`: nothing pinned, everything detached and freed on exit.
    pub pin_path: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            capture_mode: globals::CAPTURE_MODE_RAW,
            ring_buffer_size: 8 * 1024 * 1024,
            flow_map_size: 65536,
            pin_path: None,
        }
    }
}

/// Slots of the `FLOWS` table for `flow_map_size`: the next power of two (so that the index,
/// `INDEX_POSITIONS_PER_SLOT` times as many positions, is addressed by a mask of the hash), at
/// least 1, at most 2^31.
pub fn flow_table_slots(flow_map_size: u32) -> u32 {
    flow_map_size.clamp(1, 1 << 31).next_power_of_two()
}

/// A seed for the flow table's hash, from the standard library's randomly keyed hasher (the OS
/// random source), so that colliding keys cannot be chosen in advance.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

/// The loaded (and possibly attached) classifier with its maps.
pub struct KernelProgram {
    ebpf: Ebpf,
    /// Hooks attached now.
    attached: Vec<attach::Hook>,
    /// The pins in use, with `--pin`.
    pins: Option<pin::Pins>,
    /// Which counter slot counts which interface.
    slots: slots::InterfaceSlots,
}

/// The program of hook `d` for links of framing `f`.
fn program_name(d: Direction, f: Framing) -> &'static str {
    match (d, f) {
        (Direction::Ingress, Framing::Ethernet) => globals::PROG_INGRESS,
        (Direction::Egress, Framing::Ethernet) => globals::PROG_EGRESS,
        (Direction::Ingress, Framing::Ip) => globals::PROG_INGRESS_L3,
        (Direction::Egress, Framing::Ip) => globals::PROG_EGRESS_L3,
    }
}

/// Every program of the object: both hooks, both framings.
const PROGRAMS: [(Direction, Framing); 4] = [
    (Direction::Ingress, Framing::Ethernet),
    (Direction::Egress, Framing::Ethernet),
    (Direction::Ingress, Framing::Ip),
    (Direction::Egress, Framing::Ip),
];

fn attach_type(d: Direction) -> TcAttachType {
    match d {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

impl KernelProgram {
    /// Loads both classifiers into the kernel (verifier included) without attaching them.
    pub fn load(opts: &LoadOptions) -> Result<KernelProgram, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        if !std::path::Path::new(BTF_PATH).exists() {
            return Err(LoadError::NoBtf { path: BTF_PATH });
        }
        raise_memlock_limit();
        let slots = flow_table_slots(opts.flow_map_size);
        let positions = slots.checked_mul(INDEX_POSITIONS_PER_SLOT).unwrap_or(slots);
        let pins = match &opts.pin_path {
            Some(root) => Some(pin::Pins::open(root, &pin::layout_name(opts))?),
            None => None,
        };
        let mut loader = EbpfLoader::new();
        if let Some(p) = &pins {
            for &name in pin::PINNED_MAPS {
                loader.map_pin_path(name, p.map_path(name));
            }
            if p.adopted_maps {
                tracing::info!(
                    pin_path = %p.root().display(),
                    "adopting the pinned maps: the counters continue, and what the kernel \
                     recorded while no agent ran is read now"
                );
            }
        }
        let mut ebpf = loader
            .override_global(globals::CAPTURE_MODE, &opts.capture_mode, true)
            // A quarter of the ring: the timer drains long before, a burst still wakes it.
            .override_global(
                globals::WAKEUP_BYTES,
                &(u64::from(opts.ring_buffer_size) / 4),
                true,
            )
            .map_max_entries(globals::MAP_EVENTS, opts.ring_buffer_size)
            .override_global(globals::FLOW_HASH_SEED, &random_seed(), true)
            .override_global(globals::FLOW_INDEX_MASK, &(positions - 1), true)
            .override_global(globals::FLOW_SLOTS, &slots, true)
            .map_max_entries(globals::MAP_FLOWS, slots)
            .map_max_entries(globals::MAP_FLOW_CLAIMS, slots)
            .map_max_entries(globals::MAP_FLOW_FREE, slots)
            .map_max_entries(globals::MAP_FLOW_INDEX, positions)
            .map_max_entries(globals::MAP_FLOWS_USED, slots.div_ceil(64))
            .load(OBJECT)
            .map_err(|e| LoadError::from_aya("loading the eBPF object", e))?;
        for (d, f) in PROGRAMS {
            let name = program_name(d, f);
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| LoadError::Other {
                    action: format!("finding program {name}"),
                    source: anyhow::anyhow!("the embedded object has no program {name}"),
                })?
                .try_into()
                .map_err(|e| LoadError::from_aya(format!("program {name}"), e))?;
            prog.load().map_err(|e| match e {
                ProgramError::LoadError { verifier_log, .. } if !is_permission(&verifier_log) => {
                    verifier_error(name, &verifier_log.to_string())
                }
                e => LoadError::from_aya(format!("loading {name}"), e),
            })?;
        }
        let slots = slots::InterfaceSlots::new(
            dup_map(&ebpf, globals::MAP_IFACE_SLOTS)?,
            dup_map(&ebpf, globals::MAP_IFACE_SLOTS_HIGH)?,
            dup_map(&ebpf, globals::MAP_COUNTERS)?,
        )?;
        Ok(KernelProgram {
            ebpf,
            attached: Vec::new(),
            pins,
            slots,
        })
    }

    /// Which counter slot counts which interface.
    pub fn slots(&mut self) -> &mut slots::InterfaceSlots {
        &mut self.slots
    }

    /// Whether the program stays attached when this agent exits (`--pin`).
    pub fn pinned(&self) -> bool {
        self.pins.is_some()
    }

    /// The hooks attached, as (interface, ifindex, direction).
    pub fn attached(&self) -> impl Iterator<Item = (&str, u32, Direction)> + '_ {
        self.attached
            .iter()
            .map(|h| (h.interface.as_str(), h.ifindex, h.direction))
    }

    /// The loaded program of one hook (for Ethernet framing), for `test_run::test_run`.
    pub fn program_fd(&self, d: Direction) -> BorrowedFd<'_> {
        self.program_fd_for(d, Framing::Ethernet)
    }

    /// The loaded program of one hook for links of framing `f`.
    pub fn program_fd_for(&self, d: Direction, f: Framing) -> BorrowedFd<'_> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program_name(d, f))
            .expect("checked in load")
            .try_into()
            .expect("checked in load");
        prog.fd().expect("loaded in load").as_fd()
    }

    /// Takes the `EVENTS` ring buffer (once), mapped for reading.
    pub fn take_events(&mut self) -> Result<EventRing, LoadError> {
        let Map::RingBuf(map) = self.take_map(globals::MAP_EVENTS)? else {
            return Err(LoadError::Other {
                action: "opening EVENTS".into(),
                source: anyhow::anyhow!("the object's EVENTS map is not a ring buffer"),
            });
        };
        EventRing::new(map).map_err(|e| LoadError::Other {
            action: "mapping EVENTS".into(),
            source: e.into(),
        })
    }

    /// Takes the `COUNTERS` array (once).
    pub fn take_counters(&mut self) -> Result<counters::CounterReader, LoadError> {
        let map = self.take_map(globals::MAP_COUNTERS)?;
        counters::CounterReader::new(map)
    }

    /// Takes the flow table's maps (once), for flow mode's sweeper.
    pub fn take_flows(&mut self) -> Result<sweep::FlowSweeper, LoadError> {
        let maps = sweep::FlowMaps {
            slots: self.take_map(globals::MAP_FLOWS)?,
            claims: self.take_map(globals::MAP_FLOW_CLAIMS)?,
            index: self.take_map(globals::MAP_FLOW_INDEX)?,
            free: self.take_map(globals::MAP_FLOW_FREE)?,
            free_top: self.take_map(globals::MAP_FLOW_FREE_TOP)?,
            used: self.take_map(globals::MAP_FLOWS_USED)?,
        };
        sweep::FlowSweeper::new(&maps).map_err(|e| LoadError::Other {
            action: "opening FLOWS".into(),
            source: e.into(),
        })
    }

    fn take_map(&mut self, name: &str) -> Result<aya::maps::Map, LoadError> {
        self.ebpf.take_map(name).ok_or_else(|| LoadError::Other {
            action: format!("taking map {name}"),
            source: anyhow::anyhow!("already taken, or missing from the object"),
        })
    }
}

impl Drop for KernelProgram {
    fn drop(&mut self) {
        let pinned = self.pins.is_some();
        for h in &self.attached {
            let (interface, hook) = (&h.interface, direction_name(h.direction));
            match pinned {
                true => tracing::info!(interface, hook, "left attached (pinned)"),
                false => tracing::info!(interface, hook, "detaching"),
            }
        }
    }
}

/// A second handle on map `name` of the loaded object (a duplicate of its descriptor), for an
/// owner besides the one that takes the map.
fn dup_map(ebpf: &Ebpf, name: &str) -> Result<Map, LoadError> {
    let err = |e: String| LoadError::Other {
        action: format!("opening map {name}"),
        source: anyhow::anyhow!(e),
    };
    let map = ebpf
        .map(name)
        .ok_or_else(|| err("missing from the object".into()))?;
    let data = match map {
        Map::Array(d) | Map::PerCpuArray(d) | Map::HashMap(d) => d,
        _ => return Err(err("not an array or hash map".into())),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| err(e.to_string()))?;
    let dup = MapData::from_fd(fd).map_err(|e| err(e.to_string()))?;
    Ok(match map {
        Map::Array(_) => Map::Array(dup),
        Map::PerCpuArray(_) => Map::PerCpuArray(dup),
        _ => Map::HashMap(dup),
    })
}

fn is_permission(log: &impl std::fmt::Display) -> bool {
    log.to_string().is_empty()
}

/// Verifier messages of rules it applies only to processes without CAP_PERFMON
/// (kernel/bpf/verifier.c): most say "!root" ("pointer arithmetic with it prohibited for
/// !root"); "partial copy of pointer" (a 32-bit move of a pointer, as ALU32 code does with
/// `data_end - data`) and "pointer -= pointer prohibited" (the 64-bit `data_end - data`) are
/// checked only when pointer leaks are not allowed.
const UNPRIVILEGED_ONLY: &[&str] = &[
    "!root",
    "partial copy of pointer",
    "pointer -= pointer prohibited",
];

/// A verifier rejection of `program` with `log`: a missing capability if the message is one of
/// [`UNPRIVILEGED_ONLY`], anything else a bug.
fn verifier_error(program: &'static str, log: &str) -> LoadError {
    match log
        .lines()
        .find(|l| UNPRIVILEGED_ONLY.iter().any(|m| l.contains(m)))
    {
        Some(line) => LoadError::NoPerfmon {
            program,
            reason: line.trim().to_string(),
        },
        None => LoadError::Verifier {
            program,
            detail: log.to_string(),
        },
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (later ones use memory cgroups), see
/// https://lwn.net/Articles/837122/. Failure is only logged: loading then says what is wrong.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprivileged_verifier_rules_name_the_missing_capability() {
        let log = "0: R1=ctx() R10=fp0\nR5 tried to add from different maps, paths or scalars, \
                   pointer arithmetic with it prohibited for !root\nverification time 264 usec\n";
        let e = verifier_error("tc_ingress", log);
        assert!(matches!(e, LoadError::NoPerfmon { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("CAP_PERFMON is missing"), "{msg}");
        assert!(msg.contains("prohibited for !root"), "{msg}");
        assert!(!msg.contains("bug"), "{msg}");

        let alu32 =
            "13: (61) r1 = *(u32 *)(r6 +80)\n14: (bc) w4 = w1\nR1 partial copy of pointer\n";
        let e = verifier_error("tc_ingress", alu32);
        assert!(matches!(e, LoadError::NoPerfmon { .. }), "{e:?}");

        let sub = "17: (1f) r4 -= r3\nR4 pointer -= pointer prohibited\n";
        let e = verifier_error("tc_ingress", sub);
        assert!(matches!(e, LoadError::NoPerfmon { .. }), "{e:?}");
    }

    #[test]
    fn other_verifier_rejections_are_bugs() {
        let e = verifier_error("tc_ingress", "invalid access to packet, off=14 size=2\n");
        assert!(matches!(e, LoadError::Verifier { .. }), "{e:?}");
        assert!(e.to_string().contains("this is a bug in ayaflow"));
    }
}
