//! GET /api/history

use super::*;

pub(crate) fn ids(doc: &Value) -> Vec<u64> {
    doc["rows"]
        .as_array()
        .expect("rows is an array")
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect()
}

#[tokio::test]
async fn history_raw_rows_exact_json_default_limit_and_kind() {
    let raw = raw_rows(130);
    let s = start(Setup {
        raw: raw.clone(),
        windows: window_rows(),
        ..Setup::default()
    })
    .await;
    let doc = s.ok_json("/api/history").await;
    let keys: Vec<&str> = doc
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["kind", "next_cursor", "rows"]);
    assert_eq!(doc["kind"], "raw");
    // Default limit 100, newest first; the next page starts below the last id shown.
    let want: Vec<u64> = (31..=130).rev().collect();
    assert_eq!(ids(&doc), want);
    assert_eq!(doc["next_cursor"], 31);
    // One row written out by hand (the newest: i = 129, UDP, ingress)...
    assert_eq!(
        doc["rows"][0],
        json!({"id": 130, "timestamp": T + 129, "timestamp_ns": (T + 129) * SEC + 123_456_789,
               "direction": "ingress", "interface": "eth0", "proto": "UDP", "src": "10.0.0.3:5353",
               "dst": "10.0.0.1:53", "packets": 1, "bytes": 189, "tcp_flags": 0,
               "icmp_type": 0, "icmp_code": 0})
    );
    // ... and an IPv6 ICMPv6 one (i = 126).
    assert_eq!(
        doc["rows"][3],
        json!({"id": 127, "timestamp": T + 126, "timestamp_ns": (T + 126) * SEC + 123_456_789,
               "direction": "ingress", "interface": "eth0", "proto": "ICMPv6", "src": "[fd00::1]:0",
               "dst": "[fd00::2]:0", "packets": 1, "bytes": 186, "tcp_flags": 0,
               "icmp_type": 128, "icmp_code": 0})
    );
    // Every row, field by field.
    let all = s.ok_json("/api/history?limit=10000").await;
    let want: Vec<Value> = raw
        .iter()
        .enumerate()
        .rev()
        .map(|(i, p)| raw_json(i as u64 + 1, p))
        .collect();
    assert_eq!(all["rows"], Value::Array(want));
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(s.ok_json("/api/history?kind=raw").await, doc);
}

#[tokio::test]
async fn history_aggregated_rows_and_the_agents_default_kind() {
    let windows = window_rows();
    for (kind, query) in [
        (HistoryKind::Raw, "?kind=aggregated"),
        (HistoryKind::Aggregated, ""),
    ] {
        let s = start(Setup {
            raw: raw_rows(5),
            windows: windows.clone(),
            history_kind: kind,
            ..Setup::default()
        })
        .await;
        let doc = s.ok_json(&format!("/api/history{query}")).await;
        assert_eq!(doc["kind"], "aggregated", "{query}");
        assert_eq!(
            doc["rows"][0],
            json!({"id": 12, "window_start": T + 660, "window_end": T + 720,
                   "direction": "egress", "interface": "eth0", "proto": "TCP", "src": "[fd00::2]:50000",
                   "dst": "[fd00::3]:8080", "packets": 12, "bytes": 1200})
        );
        let want: Vec<Value> = windows
            .iter()
            .enumerate()
            .rev()
            .map(|(i, w)| window_json(i as u64 + 1, w))
            .collect();
        assert_eq!(doc["rows"], Value::Array(want));
        assert_eq!(doc["next_cursor"], Value::Null);
        // The other table is still reachable by name.
        let raw = s.ok_json("/api/history?kind=raw").await;
        assert_eq!(raw["kind"], "raw");
        assert_eq!(ids(&raw), [5, 4, 3, 2, 1]);
    }
}

