//! Builds the kernel program (`ayaflow-ebpf`) with the same profile as this crate and hands its
//! path to `include_bytes_aligned!` through `AYAFLOW_EBPF_OBJECT`, so a release agent always
//! embeds a fresh release object.
//!
//! `AYAFLOW_SKIP_EBPF=1` embeds an empty object instead, for jobs that never load it (clippy,
//! docs, unit tests of the userspace modules); such an agent refuses to start and says why.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let root = ayaflow_build::workspace_root();
    for dir in ["ayaflow-ebpf/src", "ayaflow-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for file in [
        "ayaflow-ebpf/Cargo.toml",
        "ayaflow-ebpf/Cargo.lock",
        "ayaflow-ebpf/.cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=AYAFLOW_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=AYAFLOW_BPF_TOOLCHAIN");
    if let Some(linker) = ayaflow_build::bpf_linker() {
        println!("cargo:rerun-if-changed={}", linker.display());
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let embedded = out_dir.join("ayaflow.bpf.o");
    if env::var("AYAFLOW_SKIP_EBPF").is_ok_and(|v| v == "1") {
        fs::write(&embedded, b"")?;
    } else {
        let toolchain = ayaflow_build::detect()?;
        let release = env::var("PROFILE")? == "release";
        let object = ayaflow_build::build_ebpf(&toolchain, release, &out_dir.join("ebpf-target"))
            .context(
            "building the eBPF program (set AYAFLOW_SKIP_EBPF=1 to build without it)",
        )?;
        fs::copy(&object, &embedded)
            .with_context(|| format!("copying {} to {}", object.display(), embedded.display()))?;
    }
    println!("cargo:rustc-env=AYAFLOW_EBPF_OBJECT={}", embedded.display());
    Ok(())
}
