//! Interface names: existence checks, link types (which program variant an interface gets),
//! and the default choice (the default route's interface, else the first up, non-loopback one).

use std::{ffi::CString, fs};

/// How the frames of a link start, as the TC hook sees them: this picks the program variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// With an Ethernet header (Ethernet, veth, bridges, VXLAN, loopback). This is the default.
    Ethernet,
    /// At the IP header: links without a link-layer header (tun, WireGuard, ipip, sit, GRE,
    /// PPP, raw-IP modems).
    Ip,
}

const ARPHRD_ETHER: u16 = 1;
const ARPHRD_PPP: u16 = 512;
const ARPHRD_RAWIP: u16 = 519;
const ARPHRD_TUNNEL: u16 = 768;
const ARPHRD_TUNNEL6: u16 = 769;
const ARPHRD_LOOPBACK: u16 = 772;
const ARPHRD_SIT: u16 = 776;
const ARPHRD_IPGRE: u16 = 778;
const ARPHRD_IP6GRE: u16 = 823;
const ARPHRD_NONE: u16 = 65534;

/// The framing of links of ARPHRD type `arphrd`, and whether that type is one we know. An
/// unknown type gets `Ip`: its frames do not start with an Ethernet header either, and the IP
/// parser flags what is not IP as malformed rather than inventing addresses from other bytes.
pub fn framing_of(arphrd: u16) -> (Framing, bool) {
    match arphrd {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => (Framing::Ethernet, true),
        ARPHRD_NONE | ARPHRD_RAWIP | ARPHRD_TUNNEL | ARPHRD_TUNNEL6 | ARPHRD_SIT | ARPHRD_IPGRE
        | ARPHRD_IP6GRE | ARPHRD_PPP => (Framing::Ip, true),
        _ => (Framing::Ip, false),
    }
}

/// The ARPHRD link type of `name` (what /sys/class/net/<name>/type shows), from the
/// `SIOCGIFHWADDR` ioctl, so that it is the calling thread's network namespace that is asked.
pub fn link_type(name: &str) -> Option<u16> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a datagram socket used for one ioctl on a zeroed ifreq holding a NUL-terminated
    // name, then closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        libc::close(fd);
        (rc == 0).then_some(req.ifr_ifru.ifru_hwaddr.sa_family)
    }
}

/// The framing of interface `name`, logging a warning when its link type is not one we know.
pub fn framing(name: &str) -> Framing {
    let Some(t) = link_type(name) else {
        return Framing::Ethernet;
    };
    let (f, known) = framing_of(t);
    if !known {
        tracing::warn!(
            interface = name,
            link_type = t,
            "the link type is neither Ethernet nor a known IP tunnel: packets and bytes are \
             exact, but the keys are read as if frames started at the IP header (unparsable \
             frames count as parse errors)"
        );
    }
    f
}

/// The kernel's index of `name`, if such an interface exists.
pub fn index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// True if and only if the frames of `name` start with an Ethernet header.
pub fn is_ethernet(name: &str) -> bool {
    link_type(name).is_some_and(|t| framing_of(t).0 == Framing::Ethernet)
}

/// The interface of the IPv4 default route (`/proc/net/route`), else of the IPv6 one
/// (`/proc/net/ipv6_route`), else the first interface that is up and not loopback.
pub fn default_interface() -> Option<String> {
    if let Ok(t) = fs::read_to_string("/proc/net/route") {
        // Columns: Iface Destination Gateway Flags ...; the default route has destination 0.
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 2 && f[1] == "00000000" {
                return Some(f[0].to_string());
            }
        }
    }
    if let Ok(t) = fs::read_to_string("/proc/net/ipv6_route") {
        // Columns: dest dest_len src src_len next_hop metric refcnt use flags iface.
        for line in t.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
                return Some(f[9].to_string());
            }
        }
    }
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        n != "lo"
            && fs::read_to_string(format!("/sys/class/net/{n}/operstate"))
                .is_ok_and(|s| s.trim() == "up")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_without_a_link_layer_header_get_the_ip_programs() {
        assert_eq!(framing_of(ARPHRD_ETHER), (Framing::Ethernet, true));
        assert_eq!(framing_of(ARPHRD_LOOPBACK), (Framing::Ethernet, true));
        for t in [
            ARPHRD_NONE,
            ARPHRD_TUNNEL,
            ARPHRD_IPGRE,
            ARPHRD_PPP,
            ARPHRD_RAWIP,
        ] {
            assert_eq!(framing_of(t), (Framing::Ip, true), "{t}");
        }
        // Infiniband: not Ethernet, not known.
        assert_eq!(framing_of(32), (Framing::Ip, false));
    }

    #[test]
    fn loopback_is_ethernet_framed() {
        assert_eq!(link_type("lo"), Some(ARPHRD_LOOPBACK));
        assert!(is_ethernet("lo"));
        assert_eq!(link_type("no-such-if-x"), None);
    }
}
