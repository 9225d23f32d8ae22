//! The bench's own network: two namespaces joined by a veth pair, addresses from the
//! documentation ranges only (`a` 192.0.2.1 / 2001:db8::1 sends, `b` 192.0.2.2 / 2001:db8::2
//! receives and is observed). Nothing here touches an interface the bench did not create.
//!
//! Namespaces are named `ayabench-<pid>-a|b`. [`Pair`] removes its own on drop (also when a run
//! fails); [`cleanup_leftovers`] removes those of bench processes that no longer exist.

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    thread,
};

use anyhow::{Context as _, Result, bail};

/// Prefix of every namespace the bench creates.
pub const PREFIX: &str = "ayabench-";

pub const ADDR_B4: [u8; 4] = [192, 0, 2, 2];
pub const ADDR_A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const ADDR_B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const MAC_A: [u8; 6] = [0x02, 0xab, 0, 0, 0, 1];
pub const MAC_B: [u8; 6] = [0x02, 0xab, 0, 0, 0, 2];
/// UDP port of the sink socket in `b` that receives the generated traffic.
pub const SINK_PORT: u16 = 9999;

/// Runs `ip args...`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes the namespaces of earlier bench processes that are gone (a run killed with SIGKILL
/// cannot clean up after itself). Namespaces of a bench still running are left alone.
pub fn cleanup_leftovers() -> Result<()> {
    for line in ip(&["netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: i32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("bench: removing leftover namespace {name}");
        let _ = ip(&["netns", "del", name]);
    }
    Ok(())
}

/// The two namespaces and the veth pair between them.
pub struct Pair {
    /// The sender's namespace.
    pub ns_a: String,
    /// The observed namespace: every observer runs here, on `if_b`.
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
    /// Sockets in `b` that take the traffic (never read: the kernel drops what overflows).
    _sinks: Vec<OwnedFd>,
}

impl Pair {
    /// Creates the pair with offloads off on both ends, so that every frame is one skb.
    pub fn create() -> Result<Pair> {
        let pid = std::process::id();
        let mut p = Pair {
            ns_a: format!("{PREFIX}{pid}-a"),
            ns_b: format!("{PREFIX}{pid}-b"),
            if_a: format!("abn{pid}a"),
            if_b: format!("abn{pid}b"),
            _sinks: Vec::new(),
        };
        ip(&["netns", "add", &p.ns_a])?;
        // From here on, Drop removes whatever was created.
        ip(&["netns", "add", &p.ns_b])?;
        // No router solicitations: fewer stray frames on the link during runs.
        for ns in [&p.ns_a, &p.ns_b] {
            in_ns(ns, || {
                for conf in ["all", "default"] {
                    let _ = std::fs::write(
                        format!("/proc/sys/net/ipv6/conf/{conf}/router_solicitations"),
                        "0",
                    );
                }
            })?;
        }
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        ip(&[
            "link",
            "add",
            &p.if_a,
            "netns",
            &p.ns_a,
            "address",
            &mac(MAC_A),
            "type",
            "veth",
            "peer",
            "name",
            &p.if_b,
            "netns",
            &p.ns_b,
            "address",
            &mac(MAC_B),
        ])?;
        for (ns, ifc, a4, a6) in [
            (&p.ns_a, &p.if_a, "192.0.2.1/24", "2001:db8::1/64"),
            (&p.ns_b, &p.if_b, "192.0.2.2/24", "2001:db8::2/64"),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", a4, "dev", ifc])?;
            ip(&["-n", ns, "-6", "addr", "add", a6, "dev", ifc, "nodad"])?;
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "ethtool", "-K", ifc])
                .args(["tso", "off", "gso", "off", "gro", "off"])
                .output()
                .context("running ethtool (package ethtool)")?;
            if !out.status.success() {
                bail!("ethtool -K {ifc}: {}", String::from_utf8_lossy(&out.stderr));
            }
            ip(&["-n", ns, "link", "set", ifc, "up"])?;
        }
        // Static neighbours: no ARP/ND exchange during a run.
        ip(&[
            "-n",
            &p.ns_b,
            "neigh",
            "add",
            "192.0.2.1",
            "lladdr",
            &mac(MAC_A),
            "dev",
            &p.if_b,
        ])?;
        ip(&[
            "-n",
            &p.ns_b,
            "neigh",
            "add",
            "2001:db8::1",
            "lladdr",
            &mac(MAC_A),
            "dev",
            &p.if_b,
        ])?;
        p._sinks = in_ns(&p.ns_b, sinks)??;
        Ok(p)
    }

    /// A `Command` running `program` inside namespace `ns` (`ip netns exec` execs it, so the
    /// child's pid is the program's).
    pub fn command(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Packet counters of `if_b`, as `b` sees them.
    pub fn rx_stats(&self) -> Result<LinkStats> {
        link_stats(&self.ns_b, &self.if_b)
    }

    /// Packet counters of `if_a`.
    pub fn tx_stats(&self) -> Result<LinkStats> {
        link_stats(&self.ns_a, &self.if_a)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self._sinks.clear();
        // Deleting a namespace destroys its veth end, and with it the peer.
        for ns in [&self.ns_a, &self.ns_b] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("bench: removing namespace {ns}: {e:#}");
            }
        }
    }
}

/// Interface counters from `ip -s -j link`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

fn link_stats(ns: &str, ifname: &str) -> Result<LinkStats> {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -s -j link`")?;
    let s = &v[0]["stats64"];
    let get = |dir: &str, k: &str| s[dir][k].as_u64().unwrap_or(0);
    Ok(LinkStats {
        rx_packets: get("rx", "packets"),
        rx_bytes: get("rx", "bytes"),
        rx_dropped: get("rx", "dropped"),
        tx_dropped: get("tx", "dropped"),
    })
}

/// Sets offloads on both veth ends: `ethtool -K <if> settings...`.
pub fn set_offloads(pair: &Pair, settings: &[&str]) -> Result<()> {
    for (ns, ifc) in [(&pair.ns_a, &pair.if_a), (&pair.ns_b, &pair.if_b)] {
        let out = Pair::command(ns, "ethtool")
            .args(["-K", ifc])
            .args(settings)
            .output()
            .context("running ethtool (package ethtool)")?;
        if !out.status.success() {
            bail!("ethtool -K {ifc}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// Runs `f` on a thread that joined namespace `ns` (sockets it opens live there).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || -> Result<T> {
        enter(&path)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread inside namespace panicked"))?
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a namespace fd we own; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// UDP sockets on the sink port (IPv4 and IPv6) with the smallest receive buffer, never read:
/// the traffic takes the whole receive path and the kernel drops it at the socket, so `b`
/// sends no ICMP "port unreachable" back.
fn sinks() -> Result<Vec<OwnedFd>> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        // SAFETY: plain socket calls on an fd that OwnedFd then owns.
        unsafe {
            let fam = if v6 { libc::AF_INET6 } else { libc::AF_INET };
            let fd = libc::socket(fam, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                bail!("sink socket: {}", std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let one: i32 = 1;
            let small: i32 = 0;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&small as *const i32).cast(),
                4,
            );
            let rc = if v6 {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_V6ONLY,
                    (&one as *const i32).cast(),
                    4,
                );
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_port = SINK_PORT.to_be();
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in6).cast(),
                    size_of::<libc::sockaddr_in6>() as u32,
                )
            } else {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = SINK_PORT.to_be();
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if rc != 0 {
                bail!(
                    "binding the sink socket: {}",
                    std::io::Error::last_os_error()
                );
            }
            out.push(fd);
        }
    }
    Ok(out)
}
