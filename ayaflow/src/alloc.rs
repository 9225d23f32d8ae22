//! Gives the memory the allocator holds free back to the system.

/// Returns the heap's free pages to the system (glibc's `malloc_trim`; elsewhere nothing).
///
/// Why: glibc gives freed memory back only from the top of a heap. Loading the kernel program
/// reads and parses the kernel's BTF (5 MB here), freed once the program is loaded but below
/// allocations that stay, so without this an idle agent kept about 2 MiB it never used again
/// (measured: idle RSS 20.6 MiB, 18.6 after); the live table's expiry of many connections at
/// once is the other such moment. Costs a walk of every arena's free lists (milliseconds at
/// most): call it after such a one-off, never on the capture path.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases pages of free chunks.
    unsafe {
        libc::malloc_trim(0);
    }
}
