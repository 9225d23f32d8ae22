use std::{
    env,
    io::Write as _,
    sync::{Mutex, MutexGuard, PoisonError},
};

use clap::{CommandFactory as _, Parser as _};
use proptest::prelude::*;
use tempfile::NamedTempFile;

use super::*;
use crate::config::{
    readme::{TABLE_HEADER, table_in},
    value::page_size,
};

/// Serialises every test that parses a command line: clap reads the `AYAFLOW_*` variables
/// while parsing, and the environment is process-global.
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Holds [`ENV_LOCK`] with exactly the given `AYAFLOW_*` variables set; clears them on drop,
/// even when the test panics.
struct Env {
    _lock: MutexGuard<'static, ()>,
}

impl Env {
    fn with(vars: &[(&str, &str)]) -> Env {
        // A test that panicked while holding the lock left nothing half-done that we rely
        // on: every user clears the variables first.
        let lock = ENV_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        clear_env();
        for (name, value) in vars {
            // SAFETY: as in `clear_env`.
            unsafe { env::set_var(name, value) };
        }
        Env { _lock: lock }
    }

    fn cli(&self, args: &[&str]) -> Cli {
        let argv = std::iter::once("ayaflow").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("parsing {args:?}: {e}"))
    }

    fn config(&self, args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_cli(self.cli(args))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        clear_env();
    }
}

fn clear_env() {
    for name in Cli::env_vars() {
        // SAFETY: edition 2024 makes this unsafe because another thread could read the
        // environment through libc meanwhile. Only tests holding ENV_LOCK touch these
        // variables, and no code under test in this binary reads them any other way.
        unsafe { env::remove_var(name) };
    }
}

fn yaml_file(text: &str) -> NamedTempFile {
    let mut file = NamedTempFile::new().expect("creating a temporary file");
    file.write_all(text.as_bytes())
        .expect("writing the temporary file");
    file
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn path_of(file: &NamedTempFile) -> String {
    file.path().display().to_string()
}

/// The allowed networks of `c`, comma-separated.
fn show_nets(c: &Config) -> String {
    c.allowed_ips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

mod declarations;
mod errors;
mod props;
mod sources;
mod values;
