//! grafana/dashboard.json: importable, and every panel's query answered by a real Prometheus.

use super::*;

pub(crate) fn dashboard() -> Json {
    serde_json::from_str(&read("grafana/dashboard.json")).expect("dashboard.json is JSON")
}

/// Every panel, rows' nested panels included.
pub(crate) fn panels(d: &Json) -> Vec<&Json> {
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
pub(crate) fn datasources<'a>(v: &'a Json, out: &mut Vec<&'a Json>) {
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
pub(crate) struct Prometheus {
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
pub(crate) fn encode(s: &str) -> String {
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
pub(crate) fn grafana_regex_escape(value: &str) -> String {
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
pub(crate) fn interpolate(expr: &str, vars: &[(String, String)]) -> String {
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
pub(crate) fn memory(pid: u32) -> (u64, u64) {
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
pub(crate) fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff");
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// `setpriv` arguments that run the agent with only `caps` (bounding set; root keeps them
/// effective), the way a container with `drop: [ALL]` and `add: caps` does.
pub(crate) fn setpriv(caps: &[&str]) -> Vec<String> {
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
pub(crate) fn udp_burst(pair: &NetPair, count: usize, flows: u16) {
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
    // The ConfigMap pins: into a bpffs of the test's own, with only the DaemonSet's capabilities.
    let bpffs = integration_test::bpffs::Bpffs::mount();
    let pins = bpffs.pins();
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
            "--pin-path",
            pins.to_str().unwrap(),
        ],
    );
    assert!(
        pins.join("links").read_dir().unwrap().count() > 0,
        "the link is pinned"
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
        // One value, as an operator would pick it: a real interface rather than the series
        // that sum what has none, or none any more ("(none)", "(gone)").
        let value = values
            .iter()
            .filter_map(|v| v.as_str())
            .find(|v| !v.starts_with('('))
            .unwrap_or_else(|| panic!("variable {name}: only catch-all values: {values:?}"));
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
    // Uninstalling, as the README says: `ayaflow detach` with the same config.
    let out = Command::new(binary())
        .args([
            "--config",
            config.to_str().unwrap(),
            "--pin-path",
            pins.to_str().unwrap(),
        ])
        .arg("detach")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.exists(), "ayaflow detach removed the pins");
}