#[tokio::test]
async fn history_filters_match_the_fixture() {
    // Some rows seen on a pod's veth rather than eth0 (rows 2, 7, 12, ... and odd windows),
    // so that `interface=` has something to tell apart: the same connections on two
    // interfaces are two keys.
    let on = |name: &str| ayaflow::ifname::InterfaceId::intern(name);
    let raw: Vec<Packet> = raw_rows(130)
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            if i % 5 == 1 {
                p.tuple.interface = on("veth-pod1");
            }
            p
        })
        .collect();
    let windows: Vec<WindowRow> = window_rows()
        .into_iter()
        .enumerate()
        .map(|(i, mut w)| {
            if i % 4 == 3 {
                w.tuple.interface = on("veth-pod1");
            }
            w
        })
        .collect();
    let on_iface = |t: &FiveTuple, name: &str| &*t.interface.name() == name;
    let s = start(Setup {
        raw: raw.clone(),
        windows: windows.clone(),
        ..Setup::default()
    })
    .await;
    let secs = |p: &Packet| p.ts_unix_ns / SEC;
    let has_addr = |t: &FiveTuple, a: &str| t.src == ip(a) || t.dst == ip(a);
    let has_port = |t: &FiveTuple, port: u16| t.src_port == port || t.dst_port == port;
    type RawCase = (String, Box<dyn Fn(&Packet) -> bool>);
    let cases: Vec<RawCase> = vec![
        (
            format!("from={}&to={}", T + 10, T + 20),
            Box::new(move |p| (T + 10..T + 20).contains(&secs(p))),
        ),
        (
            format!("from={}", T + 100),
            Box::new(move |p| secs(p) >= T + 100),
        ),
        (format!("to={}", T + 7), Box::new(move |p| secs(p) < T + 7)),
        (format!("from={0}&to={0}", T + 7), Box::new(|_| false)),
        (
            "addr=10.0.0.1".into(),
            Box::new(move |p| has_addr(&p.tuple, "10.0.0.1")),
        ),
        (
            "addr=10.0.0.2".into(),
            Box::new(move |p| has_addr(&p.tuple, "10.0.0.2")),
        ),
        (
            "addr=fd00::2".into(),
            Box::new(move |p| has_addr(&p.tuple, "fd00::2")),
        ),
        // Any spelling of an address finds its rows.
        (
            "addr=fd00:0:0:0::2".into(),
            Box::new(move |p| has_addr(&p.tuple, "fd00::2")),
        ),
        ("addr=192.0.2.1".into(), Box::new(|_| false)),
        (
            "port=443".into(),
            Box::new(move |p| has_port(&p.tuple, 443)),
        ),
        (
            "port=5353".into(),
            Box::new(move |p| has_port(&p.tuple, 5353)),
        ),
        ("port=53".into(), Box::new(move |p| has_port(&p.tuple, 53))),
        (
            "port=40003".into(),
            Box::new(move |p| has_port(&p.tuple, 40_003)),
        ),
        (
            "proto=TCP".into(),
            Box::new(|p| p.tuple.proto == Protocol::Tcp),
        ),
        (
            "proto=udp".into(),
            Box::new(|p| p.tuple.proto == Protocol::Udp),
        ),
        (
            "proto=ICMPv6".into(),
            Box::new(|p| p.tuple.proto == Protocol::Icmpv6),
        ),
        ("proto=ICMP".into(), Box::new(|_| false)),
        (
            "interface=veth-pod1".into(),
            Box::new(move |p| on_iface(&p.tuple, "veth-pod1")),
        ),
        (
            "interface=eth0".into(),
            Box::new(move |p| on_iface(&p.tuple, "eth0")),
        ),
        // Exactly the name: no prefix or pattern.
        ("interface=veth".into(), Box::new(|_| false)),
        ("interface=veth-pod*".into(), Box::new(|_| false)),
        (
            "interface=veth-pod1&proto=UDP".into(),
            Box::new(move |p| on_iface(&p.tuple, "veth-pod1") && p.tuple.proto == Protocol::Udp),
        ),
        (
            "direction=ingress".into(),
            Box::new(|p| p.direction == Direction::Ingress),
        ),
        (
            "direction=egress".into(),
            Box::new(|p| p.direction == Direction::Egress),
        ),
        (
            format!("proto=TCP&direction=egress&addr=fd00::3&from={}", T + 50),
            Box::new(move |p| {
                p.tuple.proto == Protocol::Tcp
                    && p.direction == Direction::Egress
                    && has_addr(&p.tuple, "fd00::3")
                    && secs(p) >= T + 50
            }),
        ),
    ];
    for (query, keep) in &cases {
        let want: Vec<u64> = (1..=raw.len() as u64)
            .rev()
            .filter(|&id| keep(&raw[id as usize - 1]))
            .collect();
        assert!(want.len() < raw.len(), "{query} must filter something out");
        let doc = s
            .ok_json(&format!("/api/history?limit=10000&{query}"))
            .await;
        assert_eq!(ids(&doc), want, "{query}");
        assert_eq!(doc["next_cursor"], Value::Null, "{query}");
    }
    let doc = s
        .ok_json("/api/history?limit=10000&interface=veth-pod1")
        .await;
    let rows = doc["rows"].as_array().expect("rows");
    assert!(!rows.is_empty() && rows.iter().all(|r| r["interface"] == "veth-pod1"));

    type WindowCase = (String, Box<dyn Fn(&WindowRow) -> bool>);
    let start_s = |w: &WindowRow| w.window_start_unix as u64;
    let cases: Vec<WindowCase> = vec![
        (
            format!("from={}&to={}", T + 120, T + 300),
            Box::new(move |w| (T + 120..T + 300).contains(&start_s(w))),
        ),
        (
            "addr=10.0.0.3".into(),
            Box::new(move |w| has_addr(&w.tuple, "10.0.0.3")),
        ),
        (
            "port=8080".into(),
            Box::new(move |w| has_port(&w.tuple, 8080)),
        ),
        (
            "proto=UDP".into(),
            Box::new(|w| w.tuple.proto == Protocol::Udp),
        ),
        (
            "direction=ingress".into(),
            Box::new(|w| w.direction == Direction::Ingress),
        ),
        (
            "interface=veth-pod1".into(),
            Box::new(move |w| on_iface(&w.tuple, "veth-pod1")),
        ),
    ];
    for (query, keep) in &cases {
        let want: Vec<u64> = (1..=windows.len() as u64)
            .rev()
            .filter(|&id| keep(&windows[id as usize - 1]))
            .collect();
        assert!(!want.is_empty() && want.len() < windows.len(), "{query}");
        let doc = s
            .ok_json(&format!("/api/history?kind=aggregated&{query}"))
            .await;
        assert_eq!(doc["kind"], "aggregated");
        assert_eq!(ids(&doc), want, "kind=aggregated&{query}");
    }
}

