//! The validated configuration: the "high" half of ripgrep's `lowargs` -> `hiargs` split.
//!
//! [`crate::cli`] collects flags and `AYAFLOW_*` environment variables as strings; this module
//! reads the YAML file named by `--config`, merges the three sources with the defaults and checks
//! every value, producing the typed [`Config`] the rest of the agent uses.
//!
//! Precedence, per option: command line, then environment (clap already resolves these two),
//! then YAML file, then default. Every option can be set back to its default from a higher
//! source: `--quiet=false`, `--data-retention 0`, `--aggregation-window 0`, `--interface auto`,
//! `--allowed-ips ''`.
//!
//! Nothing is silently ignored: an unknown YAML key, a `null` value, a value of the wrong type
//! or out of range is a [`ConfigError`] naming the option as it was spelled in its source, the
//! bad value, where it came from and what would be accepted.

use std::{
    fmt, fs, io,
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use serde_yaml_ng::Value;
use thiserror::Error;

use crate::{
    cli::{Cli, Origin},
    flow::Direction,
};

/// Default HTTP API port.
pub const DEFAULT_PORT: u16 = 3000;
/// Default SQLite file, relative to the working directory.
pub const DEFAULT_DB_PATH: &str = "traffic.db";
/// Default inactivity timeout of a live connection.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound of the live connection table.
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
/// Largest accepted `max_connections`. The table is allocated up front
/// ([`crate::connections::ConnectionTable::new`]), so a typo such as an extra zero must not
/// become an allocation failure: 2^24 entries already take about 3.3 GiB.
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
    /// Interface to attach to; `None` means the interface of the default route, resolved when
    /// attaching.
    pub interface: Option<String>,
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
    /// Length of the storage windows; `None` stores one raw row per packet.
    pub aggregation_window: Option<Duration>,
    /// Networks allowed to reach the API (bare addresses become /32 or /128); empty allows all.
    pub allowed_ips: Vec<IpNet>,
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
}

impl Default for Config {
    fn default() -> Config {
        Config {
            interface: None,
            port: DEFAULT_PORT,
            bind_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            data_retention: None,
            aggregation_window: None,
            allowed_ips: Vec::new(),
            quiet: false,
            direction: DirectionChoice::Ingress,
            capture_mode: CaptureMode::Raw,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            flow_map_size: DEFAULT_FLOW_MAP_SIZE,
            ring_buffer_size: DEFAULT_RING_BUFFER_SIZE,
        }
    }
}

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

impl Config {
    /// Validates the command line and environment in `cli`, reading the YAML file it names (if
    /// any) for options given neither way.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.args.config {
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
        match &file {
            Some((yaml, origin)) => resolve(&cli, yaml, origin),
            None => resolve(&cli, &YamlFile::default(), ""),
        }
    }

    /// Validates YAML configuration text (what `--config` would read) with no flags and no
    /// environment, e.g. the config file embedded in a Kubernetes ConfigMap.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        const ORIGIN: &str = "YAML text";
        resolve(&Cli::default(), &YamlFile::parse(text, ORIGIN)?, ORIGIN)
    }
}

/// The YAML file as written. Each field holds the raw value so that `null` and wrong types get
/// our messages (option, value, expectation) rather than serde's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlFile {
    #[serde(default, deserialize_with = "present")]
    interface: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    port: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    bind_address: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    db_path: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    connection_timeout: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    data_retention_seconds: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    aggregation_window_seconds: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    allowed_ips: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    quiet: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    direction: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    capture_mode: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    max_connections: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    flow_map_size: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    ring_buffer_size: Option<Value>,
}

/// Keeps `key: null` (or a bare `key:`) as `Some(Value::Null)`: plain `Option<Value>` would turn
/// it into "not given" and silently use the default.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl YamlFile {
    fn parse(text: &str, origin: &str) -> Result<YamlFile, ConfigError> {
        let yaml_error = |error: String| ConfigError::Yaml {
            origin: origin.to_owned(),
            error,
        };
        // Parse once untyped: an empty or comments-only file is "no options", and a file that is
        // a list or a scalar deserves a clearer message than "invalid type ... struct YamlFile".
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(e.to_string()))?;
        match doc {
            Value::Null => Ok(YamlFile::default()),
            Value::Mapping(_) => {
                serde_yaml_ng::from_str(text).map_err(|e| yaml_error(e.to_string()))
            }
            other => Err(yaml_error(format!(
                "expected a mapping of options, found {}",
                show_yaml(&other)
            ))),
        }
    }
}

/// One option's name in each source, and what a valid value looks like.
struct Opt {
    /// The clap id, i.e. the [`crate::cli::CliArgs`] field name.
    id: &'static str,
    flag: &'static str,
    env: &'static str,
    yaml: &'static str,
    expected: &'static str,
}

