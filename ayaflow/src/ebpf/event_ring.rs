//! The `EVENTS` ring buffer as the agent reads it: its data pages mapped once.
//!
//! Why not aya's `RingBuf`: it maps the data pages twice, back to back (the kernel's layout,
//! so that a record that runs past the end reads on contiguously), and the kernel populates
//! every page of the mapping at `mmap`. With the default 8 MiB ring that is 16 MiB of RSS
//! before the first packet, for pages that exist once (in the kernel, charged to the agent's
//! memory cgroup once). Mapped once, the ring costs what it is; the rare record that wraps
//! (events are a few dozen bytes, the ring megabytes) is copied into a small buffer.
//!
//! It also publishes the consumer position once per [`PUBLISH_BYTES`] read (and whenever it
//! catches up) rather than after every record: the kernel reads that position on every
//! reservation, so a store per record moved its cache line between the reader's CPU and every
//! producing CPU once per packet. Records stay valid until the position passing them is
//! published, so a record returned by [`EventRing::next_record`] may be read until the next call.
//!
//! The layout and protocol are the kernel's (`kernel/bpf/ringbuf.c`): a read-write page holding
//! the consumer position, then a read-only page holding the producer position, then the data
//! pages; each record is an 8-byte header (`len` with a busy and a discard bit, then a page
//! offset the reader does not need), 8-byte aligned.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::MapData;

use super::mapping::{Mapping, page_size};

/// Set in a record's length while its producer has not committed it.
const BUSY_BIT: u32 = 1 << 31;
/// Set in a record's length if its producer discarded it: skipped.
const DISCARD_BIT: u32 = 1 << 30;
/// A record's header: its length word and the kernel's page offset.
const HEADER: usize = 8;

/// Bytes read before the consumer position is published (also published whenever the reader
/// catches up): 1/128 of the default ring, so the space it holds back is negligible. A ring
/// smaller than 8 times this publishes every eighth of itself instead.
pub const PUBLISH_BYTES: usize = 64 * 1024;

/// The ring buffer map, mapped for reading (see the module docs).
#[derive(Debug)]
pub struct EventRing {
    /// Keeps the map, and so the mappings, alive; its fd is what epoll waits on.
    map: MapData,
    /// The consumer page, read-write.
    consumer: Mapping,
    /// The producer page followed by the data pages, once, read-only.
    producer: Mapping,
    /// Size of the data area, a power of two.
    size: usize,
    /// Size of a page: where the data starts in `producer`.
    page: usize,
    /// Bytes read between two publications ([`PUBLISH_BYTES`] or an eighth of the ring).
    publish_every: usize,
    /// Position of the next record to read (a byte count that only grows, as the kernel's).
    pos: usize,
    /// Last position published to the kernel.
    published: usize,
    /// Last producer position read: more is certainly there while `pos` is below it.
    producer_pos: usize,
    /// Where a record that wraps past the end of the data area is put back together.
    wrapped: Vec<u8>,
}

impl EventRing {
    /// Maps `map`, which must be a `BPF_MAP_TYPE_RINGBUF`, and starts reading where its
    /// consumer position stands (not at zero: a pinned ring is read on from where the last
    /// agent stopped).
    pub fn new(map: MapData) -> io::Result<EventRing> {
        let info = map
            .info()
            .map_err(|e| io::Error::other(format!("reading the ring buffer's size: {e}")))?;
        let size = info.max_entries() as usize;
        let page = page_size();
        if !size.is_power_of_two() || !size.is_multiple_of(page) {
            return Err(io::Error::other(format!(
                "the ring buffer's size {size} is not a power of two multiple of the page size"
            )));
        }
        let fd = map.fd().as_fd();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let consumer = Mapping::new(fd, page, rw, 0, "the ring buffer's consumer page")?;
        let producer = Mapping::new(fd, page + size, libc::PROT_READ, page, "the ring buffer")?;
        let pos = position(&consumer).load(Ordering::Acquire);
        let producer_pos = position(&producer).load(Ordering::Acquire);
        Ok(EventRing {
            map,
            consumer,
            producer,
            size,
            page,
            publish_every: PUBLISH_BYTES.min(size / 8),
            pos,
            published: pos,
            producer_pos,
            wrapped: Vec::new(),
        })
    }

    /// The next committed record, or `None` if none is committed yet (a record still being
    /// written stops the reader: records are consumed in order). The returned bytes stay
    /// valid until the next call.
    pub fn next_record(&mut self) -> Option<&[u8]> {
        loop {
            if self.pos - self.published >= self.publish_every {
                self.publish();
            }
            if self.pos == self.producer_pos {
                // Refresh only when caught up with the last reading: one shared load per
                // stretch of records rather than per record.
                self.producer_pos = position(&self.producer).load(Ordering::Acquire);
                if self.pos == self.producer_pos {
                    self.publish();
                    return None;
                }
            }
            let offset = self.pos & (self.size - 1);
            // SAFETY: `offset` is 8-aligned and below `size`, and `size` is a multiple of 8, so
            // the header lies whole inside the data area, which follows the producer page.
            let header = unsafe { &*self.data().add(offset).cast::<AtomicU32>() };
            // The kernel commits with a fully ordered exchange: acquire, so the record's bytes
            // are visible once its busy bit is seen clear.
            let word = header.load(Ordering::Acquire);
            if word & BUSY_BIT != 0 {
                self.publish();
                return None;
            }
            let len = (word & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if len > self.size - HEADER {
                // Only a kernel that broke the layout could write this; reading on would read
                // garbage as records.
                panic!(
                    "ring buffer record of {len} bytes in a {} byte ring",
                    self.size
                );
            }
            let start = self.pos + HEADER;
            self.pos += (HEADER + len).next_multiple_of(8);
            if word & DISCARD_BIT != 0 {
                continue;
            }
            return Some(self.record(start, len));
        }
    }

    /// Tells the kernel that everything before the read position may be reused.
    pub fn publish(&mut self) {
        if self.published != self.pos {
            // Release: the kernel reuses the space only after it sees this, so every read of
            // the records before it is done first.
            position(&self.consumer).store(self.pos, Ordering::Release);
            self.published = self.pos;
        }
    }

    /// Bytes of records written and not yet read, as of the last look at the producer.
    pub fn pending_bytes(&self) -> usize {
        self.producer_pos - self.pos
    }

    /// The `len` bytes at position `start`, put together if they wrap.
    fn record(&mut self, start: usize, len: usize) -> &[u8] {
        let offset = start & (self.size - 1);
        let data = self.data();
        if offset + len <= self.size {
            // SAFETY: inside the data area; the kernel does not reuse it before `publish`,
            // which needs `&mut self` and so cannot run while the slice is borrowed.
            unsafe { std::slice::from_raw_parts(data.add(offset), len) }
        } else {
            let first = self.size - offset;
            self.wrapped.clear();
            // SAFETY: the record's tail from `offset` to the end, then its rest from the start.
            unsafe {
                self.wrapped
                    .extend_from_slice(std::slice::from_raw_parts(data.add(offset), first));
                self.wrapped
                    .extend_from_slice(std::slice::from_raw_parts(data, len - first));
            }
            &self.wrapped
        }
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the producer mapping is one page, then `size` bytes of data.
        unsafe { self.producer.ptr().cast_const().add(self.page) }
    }
}

impl AsFd for EventRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// The position word at the start of a consumer or producer page.
fn position(page: &Mapping) -> &AtomicUsize {
    // SAFETY: both pages start with the kernel's `unsigned long` position, page-aligned, and
    // live as long as the mapping.
    unsafe { &*page.ptr().cast::<AtomicUsize>() }
}
