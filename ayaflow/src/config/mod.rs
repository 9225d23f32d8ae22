//! The validated configuration: the "high" half of ripgrep's `lowargs` -> `hiargs` split.
//!
//! [`cli`] collects flags and `AYAFLOW_*` environment variables as strings; this module
//! reads the YAML file named by `--config`, merges the three sources with the defaults and checks
//! every value, producing the typed [`Config`] the rest of the agent uses.
//!
//! Precedence, per option: command line, then environment (clap already resolves these two),
//! then YAML file, then default. Every option can be set back to its default from a higher
//! source: `--quiet=false`, `--data-retention 0`, `--aggregation-window 0`, `--interface auto`,
//! `--exclude-interface ''`, `--allowed-ips ''`.
//!
//! Nothing is silently ignored: an unknown YAML key, a `null` value, a value of the wrong type
//! or out of range is a [`ConfigError`] naming the option as it was spelled in its source, the
//! bad value, where it came from and what would be accepted.
//!
//! # Layout
//! - `options`: every option declared once ([`options::OPTIONS`]); the CLI (`cli`), the
//!   environment, the YAML keys, the error messages and the README table come from it;
//! - `value`: what a declaration holds, one option's winning value, and the parsers the
//!   declarations use; `cli`: the flags and variables, built from the declarations;
//! - `interfaces`: which interfaces `--interface` and `--exclude-interface` select;
//! - `yaml`: the YAML file, its keys, and the deprecated spellings still read;
//! - `readme`: the README's configuration table, rendered from the declarations;
//! - `error`: [`ConfigError`].
//!
//! # How to add an option
//! 1. Add its field to [`Config`] and its typed default to `Config::default`.
//! 2. Declare it in [`options::OPTIONS`] (flag, variable, help line, documented default, what
//!    is accepted, and `apply`, which parses the value with the helpers of `value` and sets the
//!    field). Where the table puts it is where `--help` and the README list it.
//! 3. Run `cargo test -p ayaflow config::`: the README check prints the new table to paste.
//! 4. Use the field where the agent needs it.
//!
//! A YAML key renamed keeps working: list the old spelling in `old_yaml_keys`; it is read with
//! a deprecation warning, and setting both spellings is an error.

use std::{
    fmt, fs, io,
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;

use crate::flow::Direction;

pub mod cli;
mod error;
mod interfaces;
pub mod options;
mod readme;
mod value;
mod yaml;

pub use error::ConfigError;
pub use interfaces::{InterfaceMatch, InterfaceSelection};
pub use readme::configuration_table;

use self::{
    cli::{Cli, Origin},
    options::{OPTIONS, OptionSpec, Shape},
    value::{Given, Raw, Source},
    yaml::YamlFile,
};

/// Default HTTP API port.
pub const DEFAULT_PORT: u16 = 3000;
/// Default SQLite file, relative to the working directory.
pub const DEFAULT_DB_PATH: &str = "traffic.db";

/// Default of `--pin-path`: under the node's BPF filesystem, where the DaemonSet mounts it.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/ayaflow";
/// Default inactivity timeout of a live connection.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound of the live connection table.
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
/// Largest accepted `max_connections`. The table grows up to it as connections come
/// ([`crate::connections::ConnectionTable::new`]), so a typo such as an extra zero must not
/// let a flood grow it into an allocation failure: 2^24 entries already take 2 to 4 GiB.
pub const MAX_MAX_CONNECTIONS: usize = 1 << 24;
/// Default number of slots of the kernel flow table: 6.5 MiB with its index, claims and free
/// stack.
pub const DEFAULT_FLOW_MAP_SIZE: u32 = 65_536;
/// Largest accepted `flow_map_size`: 2^24 slots of 104 B already take 1.6 GiB of kernel memory:
/// per slot 64 B of slot, 16 of claim, and two index positions and a free-stack entry of 8 B
/// each (a BPF array rounds every value up to 8 bytes, the 4-byte ones included).
pub const MAX_FLOW_MAP_SIZE: u32 = 1 << 24;
/// Default size of the kernel ring buffer: 8 MiB holds tens of thousands of events, a few
/// hundred milliseconds at high packet rates, which covers a scheduling hiccup of the reader.
pub const DEFAULT_RING_BUFFER_SIZE: u32 = 8 << 20;
/// Default largest IPFIX message: fits a 1,500-byte MTU with IP, UDP and a tunnel's headers.
pub const DEFAULT_IPFIX_MTU: usize = 1400;

/// Longest accepted duration, in seconds (100 years). Durations are turned into nanoseconds
/// next to Unix timestamps, and this keeps that arithmetic far from `u64` overflow.
pub const MAX_SECONDS: u64 = 100 * 365 * 86_400;

/// Which TC hooks to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirectionChoice {
    /// Only the ingress hook. This is the default.
    #[default]
    Ingress,
    /// Only the egress hook.
    Egress,
    /// Both hooks.
    Both,
}