const INTERFACE: Opt = Opt {
    id: "interface",
    flag: "--interface",
    env: "AYAFLOW_INTERFACE",
    yaml: "interface",
    expected: "an interface name of 1 to 15 characters without '/', ':' or spaces (see `ip \
               link`), or auto for the interface of the default route",
};
const PORT: Opt = Opt {
    id: "port",
    flag: "--port",
    env: "AYAFLOW_PORT",
    yaml: "port",
    expected: "a TCP port from 1 to 65535",
};
const BIND_ADDRESS: Opt = Opt {
    id: "bind_address",
    flag: "--bind-address",
    env: "AYAFLOW_BIND_ADDRESS",
    yaml: "bind_address",
    expected: "an IP address, e.g. :: (every address, IPv4 and IPv6), 0.0.0.0 or 127.0.0.1",
};
const DB_PATH: Opt = Opt {
    id: "db_path",
    flag: "--db-path",
    env: "AYAFLOW_DB_PATH",
    yaml: "db_path",
    expected: "a file path, e.g. /var/lib/ayaflow/traffic.db",
};
const CONNECTION_TIMEOUT: Opt = Opt {
    id: "connection_timeout",
    flag: "--connection-timeout",
    env: "AYAFLOW_CONNECTION_TIMEOUT",
    yaml: "connection_timeout",
    expected: "a whole number of seconds from 1 to 3153600000 (100 years)",
};
const DATA_RETENTION: Opt = Opt {
    id: "data_retention",
    flag: "--data-retention",
    env: "AYAFLOW_DATA_RETENTION",
    yaml: "data_retention_seconds",
    expected: "0 (keep everything) or a whole number of seconds, at most 3153600000 (100 years)",
};
const AGGREGATION_WINDOW: Opt = Opt {
    id: "aggregation_window",
    flag: "--aggregation-window",
    env: "AYAFLOW_AGGREGATION_WINDOW",
    yaml: "aggregation_window_seconds",
    expected: "0 (raw) or a whole number of seconds, at most 3153600000 (100 years)",
};
const ALLOWED_IPS: Opt = Opt {
    id: "allowed_ips",
    flag: "--allowed-ips",
    env: "AYAFLOW_ALLOWED_IPS",
    yaml: "allowed_ips",
    expected: "a CIDR such as 10.0.0.0/8 or fd00::/8, or a bare address such as 192.168.1.5 \
               (in YAML a list, e.g. [10.0.0.0/8, 192.168.1.5]; empty allows everyone)",
};
const QUIET: Opt = Opt {
    id: "quiet",
    flag: "--quiet",
    env: "AYAFLOW_QUIET",
    yaml: "quiet",
    expected: "true or false (also yes/no, on/off, 1/0)",
};
const DIRECTION: Opt = Opt {
    id: "direction",
    flag: "--direction",
    env: "AYAFLOW_DIRECTION",
    yaml: "direction",
    expected: "ingress, egress or both",
};
const CAPTURE_MODE: Opt = Opt {
    id: "capture_mode",
    flag: "--capture-mode",
    env: "AYAFLOW_CAPTURE_MODE",
    yaml: "capture_mode",
    expected: "raw (one event per packet) or flows (aggregate in the kernel)",
};
const MAX_CONNECTIONS: Opt = Opt {
    id: "max_connections",
    flag: "--max-connections",
    env: "AYAFLOW_MAX_CONNECTIONS",
    yaml: "max_connections",
    expected: "a whole number of connections from 1 to 16777216",
};
const FLOW_MAP_SIZE: Opt = Opt {
    id: "flow_map_size",
    flag: "--flow-map-size",
    env: "AYAFLOW_FLOW_MAP_SIZE",
    yaml: "flow_map_size",
    expected: "a whole number of slots from 1 to 16777216",
};
const RING_BUFFER_SIZE: Opt = Opt {
    id: "ring_buffer_size",
    flag: "--ring-buffer-size",
    env: "AYAFLOW_RING_BUFFER_SIZE",
    yaml: "ring_buffer_size",
    // The page-size bound is added at run time: see `page_size`.
    expected: "a power of two of bytes, at most 2147483648, e.g. 8388608 (8 MiB)",
};

/// A value as it arrived.
#[derive(Clone, Copy)]
enum Raw<'a> {
    /// From a flag or an environment variable.
    Text(&'a str),
    /// A list from a flag or an environment variable (clap already split it at commas).
    Texts(&'a [String]),
    /// From the YAML file.
    Yaml(&'a Value),
}

/// Where a value came from, for error messages.
#[derive(Clone, Copy)]
enum Source<'a> {
    Flag,
    Env,
    /// The YAML file's path (or `YAML text`).
    Yaml(&'a str),
}

/// Which YAML types an option accepts. Numbers and booleans also accept a string, parsed like
/// the environment variable, because quoting values is common in Kubernetes manifests.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
}

/// The winning value of one option and where it came from.
struct Given<'a> {
    opt: &'static Opt,
    raw: Raw<'a>,
    source: Source<'a>,
}

impl Given<'_> {
    fn invalid(&self, value: String) -> ConfigError {
        self.invalid_expecting(value, self.opt.expected.to_owned())
    }

    fn invalid_expecting(&self, value: String, expected: String) -> ConfigError {
        let (option, origin) = match self.source {
            Source::Flag => (self.opt.flag, "the command line"),
            Source::Env => (self.opt.env, "the environment"),
            Source::Yaml(origin) => (self.opt.yaml, origin),
        };
        ConfigError::Invalid {
            option: option.to_owned(),
            value,
            origin: origin.to_owned(),
            expected,
        }
    }

    /// The value as shown in error messages.
    fn shown(&self) -> String {
        match self.raw {
            Raw::Text(s) => show_text(s),
            Raw::Texts(items) => show_text(&items.join(",")),
            Raw::Yaml(v) => show_yaml(v),
        }
    }

    /// The value as text if it has a type `kind` accepts.
    fn text(&self, kind: Kind) -> Result<String, ConfigError> {
        let text = match (self.raw, kind) {
            (Raw::Text(s), _) => Some(s.to_owned()),
            (Raw::Texts(items), _) => Some(items.join(",")),
            (Raw::Yaml(Value::String(s)), _) => Some(s.clone()),
            (Raw::Yaml(Value::Number(n)), Kind::Int) => Some(n.to_string()),
            (Raw::Yaml(Value::Bool(b)), Kind::Bool) => Some(b.to_string()),
            (Raw::Yaml(_), _) => None,
        };
        text.ok_or_else(|| self.invalid(self.shown()))
    }

    fn string(&self) -> Result<String, ConfigError> {
        self.text(Kind::Str)
    }

    /// A whole number in `min..=max`.
    fn number(&self, min: u64, max: u64) -> Result<u64, ConfigError> {
        self.text(Kind::Int)?
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.invalid(self.shown()))
    }

    /// Seconds where 0 means "off".
    fn optional_seconds(&self) -> Result<Option<Duration>, ConfigError> {
        let secs = self.number(0, MAX_SECONDS)?;
        Ok((secs > 0).then(|| Duration::from_secs(secs)))
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        match self.text(Kind::Bool)?.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(self.invalid(self.shown())),
        }
    }

    /// One of `choices` (case-insensitive).
    fn choice<T: Copy>(&self, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let text = self.string()?;
        choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text.trim()))
            .map(|&(_, value)| value)
            .ok_or_else(|| self.invalid(self.shown()))
    }

    /// List items: clap's comma-split values, or a YAML sequence of strings. Blank items of a
    /// flag or variable are skipped so that `''` (and a trailing comma) mean "no items".
    fn items(&self) -> Result<Vec<(String, String)>, ConfigError> {
        match self.raw {
            Raw::Text(s) => Ok(split_items(s.split(','))),
            Raw::Texts(items) => Ok(split_items(items.iter().flat_map(|i| i.split(',')))),
            Raw::Yaml(Value::Sequence(seq)) => seq
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok((s.trim().to_owned(), show_text(s))),
                    other => Err(self.invalid(show_yaml(other))),
                })
                .collect(),
            Raw::Yaml(other) => Err(self.invalid(show_yaml(other))),
        }
    }
}

