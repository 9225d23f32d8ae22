//! GET /api/live

use super::*;

#[tokio::test]
async fn live_exact_json() {
    let s = start(Setup::default()).await;
    let mut doc = s.ok_json("/api/live").await;
    let time_ms = doc
        .as_object_mut()
        .and_then(|o| o.remove("time_ms"))
        .and_then(|t| t.as_u64())
        .expect("time_ms is a number");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    assert!(
        now_ms.abs_diff(time_ms) < 60_000,
        "time_ms {time_ms}, now {now_ms}"
    );
    let want = json!({
        "connections": [
            {"connection": {"src": "192.168.1.5:443", "dst": "10.0.0.2:34560", "proto": "TCP", "interface": "eth0"},
             "stats": {"packets_count": 4, "bytes_count": 3060,
                       "first_seen": T, "last_seen": T + 5,
                       "ingress_packets": 3, "ingress_bytes": 3000,
                       "egress_packets": 1, "egress_bytes": 60}},
            {"connection": {"src": "[fd00::1]:5353", "dst": "[fd00::2]:53", "proto": "UDP", "interface": "eth0"},
             "stats": {"packets_count": 2, "bytes_count": 200,
                       "first_seen": T + 2, "last_seen": T + 3,
                       "ingress_packets": 0, "ingress_bytes": 0,
                       "egress_packets": 2, "egress_bytes": 200}},
            {"connection": {"src": "10.0.0.9:0", "dst": "10.0.0.1:0", "proto": "ICMP", "interface": "eth0"},
             "stats": {"packets_count": 1, "bytes_count": 84,
                       "first_seen": T + 4, "last_seen": T + 4,
                       "ingress_packets": 1, "ingress_bytes": 84,
                       "egress_packets": 0, "egress_bytes": 0}},
        ],
        "total_packets": TOTALS.0,
        "total_bytes": TOTALS.1,
        // The fixed kernel readings (server.rs KERNEL), as /metrics has them.
        "directions": {"ingress": {"packets": 7_000, "bytes": 5_000_000},
                       "egress": {"packets": 5_050, "bytes": 3_504_320}},
        "protocols": {"tcp": 0, "udp": 0, "icmp": 0, "other_ip": 0, "non_ip": 0},
        // 3 ring-buffer drops per hook; no IPFIX export, so no IPFIX counter.
        "losses": {"ayaflow_ringbuf_drops_total": 6,
                   "ayaflow_connection_table_overflow_packets_total": 0,
                   "ayaflow_events_malformed_total": 0,
                   "ayaflow_storage_rows_dropped_total": 0,
                   "ayaflow_storage_errors_total": 0,
                   "ayaflow_storage_undecodable_blocks_total": 0,
                   "ayaflow_kernel_read_errors_total": 0,
                   "ayaflow_stream_frames_skipped_total": 0,
                   "ayaflow_stream_clients_dropped_total": 0},
    });
    assert_eq!(doc, want);
}

#[tokio::test]
async fn live_sort_keys_order_the_small_table() {
    let s = start(Setup::default()).await;
    let protos = |doc: Value| -> Vec<String> {
        doc["connections"]
            .as_array()
            .expect("connections is an array")
            .iter()
            .map(|c| c["connection"]["proto"].as_str().expect("proto").to_owned())
            .collect()
    };
    for (query, want) in [
        ("", ["TCP", "UDP", "ICMP"]),
        ("?sort=packets", ["TCP", "UDP", "ICMP"]),
        ("?sort=bytes", ["TCP", "UDP", "ICMP"]),
        ("?sort=last_seen", ["TCP", "ICMP", "UDP"]),
        ("?sort=first_seen", ["ICMP", "UDP", "TCP"]),
    ] {
        let got = protos(s.ok_json(&format!("/api/live{query}")).await);
        assert_eq!(got, want, "/api/live{query}");
    }
    let one = s.ok_json("/api/live?limit=1&sort=first_seen").await;
    assert_eq!(protos(one), ["ICMP"]);
}

#[tokio::test]
async fn live_default_limit_is_50_and_each_sort_key_ranks_all_60() {
    let (packets, models) = many_connections();
    let s = start(Setup {
        live: packets,
        ..Setup::default()
    })
    .await;
    let ports = |doc: &Value| -> Vec<u64> {
        doc["connections"]
            .as_array()
            .expect("connections is an array")
            .iter()
            .map(|c| {
                let src = c["connection"]["src"].as_str().expect("src");
                src.rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("src ends in :port")
            })
            .collect()
    };
    let expect = |key: fn(&Model) -> u64, n: usize| -> Vec<u64> {
        let mut m = models.clone();
        m.sort_by_key(|x| std::cmp::Reverse(key(x)));
        m.iter().take(n).map(|x| u64::from(x.src_port)).collect()
    };

    let doc = s.ok_json("/api/live").await;
    assert_eq!(doc["connections"].as_array().map(Vec::len), Some(50));
    assert_eq!(ports(&doc), expect(|m| m.packets, 50));
    let first = &doc["connections"][0]["stats"];
    let top = models.iter().max_by_key(|m| m.packets).expect("60 models");
    assert_eq!(first["packets_count"], top.packets);
    assert_eq!(first["bytes_count"], top.bytes);
    assert_eq!(first["first_seen"], top.first_seen);
    assert_eq!(first["last_seen"], top.last_seen);

    type SortCase = (&'static str, fn(&Model) -> u64);
    let keys: [SortCase; 4] = [
        ("packets", |m| m.packets),
        ("bytes", |m| m.bytes),
        ("first_seen", |m| m.first_seen),
        ("last_seen", |m| m.last_seen),
    ];
    let mut orders = BTreeSet::new();
    for (name, key) in keys {
        let doc = s
            .ok_json(&format!("/api/live?sort={name}&limit=1000"))
            .await;
        let got = ports(&doc);
        assert_eq!(got.len(), 60, "sort={name}: all 60 fit in limit=1000");
        assert_eq!(got, expect(key, 60), "sort={name}");
        orders.insert(got);
        let doc = s.ok_json(&format!("/api/live?sort={name}")).await;
        assert_eq!(ports(&doc), expect(key, 50), "sort={name}, default limit");
    }
    assert_eq!(orders.len(), 4, "each sort key gives its own order");

    for (limit, n) in [(1, 1), (7, 7), (50, 50), (59, 59), (60, 60), (1000, 60)] {
        let doc = s.ok_json(&format!("/api/live?limit={limit}")).await;
        assert_eq!(ports(&doc), expect(|m| m.packets, n), "limit={limit}");
    }
}
