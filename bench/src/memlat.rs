//! Section 1, second table: what one random memory access costs on this machine, by the size
//! of the table it lands in. A flow table hit by packets of many flows in turn (the capture
//! bench sends its flows round-robin) costs at least one such access per packet, so this is
//! the floor under flow mode's cost per packet at 100,000 flows, whatever the table's design.
//!
//! Method: a pointer chase (each load's address is the previous load's value, so loads cannot
//! overlap) through a random cyclic permutation of the 64-byte lines of a buffer in 4 KiB
//! pages (`MADV_NOHUGEPAGE`), the pages BPF maps are made of (vmalloc).

use std::time::Instant;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// One buffer size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// What a table of this size would hold.
    pub what: String,
    /// Flows of that table, and bytes per flow.
    pub flows: u32,
    pub entry_bytes: u32,
    /// Median nanoseconds per dependent load.
    pub ns: f64,
}

impl Row {
    pub fn bytes(&self) -> usize {
        self.flows as usize * self.entry_bytes as usize
    }
}

/// Bytes per flow of the smallest entry that holds an IPv4 key (addresses, ports, protocol:
/// 13 B) and its packed counts (8 B), padded to a multiple of 8; and the same for IPv6 (37 B).
pub const MIN_ENTRY_V4: u32 = 24;
pub const MIN_ENTRY_V6: u32 = 48;
/// ayaFlow's slot (`ayaflow_common::flow::FlowSlot`).
pub const SLOT: u32 = 64;

const LINE: usize = 64;

/// The tables measured: 1,000 and 100,000 flows in ayaFlow's slots, and 100,000 flows in the
/// smallest entries that hold their keys and counts.
pub fn tables() -> Vec<(String, u32, u32)> {
    vec![
        ("1,000 flows, ayaFlow's 64-byte slots".into(), 1_000, SLOT),
        (
            "100,000 flows, smallest IPv4 entry (13-byte key + 8-byte counts)".into(),
            100_000,
            MIN_ENTRY_V4,
        ),
        (
            "100,000 flows, smallest IPv6 entry (37-byte key + 8-byte counts)".into(),
            100_000,
            MIN_ENTRY_V6,
        ),
        (
            "100,000 flows, ayaFlow's 64-byte slots".into(),
            100_000,
            SLOT,
        ),
    ]
}

/// Measures every table of [`tables`], median of `runs` chases of `loads` loads each.
pub fn run(loads: usize, runs: usize) -> Result<Vec<Row>> {
    tables()
        .into_iter()
        .map(|(what, flows, entry_bytes)| {
            let ns: Vec<f64> = (0..runs)
                .map(|_| chase(flows as usize * entry_bytes as usize, loads))
                .collect::<Result<_>>()?;
            Ok(Row {
                what,
                flows,
                entry_bytes,
                ns: crate::median(&ns),
            })
        })
        .collect()
}

/// The measured cost for a table of `flows` x `entry_bytes`.
pub fn lookup(rows: &[Row], flows: u32, entry_bytes: u32) -> Option<f64> {
    rows.iter()
        .find(|r| r.flows == flows && r.entry_bytes == entry_bytes)
        .map(|r| r.ns)
}

/// Nanoseconds per load of a chase through `bytes` (rounded up to whole lines).
fn chase(bytes: usize, loads: usize) -> Result<f64> {
    let lines = bytes.div_ceil(LINE).max(2);
    let len = lines * LINE;
    // SAFETY: a fresh private anonymous mapping, unmapped below; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        bail!("mmap of {len} bytes: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the mapping above; advice only.
    unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
    let buf = base.cast::<u8>();
    let order = permutation(lines);
    for (i, &line) in order.iter().enumerate() {
        let next = order[(i + 1) % lines];
        // SAFETY: both lines are in the mapping; each line's first word holds the address of
        // the next line of the cycle.
        unsafe {
            buf.add(line * LINE)
                .cast::<usize>()
                .write(buf.add(next * LINE) as usize)
        };
    }
    let mut p = buf.cast::<usize>();
    // One lap to fault the pages in and warm the caches as far as they go.
    for _ in 0..lines {
        // SAFETY: every line's first word is the address of a line of the mapping.
        p = unsafe { p.read_volatile() } as *mut usize;
    }
    let t = Instant::now();
    for _ in 0..loads {
        // SAFETY: as above.
        p = unsafe { p.read_volatile() } as *mut usize;
    }
    let ns = t.elapsed().as_nanos() as f64 / loads as f64;
    std::hint::black_box(p);
    // SAFETY: unmaps exactly the mapping made above.
    unsafe { libc::munmap(base, len) };
    Ok(ns)
}

/// A random order of `0..n` (Fisher-Yates with a fixed-seed xorshift: the same every run).
fn permutation(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_one_of_each() {
        let mut v = permutation(1000);
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn chase_measures_something() {
        let ns = chase(64 * 1024, 100_000).unwrap();
        assert!(ns > 0.0 && ns.is_finite());
    }
}
