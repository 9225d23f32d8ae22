//! Sends frames through an AF_PACKET TX ring (TPACKET_V2), as trafgen does: the kernel builds
//! each skb with only the link-layer header in its linear part and the rest as page fragments
//! pointing into the ring (`tpacket_fill_skb` in net/packet/af_packet.c), so the frames reach
//! the TC hooks paged. The socket does not bypass the qdisc, so the sender's egress hook sees
//! them too.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

const PACKET_VERSION: i32 = 10;
const PACKET_TX_RING: i32 = 13;
const TPACKET_V2: i32 = 1;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_WRONG_FORMAT: u32 = 4;
/// `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`: where a TX frame's data starts in its slot.
const DATA_OFFSET: usize = 32;
const FRAME_SIZE: usize = 2048;
const BLOCK_SIZE: usize = 4096;
const FRAMES: usize = 128;

#[repr(C)]
struct TpacketReq {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
}

/// Sends every frame of `frames` (each at most 2016 bytes) from `ifname` in the calling thread's
/// namespace, in order; returns once the kernel has released every slot (the receiver has let
/// go of every skb) or panics after `timeout`.
pub fn send(ifname: &str, frames: &[Vec<u8>], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    // SAFETY: plain socket calls on an fd that OwnedFd owns from the start; the ring is mapped
    // once, used only through `slot`, and unmapped before the fd closes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let set = |opt: i32, v: *const libc::c_void, len: usize| {
            let rc = libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, opt, v, len as u32);
            assert_eq!(
                rc,
                0,
                "setsockopt({opt}): {}",
                std::io::Error::last_os_error()
            );
        };
        set(PACKET_VERSION, (&TPACKET_V2 as *const i32).cast(), 4);
        let req = TpacketReq {
            block_size: BLOCK_SIZE as u32,
            block_nr: (FRAMES * FRAME_SIZE / BLOCK_SIZE) as u32,
            frame_size: FRAME_SIZE as u32,
            frame_nr: FRAMES as u32,
        };
        set(
            PACKET_TX_RING,
            (&req as *const TpacketReq).cast(),
            size_of::<TpacketReq>(),
        );
        let size = FRAMES * FRAME_SIZE;
        let ring = libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        );
        assert_ne!(
            ring,
            libc::MAP_FAILED,
            "mmap of the TX ring: {}",
            std::io::Error::last_os_error()
        );
        let ring = ring.cast::<u8>();
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = crate::netns_ifindex(ifname) as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let status = |i: usize| ring.add(i * FRAME_SIZE).cast::<u32>();
        let wait_free = |i: usize| loop {
            let s = std::ptr::read_volatile(status(i));
            assert_eq!(
                s & TP_STATUS_WRONG_FORMAT,
                0,
                "the kernel refused frame slot {i}"
            );
            if s == TP_STATUS_AVAILABLE {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "TX ring slot {i} still busy (status {s}) after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        for (n, f) in frames.iter().enumerate() {
            assert!(f.len() <= FRAME_SIZE - DATA_OFFSET, "frame {n} too long");
            let i = n % FRAMES;
            wait_free(i);
            let slot = ring.add(i * FRAME_SIZE);
            std::ptr::copy_nonoverlapping(f.as_ptr(), slot.add(DATA_OFFSET), f.len());
            // tp_len, then the status, which hands the slot to the kernel.
            std::ptr::write_volatile(slot.add(4).cast::<u32>(), f.len() as u32);
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            std::ptr::write_volatile(status(i), TP_STATUS_SEND_REQUEST);
            if i == FRAMES - 1 || n == frames.len() - 1 {
                let rc = libc::send(fd.as_raw_fd(), std::ptr::null(), 0, 0);
                assert!(rc >= 0, "send: {}", std::io::Error::last_os_error());
            }
        }
        for i in 0..FRAMES.min(frames.len()) {
            wait_free(i);
        }
        libc::munmap(ring.cast(), size);
    }
}
