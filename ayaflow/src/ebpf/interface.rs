//! Interface names: existence checks and the default choice (the default route's interface,
//! else the first up, non-loopback one).

use std::{ffi::CString, fs};

/// The kernel's index of `name`, if such an interface exists.
pub fn index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
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
