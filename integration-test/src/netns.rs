//! Two network namespaces joined by a veth pair, with addresses only inside them:
//! `a` (192.0.2.1, 2001:db8::1) <-> `b` (192.0.2.2, 2001:db8::2), documentation ranges that
//! nothing outside the pair routes. Removed on drop, even when the test panics.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

pub const ADDR_A4: &str = "192.0.2.1";
pub const ADDR_B4: &str = "192.0.2.2";
pub const ADDR_A6: &str = "2001:db8::1";
pub const ADDR_B6: &str = "2001:db8::2";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip args...`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (package iproute2)");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Namespaces `ns_a`/`ns_b` with veth ends `if_a`/`if_b`.
pub struct NetPair {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
}

impl NetPair {
    /// Creates the pair. With `offloads == false`, TSO/GSO/GRO are off on both ends, so every
    /// skb is one frame on the wire and a packet tap sees exactly what the classifier sees.
    pub fn new(offloads: bool) -> NetPair {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("af{}x{n}", std::process::id());
        let p = NetPair {
            ns_a: format!("{tag}a"),
            ns_b: format!("{tag}b"),
            if_a: format!("{tag}a"),
            if_b: format!("{tag}b"),
        };
        ip(&["netns", "add", &p.ns_a]);
        // From here on, Drop cleans up whatever was created.
        ip(&["netns", "add", &p.ns_b]);
        ip(&[
            "link", "add", &p.if_a, "netns", &p.ns_a, "type", "veth", "peer", "name", &p.if_b,
            "netns", &p.ns_b,
        ]);
        for (ns, ifc, a4, a6) in [
            (&p.ns_a, &p.if_a, ADDR_A4, ADDR_A6),
            (&p.ns_b, &p.if_b, ADDR_B4, ADDR_B6),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{a4}/24"), "dev", ifc]);
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                ifc,
                "nodad",
            ]);
            if !offloads {
                let out = Command::new("ip")
                    .args([
                        "netns", "exec", ns, "ethtool", "-K", ifc, "tso", "off", "gso", "off",
                        "gro", "off",
                    ])
                    .output()
                    .expect("running ethtool (package ethtool; `cargo xtask setup` installs it)");
                assert!(
                    out.status.success(),
                    "ethtool -K failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            ip(&["-n", ns, "link", "set", ifc, "up"]);
        }
        p
    }

    /// A `Command` running `program` inside namespace `ns`.
    pub fn command(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Runs `f` on a thread that has joined namespace `ns` (sockets it opens live there).
    pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        Self::spawn_in_ns(ns, f)
            .join()
            .expect("thread inside the namespace panicked")
    }

    /// Like [`NetPair::in_ns`], without waiting.
    pub fn spawn_in_ns<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{ns}");
        thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a namespace fd we own; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth end, and with it the peer.
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// What an interface's own counters say it received and sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl LinkStats {
    /// The counters of `ifname` in namespace `ns` now (`ip netns exec` mounts that namespace's
    /// sysfs).
    pub fn read(ns: &str, ifname: &str) -> LinkStats {
        let files = ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes"]
            .map(|f| format!("/sys/class/net/{ifname}/statistics/{f}"));
        let out = NetPair::command(ns, "cat")
            .args(&files)
            .output()
            .expect("running cat");
        assert!(
            out.status.success(),
            "reading the counters of {ifname}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|s| s.parse().expect("a counter"))
            .collect();
        LinkStats {
            rx_packets: v[0],
            rx_bytes: v[1],
            tx_packets: v[2],
            tx_bytes: v[3],
        }
    }

    /// Each counter minus `earlier`'s.
    pub fn since(&self, earlier: &LinkStats) -> LinkStats {
        LinkStats {
            rx_packets: self.rx_packets - earlier.rx_packets,
            rx_bytes: self.rx_bytes - earlier.rx_bytes,
            tx_packets: self.tx_packets - earlier.tx_packets,
            tx_bytes: self.tx_bytes - earlier.tx_bytes,
        }
    }
}

/// The MAC address of `ifname` in namespace `ns`.
pub fn mac(ns: &str, ifname: &str) -> [u8; 6] {
    let out = NetPair::command(ns, "cat")
        .arg(format!("/sys/class/net/{ifname}/address"))
        .output()
        .expect("running cat");
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("a MAC address"))
        .collect();
    bytes.try_into().expect("six bytes")
}

/// Runs `ethtool -K ifname settings...` in namespace `ns`.
pub fn ethtool_k(ns: &str, ifname: &str, settings: &[&str]) {
    let out = NetPair::command(ns, "ethtool")
        .args(["-K", ifname])
        .args(settings)
        .output()
        .expect("running ethtool (package ethtool; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "ethtool -K {ifname} {}: {}",
        settings.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