/// Follows `next_cursor` from the first page of `query`; returns every page's ids.
pub(crate) async fn walk(s: &Server, query: &str) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
        let doc = s.ok_json(&format!("/api/history?{query}{cursor}")).await;
        let page = ids(&doc);
        pages.push(page.clone());
        assert!(pages.len() <= 1000, "paging does not end");
        match doc["next_cursor"].as_u64() {
            None => {
                assert_eq!(doc["next_cursor"], Value::Null);
                return pages;
            }
            Some(next) => {
                assert_eq!(page.last(), Some(&next), "the cursor is the page's last id");
                before = Some(next);
            }
        }
    }
}

#[tokio::test]
async fn history_pages_through_every_row_with_the_cursor() {
    let raw = raw_rows(130);
    let s = start(Setup {
        raw: raw.clone(),
        ..Setup::default()
    })
    .await;
    let pages = walk(&s, "limit=7").await;
    assert_eq!(pages.len(), 130usize.div_ceil(7));
    assert!(pages[..pages.len() - 1].iter().all(|p| p.len() == 7));
    let all: Vec<u64> = pages.concat();
    assert_eq!(all, (1..=130).rev().collect::<Vec<u64>>());

    // With a filter, pages hold only matching rows and still cover all of them.
    let tcp: Vec<u64> = (1..=130u64)
        .rev()
        .filter(|&id| raw[id as usize - 1].tuple.proto == Protocol::Tcp)
        .collect();
    let pages = walk(&s, "limit=5&proto=TCP").await;
    assert_eq!(pages.concat(), tcp);
    assert!(pages.iter().all(|p| p.len() <= 5));

    // An exact multiple of the limit ends with next_cursor null, not an empty page.
    let pages = walk(&s, "limit=10&to=1700000020").await;
    assert_eq!(pages.len(), 2);
    assert_eq!(pages.concat(), (1..=20).rev().collect::<Vec<u64>>());

    let doc = s.ok_json("/api/history?before=50&limit=3").await;
    assert_eq!(ids(&doc), [49, 48, 47]);
    assert_eq!(doc["next_cursor"], 47);
    let doc = s.ok_json("/api/history?before=1").await;
    assert_eq!(ids(&doc), Vec::<u64>::new());
    assert_eq!(doc["next_cursor"], Value::Null);
}