/// Trimmed, non-blank items paired with how to show them in an error.
fn split_items<'s>(items: impl Iterator<Item = &'s str>) -> Vec<(String, String)> {
    items
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(|i| (i.to_owned(), show_text(i)))
        .collect()
}

/// Plain words as they are; anything else (empty, spaces, quotes) in quotes.
fn show_text(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/+[]%@".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("{s:?}")
    }
}

/// A YAML value in flow style on one line: `-5`, `"abc"`, `[1, 2]`, `null`.
fn show_yaml(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(items) => {
            let items: Vec<String> = items.iter().map(show_yaml).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Mapping(m) => {
            let entries: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", show_yaml(k), show_yaml(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        Value::Tagged(t) => format!("{} {}", t.tag, show_yaml(&t.value)),
    }
}

/// The sources above the defaults, for picking each option's winning value.
struct Layers<'a> {
    cli: &'a Cli,
    /// The YAML file's path (or `YAML text`), for error messages.
    yaml_origin: &'a str,
}

impl<'a> Layers<'a> {
    /// Picks the highest-precedence source that has the option. Command line versus
    /// environment was settled by clap; `from_cli` holds whichever won.
    fn pick(
        &self,
        opt: &'static Opt,
        from_cli: Option<Raw<'a>>,
        from_yaml: &'a Option<Value>,
    ) -> Option<Given<'a>> {
        if let Some(raw) = from_cli {
            let source = match self.cli.origin(opt.id) {
                Origin::Flag => Source::Flag,
                Origin::Env => Source::Env,
            };
            return Some(Given { opt, raw, source });
        }
        from_yaml.as_ref().map(|v| Given {
            opt,
            raw: Raw::Yaml(v),
            source: Source::Yaml(self.yaml_origin),
        })
    }
}

/// A flag or environment value, if given.
fn text(s: &Option<String>) -> Option<Raw<'_>> {
    s.as_deref().map(Raw::Text)
}

/// The system page size, the smallest ring buffer the kernel accepts (4096 on x86-64, 16 KiB or
/// 64 KiB on some arm64 kernels).
fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant; it has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|&s| s >= 4096)
        .unwrap_or(4096)
}

/// Merges `cli` (flags and environment) over `yaml` over the defaults and validates each value.
fn resolve(cli: &Cli, yaml: &YamlFile, yaml_origin: &str) -> Result<Config, ConfigError> {
    let args = &cli.args;
    let layers = Layers { cli, yaml_origin };
    let defaults = Config::default();

    let interface = match layers.pick(&INTERFACE, text(&args.interface), &yaml.interface) {
        None => defaults.interface,
        Some(g) => {
            let name = g.string()?;
            if name.eq_ignore_ascii_case("auto") {
                None
            } else if valid_interface_name(&name) {
                Some(name)
            } else {
                return Err(g.invalid(g.shown()));
            }
        }
    };

    let port = match layers.pick(&PORT, text(&args.port), &yaml.port) {
        None => defaults.port,
        // The range check keeps the value within u16, so the conversion cannot fail.
        Some(g) => {
            u16::try_from(g.number(1, u16::MAX.into())?).map_err(|_| g.invalid(g.shown()))?
        }
    };

    let bind_address =
        match layers.pick(&BIND_ADDRESS, text(&args.bind_address), &yaml.bind_address) {
            None => defaults.bind_address,
            Some(g) => g
                .string()?
                .trim()
                .parse()
                .map_err(|_| g.invalid(g.shown()))?,
        };

    let db_path = match layers.pick(&DB_PATH, text(&args.db_path), &yaml.db_path) {
        None => defaults.db_path,
        Some(g) => {
            let path = g.string()?;
            if path.is_empty() {
                return Err(g.invalid(g.shown()));
            }
            PathBuf::from(path)
        }
    };

    let connection_timeout = match layers.pick(
        &CONNECTION_TIMEOUT,
        text(&args.connection_timeout),
        &yaml.connection_timeout,
    ) {
        None => defaults.connection_timeout,
        Some(g) => Duration::from_secs(g.number(1, MAX_SECONDS)?),
    };

    let data_retention = match layers.pick(
        &DATA_RETENTION,
        text(&args.data_retention),
        &yaml.data_retention_seconds,
    ) {
        None => defaults.data_retention,
        Some(g) => g.optional_seconds()?,
    };

    let aggregation_window = match layers.pick(
        &AGGREGATION_WINDOW,
        text(&args.aggregation_window),
        &yaml.aggregation_window_seconds,
    ) {
        None => defaults.aggregation_window,
        Some(g) => g.optional_seconds()?,
    };

    let allowed_ips = match layers.pick(
        &ALLOWED_IPS,
        args.allowed_ips.as_deref().map(Raw::Texts),
        &yaml.allowed_ips,
    ) {
        None => defaults.allowed_ips,
        Some(g) => g
            .items()?
            .into_iter()
            .map(|(item, shown)| parse_net(&item).ok_or_else(|| g.invalid(shown)))
            .collect::<Result<_, _>>()?,
    };

    let quiet = match layers.pick(&QUIET, text(&args.quiet), &yaml.quiet) {
        None => defaults.quiet,
        Some(g) => g.boolean()?,
    };

    let direction = match layers.pick(&DIRECTION, text(&args.direction), &yaml.direction) {
        None => defaults.direction,
        Some(g) => g.choice(&[
            ("ingress", DirectionChoice::Ingress),
            ("egress", DirectionChoice::Egress),
            ("both", DirectionChoice::Both),
        ])?,
    };

    let capture_mode =
        match layers.pick(&CAPTURE_MODE, text(&args.capture_mode), &yaml.capture_mode) {
            // Windows are built from flows anyway, so aggregating in the kernel saves a ring-buffer
            // event per packet; without a window every packet is stored, which needs raw events.
            None if aggregation_window.is_some() => CaptureMode::Flows,
            None => CaptureMode::Raw,
            Some(g) => g.choice(&[("raw", CaptureMode::Raw), ("flows", CaptureMode::Flows)])?,
        };

    let max_connections = match layers.pick(
        &MAX_CONNECTIONS,
        text(&args.max_connections),
        &yaml.max_connections,
    ) {
        None => defaults.max_connections,
        Some(g) => {
            let n = g.number(1, MAX_MAX_CONNECTIONS as u64)?;
            usize::try_from(n).map_err(|_| g.invalid(g.shown()))?
        }
    };

    let flow_map_size = match layers.pick(
        &FLOW_MAP_SIZE,
        text(&args.flow_map_size),
        &yaml.flow_map_size,
    ) {
        None => defaults.flow_map_size,
        Some(g) => u32::try_from(g.number(1, MAX_FLOW_MAP_SIZE.into())?)
            .map_err(|_| g.invalid(g.shown()))?,
    };

    let ring_buffer_size = match layers.pick(
        &RING_BUFFER_SIZE,
        text(&args.ring_buffer_size),
        &yaml.ring_buffer_size,
    ) {
        None => defaults.ring_buffer_size,
        Some(g) => {
            let page = page_size();
            let expected = format!(
                "a power of two of bytes from {page} (the page size) to 2147483648, e.g. \
                     8388608 (8 MiB)"
            );
            let n = g
                .number(0, u64::MAX)
                .map_err(|_| g.invalid_expecting(g.shown(), expected.clone()))?;
            if !n.is_power_of_two() || n < page {
                return Err(g.invalid_expecting(g.shown(), expected));
            }
            u32::try_from(n).map_err(|_| g.invalid_expecting(g.shown(), expected))?
        }
    };

    Ok(Config {
        interface,
        port,
        bind_address,
        db_path,
        connection_timeout,
        data_retention,
        aggregation_window,
        allowed_ips,
        quiet,
        direction,
        capture_mode,
        max_connections,
        flow_map_size,
        ring_buffer_size,
    })
}

