//! The catalogue of the agent's metrics: every family's name, type and help text, and the
//! readings they are computed from at scrape time.
//!
//! The stats structs stay with the modules that produce them (the API's, the table's, the
//! pipeline's, storage's); this module reads them as plain values and hands
//! [`crate::metrics`] families to encode, so the encoder depends on no producer and no producer
//! on the encoder's users.

use std::sync::{Arc, atomic::Ordering};

use ayaflow_common::{counters::Counter, flow::Direction};

use crate::{
    api::ApiStats,
    connections::{LOCK_WAIT_BOUNDS_US, LockWaitStats, TableStats},
    ebpf::counters::Totals,
    flow::direction_name,
    interfaces::follow::{FailureReason, FollowStats},
    ipfix::{CollectorStats, DropReason as ExportDropReason},
    metrics::{Family, Kind},
    pipeline::PipelineStats,
    storage::{DropReason, StorageStatsSnapshot},
    store::ErrorKind,
};

/// What the agent's metrics are read from, gathered once per scrape.
pub struct Readings<'a> {
    /// The kernel's per-CPU counters summed, per interface name; `None` if reading them
    /// failed, in which case their families are left out of this scrape (Prometheus then sees
    /// a gap, not a wrong value) and `kernel_read_errors` says why.
    pub kernel: Option<Vec<(Arc<str>, Totals)>>,
    /// The link follower's counters.
    pub interfaces: &'a FollowStats,
    /// Scrapes that could not read the kernel's counters, so far.
    pub kernel_read_errors: u64,
    /// Connections in the live table now.
    pub active_connections: u64,
    /// The live table's lifetime counters.
    pub table: TableStats,
    /// How long capture waited for the live table's locks.
    pub lock_waits: LockWaitStats,
    /// Ring-buffer events read and malformed.
    pub pipeline: &'a PipelineStats,
    /// The storage writer's counters.
    pub storage: StorageStatsSnapshot,
    /// The API's counters.
    pub api: &'a ApiStats,
    /// Each IPFIX collector's counters (none when the export is off).
    pub ipfix: &'a [Arc<CollectorStats>],
}

