//! Store: round trips and JSON shapes

use super::*;

#[test]
fn raw_rows_round_trip_with_the_documented_json_shape() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let mut syn = packet(
        tuple(Protocol::Tcp, "10.0.0.1", 40_000, "10.0.0.2", 80),
        Direction::Ingress,
        T * SEC + 123_456_789,
    );
    syn.bytes = 60;
    syn.tcp_flags = 0x02;
    syn.flags = 1;
    syn.vlan_id = 12;
    let mut ping = packet(
        tuple(Protocol::Icmpv6, "fe80::1", 0, "fd00::1", 0),
        Direction::Egress,
        (T + 1) * SEC,
    );
    ping.packets = 2;
    ping.bytes = 208;
    ping.icmp_type = 128;
    store.insert_packets(&[syn, ping]).expect("insert");

    let page = store
        .query_history(&HistoryQuery::default())
        .expect("query");
    assert_eq!(
        serde_json::to_value(&page).expect("serialises"),
        json!({
            "rows": [
                {"id": 2, "timestamp": T + 1, "timestamp_ns": (T + 1) * SEC,
                 "direction": "egress", "interface": "", "proto": "ICMPv6", "src": "[fe80::1]:0",
                 "dst": "[fd00::1]:0", "packets": 2, "bytes": 208, "tcp_flags": 0,
                 "icmp_type": 128, "icmp_code": 0},
                {"id": 1, "timestamp": T, "timestamp_ns": T * SEC + 123_456_789,
                 "direction": "ingress", "interface": "", "proto": "TCP", "src": "10.0.0.1:40000",
                 "dst": "10.0.0.2:80", "packets": 1, "bytes": 60, "tcp_flags": 2,
                 "icmp_type": 0, "icmp_code": 0},
            ],
            "next_cursor": null,
        })
    );
    // Fields the JSON leaves out still round-trip through the typed rows.
    match page.rows[1] {
        HistoryRow::Raw(r) => assert_eq!(r.packet, syn),
        other => panic!("expected a raw row, got {other:?}"),
    }
}

#[test]
fn aggregated_rows_have_the_documented_json_shape() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let w = WindowRow {
        window_start_unix: T as i64,
        window_end_unix: T as i64 + 60,
        tuple: tuple(Protocol::Udp, "10.0.0.3", 5353, "224.0.0.251", 5353),
        direction: Direction::Egress,
        packets: 10,
        bytes: 1200,
    };
    store.insert_windows(&[w]).expect("insert");
    let q = HistoryQuery {
        kind: HistoryKind::Aggregated,
        ..HistoryQuery::default()
    };
    let page = store.query_history(&q).expect("query");
    assert_eq!(
        serde_json::to_value(&page).expect("serialises"),
        json!({
            "rows": [{"id": 1, "window_start": T, "window_end": T + 60, "direction": "egress", "interface": "",
                      "proto": "UDP", "src": "10.0.0.3:5353", "dst": "224.0.0.251:5353",
                      "packets": 10, "bytes": 1200}],
            "next_cursor": null,
        })
    );
    // Raw queries do not see windows.
    assert!(query(&store, HistoryQuery::default()).is_empty());
}

#[test]
fn aggregated_sums_match_what_went_in_including_late_packets() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let mut agg = Aggregator::new(Duration::from_secs(60), 1_000_000);
    let tuples = [
        tuple(Protocol::Tcp, "10.0.0.1", 40_000, "10.0.0.2", 443),
        tuple(Protocol::Udp, "fd00::1", 546, "ff02::1:2", 547),
        tuple(Protocol::Icmp, "10.0.0.1", 0, "8.8.8.8", 0),
    ];
    let mut want: HashMap<(FiveTuple, u8), (u64, u64)> = HashMap::new();
    for i in 0..1_000u64 {
        let t = tuples[(i % 3) as usize];
        let d = if i % 2 == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        // Every 10th packet is 5 minutes late: its window has already been written.
        let ts = if i % 10 == 9 {
            (T + i - 300) * SEC
        } else {
            (T + i) * SEC
        };
        agg.add(t, d, ts, i % 4 + 1, 100 + i);
        let e = want.entry((t, d as u8)).or_default();
        e.0 += i % 4 + 1;
        e.1 += 100 + i;
        if i % 50 == 0 {
            store
                .insert_windows(&agg.take_closed((T + i) * SEC))
                .expect("insert");
        }
    }
    store.insert_windows(&agg.take_all()).expect("insert");

    let mut got: HashMap<(FiveTuple, u8), (u64, u64)> = HashMap::new();
    let mut q = HistoryQuery {
        kind: HistoryKind::Aggregated,
        limit: 7,
        ..HistoryQuery::default()
    };
    loop {
        let page = store.query_history(&q).expect("query");
        for row in &page.rows {
            let HistoryRow::Aggregated(w) = row else {
                panic!("expected window rows, got {row:?}");
            };
            let w = w.window;
            assert_eq!(w.window_end_unix - w.window_start_unix, 60);
            assert_eq!(w.window_start_unix % 60, 0);
            let e = got.entry((w.tuple, w.direction as u8)).or_default();
            e.0 += w.packets;
            e.1 += w.bytes;
        }
        match page.next_cursor {
            Some(c) => q.before_id = Some(c),
            None => break,
        }
    }
    assert_eq!(got, want);
}
