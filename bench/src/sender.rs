//! The traffic generator: prebuilt minimum-size UDP frames sent from namespace `a` through an
//! `AF_PACKET` socket with `PACKET_QDISC_BYPASS` and `sendmmsg`, on one thread pinned to CPU 0.
//! Paged traffic (`Traffic::paged`) goes through a TX ring instead (`PACKET_TX_RING`, as trafgen
//! sends): the kernel then builds each skb with only the Ethernet header linear and the rest as
//! page fragments of the ring, which is how the frames reach the observer's hook.
//!
//! Sending on a veth delivers in the same call: `veth_xmit` queues the frame to the peer's
//! backlog and the receive softirq (TC ingress, the AF_PACKET taps of pcap-based tools, IP,
//! UDP, the sink socket) runs when the sender re-enables bottom halves, on the same CPU and
//! charged to the sending thread (this kernel has no IRQ time accounting). The thread's CPU
//! time is therefore the kernel's whole per-packet cost; what an observer adds to it is its
//! kernel-side cost. Every run is bounded in packets and in time and stops by itself.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::netns::{self, ADDR_B4, ADDR_B6, MAC_A, MAC_B, SINK_PORT};

/// Set by SIGINT/SIGTERM: the generator stops at its next batch.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Frames per `sendmmsg` call.
const BATCH: usize = 256;

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub v6: bool,
    /// Distinct five-tuples, sent round-robin.
    pub flows: u32,
    /// Sent from a TX ring, so that the frames are paged (see the module documentation).
    #[serde(default)]
    pub paged: bool,
}

impl Traffic {
    /// Short name, as used on the command line and in the report.
    pub fn name(&self) -> String {
        let f = if self.flows.is_multiple_of(1000) {
            format!("{}k", self.flows / 1000)
        } else {
            self.flows.to_string()
        };
        let paged = if self.paged { "-paged" } else { "" };
        format!("{}-{f}{paged}", if self.v6 { "v6" } else { "v4" })
    }

    /// Bytes of each frame (Ethernet header included, no FCS).
    pub fn frame_len(&self) -> usize {
        if self.v6 {
            14 + 40 + 8 + 2
        } else {
            14 + 20 + 8 + 18
        }
    }
}

/// Source address and port of flow `i`: ports 1024..61024, then the next source address.
pub fn flow_source(i: u32) -> (u16, u16) {
    let host = 10 + (i / 60_000) as u16;
    let port = 1024 + (i % 60_000) as u16;
    (host, port)
}

/// One frame per flow, back to back.
fn frames(t: Traffic) -> Vec<u8> {
    let len = t.frame_len();
    let mut all = Vec::with_capacity(len * t.flows as usize);
    for i in 0..t.flows {
        let (host, sport) = flow_source(i);
        let mut f = Vec::with_capacity(len);
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        let payload_len = if t.v6 { 2 } else { 18 };
        let udp_len = (8 + payload_len) as u16;
        let mut udp = Vec::with_capacity(udp_len as usize);
        udp.extend_from_slice(&sport.to_be_bytes());
        udp.extend_from_slice(&SINK_PORT.to_be_bytes());
        udp.extend_from_slice(&udp_len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.resize(udp_len as usize, 0x5a);
        if t.v6 {
            let mut src = netns::ADDR_A6;
            src[14..16].copy_from_slice(&(0x100 + host).to_be_bytes());
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&ADDR_B6);
            pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            pseudo.extend_from_slice(&udp);
            let c = checksum(&pseudo);
            udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&udp_len.to_be_bytes());
            f.extend_from_slice(&[17, 64]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&ADDR_B6);
        } else {
            let src = [192, 0, 2, host as u8];
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&ADDR_B4);
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&udp_len.to_be_bytes());
            pseudo.extend_from_slice(&udp);
            let c = checksum(&pseudo);
            udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = 20 + udp_len;
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
            h.extend_from_slice(&src);
            h.extend_from_slice(&ADDR_B4);
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        f.extend_from_slice(&udp);
        debug_assert_eq!(f.len(), len);
        all.extend_from_slice(&f);
    }
    all
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What one generator run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Frames the kernel accepted.
    pub packets: u64,
    pub elapsed: Duration,
    /// CPU time of the sending thread: sending plus the receive softirq run in its context.
    pub thread_cpu_ns: u64,
}