/// Every metric family of the agent, from `r`. Counters are named without `_total` (the
/// encoder appends it); every loss and failure has its own counter.
pub fn agent_families(r: &Readings<'_>) -> Vec<Family> {
    let mut out = Vec::new();
    if let Some(per_interface) = &r.kernel {
        let per_direction = |c: Counter| -> Vec<(Vec<(&'static str, String)>, u64)> {
            per_interface
                .iter()
                .flat_map(|(name, t)| {
                    Direction::ALL.iter().map(move |&d| {
                        (
                            vec![
                                ("direction", direction_name(d).to_string()),
                                ("interface", name.to_string()),
                            ],
                            t.get(d, c),
                        )
                    })
                })
                .collect()
        };
        // The ring buffer and the flow table are shared by every interface: their losses are
        // labelled by direction only, which keeps a scrape smaller on a node with many pods.
        let node_wide = |c: Counter| -> Vec<(Vec<(&'static str, String)>, u64)> {
            Direction::ALL
                .iter()
                .map(|&d| {
                    let sum = per_interface.iter().map(|(_, t)| t.get(d, c)).sum();
                    (vec![("direction", direction_name(d).to_string())], sum)
                })
                .collect()
        };
        let kernel = [
            (
                "ayaflow_packets",
                "Packets seen by the TC hooks (GSO segments counted one by one), exact.",
                Counter::Packets,
            ),
            (
                "ayaflow_bytes",
                "Bytes on the wire seen by the TC hooks, exact.",
                Counter::Bytes,
            ),
            (
                "ayaflow_parse_errors",
                "Frames the kernel parser could not fully read (still counted in packets).",
                Counter::ParseErrors,
            ),
            (
                "ayaflow_ringbuf_drops",
                "Packet events lost because the ring buffer was full; raise --ring-buffer-size.",
                Counter::RingbufDrops,
            ),
            (
                "ayaflow_flow_fallbacks",
                "Flow mode: packets sent as events because the flow table had no free slot for them; raise --flow-map-size.",
                Counter::FlowFallbacks,
            ),
        ];
        for (name, help, c) in kernel {
            out.push(Family {
                name,
                help,
                kind: Kind::Counter,
                samples: match c {
                    Counter::RingbufDrops | Counter::FlowFallbacks => node_wide(c),
                    _ => per_direction(c),
                },
            });
        }
        let mut samples = Vec::new();
        for (name, t) in per_interface {
            for d in Direction::ALL {
                for (label, c) in [
                    ("tcp", Counter::Tcp),
                    ("udp", Counter::Udp),
                    ("icmp", Counter::Icmp),
                    ("other_ip", Counter::OtherIp),
                    ("non_ip", Counter::NonIp),
                ] {
                    samples.push((
                        vec![
                            ("direction", direction_name(d).to_string()),
                            ("interface", name.to_string()),
                            ("protocol", label.to_string()),
                        ],
                        t.get(d, c),
                    ));
                }
            }
        }
        out.push(Family {
            name: "ayaflow_protocol_packets",
            help: "Packets by protocol, direction and interface.",
            kind: Kind::Counter,
            samples,
        });
    }
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    out.push(Family {
        name: "ayaflow_interface_attach_failures",
        help: "Interfaces the selection matched but the program could not observe, by reason: \
               unsupported_link_type (skipped), no_slot (too many interfaces), already_attached \
               (another ayaflow), error (see the log and /api/status).",
        kind: Kind::Counter,
        samples: FailureReason::ALL
            .iter()
            .zip(&r.interfaces.failures)
            .map(|(reason, n)| (vec![("reason", reason.label().to_string())], load(n)))
            .collect(),
    });
    let single = [
        (
            "ayaflow_interfaces_attached",
            "Interfaces the program is attached to now.",
            Kind::Gauge,
            load(&r.interfaces.attached),
        ),
        (
            "ayaflow_kernel_read_errors",
            "Scrapes that could not read the kernel counters (their families were left out); see the log.",
            Kind::Counter,
            r.kernel_read_errors,
        ),
        (
            "ayaflow_active_connections",
            "Connections in the live table.",
            Kind::Gauge,
            r.active_connections,
        ),
        (
            "ayaflow_connection_table_overflow_packets",
            "Packets of new connections refused because the table was full; raise --max-connections.",
            Kind::Counter,
            r.table.overflow_packets,
        ),
        (
            "ayaflow_connection_table_overflow_connections",
            "New connections refused because the table was full; raise --max-connections.",
            Kind::Counter,
            r.table.overflow_connections,
        ),
        (
            "ayaflow_connections_closed",
            "Connections closed (timeout, FIN from both sides, or RST).",
            Kind::Counter,
            r.table.closed_total,
        ),
        (
            "ayaflow_events",
            "Packet events read from the ring buffer.",
            Kind::Counter,
            load(&r.pipeline.events),
        ),
        (
            "ayaflow_events_malformed",
            "Ring-buffer records of the wrong size (kernel/agent mismatch).",
            Kind::Counter,
            load(&r.pipeline.malformed),
        ),
        (
            "ayaflow_window_overflow_packets",
            "Packets added to a window's overflow row (protocol IP-255, 0.0.0.0:0 -> 0.0.0.0:0) because the open windows held --aggregation-max-rows keys; totals stay exact.",
            Kind::Counter,
            load(&r.pipeline.window_overflow_packets),
        ),
        (
            "ayaflow_window_rows",
            "Rows (tuple and direction) held by the open aggregation windows; at most --aggregation-max-rows plus two overflow rows per window.",
            Kind::Gauge,
            load(&r.pipeline.window_entries),
        ),
        (
            "ayaflow_storage_rows_written",
            "History rows committed to SQLite.",
            Kind::Counter,
            r.storage.rows_written,
        ),
    ];
    for (name, help, kind, value) in single {
        out.push(Family::single(name, help, kind, value));
    }
    lock_wait_families(&r.lock_waits, &mut out);
    out.push(Family {
        name: "ayaflow_storage_rows_dropped",
        help: "History rows dropped, by reason (never silently).",
        kind: Kind::Counter,
        samples: DropReason::ALL
            .iter()
            .map(|&reason| {
                (
                    vec![("reason", reason.label().to_string())],
                    r.storage.rows_dropped(reason),
                )
            })
            .collect(),
    });
    out.push(Family {
        name: "ayaflow_storage_errors",
        help: "SQLite write errors, by kind.",
        kind: Kind::Counter,
        samples: ErrorKind::ALL
            .iter()
            .map(|&k| {
                (
                    vec![("kind", k.label().to_string())],
                    r.storage.write_errors(k),
                )
            })
            .collect(),
    });
    out.push(Family {
        name: "ayaflow_retention_deleted_rows",
        help: "History rows deleted, by reason: age (older than data_retention) or size (the oldest, to keep the file within max_db_bytes).",
        kind: Kind::Counter,
        samples: vec![
            (vec![("reason", "age".to_string())], r.storage.retention_deleted),
            (vec![("reason", "size".to_string())], r.storage.size_deleted),
        ],
    });
    let rest = [
        (
            "ayaflow_storage_reopens",
            "Times the storage writer reopened the database after it was removed, replaced or failed.",
            Kind::Counter,
            r.storage.reopens,
        ),
        (
            "ayaflow_storage_undecodable_blocks",
            "Newest blocks of raw rows found undecodable (a damaged file): closed, new rows went to a new block; the rows in them cannot be read.",
            Kind::Counter,
            r.storage.undecodable_blocks,
        ),
        (
            "ayaflow_storage_queued_rows",
            "Rows waiting for the storage writer.",
            Kind::Gauge,
            r.storage.queued_rows,
        ),
        (
            "ayaflow_api_denied",
            "API requests refused by allowed_ips.",
            Kind::Counter,
            load(&r.api.denied),
        ),
        (
            "ayaflow_api_unauthorized",
            "API requests refused for a missing or wrong bearer token (401).",
            Kind::Counter,
            load(&r.api.unauthorized),
        ),
        (
            "ayaflow_api_internal_errors",
            "API requests that failed inside the agent (500); see the log.",
            Kind::Counter,
            load(&r.api.internal_errors),
        ),
        (
            "ayaflow_api_connections",
            "Open HTTP connections to the API (upgraded stream clients are in ayaflow_stream_clients).",
            Kind::Gauge,
            load(&r.api.connections),
        ),
        (
            "ayaflow_api_connection_cap_reached",
            "Times the API held its connection cap when it went to accept the next connection; new clients waited to be accepted until one closed.",
            Kind::Counter,
            load(&r.api.connection_cap_reached),
        ),
        (
            "ayaflow_api_history_rejected",
            "History requests refused because too many were running (503).",
            Kind::Counter,
            load(&r.api.history_rejected),
        ),
        (
            "ayaflow_stream_clients",
            "Connected /api/stream clients.",
            Kind::Gauge,
            load(&r.api.stream_clients),
        ),
        (
            "ayaflow_stream_rejected",
            "Stream clients refused at the client cap.",
            Kind::Counter,
            load(&r.api.stream_rejected),
        ),
        (
            "ayaflow_stream_refused_origin",
            "Stream upgrades refused because a web page of another origin asked (cross-site WebSocket).",
            Kind::Counter,
            load(&r.api.stream_refused_origin),
        ),
        (
            "ayaflow_stream_frames_skipped",
            "Stream frames skipped by slow clients.",
            Kind::Counter,
            load(&r.api.stream_frames_skipped),
        ),
        (
            "ayaflow_stream_clients_dropped",
            "Stream clients dropped for not taking a frame in time.",
            Kind::Counter,
            load(&r.api.stream_dropped_slow),
        ),
    ];
    for (name, help, kind, value) in rest {
        out.push(Family::single(name, help, kind, value));
    }
    if !r.ipfix.is_empty() {
        ipfix_families(r.ipfix, &mut out);
    }
    out
}

/// The IPFIX export's families, one sample per collector (and reason).
fn ipfix_families(collectors: &[Arc<CollectorStats>], out: &mut Vec<Family>) {
    let per_collector = |f: fn(&CollectorStats) -> u64| -> Vec<(Vec<(&'static str, String)>, u64)> {
        collectors
            .iter()
            .map(|c| (vec![("collector", c.collector.clone())], f(c)))
            .collect()
    };
    out.push(Family {
        name: "ayaflow_ipfix_records_sent",
        help: "IPFIX data records sent, by collector.",
        kind: Kind::Counter,
        samples: per_collector(|c| c.records_sent.load(Ordering::Relaxed)),
    });
    out.push(Family {
        name: "ayaflow_ipfix_messages_sent",
        help: "IPFIX messages (UDP datagrams) sent, by collector.",
        kind: Kind::Counter,
        samples: per_collector(|c| c.messages_sent.load(Ordering::Relaxed)),
    });
    let mut dropped = Vec::new();
    for c in collectors {
        for reason in ExportDropReason::ALL {
            dropped.push((
                vec![
                    ("collector", c.collector.clone()),
                    ("reason", reason.label().to_string()),
                ],
                c.dropped(reason),
            ));
        }
    }
    out.push(Family {
        name: "ayaflow_ipfix_records_dropped",
        help: "IPFIX records a collector did not get: queue_full (the exporter fell behind), \
               unresolved (its name did not resolve), unreachable (sending failed).",
        kind: Kind::Counter,
        samples: dropped,
    });
}

/// The capture path's waits for the live table's shard locks: a count per duration bucket
/// (not cumulative; `up_to` is the bucket's upper bound), and the updates it left instead.
fn lock_wait_families(w: &LockWaitStats, out: &mut Vec<Family>) {
    let bound = |i: usize| match LOCK_WAIT_BOUNDS_US.get(i) {
        Some(&us) if us >= 1000 => format!("{}ms", us / 1000),
        Some(us) => format!("{us}us"),
        None => "+Inf".to_string(),
    };
    out.push(Family {
        name: "ayaflow_connection_table_lock_waits",
        help: "Times capture found a live-table shard locked (by expiry, the live ranking's copy \
               or the other capture task), by how long it waited: up_to is the bucket's upper \
               bound, buckets are not cumulative.",
        kind: Kind::Counter,
        samples: w
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| (vec![("up_to", bound(i))], n))
            .collect(),
    });
    // The longest wait (`max_ns`) stays out: an integer gauge in nanoseconds is against the
    // Prometheus naming rules (promtool: base unit seconds), and the buckets bound it.
    out.push(Family::single(
        "ayaflow_connection_table_deferred_updates",
        "Packets or flow deltas capture left for the holder of a locked live-table shard to \
         apply, rather than wait for the lock (it waits only when those inboxes are full).",
        Kind::Counter,
        w.deferred,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_kernel_counters_leave_their_families_out_and_are_counted() {
        let (pipeline, api) = (PipelineStats::default(), ApiStats::default());
        let follow = FollowStats::default();
        let readings = |kernel| Readings {
            kernel,
            interfaces: &follow,
            kernel_read_errors: 1,
            active_connections: 0,
            table: TableStats::default(),
            lock_waits: LockWaitStats::default(),
            pipeline: &pipeline,
            storage: StorageStatsSnapshot::default(),
            api: &api,
            ipfix: &[],
        };
        let names = |fams: Vec<Family>| fams.iter().map(|f| f.name).collect::<Vec<_>>();
        let with = names(agent_families(&readings(Some(vec![(
            Arc::from("eth0"),
            Totals::default(),
        )]))));
        let without = names(agent_families(&readings(None)));
        assert!(with.contains(&"ayaflow_packets") && with.contains(&"ayaflow_bytes"));
        assert!(!without.contains(&"ayaflow_packets") && !without.contains(&"ayaflow_bytes"));
        assert!(without.contains(&"ayaflow_kernel_read_errors"));
        assert!(without.contains(&"ayaflow_active_connections"));
    }

    /// The web UI's loss counters (`api::live::LOSS_COUNTERS`) and the families it charts are
    /// all in the catalogue, as counters (a renamed metric would silently vanish from it).
    #[test]
    fn the_ui_names_only_families_of_the_catalogue() {
        let (pipeline, api) = (PipelineStats::default(), ApiStats::default());
        let stats = Arc::new(CollectorStats::new("c:4739"));
        let families = agent_families(&Readings {
            kernel: Some(vec![(Arc::from("eth0"), Totals::default())]),
            interfaces: &FollowStats::default(),
            kernel_read_errors: 0,
            active_connections: 0,
            table: TableStats::default(),
            lock_waits: LockWaitStats::default(),
            pipeline: &pipeline,
            storage: StorageStatsSnapshot::default(),
            api: &api,
            ipfix: &[stats],
        });
        let charted = [
            "ayaflow_packets",
            "ayaflow_bytes",
            "ayaflow_protocol_packets",
        ];
        for name in crate::api::live::LOSS_COUNTERS.iter().chain(&charted) {
            let f = families
                .iter()
                .find(|f| f.name == *name)
                .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
            assert_eq!(f.kind, Kind::Counter, "{name}");
        }
    }
}
