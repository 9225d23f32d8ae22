//! IPFIX export (RFC 7011): every flow's counts, as delta records, to the collectors a cluster
//! already runs (nfcapd/nfdump, goflow2, akvorado, pmacct's nfacctd, ntopng, ipfixcol2).
//!
//! - `cache`: per connection and direction, what was counted since its last record, and when
//!   the next one is due (active and idle timeouts, FIN/RST, shutdown).
//! - `template`: the IPv4 and IPv6 templates and the encoding of one record.
//! - `message`: records packed into messages of at most one MTU, with sequence numbers.
//! - `export`: the UDP exporter task, one session per collector, with its counters.
//!
//! The pipeline feeds the cache what it feeds the live table, so a flow's records sum to what
//! ayaFlow counted for it. Capture never waits for the export: records due go to a bounded
//! queue, and what does not fit is counted as dropped. In flow mode the cost is per flow and
//! sweep, not per packet.

mod cache;
mod export;
mod message;
pub mod template;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

pub use cache::{FlowCache, Observation};
pub use export::{CollectorStats, DropReason};
pub use message::MIN_MTU;

use crate::{
    ebpf::sweep::FlowDelta,
    flow::{FiveTuple, Packet},
    ifname::IfindexNames,
    sync::lock,
};

/// Records waiting for the exporter, at most (about 25 MiB): a minute of 4,000 records a
/// second, far more than a collector outage costs, since records are dropped, not queued, while
/// a collector is down.
const MAX_QUEUED_RECORDS: u64 = 1 << 18;

/// How often the cache is checked for records due (timeouts are in seconds).
const EXPIRY_PERIOD_NS: u64 = 1_000_000_000;

/// Why a record was sent (IANA `flowEndReason`, element 136).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    /// No packet for the idle timeout.
    Idle = 1,
    /// The flow lasted the active timeout since its last record (it goes on).
    Active = 2,
    /// A FIN or RST ended the flow.
    EndOfFlow = 3,
    /// The agent stopped.
    Forced = 4,
    /// The cache was full: the counts were sent at once.
    LackOfResources = 5,
}

/// One data record: a flow direction's counts since its previous record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub tuple: FiveTuple,
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub ingress_interface: u32,
    pub egress_interface: u32,
    /// IANA `flowDirection`: 0 ingress, 1 egress.
    pub flow_direction: u8,
    pub start_ms: u64,
    pub end_ms: u64,
    pub end_reason: EndReason,
    /// 0 when untagged or not known (flow mode keeps no VLAN per flow).
    pub vlan_id: u16,
}

/// What the export needs from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    /// `host:port` of each collector.
    pub collectors: Vec<String>,
    pub active_timeout: Duration,
    pub idle_timeout: Duration,
    pub template_refresh: Duration,
    pub observation_domain: u32,
    /// Largest message, in bytes.
    pub mtu: usize,
    /// Flows the cache holds at most.
    pub max_flows: usize,
}

/// A stable observation domain id for this node: FNV-1a of its host name (on a DaemonSet with
/// `hostNetwork`, the node's name), so a collector tells nodes apart across restarts.
pub fn default_observation_domain() -> u32 {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        &buf[..end]
    } else {
        &b"ayaflow"[..]
    };
    name.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The running export: the cache the pipeline feeds, and the queue to the exporter task.
pub struct IpfixExport {
    cache: Mutex<FlowCache>,
    /// Next expiry, Unix nanoseconds.
    next_expiry_ns: AtomicU64,
    queue: Mutex<Option<mpsc::Sender<Vec<FlowRecord>>>>,
    queued: Arc<AtomicU64>,
    queue_full: AtomicBool,
    collectors: Vec<Arc<CollectorStats>>,
}

