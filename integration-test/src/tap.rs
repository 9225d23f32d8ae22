//! An AF_PACKET tap on one interface inside a namespace: the independent ground truth for
//! what crossed the wire (use it with offloads off, see `NetPair::new`).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
};

/// One frame the tap saw.
#[derive(Clone, Debug)]
pub struct Frame {
    /// True if the interface sent it (egress), false if it received it (ingress).
    pub outgoing: bool,
    /// Length on the wire, Ethernet header included.
    pub len: usize,
    /// (protocol number, src, sport, dst, dport) when IPv4/IPv6, else None.
    pub tuple: Option<(u8, IpAddr, u16, IpAddr, u16)>,
}

/// A running tap; `frames` shows what it saw so far, `stop` ends it.
pub struct Tap {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Frame>>>,
    handle: JoinHandle<()>,
}

impl Tap {
    /// Starts capturing on `ifname` inside namespace `ns`; returns once the socket is bound.
    pub fn start(ns: &str, ifname: &str) -> Tap {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let path = format!("/var/run/netns/{ns}");
        let (ifname, stop2, seen2) = (ifname.to_string(), stop.clone(), seen.clone());
        let handle = thread::spawn(move || {
            crate::netns::enter(&path);
            capture(&ifname, &stop2, &seen2, ready_tx)
        });
        ready_rx
            .recv()
            .expect("the tap thread failed before binding its socket");
        Tap { stop, seen, handle }
    }

    /// The frames read so far (the socket may still hold a few more).
    pub fn frames(&self) -> Vec<Frame> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops after the queued frames are read, and returns every frame.
    pub fn stop(self) -> Vec<Frame> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.seen;
        self.handle.join().expect("tap thread panicked");
        seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn capture(ifname: &str, stop: &AtomicBool, seen: &Mutex<Vec<Frame>>, ready: mpsc::Sender<()>) {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls on an fd we own and close at the end.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let idx = crate::netns_ifindex(ifname);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = idx as i32;
        let rc = libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(
            rc,
            0,
            "binding the tap: {}",
            std::io::Error::last_os_error()
        );
        let buf_size: i32 = 32 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&buf_size as *const i32).cast(),
            4,
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        ready.send(()).expect("test waiting for the tap");
        let mut buf = [0u8; 128];
        loop {
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut from_len = size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            );
            if n < 0 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            let len = n as usize;
            seen.lock().unwrap_or_else(|e| e.into_inner()).push(Frame {
                outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                len,
                tuple: parse(&buf[..len.min(buf.len())]),
            });
        }
        let mut stats = [0u32; 2];
        let mut sl = 8u32;
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            stats.as_mut_ptr().cast(),
            &mut sl,
        );
        libc::close(fd);
        assert_eq!(
            stats[1], 0,
            "the tap itself dropped {} frames: the ground truth is incomplete",
            stats[1]
        );
    }
}

fn parse(f: &[u8]) -> Option<(u8, IpAddr, u16, IpAddr, u16)> {
    let et = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let (proto, src, dst, l4) = match et {
        0x0800 => {
            let ihl = (f.get(14)? & 0x0f) as usize * 4;
            let s: [u8; 4] = f.get(26..30)?.try_into().ok()?;
            let d: [u8; 4] = f.get(30..34)?.try_into().ok()?;
            (f[23], IpAddr::from(s), IpAddr::from(d), 14 + ihl)
        }
        0x86dd => {
            let s: [u8; 16] = f.get(22..38)?.try_into().ok()?;
            let d: [u8; 16] = f.get(38..54)?.try_into().ok()?;
            (*f.get(20)?, IpAddr::from(s), IpAddr::from(d), 54)
        }
        _ => return None,
    };
    let (sp, dp) = match proto {
        6 | 17 => (
            u16::from_be_bytes([*f.get(l4)?, *f.get(l4 + 1)?]),
            u16::from_be_bytes([*f.get(l4 + 2)?, *f.get(l4 + 3)?]),
        ),
        _ => (0, 0),
    };
    Some((proto, src, sp, dst, dp))
}

/// (protocol number, src, sport, dst, dport).
pub type Tuple = (u8, IpAddr, u16, IpAddr, u16);

/// Packets and bytes per (outgoing, tuple).
pub type Totals = BTreeMap<(bool, Option<Tuple>), (u64, u64)>;

/// Packets and bytes per (outgoing, tuple) over `frames`.
pub fn totals(frames: &[Frame]) -> Totals {
    let mut m = BTreeMap::new();
    for f in frames {
        let e = m.entry((f.outgoing, f.tuple)).or_insert((0, 0));
        e.0 += 1;
        e.1 += f.len as u64;
    }
    m
}
