//! Invalid configurations: each message names the option, its source, the value and the fix.

use super::*;

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
        message: "{file}: unknown field `prot`, expected one of `interface`, `exclude_interface`, `port`",
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
        args: &["-i", "eth0,eth0/1"],
        env: &[],
        yaml: None,
        message: "--interface = eth0/1 (from the command line): expected interface names of 1 \
                  to 15 characters",
        exact: false,
    },
    ErrorCase {
        name: "interface_too_long",
        args: &[],
        env: &[("AYAFLOW_INTERFACE", "averyveryverylongname")],
        yaml: None,
        message: "AYAFLOW_INTERFACE = averyveryverylongname (from the environment): expected \
                  interface names of 1 to 15 characters",
        exact: false,
    },
    ErrorCase {
        name: "interface_wrong_type",
        args: &[],
        env: &[],
        yaml: Some("interface: 5"),
        message: "interface = 5 (from {file}): expected interface names",
        exact: false,
    },
    ErrorCase {
        name: "interface_empty",
        args: &["--interface", ""],
        env: &[],
        yaml: None,
        message: r#"--interface = "" (from the command line): expected interface names"#,
        exact: false,
    },
    ErrorCase {
        name: "interface_only_commas",
        args: &[],
        env: &[("AYAFLOW_INTERFACE", " , ")],
        yaml: None,
        message: r#"AYAFLOW_INTERFACE = " , " (from the environment): expected interface names"#,
        exact: false,
    },
    ErrorCase {
        name: "interface_empty_yaml_list",
        args: &[],
        env: &[],
        yaml: Some("interface: []"),
        message: "interface = [] (from {file}): expected interface names",
        exact: false,
    },
    ErrorCase {
        name: "interface_invalid_pattern",
        args: &["--interface", "eth0,veth["],
        env: &[],
        yaml: None,
        message: "--interface = veth[ (from the command line): expected a valid glob pattern \
                  (glob patterns use `*`, `?` and classes such as [0-9] or [!ab]): invalid \
                  range pattern at character 5",
        exact: true,
    },
    ErrorCase {
        name: "interface_pattern_that_cannot_match",
        args: &["--interface", "veth*/0"],
        env: &[],
        yaml: None,
        message: r#"--interface = "veth*/0" (from the command line): expected interface names"#,
        exact: false,
    },
    ErrorCase {
        name: "exclude_not_included",
        args: &["--interface", "eth0", "--exclude-interface", "eth1"],
        env: &[],
        yaml: None,
        message: "--exclude-interface = eth1 (from the command line): eth1 is excluded but not \
                  included by --interface eth0; remove it",
        exact: true,
    },
    ErrorCase {
        name: "exclude_invalid_pattern_in_yaml",
        args: &[],
        env: &[],
        yaml: Some("interface: 'veth*'\nexclude_interface: [veth1, 'lxc[']"),
        message: "exclude_interface = lxc[ (from {file}): expected a valid glob pattern",
        exact: false,
    },
    ErrorCase {
        name: "exclude_auto",
        args: &[],
        env: &[("AYAFLOW_EXCLUDE_INTERFACE", "auto")],
        yaml: None,
        message: "AYAFLOW_EXCLUDE_INTERFACE = auto (from the environment): expected interface \
                  names or glob patterns; auto is only for --interface (name the interface to \
                  leave out)",
        exact: true,
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
    ErrorCase {
        name: "ipfix_collector_without_port",
        args: &["--ipfix-collectors", "10.0.0.1:4739,collector"],
        env: &[],
        yaml: None,
        message: "--ipfix-collectors = collector (from the command line): expected host:port, \
                  e.g. nfcapd.monitoring.svc:4739, 10.0.0.1:2055 or [fd00::5]:4739 (in YAML a list)",
        exact: true,
    },
    ErrorCase {
        name: "ipfix_mtu_too_small",
        args: &[],
        env: &[("AYAFLOW_IPFIX_MTU", "100")],
        yaml: None,
        message: "AYAFLOW_IPFIX_MTU = 100 (from the environment): expected a whole number of \
                  bytes from 512 to 65507",
        exact: true,
    },
    ErrorCase {
        name: "max_db_bytes_below_the_minimum",
        args: &["--max-db-bytes", "1MiB"],
        env: &[],
        yaml: None,
        message: "--max-db-bytes = 1MiB (from the command line): expected 0 (unlimited) or a \
                  size of at least 16MiB, e.g. 512MiB, 2GB or 1073741824",
        exact: true,
    },
    ErrorCase {
        name: "max_db_bytes_not_a_size",
        args: &[],
        env: &[],
        yaml: Some("max_db_bytes: lots\n"),
        message: "max_db_bytes = \"lots\" (from {file}): expected 0 (unlimited) or a size of \
                  at least 16MiB, e.g. 512MiB, 2GB or 1073741824",
        exact: true,
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