/// Limits of one run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub packets: u64,
    pub max_time: Duration,
    /// Packets per second; `None` sends as fast as the machine can.
    pub rate: Option<u64>,
}

/// Sends `limits.packets` frames of `t` from `ns`/`ifname` (stops early at `limits.max_time`
/// or on a signal). Runs on its own thread pinned to CPU 0.
pub fn send(ns: &str, ifname: &str, t: Traffic, limits: Limits) -> Result<Sent> {
    let path = format!("/var/run/netns/{ns}");
    let ifname = ifname.to_string();
    let frames = frames(t);
    std::thread::spawn(move || -> Result<Sent> {
        netns::enter(&path)?;
        pin_to_cpu0();
        let fd = open_socket(&ifname)?;
        if t.paged {
            run_ring(&fd, &frames, t, limits)
        } else {
            run(&fd, &frames, t, limits)
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("generator thread panicked"))?
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn open_socket(ifname: &str) -> Result<OwnedFd> {
    // SAFETY: plain socket calls on an fd that OwnedFd owns from the start.
    unsafe {
        // Protocol 0: a send-only socket, it receives nothing.
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let name = std::ffi::CString::new(ifname)?;
        let idx = libc::if_nametoindex(name.as_ptr());
        if idx == 0 {
            bail!("interface {ifname} not found in the sender's namespace");
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = idx as i32;
        if libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            bail!("binding the generator: {}", std::io::Error::last_os_error());
        }
        let one: i32 = 1;
        // PACKET_QDISC_BYPASS (20): straight to the driver, as trafgen does.
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            20,
            (&one as *const i32).cast(),
            4,
        );
        let buf: i32 = 4 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&buf as *const i32).cast(),
            4,
        );
        Ok(fd)
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn run(fd: &OwnedFd, frames: &[u8], t: Traffic, limits: Limits) -> Result<Sent> {
    let len = t.frame_len();
    let flows = t.flows as u64;
    // SAFETY (for the zeroed structs): iovec and mmsghdr are plain C structs.
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    let mut sent: u64 = 0;
    let mut errors = 0u32;
    while sent < limits.packets {
        if STOP.load(Ordering::Relaxed) || start.elapsed() > limits.max_time {
            break;
        }
        if let Some(rate) = limits.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let n = BATCH.min((limits.packets - sent) as usize);
        for k in 0..n {
            let flow = ((sent + k as u64) % flows) as usize;
            iov[k].iov_base = frames[flow * len..].as_ptr() as *mut libc::c_void;
            iov[k].iov_len = len;
            msgs[k].msg_hdr.msg_iov = &mut iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: msgs[..n] point at iovecs and frames that outlive the call.
        let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            errors += 1;
            if errors > 1000 {
                bail!("sendmmsg keeps failing: {e}");
            }
            std::thread::yield_now();
            continue;
        }
        sent += rc as u64;
    }
    Ok(Sent {
        packets: sent,
        elapsed: start.elapsed(),
        thread_cpu_ns: thread_cpu_ns() - cpu0,
    })
}

const PACKET_VERSION: i32 = 10;
const PACKET_TX_RING: i32 = 13;
const TPACKET_V2: i32 = 1;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
/// `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`: where a TX frame's data starts in its slot.
const RING_DATA_OFFSET: usize = 32;
const RING_FRAME_SIZE: usize = 2048;
/// 8 MiB of slots: the sink's small receive buffer holds a few frames (and their slots) at a
/// time, the rest cycle.
const RING_FRAMES: usize = 256;
/// Frames per `send` from the ring.
const RING_BATCH: usize = 16;

/// Like [`run`], through a TX ring: frames are written into free slots, `BATCH` at a time, then
/// one non-blocking `send` hands them all to the kernel. A slot is free again once its skb is
/// freed (after the receiver dropped or consumed it); busy slots are skipped.
fn run_ring(fd: &OwnedFd, frames: &[u8], t: Traffic, limits: Limits) -> Result<Sent> {
    let len = t.frame_len();
    let flows = t.flows as u64;
    // SAFETY: socket options on our socket, then a shared mapping of the ring it set up, used
    // only within its size and unmapped before returning.
    let ring = unsafe {
        let set = |opt: i32, v: *const libc::c_void, n: usize| {
            libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, opt, v, n as u32)
        };
        if set(PACKET_VERSION, (&TPACKET_V2 as *const i32).cast(), 4) != 0 {
            bail!("PACKET_VERSION: {}", std::io::Error::last_os_error());
        }
        let req: [u32; 4] = [
            4096,
            (RING_FRAMES * RING_FRAME_SIZE / 4096) as u32,
            RING_FRAME_SIZE as u32,
            RING_FRAMES as u32,
        ];
        if set(PACKET_TX_RING, req.as_ptr().cast(), 16) != 0 {
            bail!("PACKET_TX_RING: {}", std::io::Error::last_os_error());
        }
        let ring = libc::mmap(
            std::ptr::null_mut(),
            RING_FRAMES * RING_FRAME_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        );
        if ring == libc::MAP_FAILED {
            bail!("mapping the TX ring: {}", std::io::Error::last_os_error());
        }
        ring.cast::<u8>()
    };
    let status = |i: usize| {
        // SAFETY: i < RING_FRAMES, inside the mapping.
        unsafe { ring.add(i * RING_FRAME_SIZE).cast::<u32>() }
    };
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    let (mut sent, mut slot, mut busy) = (0u64, 0usize, 0usize);
    while sent < limits.packets
        && !STOP.load(Ordering::Relaxed)
        && start.elapsed() < limits.max_time
    {
        let mut queued = 0;
        while queued < RING_BATCH && sent + (queued as u64) < limits.packets && busy < RING_FRAMES {
            let i = slot;
            slot = (slot + 1) % RING_FRAMES;
            // SAFETY: the status word of slot i; the kernel changes it only once we hand it over.
            if unsafe { std::ptr::read_volatile(status(i)) } != TP_STATUS_AVAILABLE {
                busy += 1;
                continue;
            }
            busy = 0;
            let flow = ((sent + queued as u64) % flows) as usize;
            // SAFETY: the frame fits the slot (RING_FRAME_SIZE - RING_DATA_OFFSET > 64); the slot
            // is ours until its status says SEND_REQUEST.
            unsafe {
                let base = ring.add(i * RING_FRAME_SIZE);
                std::ptr::copy_nonoverlapping(
                    frames[flow * len..].as_ptr(),
                    base.add(RING_DATA_OFFSET),
                    len,
                );
                std::ptr::write_volatile(base.add(4).cast::<u32>(), len as u32);
                std::sync::atomic::fence(Ordering::SeqCst);
                std::ptr::write_volatile(status(i), TP_STATUS_SEND_REQUEST);
            }
            queued += 1;
        }
        if queued == 0 {
            // Every slot is in flight: let the receiver free some.
            busy = 0;
            std::thread::yield_now();
            continue;
        }
        // SAFETY: a send of nothing on our socket: the kernel takes the requested slots.
        let rc = unsafe { libc::send(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                bail!("send on the TX ring: {e}");
            }
        }
        sent += queued as u64;
    }
    let elapsed = start.elapsed();
    let thread_cpu_ns = thread_cpu_ns() - cpu0;
    // The kernel may still hold slots that are queued: wait (bounded) until it has taken every
    // requested frame before the mapping goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (0..RING_FRAMES).any(|i| {
        // SAFETY: as above.
        unsafe { std::ptr::read_volatile(status(i)) == TP_STATUS_SEND_REQUEST }
    }) && Instant::now() < deadline
    {
        // SAFETY: as above.
        unsafe { libc::send(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: the mapping made above; the kernel keeps its own page references.
    unsafe { libc::munmap(ring.cast(), RING_FRAMES * RING_FRAME_SIZE) };
    Ok(Sent {
        packets: sent,
        elapsed,
        thread_cpu_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums_and_distinct_sources() {
        for v6 in [false, true] {
            let t = Traffic {
                v6,
                flows: 70_000,
                paged: false,
            };
            let all = frames(t);
            let len = t.frame_len();
            assert_eq!(all.len(), len * 70_000);
            let f = &all[..len];
            if !v6 {
                assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
            }
            let mut seen = std::collections::HashSet::new();
            for i in 0..70_000 {
                let f = &all[i * len..(i + 1) * len];
                let (src, port) = if v6 {
                    (f[22..38].to_vec(), &f[54..56])
                } else {
                    (f[26..30].to_vec(), &f[34..36])
                };
                assert!(seen.insert((src, port.to_vec())));
            }
        }
        assert_eq!(checksum(&[0x45, 0x00, 0x00, 0x1c]), !0x451cu16);
    }
}