/// Returns true if and only if the kernel would accept `name` as an interface name
/// (`dev_valid_name` in net/core/dev.c: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace).
fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// A CIDR, or a bare address as a single-host network (/32 or /128).
fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
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
mod tests {
    use std::{
        env,
        io::Write as _,
        sync::{Mutex, MutexGuard, PoisonError},
    };

    use clap::{CommandFactory as _, Parser as _};
    use proptest::prelude::*;
    use tempfile::NamedTempFile;

    use super::*;
    use crate::cli::CliArgs;

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

    /// One option set from each source, each time to a different value where the type allows,
    /// and how to read it back from a `Config`.
    struct OptionCase {
        name: &'static str,
        flag: &'static [&'static str],
        env: (&'static str, &'static str),
        yaml: &'static str,
        get: fn(&Config) -> String,
        from_flag: &'static str,
        from_env: &'static str,
        from_yaml: &'static str,
        default: &'static str,
    }

    fn show_nets(c: &Config) -> String {
        c.allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    const OPTION_CASES: &[OptionCase] = &[
        OptionCase {
            name: "interface",
            flag: &["--interface", "eth1"],
            env: ("AYAFLOW_INTERFACE", "eth2"),
            yaml: "interface: eth3",
            get: |c| format!("{:?}", c.interface),
            from_flag: r#"Some("eth1")"#,
            from_env: r#"Some("eth2")"#,
            from_yaml: r#"Some("eth3")"#,
            default: "None",
        },
        OptionCase {
            name: "port",
            flag: &["--port", "8081"],
            env: ("AYAFLOW_PORT", "8082"),
            yaml: "port: 8083",
            get: |c| c.port.to_string(),
            from_flag: "8081",
            from_env: "8082",
            from_yaml: "8083",
            default: "3000",
        },
        OptionCase {
            name: "bind_address",
            flag: &["--bind-address", "127.0.0.1"],
            env: ("AYAFLOW_BIND_ADDRESS", "::1"),
            yaml: "bind_address: 10.1.2.3",
            get: |c| c.bind_address.to_string(),
            from_flag: "127.0.0.1",
            from_env: "::1",
            from_yaml: "10.1.2.3",
            default: "::",
        },
        OptionCase {
            name: "db_path",
            flag: &["--db-path", "/tmp/a.db"],
            env: ("AYAFLOW_DB_PATH", "b.db"),
            yaml: "db_path: /var/lib/ayaflow/c.db",
            get: |c| c.db_path.display().to_string(),
            from_flag: "/tmp/a.db",
            from_env: "b.db",
            from_yaml: "/var/lib/ayaflow/c.db",
            default: "traffic.db",
        },
        OptionCase {
            name: "connection_timeout",
            flag: &["--connection-timeout", "5"],
            env: ("AYAFLOW_CONNECTION_TIMEOUT", "6"),
            yaml: "connection_timeout: 7",
            get: |c| format!("{:?}", c.connection_timeout),
            from_flag: "5s",
            from_env: "6s",
            from_yaml: "7s",
            default: "60s",
        },
        OptionCase {
            name: "data_retention",
            flag: &["--data-retention", "100"],
            env: ("AYAFLOW_DATA_RETENTION", "200"),
            yaml: "data_retention_seconds: 300",
            get: |c| format!("{:?}", c.data_retention),
            from_flag: "Some(100s)",
            from_env: "Some(200s)",
            from_yaml: "Some(300s)",
            default: "None",
        },
        OptionCase {
            name: "aggregation_window",
            flag: &["--aggregation-window", "10"],
            env: ("AYAFLOW_AGGREGATION_WINDOW", "20"),
            yaml: "aggregation_window_seconds: 30",
            get: |c| format!("{:?}", c.aggregation_window),
            from_flag: "Some(10s)",
            from_env: "Some(20s)",
            from_yaml: "Some(30s)",
            default: "None",
        },
        OptionCase {
            name: "allowed_ips",
            flag: &["--allowed-ips", "10.0.0.0/8"],
            env: ("AYAFLOW_ALLOWED_IPS", "192.168.1.5,fd00::/8"),
            yaml: "allowed_ips: [172.16.0.0/12, '::1']",
            get: show_nets,
            from_flag: "10.0.0.0/8",
            from_env: "192.168.1.5/32,fd00::/8",
            from_yaml: "172.16.0.0/12,::1/128",
            default: "",
        },
        // Two values only: the flag and the YAML say true, the environment false, so "all three"
        // shows flag > env and "env + YAML" shows env > YAML.
        OptionCase {
            name: "quiet",
            flag: &["--quiet"],
            env: ("AYAFLOW_QUIET", "false"),
            yaml: "quiet: true",
            get: |c| c.quiet.to_string(),
            from_flag: "true",
            from_env: "false",
            from_yaml: "true",
            default: "false",
        },
        OptionCase {
            name: "direction",
            flag: &["--direction", "both"],
            env: ("AYAFLOW_DIRECTION", "egress"),
            yaml: "direction: both",
            get: |c| c.direction.to_string(),
            from_flag: "both",
            from_env: "egress",
            from_yaml: "both",
            default: "ingress",
        },
        OptionCase {
            name: "capture_mode",
            flag: &["--capture-mode", "flows"],
            env: ("AYAFLOW_CAPTURE_MODE", "raw"),
            yaml: "capture_mode: flows",
            get: |c| c.capture_mode.to_string(),
            from_flag: "flows",
            from_env: "raw",
            from_yaml: "flows",
            default: "raw",
        },
        OptionCase {
            name: "max_connections",
            flag: &["--max-connections", "11"],
            env: ("AYAFLOW_MAX_CONNECTIONS", "12"),
            yaml: "max_connections: 13",
            get: |c| c.max_connections.to_string(),
            from_flag: "11",
            from_env: "12",
            from_yaml: "13",
            default: "65536",
        },
        OptionCase {
            name: "flow_map_size",
            flag: &["--flow-map-size", "21"],
            env: ("AYAFLOW_FLOW_MAP_SIZE", "22"),
            yaml: "flow_map_size: 23",
            get: |c| c.flow_map_size.to_string(),
            from_flag: "21",
            from_env: "22",
            from_yaml: "23",
            default: "65536",
        },
        OptionCase {
            name: "ring_buffer_size",
            flag: &["--ring-buffer-size", "1048576"],
            env: ("AYAFLOW_RING_BUFFER_SIZE", "2097152"),
            yaml: "ring_buffer_size: 4194304",
            get: |c| c.ring_buffer_size.to_string(),
            from_flag: "1048576",
            from_env: "2097152",
            from_yaml: "4194304",
            default: "8388608",
        },
    ];

    #[test]
    fn every_option_from_each_source_with_precedence() {
        assert_eq!(
            OPTION_CASES.len(),
            14,
            "one case per option except --config"
        );
        for case in OPTION_CASES {
            let name = case.name;
            let file = yaml_file(case.yaml);
            let path = path_of(&file);
            let get = |env: &Env, args: &[&str]| -> String {
                let config = env
                    .config(args)
                    .unwrap_or_else(|e| panic!("{name} with {args:?}: unexpected error: {e}"));
                (case.get)(&config)
            };
            let with_file = |extra: &[&'static str]| -> Vec<String> {
                let mut args = vec!["--config".to_owned(), path.clone()];
                args.extend(extra.iter().map(|s| (*s).to_owned()));
                args
            };

            let env = Env::with(&[]);
            assert_eq!(get(&env, &[]), case.default, "{name}: default");
            assert_eq!(get(&env, case.flag), case.from_flag, "{name}: flag only");
            assert_eq!(
                get(&env, &refs(&with_file(&[]))),
                case.from_yaml,
                "{name}: YAML only"
            );
            assert_eq!(
                get(&env, &refs(&with_file(case.flag))),
                case.from_flag,
                "{name}: flag beats YAML"
            );
            drop(env);

            let env = Env::with(&[case.env]);
            assert_eq!(get(&env, &[]), case.from_env, "{name}: env only");
            assert_eq!(
                get(&env, case.flag),
                case.from_flag,
                "{name}: flag beats env"
            );
            assert_eq!(
                get(&env, &refs(&with_file(&[]))),
                case.from_env,
                "{name}: env beats YAML"
            );
            assert_eq!(
                get(&env, &refs(&with_file(case.flag))),
                case.from_flag,
                "{name}: flag beats env and YAML"
            );
            drop(env);

            let from_text = Config::from_yaml_str(case.yaml)
                .unwrap_or_else(|e| panic!("{name}: from_yaml_str: {e}"));
            assert_eq!(
                (case.get)(&from_text),
                case.from_yaml,
                "{name}: from_yaml_str"
            );
        }
    }

    #[test]
    fn short_flags_and_config_from_env() {
        let file = yaml_file("port: 9999\nquiet: false\n");
        let path = path_of(&file);
        let env = Env::with(&[]);
        let c = env
            .config(&["-i", "eth9", "-p", "9000", "-q", "-c", &path])
            .expect("valid");
        assert_eq!(
            (c.interface.as_deref(), c.port, c.quiet),
            (Some("eth9"), 9000, true)
        );
        drop(env);

        let env = Env::with(&[("AYAFLOW_CONFIG", &path)]);
        assert_eq!(
            env.config(&[]).expect("valid").port,
            9999,
            "file named by AYAFLOW_CONFIG"
        );
        // An empty --config overrides AYAFLOW_CONFIG with "no file".
        assert_eq!(
            env.config(&["--config", ""]).expect("valid"),
            Config::default()
        );
    }

    #[test]
    fn cli_sets_yaml_values_back_to_their_defaults() {
        let file = yaml_file(
            "interface: eth0\nquiet: true\ndata_retention_seconds: 3600\n\
             aggregation_window_seconds: 10\nallowed_ips: [10.0.0.0/8]\n",
        );
        let path = path_of(&file);
        let env = Env::with(&[]);
        let from_yaml = env.config(&["-c", &path]).expect("valid");
        assert_eq!(from_yaml.interface.as_deref(), Some("eth0"));
        assert!(from_yaml.quiet);
        assert_eq!(
            from_yaml.capture_mode,
            CaptureMode::Flows,
            "a window implies flows"
        );

        let args = [
            "-c",
            &path,
            "--interface",
            "auto",
            "--quiet=false",
            "--data-retention",
            "0",
            "--aggregation-window",
            "0",
            "--allowed-ips",
            "",
        ];
        assert_eq!(env.config(&args).expect("valid"), Config::default());
        drop(env);

        let env = Env::with(&[
            ("AYAFLOW_INTERFACE", "AUTO"),
            ("AYAFLOW_QUIET", "off"),
            ("AYAFLOW_DATA_RETENTION", "0"),
            ("AYAFLOW_AGGREGATION_WINDOW", "0"),
            ("AYAFLOW_ALLOWED_IPS", ""),
        ]);
        assert_eq!(
            env.config(&["-c", &path]).expect("valid"),
            Config::default()
        );
    }

    #[test]
    fn lists_split_at_commas_and_repeat() {
        let env = Env::with(&[("AYAFLOW_ALLOWED_IPS", "10.0.0.0/8, 192.168.1.5,fd00::/8,,")]);
        assert_eq!(
            show_nets(&env.config(&[]).expect("valid")),
            "10.0.0.0/8,192.168.1.5/32,fd00::/8"
        );
        let args = [
            "--allowed-ips",
            "10.0.0.1",
            "--allowed-ips",
            "10.1.0.0/16,2001:db8::1",
        ];
        assert_eq!(
            show_nets(&env.config(&args).expect("valid")),
            "10.0.0.1/32,10.1.0.0/16,2001:db8::1/128",
            "the flag replaces the variable as a whole"
        );
    }

    #[test]
    fn booleans_and_choices_accept_common_spellings() {
        let env = Env::with(&[]);
        for (arg, quiet) in [
            ("--quiet=true", true),
            ("--quiet=0", false),
            ("-q=YES", true),
        ] {
            assert_eq!(env.config(&[arg]).expect("valid").quiet, quiet, "{arg}");
        }
        let c = env
            .config(&["--direction", "Egress", "--capture-mode", "FLOWS"])
            .expect("valid");
        assert_eq!(
            (c.direction, c.capture_mode),
            (DirectionChoice::Egress, CaptureMode::Flows)
        );
        // `--quiet` never takes the next word as its value.
        let c = env.config(&["--quiet", "--port", "81"]).expect("valid");
        assert_eq!((c.quiet, c.port), (true, 81));
    }

    #[test]
    fn capture_mode_follows_the_window_unless_given() {
        let env = Env::with(&[]);
        let mode = |args: &[&str]| env.config(args).expect("valid").capture_mode;
        assert_eq!(mode(&[]), CaptureMode::Raw);
        assert_eq!(mode(&["--aggregation-window", "10"]), CaptureMode::Flows);
        assert_eq!(
            mode(&["--aggregation-window", "10", "--capture-mode", "raw"]),
            CaptureMode::Raw
        );
        assert_eq!(mode(&["--capture-mode", "flows"]), CaptureMode::Flows);
    }

    #[test]
    fn directions_to_attach() {
        assert_eq!(
            DirectionChoice::Ingress.directions(),
            vec![Direction::Ingress]
        );
        assert_eq!(
            DirectionChoice::Egress.directions(),
            vec![Direction::Egress]
        );
        assert_eq!(
            DirectionChoice::Both.directions(),
            vec![Direction::Ingress, Direction::Egress]
        );
        assert_eq!(DirectionChoice::default(), DirectionChoice::Ingress);
    }

    #[test]
    fn empty_and_comment_only_yaml_is_all_defaults() {
        for text in ["", "\n", "# nothing here\n", "---\n"] {
            assert_eq!(
                Config::from_yaml_str(text).expect("valid"),
                Config::default(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn full_yaml_file() {
        let text = r#"
# As in a Kubernetes ConfigMap.
interface: eth0
port: "8080"          # quoted numbers are accepted
bind_address: "::"
db_path: /var/lib/ayaflow/traffic.db
connection_timeout: 120
data_retention_seconds: 86400
aggregation_window_seconds: 60
allowed_ips:
  - 10.0.0.0/8
  - 192.168.1.5
quiet: yes
direction: both
capture_mode: raw
max_connections: 100000
flow_map_size: 131072
ring_buffer_size: 16777216
"#;
        let c = Config::from_yaml_str(text).expect("valid");
        assert_eq!(
            c,
            Config {
                interface: Some("eth0".to_owned()),
                port: 8080,
                bind_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                db_path: PathBuf::from("/var/lib/ayaflow/traffic.db"),
                connection_timeout: Duration::from_secs(120),
                data_retention: Some(Duration::from_secs(86_400)),
                aggregation_window: Some(Duration::from_secs(60)),
                allowed_ips: vec![
                    "10.0.0.0/8".parse().expect("valid CIDR"),
                    "192.168.1.5/32".parse().expect("valid CIDR"),
                ],
                quiet: true,
                direction: DirectionChoice::Both,
                capture_mode: CaptureMode::Raw,
                max_connections: 100_000,
                flow_map_size: 131_072,
                ring_buffer_size: 16 << 20,
            }
        );
    }

    /// An invalid configuration and the message it must produce. `{file}` stands for the YAML
    /// file's path, `{page}` for the page size.
    struct ErrorCase {
        name: &'static str,
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        yaml: Option<&'static str>,
        message: &'static str,
        /// Compare the whole message, or only check that it starts with `message`.
        exact: bool,
    }

    const ERROR_CASES: &[ErrorCase] = &[
        ErrorCase {
            name: "port_zero",
            args: &["--port", "0"],
            env: &[],
            yaml: None,
            message: "--port = 0 (from the command line): expected a TCP port from 1 to 65535",
            exact: true,
        },
        ErrorCase {
            name: "port_too_big",
            args: &["-p", "65536"],
            env: &[],
            yaml: None,
            message: "--port = 65536 (from the command line): expected a TCP port from 1 to 65535",
            exact: true,
        },
        ErrorCase {
            name: "port_not_a_number_in_env",
            args: &[],
            env: &[("AYAFLOW_PORT", "http")],
            yaml: None,
            message: "AYAFLOW_PORT = http (from the environment): expected a TCP port from 1 to \
                      65535",
            exact: true,
        },
        ErrorCase {
            name: "port_empty_env",
            args: &[],
            env: &[("AYAFLOW_PORT", "")],
            yaml: None,
            message: r#"AYAFLOW_PORT = "" (from the environment): expected a TCP port"#,
            exact: false,
        },
        ErrorCase {
            name: "port_zero_in_yaml",
            args: &[],
            env: &[],
            yaml: Some("port: 0"),
            message: "port = 0 (from {file}): expected a TCP port from 1 to 65535",
            exact: true,
        },
        ErrorCase {
            name: "port_bad_string_in_yaml",
            args: &[],
            env: &[],
            yaml: Some("port: '80 80'"),
            message: r#"port = "80 80" (from {file}): expected a TCP port from 1 to 65535"#,
            exact: true,
        },
        ErrorCase {
            name: "port_wrong_type",
            args: &[],
            env: &[],
            yaml: Some("port: [1, 2]"),
            message: "port = [1, 2] (from {file}): expected a TCP port from 1 to 65535",
            exact: true,
        },
        ErrorCase {
            name: "port_null",
            args: &[],
            env: &[],
            yaml: Some("port:"),
            message: "port = null (from {file}): expected a TCP port from 1 to 65535",
            exact: true,
        },
        ErrorCase {
            name: "negative_window_in_yaml",
            args: &[],
            env: &[],
            yaml: Some("aggregation_window_seconds: -5"),
            message: "aggregation_window_seconds = -5 (from {file}): expected 0 (raw) or a whole \
                      number of seconds, at most 3153600000 (100 years)",
            exact: true,
        },
        ErrorCase {
            name: "fractional_window_in_yaml",
            args: &[],
            env: &[],
            yaml: Some("aggregation_window_seconds: 1.5"),
            message: "aggregation_window_seconds = 1.5 (from {file}): expected 0 (raw)",
            exact: false,
        },
        ErrorCase {
            name: "non_numeric_window_flag",
            args: &["--aggregation-window", "ten"],
            env: &[],
            yaml: None,
            message: "--aggregation-window = ten (from the command line): expected 0 (raw) or a \
                      whole number of seconds",
            exact: false,
        },
        ErrorCase {
            name: "window_too_long",
            args: &["--aggregation-window", "3153600001"],
            env: &[],
            yaml: None,
            message: "--aggregation-window = 3153600001 (from the command line): expected 0 (raw)",
            exact: false,
        },
        ErrorCase {
            name: "zero_timeout",
            args: &["--connection-timeout", "0"],
            env: &[],
            yaml: None,
            message: "--connection-timeout = 0 (from the command line): expected a whole number \
                      of seconds from 1 to 3153600000 (100 years)",
            exact: true,
        },
        ErrorCase {
            name: "negative_retention_env",
            args: &[],
            env: &[("AYAFLOW_DATA_RETENTION", "-1")],
            yaml: None,
            message: "AYAFLOW_DATA_RETENTION = -1 (from the environment): expected 0 (keep \
                      everything) or a whole number of seconds",
            exact: false,
        },
        ErrorCase {
            name: "bad_cidr_flag",
            args: &["--allowed-ips", "10.0.0.0/33"],
            env: &[],
            yaml: None,
            message: "--allowed-ips = 10.0.0.0/33 (from the command line): expected a CIDR such \
                      as 10.0.0.0/8 or fd00::/8, or a bare address such as 192.168.1.5 (in YAML a \
                      list, e.g. [10.0.0.0/8, 192.168.1.5]; empty allows everyone)",
            exact: true,
        },
        ErrorCase {
            name: "bad_cidr_item_env",
            args: &[],
            env: &[("AYAFLOW_ALLOWED_IPS", "10.0.0.0/8,bogus")],
            yaml: None,
            message: "AYAFLOW_ALLOWED_IPS = bogus (from the environment): expected a CIDR",
            exact: false,
        },
        ErrorCase {
            name: "bad_cidr_item_yaml",
            args: &[],
            env: &[],
            yaml: Some("allowed_ips: [10.0.0.0/8, 300.1.1.1]"),
            message: "allowed_ips = 300.1.1.1 (from {file}): expected a CIDR",
            exact: false,
        },
        ErrorCase {
            name: "cidr_list_item_wrong_type",
            args: &[],
            env: &[],
            yaml: Some("allowed_ips: [10.0.0.0/8, 42]"),
            message: "allowed_ips = 42 (from {file}): expected a CIDR",
            exact: false,
        },
        ErrorCase {
            name: "cidr_list_not_a_list",
            args: &[],
            env: &[],
            yaml: Some("allowed_ips: 10.0.0.0/8"),
            message: r#"allowed_ips = "10.0.0.0/8" (from {file}): expected a CIDR"#,
            exact: false,
        },
        ErrorCase {
            name: "unknown_yaml_key",
            args: &[],
            env: &[],
            yaml: Some("port: 3000\nprot: 3000\n"),
            message: "{file}: unknown field `prot`, expected one of `interface`, `port`",
            exact: false,
        },
        ErrorCase {
            name: "config_is_not_a_yaml_key",
            args: &[],
            env: &[],
            yaml: Some("config: other.yaml"),
            message: "{file}: unknown field `config`",
            exact: false,
        },
        ErrorCase {
            name: "yaml_not_a_mapping",
            args: &[],
            env: &[],
            yaml: Some("- port: 1\n"),
            message: r#"{file}: expected a mapping of options, found [{"port": 1}]; write one"#,
            exact: false,
        },
        ErrorCase {
            name: "yaml_syntax",
            args: &[],
            env: &[],
            yaml: Some("port: [1\n"),
            message: "{file}: ",
            exact: false,
        },
        ErrorCase {
            name: "yaml_duplicate_key",
            args: &[],
            env: &[],
            yaml: Some("port: 1\nport: 2\n"),
            message: "{file}: duplicate",
            exact: false,
        },
        ErrorCase {
            name: "ring_not_power_of_two",
            args: &["--ring-buffer-size", "5000"],
            env: &[],
            yaml: None,
            message: "--ring-buffer-size = 5000 (from the command line): expected a power of two \
                      of bytes from {page} (the page size) to 2147483648, e.g. 8388608 (8 MiB)",
            exact: true,
        },
        ErrorCase {
            name: "ring_below_page",
            args: &["--ring-buffer-size", "2048"],
            env: &[],
            yaml: None,
            message: "--ring-buffer-size = 2048 (from the command line): expected a power of two",
            exact: false,
        },
        ErrorCase {
            name: "ring_above_u32",
            args: &[],
            env: &[],
            yaml: Some("ring_buffer_size: 4294967296"),
            message: "ring_buffer_size = 4294967296 (from {file}): expected a power of two",
            exact: false,
        },
        ErrorCase {
            name: "bad_direction",
            args: &["--direction", "sideways"],
            env: &[],
            yaml: None,
            message: "--direction = sideways (from the command line): expected ingress, egress \
                      or both",
            exact: true,
        },
        ErrorCase {
            name: "bad_capture_mode",
            args: &[],
            env: &[("AYAFLOW_CAPTURE_MODE", "fast")],
            yaml: None,
            message: "AYAFLOW_CAPTURE_MODE = fast (from the environment): expected raw (one event \
                      per packet) or flows (aggregate in the kernel)",
            exact: true,
        },
        ErrorCase {
            name: "zero_max_connections",
            args: &["--max-connections", "0"],
            env: &[],
            yaml: None,
            message: "--max-connections = 0 (from the command line): expected a whole number of \
                      connections from 1 to 16777216",
            exact: true,
        },
        ErrorCase {
            name: "huge_max_connections",
            args: &[],
            env: &[],
            yaml: Some("max_connections: 16777217"),
            message: "max_connections = 16777217 (from {file}): expected a whole number",
            exact: false,
        },
        ErrorCase {
            name: "zero_flow_map_size",
            args: &["--flow-map-size", "0"],
            env: &[],
            yaml: None,
            message: "--flow-map-size = 0 (from the command line): expected a whole number of \
                      slots from 1 to 16777216",
            exact: true,
        },
        ErrorCase {
            name: "bad_bind_address",
            args: &["--bind-address", "localhost"],
            env: &[],
            yaml: None,
            message: "--bind-address = localhost (from the command line): expected an IP address",
            exact: false,
        },
        ErrorCase {
            name: "empty_db_path",
            args: &["--db-path", ""],
            env: &[],
            yaml: None,
            message: r#"--db-path = "" (from the command line): expected a file path"#,
            exact: false,
        },
        ErrorCase {
            name: "interface_with_slash",
            args: &["-i", "eth0/1"],
            env: &[],
            yaml: None,
            message: "--interface = eth0/1 (from the command line): expected an interface name",
            exact: false,
        },
        ErrorCase {
            name: "interface_too_long",
            args: &[],
            env: &[("AYAFLOW_INTERFACE", "averyveryverylongname")],
            yaml: None,
            message: "AYAFLOW_INTERFACE = averyveryverylongname (from the environment): expected \
                      an interface name of 1 to 15 characters",
            exact: false,
        },
        ErrorCase {
            name: "interface_wrong_type",
            args: &[],
            env: &[],
            yaml: Some("interface: 5"),
            message: "interface = 5 (from {file}): expected an interface name",
            exact: false,
        },
        ErrorCase {
            name: "bad_boolean_flag",
            args: &["--quiet=maybe"],
            env: &[],
            yaml: None,
            message: "--quiet = maybe (from the command line): expected true or false (also \
                      yes/no, on/off, 1/0)",
            exact: true,
        },
        ErrorCase {
            name: "boolean_wrong_type",
            args: &[],
            env: &[],
            yaml: Some("quiet: 3"),
            message: "quiet = 3 (from {file}): expected true or false",
            exact: false,
        },
        ErrorCase {
            name: "missing_file",
            args: &["--config", "/nonexistent/ayaflow.yaml"],
            env: &[],
            yaml: None,
            message: "config file /nonexistent/ayaflow.yaml (from --config) does not exist; check \
                      the path, or drop --config to run with the defaults",
            exact: true,
        },
        ErrorCase {
            name: "unreadable_file",
            args: &[],
            env: &[("AYAFLOW_CONFIG", "/")],
            yaml: None,
            message: "cannot read config file / (from AYAFLOW_CONFIG): ",
            exact: false,
        },
    ];

    #[test]
    fn invalid_configurations_name_option_source_value_and_fix() {
        let page = page_size().to_string();
        for case in ERROR_CASES {
            let name = case.name;
            let file = case.yaml.map(yaml_file);
            let mut args: Vec<String> = case.args.iter().map(|s| (*s).to_owned()).collect();
            let mut expected = case.message.replace("{page}", &page);
            if let Some(file) = &file {
                args.extend(["--config".to_owned(), path_of(file)]);
                expected = expected.replace("{file}", &path_of(file));
            }
            let env = Env::with(case.env);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let message = match env.config(&args) {
                Ok(config) => panic!("{name}: accepted as {config:?}"),
                Err(e) => e.to_string(),
            };
            if case.exact {
                assert_eq!(message, expected, "{name}");
            } else {
                assert!(
                    message.starts_with(&expected),
                    "{name}: {message:?}\ndoes not start with {expected:?}"
                );
            }
        }
    }

    #[test]
    fn yaml_errors_say_how_to_fix_them() {
        let e = Config::from_yaml_str("prot: 3000").expect_err("unknown key");
        let message = e.to_string();
        assert!(
            message.starts_with("YAML text: unknown field `prot`"),
            "{message}"
        );
        assert!(message.ends_with("(YAML keys use underscores, e.g. `connection_timeout: 60`)"));

        let e = Config::from_yaml_str("connection-timeout: 5").expect_err("dash instead of _");
        assert!(
            e.to_string().contains("unknown field `connection-timeout`"),
            "{e}"
        );
    }

    #[test]
    fn option_names_match_the_clap_definition() {
        let command = CliArgs::command();
        let opts = [
            &INTERFACE,
            &PORT,
            &BIND_ADDRESS,
            &DB_PATH,
            &CONNECTION_TIMEOUT,
            &DATA_RETENTION,
            &AGGREGATION_WINDOW,
            &ALLOWED_IPS,
            &QUIET,
            &DIRECTION,
            &CAPTURE_MODE,
            &MAX_CONNECTIONS,
            &FLOW_MAP_SIZE,
            &RING_BUFFER_SIZE,
        ];
        for opt in opts {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == opt.id)
                .unwrap_or_else(|| panic!("no clap argument {}", opt.id));
            assert_eq!(
                arg.get_long().map(|l| format!("--{l}")).as_deref(),
                Some(opt.flag)
            );
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(opt.env));
            let yaml = format!("{}: ~", opt.yaml);
            let message = Config::from_yaml_str(&yaml)
                .expect_err("null is rejected")
                .to_string();
            assert!(
                message.starts_with(&format!("{} = null", opt.yaml)),
                "{message}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics_the_yaml_parser(text in "\\PC*") {
            let _ = Config::from_yaml_str(&text);
        }

        #[test]
        fn yaml_ish_text_never_panics(
            lines in prop::collection::vec(
                (
                    "(port|quiet|allowed_ips|interface|ring_buffer_size|[a-z_]{1,12})",
                    "( |)(-?[0-9]{1,25}|[a-z.:/]{0,12}|\\[[0-9a-z.:/, ]{0,20}\\]?|~|'[^']{0,8}'|\"[^\"]{0,8}\"|!t x|\\{a: 1\\}|&a 1|\\*a)",
                    "(  )?",
                ),
                0..6,
            )
        ) {
            let text: String =
                lines.iter().map(|(k, v, indent)| format!("{indent}{k}:{v}\n")).collect();
            let _ = Config::from_yaml_str(&text);
        }

        #[test]
        fn arbitrary_flag_values_never_panic(
            values in prop::collection::vec(prop::option::of("\\PC{0,12}"), 14),
            ips in prop::option::of(prop::collection::vec("\\PC{0,12}", 0..3)),
        ) {
            let v = |i: usize| values[i].clone();
            let cli = Cli {
                args: CliArgs {
                    interface: v(0),
                    port: v(1),
                    bind_address: v(2),
                    db_path: v(3),
                    connection_timeout: v(4),
                    data_retention: v(5),
                    aggregation_window: v(6),
                    allowed_ips: ips,
                    quiet: v(7),
                    config: None,
                    direction: v(8),
                    capture_mode: v(9),
                    max_connections: v(10),
                    flow_map_size: v(11),
                    ring_buffer_size: v(12),
                },
                origins: Default::default(),
            };
            let _ = Config::from_cli(cli);
        }
    }
}
