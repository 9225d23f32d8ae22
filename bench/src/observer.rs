//! The observers run on the receiving veth: ayaFlow in each mode, and the tools users would pick
//! instead (tcpdump, softflowd, pmacctd), each started inside namespace `b`, waited for until it
//! captures, asked what it counted, and stopped by its pid (SIGTERM/SIGINT, then SIGKILL after a
//! deadline). Nothing is left running: [`Running`] kills its process on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    http,
    netns::{Pair, in_ns},
    procstat::{self, Cpu},
};

/// The agent's API port inside namespace `b`.
pub const AGENT_PORT: u16 = 3000;

/// The window of the aggregated modes, seconds: the one `k8s/daemonset.yaml` sets.
pub const WINDOW_SECS: u32 = 60;

/// Who watches the traffic.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Observer {
    /// Nobody: the baseline every extra cost is measured against.
    None,
    /// ayaFlow, one row per packet (the product's default).
    AyaRaw,
    /// ayaFlow, raw events aggregated in the agent into windows.
    AyaAgg,
    /// ayaFlow, flows aggregated in the kernel (`--capture-mode flows`), windows stored.
    AyaFlows,
    /// `tcpdump -w /dev/null`.
    /// `ayaflow-flows` exporting IPFIX as well, every flow every second (`--ipfix-active-timeout
    /// 1`), to a loopback port nobody listens on: the export's whole cost (cache, encoding, a
    /// `send` per message), the collector's none.
    AyaFlowsIpfix,
    TcpdumpNull,
    /// `tcpdump -w <file>`.
    TcpdumpFile,
    /// `softflowd`, NetFlow v9 export to a loopback port nobody listens on.
    Softflowd,
    /// `pmacctd`, 5-tuple accounting in its in-memory table.
    Pmacctd,
    /// The empty classifier (`r0 = -1; exit`) on the same TCX hook: what any TC program costs
    /// in situ (the hook's dispatch, and with the BPF statistics on, their own clock reads).
    EmptyTc,
    /// The empty classifier plus one `bpf_skb_load_bytes` of the frame's byte 14 (a paged
    /// frame's first byte beyond its linear Ethernet header): what any program that reads a
    /// frame's headers pays for the first touch of its data. Section `inplace` only (not in
    /// `ALL`).
    TouchTc,
}

