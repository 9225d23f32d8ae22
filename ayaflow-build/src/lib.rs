//! Builds `ayaflow-ebpf` for `bpfel-unknown-none`, choosing the toolchain the machine has.
//!
//! aya-build does this job upstream, but it always calls rustup's nightly with `-Z build-std`,
//! which needs the `rust-src` component. Machines without internet cannot download it, while
//! Debian's `rustc-web` ships a prebuilt `core` for the BPF target (`libstd-rust-web-dev-bpf`).
//! So we support both, in this order:
//! 1. `AYAFLOW_BPF_TOOLCHAIN=debian|nightly` if set;
//! 2. Debian's `/usr/bin/rustc` with `/usr/lib/rustlib/bpfel-unknown-none`;
//! 3. rustup `nightly` with `rust-src` (`-Z build-std=core`).
//!
//! The linker, `bpf-linker`, is looked up in the project's `.tools/bin` first, then on `PATH`.

use std::{
    env,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// A Rust toolchain able to compile for `bpfel-unknown-none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BpfToolchain {
    /// Debian's `rustc-web` + `libstd-rust-web-dev-bpf`: a prebuilt `core` for the target.
    Debian,
    /// rustup's `nightly` with the `rust-src` component, building `core` with `-Z build-std`.
    Nightly,
}

impl fmt::Display for BpfToolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Debian => {
                f.write_str("Debian rustc-web (/usr/bin/rustc, prebuilt core for bpfel)")
            }
            Self::Nightly => f.write_str("rustup nightly with rust-src (-Z build-std=core)"),
        }
    }
}

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ayaflow-build sits inside the workspace")
        .to_path_buf()
}

/// Where `cargo xtask setup` installs `bpf-linker`.
pub fn tools_bin_dir() -> PathBuf {
    workspace_root().join(".tools").join("bin")
}

/// True if and only if Debian's BPF-capable rustc is installed.
pub fn debian_available() -> bool {
    Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_BPF_CORE).is_dir()
}

/// True if and only if rustup has a nightly toolchain with `rust-src`.
pub fn nightly_available() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success()
        && Path::new(&sysroot)
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

/// Picks the toolchain (see the module docs for the order).
pub fn detect() -> Result<BpfToolchain> {
    match env::var("AYAFLOW_BPF_TOOLCHAIN").ok().as_deref() {
        Some("debian") => return Ok(BpfToolchain::Debian),
        Some("nightly") => return Ok(BpfToolchain::Nightly),
        Some(other) => bail!(
            "AYAFLOW_BPF_TOOLCHAIN={other:?} is not a toolchain: use \"debian\" or \"nightly\", or unset it to detect"
        ),
        None => {}
    }
    if debian_available() {
        return Ok(BpfToolchain::Debian);
    }
    if nightly_available() {
        return Ok(BpfToolchain::Nightly);
    }
    bail!(
        "no Rust toolchain that can build for bpfel-unknown-none: run `cargo xtask setup` \
         (installs Debian's rustc-web and libstd-rust-web-dev-bpf), or \
         `rustup toolchain install nightly --component rust-src`"
    )
}

impl BpfToolchain {
    /// The value of `AYAFLOW_BPF_TOOLCHAIN` that selects this toolchain.
    pub fn env_name(&self) -> &'static str {
        match self {
            Self::Debian => "debian",
            Self::Nightly => "nightly",
        }
    }

    /// A `Command` running this toolchain's `tool` (`cargo` or `rustc`), with the environment of
    /// any outer cargo removed so it cannot leak flags, targets or toolchain choices inward.
    pub fn command(&self, tool: &str) -> Command {
        let mut cmd = match self {
            Self::Debian => {
                let mut c = Command::new(if tool == "cargo" {
                    DEBIAN_CARGO
                } else {
                    DEBIAN_RUSTC
                });
                c.env("RUSTC", DEBIAN_RUSTC);
                // aya-ebpf uses #![feature(asm_experimental_arch)]; Debian's rustc is a stable build.
                c.env("RUSTC_BOOTSTRAP", "1");
                c
            }
            Self::Nightly => {
                let mut c = Command::new("rustup");
                c.args(["run", "nightly", tool]);
                c
            }
        };
        for (k, _) in env::vars_os() {
            let k = k.to_string_lossy();
            let outer_cargo = k.starts_with("CARGO_") && k != "CARGO_HOME";
            let keep = matches!(self, Self::Debian) && (k == "RUSTC" || k == "RUSTC_BOOTSTRAP");
            let inherited = outer_cargo
                || k.starts_with("RUSTC")
                || k == "RUSTFLAGS"
                || k == "RUSTUP_TOOLCHAIN";
            if inherited && !keep {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.env("PATH", path_with_tools());
        cmd
    }

    /// The LLVM major version of this toolchain's rustc (`bpf-linker` must match it).
    pub fn llvm_major(&self) -> Result<u32> {
        let out = self
            .command("rustc")
            .arg("-vV")
            .output()
            .with_context(|| format!("running rustc -vV of {self}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("LLVM version: "))
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("no `LLVM version` line in `rustc -vV` of {self}: {text}"))
    }
}

/// `PATH` with the project's tools folder first, so its `bpf-linker` wins.
pub fn path_with_tools() -> OsString {
    let mut paths = vec![tools_bin_dir()];
    if let Some(p) = env::var_os("PATH") {
        paths.extend(env::split_paths(&p));
    }
    env::join_paths(paths).expect("PATH entries contain no separator")
}

/// True if and only if `bpf-linker` can be found (tools folder or `PATH`).
pub fn bpf_linker() -> Option<PathBuf> {
    env::split_paths(&path_with_tools())
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// Builds the kernel program with `profile` ("release" or "debug") into `target_dir` and returns
/// the path of the object.
pub fn build_ebpf(toolchain: &BpfToolchain, release: bool, target_dir: &Path) -> Result<PathBuf> {
    if bpf_linker().is_none() {
        bail!(
            "bpf-linker not found in {} or on PATH: run `cargo xtask setup`",
            tools_bin_dir().display()
        );
    }
    let crate_dir = workspace_root().join("ayaflow-ebpf");
    let mut cmd = toolchain.command("cargo");
    cmd.current_dir(&crate_dir)
        .args(["build", "--target", "bpfel-unknown-none", "--target-dir"])
        .arg(target_dir);
    if release {
        cmd.arg("--release");
    }
    if *toolchain == BpfToolchain::Nightly {
        cmd.args(["-Z", "build-std=core"]);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo of {toolchain}"))?;
    if !status.success() {
        bail!(
            "building ayaflow-ebpf with {toolchain} failed ({status}); see the compiler output above"
        );
    }
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir
        .join("bpfel-unknown-none")
        .join(profile)
        .join("ayaflow"))
}
