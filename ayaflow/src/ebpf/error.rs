//! `LoadError`: everything that can stop the kernel program from loading or attaching, each
//! message saying what to do (the README's troubleshooting section lists the same cases).

use std::io;

/// Loading or attaching the kernel program failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this ayaflow binary was built without its eBPF program (AYAFLOW_SKIP_EBPF=1): rebuild it with `cargo xtask build`"
    )]
    NoObject,
    #[error(
        "the kernel has no BTF ({path} is missing): ayaflow needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2020 are)"
    )]
    NoBtf { path: &'static str },
    #[error(
        "network interface {name:?} does not exist: list interfaces with `ip link` and pass one with --interface"
    )]
    NoInterface { name: String },
    #[error(
        "no interface to attach to: there is no default route and no up, non-loopback interface; pass one with --interface"
    )]
    NoDefaultInterface,
    /// The interface got no counter slot: every slot taken, or the map could not be written.
    #[error("interface {interface}: {reason}")]
    InterfaceSlot { interface: String, reason: String },
    #[error(
        "{action}: permission denied ({source}); run as root (sudo) or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (in a container: --cap-add or privileged)"
    )]
    Permission { action: String, source: io::Error },
    #[error(
        "an ayaflow program (id {prog_id}) is already attached to {interface} {hook}: another ayaflow is probably running there; stop it, or detach the stale link (left by --pin: run with the same --pin, or remove it with `ayaflow detach`; otherwise `bpftool link show`, then `bpftool link detach id <id>`)"
    )]
    AlreadyAttached {
        interface: String,
        hook: &'static str,
        prog_id: u32,
    },
    /// The verifier applies its unprivileged rules (Spectre mitigations) without CAP_PERFMON,
    /// and they reject the program's pointer arithmetic.
    #[error(
        "the kernel verifier rejected {program} under its unprivileged rules ({reason}): CAP_PERFMON is missing; run as root or add CAP_PERFMON (Docker: --cap-add=PERFMON; Kubernetes: securityContext.capabilities.add: [PERFMON])"
    )]
    NoPerfmon {
        program: &'static str,
        /// The verifier's line saying what it refused.
        reason: String,
    },
    #[error(
        "the kernel verifier rejected {program}: {detail}\nthis is a bug in ayaflow: please report it with `uname -r` and the log above"
    )]
    Verifier {
        program: &'static str,
        detail: String,
    },
    #[error(
        "the pin path {} is not on a BPF filesystem (bpffs): mount one with `mount -t bpf bpf /sys/fs/bpf` (in Kubernetes: a hostPath volume of /sys/fs/bpf), or pass a --pin-path on one",
        path.display()
    )]
    NotBpffs { path: std::path::PathBuf },
    #[error(
        "another ayaflow uses the pins at {}: run one agent per node, or give each its own --pin-path (each then counts every packet again)",
        path.display()
    )]
    PinsInUse { path: std::path::PathBuf },
    #[error(
        "{action} {}: {source}; if the pins are from an incompatible ayaflow, remove them with `ayaflow detach` (given the same --pin-path)",
        path.display()
    )]
    Pin {
        action: String,
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error(
        "the pin path {} holds {entry:?}, which this ayaflow does not know (pins of another, incompatible version?): remove everything there with `ayaflow detach --pin-path {}`, then start again",
        path.display(),
        path.display()
    )]
    StalePins {
        path: std::path::PathBuf,
        entry: String,
    },
    #[error(
        "pinning needs TCX links (Linux 6.6 or later); this kernel attached {interface} with a netlink filter: run without --pin"
    )]
    PinNeedsTcx { interface: String },
    #[error("{action}: {source:#}")]
    Other {
        action: String,
        source: anyhow::Error,
    },
}

impl LoadError {
    /// Classifies an aya error raised while doing `action`: permission problems get their own
    /// message; anything else keeps aya's text.
    pub fn from_aya(
        action: impl Into<String>,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> LoadError {
        let action = action.into();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<io::Error>()
                && let Some(code @ (libc::EPERM | libc::EACCES)) = io.raw_os_error()
            {
                return LoadError::Permission {
                    action,
                    source: io::Error::from_raw_os_error(code),
                };
            }
            source = e.source();
        }
        LoadError::Other {
            action,
            source: anyhow::Error::new(err),
        }
    }
}
