//! The declarations themselves: names, the README table, documented defaults, renamed keys.

use super::*;

#[test]
fn option_names_match_the_clap_definition_and_the_conventions() {
    let command = Cli::command();
    for o in OPTIONS {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == o.name)
            .unwrap_or_else(|| panic!("no clap argument {}", o.name));
        assert_eq!(
            arg.get_long().map(|l| format!("--{l}")).as_deref(),
            Some(o.flag)
        );
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(o.env));
        assert_eq!(
            o.flag,
            format!("--{}", o.name.replace('_', "-")),
            "flag of {}",
            o.name
        );
        assert_eq!(
            o.env,
            format!("AYAFLOW_{}", o.name.to_uppercase()),
            "variable of {}",
            o.name
        );
        let Some(key) = o.yaml_key() else { continue };
        for key in std::iter::once(key).chain(o.old_yaml_keys.iter().copied()) {
            let message = Config::from_yaml_str(&format!("{key}: ~"))
                .expect_err("null is rejected")
                .to_string();
            assert!(message.starts_with(&format!("{key} = null")), "{message}");
        }
    }
}

#[test]
fn the_readme_table_is_the_declarations() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("reading README.md");
    let expected = configuration_table();
    let found = table_in(&readme)
        .unwrap_or_else(|| panic!("README.md has no table starting with {TABLE_HEADER:?}"));
    assert!(
        found == expected,
        "README.md's configuration table differs from the option declarations \
         (config/options.rs). Replace it with:\n\n{expected}"
    );
}

#[test]
fn documented_defaults_are_the_defaults() {
    // Options whose documented default is a description rather than a value.
    let described = [
        "ipfix_collectors",
        "ipfix_idle_timeout",
        "ipfix_observation_domain",
        "interface",
        "exclude_interface",
        "bind_address",
        "data_retention",
        "allowed_ips",
        "config",
        "capture_mode",
        "aggregation_max_rows",
        "api_token_file",
    ];
    for o in OPTIONS {
        if described.contains(&o.name) {
            continue;
        }
        let value = o.default.trim_matches('`');
        let c = Config::from_yaml_str(&format!("{}: {value}", o.name))
            .unwrap_or_else(|e| panic!("{}: documented default {value:?} rejected: {e}", o.name));
        assert_eq!(
            c,
            Config::default(),
            "{}: documented default {value:?}",
            o.name
        );
    }
    // The described ones, as the defaults really are.
    let d = Config::default();
    assert_eq!(d.interfaces, InterfaceSelection::default());
    assert_eq!(d.interfaces.to_string(), "auto");
    assert_eq!(d.bind_address, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    assert_eq!((d.data_retention, d.allowed_ips.len()), (None, 0));
    assert_eq!(d.capture_mode, CaptureMode::Raw);
    assert_eq!(d.window_entries_bound(), 8 * d.max_connections);
    assert_eq!(d.api_token_file, None);
    assert!(d.ipfix_collectors.is_empty(), "no export by default");
    assert_eq!(
        (d.ipfix_idle_timeout, d.ipfix_observation_domain),
        (None, None)
    );
}

#[test]
fn renamed_yaml_keys_are_read_with_a_deprecation_warning() {
    let new =
        Config::from_yaml_str("data_retention: 3600\naggregation_window: 10\n").expect("valid");
    assert_eq!(new.data_retention, Some(Duration::from_secs(3600)));
    assert_eq!(new.aggregation_window, Some(Duration::from_secs(10)));
    let file = yaml_file("data_retention_seconds: 3600\naggregation_window_seconds: 10\n");
    let path = path_of(&file);
    let env = Env::with(&[]);
    let (old, warnings) = Config::load(env.cli(&["-c", &path])).expect("valid");
    assert_eq!(old, new, "the old keys mean the same");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("`data_retention_seconds` is deprecated, write `data_retention`"),
        "{warnings:?}"
    );
    let (_, none) = Config::load(env.cli(&[])).expect("valid");
    assert!(none.is_empty());
    // An error names the key as written.
    let e = Config::from_yaml_str("data_retention_seconds: -1").expect_err("negative");
    assert!(
        e.to_string()
            .starts_with("data_retention_seconds = -1 (from YAML text)"),
        "{e}"
    );
    let e = Config::from_yaml_str("data_retention: 1\ndata_retention_seconds: 2\n")
        .expect_err("both spellings");
    assert!(e.to_string().contains("both set data_retention"), "{e}");
}
