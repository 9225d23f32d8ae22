//! Command-line flags and `AYAFLOW_*` environment variables, exactly as typed.
//!
//! This is the "low" half of ripgrep's `lowargs` -> `hiargs` split: clap only collects strings
//! here, and [`crate::config`] validates them, merges them with the YAML file and the defaults,
//! and produces the typed [`crate::config::Config`].
//!
//! Every option is an `Option` so that "not given" can fall back to the YAML file and then to
//! the default. Values stay strings because clap reports a bad environment variable as if it were
//! the flag (`invalid value for '--port <PORT>'`); validating in `config` lets the error name the
//! source the value really came from. For the same reason [`Cli`] wraps the derived [`CliArgs`]
//! and records, per option, whether clap took it from the command line or from the environment.

use std::{collections::BTreeMap, path::PathBuf};

use clap::{
    ArgMatches, CommandFactory, FromArgMatches, Parser,
    builder::{OsStringValueParser, TypedValueParser as _},
    parser::ValueSource,
};

/// The options as clap collected them: strings, `None` when neither the flag nor its environment
/// variable was given.
#[derive(Parser, Debug, Clone, Default, PartialEq, Eq)]
#[command(
    name = "ayaflow",
    version,
    about = "eBPF network traffic analyzer: per-connection packets and bytes, live and historical.",
    long_about = "eBPF network traffic analyzer: per-connection packets and bytes, live and \
                  historical.\n\nEvery option can also be set with its AYAFLOW_* environment \
                  variable or in the YAML file given by --config. Precedence: command line, then \
                  environment, then YAML file, then default. Lists in the environment are \
                  comma-separated."
)]
pub struct CliArgs {
    /// Interface to attach to; `auto` picks the interface of the default route [default: auto]
    #[arg(short, long, env = "AYAFLOW_INTERFACE", value_name = "IFACE")]
    pub interface: Option<String>,

    /// Port of the HTTP API, 1-65535 [default: 3000]
    #[arg(
        short,
        long,
        env = "AYAFLOW_PORT",
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    pub port: Option<String>,

    /// IP address the HTTP API listens on; `::` is every address, IPv4 and IPv6 [default: ::]
    #[arg(long, env = "AYAFLOW_BIND_ADDRESS", value_name = "ADDR")]
    pub bind_address: Option<String>,

    /// SQLite database file for the history [default: traffic.db]
    #[arg(long, env = "AYAFLOW_DB_PATH", value_name = "FILE")]
    pub db_path: Option<String>,

    /// Seconds without a packet before a connection is closed, at least 1 [default: 60]
    #[arg(
        long,
        env = "AYAFLOW_CONNECTION_TIMEOUT",
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub connection_timeout: Option<String>,

    /// Delete history older than this many seconds; 0 keeps everything [default: 0]
    #[arg(
        long,
        env = "AYAFLOW_DATA_RETENTION",
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub data_retention: Option<String>,

    /// Store one row per connection per N-second window instead of one per packet; 0 stores
    /// raw rows [default: 0]
    #[arg(
        long,
        env = "AYAFLOW_AGGREGATION_WINDOW",
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub aggregation_window: Option<String>,