impl Observer {
    pub const ALL: [Observer; 10] = [
        Observer::None,
        Observer::AyaRaw,
        Observer::AyaAgg,
        Observer::AyaFlows,
        Observer::AyaFlowsIpfix,
        Observer::TcpdumpNull,
        Observer::TcpdumpFile,
        Observer::Softflowd,
        Observer::Pmacctd,
        Observer::EmptyTc,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Observer::None => "none",
            Observer::AyaRaw => "ayaflow-raw",
            Observer::AyaAgg => "ayaflow-agg",
            Observer::AyaFlows => "ayaflow-flows",
            Observer::AyaFlowsIpfix => "ayaflow-flows-ipfix",
            Observer::TcpdumpNull => "tcpdump-null",
            Observer::TcpdumpFile => "tcpdump-file",
            Observer::Softflowd => "softflowd",
            Observer::Pmacctd => "pmacctd",
            Observer::EmptyTc => "empty-tc",
            Observer::TouchTc => "touch-tc",
        }
    }

    pub fn parse(s: &str) -> Option<Observer> {
        Observer::ALL.into_iter().find(|o| o.name() == s)
    }

    pub fn is_ayaflow(&self) -> bool {
        matches!(
            self,
            Observer::AyaRaw | Observer::AyaAgg | Observer::AyaFlows | Observer::AyaFlowsIpfix
        )
    }

    /// The agent in flow mode (events only for flows the kernel table had no slot for).
    pub fn is_flow_mode(&self) -> bool {
        matches!(self, Observer::AyaFlows | Observer::AyaFlowsIpfix)
    }

    pub fn is_peer(&self) -> bool {
        !self.is_ayaflow()
            && !matches!(self, Observer::None | Observer::EmptyTc | Observer::TouchTc)
    }

    /// The name of its TCX program on if_b ingress, for the in-situ BPF statistics.
    pub fn tcx_program(&self) -> Option<&'static str> {
        match self {
            o if o.is_ayaflow() => Some(ayaflow_common::globals::PROG_INGRESS),
            Observer::EmptyTc => Some(crate::kernel::EMPTY_NAME),
            Observer::TouchTc => Some(crate::kernel::TOUCH_NAME),
            _ => None,
        }
    }

    /// The command line as a user would type it (`<if>` for the interface, `<dir>` for the
    /// run's scratch directory).
    pub fn command_line(&self) -> String {
        let mut v = self.args(Path::new("<dir>"), "<if>");
        if let Some(first) = v.first_mut()
            && first.contains('/')
        {
            *first = "ayaflow".into();
        }
        v.join(" ")
    }

    /// Program and arguments.
    fn args(&self, dir: &Path, ifname: &str) -> Vec<String> {
        let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let agent = |extra: &[&str]| {
            let mut v = s(&[
                "ayaflow",
                "--interface",
                ifname,
                "--direction",
                "ingress",
                "--bind-address",
                "127.0.0.1",
                "--port",
                "3000",
                "--max-connections",
                "262144",
                "--flow-map-size",
                "262144",
                "--connection-timeout",
                "3600",
                "--quiet",
                "--db-path",
            ]);
            v.push(d("ayaflow.db"));
            v.extend(s(extra));
            v
        };
        let window = WINDOW_SECS.to_string();
        match self {
            Observer::None => Vec::new(),
            // This bench binary, holding the empty classifier's TCX link until SIGINT.
            Observer::EmptyTc => s(&["ayaflow-bench", "--hold-empty-tc", ifname]),
            Observer::TouchTc => s(&["ayaflow-bench", "--hold-empty-tc", ifname, "--touch"]),
            Observer::AyaRaw => agent(&["--capture-mode", "raw"]),
            Observer::AyaAgg => agent(&["--capture-mode", "raw", "--aggregation-window", &window]),
            Observer::AyaFlows => {
                agent(&["--capture-mode", "flows", "--aggregation-window", &window])
            }
            Observer::AyaFlowsIpfix => agent(&[
                "--capture-mode",
                "flows",
                "--aggregation-window",
                &window,
                "--ipfix-collectors",
                "127.0.0.1:4739",
                "--ipfix-active-timeout",
                "1",
            ]),
            // -Z root: Debian's tcpdump drops to user tcpdump, which may not write <dir>.
            Observer::TcpdumpNull => s(&[
                "tcpdump",
                "-i",
                ifname,
                "-n",
                "-Z",
                "root",
                "-w",
                "/dev/null",
            ]),
            Observer::TcpdumpFile => {
                let mut v = s(&["tcpdump", "-i", ifname, "-n", "-Z", "root", "-w"]);
                v.push(d("capture.pcap"));
                v
            }
            // -m: room for 100,000 flows (default 8,192); -v 9 -6: IPv6 flows too.
            Observer::Softflowd => {
                let mut v = s(&[
                    "softflowd",
                    "-i",
                    ifname,
                    "-d",
                    "-v",
                    "9",
                    "-6",
                    "-m",
                    "262144",
                    "-n",
                    "127.0.0.1:9995",
                    "-c",
                ]);
                v.push(d("softflowd.ctl"));
                v.push("-p".into());
                v.push(d("softflowd.pid"));
                v
            }
            Observer::Pmacctd => {
                let mut v = s(&["pmacctd", "-f"]);
                v.push(d("pmacctd.conf"));
                v
            }
        }
    }
}

/// A started observer; killed (SIGKILL) on drop unless stopped.
pub struct Running {
    pub observer: Observer,
    child: Child,
    pid: i32,
    dir: PathBuf,
    ns: String,
    reaped: bool,
}

/// What a stopped observer reported.
#[derive(Clone, Debug, Default)]
pub struct Exit {
    /// CPU of the process over its whole life (reaped children included), from wait4.
    pub cpu: Cpu,
    /// Its stderr.
    pub log: String,
}

impl Running {
    /// Starts `observer` on `pair.if_b` with scratch directory `dir`, and waits until it captures.
    pub fn start(observer: Observer, pair: &Pair, dir: &Path, agent_bin: &Path) -> Result<Running> {
        let mut args = observer.args(dir, &pair.if_b);
        if observer.is_ayaflow() {
            args[0] = agent_bin.to_string_lossy().into_owned();
        }
        if matches!(observer, Observer::EmptyTc | Observer::TouchTc) {
            args[0] = std::env::current_exe()?.to_string_lossy().into_owned();
        }
        Running::spawn(observer, args, pair, dir)
    }

