//! `BPF_PROG_TEST_RUN` for the classifier: runs it on a crafted frame without any traffic.
//!
//! aya gained a wrapper only in releases that need Rust 1.98 (aya-rs/aya#1461), so this calls
//! the `bpf(2)` syscall itself. Used by the kernel tests and by the benchmarks (`repeat` > 1
//! makes the kernel return the mean run time).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `struct __sk_buff` as `ctx_in`: 192 bytes, all zero but the fields the kernel lets a test set
/// (`convert___skb_to_skb` in net/bpf/test_run.c).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SkBuffCtx {
    words: [u32; 48],
}

impl Default for SkBuffCtx {
    fn default() -> Self {
        SkBuffCtx { words: [0; 48] }
    }
}

impl SkBuffCtx {
    /// `gso_segs` (offset 164): makes the frame a GSO aggregate of that many segments.
    pub fn gso_segs(mut self, segs: u32) -> Self {
        self.words[164 / 4] = segs;
        self
    }

    /// `gso_size` (offset 176): the segment payload size of a GSO aggregate.
    pub fn gso_size(mut self, size: u32) -> Self {
        self.words[176 / 4] = size;
        self
    }
}

/// The kernel's answer to one test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunResult {
    /// What the program returned (a TC action code, as u32).
    pub retval: u32,
    /// Mean nanoseconds per run over `repeat` runs.
    pub duration_ns: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: [u32; 13],
}

/// Runs the program `prog` on `frame` `repeat` times (0 means once).
pub fn test_run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ctx: Option<&SkBuffCtx>,
    repeat: u32,
) -> io::Result<TestRunResult> {
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    if let Some(ctx) = ctx {
        attr.ctx_size_in = size_of::<SkBuffCtx>() as u32;
        attr.ctx_in = (ctx as *const SkBuffCtx) as u64;
    }
    // SAFETY: attr is a valid, zero-padded bpf_attr for BPF_PROG_TEST_RUN whose pointers
    // outlive the call; the kernel writes only into attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            size_of::<TestAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TestRunResult {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}
