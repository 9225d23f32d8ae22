//! What declaring an option takes ([`OptionSpec`]); one option's winning value as it arrived
//! (text from a flag or variable, or a YAML value) with where it came from; and the parsers
//! every option's `apply` uses, which turn a bad value into a [`ConfigError`] naming the option
//! as spelled in its source.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_yaml_ng::Value;

use std::time::Duration;

use super::{Config, ConfigError, MAX_SECONDS};

/// How an option takes its value on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One value: `--port 3000`.
    Value,
    /// A list: comma-separated, or the flag repeated; a sequence in YAML.
    List,
    /// A boolean that needs no value: `-q`, `--quiet=false`.
    Switch,
    /// The YAML file itself (`--config`): a path, any bytes, not a YAML key.
    ConfigFile,
}

/// One option.
pub struct OptionSpec {
    /// The clap id and the YAML key.
    pub name: &'static str,
    pub short: Option<char>,
    /// `--` and the name with dashes.
    pub flag: &'static str,
    /// `AYAFLOW_` and the name in capitals.
    pub env: &'static str,
    /// Older YAML keys, still read with a deprecation warning.
    pub old_yaml_keys: &'static [&'static str],
    pub value_name: &'static str,
    pub shape: Shape,
    /// One line: `--help` and the README's "Meaning".
    pub help: &'static str,
    /// The README's "Default" and `[default: ...]` in `--help`.
    pub default: &'static str,
    /// What would be accepted, for error messages.
    pub expected: &'static str,
    /// Sets this option's field of `Config` from its winning value; `None` when no source set
    /// it (the field keeps `Config::default()`'s value unless the default depends on another
    /// option, which is declared earlier).
    pub apply: fn(Option<&Given>, &mut Config) -> Result<(), ConfigError>,
}

impl OptionSpec {
    /// The YAML key, or `None` for `--config`.
    pub fn yaml_key(&self) -> Option<&'static str> {
        (self.shape != Shape::ConfigFile).then_some(self.name)
    }
}

/// A value as it arrived.
#[derive(Clone, Copy)]
pub enum Raw<'a> {
    /// From a flag or an environment variable.
    Text(&'a str),
    /// A list from a flag or an environment variable (clap already split it at commas).
    Texts(&'a [String]),
    /// From the YAML file.
    Yaml(&'a Value),
}

/// Where a value came from, for error messages.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Flag,
    Env,
    /// The YAML file: its path (or `YAML text`), and the key as written there.
    Yaml {
        origin: &'a str,
        key: &'a str,
    },
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
pub struct Given<'a> {
    pub opt: &'static OptionSpec,
    pub raw: Raw<'a>,
    pub source: Source<'a>,
}

impl Given<'_> {
    pub fn invalid(&self, value: String) -> ConfigError {
        self.invalid_expecting(value, self.opt.expected.to_owned())
    }

    pub fn invalid_expecting(&self, value: String, expected: String) -> ConfigError {
        let (option, origin) = self.option_and_origin();
        ConfigError::Invalid {
            option: option.to_owned(),
            value,
            origin: origin.to_owned(),
            expected,
        }
    }

    /// A value that is valid on its own but not together with another option's: `problem`
    /// says why and what to do.
    pub fn conflict(&self, value: String, problem: String) -> ConfigError {
        let (option, origin) = self.option_and_origin();
        ConfigError::Conflict {
            option: option.to_owned(),
            value,
            origin: origin.to_owned(),
            problem,
        }
    }

    /// The option as spelled in its source, and that source as error messages name it.
    fn option_and_origin(&self) -> (&str, &str) {
        match self.source {
            Source::Flag => (self.opt.flag, "the command line"),
            Source::Env => (self.opt.env, "the environment"),
            Source::Yaml { origin, key } => (key, origin),
        }
    }

    /// The value as shown in error messages.
    pub fn shown(&self) -> String {
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

    pub fn string(&self) -> Result<String, ConfigError> {
        self.text(Kind::Str)
    }

    /// A whole number in `min..=max`.
    pub fn number(&self, min: u64, max: u64) -> Result<u64, ConfigError> {
        self.text(Kind::Int)?
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.invalid(self.shown()))
    }

    /// A size in bytes (`536870912`, `512MiB`, `2GB`, `1.5 GiB`) of at least `min`, where `0`
    /// and `unlimited` mean none.
    pub fn optional_bytes(&self, min: u64) -> Result<Option<u64>, ConfigError> {
        let text = self.text(Kind::Int)?;
        let text = text.trim();
        if text == "0" || text.eq_ignore_ascii_case("unlimited") {
            return Ok(None);
        }
        parse_size::parse_size(text)
            .ok()
            .filter(|&n| n >= min)
            .map(Some)
            .ok_or_else(|| self.invalid(self.shown()))
    }

    /// Seconds where 0 means "off".
    pub fn optional_seconds(&self) -> Result<Option<Duration>, ConfigError> {
        let secs = self.number(0, MAX_SECONDS)?;
        Ok((secs > 0).then(|| Duration::from_secs(secs)))
    }

    pub fn boolean(&self) -> Result<bool, ConfigError> {
        match self.text(Kind::Bool)?.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(self.invalid(self.shown())),
        }
    }

    /// One of `choices` (case-insensitive).
    pub fn choice<T: Copy>(&self, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let text = self.string()?;
        choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text.trim()))
            .map(|&(_, value)| value)
            .ok_or_else(|| self.invalid(self.shown()))
    }

    /// List items: clap's comma-split values, or a YAML sequence of strings. Blank items of a
    /// flag or variable are skipped so that `''` (and a trailing comma) mean "no items".
    pub fn items(&self) -> Result<Vec<(String, String)>, ConfigError> {
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

    /// Like [`Given::items`], also accepting a comma-separated YAML string (`interface:
    /// "eth0,veth*"`), for options whose single value is commonly written as a string.
    pub fn items_or_comma_text(&self) -> Result<Vec<(String, String)>, ConfigError> {
        match self.raw {
            Raw::Yaml(Value::String(s)) => Ok(split_items(s.split(','))),
            _ => self.items(),
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
pub fn show_yaml(v: &Value) -> String {
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

/// The system page size, the smallest ring buffer the kernel accepts (4096 on x86-64, 16 KiB or
/// 64 KiB on some arm64 kernels).
pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant; it has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|&s| s >= 4096)
        .unwrap_or(4096)
}

/// Returns true if and only if the kernel would accept `name` as an interface name
/// (`dev_valid_name` in net/core/dev.c: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace).
pub fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// A CIDR, or a bare address as a single-host network (/32 or /128).
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// `host:port` with a port from 1 to 65535 and a host that is a name or an address (IPv6 in
/// brackets); the name is resolved when exporting, not here.
pub fn valid_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        }
    };
    port_ok && host_ok
}
