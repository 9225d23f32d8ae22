//! Helpers for the kernel tests: a root/BTF gate that fails loudly, frame builders for
//! `BPF_PROG_TEST_RUN`, and network namespaces joined by a veth pair for real traffic.
//!
//! Namespaces and links get names unique to the process and the test, so tests run in
//! parallel; [`NetPair`] removes them on drop, also when the test panics.

pub mod agent;
pub mod bpffs;
pub mod collector;
pub mod frames;
pub mod netns;
pub mod tap;
pub mod tun;
pub mod txring;
pub mod vlan_push;

/// Panics with the reason if this process cannot load BPF programs. The kernel tests must run
/// (CI runs as root); they never pass by skipping.
pub fn require_bpf() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the kernel tests load BPF programs and need root (euid is {euid}): run `cargo xtask test` as root"
    );
    assert!(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "the kernel has no BTF (/sys/kernel/btf/vmlinux missing): the kernel tests need CONFIG_DEBUG_INFO_BTF=y"
    );
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `secs` seconds with `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The index of `ifname` in the calling thread's namespace; panics if it does not exist.
pub fn netns_ifindex(ifname: &str) -> u32 {
    let c = std::ffi::CString::new(ifname).expect("interface names have no NUL");
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(idx, 0, "interface {ifname} not found in this namespace");
    idx
}

/// A child process killed (and reaped) on drop, so a failed assertion leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
