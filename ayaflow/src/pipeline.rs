//! Fans captured packets out: to the live connection table (always), to the IPFIX export (when
//! configured), and to storage, either raw (one row per event) or through the window
//! aggregator.
//!
//! Backpressure: the capture path never waits on storage. Batches go to the storage queue with
//! `try`-semantics (DropNewest, counted in `ayaflow_storage_rows_dropped_total`). The table is
//! behind a `std::sync::Mutex`: this module holds it for the in-memory update of one batch,
//! but the API's top-N (`/api/live`, each stream frame) walks the whole table under it, so a
//! batch can wait for one such walk (milliseconds at 100,000 connections); the kernel never
//! waits, the ring buffer absorbs it.

use std::sync::{
    Arc, LazyLock, Mutex,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    aggregate::Aggregator,
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
}

/// Where packets go after capture.
#[derive(Clone)]
pub struct Pipeline {
    pub table: Arc<Mutex<ConnectionTable>>,
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
        {
            let mut table = lock(&self.table);
            for p in batch {
                table.record(p);
            }
        }
        if let Some(ipfix) = &self.ipfix {
            ipfix.packets(batch);
        }
        match &self.aggregator {
            Some(agg) => {
                let mut agg = lock(agg);
                for p in batch {
                    agg.add(
                        p.tuple,
                        p.direction,
                        p.ts_unix_ns,
                        p.packets as u64,
                        p.bytes as u64,
                    );
                }
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
    /// Periodic work: closes idle connections and hands finished windows to storage.
    pub fn tick(&self, now_unix_ns: u64) {
        lock(&self.table).expire(now_unix_ns);
        if let Some(ipfix) = &self.ipfix {
            ipfix.tick(now_unix_ns);
        }
        if let Some(agg) = &self.aggregator {
            let rows = lock(agg).take_closed(now_unix_ns);
            if !rows.is_empty() {
                self.storage.send_windows(rows);
            }
        }
    }

    /// Flow mode: applies one sweep's deltas to the table and the current windows.
    pub fn deltas<'a>(&self, deltas: impl Iterator<Item = &'a FlowDelta> + Clone) {
        if deltas.clone().next().is_none() {
            return;
        }
        {
            let mut table = lock(&self.table);
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
            for d in deltas {
                agg.add(
                    d.tuple,
                    d.direction,
                    d.last_seen_unix_ns,
                    d.packets,
                    d.bytes,
                );
            }
        }
    }

    /// At shutdown, after the last packets are in: hands the current, partial window to
    /// storage, and every open flow's final record to the IPFIX exporter.
    pub fn flush(&self) {
        if let Some(ipfix) = &self.ipfix {
            ipfix.finish();
        }
        if let Some(agg) = &self.aggregator {
            let rows = lock(agg).take_all();
            if !rows.is_empty() {
                self.storage.send_windows(rows);
            }
        }
    }
}
