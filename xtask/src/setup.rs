//! Idempotent set-up: Debian packages, then `bpf-linker` built against the LLVM of the chosen
//! BPF toolchain into the project's `.tools/`. Says what it installs; installs nothing twice.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use ayaflow_build::BpfToolchain;

use crate::status;

/// The `bpf-linker` release known to work with aya 0.14 and LLVM 21-23 (shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: the BPF toolchain, what bpf-linker links against, and the tools the tests
/// use (ip, ping, ethtool, bpftool, tc from iproute2).
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "ethtool",
];

/// True if and only if this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs what is missing and returns the BPF toolchain to build with.
pub fn all() -> Result<BpfToolchain> {
    let toolchain = toolchain()?;
    bpf_linker(&toolchain)?;
    Ok(toolchain)
}

fn toolchain() -> Result<BpfToolchain> {
    if std::env::var_os("AYAFLOW_BPF_TOOLCHAIN").is_some() {
        return ayaflow_build::detect();
    }
    if Path::new("/usr/bin/apt-get").exists() {
        apt_install(DEBIAN_PACKAGES)?;
        return Ok(BpfToolchain::Debian);
    }
    ayaflow_build::detect().context(
        "not a Debian-like system: install a BPF-capable Rust (rustup toolchain install nightly \
         --component rust-src), LLVM development files matching its LLVM, iproute2, bpftool and ethtool \
         (see the README's prerequisites)",
    )
}

/// Installs the packages of `names` that dpkg does not have yet.
pub fn apt_install(names: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", n])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: install them (sudo apt-get install {0}) or run this as root",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker(toolchain: &BpfToolchain) -> Result<()> {
    if ayaflow_build::bpf_linker().is_some() {
        return Ok(());
    }
    let major = toolchain.llvm_major()?;
    let prefix = format!("/usr/lib/llvm-{major}");
    if !Path::new(&prefix).join("bin/llvm-config").exists() {
        if Path::new("/usr/bin/apt-get").exists() {
            apt_install(&[&format!("llvm-{major}-dev"), "libzstd-dev", "zlib1g-dev"])?;
        } else {
            bail!(
                "bpf-linker needs the LLVM {major} development files ({prefix}/bin/llvm-config): install them"
            );
        }
    }
    let root = ayaflow_build::tools_bin_dir();
    let root = root.parent().expect("tools/bin has a parent");
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} into {} (about 2 minutes, once)",
        root.display()
    );
    status(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}"), "--root"])
            .arg(root)
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}
