//! Section 1: the classifier's cost per packet with `BPF_PROG_TEST_RUN` (a large repeat count,
//! the kernel's mean), next to an empty TC classifier (`r0 = -1; exit`, the same verdict)
//! measured in the same run on the same frames; and the loaded programs' sizes from the kernel.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Context as _, Result, bail};
use ayaflow::ebpf::{KernelProgram, LoadOptions, test_run::test_run};
use ayaflow_common::{counters::Counter, flow::Direction, globals};

use crate::median;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// One representative frame.
pub struct Case {
    pub name: &'static str,
    pub frame: Vec<u8>,
}

fn eth(ether_type: u16, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    if let Some(vid) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2]);
    h.extend_from_slice(payload);
    h
}

fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    h.extend_from_slice(payload);
    h
}

fn tcp(payload: &[u8]) -> Vec<u8> {
    let mut h = vec![
        0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff,
    ];
    h.extend_from_slice(&[0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x9c, 0x40, 0x00, 0x35];
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// The frames of the issue: IPv4/TCP 64 B, IPv4/UDP, IPv6/TCP behind a hop-by-hop header,
/// VLAN-tagged IPv4/UDP, and a malformed frame (TCP header cut short).
pub fn cases() -> Vec<Case> {
    let mut hop = vec![6, 0];
    hop.resize(8, 0);
    hop.extend_from_slice(&tcp(&[0; 10]));
    let tcp4 = eth(0x0800, None, &ipv4(6, &tcp(&[0; 10])));
    vec![
        Case {
            name: "IPv4/TCP",
            frame: tcp4.clone(),
        },
        Case {
            name: "IPv4/UDP",
            frame: eth(0x0800, None, &ipv4(17, &udp(&[0; 22]))),
        },
        Case {
            name: "IPv6/TCP + hop-by-hop",
            frame: eth(0x86dd, None, &ipv6(0, &hop)),
        },
        Case {
            name: "802.1Q IPv4/UDP",
            frame: eth(0x0800, Some(100), &ipv4(17, &udp(&[0; 18]))),
        },
        Case {
            name: "malformed (TCP cut)",
            frame: tcp4[..14 + 20 + 10].to_vec(),
        },
    ]
}

/// What the kernel says about a loaded program.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgInfo {
    pub jited_bytes: u32,
    pub xlated_bytes: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program fd.
pub fn prog_info(fd: BorrowedFd<'_>) -> Result<ProgInfo> {
    let mut info = [0u8; 256];
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
        _pad: [u64; 4],
    }
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
        _pad: [0; 4],
    };
    // SAFETY: attr points at a buffer of info_len bytes that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut Attr,
            size_of::<Attr>() as u32,
        )
    };
    if rc < 0 {
        bail!(
            "BPF_OBJ_GET_INFO_BY_FD: {}",
            std::io::Error::last_os_error()
        );
    }
    let u32_at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().expect("4 bytes"));
    // Offsets in struct bpf_prog_info (include/uapi/linux/bpf.h).
    Ok(ProgInfo {
        jited_bytes: u32_at(16),
        xlated_bytes: u32_at(20),
    })
}

/// The empty classifier's program name.
pub const EMPTY_NAME: &str = "empty_cls";

/// The touching classifier's program name.
pub const TOUCH_NAME: &str = "touch_cls";

/// Loads `r0 = -1; exit` as a TC classifier: the floor every classifier pays.
pub fn load_empty() -> Result<OwnedFd> {
    load_raw(
        EMPTY_NAME,
        &[
            // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm -1
            u64::from_le_bytes([0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            // BPF_JMP | BPF_EXIT
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ],
    )
}

/// Loads the empty classifier with one `bpf_skb_load_bytes(skb, 14, fp - 8, 1)` before its
/// verdict (see `Observer::TouchTc`).
pub fn load_touch() -> Result<OwnedFd> {
    let i = |code: u8, regs: u8, imm: i32| {
        let b = imm.to_le_bytes();
        u64::from_le_bytes([code, regs, 0, 0, b[0], b[1], b[2], b[3]])
    };
    load_raw(
        TOUCH_NAME,
        &[
            i(0xb7, 0x02, 14), // r2 = 14 (offset; r1 is the context already)
            i(0xbf, 0xa3, 0),  // r3 = r10
            i(0x07, 0x03, -8), // r3 += -8
            i(0xb7, 0x04, 1),  // r4 = 1
            i(0x85, 0x00, 26), // call bpf_skb_load_bytes
            i(0xb7, 0x00, -1), // r0 = -1
            i(0x95, 0x00, 0),  // exit
        ],
    )
}

fn load_raw(prog_name: &str, insns: &[u64]) -> Result<OwnedFd> {
    let license = c"GPL";
    #[repr(C)]
    struct Attr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        _rest: [u64; 16],
    }
    let mut name = [0u8; 16];
    name[..prog_name.len()].copy_from_slice(prog_name.as_bytes());
    let attr = Attr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        _rest: [0; 16],
    };
    // SAFETY: a zero-padded bpf_attr for BPF_PROG_LOAD whose pointers outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const Attr,
            size_of::<Attr>() as u32,
        )
    };
    if fd < 0 {
        bail!(
            "loading the empty classifier: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One frame's result: median ns per packet over the runs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub frame: String,
    pub bytes: usize,
    pub raw_ns: f64,
    pub flows_ns: f64,
    pub empty_ns: f64,
}

/// Sizes of the loaded programs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Size {
    pub program: String,
    pub xlated_insns: u32,
    pub jited_bytes: u32,
}

