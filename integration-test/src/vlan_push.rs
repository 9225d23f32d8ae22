//! A test-only TC program that tags every frame it sees with `bpf_skb_vlan_push`, as a NIC
//! driver with tx VLAN offload would receive them from an 8021q device (no 8021q module here):
//! the kernel puts the new tag in the skb's metadata (`vlan_tci`), moving a tag already there
//! into the frame. Hand-assembled and loaded with `bpf(2)` so that the product's object holds
//! nothing that changes packets; attached as a TCX link, detached when dropped.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_EGRESS: u32 = 47;
/// `BPF_F_BEFORE`: attach before every program already on the hook (with no relative one).
const BPF_F_BEFORE: u32 = 1 << 3;
const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;

/// One eBPF instruction: opcode, dst and src registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = dst | (src << 4);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(b)
}

/// The attached program; dropping it detaches it.
pub struct VlanPusher {
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl VlanPusher {
    /// Attaches, first on `ifname`'s TCX egress (in the calling thread's namespace), a program
    /// that pushes `tags` in order, each a (TPID, VLAN ID): the last one pushed ends up in
    /// `vlan_tci`, the ones before it in the frame.
    pub fn attach(ifname: &str, tags: &[(u16, u16)]) -> VlanPusher {
        // r6 = r1 (the context survives the helper calls in r6).
        let mut insns = vec![insn(0xbf, 6, 1, 0, 0)];
        for &(tpid, vid) in tags {
            insns.extend([
                insn(0xbf, 1, 6, 0, 0),
                // The helper takes the TPID in network byte order.
                insn(0xb7, 2, 0, 0, tpid.to_be() as i32),
                insn(0xb7, 3, 0, 0, vid as i32),
                insn(0x85, 0, 0, 0, BPF_FUNC_SKB_VLAN_PUSH),
            ]);
        }
        // r0 = -1 (TC_ACT_UNSPEC: TCX_NEXT, the next program decides); exit.
        insns.extend([insn(0xb7, 0, 0, 0, -1), insn(0x95, 0, 0, 0, 0)]);
        let license = c"GPL";
        let mut log = vec![0u8; 65536];
        #[repr(C)]
        struct LoadAttr {
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
        name[..9].copy_from_slice(b"vlan_push");
        let attr = LoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
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
                &attr as *const LoadAttr,
                size_of::<LoadAttr>() as u32,
            )
        };
        assert!(
            fd >= 0,
            "loading the VLAN pusher: {}\n{}",
            std::io::Error::last_os_error(),
            String::from_utf8_lossy(&log).trim_end_matches('\0')
        );
        // SAFETY: a new fd nothing else owns.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        #[repr(C)]
        struct LinkAttr {
            prog_fd: u32,
            target_ifindex: u32,
            attach_type: u32,
            flags: u32,
            relative_fd: u32,
            _pad: u32,
            expected_revision: u64,
            _rest: [u64; 8],
        }
        let attr = LinkAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: crate::netns_ifindex(ifname),
            attach_type: BPF_TCX_EGRESS,
            flags: BPF_F_BEFORE,
            relative_fd: 0,
            _pad: 0,
            expected_revision: 0,
            _rest: [0; 8],
        };
        // SAFETY: a zero-padded bpf_attr for BPF_LINK_CREATE.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_CREATE,
                &attr as *const LinkAttr,
                size_of::<LinkAttr>() as u32,
            )
        };
        assert!(
            fd >= 0,
            "attaching the VLAN pusher to {ifname}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: as above.
        let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        VlanPusher {
            _prog: prog,
            _link: link,
        }
    }
}