    /// Starts a raw-mode agent (the product's default) with the history at `db` and a live
    /// table of up to 1,100,000 connections that never time out during the bench.
    pub fn start_agent(pair: &Pair, dir: &Path, agent_bin: &Path, db: &Path) -> Result<Running> {
        Running::start_agent_on(pair, dir, agent_bin, db, &pair.if_b)
    }

    /// [`Running::start_agent`] with `--interface interfaces` (names or patterns in `b`).
    pub fn start_agent_on(
        pair: &Pair,
        dir: &Path,
        agent_bin: &Path,
        db: &Path,
        interfaces: &str,
    ) -> Result<Running> {
        let args = [
            agent_bin.to_string_lossy().as_ref(),
            "--interface",
            interfaces,
            "--bind-address",
            "127.0.0.1",
            "--port",
            &AGENT_PORT.to_string(),
            "--max-connections",
            "1100000",
            "--connection-timeout",
            "3600",
            "--quiet",
            "--capture-mode",
            "raw",
            "--db-path",
            db.to_string_lossy().as_ref(),
        ]
        .map(str::to_string)
        .to_vec();
        Running::spawn(Observer::AyaRaw, args, pair, dir)
    }

    /// The agent with its default options: only the interface, the history file and the API's
    /// address (the bench's port on loopback) set, for its idle footprint.
    pub fn start_default_agent(
        pair: &Pair,
        dir: &Path,
        agent_bin: &Path,
        db: &Path,
    ) -> Result<Running> {
        let args = [
            agent_bin.to_string_lossy().as_ref(),
            "--interface",
            &pair.if_b,
            "--bind-address",
            "127.0.0.1",
            "--port",
            &AGENT_PORT.to_string(),
            "--quiet",
            "--db-path",
            db.to_string_lossy().as_ref(),
        ]
        .map(str::to_string)
        .to_vec();
        Running::spawn(Observer::AyaRaw, args, pair, dir)
    }

