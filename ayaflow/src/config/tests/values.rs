//! How values are read: lists, booleans, choices, dependent defaults, whole YAML files.

use super::*;

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
fn interface_lists_names_patterns_and_auto() {
    let env = Env::with(&[]);
    let selected = |args: &[&str]| env.config(args).expect("valid").interfaces.to_string();
    assert_eq!(
        selected(&["-i", "eth0", "-i", "eth1,veth*"]),
        "eth0,eth1,veth*"
    );
    assert_eq!(selected(&["-i", "Auto, cali*,lxc*"]), "auto,cali*,lxc*");
    assert_eq!(
        selected(&["-i", "veth*", "--exclude-interface", "veth0,veth[89]*"]),
        "veth* minus veth0,veth[89]*"
    );
    // With auto, a plain exclude may be the default route's interface: checked at start.
    assert_eq!(
        selected(&["--exclude-interface", "eth1"]),
        "auto minus eth1"
    );
    let yaml = |text: &str| Config::from_yaml_str(text).expect("valid").interfaces;
    assert_eq!(
        yaml("interface: 'eth0, veth*'"),
        yaml("interface: [eth0, 'veth*']"),
        "a comma-separated string is the list"
    );
    let s = yaml("interface: [eth0, 'veth*']\nexclude_interface: veth7");
    assert!(s.matches("eth0") && s.matches("veth1") && !s.matches("veth7"));
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
interface: [eth0, "veth*"]
exclude_interface: veth9*
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
ipfix_collectors: [nfcapd.monitoring.svc:4739, "[fd00::5]:2055"]
ipfix_active_timeout: 30
ipfix_idle_timeout: 15
ipfix_template_refresh: 120
ipfix_observation_domain: 7
ipfix_mtu: 9000
aggregation_max_rows: 100000
max_db_bytes: 1.5 GiB
pin: true
pin_path: /sys/fs/bpf/node-agent
api_token_file: /etc/ayaflow/api-token
"#;
    let c = Config::from_yaml_str(text).expect("valid");
    assert_eq!(
        c,
        Config {
            interfaces: InterfaceSelection {
                include: vec![
                    InterfaceMatch::Name("eth0".to_owned()),
                    InterfaceMatch::Pattern(glob::Pattern::new("veth*").expect("a pattern")),
                ],
                exclude: vec![InterfaceMatch::Pattern(
                    glob::Pattern::new("veth9*").expect("a pattern")
                )],
            },
            port: 8080,
            bind_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            db_path: PathBuf::from("/var/lib/ayaflow/traffic.db"),
            connection_timeout: Duration::from_secs(120),
            data_retention: Some(Duration::from_secs(86_400)),
            aggregation_window: Some(Duration::from_secs(60)),
            aggregation_max_rows: Some(100_000),
            max_db_bytes: Some(1_610_612_736),
            api_token_file: Some(PathBuf::from("/etc/ayaflow/api-token")),
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
            pin: true,
            pin_path: PathBuf::from("/sys/fs/bpf/node-agent"),
            ipfix_collectors: vec![
                "nfcapd.monitoring.svc:4739".to_owned(),
                "[fd00::5]:2055".to_owned()
            ],
            ipfix_active_timeout: Duration::from_secs(30),
            ipfix_idle_timeout: Some(Duration::from_secs(15)),
            ipfix_template_refresh: Duration::from_secs(120),
            ipfix_observation_domain: Some(7),
            ipfix_mtu: 9000,
        }
    );
}
