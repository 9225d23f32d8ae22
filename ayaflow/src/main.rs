//! The `ayaflow` binary: parse the configuration, set up logging, run the agent, and map the
//! error chain to an exit code.

use std::process::ExitCode;

use ayaflow::{
    agent,
    cli::{Cli, Subcommand},
    config::Config,
    ebpf::pin,
};
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

/// Huge pages for the big hash maps (see `ayaflow::hugepages`).
#[global_allocator]
static ALLOCATOR: ayaflow::hugepages::HugePageHint = ayaflow::hugepages::HugePageHint;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.clone();
    let (config, deprecations) = match Config::load(cli) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("ayaflow: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // RUST_LOG wins when set; otherwise info, or only errors with --quiet.
    let default = if config.quiet { "error" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    for warning in &deprecations {
        tracing::warn!("{warning}");
    }

    if let Some(Subcommand::Detach { pin_path }) = command {
        let root = pin_path.unwrap_or(config.pin_path);
        return match pin::detach(&root) {
            Ok(d) if d == pin::Detached::default() => {
                println!("nothing pinned at {}", root.display());
                ExitCode::SUCCESS
            }
            Ok(d) => {
                println!(
                    "detached: removed {} links and {} maps pinned at {}",
                    d.links,
                    d.maps,
                    root.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ayaflow: error: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ayaflow: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(agent::run(config));
    // A history query still running on the blocking pool (a slow one, abandoned with the API)
    // must not hold the exit: dropping the runtime would wait for it without limit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ayaflow: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
