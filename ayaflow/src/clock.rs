//! The agent's one clock helper: Unix time and the kernel clocks the BPF program stamps with.
//!
//! A leaf module (it depends on nothing in the crate) so that every layer, from the ring reader
//! to the store, reads time the same way.

/// Nanoseconds in a second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The current time of `clock` (a `CLOCK_*` id), in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime fails only for an unknown clock
    // id, and every caller passes one of libc's constants (the zeroed timespec is then read).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * NANOS_PER_SEC + ts.tv_nsec as u64
}

/// Unix time now, in nanoseconds (0 before 1970, saturating far in the future).
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_clock_matches_system_time() {
        let a = unix_now_ns();
        let b = clock_ns(libc::CLOCK_REALTIME);
        let c = unix_now_ns();
        assert!(
            a <= b + NANOS_PER_SEC && b <= c + NANOS_PER_SEC,
            "{a} {b} {c}"
        );
    }
}
