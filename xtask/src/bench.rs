//! `cargo xtask bench`: installs the tools the benchmarks compare with, builds the release agent
//! and the bench binary (`bench/`), and runs it as root. The bench writes BENCHMARKS.md (the
//! full run) or target/bench/quick.md (`--quick`, the CI smoke run).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cargo, setup, status};

/// The tools of the comparison (tcpdump, softflowd, pmacct), the API load generator (wrk),
/// perf (samples each observer's share of the kernel's packet path), iperf3 (the real-TCP
/// section's bulk transfers) and Chromium (opens the web UI for section 5; also a test
/// package).
const BENCH_PACKAGES: &[&str] = &[
    "tcpdump",
    "softflowd",
    "pmacct",
    "wrk",
    "linux-perf",
    "iperf3",
    "chromium",
];

pub fn run(quick: bool, args: &[String]) -> Result<()> {
    let toolchain = setup::all()?;
    if !setup::is_root() {
        bail!(
            "the bench loads BPF programs, creates network namespaces and runs capture tools: run it as root \
             (sudo -E cargo xtask bench)"
        );
    }
    if std::path::Path::new("/usr/bin/apt-get").exists() {
        setup::apt_install(BENCH_PACKAGES)?;
    }
    eprintln!("xtask: building the agent and the bench (release) with {toolchain}");
    status(
        cargo()
            .args([
                "build",
                "--release",
                "--package",
                "ayaflow",
                "--package",
                "ayaflow-bench",
            ])
            .env("AYAFLOW_BPF_TOOLCHAIN", toolchain.env_name()),
    )?;
    let root = ayaflow_build::workspace_root();
    let mut cmd = Command::new(root.join("target/release/ayaflow-bench"));
    cmd.current_dir(&root)
        .arg("--agent")
        .arg(root.join("target/release/ayaflow"));
    let mut shown = String::from("cargo xtask bench");
    if quick {
        cmd.args(["--quick", "--out", "target/bench/quick.md"]);
        shown.push_str(" --quick");
    } else if !args.is_empty() && !args.iter().any(|a| a == "--out") {
        // A partial run must not overwrite the full report.
        cmd.args(["--out", "target/bench/partial.md"]);
    }
    cmd.args(["--command", &shown]).args(args);
    status(&mut cmd)
}
