//! Every option of the agent, declared once: its names (flag, environment variable, YAML key),
//! its help line and documented default, what a valid value looks like, and how its value sets
//! [`Config`]. The command line (`cli`), the YAML reader, precedence, error messages and
//! the README's configuration table are all derived from [`OPTIONS`].

use std::{path::PathBuf, time::Duration};

pub use super::value::{OptionSpec, Shape};
use super::{
    CaptureMode, DirectionChoice, MAX_FLOW_MAP_SIZE, MAX_MAX_CONNECTIONS, MAX_SECONDS, interfaces,
    value::{page_size, parse_net, valid_host_port},
};
use crate::storage::MIN_MAX_DB_BYTES;

/// The options, in the order of `--help` and of the README's table.
pub static OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "interface",
        short: Some('i'),
        flag: "--interface",
        env: "AYAFLOW_INTERFACE",
        old_yaml_keys: &[],
        value_name: "IFACE",
        shape: Shape::List,
        help: "interfaces to attach to: names and glob patterns (`eth0,veth*`), `auto` for the \
               default route's",
        default: "auto: the default route's interface, else the first up non-loopback one",
        expected: "interface names of 1 to 15 characters without '/', ':' or spaces (see `ip \
                   link`), glob patterns such as veth* or cali*, or auto for the interface of \
                   the default route; comma-separated (in YAML a list or a comma-separated \
                   string), at least one",
        apply: interfaces::apply_include,
    },
    OptionSpec {
        name: "exclude_interface",
        short: None,
        flag: "--exclude-interface",
        env: "AYAFLOW_EXCLUDE_INTERFACE",
        old_yaml_keys: &[],
        value_name: "IFACE",
        shape: Shape::List,
        help: "interfaces left out of --interface: names and glob patterns (`veth9*`)",
        default: "none",
        expected: "interface names of 1 to 15 characters without '/', ':' or spaces, or glob \
                   patterns such as veth*; comma-separated (in YAML a list or a \
                   comma-separated string)",
        apply: interfaces::apply_exclude,
    },
    OptionSpec {
        name: "port",
        short: Some('p'),
        flag: "--port",
        env: "AYAFLOW_PORT",
        old_yaml_keys: &[],
        value_name: "PORT",
        shape: Shape::Value,
        help: "HTTP API port",
        default: "3000",
        expected: "a TCP port from 1 to 65535",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            // The range check keeps the value within u16.
            c.port =
                u16::try_from(g.number(1, u16::MAX.into())?).map_err(|_| g.invalid(g.shown()))?;
            Ok(())
        },
    },
    OptionSpec {
        name: "bind_address",
        short: None,
        flag: "--bind-address",
        env: "AYAFLOW_BIND_ADDRESS",
        old_yaml_keys: &[],
        value_name: "ADDR",
        shape: Shape::Value,
        help: "API listen address",
        default: "`::` (all; falls back to 0.0.0.0 without IPv6)",
        expected: "an IP address, e.g. :: (every address, IPv4 and IPv6), 0.0.0.0 or 127.0.0.1",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.bind_address = g
                .string()?
                .trim()
                .parse()
                .map_err(|_| g.invalid(g.shown()))?;
            Ok(())
        },
    },
    OptionSpec {
        name: "db_path",
        short: None,
        flag: "--db-path",
        env: "AYAFLOW_DB_PATH",
        old_yaml_keys: &[],
        value_name: "FILE",
        shape: Shape::Value,
        help: "SQLite file",
        default: "`traffic.db`",
        expected: "a file path, e.g. /var/lib/ayaflow/traffic.db",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            let path = g.string()?;
            if path.is_empty() {
                return Err(g.invalid(g.shown()));
            }
            c.db_path = PathBuf::from(path);
            Ok(())
        },
    },
    OptionSpec {
        name: "connection_timeout",
        short: None,
        flag: "--connection-timeout",
        env: "AYAFLOW_CONNECTION_TIMEOUT",
        old_yaml_keys: &[],
        value_name: "SECONDS",
        shape: Shape::Value,
        help: "seconds of inactivity before a connection is closed",
        default: "60",
        expected: "a whole number of seconds from 1 to 3153600000 (100 years)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.connection_timeout = Duration::from_secs(g.number(1, MAX_SECONDS)?);
            Ok(())
        },
    },
    OptionSpec {
        name: "data_retention",
        short: None,
        flag: "--data-retention",
        env: "AYAFLOW_DATA_RETENTION",
        old_yaml_keys: &["data_retention_seconds"],
        value_name: "SECONDS",
        shape: Shape::Value,
        help: "delete history older than N seconds (0: keep all)",
        default: "disabled",
        expected: "0 (keep everything) or a whole number of seconds, at most 3153600000 (100 \
                   years)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.data_retention = g.optional_seconds()?;
            Ok(())
        },
    },
    OptionSpec {
        name: "max_db_bytes",
        short: None,
        flag: "--max-db-bytes",
        env: "AYAFLOW_MAX_DB_BYTES",
        old_yaml_keys: &[],
        value_name: "BYTES",
        shape: Shape::Value,
        help: "disk budget of the history file and its WAL: past it the oldest history is \
               deleted first (0: unlimited)",
        default: "unlimited",
        expected: "0 (unlimited) or a size of at least 16MiB, e.g. 512MiB, 2GB or 1073741824",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.max_db_bytes = g.optional_bytes(MIN_MAX_DB_BYTES)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "aggregation_window",
        short: None,
        flag: "--aggregation-window",
        env: "AYAFLOW_AGGREGATION_WINDOW",
        old_yaml_keys: &["aggregation_window_seconds"],
        value_name: "SECONDS",
        shape: Shape::Value,
        help: "store N-second windows per connection instead of one row per packet (0: raw)",
        default: "0",
        expected: "0 (raw) or a whole number of seconds, at most 3153600000 (100 years)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.aggregation_window = g.optional_seconds()?;
            Ok(())
        },
    },
    OptionSpec {
        name: "aggregation_max_rows",
        short: None,
        flag: "--aggregation-max-rows",
        env: "AYAFLOW_AGGREGATION_MAX_ROWS",
        old_yaml_keys: &[],
        value_name: "N",
        shape: Shape::Value,
        help: "bound of the open windows' rows (tuple and direction each); the traffic of keys \
               beyond it goes into one overflow row per window and direction",
        default: "8 x max_connections",
        expected: "a whole number of rows from 1 to 134217728",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            let n = g.number(1, 1 << 27)?;
            c.aggregation_max_rows = Some(usize::try_from(n).map_err(|_| g.invalid(g.shown()))?);
            Ok(())
        },
    },
    OptionSpec {
        name: "allowed_ips",
        short: None,
        flag: "--allowed-ips",
        env: "AYAFLOW_ALLOWED_IPS",
        old_yaml_keys: &[],
        value_name: "CIDR",
        shape: Shape::List,
        help: "CIDRs or addresses allowed to reach the API (empty: all)",
        default: "all",
        expected: "a CIDR such as 10.0.0.0/8 or fd00::/8, or a bare address such as 192.168.1.5 \
                   (in YAML a list, e.g. [10.0.0.0/8, 192.168.1.5]; empty allows everyone)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.allowed_ips = g
                .items()?
                .into_iter()
                .map(|(item, shown)| parse_net(&item).ok_or_else(|| g.invalid(shown)))
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    },
    OptionSpec {
        name: "api_token_file",
        short: None,
        flag: "--api-token-file",
        env: "AYAFLOW_API_TOKEN_FILE",
        old_yaml_keys: &[],
        value_name: "FILE",
        shape: Shape::Value,
        help: "file holding a bearer token every API request but /healthz and /readyz must \
               send (`Authorization: Bearer <token>`)",
        default: "none (no token asked)",
        expected: "a file path, e.g. /etc/ayaflow/api-token",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            let path = g.string()?;
            if path.is_empty() {
                return Err(g.invalid(g.shown()));
            }
            c.api_token_file = Some(PathBuf::from(path));
            Ok(())
        },
    },
    OptionSpec {
        name: "quiet",
        short: Some('q'),
        flag: "--quiet",
        env: "AYAFLOW_QUIET",
        old_yaml_keys: &[],
        value_name: "BOOL",
        shape: Shape::Switch,
        help: "only errors in the log (`RUST_LOG` still wins)",
        default: "false",
        expected: "true or false (also yes/no, on/off, 1/0)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.quiet = g.boolean()?;
            Ok(())
        },
    },
    OptionSpec {
        name: "config",
        short: Some('c'),
        flag: "--config",
        env: "AYAFLOW_CONFIG",
        old_yaml_keys: &[],
        value_name: "FILE",
        shape: Shape::ConfigFile,
        help: "YAML config file",
        default: "none",
        expected: "a file path",
        // Read before every other option (see `Config::load`).
        apply: |_, _| Ok(()),
    },
    OptionSpec {
        name: "direction",
        short: None,
        flag: "--direction",
        env: "AYAFLOW_DIRECTION",
        old_yaml_keys: &[],
        value_name: "DIRECTION",
        shape: Shape::Value,
        help: "hooks: `ingress`, `egress` or `both`",
        default: "ingress",
        expected: "ingress, egress or both",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.direction = g.choice(&[
                ("ingress", DirectionChoice::Ingress),
                ("egress", DirectionChoice::Egress),
                ("both", DirectionChoice::Both),
            ])?;
            Ok(())
        },
    },
    OptionSpec {
        name: "capture_mode",
        short: None,
        flag: "--capture-mode",
        env: "AYAFLOW_CAPTURE_MODE",
        old_yaml_keys: &[],
        value_name: "MODE",
        shape: Shape::Value,
        help: "`raw` (an event per packet) or `flows` (aggregate in the kernel)",
        default: "raw (flows when a window is set)",
        expected: "raw (one event per packet) or flows (aggregate in the kernel)",
        apply: |g, c| {
            c.capture_mode = match g {
                // Windows are built from flows anyway, so aggregating in the kernel saves a
                // ring-buffer event per packet; without a window every packet is stored, which
                // needs raw events. `aggregation_window` is declared (so applied) before.
                None if c.aggregation_window.is_some() => CaptureMode::Flows,
                None => CaptureMode::Raw,
                Some(g) => g.choice(&[("raw", CaptureMode::Raw), ("flows", CaptureMode::Flows)])?,
            };
            Ok(())
        },
    },
    OptionSpec {
        name: "max_connections",
        short: None,
        flag: "--max-connections",
        env: "AYAFLOW_MAX_CONNECTIONS",
        old_yaml_keys: &[],
        value_name: "N",
        shape: Shape::Value,
        help: "bound of the live connection table",
        default: "65536",
        expected: "a whole number of connections from 1 to 16777216",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            let n = g.number(1, MAX_MAX_CONNECTIONS as u64)?;
            c.max_connections = usize::try_from(n).map_err(|_| g.invalid(g.shown()))?;
            Ok(())
        },
    },
    OptionSpec {
        name: "flow_map_size",
        short: None,
        flag: "--flow-map-size",
        env: "AYAFLOW_FLOW_MAP_SIZE",
        old_yaml_keys: &[],
        value_name: "N",
        shape: Shape::Value,
        help: "slots of the kernel flow table (flows mode; rounded up to a power of two, 104 B \
               each; about twice the connections seen at once)",
        default: "65536",
        expected: "a whole number of slots from 1 to 16777216",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.flow_map_size = u32::try_from(g.number(1, MAX_FLOW_MAP_SIZE.into())?)
                .map_err(|_| g.invalid(g.shown()))?;
            Ok(())
        },
    },
    OptionSpec {
        name: "ring_buffer_size",
        short: None,
        flag: "--ring-buffer-size",
        env: "AYAFLOW_RING_BUFFER_SIZE",
        old_yaml_keys: &[],
        value_name: "BYTES",
        shape: Shape::Value,
        help: "bytes of the kernel ring buffer (power of two)",
        default: "8388608",
        // The page-size bound is added at run time: see `page_size`.
        expected: "a power of two of bytes, at most 2147483648, e.g. 8388608 (8 MiB)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
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
            c.ring_buffer_size =
                u32::try_from(n).map_err(|_| g.invalid_expecting(g.shown(), expected))?;
            Ok(())
        },
    },
    OptionSpec {
        name: "pin",
        short: None,
        flag: "--pin",
        env: "AYAFLOW_PIN",
        old_yaml_keys: &[],
        value_name: "BOOL",
        shape: Shape::Switch,
        help: "keep the program attached and its counters and flow table in bpffs across \
               restarts (`ayaflow detach` removes them)",
        default: "false",
        expected: "true or false (also yes/no, on/off, 1/0)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.pin = g.boolean()?;
            Ok(())
        },
    },
    OptionSpec {
        name: "pin_path",
        short: None,
        flag: "--pin-path",
        env: "AYAFLOW_PIN_PATH",
        old_yaml_keys: &[],
        value_name: "DIR",
        shape: Shape::Value,
        help: "where --pin keeps its links and maps: a directory on a BPF filesystem",
        default: "`/sys/fs/bpf/ayaflow`",
        expected: "an absolute path on a BPF filesystem, e.g. /sys/fs/bpf/ayaflow",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            let path = PathBuf::from(g.string()?);
            if !path.is_absolute() {
                return Err(g.invalid(g.shown()));
            }
            c.pin_path = path;
            Ok(())
        },
    },
    OptionSpec {
        name: "ipfix_collectors",
        short: None,
        flag: "--ipfix-collectors",
        env: "AYAFLOW_IPFIX_COLLECTORS",
        old_yaml_keys: &[],
        value_name: "HOST:PORT",
        shape: Shape::List,
        help: "IPFIX collectors to export flow records to over UDP (names resolved, again after a failure)",
        default: "none (no export)",
        expected: "host:port, e.g. nfcapd.monitoring.svc:4739, 10.0.0.1:2055 or [fd00::5]:4739 \
                   (in YAML a list)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.ipfix_collectors = g
                .items()?
                .into_iter()
                .map(|(item, shown)| {
                    valid_host_port(&item)
                        .then_some(item)
                        .ok_or_else(|| g.invalid(shown))
                })
                .collect::<Result<_, _>>()?;
            Ok(())
        },
    },
    OptionSpec {
        name: "ipfix_active_timeout",
        short: None,
        flag: "--ipfix-active-timeout",
        env: "AYAFLOW_IPFIX_ACTIVE_TIMEOUT",
        old_yaml_keys: &[],
        value_name: "SECONDS",
        shape: Shape::Value,
        help: "seconds after which a long-lived flow is reported (and again every N seconds)",
        default: "60",
        expected: "a whole number of seconds from 1 to 3153600000 (100 years)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.ipfix_active_timeout = Duration::from_secs(g.number(1, MAX_SECONDS)?);
            Ok(())
        },
    },
    OptionSpec {
        name: "ipfix_idle_timeout",
        short: None,
        flag: "--ipfix-idle-timeout",
        env: "AYAFLOW_IPFIX_IDLE_TIMEOUT",
        old_yaml_keys: &[],
        value_name: "SECONDS",
        shape: Shape::Value,
        help: "seconds without a packet after which a flow gets its last record",
        default: "the connection timeout",
        expected: "a whole number of seconds from 1 to 3153600000 (100 years)",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.ipfix_idle_timeout = Some(Duration::from_secs(g.number(1, MAX_SECONDS)?));
            Ok(())
        },
    },
    OptionSpec {
        name: "ipfix_template_refresh",
        short: None,
        flag: "--ipfix-template-refresh",
        env: "AYAFLOW_IPFIX_TEMPLATE_REFRESH",
        old_yaml_keys: &[],
        value_name: "SECONDS",
        shape: Shape::Value,
        help: "seconds between two sendings of the IPFIX templates",
        default: "60",
        expected: "a whole number of seconds from 1 to 86400",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.ipfix_template_refresh = Duration::from_secs(g.number(1, 86_400)?);
            Ok(())
        },
    },
    OptionSpec {
        name: "ipfix_observation_domain",
        short: None,
        flag: "--ipfix-observation-domain",
        env: "AYAFLOW_IPFIX_OBSERVATION_DOMAIN",
        old_yaml_keys: &[],
        value_name: "ID",
        shape: Shape::Value,
        help: "IPFIX observation domain id of this node",
        default: "derived from the host name (stable per node)",
        expected: "a whole number from 0 to 4294967295",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.ipfix_observation_domain = Some(
                u32::try_from(g.number(0, u32::MAX.into())?).map_err(|_| g.invalid(g.shown()))?,
            );
            Ok(())
        },
    },
    OptionSpec {
        name: "ipfix_mtu",
        short: None,
        flag: "--ipfix-mtu",
        env: "AYAFLOW_IPFIX_MTU",
        old_yaml_keys: &[],
        value_name: "BYTES",
        shape: Shape::Value,
        help: "largest IPFIX message in bytes (many records per message)",
        default: "1400",
        expected: "a whole number of bytes from 512 to 65507",
        apply: |g, c| {
            let Some(g) = g else { return Ok(()) };
            c.ipfix_mtu = usize::try_from(g.number(crate::ipfix::MIN_MTU as u64, 65_507)?)
                .map_err(|_| g.invalid(g.shown()))?;
            Ok(())
        },
    },
];

/// The option named `name`. Panics if there is none: names are compile-time constants.
pub fn option(name: &str) -> &'static OptionSpec {
    OPTIONS
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no option {name}"))
}
