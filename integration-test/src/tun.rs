//! A tun device (IFF_TUN, no packet information header): a link without a link-layer header,
//! whose frames start at the IP header. The test holds the device's file: what the stack sends
//! out of it is read here, and what is written here arrives on it. Removed when dropped.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::fd::AsRawFd,
    time::Duration,
};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

pub struct Tun {
    file: File,
}

impl Tun {
    /// Creates tun device `name` in the calling thread's network namespace (down, no address).
    pub fn create(name: &str) -> Tun {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("opening /dev/net/tun");
        // SAFETY: TUNSETIFF with a zeroed ifreq holding a NUL-terminated name and the flags.
        unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            req.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
            let rc = libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req);
            assert_eq!(
                rc,
                0,
                "TUNSETIFF {name}: {}",
                std::io::Error::last_os_error()
            );
        }
        Tun { file }
    }

    /// The next packet the stack sent out of the device, or None after `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if n <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 65536];
        let len = self.file.read(&mut buf).expect("reading the tun device");
        buf.truncate(len);
        Some(buf)
    }

    /// Hands `packet` (an IP packet) to the stack as received on the device.
    pub fn send(&mut self, packet: &[u8]) {
        let n = self.file.write(packet).expect("writing to the tun device");
        assert_eq!(n, packet.len());
    }
}
