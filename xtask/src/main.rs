//! `cargo xtask`: set up, build, run, test and benchmark ayaFlow. Every subcommand does the
//! set-up it needs first (idempotently), so the README's two commands work on a fresh machine.

mod bench;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test ayaFlow")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (Debian packages, bpf-linker, the tests' Python
    /// venv), then stop.
    Setup,
    /// Build the kernel program and the agent that embeds it.
    Build {
        /// Build with the release profile (the agent then embeds a release object).
        #[arg(long)]
        release: bool,
    },
    /// Build (release) and run the agent as root; arguments after `--` go to the agent.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, then the kernel tests (need root and BTF; they fail, never
    /// skip, without them).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check and clippy on the userspace crates and the kernel program.
    Lint,
    /// Take the README's screenshots of the web UI again (docs/ui-*.png): the real agent in
    /// a test namespace with known traffic, headless Chromium at a laptop's and a phone's
    /// width. Needs root; about two minutes.
    Screenshots,
    /// Run the benchmarks (kernel cost, capture at full rate next to tcpdump/softflowd/pmacctd,
    /// storage and API) and write BENCHMARKS.md. Needs root; installs the tools it compares with.
    Bench {
        /// Smoke mode for CI: every section briefly, checking only that it works; writes
        /// target/bench/quick.md instead of BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
        /// Arguments for the bench binary (`cargo xtask bench -- --help`), e.g.
        /// `--sections capture --traffic v4-1k --observers pmacctd`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup => setup::all().map(|_| ()),
        Cmd::Build { release } => build(release),
        Cmd::Run { args } => {
            build(true)?;
            let bin = ayaflow_build::workspace_root().join("target/release/ayaflow");
            let mut cmd = if setup::is_root() {
                Command::new(&bin)
            } else {
                eprintln!(
                    "xtask: not root: running the agent through sudo (it loads BPF programs)"
                );
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            cmd.args(&args);
            status(&mut cmd)
        }
        Cmd::Test { args } => test(&args),
        Cmd::Lint => lint(),
        Cmd::Screenshots => test_binary(
            &["--test", "ui"],
            &["screenshots::screenshots", "--ignored", "--exact"],
        ),
        Cmd::Bench { quick, args } => bench::run(quick, &args),
    }
}

/// Runs `cmd`, failing with its command line if it fails.
pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(ayaflow_build::workspace_root());
    c
}

fn build(release: bool) -> Result<()> {
    let toolchain = setup::build()?;
    eprintln!("xtask: building the eBPF program with {toolchain}");
    let mut cmd = cargo();
    cmd.args(["build", "--package", "ayaflow"])
        .env("AYAFLOW_BPF_TOOLCHAIN", toolchain.env_name());
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    let toolchain = setup::all()?;
    eprintln!("xtask: building the eBPF program with {toolchain}");
    if !setup::is_root() {
        bail!(
            "the kernel tests load BPF programs and attach them to test interfaces: run `cargo xtask test` as root \
             (sudo -E cargo xtask test); they are never skipped"
        );
    }
    let env = ("AYAFLOW_BPF_TOOLCHAIN", toolchain.env_name());
    // Build the agent binary first: the end-to-end tests run it as a separate process.
    status(
        cargo()
            .args(["build", "--package", "ayaflow"])
            .env(env.0, env.1),
    )?;
    let mut unit = cargo();
    unit.args(["test", "--workspace", "--exclude", "integration-test", "--"])
        .args(args)
        .env(env.0, env.1);
    status(&mut unit)?;
    let mut kernel = cargo();
    kernel
        .args(["test", "--package", "integration-test", "--"])
        .args(args)
        .env(env.0, env.1);
    status(&mut kernel)
}

/// Builds the agent, then runs one test of integration-test (`select`: cargo's target options;
/// `args`: the test binary's), as `cargo xtask test` runs them.
fn test_binary(select: &[&str], args: &[&str]) -> Result<()> {
    let toolchain = setup::all()?;
    if !setup::is_root() {
        bail!("this loads BPF programs and creates network namespaces: run it as root");
    }
    let env = ("AYAFLOW_BPF_TOOLCHAIN", toolchain.env_name());
    status(
        cargo()
            .args(["build", "--package", "ayaflow"])
            .env(env.0, env.1),
    )?;
    status(
        cargo()
            .args(["test", "--package", "integration-test"])
            .args(select)
            .arg("--")
            .args(args)
            .env(env.0, env.1),
    )
}

fn lint() -> Result<()> {
    let toolchain = setup::build()?;
    status(cargo().args(["fmt", "--all", "--check"]))?;
    status(
        cargo()
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .env("AYAFLOW_BPF_TOOLCHAIN", toolchain.env_name()),
    )?;
    // The kernel crate: format only. clippy-driver comes from rustup and has no `core` for
    // bpfel-unknown-none (Debian ships no clippy for rustc-web), so the verifier and the kernel
    // tests are its checks.
    let mut ebpf = cargo();
    ebpf.args([
        "fmt",
        "--manifest-path",
        "ayaflow-ebpf/Cargo.toml",
        "--check",
    ]);
    status(&mut ebpf)
}
