//! A real IPFIX collector for the export tests: nfcapd (Debian `nfdump`) listening inside a
//! test namespace, and `nfdump` reading back what it stored.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
};

use crate::{netns::NetPair, wait_for};

/// One record as nfdump prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfRecord {
    pub proto: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// Input and output interface indexes (ingress records have `input`, egress `output`).
    pub input: u32,
    pub output: u32,
    pub packets: u64,
    pub bytes: u64,
    /// TCP flags as nfdump writes them, e.g. `.AP.SF`.
    pub flags: String,
}

/// nfcapd running in a namespace; stopped (SIGTERM, which writes its last file) on drop.
pub struct Collector {
    child: Option<Child>,
    ns: String,
    pub dir: PathBuf,
    pub port: u16,
}

impl Collector {
    /// Starts nfcapd on 127.0.0.1:`port` of namespace `ns`, storing into `dir`; returns once it
    /// listens.
    pub fn start(ns: &str, port: u16, dir: &Path) -> Collector {
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = NetPair::command(ns, "nfcapd")
            .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-t", "60"])
            .arg("-w")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting nfcapd (Debian package nfdump; `cargo xtask test` installs it)");
        let c = Collector {
            child: Some(child),
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            port,
        };
        wait_for(30, "nfcapd to listen", || c.listening().then_some(()));
        c
    }

    fn listening(&self) -> bool {
        let out = NetPair::command(&self.ns, "ss")
            .args(["-Hlun", &format!("sport = :{}", self.port)])
            .output()
            .expect("ss (iproute2)");
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }

    /// Stops nfcapd (it writes its current file) and returns every record it stored.
    pub fn stop(mut self) -> Vec<NfRecord> {
        self.terminate();
        read_records(&self.dir)
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs nfcapd, so the pid is nfcapd's.
            // SAFETY: kill on the pid of a child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            wait_for(30, "nfcapd to exit", || child.try_wait().ok().flatten());
        }
    }

    /// nfcapd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `nfdump -R dir`, one record per line in a fixed format.
pub fn read_records(dir: &Path) -> Vec<NfRecord> {
    let out = std::process::Command::new("nfdump")
        .arg("-R")
        .arg(dir)
        .args([
            "-q",
            "-N",
            // Full IPv6 addresses (nfdump shortens them by default).
            "-6",
            "-o",
            "fmt:%pr|%sa|%sp|%da|%dp|%in|%out|%pkt|%byt|%flg",
        ])
        .output()
        .expect("running nfdump");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nfdump failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("unexpected nfdump line {l:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<NfRecord> {
    let f: Vec<&str> = line.split('|').map(str::trim).collect();
    let proto = match f.first()?.to_ascii_uppercase().as_str() {
        "TCP" => 6,
        "UDP" => 17,
        "ICMP" => 1,
        "ICMP6" | "IPV6-ICMP" => 58,
        other => other.parse().ok()?,
    };
    // nfdump writes ICMP's type.code in the destination port column.
    let port = |s: &str| -> u16 { s.parse().unwrap_or(0) };
    Some(NfRecord {
        proto,
        src: f.get(1)?.parse().ok()?,
        src_port: port(f.get(2)?),
        dst: f.get(3)?.parse().ok()?,
        dst_port: port(f.get(4)?),
        input: f.get(5)?.parse().ok()?,
        output: f.get(6)?.parse().ok()?,
        packets: f.get(7)?.parse().ok()?,
        bytes: f.get(8)?.parse().ok()?,
        flags: f.get(9)?.to_string(),
    })
}