impl DirectionChoice {
    /// The hooks to attach, ingress first.
    pub fn directions(self) -> Vec<Direction> {
        match self {
            DirectionChoice::Ingress => vec![Direction::Ingress],
            DirectionChoice::Egress => vec![Direction::Egress],
            DirectionChoice::Both => Direction::ALL.to_vec(),
        }
    }
}

/// How the kernel reports traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// One ring-buffer event per packet. This is the default when the aggregation window is 0.
    Raw,
    /// Aggregate per flow in a kernel table that userspace sweeps. This is the default when
    /// an aggregation window is set.
    Flows,
}

/// The validated configuration of the agent. Build it with [`Config::from_cli`] (or
/// [`Config::from_yaml_str`] in tests); [`Config::default`] is every option at its default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Interfaces to attach to (`--interface` minus `--exclude-interface`); `auto` stands for
    /// the default route's interface until the agent resolves it at start.
    pub interfaces: InterfaceSelection,
    /// Port of the HTTP API, never 0.
    pub port: u16,
    /// Address the HTTP API listens on; `::` accepts IPv4 and IPv6.
    pub bind_address: IpAddr,
    /// SQLite history file.
    pub db_path: PathBuf,
    /// Inactivity after which a live connection is closed; at least one second.
    pub connection_timeout: Duration,
    /// Age after which history is deleted; `None` keeps everything.
    pub data_retention: Option<Duration>,
    /// The history file's disk budget in bytes (file and WAL), oldest history deleted first;
    /// `None`: unlimited.
    pub max_db_bytes: Option<u64>,
    /// Length of the storage windows; `None` stores one raw row per packet.
    pub aggregation_window: Option<Duration>,
    /// Bound of the open windows' entries; `None`: [`Config::window_entries_bound`]'s default.
    pub aggregation_max_rows: Option<usize>,
    /// Networks allowed to reach the API (bare addresses become /32 or /128); empty allows all.
    pub allowed_ips: Vec<IpNet>,
    /// A file holding the API's bearer token; `None`: no token asked.
    pub api_token_file: Option<PathBuf>,
    /// Log only errors.
    pub quiet: bool,
    /// Hooks to attach.
    pub direction: DirectionChoice,
    /// How the kernel reports traffic.
    pub capture_mode: CaptureMode,
    /// Bound of the live connection table, from 1 to [`MAX_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Slots of the kernel flow table (flows mode), from 1 to [`MAX_FLOW_MAP_SIZE`]; the table
    /// gets the next power of two.
    pub flow_map_size: u32,
    /// Bytes of the kernel ring buffer: a power of two, at least the page size.
    pub ring_buffer_size: u32,
    /// Keep the program attached and its state pinned across restarts.
    pub pin: bool,
    /// The directory of the pins (on a bpffs), absolute.
    pub pin_path: PathBuf,
    /// IPFIX collectors (`host:port`); empty: no export.
    pub ipfix_collectors: Vec<String>,
    /// A long-lived flow is reported after this long, at least once per this interval.
    pub ipfix_active_timeout: Duration,
    /// A flow without packets for this long gets its last record; `None`: the connection
    /// timeout.
    pub ipfix_idle_timeout: Option<Duration>,
    /// Templates are sent again this often (UDP has no session that would keep them).
    pub ipfix_template_refresh: Duration,
    /// The observation domain id; `None`: derived from the host name (stable per node).
    pub ipfix_observation_domain: Option<u32>,
    /// Largest IPFIX message, in bytes.
    pub ipfix_mtu: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            interfaces: InterfaceSelection::default(),
            port: DEFAULT_PORT,
            bind_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            data_retention: None,
            max_db_bytes: None,
            aggregation_window: None,
            aggregation_max_rows: None,
            allowed_ips: Vec::new(),
            api_token_file: None,
            quiet: false,
            direction: DirectionChoice::Ingress,
            capture_mode: CaptureMode::Raw,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            flow_map_size: DEFAULT_FLOW_MAP_SIZE,
            ring_buffer_size: DEFAULT_RING_BUFFER_SIZE,
            pin: false,
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            ipfix_collectors: Vec::new(),
            ipfix_active_timeout: Duration::from_secs(60),
            ipfix_idle_timeout: None,
            ipfix_template_refresh: Duration::from_secs(60),
            ipfix_observation_domain: None,
            ipfix_mtu: DEFAULT_IPFIX_MTU,
        }
    }
}

