//! The web UI in real browsers: headless Chromium and Firefox ESR over WebDriver
//! (`browser.rs`) against the real agent on a veth in a test namespace, seeing known traffic
//! from the other end. Each test below runs once in each (`<test>::chromium`,
//! `<test>::firefox`), the access test without a browser once.
//!
//! - `live.rs`: the page loads with no console error and no request to another origin; the
//!   live table shows the known connections with exactly their packets and bytes, sorts and
//!   filters (also from the keyboard); the charts advance with the stream, which alone drives
//!   the page (no polling); a hidden tab closes its stream.
//! - `history.rs`: paging walks every row of a known set exactly once; the chart and the CSV
//!   hold what the range and the table show; aggregated windows at a phone's width (in
//!   Firefox 500 px, its narrowest window), where neither view is wider than the screen.
//! - `access.rs`: a peer outside the allowlist gets 403 for the page and each of its files;
//!   with a token, the page asks for it and then streams.
//! - `screenshots.rs` (ignored; `cargo xtask screenshots`): the README's pictures in docs/,
//!   taken in Chromium.
//!
//! Nothing waits a fixed time: every step polls a condition with a deadline.

/// Module `$test` with `#[test] fn chromium()` and `#[test] fn firefox()`, each running
/// `$test(kind)` of the enclosing module in that browser.
macro_rules! in_both_browsers {
    ($test:ident) => {
        mod $test {
            use crate::browser::Kind;

            #[test]
            fn chromium() {
                super::$test(Kind::Chromium)
            }

            #[test]
            fn firefox() {
                super::$test(Kind::Firefox)
            }
        }
    };
}

mod access;
mod browser;
mod history;
mod live;
mod screenshots;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use integration_test::netns::{ADDR_A4, ADDR_B4, NetPair};

/// The page as the browser in namespace b opens it.
const PAGE: &str = "http://127.0.0.1:3000/";
/// Ethernet, IPv4 and UDP headers on the wire.
const UDP_OVERHEAD: u64 = 14 + 20 + 8;

/// Sends `count` UDP datagrams of `payload` bytes from a:`src_port` to b:`dst_port` (nothing
/// listens there: b answers ICMP port unreachable, which an ingress-only agent does not see).
fn send_udp(pair: &NetPair, src_port: u16, dst_port: u16, count: u64, payload: usize) {
    let src: SocketAddr = format!("{ADDR_A4}:{src_port}").parse().unwrap();
    let dst: SocketAddr = format!("{ADDR_B4}:{dst_port}").parse().unwrap();
    NetPair::in_ns(&pair.ns_a, move || {
        let s = UdpSocket::bind(src).expect("binding in namespace a");
        for _ in 0..count {
            s.send_to(&vec![7u8; payload], dst).expect("sending to b");
        }
    });
}

/// A background sender of one datagram every `every` from a:`src_port` to b:`dst_port`, for at
/// most `limit`; stops when dropped.
struct Steady {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Steady {
    fn start(
        pair: &NetPair,
        src_port: u16,
        dst_port: u16,
        payload: usize,
        every: Duration,
        limit: Duration,
    ) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let src: SocketAddr = format!("{ADDR_A4}:{src_port}").parse().unwrap();
        let dst: SocketAddr = format!("{ADDR_B4}:{dst_port}").parse().unwrap();
        let thread = NetPair::spawn_in_ns(&pair.ns_a, move || {
            let s = UdpSocket::bind(src).expect("binding in namespace a");
            let end = Instant::now() + limit;
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                let _ = s.send_to(&vec![3u8; payload], dst);
                std::thread::sleep(every);
            }
        });
        Steady {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Steady {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every resource the page loaded that is not on its own origin (none may be).
const FOREIGN_RESOURCES: &str = "
    return performance.getEntriesByType('resource')
        .map(e => e.name)
        .filter(n => new URL(n).origin !== location.origin);";

/// The rows of table `#id`: [{key, <column>: data-value, <column>_title, <column>_text}].
fn rows_script(id: &str) -> String {
    format!(
        "return [...document.querySelectorAll('#{id} tbody tr[data-key]')].map(tr => {{
            const r = {{key: tr.dataset.key}};
            for (const td of tr.cells) {{
                r[td.dataset.col] = td.dataset.value;
                r[td.dataset.col + '_title'] = td.title;
                r[td.dataset.col + '_text'] = td.textContent;
            }}
            return r;
        }});"
    )
}
