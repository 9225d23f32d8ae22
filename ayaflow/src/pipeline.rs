//! Fans captured packets out: to the live connection table (always), to the IPFIX export (when
//! configured), and to storage, either raw (one row per event) or through the window
//! aggregator.
//!
//! Backpressure: the capture path never waits on storage. Batches go to the storage queue with
//! `try`-semantics (DropNewest, counted in `ayaflow_storage_rows_dropped_total`). The table
//! locks one shard per packet (`connections`), and where a reader or expiry holds that shard,
//! capture leaves the update in the shard's inbox for whoever locks the shard next to apply,
//! rather than wait (`ayaflow_connection_table_deferred_updates_total`); it waits only when the
//! bounded inboxes are full (`ayaflow_connection_table_lock_waits_total`). The kernel never
//! waits, the ring buffer absorbs it.

use std::sync::{
    Arc, LazyLock, Mutex,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    aggregate::{Aggregator, WindowRow},
    connections::ConnectionTable,
    ebpf::{ring::PacketSink, sweep::FlowDelta},
    flow::Packet,
    ipfix::IpfixExport,
    ratelimit::RateLimit,
    storage::{LOG_PERIOD, StorageSender},
    sync::lock,
};

/// Counters of the pipeline itself.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Events decoded from the ring buffer (each may carry several GSO segments).
    pub events: AtomicU64,
    /// Ring-buffer records of the wrong size (a kernel/agent mismatch).
    pub malformed: AtomicU64,
    /// Packets added to a window's overflow row because the aggregator was full.
    pub window_overflow_packets: AtomicU64,
    /// Entries of the open windows, after the last batch (a gauge).
    pub window_entries: AtomicU64,
}

/// Where packets go after capture.
#[derive(Clone)]
pub struct Pipeline {
    pub table: Arc<ConnectionTable>,
    /// Set in aggregated mode; raw rows otherwise.
    pub aggregator: Option<Arc<Mutex<Aggregator>>>,
    /// False in flow mode without a window: there is no per-packet row to store.
    pub store_raw: bool,
    pub storage: StorageSender,
    /// Set when IPFIX collectors are configured: fed what the table is fed.
    pub ipfix: Option<Arc<IpfixExport>>,
    pub stats: Arc<PipelineStats>,
}

impl PacketSink for Pipeline {
    fn packets(&mut self, batch: &[Packet]) {
        self.stats
            .events
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.table.record_batch(batch);
        if let Some(ipfix) = &self.ipfix {
            ipfix.packets(batch);
        }
        match &self.aggregator {
            Some(agg) => {
                let mut agg = lock(agg);
                let mut overflow = 0;
                for p in batch {
                    if agg.add(
                        p.tuple,
                        p.direction,
                        p.ts_unix_ns,
                        p.packets as u64,
                        p.bytes as u64,
                    ) {
                        overflow += p.packets as u64;
                    }
                }
                self.windows_added(&agg, overflow);
            }
            None if self.store_raw => {
                self.storage.send_packets(batch.to_vec());
            }
            None => {}
        }
    }

    fn malformed(&mut self, count: u64) {
        self.stats.malformed.fetch_add(count, Ordering::Relaxed);
        // A mismatched kernel object makes every drain find some: one line per period says it.
        static LOG: LazyLock<RateLimit> = LazyLock::new(|| RateLimit::new(LOG_PERIOD));
        if let Some(suppressed) = LOG.ready() {
            tracing::error!(
                suppressed,
                "{count} ring-buffer records had the wrong size: the kernel object does not match \
                 this agent (counted in ayaflow_events_malformed_total)"
            );
        }
    }
}

impl Pipeline {
    /// Periodic work: closes idle connections and ages the IPFIX cache. Blocking (a pass over
    /// the table, one shard at a time): run it off the async workers.
    pub fn tick(&self, now_unix_ns: u64) {
        self.table.expire(now_unix_ns);
        if let Some(ipfix) = &self.ipfix {
            ipfix.tick(now_unix_ns);
        }
    }

    /// Takes the rows of every window that has ended, for [`StorageSender::send_windows_within`]
    /// (empty without an aggregator).
    pub fn closed_windows(&self, now_unix_ns: u64) -> Vec<WindowRow> {
        let Some(agg) = &self.aggregator else {
            return Vec::new();
        };
        let mut agg = lock(agg);
        let rows = agg.take_closed(now_unix_ns);
        self.stats
            .window_entries
            .store(agg.len() as u64, Ordering::Relaxed);
        rows
    }

    /// Flow mode: applies one sweep's deltas to the table and the current windows.
    pub fn deltas<'a>(&self, deltas: impl Iterator<Item = &'a FlowDelta> + Clone) {
        if deltas.clone().next().is_none() {
            return;
        }
        {
            let table = &self.table;
            for d in deltas.clone() {
                table.record_delta(
                    d.tuple,
                    d.direction,
                    d.packets,
                    d.bytes,
                    d.first_seen_unix_ns,
                    d.last_seen_unix_ns,
                    d.tcp_flags,
                );
            }
        }
        if let Some(ipfix) = &self.ipfix {
            ipfix.deltas(deltas.clone());
        }
        if let Some(agg) = &self.aggregator {
            let mut agg = lock(agg);
            let mut overflow = 0;
            for d in deltas {
                if agg.add(
                    d.tuple,
                    d.direction,
                    d.last_seen_unix_ns,
                    d.packets,
                    d.bytes,
                ) {
                    overflow += d.packets;
                }
            }
            self.windows_added(&agg, overflow);
        }
    }

    /// After a batch went into the windows: the gauge, and `overflow` packets counted (and
    /// said, at most once per period) if the aggregator was full.
    fn windows_added(&self, agg: &Aggregator, overflow: u64) {
        let s = &self.stats;
        s.window_entries.store(agg.len() as u64, Ordering::Relaxed);
        if overflow == 0 {
            return;
        }
        s.window_overflow_packets
            .fetch_add(overflow, Ordering::Relaxed);
        static LOG: LazyLock<RateLimit> = LazyLock::new(|| RateLimit::new(LOG_PERIOD));
        if let Some(suppressed) = LOG.ready() {
            tracing::warn!(
                suppressed,
                max_entries = agg.max_entries(),
                overflow_packets_total = s.window_overflow_packets.load(Ordering::Relaxed),
                "the open windows hold as many keys as aggregation_max_rows allows: packets of \
                 new keys go into each window's overflow row (protocol IP-255, 0.0.0.0:0 -> \
                 0.0.0.0:0), totals stay exact; raise --aggregation-max-rows to keep them apart"
            );
        }
    }

    /// At shutdown, after the last packets are in: hands every open flow's final record to the
    /// IPFIX exporter, and returns every window's rows, the current, partial one included, for
    /// [`StorageSender::send_windows_within`].
    pub fn flush(&self) -> Vec<WindowRow> {
        if let Some(ipfix) = &self.ipfix {
            ipfix.finish();
        }
        match &self.aggregator {
            Some(agg) => lock(agg).take_all(),
            None => Vec::new(),
        }
    }
}