/// Section 1's results.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub repeat: u32,
    pub runs: usize,
    pub rows: Vec<Row>,
    pub sizes: Vec<Size>,
}

/// Runs every case `runs` times with `repeat` repetitions through ayaflow's ingress classifier
/// (raw and flow mode) and the empty one, interleaved so that all see the same machine.
pub fn run(repeat: u32, runs: usize) -> Result<Report> {
    // Raw mode pushes one 64-byte event (+ 8-byte header) per repetition: size the ring so a
    // whole run fits and each measures the real reserve+submit path, not the "full" path, and
    // four times that, so that a run never fills a quarter of it: past a quarter the program
    // forces a wake-up of the reader on every submit (`globals::WAKEUP_BYTES`), which nobody
    // reads here and which the agent's 10 ms drain keeps from happening in practice.
    let ring = ((repeat as u64 * 72 * 4).next_power_of_two()).max(8 << 20) as u32;
    let mut raw = KernelProgram::load(&LoadOptions {
        capture_mode: globals::CAPTURE_MODE_RAW,
        ring_buffer_size: ring,
        ..LoadOptions::default()
    })
    .context("loading the classifier (raw mode)")?;
    let mut raw_ring = raw.take_events()?;
    let raw_counters = raw.take_counters()?;
    let flows = KernelProgram::load(&LoadOptions {
        capture_mode: globals::CAPTURE_MODE_FLOWS,
        ..LoadOptions::default()
    })
    .context("loading the classifier (flow mode)")?;
    let empty = load_empty()?;

    let mut sizes = Vec::new();
    for (name, fd) in [
        (
            "ayaflow tc_ingress, raw mode",
            raw.program_fd(Direction::Ingress),
        ),
        (
            "ayaflow tc_ingress, flow mode",
            flows.program_fd(Direction::Ingress),
        ),
        ("empty classifier", empty.as_fd()),
    ] {
        let i = prog_info(fd)?;
        sizes.push(Size {
            program: name.to_string(),
            xlated_insns: i.xlated_bytes / 8,
            jited_bytes: i.jited_bytes,
        });
    }

    let mut rows = Vec::new();
    for case in cases() {
        let (mut r, mut f, mut e) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = |fd| -> Result<f64> {
                let res = test_run(fd, &case.frame, None, repeat)
                    .with_context(|| format!("BPF_PROG_TEST_RUN on {}", case.name))?;
                if res.retval != u32::MAX {
                    bail!("{}: the classifier returned {}", case.name, res.retval);
                }
                Ok(res.duration_ns as f64)
            };
            e.push(t(empty.as_fd())?);
            r.push(t(raw.program_fd(Direction::Ingress))?);
            while raw_ring.next_record().is_some() {}
            f.push(t(flows.program_fd(Direction::Ingress))?);
        }
        rows.push(Row {
            frame: case.name.to_string(),
            bytes: case.frame.len(),
            raw_ns: median(&r),
            flows_ns: median(&f),
            empty_ns: median(&e),
        });
    }
    let drops = raw_counters.read()?.sum(Counter::RingbufDrops);
    if drops != 0 {
        bail!(
            "the ring buffer dropped {drops} events during the raw-mode runs: the timing is not that of the normal path"
        );
    }
    Ok(Report {
        repeat,
        runs,
        rows,
        sizes,
    })
}

/// `--hold-empty-tc <if>`: attaches the empty classifier to `<if>`'s TCX ingress (in this
/// process's network namespace), says "attached", and holds the link until a signal ends the
/// process (the kernel detaches it when the link's fd closes).
pub fn hold_empty_tc(ifname: &str, touch: bool) -> Result<()> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_TCX_INGRESS: u32 = 46;
    let prog = if touch { load_touch()? } else { load_empty()? };
    let cname = std::ffi::CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
    }
    // link_create: prog_fd, target_ifindex, attach_type, flags, then zeroed tcx options
    // (relative_fd 0, expected_revision 0: append after whatever is attached).
    let mut attr = [0u32; 16];
    attr[0] = prog.as_raw_fd() as u32;
    attr[1] = ifindex;
    attr[2] = BPF_TCX_INGRESS;
    // SAFETY: a zero-padded bpf_attr for BPF_LINK_CREATE.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_ptr(),
            size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        bail!(
            "attaching the empty classifier to {ifname}: {}",
            std::io::Error::last_os_error()
        );
    }
    eprintln!("empty classifier attached to {ifname} (TCX ingress, link fd {fd})");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