#[tokio::test]
async fn history_limit_is_capped_at_10000() {
    let s = start(Setup {
        raw: raw_rows(10_050),
        ..Setup::default()
    })
    .await;
    let doc = s.ok_json("/api/history?limit=10000").await;
    let page = ids(&doc);
    assert_eq!(page.len(), 10_000);
    assert_eq!(page.first(), Some(&10_050));
    assert_eq!(doc["next_cursor"], 51);
    let doc = s.ok_json("/api/history?limit=10000&before=51").await;
    assert_eq!(ids(&doc).len(), 50);
    assert_eq!(doc["next_cursor"], Value::Null);
    let reply = s.get("/api/history?limit=10001").await;
    let v = assert_error(&reply, 400, "limit");
    assert!(
        v["hint"].as_str().is_some_and(|h| h.contains("10000")),
        "{v}"
    );
}

#[tokio::test]
async fn history_queries_beyond_the_concurrency_bound_get_503() {
    let s = start(Setup {
        raw: raw_rows(3),
        ..Setup::default()
    })
    .await;
    // Stand-ins for queries that are still running.
    let running = s
        .state
        .history_slots
        .clone()
        .try_acquire_many_owned(MAX_CONCURRENT_QUERIES as u32)
        .expect("all slots are free");
    let reply = s.get("/api/history").await;
    assert_error(&reply, 503, "history queries running");
    assert_eq!(s.state.stats.history_rejected.load(Ordering::Relaxed), 1);
    drop(running);
    assert_eq!(ids(&s.ok_json("/api/history").await), [3, 2, 1]);
    assert_eq!(
        s.state.history_slots.available_permits(),
        MAX_CONCURRENT_QUERIES,
        "a finished query gives its slot back"
    );
}

#[tokio::test]
async fn history_failure_is_a_json_500_and_counted() {
    let s = start(Setup {
        missing_db: true,
        ..Setup::default()
    })
    .await;
    let reply = s.get("/api/history").await;
    // The cause names a file of the node: it goes to the log, the client gets a request id.
    let v = assert_error(&reply, 500, "internal error (request ");
    assert!(!reply.body.contains("missing.db"), "{}", reply.body);
    let id = v["error"]
        .as_str()
        .unwrap()
        .trim_start_matches("internal error (request ")
        .trim_end_matches(')');
    assert!(id.parse::<u64>().is_ok(), "{v}");
    assert_eq!(
        v["hint"],
        format!("the agent's log says what failed: look for request={id}")
    );
    assert_eq!(s.state.stats.internal_errors.load(Ordering::Relaxed), 1);
    let text = s.get("/metrics").await.body;
    assert!(
        text.contains("\nayaflow_api_internal_errors_total 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_panicking_handler_ends_only_its_own_request() {
    let s = start(Setup {
        broken_live: true,
        raw: raw_rows(3),
        ..Setup::default()
    })
    .await;
    for _ in 0..3 {
        let answer = s.client.get(s.url("/api/live")).send().await;
        assert!(answer.is_err(), "the broken request gets no answer");
    }
    assert_eq!(s.get("/healthz").await.status, 200);
    assert_eq!(ids(&s.ok_json("/api/history").await), [3, 2, 1]);
    assert!(!s.task.is_finished(), "the server is still serving");
}
