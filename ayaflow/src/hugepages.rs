//! The agent's global allocator: the system allocator, plus a transparent-huge-page hint on
//! large blocks.
//!
//! Why: the storage writer's key map and the aggregator's windows are hash maps of tens of
//! megabytes, and every packet (raw mode) or every flow of a sweep (flow mode) lands on a
//! random line of them. (The live connection table is split into shards well under
//! [`HINT_FROM_BYTES`] each, so that none is locked for long: it gets no hint.) With 4 KiB pages each of those accesses also
//! misses the TLB and walks the page table; 2 MiB pages cover such a table with a few dozen TLB
//! entries. Measured (the capture bench, 100,000 flows, A/B in turns): 20 to 28 % less agent
//! CPU in raw mode, with the storage changes that came with it.
//!
//! Most distributions set `transparent_hugepage/enabled` to `madvise`, so a process gets huge
//! pages only where it asks with `madvise(MADV_HUGEPAGE)`; this asks for every block of at
//! least [`HINT_FROM_BYTES`], on the 2 MiB-aligned part of it. Where huge pages are off (or
//! memory is too fragmented for one) the kernel keeps 4 KiB pages: the page size changes speed
//! only, never what the agent computes.
//!
//! The hint does change memory use: the hinted pages are also made resident at once
//! (`MADV_POPULATE_WRITE`, Linux 5.14), so a large pre-allocated map takes its full size in RSS
//! from the start, not as it fills. That is on purpose: the memory the configuration reserves is the
//! memory the agent uses, and the huge pages are cleared when the table is allocated (at start)
//! rather than on the packet path, one fault at a time (which measured as doubling the agent's
//! CPU in flow mode at 1,000 flows over a 3-million-packet run).

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks at least this large get the hint: big enough that rounding to 2 MiB pages wastes
/// little, and that the hint's system call is rare (a few per second at most).
pub const HINT_FROM_BYTES: usize = 4 << 20;

/// The huge page size of x86-64 and of arm64 with 4 KiB base pages.
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// [`System`], with [`advise_huge_pages`] on every block of at least [`HINT_FROM_BYTES`].
pub struct HugePageHint;

// SAFETY: every method forwards to `System` with the same arguments and returns its result;
// the hint only changes how the kernel backs memory this process owns.
unsafe impl GlobalAlloc for HugePageHint {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.alloc(layout) };
        hint(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        hint(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        hint(p, new_size);
        p
    }
}

fn hint(p: *mut u8, len: usize) {
    if len >= HINT_FROM_BYTES && !p.is_null() {
        advise_huge_pages(p, len);
    }
}

/// Asks the kernel to back the 2 MiB-aligned pages inside `[p, p + len)` with transparent huge
/// pages, and makes them resident. Best effort: an error (no THP support, an old kernel) leaves
/// 4 KiB pages, faulted in as they are first written.
pub fn advise_huge_pages(p: *mut u8, len: usize) {
    if let Some((start, end)) = aligned_inside(p as usize, len) {
        let (addr, len) = (start as *mut libc::c_void, end - start);
        // SAFETY: the range lies inside a block this process allocated; neither advice changes
        // its contents or its validity (populating faults in what is not resident yet).
        unsafe {
            libc::madvise(addr, len, libc::MADV_HUGEPAGE);
            libc::madvise(addr, len, libc::MADV_POPULATE_WRITE);
        }
    }
}

/// The whole huge pages inside `[p, p + len)`, as a range of addresses, if there is one.
fn aligned_inside(p: usize, len: usize) -> Option<(usize, usize)> {
    let start = p.checked_next_multiple_of(HUGE_PAGE_BYTES)?;
    let end = p.checked_add(len)? / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    (end > start).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resident KiB and the flags of the mapping holding `p`, as `/proc/self/smaps` shows
    /// them (a hinted range is a mapping of its own, flagged `hg`: VM_HUGEPAGE).
    fn mapping(p: usize) -> (u64, String) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let (mut inside, mut rss) = (false, 0);
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&p);
            } else if inside && let Some(kib) = line.strip_prefix("Rss:") {
                rss = kib
                    .trim()
                    .trim_end_matches(" kB")
                    .parse()
                    .expect("Rss in kB");
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return (rss, flags.trim().to_owned());
            }
        }
        panic!("no mapping holds {p:#x}");
    }

    #[test]
    fn a_large_block_is_marked_for_huge_pages_and_resident_at_once() {
        let a = HugePageHint;
        let big = Layout::from_size_align(16 << 20, 8).unwrap();
        // SAFETY: a non-zero layout, freed below with the same layout.
        let p = unsafe { a.alloc(big) };
        assert!(!p.is_null());
        let (start, end) = aligned_inside(p as usize, big.size()).expect("16 MiB hold huge pages");
        // Nothing of the block was written: what is resident, the populate made so.
        let (rss_kib, flags) = mapping(start);
        // SAFETY: allocated above with this layout.
        unsafe { a.dealloc(p, big) };
        assert!(
            flags.split(' ').any(|f| f == "hg"),
            "VmFlags of a 16 MiB block: {flags}"
        );
        assert!(
            rss_kib >= ((end - start) >> 10) as u64,
            "{rss_kib} KiB resident of the {} KiB hinted",
            (end - start) >> 10
        );
    }

    #[test]
    fn only_whole_huge_pages_inside_the_block_are_hinted() {
        const H: usize = HUGE_PAGE_BYTES;
        // Aligned: the whole block.
        assert_eq!(aligned_inside(H, 2 * H), Some((H, 3 * H)));
        // One byte past a boundary: the pages after it, up to the last boundary inside.
        assert_eq!(aligned_inside(H + 1, 3 * H), Some((2 * H, 4 * H)));
        // No whole huge page inside.
        assert_eq!(aligned_inside(H + 1, H), None);
        assert_eq!(aligned_inside(H + 1, 2 * H - 2), None);
        // Never past the end of the address space.
        assert_eq!(aligned_inside(usize::MAX - H, H), None);
    }
}