impl IpfixExport {
    /// Starts the exporter task. `names`: the index of each record's interface, reported as
    /// its ingress or egress interface.
    pub fn start(
        config: &ExportConfig,
        names: IfindexNames,
    ) -> (Arc<IpfixExport>, tokio::task::JoinHandle<()>) {
        let collectors: Vec<_> = config
            .collectors
            .iter()
            .map(|c| Arc::new(CollectorStats::new(c)))
            .collect();
        // Batches, not records, are queued; MAX_QUEUED_RECORDS bounds what they hold.
        let (tx, rx) = mpsc::channel(1024);
        let queued = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(export::run(
            rx,
            queued.clone(),
            collectors.clone(),
            config.mtu,
            config.observation_domain,
            config.template_refresh,
        ));
        let export = IpfixExport {
            cache: Mutex::new(FlowCache::new(
                config.max_flows,
                config.active_timeout.as_nanos() as u64,
                config.idle_timeout.as_nanos() as u64,
                names,
            )),
            next_expiry_ns: AtomicU64::new(0),
            queue: Mutex::new(Some(tx)),
            queued,
            queue_full: AtomicBool::new(false),
            collectors,
        };
        (Arc::new(export), task)
    }

    /// Every collector's counters.
    pub fn collectors(&self) -> &[Arc<CollectorStats>] {
        &self.collectors
    }

    /// Raw mode: a batch of packets, as the live table got it.
    pub fn packets(&self, batch: &[Packet]) {
        let mut cache = lock(&self.cache);
        for p in batch {
            cache.add(&Observation {
                tuple: p.tuple,
                direction: p.direction,
                packets: u64::from(p.packets),
                bytes: u64::from(p.bytes),
                first_ns: p.ts_unix_ns,
                last_ns: p.ts_unix_ns,
                tcp_flags: p.tcp_flags,
                icmp_type: p.icmp_type,
                icmp_code: p.icmp_code,
                vlan_id: p.vlan_id,
            });
        }
    }

    /// Flow mode: one sweep's deltas, as the live table got them.
    pub fn deltas<'a>(&self, deltas: impl Iterator<Item = &'a FlowDelta>) {
        let mut cache = lock(&self.cache);
        for d in deltas {
            cache.add(&Observation {
                tuple: d.tuple,
                direction: d.direction,
                packets: d.packets,
                bytes: d.bytes,
                first_ns: d.first_seen_unix_ns,
                last_ns: d.last_seen_unix_ns,
                tcp_flags: d.tcp_flags,
                icmp_type: d.icmp_type,
                icmp_code: d.icmp_code,
                vlan_id: 0,
            });
        }
    }

    /// Periodic: queues the records due (at most once a second).
    pub fn tick(&self, now_ns: u64) {
        if now_ns < self.next_expiry_ns.load(Ordering::Relaxed) {
            return;
        }
        self.next_expiry_ns
            .store(now_ns + EXPIRY_PERIOD_NS, Ordering::Relaxed);
        let mut due = Vec::new();
        lock(&self.cache).take_due(now_ns, &mut due);
        self.enqueue(due);
    }

    /// At shutdown, after the last packets are in: every open flow's final record, then the
    /// queue is closed and the exporter task ends once it has sent what is queued.
    pub fn finish(&self) {
        let mut all = Vec::new();
        lock(&self.cache).take_all(&mut all);
        self.enqueue(all);
        lock(&self.queue).take();
    }

    fn enqueue(&self, records: Vec<FlowRecord>) {
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        let queue = lock(&self.queue);
        let Some(tx) = queue.as_ref() else { return };
        // Counted before the send: the exporter subtracts as soon as it receives.
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before + n <= MAX_QUEUED_RECORDS && tx.try_send(records).is_ok() {
            if self.queue_full.swap(false, Ordering::Relaxed) {
                tracing::info!("IPFIX export queue has room again");
            }
            return;
        }
        self.queued.fetch_sub(n, Ordering::Relaxed);
        for c in &self.collectors {
            c.add_dropped(DropReason::QueueFull, n);
        }
        if !self.queue_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "IPFIX export queue full ({MAX_QUEUED_RECORDS} records): the exporter fell \
                 behind; records are counted in ayaflow_ipfix_records_dropped_total{{reason=\"queue_full\"}}"
            );
        }
    }
}
