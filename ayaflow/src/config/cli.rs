//! Command-line flags and `AYAFLOW_*` environment variables, exactly as typed.
//!
//! This is the "low" half of ripgrep's `lowargs` -> `hiargs` split: clap only collects strings
//! here, and [`crate::config`] validates them, merges them with the YAML file and the defaults,
//! and produces the typed [`crate::config::Config`]. The flags are built from the option
//! declarations ([`crate::config::options::OPTIONS`]); nothing here names an option.
//!
//! Values stay strings because clap reports a bad environment variable as if it were the flag
//! (`invalid value for '--port <PORT>'`); validating in `config` lets the error name the source
//! the value really came from. For the same reason [`Cli`] records, per option, whether clap
//! took it from the command line or from the environment.

use std::{collections::BTreeMap, path::PathBuf};

use clap::{
    Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, Parser,
    builder::{OsStringValueParser, TypedValueParser as _},
    parser::ValueSource,
};

use super::options::{OPTIONS, Shape};

const ABOUT: &str =
    "eBPF network traffic analyzer: per-connection packets and bytes, live and historical.";
const LONG_ABOUT: &str = "eBPF network traffic analyzer: per-connection packets and bytes, live \
                          and historical.\n\nEvery option can also be set with its AYAFLOW_* \
                          environment variable or in the YAML file given by --config. \
                          Precedence: command line, then environment, then YAML file, then \
                          default. Lists in the environment are comma-separated.";

/// Where clap found an option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Typed on the command line. This is the default for a [`Cli`] built by hand.
    Flag,
    /// Read from the option's `AYAFLOW_*` environment variable.
    Env,
}

/// The parsed command line: the options given (by flag or environment variable) and where each
/// came from.
///
/// Parse it with [`clap::Parser`] (`Cli::parse()`, `Cli::try_parse_from(...)`), then hand it to
/// [`crate::config::Config::from_cli`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cli {
    /// The values of each option given, by option name: one for a value or a switch, the items
    /// (already split at commas) for a list.
    pub values: BTreeMap<String, Vec<String>>,
    /// `--config` / `AYAFLOW_CONFIG`, any bytes (`''` reads no file).
    pub config: Option<PathBuf>,
    /// Origin of each option given, by name. One missing here counts as [`Origin::Flag`].
    pub origins: BTreeMap<String, Origin>,
    /// A subcommand instead of running the agent.
    pub command: Option<Subcommand>,
}

/// What `ayaflow <subcommand>` does instead of running the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subcommand {
    /// `ayaflow detach [--pin-path DIR]`: remove what `--pin` left attached and pinned. Without
    /// its own `--pin-path`, the configuration's (flag, environment, YAML or default).
    Detach { pin_path: Option<PathBuf> },
}

impl Cli {
    /// Where the option `name` came from.
    pub fn origin(&self, name: &str) -> Origin {
        self.origins.get(name).copied().unwrap_or(Origin::Flag)
    }

    /// The `AYAFLOW_*` environment variables the options read, in declaration order.
    pub fn env_vars() -> Vec<String> {
        OPTIONS.iter().map(|o| o.env.to_owned()).collect()
    }

    fn record(&mut self, matches: &ArgMatches) {
        if let Some(("detach", m)) = matches.subcommand() {
            self.command = Some(Subcommand::Detach {
                pin_path: m.get_one::<PathBuf>("pin_path").cloned(),
            });
        }
        for o in OPTIONS {
            let origin = match matches.value_source(o.name) {
                Some(ValueSource::EnvVariable) => Origin::Env,
                Some(ValueSource::CommandLine) => Origin::Flag,
                // No option has a clap default (defaults live in `config`).
                _ => continue,
            };
            self.origins.insert(o.name.to_owned(), origin);
            if o.shape == Shape::ConfigFile {
                self.config = matches.get_one::<PathBuf>(o.name).cloned();
            } else if let Some(values) = matches.get_many::<String>(o.name) {
                self.values
                    .insert(o.name.to_owned(), values.cloned().collect());
            }
        }
    }
}

impl CommandFactory for Cli {
    fn command() -> Command {
        let mut cmd = Command::new("ayaflow")
            .version(env!("CARGO_PKG_VERSION"))
            .about(ABOUT)
            .long_about(LONG_ABOUT);
        for o in OPTIONS {
            let mut arg = Arg::new(o.name)
                .long(&o.flag[2..])
                .env(o.env)
                .value_name(o.value_name)
                .help(format!("{} [default: {}]", o.help, o.default));
            if let Some(c) = o.short {
                arg = arg.short(c);
            }
            arg = match o.shape {
                Shape::Value => arg.num_args(1).allow_negative_numbers(true),
                Shape::List => arg
                    .num_args(1)
                    .value_delimiter(',')
                    .action(ArgAction::Append),
                // `require_equals` so that `--quiet` never swallows the next word as its value.
                Shape::Switch => arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true"),
                // clap's `PathBuf` parser rejects '', which means "no file".
                Shape::ConfigFile => arg
                    .num_args(1)
                    .value_parser(OsStringValueParser::new().map(PathBuf::from)),
            };
            cmd = cmd.arg(arg);
        }
        cmd.subcommand(
            Command::new("detach")
                .about(
                    "Remove everything --pin left attached and pinned (links, maps, the pin \
                     directory), then exit: what to run when uninstalling",
                )
                .arg(
                    Arg::new("pin_path")
                        .long("pin-path")
                        .value_name("DIR")
                        .help("the pin directory [default: the configuration's pin_path]")
                        .value_parser(OsStringValueParser::new().map(PathBuf::from)),
                ),
        )
    }

    fn command_for_update() -> Command {
        Self::command()
    }
}

impl FromArgMatches for Cli {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut cli = Cli::default();
        cli.record(matches);
        Ok(cli)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.record(matches);
        Ok(())
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
        assert_eq!(vars.len(), OPTIONS.len(), "{vars:?}");
        assert!(vars.iter().all(|v| v.starts_with("AYAFLOW_")), "{vars:?}");
    }
}
