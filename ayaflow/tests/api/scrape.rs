//! GET /metrics

use super::*;

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_the_documented_names_and_types() {
    let s = start(Setup::default()).await;
    // Something for the API counters to count.
    assert_eq!(s.get("/api/live?limit=x").await.status, 400);
    // What Prometheus sends: OpenMetrics first (see metrics::tests for the negotiation).
    let reply = send(s.client.get(s.url("/metrics")).header(
        "accept",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    ))
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(reply.content_type, metrics::OPENMETRICS_CONTENT_TYPE);
    let text = &reply.body;
    assert!(text.ends_with("# EOF\n"), "{text}");

    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{text}"));
    let types: BTreeMap<&str, OpenMetricsType> = parsed
        .families
        .values()
        .map(|f| (f.family_name.as_str(), f.family_type))
        .collect();
    let counters = [
        "ayaflow_packets",
        "ayaflow_bytes",
        "ayaflow_parse_errors",
        "ayaflow_ringbuf_drops",
        "ayaflow_flow_fallbacks",
        "ayaflow_protocol_packets",
        "ayaflow_interface_attach_failures",
        "ayaflow_kernel_read_errors",
        "ayaflow_connection_table_overflow_packets",
        "ayaflow_connection_table_overflow_connections",
        "ayaflow_connection_table_lock_waits",
        "ayaflow_connection_table_deferred_updates",
        "ayaflow_connections_closed",
        "ayaflow_events",
        "ayaflow_events_malformed",
        "ayaflow_window_overflow_packets",
        "ayaflow_storage_rows_written",
        "ayaflow_storage_rows_dropped",
        "ayaflow_storage_errors",
        "ayaflow_storage_reopens",
        "ayaflow_storage_undecodable_blocks",
        "ayaflow_retention_deleted_rows",
        "ayaflow_api_denied",
        "ayaflow_api_unauthorized",
        "ayaflow_api_internal_errors",
        "ayaflow_api_connection_cap_reached",
        "ayaflow_api_history_rejected",
        "ayaflow_stream_rejected",
        "ayaflow_stream_refused_origin",
        "ayaflow_stream_frames_skipped",
        "ayaflow_stream_clients_dropped",
    ];
    let gauges = [
        "ayaflow_interfaces_attached",
        "ayaflow_active_connections",
        "ayaflow_window_rows",
        "ayaflow_storage_queued_rows",
        "ayaflow_stream_clients",
        "ayaflow_api_connections",
    ];
    let want: BTreeMap<&str, OpenMetricsType> = counters
        .iter()
        .map(|&n| (n, OpenMetricsType::Counter))
        .chain(gauges.iter().map(|&n| (n, OpenMetricsType::Gauge)))
        .collect();
    assert_eq!(types, want);
    for family in parsed.families.values() {
        assert!(
            family.help.len() > 10,
            "{} has no real HELP text: {:?}",
            family.family_name,
            family.help
        );
        let help_line = format!("# HELP {} {}\n", family.family_name, family.help);
        assert!(text.contains(&help_line), "missing {help_line:?}");
    }

    // The three families the documented queries use, sample by sample.
    let value = |family: &str, labels: &[(&str, &str)]| -> f64 {
        let f = &parsed.families[family];
        let sample = f
            .iter_samples()
            .find(|s| {
                let set = s.get_labelset().expect("bound to its family");
                labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .unwrap_or_else(|| panic!("{family}{labels:?} missing"));
        match &sample.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            other => panic!("{family}: unexpected value {other:?}"),
        }
    };
    for (d, packets, bytes) in KERNEL {
        let dir = direction_name(d);
        assert_eq!(
            value("ayaflow_packets", &[("direction", dir)]),
            packets as f64
        );
        assert_eq!(value("ayaflow_bytes", &[("direction", dir)]), bytes as f64);
        // PromQL sees the `_total` name: rate(ayaflow_packets_total[1m]).
        assert!(
            text.contains(&format!(
                "\nayaflow_packets_total{{direction=\"{dir}\",interface=\"eth0\"}} {packets}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "\nayaflow_bytes_total{{direction=\"{dir}\",interface=\"eth0\"}} {bytes}\n"
            )),
            "{text}"
        );
        assert_eq!(value("ayaflow_ringbuf_drops", &[("direction", dir)]), 3.0);
    }
    assert_eq!(value("ayaflow_active_connections", &[]), 3.0);
    assert!(text.contains("\nayaflow_active_connections 3\n"), "{text}");
    assert_eq!(value("ayaflow_events", &[]), 42.0);
    assert_eq!(value("ayaflow_api_denied", &[]), 0.0);
}
