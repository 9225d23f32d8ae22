//! A BPF map's memory mapped into the agent (`mmap` of the map's fd), unmapped on drop: the
//! flow table's arrays (`sweep`) and the event ring buffer (`event_ring`) are read in place,
//! without a system call per read.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
};

/// One shared mapping of a map's fd.
#[derive(Debug)]
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, which any thread may own; its users access what
// others change through atomics. Not `Sync`: `ptr` hands out a mutable pointer from `&self`.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from byte `offset` (both page multiples), with `prot`;
    /// `what` names the map in the error.
    pub(super) fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: libc::c_int,
        offset: usize,
        what: &str,
    ) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks length and offset.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("mapping {len} bytes of {what} at offset {offset}: {e}"),
            ));
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap does not return null on success"),
            len,
        })
    }

    /// The first byte of the mapping (page-aligned).
    pub(super) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; its users borrow it no longer than this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The system page size (at least 4096).
pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}