    /// CIDRs or addresses allowed to reach the API, comma-separated or repeated; '' (empty)
    /// allows everyone [default: everyone]
    #[arg(
        long,
        env = "AYAFLOW_ALLOWED_IPS",
        value_name = "CIDR",
        value_delimiter = ',',
        num_args = 1
    )]
    pub allowed_ips: Option<Vec<String>>,

    /// Log only errors; `--quiet=false` undoes `quiet: true` from the YAML file [default: false]
    // `require_equals` so that `--quiet` never swallows the next word as its value.
    #[arg(
        short,
        long,
        env = "AYAFLOW_QUIET",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub quiet: Option<String>,

    /// YAML configuration file (keys as in the documentation, e.g. `port: 3000`); '' reads none
    // clap's default `PathBuf` parser rejects '', which we use to mean "no file".
    #[arg(
        short,
        long,
        env = "AYAFLOW_CONFIG",
        value_name = "FILE",
        value_parser = OsStringValueParser::new().map(PathBuf::from)
    )]
    pub config: Option<PathBuf>,

    /// Hooks to attach: ingress, egress or both [default: ingress]
    #[arg(long, env = "AYAFLOW_DIRECTION", value_name = "DIRECTION")]
    pub direction: Option<String>,

    /// raw (one kernel event per packet) or flows (aggregate in the kernel)
    /// [default: raw when the aggregation window is 0, else flows]
    #[arg(long, env = "AYAFLOW_CAPTURE_MODE", value_name = "MODE")]
    pub capture_mode: Option<String>,

    /// Most connections the live table tracks at once [default: 65536]
    #[arg(
        long,
        env = "AYAFLOW_MAX_CONNECTIONS",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub max_connections: Option<String>,

    /// Slots of the kernel flow table (flows mode), rounded up to a power of two; keep it
    /// about twice the connections (one per direction) seen at once [default: 65536]
    #[arg(
        long,
        env = "AYAFLOW_FLOW_MAP_SIZE",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub flow_map_size: Option<String>,

    /// Bytes of the kernel ring buffer: a power of two, at least the page size [default: 8388608]
    #[arg(
        long,
        env = "AYAFLOW_RING_BUFFER_SIZE",
        value_name = "BYTES",
        allow_negative_numbers = true
    )]
    pub ring_buffer_size: Option<String>,
}

/// Where clap found an option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Typed on the command line. This is the default for a [`Cli`] built by hand.
    Flag,
    /// Read from the option's `AYAFLOW_*` environment variable.
    Env,
}

/// The parsed command line: the options plus where each came from.
///
/// Parse it with [`clap::Parser`] (`Cli::parse()`, `Cli::try_parse_from(...)`), then hand it to
/// [`crate::config::Config::from_cli`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cli {
    /// The options as typed.
    pub args: CliArgs,
    /// Origin of each option present in `args`, keyed by clap id (the field name). An option
    /// missing here but present in `args` counts as [`Origin::Flag`].
    pub origins: BTreeMap<String, Origin>,
}

impl Cli {
    /// Where the option with clap id `id` (its `CliArgs` field name) came from.
    pub fn origin(&self, id: &str) -> Origin {
        self.origins.get(id).copied().unwrap_or(Origin::Flag)
    }

    /// The `AYAFLOW_*` environment variables the options read, in declaration order.
    pub fn env_vars() -> Vec<String> {
        CliArgs::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }

    fn record_origins(&mut self, matches: &ArgMatches) {
        for id in matches.ids() {
            let origin = match matches.value_source(id.as_str()) {
                Some(ValueSource::EnvVariable) => Origin::Env,
                Some(ValueSource::CommandLine) => Origin::Flag,
                // No option has a clap default (defaults live in `config`), so nothing else
                // can fill an id; record nothing rather than guess.
                _ => continue,
            };
            self.origins.insert(id.as_str().to_owned(), origin);
        }
    }
}

// `Cli` implements clap's traits by hand, delegating to the derived `CliArgs`, only to see the
// `ArgMatches` (and so each value's source) before the derive consumes them.
impl CommandFactory for Cli {
    fn command() -> clap::Command {
        CliArgs::command()
    }

    fn command_for_update() -> clap::Command {
        CliArgs::command_for_update()
    }
}

impl FromArgMatches for Cli {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Self::from_arg_matches_mut(&mut matches.clone())
    }

    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        let mut cli = Cli::default();
        cli.record_origins(matches);
        cli.args = CliArgs::from_arg_matches_mut(matches)?;
        Ok(cli)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.update_from_arg_matches_mut(&mut matches.clone())
    }

    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        self.record_origins(matches);
        self.args.update_from_arg_matches_mut(matches)
    }
}

impl Parser for Cli {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_valid() {
        // clap checks conflicting names, bad `num_args` and the like only in debug_assert.
        Cli::command().debug_assert();
    }

    #[test]
    fn every_option_has_an_env_var() {
        let vars = Cli::env_vars();
        assert_eq!(vars.len(), 15, "{vars:?}");
        assert!(vars.iter().all(|v| v.starts_with("AYAFLOW_")), "{vars:?}");
    }
}