impl Config {
    /// The bound of the aggregator's entries: `aggregation_max_rows`, or by default
    /// [`crate::aggregate::ENTRIES_PER_CONNECTION`] per live connection the table may hold.
    pub fn window_entries_bound(&self) -> usize {
        self.aggregation_max_rows.unwrap_or_else(|| {
            self.max_connections
                .saturating_mul(crate::aggregate::ENTRIES_PER_CONNECTION)
        })
    }

    /// Validates the command line and environment in `cli`, reading the YAML file it names (if
    /// any) for options given neither way.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        Config::load(cli).map(|(config, _)| config)
    }

    /// Like [`Config::from_cli`], also returning one warning per deprecated YAML key the file
    /// used, for the caller to log once logging is set up.
    pub fn load(cli: Cli) -> Result<(Config, Vec<String>), ConfigError> {
        let file = match &cli.config {
            Some(path) if !path.as_os_str().is_empty() => {
                let given_by = match cli.origin("config") {
                    Origin::Flag => "--config",
                    Origin::Env => "AYAFLOW_CONFIG",
                };
                let text = fs::read_to_string(path).map_err(|error| {
                    if error.kind() == io::ErrorKind::NotFound {
                        ConfigError::FileNotFound {
                            path: path.clone(),
                            given_by,
                        }
                    } else {
                        ConfigError::FileUnreadable {
                            path: path.clone(),
                            given_by,
                            error,
                        }
                    }
                })?;
                let origin = path.display().to_string();
                let yaml = YamlFile::parse(&text, &origin)?;
                Some((yaml, origin))
            }
            // `--config ''` overrides AYAFLOW_CONFIG with "no file".
            _ => None,
        };
        let (yaml, origin) = file.unwrap_or_default();
        let config = resolve(&cli, &yaml, &origin)?;
        Ok((config, yaml.deprecations))
    }

    /// Validates YAML configuration text (what `--config` would read) with no flags and no
    /// environment, e.g. the config file embedded in a Kubernetes ConfigMap.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        const ORIGIN: &str = "YAML text";
        resolve(&Cli::default(), &YamlFile::parse(text, ORIGIN)?, ORIGIN)
    }
}

/// The winning value of option `o`: the command line or the environment (clap settled which),
/// else the YAML file.
fn pick<'a>(
    o: &'static OptionSpec,
    cli: &'a Cli,
    yaml: &'a YamlFile,
    yaml_origin: &'a str,
) -> Option<Given<'a>> {
    if let Some(values) = cli.values.get(o.name) {
        let raw = match (o.shape, values.as_slice()) {
            (Shape::List, items) => Raw::Texts(items),
            (_, [one]) => Raw::Text(one),
            (_, items) => Raw::Texts(items),
        };
        let source = match cli.origin(o.name) {
            Origin::Flag => Source::Flag,
            Origin::Env => Source::Env,
        };
        return Some(Given {
            opt: o,
            raw,
            source,
        });
    }
    yaml.get(o.name).map(|(key, value)| Given {
        opt: o,
        raw: Raw::Yaml(value),
        source: Source::Yaml {
            origin: yaml_origin,
            key,
        },
    })
}

/// Merges `cli` (flags and environment) over `yaml` over the defaults, option by option in
/// declaration order, validating each value.
fn resolve(cli: &Cli, yaml: &YamlFile, yaml_origin: &str) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    for o in OPTIONS {
        (o.apply)(pick(o, cli, yaml, yaml_origin).as_ref(), &mut config)?;
    }
    Ok(config)
}

impl fmt::Display for DirectionChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DirectionChoice::Ingress => "ingress",
            DirectionChoice::Egress => "egress",
            DirectionChoice::Both => "both",
        })
    }
}

impl fmt::Display for CaptureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaptureMode::Raw => "raw",
            CaptureMode::Flows => "flows",
        })
    }
}

#[cfg(test)]
mod tests;
