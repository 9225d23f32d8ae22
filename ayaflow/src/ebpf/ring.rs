//! Drains the `EVENTS` ring buffer without busy polling: epoll readiness through `AsyncFd`,
//! then every available record in batches of up to [`BATCH`] packets.
//!
//! Backpressure: the kernel never waits. If this reader falls behind, the ring buffer fills and
//! the kernel counts each lost event (`Counter::RingbufDrops`); totals stay exact.

use tokio::io::{Interest, unix::AsyncFd};

use super::event_ring::EventRing;
use crate::{clock::clock_ns, decode, flow::Packet, ifname::IfindexNames};

/// Packets handed to the sink at once: large enough to amortise locking downstream, small
/// enough to keep latency to the live view low.
pub const BATCH: usize = 4096;

/// CLOCK_BOOTTIME now, the kernel program's clock (`bpf_ktime_get_boot_ns`).
pub fn boot_time_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// Records one [`drain`] hands on at most. Under sustained overload the ring never empties, and
/// a drain that read until it did would never give the runtime back: the timer, shutdown and,
/// on a busy runtime, the API's tasks would wait behind it. 16 batches are a few milliseconds.
pub const DRAIN_LIMIT: usize = 16 * BATCH;

/// Nanoseconds to add to CLOCK_BOOTTIME to get Unix time. Read again for every drain: the
/// system clock can be stepped (NTP, an operator) while the boot clock runs on, and an offset
/// taken once at start would date every later packet by the old clock (the live table would
/// then expire every connection at once after a step forward).
pub fn boot_to_unix_offset_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME).saturating_sub(boot_time_ns())
}

/// Receives decoded batches. Called on the reader task: it must not block for long.
pub trait PacketSink: Send {
    fn packets(&mut self, batch: &[Packet]);
    /// Records that were not a valid event (wrong length): a kernel/agent mismatch.
    fn malformed(&mut self, count: u64);
}

/// How often the ring is drained without a wake-up. The kernel submits events without waking
/// the reader until a quarter of the ring is waiting (`globals::WAKEUP_BYTES`): at 1 Mpps a
/// 10 ms period leaves about 720 KB in an 8 MiB ring, and replaces up to a wake-up per packet
/// by a hundred a second.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// [`DRAIN_INTERVAL`] in flow mode, where events are only the connections the flow table had
/// no slot for: rare, so ten timer wake-ups a second instead of a hundred (a burst still wakes
/// the reader at a quarter of the ring).
pub const FLOW_MODE_DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads until `shutdown` resolves, then drains what is left once and returns. Besides
/// wake-ups, drains every `drain_interval` ([`DRAIN_INTERVAL`] or
/// [`FLOW_MODE_DRAIN_INTERVAL`]).
pub async fn run(
    ring: EventRing,
    names: &IfindexNames,
    sink: &mut impl PacketSink,
    shutdown: impl std::future::Future<Output = ()>,
    drain_interval: std::time::Duration,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd lives
    // (the AsyncFd owns the ring buffer), which is what `register_with_interest` requires.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut batch = Vec::with_capacity(BATCH);
    tokio::pin!(shutdown);
    let mut timer = tokio::time::interval(drain_interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                if drain(guard.get_inner_mut(), names, &mut batch, sink, DRAIN_LIMIT) == Drained::All {
                    guard.clear_ready();
                } else {
                    // More is waiting: readiness stays set, so the loop comes back to it once
                    // the other tasks (and the timer and shutdown arms) had their turn.
                    drop(guard);
                    tokio::task::yield_now().await;
                }
            }
            _ = timer.tick() => {
                drain(fd.get_mut(), names, &mut batch, sink, DRAIN_LIMIT);
            }
            () = &mut shutdown => {
                while drain(fd.get_mut(), names, &mut batch, sink, DRAIN_LIMIT) == Drained::Limit {}
                return Ok(());
            }
        }
    }
}

/// Whether a [`drain`] emptied the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// The ring had no record left.
    All,
    /// Stopped at the limit: more records may be waiting.
    Limit,
}

/// Hands up to `limit` of the records now in `ring` to `sink`, in batches; `names` says which
/// interface each key's ifindex is.
pub fn drain(
    ring: &mut EventRing,
    names: &IfindexNames,
    batch: &mut Vec<Packet>,
    sink: &mut impl PacketSink,
    limit: usize,
) -> Drained {
    let offset = boot_to_unix_offset_ns();
    let mut malformed = 0;
    let mut taken = 0;
    let mut drained = Drained::All;
    let mut names = names.reader();
    loop {
        if taken == limit {
            drained = Drained::Limit;
            break;
        }
        let Some(item) = ring.next_record() else {
            break;
        };
        taken += 1;
        match decode::packet_event(item) {
            Some(e) => batch.push(Packet::from_event(&e, offset, names.get(e.key.ifindex))),
            None => malformed += 1,
        }
        if batch.len() == BATCH {
            sink.packets(batch);
            batch.clear();
        }
    }
    // Stopped at the limit, the reader has not caught up and so has not published yet.
    ring.publish();
    if !batch.is_empty() {
        sink.packets(batch);
        batch.clear();
    }
    if malformed > 0 {
        sink.malformed(malformed);
    }
    drained
}