    fn spawn(observer: Observer, args: Vec<String>, pair: &Pair, dir: &Path) -> Result<Running> {
        std::fs::create_dir_all(dir)?;
        if observer == Observer::Pmacctd {
            std::fs::write(
                dir.join("pmacctd.conf"),
                format!(
                    "daemonize: false\npcap_interface: {}\naggregate: src_host,dst_host,src_port,dst_port,proto\n\
                     plugins: memory\nimt_path: {}\nimt_mem_pools_number: 1024\nimt_mem_pools_size: 1048576\nimt_buckets: 131101\n\
                     plugin_buffer_size: 102400\nplugin_pipe_size: 102400000\n",
                    pair.if_b,
                    dir.join("pmacctd.pipe").display()
                ),
            )?;
        }
        let log = std::fs::File::create(dir.join("stderr.log"))?;
        let child = Pair::command(&pair.ns_b, &args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", args.join(" ")))?;
        let pid = child.id() as i32;
        let mut r = Running {
            observer,
            child,
            pid,
            dir: dir.to_path_buf(),
            ns: pair.ns_b.clone(),
            reaped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = r.child.try_wait() {
                r.reaped = true;
                bail!("{} exited early ({st}): {}", observer.name(), r.log());
            }
            if r.ready() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} not ready after 60 s: {}", observer.name(), r.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let it settle (pcap tools open their ring after the "listening" line).
        std::thread::sleep(Duration::from_millis(500));
        Ok(r)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn ready(&self) -> bool {
        match self.observer {
            Observer::None => true,
            Observer::AyaRaw | Observer::AyaAgg | Observer::AyaFlows | Observer::AyaFlowsIpfix => {
                http::get(&self.ns, AGENT_PORT, "/readyz").is_some_and(|(c, _)| c == 200)
            }
            Observer::TcpdumpNull | Observer::TcpdumpFile => self.log().contains("listening on"),
            Observer::Softflowd => self.dir.join("softflowd.ctl").exists(),
            Observer::Pmacctd => self.log().contains("waiting for data"),
            Observer::EmptyTc | Observer::TouchTc => self.log().contains("attached"),
        }
    }

    /// CPU of the process tree now.
    pub fn cpu(&self) -> Cpu {
        procstat::tree_cpu(self.pid)
    }

    /// The agent's /metrics text.
    pub fn metrics(&self) -> Option<String> {
        http::get(&self.ns, AGENT_PORT, "/metrics").map(|(_, b)| b)
    }

    /// softflowd's statistics (`softflowctl statistics`).
    pub fn softflowd_stats(&self) -> Result<String> {
        let out = Pair::command(&self.ns, "softflowctl")
            .arg("-c")
            .arg(self.dir.join("softflowd.ctl"))
            .arg("statistics")
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// pmacctd's table summed: (packets, entries).
    pub fn pmacct_totals(&self) -> Result<(u64, u64)> {
        let out = Pair::command(&self.ns, "pmacct")
            .arg("-p")
            .arg(self.dir.join("pmacctd.pipe"))
            .args(["-s", "-O", "csv"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let col = header
            .iter()
            .position(|h| *h == "PACKETS")
            .context("pmacct output has no PACKETS column")?;
        let (mut packets, mut entries) = (0, 0);
        for l in lines {
            if let Some(v) = l
                .split(',')
                .nth(col)
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                packets += v;
                entries += 1;
            }
        }
        Ok((packets, entries))
    }

    /// Peak RSS of the tree now (sum of VmHWM), KiB.
    pub fn hwm_kb(&self) -> u64 {
        procstat::tree_hwm_kb(self.pid)
    }

    /// Stops it (SIGTERM for the agent, SIGINT for the tools, as Ctrl-C would), waits up to 60 s,
    /// then SIGKILL. Returns its rusage and log.
    pub fn stop(mut self) -> Result<Exit> {
        let sig = if self.observer.is_ayaflow() {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        // SAFETY: kill on the pid of our own child, not yet reaped.
        unsafe { libc::kill(self.pid, sig) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let mut status = 0;
        loop {
            // SAFETY: wait4 on our own child with valid out-pointers.
            let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
            if rc == self.pid {
                break;
            }
            if rc < 0 {
                bail!("wait4({}): {}", self.pid, std::io::Error::last_os_error());
            }
            if Instant::now() > deadline {
                eprintln!(
                    "bench: {} ignored the signal for 60 s: SIGKILL",
                    self.observer.name()
                );
                // SAFETY: as above.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                // SAFETY: as above; blocking wait after SIGKILL.
                unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) };
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reaped = true;
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
        Ok(Exit {
            cpu: Cpu {
                user_ns: tv(ru.ru_utime),
                sys_ns: tv(ru.ru_stime),
            },
            log: self.log(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            // Its children first (pmacctd's plugin), then itself: all processes we started.
            for pid in procstat::tree(self.pid).into_iter().rev() {
                if pid != self.pid {
                    // SAFETY: kill on a descendant of our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The tc_ingress program attached to `if_b`: (run time ns, run count), when the kernel keeps
/// statistics (`BPF_ENABLE_STATS`).
pub fn tcx_run_stats(pair: &Pair, program: &'static str) -> Option<(u64, u64)> {
    let ifname = pair.if_b.clone();
    in_ns(&pair.ns_b, move || {
        let (_, progs) = aya::programs::SchedClassifier::query_tcx(
            &ifname,
            aya::programs::TcAttachType::Ingress,
        )
        .ok()?;
        let p = progs.iter().find(|p| p.name_as_str() == Some(program))?;
        Some((p.run_time().as_nanos() as u64, p.run_count()))
    })
    .ok()
    .flatten()
}

/// Keeps the kernel's BPF run-time statistics on while alive (`BPF_ENABLE_STATS`; the kernel
/// turns them off when the fd closes, also if the bench dies).
pub struct BpfStats(
    #[expect(dead_code, reason = "held for its Drop, which closes the fd")] std::os::fd::OwnedFd,
);

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        use std::os::fd::FromRawFd;
        const BPF_ENABLE_STATS: libc::c_long = 32;
        let mut attr = [0u32; 8]; // type = BPF_STATS_RUN_TIME (0)
        // SAFETY: a zeroed bpf_attr with enable_stats.type = 0.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_mut_ptr(), 32u32) };
        if fd < 0 {
            bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned this fd to us.
        Ok(BpfStats(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd as i32)
        }))
    }
}
