//! The live view against known traffic.

use fantoccini::Locator;
use integration_test::{agent::Agent, agent::metric, netns::NetPair, require_bpf, wait_for};
use serde_json::Value;

use super::{
    FOREIGN_RESOURCES, PAGE, Steady, UDP_OVERHEAD,
    browser::{Browser, Kind, in_browser_ns},
    rows_script, send_udp,
};
use std::time::Duration;

/// Three UDP connections a:40001.. -> b:9999 with distinct counts and sizes: (src port,
/// datagrams, payload bytes).
const KNOWN: [(u16, u64, usize); 3] = [(40001, 5, 100), (40002, 10, 200), (40003, 15, 300)];

/// The table's key of a row: a connection on an interface.
fn key(src_port: u16, dst_port: u16, interface: &str) -> String {
    format!("UDP 192.0.2.1:{src_port} 192.0.2.2:{dst_port} {interface}")
}

/// The numbers in column `col` of `rows`, in table order.
fn column(rows: &Value, col: &str) -> Vec<f64> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r[col]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        })
        .collect()
}

/// Stream clients the agent counts now.
fn stream_clients(agent: &Agent) -> Option<u64> {
    let (_, text) = agent.get("/metrics")?;
    metric(&text, "ayaflow_stream_clients")
}

fn the_live_view_shows_known_connections_exactly_sorts_filters_and_follows_the_stream(kind: Kind) {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_on_b(&pair, &dir.path().join("h.db"), &["--direction", "ingress"]);
    for (port, count, payload) in KNOWN {
        send_udp(&pair, port, 9999, count, payload);
    }
    // The agent has them before the page opens (so the first frame has them all).
    wait_for(30, "the known connections in /api/live", || {
        let (_, body) = agent.get("/api/live?limit=1000")?;
        KNOWN
            .iter()
            .all(|(p, ..)| body.contains(&format!("\"192.0.2.1:{p}\"")))
            .then_some(())
    });
    let downloads = tempfile::tempdir().unwrap();
    let ns = pair.ns_b.clone();
    let agent = std::sync::Arc::new(agent);
    let a = agent.clone();
    let if_b = pair.if_b.clone();
    let pair = std::sync::Arc::new(pair);
    let p = pair.clone();
    in_browser_ns(&ns.clone(), move || async move {
        let b = Browser::start(kind, &ns, 1366, 800, downloads.path()).await;
        b.client.goto(PAGE).await.expect("the page loads");
        let rows = rows_script("conn-table");

        // Exactly their packets and bytes, with units on screen and exact values in titles.
        let shown = b
            .until(30, "the known connections in the table", &format!(
                "const rows = (() => {{ {rows} }})();
                 return {n} === rows.filter(r => r.key.startsWith('UDP 192.0.2.1:4000')).length ? rows : null;",
                n = KNOWN.len()
            ))
            .await;
        for (port, count, payload) in KNOWN {
            let k = key(port, 9999, &if_b);
            let r = shown
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["key"] == k.as_str())
                .unwrap_or_else(|| panic!("{k} in {shown}"));
            let bytes = count * (payload as u64 + UDP_OVERHEAD);
            assert_eq!(r["packets"], count.to_string(), "{k}");
            assert_eq!(r["bytes"], bytes.to_string(), "{k}");
            assert_eq!(r["packets_title"], format!("{count} packets"), "{k}");
            let exact = if bytes >= 1000 {
                format!("{},{:03} bytes", bytes / 1000, bytes % 1000)
            } else {
                format!("{bytes} bytes")
            };
            assert_eq!(r["bytes_title"], exact, "{k}");
            let unit = if bytes >= 1024 { " KiB" } else { " B" };
            assert!(
                r["bytes_text"].as_str().unwrap().ends_with(unit),
                "{k}: {r}"
            );
            assert_eq!(r["dir"], "in", "{k}");
        }

        // Sorting: each sortable column, descending then ascending.
        for col in ["bytes", "packets", "last_seen", "rate"] {
            let button = format!("#conn-table th[data-key={col}] button");
            b.client
                .find(Locator::Css(&button))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            for descending in [true, false] {
                if !descending {
                    b.client
                        .find(Locator::Css(&button))
                        .await
                        .unwrap()
                        .click()
                        .await
                        .unwrap();
                }
                let sort = b
                    .js(&format!("return document.querySelector('#conn-table th[data-key={col}]').getAttribute('aria-sort');"), vec![])
                    .await;
                assert_eq!(
                    sort,
                    if descending {
                        "descending"
                    } else {
                        "ascending"
                    },
                    "{col}"
                );
                let got = b.js(&rows, vec![]).await;
                let values: Vec<f64> = column(&got, col)
                    .into_iter()
                    .filter(|v| !v.is_nan())
                    .collect();
                let ordered = values.windows(2).all(|w| {
                    if descending {
                        w[0] >= w[1]
                    } else {
                        w[0] <= w[1]
                    }
                });
                assert!(
                    ordered,
                    "{col} {}: {values:?}",
                    if descending {
                        "descending"
                    } else {
                        "ascending"
                    }
                );
            }
        }

        // The keyboard sorts too: Enter on a focused header.
        let header = b
            .client
            .find(Locator::Css("#conn-table th[data-key=packets] button"))
            .await
            .unwrap();
        let before = b.js("return document.querySelector('#conn-table th[data-key=packets]').getAttribute('aria-sort');", vec![]).await;
        header
            .send_keys(&fantoccini::key::Key::Enter.to_string())
            .await
            .unwrap();
        let after = b.js("return document.querySelector('#conn-table th[data-key=packets]').getAttribute('aria-sort');", vec![]).await;
        assert_ne!(before, after, "Enter on the Packets header sorts by it");

        // Filtering as you type: port, address, protocol, hook.
        let filter = |id: &'static str| b.client.find(Locator::Id(id));
        filter("f-port")
            .await
            .unwrap()
            .send_keys("40002")
            .await
            .unwrap();
        let got = b.js(&rows, vec![]).await;
        let keys: Vec<&str> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, [key(40002, 9999, &if_b)], "port 40002");
        filter("f-port").await.unwrap().clear().await.unwrap();
        filter("f-addr")
            .await
            .unwrap()
            .send_keys("192.0.2.1")
            .await
            .unwrap();
        let got = b.js(&rows, vec![]).await;
        let keys: Vec<&str> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        for (port, ..) in KNOWN {
            assert!(keys.contains(&key(port, 9999, &if_b).as_str()), "{keys:?}");
        }
        assert!(keys.iter().all(|k| k.contains("192.0.2.1:")), "{keys:?}");
        filter("f-addr").await.unwrap().clear().await.unwrap();
        filter("f-proto")
            .await
            .unwrap()
            .select_by_value("TCP")
            .await
            .unwrap();
        assert_eq!(
            b.js(&rows, vec![]).await,
            serde_json::json!([]),
            "no TCP was sent"
        );
        filter("f-proto")
            .await
            .unwrap()
            .select_by_value("UDP")
            .await
            .unwrap();
        let got = b.js(&rows, vec![]).await;
        assert!(
            got.as_array().unwrap().iter().all(|r| r["proto"] == "UDP"),
            "{got}"
        );
        assert!(got.as_array().unwrap().len() >= KNOWN.len());
        filter("f-dir")
            .await
            .unwrap()
            .select_by_value("egress")
            .await
            .unwrap();
        let got = b.js(&rows, vec![]).await;
        assert_eq!(
            got,
            serde_json::json!([]),
            "an ingress-only agent sees no egress packets"
        );
        filter("f-iface")
            .await
            .unwrap()
            .select_by_value(&if_b)
            .await
            .unwrap();
        filter("f-dir")
            .await
            .unwrap()
            .select_by_value("ingress")
            .await
            .unwrap();
        let got = b.js(&rows, vec![]).await;
        assert!(got.as_array().unwrap().len() >= KNOWN.len(), "{got}");
        filter("f-proto")
            .await
            .unwrap()
            .select_by_value("")
            .await
            .unwrap();

        // A steady sender: its row gets a current rate, and the charts advance with the stream.
        let _steady = Steady::start(
            &p,
            40100,
            9999,
            100,
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        let chart = "return [...['chart-pps', 'chart-bps']].map(id => {
            const c = document.getElementById(id);
            return [Number(c.dataset.samples || 0), Number(c.dataset.last || 0)];
        });";
        let before = b.js(chart, vec![]).await;
        let rate = b
            .until(
                30,
                "a rate for the steady connection",
                &format!(
                    "const r = (() => {{ {rows} }})().find(r => r.key === '{}');
                 return r && Number(r.rate) > 0 ? r : null;",
                    key(40100, 9999, &if_b)
                ),
            )
            .await;
        // About 100 datagrams/s of 142 bytes (a loaded machine sends fewer).
        let bps: f64 = rate["rate"].as_str().unwrap().parse().unwrap();
        assert!(bps > 1_000.0 && bps < 200_000.0, "{rate}");
        assert!(
            rate["rate_title"].as_str().unwrap().contains("packets/s"),
            "{rate}"
        );
        let after = b
            .until(30, "both charts to take three more frames", &format!(
                "const now = (() => {{ {chart} }})(); const before = {before};
                 return now.every((c, i) => c[0] >= before[i][0] + 3 && c[1] > before[i][1]) ? now : null;"
            ))
            .await;
        assert!(after[0][0].as_u64().unwrap() >= 3);
        let legend = b
            .js(
                "return document.querySelector('#legend-pps-ingress .v').textContent;",
                vec![],
            )
            .await;
        assert!(legend.as_str().unwrap().ends_with("pps"), "{legend}");

        // The node, the protocol mix and the loss counters.
        let iface = b
            .js(
                "return document.querySelector('[data-fact=interfaces]').textContent;",
                vec![],
            )
            .await;
        assert!(iface.as_str().unwrap().starts_with(&if_b), "{iface}");
        let mix = b.js("return [...document.querySelectorAll('#proto-table tbody th')].map(t => t.textContent);", vec![]).await;
        assert_eq!(
            mix,
            serde_json::json!(["TCP", "UDP", "ICMP", "Other IP", "Not IP"])
        );
        let losses = b
            .js("return [...document.querySelectorAll('#loss-list li')].map(li => [li.dataset.name, li.classList.contains('bad'), li.querySelector('.help').textContent.length]);", vec![])
            .await;
        let losses = losses.as_array().unwrap();
        assert!(losses.len() >= 9, "{losses:?}");
        for l in losses {
            assert_eq!(l[1], false, "{l} is not red: nothing was lost");
            assert!(l[2].as_u64().unwrap() > 10, "{l} says what it means");
        }

        // A hidden tab closes its stream; shown again, it reopens it and the charts go on.
        wait_for(30, "one stream client", || {
            (stream_clients(&a)? == 1).then_some(())
        });
        let page = b.client.window().await.unwrap();
        let other = b.client.new_window(true).await.unwrap();
        b.client.switch_to_window(other.handle).await.unwrap();
        wait_for(30, "the hidden tab to close its stream", || {
            (stream_clients(&a)? == 0).then_some(())
        });
        b.client.switch_to_window(page).await.unwrap();
        wait_for(30, "the tab, shown again, to reopen its stream", || {
            (stream_clients(&a)? == 1).then_some(())
        });
        let state = b
            .until(
                30,
                "the page to say it is live again",
                "return document.getElementById('conn-state').textContent === 'live';",
            )
            .await;
        assert_eq!(state, true);

        // Nothing came from another origin, nothing went wrong.
        let foreign = b.js(FOREIGN_RESOURCES, vec![]).await;
        assert_eq!(foreign, serde_json::json!([]), "requests to another origin");
        let loaded = b.js("return performance.getEntriesByType('resource').map(e => new URL(e.name).pathname);", vec![]).await;
        // The stream drives the page: one status request, and no polling of /api/live.
        let api: Vec<&str> = loaded
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str())
            .filter(|p| p.starts_with("/api/"))
            .collect();
        assert_eq!(api, ["/api/status"], "the page's API requests");
        for f in ["/ui/app.css", "/ui/main.js", "/ui/live.js", "/ui/chart.js"] {
            assert!(
                loaded.as_array().unwrap().iter().any(|p| p == f),
                "{f} in {loaded}"
            );
        }
        assert_eq!(
            b.errors(&[]).await,
            Vec::<String>::new(),
            "errors in the page"
        );
    });
    drop(agent);
    drop(pair);
}

in_both_browsers!(
    the_live_view_shows_known_connections_exactly_sorts_filters_and_follows_the_stream
);
