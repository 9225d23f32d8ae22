//! k8s/daemonset.yaml: the Kubernetes schemas, and its ConfigMap through the agent's parser.

use super::*;

/// The documents of k8s/daemonset.yaml (empty ones skipped).
pub(crate) fn manifests() -> Vec<Yaml> {
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

pub(crate) fn object<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in k8s/daemonset.yaml");
    found[0]
}

pub(crate) fn str_of<'a>(v: &'a Yaml, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

pub(crate) fn seq<'a>(v: &'a Yaml, what: &str) -> &'a [Yaml] {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list: {v:?}"))
}

/// The ConfigMap's config.yaml as the agent parses it.
pub(crate) fn configmap_config() -> (String, Config) {
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
pub(crate) fn quantity_bytes(q: &str) -> u64 {
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
pub(crate) fn quantity_millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(n) => n.parse().expect("millicores"),
        None => (q.parse::<f64>().expect("cores") * 1000.0) as u64,
    }
}

/// The DaemonSet's container (there is one).
pub(crate) fn container(docs: &[Yaml]) -> &Yaml {
    let containers = seq(
        &object(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"],
        "containers",
    );
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The container's memory request, in bytes.
pub(crate) fn memory_request() -> u64 {
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
    // The node's disk is shared: the history has a budget.
    assert_eq!(config.max_db_bytes, Some(2 << 30), "max_db_bytes: 2GiB");

    // The BPF filesystem of the node, and pinning into it.
    let (mount, volume) = mount_of(Path::new("/sys/fs/bpf"));
    assert_eq!(mount["mountPath"], "/sys/fs/bpf");
    assert_eq!(volume["hostPath"]["path"], "/sys/fs/bpf");
    assert!(config.pin, "pin: true");
    let (pin_mount, _) = mount_of(&config.pin_path);
    assert_eq!(
        pin_mount["mountPath"],
        "/sys/fs/bpf",
        "pin_path {} is on the bpffs mount",
        config.pin_path.display()
    );
    assert_ne!(pin_mount["readOnly"], true);

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
