//! Why a configuration was rejected: each message names the option as spelled in its source,
//! the value, where it came from and what to write instead.

use std::{io, path::PathBuf};

use thiserror::Error;

/// Why the configuration was rejected. Each message says which option, from where, with which
/// value, and what to write instead.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("{option} = {value} (from {origin}): expected {expected}")]
    Invalid {
        /// The option as spelled in its source: `--port`, `AYAFLOW_PORT` or `port`.
        option: String,
        /// The offending value, quoted when it is not a plain word.
        value: String,
        /// `the command line`, `the environment`, or the YAML file's path.
        origin: String,
        /// What would be accepted.
        expected: String,
    },
    /// A value valid on its own that contradicts another option's.
    #[error("{option} = {value} (from {origin}): {problem}")]
    Conflict {
        /// The option as spelled in its source.
        option: String,
        /// The offending value, quoted when it is not a plain word.
        value: String,
        /// `the command line`, `the environment`, or the YAML file's path.
        origin: String,
        /// What contradicts what, and what to change.
        problem: String,
    },
    /// The YAML file named by `--config` / `AYAFLOW_CONFIG` does not exist.
    #[error(
        "config file {} (from {given_by}) does not exist; check the path, or drop {given_by} \
         to run with the defaults",
        path.display()
    )]
    FileNotFound {
        /// The path as given.
        path: PathBuf,
        /// `--config` or `AYAFLOW_CONFIG`.
        given_by: &'static str,
    },
    /// The YAML file exists but cannot be read.
    #[error(
        "cannot read config file {} (from {given_by}): {error}; check that it is a regular \
         file readable by this user",
        path.display()
    )]
    FileUnreadable {
        /// The path as given.
        path: PathBuf,
        /// `--config` or `AYAFLOW_CONFIG`.
        given_by: &'static str,
        /// What the OS said.
        error: io::Error,
    },
    /// The YAML does not parse, has an unknown or duplicate key, or is not a mapping.
    #[error(
        "{origin}: {error}; write one `option: value` per line with the options of \
         `ayaflow --help` (YAML keys use underscores, e.g. `connection_timeout: 60`)"
    )]
    Yaml {
        /// The file's path, or `YAML text`.
        origin: String,
        /// The parser's message, with the line and column when known.
        error: String,
    },
}
