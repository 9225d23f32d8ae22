//! The exporter task: takes batches of records from a bounded queue and sends them, as IPFIX
//! messages over UDP, to every collector.
//!
//! Per collector (one transport session each): the name is resolved at start and again after
//! any failure; templates go out first, every `template_refresh`, and again after an outage;
//! sequence numbers count that collector's data records. A collector that cannot be resolved or
//! reached costs the records of that moment, counted per reason; a log line marks the start and
//! the end of each outage (one line each, however long it lasts). UDP cannot say whether a
//! datagram arrived: what the kernel reports (ICMP port unreachable, no route) is counted as
//! dropped, the rest is as reliable as the network, like every UDP exporter.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{net::UdpSocket, sync::mpsc};

use super::{FlowRecord, message::Encoder};
use crate::clock::unix_now_ns;

/// How long resolving a collector's name may take before the records of that moment count as
/// dropped (`unresolved`).
const RESOLVE_LIMIT: Duration = Duration::from_secs(2);

/// Why records did not reach a collector (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The export queue was full: the exporter fell behind (every collector loses them).
    QueueFull,
    /// The collector's name did not resolve.
    Unresolved,
    /// Sending failed (the kernel reported the collector unreachable or refusing).
    Unreachable,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::Unresolved,
        DropReason::Unreachable,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Unresolved => "unresolved",
            DropReason::Unreachable => "unreachable",
        }
    }
}

/// Counters of one collector, as `/metrics` shows them.
#[derive(Debug)]
pub struct CollectorStats {
    /// The collector as configured (`host:port`), the `collector` label.
    pub collector: String,
    pub records_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    dropped: [AtomicU64; 3],
}

impl CollectorStats {
    pub fn new(collector: &str) -> CollectorStats {
        CollectorStats {
            collector: collector.to_string(),
            records_sent: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            dropped: Default::default(),
        }
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn add_dropped(&self, reason: DropReason, records: u64) {
        self.dropped[reason as usize].fetch_add(records, Ordering::Relaxed);
    }
}

/// One collector's session.
struct Session {
    target: String,
    stats: Arc<CollectorStats>,
    socket: Option<UdpSocket>,
    encoder: Encoder,
    templates_sent: Option<Instant>,
    down: bool,
    /// Batches sent without an error in a row. A collector that is down still takes one
    /// datagram in two (the kernel reports the refusal on the next send), so it counts as back
    /// only after two clean batches.
    clean_batches: u32,
}

impl Session {
    /// A connected socket to the collector, resolving its name if there is none.
    async fn socket(&mut self) -> Result<&UdpSocket, (DropReason, String)> {
        if self.socket.is_none() {
            let addrs: Vec<SocketAddr> =
                match tokio::time::timeout(RESOLVE_LIMIT, tokio::net::lookup_host(&self.target))
                    .await
                {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(e)) => return Err((DropReason::Unresolved, e.to_string())),
                    Err(_) => {
                        return Err((
                            DropReason::Unresolved,
                            format!("no answer within {RESOLVE_LIMIT:?}"),
                        ));
                    }
                };
            let Some(addr) = addrs.first() else {
                return Err((DropReason::Unresolved, "no address".to_string()));
            };
            let local: SocketAddr = if addr.is_ipv6() {
                "[::]:0".parse().expect("a valid address")
            } else {
                "0.0.0.0:0".parse().expect("a valid address")
            };
            let s = UdpSocket::bind(local)
                .await
                .map_err(|e| (DropReason::Unreachable, e.to_string()))?;
            s.connect(addr)
                .await
                .map_err(|e| (DropReason::Unreachable, e.to_string()))?;
            self.socket = Some(s);
            // A new session (or the same collector again): templates first.
            self.templates_sent = None;
        }
        Ok(self.socket.as_ref().expect("set above"))
    }

    /// Sends `records` (and the templates when due); counts what went and what did not.
    async fn send(&mut self, records: &[FlowRecord], refresh: Duration) {
        let due = self.down || self.templates_sent.is_none_or(|t| t.elapsed() >= refresh);
        if records.is_empty() && !due {
            return;
        }
        let export_time = (unix_now_ns() / 1_000_000_000) as u32;
        let failure = match self.socket().await {
            Err((reason, why)) => {
                self.stats.add_dropped(reason, records.len() as u64);
                Some((reason, why))
            }
            Ok(_) => {
                let messages = self.encoder.encode(records, due, export_time);
                let socket = self.socket.as_ref().expect("just opened");
                let mut failure = None;
                for m in &messages {
                    if let Some((reason, _)) = &failure {
                        self.stats.add_dropped(*reason, u64::from(m.records));
                        continue;
                    }
                    match socket.send(&m.bytes).await {
                        Ok(_) => {
                            self.stats
                                .records_sent
                                .fetch_add(u64::from(m.records), Ordering::Relaxed);
                            self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.stats
                                .add_dropped(DropReason::Unreachable, u64::from(m.records));
                            failure = Some((DropReason::Unreachable, e.to_string()));
                        }
                    }
                }
                if failure.is_none() && due {
                    self.templates_sent = Some(Instant::now());
                }
                failure
            }
        };
        match failure {
            Some((_, why)) => {
                // Resolved again next time: a Service may have moved.
                self.socket = None;
                self.clean_batches = 0;
                if !self.down {
                    tracing::warn!(
                        collector = %self.target,
                        "IPFIX collector unreachable ({why}): its records are counted in \
                         ayaflow_ipfix_records_dropped_total until it is back"
                    );
                    self.down = true;
                }
            }
            None => {
                self.clean_batches = self.clean_batches.saturating_add(1);
                if self.down && self.clean_batches >= 2 {
                    tracing::info!(collector = %self.target, "IPFIX collector reachable again");
                    self.down = false;
                }
            }
        }
    }
}

/// Runs until the queue's senders are gone and everything queued is sent.
pub async fn run(
    mut queue: mpsc::Receiver<Vec<FlowRecord>>,
    queued: Arc<AtomicU64>,
    collectors: Vec<Arc<CollectorStats>>,
    mtu: usize,
    domain: u32,
    template_refresh: Duration,
) {
    let mut sessions: Vec<Session> = collectors
        .into_iter()
        .map(|stats| Session {
            target: stats.collector.clone(),
            stats,
            socket: None,
            encoder: Encoder::new(mtu, domain),
            templates_sent: None,
            down: false,
            clean_batches: 0,
        })
        .collect();
    // Templates at start, then at least every refresh (also with no traffic).
    let mut refresh = tokio::time::interval(template_refresh.min(Duration::from_secs(1)));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            b = queue.recv() => match b {
                Some(b) => b,
                None => return,
            },
            _ = refresh.tick() => Vec::new(),
        };
        queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        for s in &mut sessions {
            s.send(&batch, template_refresh).await;
        }
    }
}
