//! Every option from each source (flag, variable, YAML), and which one wins.

use super::*;

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

const OPTION_CASES: &[OptionCase] = &[
    OptionCase {
        name: "interface",
        flag: &["--interface", "eth1,veth*"],
        env: ("AYAFLOW_INTERFACE", "eth2"),
        yaml: "interface: [eth3, 'cali*']",
        get: |c| c.interfaces.to_string(),
        from_flag: "eth1,veth*",
        from_env: "eth2",
        from_yaml: "eth3,cali*",
        default: "auto",
    },
    OptionCase {
        name: "exclude_interface",
        flag: &["--exclude-interface", "veth1"],
        env: ("AYAFLOW_EXCLUDE_INTERFACE", "veth*"),
        yaml: "exclude_interface: 'lxc1, lxc[2-4]'",
        get: |c| c.interfaces.to_string(),
        from_flag: "auto minus veth1",
        from_env: "auto minus veth*",
        from_yaml: "auto minus lxc1,lxc[2-4]",
        default: "auto",
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
        name: "max_db_bytes",
        flag: &["--max-db-bytes", "512MiB"],
        env: ("AYAFLOW_MAX_DB_BYTES", "2GB"),
        yaml: "max_db_bytes: 17000000",
        get: |c| format!("{:?}", c.max_db_bytes),
        from_flag: "Some(536870912)",
        from_env: "Some(2000000000)",
        from_yaml: "Some(17000000)",
        default: "None",
    },
    OptionCase {
        name: "aggregation_max_rows",
        flag: &["--aggregation-max-rows", "1000"],
        env: ("AYAFLOW_AGGREGATION_MAX_ROWS", "2000"),
        yaml: "aggregation_max_rows: 3000",
        get: |c| c.window_entries_bound().to_string(),
        from_flag: "1000",
        from_env: "2000",
        from_yaml: "3000",
        default: "524288",
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
        name: "api_token_file",
        flag: &["--api-token-file", "/run/a"],
        env: ("AYAFLOW_API_TOKEN_FILE", "/run/b"),
        yaml: "api_token_file: /run/c",
        get: |c| format!("{:?}", c.api_token_file),
        from_flag: r#"Some("/run/a")"#,
        from_env: r#"Some("/run/b")"#,
        from_yaml: r#"Some("/run/c")"#,
        default: "None",
    },
    OptionCase {
        name: "pin",
        flag: &["--pin"],
        env: ("AYAFLOW_PIN", "false"),
        yaml: "pin: true",
        get: |c| c.pin.to_string(),
        from_flag: "true",
        from_env: "false",
        from_yaml: "true",
        default: "false",
    },
    OptionCase {
        name: "pin_path",
        flag: &["--pin-path", "/sys/fs/bpf/a"],
        env: ("AYAFLOW_PIN_PATH", "/sys/fs/bpf/b"),
        yaml: "pin_path: /sys/fs/bpf/c",
        get: |c| c.pin_path.display().to_string(),
        from_flag: "/sys/fs/bpf/a",
        from_env: "/sys/fs/bpf/b",
        from_yaml: "/sys/fs/bpf/c",
        default: "/sys/fs/bpf/ayaflow",
    },
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
    OptionCase {
        name: "ipfix_collectors",
        flag: &["--ipfix-collectors", "a.example:4739,10.0.0.1:2055"],
        env: ("AYAFLOW_IPFIX_COLLECTORS", "b.example:4739"),
        yaml: "ipfix_collectors: [\"[fd00::1]:4739\"]",
        get: |c| c.ipfix_collectors.join(","),
        from_flag: "a.example:4739,10.0.0.1:2055",
        from_env: "b.example:4739",
        from_yaml: "[fd00::1]:4739",
        default: "",
    },
    OptionCase {
        name: "ipfix_active_timeout",
        flag: &["--ipfix-active-timeout", "11"],
        env: ("AYAFLOW_IPFIX_ACTIVE_TIMEOUT", "12"),
        yaml: "ipfix_active_timeout: 13",
        get: |c| c.ipfix_active_timeout.as_secs().to_string(),
        from_flag: "11",
        from_env: "12",
        from_yaml: "13",
        default: "60",
    },
    OptionCase {
        name: "ipfix_idle_timeout",
        flag: &["--ipfix-idle-timeout", "5"],
        env: ("AYAFLOW_IPFIX_IDLE_TIMEOUT", "6"),
        yaml: "ipfix_idle_timeout: 7",
        get: |c| format!("{:?}", c.ipfix_idle_timeout.map(|d| d.as_secs())),
        from_flag: "Some(5)",
        from_env: "Some(6)",
        from_yaml: "Some(7)",
        default: "None",
    },
    OptionCase {
        name: "ipfix_template_refresh",
        flag: &["--ipfix-template-refresh", "31"],
        env: ("AYAFLOW_IPFIX_TEMPLATE_REFRESH", "32"),
        yaml: "ipfix_template_refresh: 33",
        get: |c| c.ipfix_template_refresh.as_secs().to_string(),
        from_flag: "31",
        from_env: "32",
        from_yaml: "33",
        default: "60",
    },
    OptionCase {
        name: "ipfix_observation_domain",
        flag: &["--ipfix-observation-domain", "0"],
        env: ("AYAFLOW_IPFIX_OBSERVATION_DOMAIN", "4294967295"),
        yaml: "ipfix_observation_domain: 42",
        get: |c| format!("{:?}", c.ipfix_observation_domain),
        from_flag: "Some(0)",
        from_env: "Some(4294967295)",
        from_yaml: "Some(42)",
        default: "None",
    },
    OptionCase {
        name: "ipfix_mtu",
        flag: &["--ipfix-mtu", "512"],
        env: ("AYAFLOW_IPFIX_MTU", "9000"),
        yaml: "ipfix_mtu: 65507",
        get: |c| c.ipfix_mtu.to_string(),
        from_flag: "512",
        from_env: "9000",
        from_yaml: "65507",
        default: "1400",
    },
];

#[test]
fn every_option_from_each_source_with_precedence() {
    assert_eq!(
        OPTION_CASES.len(),
        OPTIONS.len() - 1,
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
        (c.interfaces.named(), c.port, c.quiet),
        (vec!["eth9"], 9000, true)
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
        "interface: eth0,veth*\nexclude_interface: veth0\nquiet: true\ndata_retention_seconds: 3600\n\
         aggregation_window_seconds: 10\nallowed_ips: [10.0.0.0/8]\n",
    );
    let path = path_of(&file);
    let env = Env::with(&[]);
    let from_yaml = env.config(&["-c", &path]).expect("valid");
    assert_eq!(from_yaml.interfaces.to_string(), "eth0,veth* minus veth0");
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
        "--exclude-interface",
        "",
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
        ("AYAFLOW_EXCLUDE_INTERFACE", ""),
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
