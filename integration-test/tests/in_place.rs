//! The classifier on real skbs reads them in place and never changes them: paged frames from an
//! AF_PACKET TX ring and real TCP with GSO and GRO are counted exactly (every segment and byte,
//! against the interfaces' own counters), with the right keys, and arrive intact at a
//! checksum-verifying receiver. The loaded program calls no helper that can change a packet.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::mpsc,
    time::Duration,
};

use ayaflow::ebpf::{KernelProgram, LoadOptions, counters::CounterReader};
use ayaflow_common::{
    counters::Counter,
    event::{EVENT_FLAG_PARSE_ERROR, PacketEvent},
    flow::Direction,
};
use integration_test::{
    frames::*,
    netns::{self, LinkStats, NetPair},
    require_bpf, txring, wait_for,
};

/// Loads the classifier (raw mode) and attaches it to both hooks of both veth ends; returns it
/// with the two ends' interface indexes (a's, then b's).
fn attach_everywhere(pair: &NetPair) -> (KernelProgram, [u32; 2]) {
    require_bpf();
    let mut prog = KernelProgram::load(&LoadOptions::default()).expect("loading the classifier");
    let mut ifindexes = [0; 2];
    for (i, (ns, ifname)) in [(&pair.ns_a, &pair.if_a), (&pair.ns_b, &pair.if_b)]
        .into_iter()
        .enumerate()
    {
        let ifname = ifname.clone();
        let ifindex;
        (prog, ifindex) = NetPair::in_ns(ns, move || {
            let ifindex = prog
                .attach(&ifname, &Direction::ALL)
                .unwrap_or_else(|e| panic!("attaching to {ifname}: {e}"));
            (prog, ifindex)
        });
        ifindexes[i] = ifindex;
    }
    (prog, ifindexes)
}

/// (ingress packets, ingress bytes, egress packets, egress bytes) from the program and the sum
/// of both interfaces' (rx, tx) counters, read when neither moves (links coming up send
/// neighbour discovery and MLD frames at any time; both sides count those too).
fn quiet_totals(pair: &NetPair, counters: &CounterReader) -> ([u64; 4], [u64; 4]) {
    let read = || {
        let t = counters.read().unwrap();
        let ours = [
            t.get(Direction::Ingress, Counter::Packets),
            t.get(Direction::Ingress, Counter::Bytes),
            t.get(Direction::Egress, Counter::Packets),
            t.get(Direction::Egress, Counter::Bytes),
        ];
        let (a, b) = (
            LinkStats::read(&pair.ns_a, &pair.if_a),
            LinkStats::read(&pair.ns_b, &pair.if_b),
        );
        let links = [
            a.rx_packets + b.rx_packets,
            a.rx_bytes + b.rx_bytes,
            a.tx_packets + b.tx_packets,
            a.tx_bytes + b.tx_bytes,
        ];
        (ours, links)
    };
    wait_for(20, "the counters to stand still", || {
        let first = read();
        std::thread::sleep(Duration::from_millis(200));
        (read() == first).then_some(first)
    })
}

fn drain(ring: &mut ayaflow::ebpf::EventRing) -> Vec<PacketEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next_record() {
        events.push(ayaflow::decode::packet_event(item).expect("a whole event"));
    }
    events
}

/// `name` of the `Udp:` (or `Tcp:`) line of /proc/net/snmp in the calling thread's namespace.
fn snmp(proto: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with(&format!("{proto}:")));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

const UDP_PORT: u16 = 9999;

/// Payload of datagram `seq`: its number, then bytes that depend on it and their position.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.extend((4..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8));
    p
}

#[test]
fn paged_frames_from_a_tx_ring_are_counted_exactly_and_arrive_intact() {
    let pair = NetPair::new(false);
    let (mut prog, [ifindex_a, ifindex_b]) = attach_everywhere(&pair);
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let (mac_a, mac_b) = (
        netns::mac(&pair.ns_a, &pair.if_a),
        netns::mac(&pair.ns_b, &pair.if_b),
    );
    // IPv4 and IPv6 in turn, from three source ports, payloads from 4 bytes to a full MTU.
    const N: u32 = 600;
    let sizes = [4usize, 5, 57, 200, 999, 1400];
    let mut frames = Vec::new();
    let mut expected: BTreeMap<(bool, u32), Vec<u8>> = BTreeMap::new();
    for seq in 0..N {
        let v6 = seq % 2 == 1;
        let body = payload(seq, sizes[seq as usize % sizes.len()]);
        let sport = 40000 + (seq % 3) as u16;
        let l3 = if v6 {
            eth(ETH_P_IPV6, &ipv6(17, A6, B6, &udp(sport, UDP_PORT, &body)))
        } else {
            eth(
                ETH_P_IP,
                &ipv4(17, A4, B4, &[], 0, &udp(sport, UDP_PORT, &body)),
            )
        };
        frames.push(deliverable(l3, mac_b, mac_a));
        expected.insert((v6, seq), body);
    }
    let frame_bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();

    let (ready_tx, ready_rx) = mpsc::channel();
    let receiver = NetPair::spawn_in_ns(&pair.ns_b, move || {
        let bind = |a: &str| {
            let s = UdpSocket::bind(SocketAddr::new(a.parse().unwrap(), UDP_PORT)).unwrap();
            let size: i32 = 8 << 20;
            // SAFETY: setsockopt on an open socket with a valid int.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const i32).cast(),
                    4,
                )
            };
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s
        };
        let socks = [bind(netns::ADDR_B4), bind(netns::ADDR_B6)];
        let csum_errors = snmp("Udp", "InCsumErrors");
        ready_tx.send(()).unwrap();
        let mut got = BTreeMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 2048];
        while got.len() < N as usize && std::time::Instant::now() < deadline {
            for (v6, s) in socks.iter().enumerate() {
                while let Ok(n) = s.recv(&mut buf) {
                    let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                    got.insert((v6 == 1, seq), buf[..n].to_vec());
                }
            }
        }
        (got, snmp("Udp", "InCsumErrors") - csum_errors)
    });
    ready_rx.recv().unwrap();
    let (before, links_before) = quiet_totals(&pair, &counters);
    drain(&mut ring);
    NetPair::in_ns(&pair.ns_a, {
        let ifname = pair.if_a.clone();
        move || txring::send(&ifname, &frames, Duration::from_secs(30))
    });
    let (got, csum_errors) = receiver.join().unwrap();
    assert_eq!(csum_errors, 0, "the receiver saw corrupted datagrams");
    assert_eq!(got.len(), expected.len(), "datagrams lost");
    assert!(got == expected, "a datagram's payload changed on the way");

    let (after, links_after) = quiet_totals(&pair, &counters);
    let delta = |a: [u64; 4], b: [u64; 4]| [0, 1, 2, 3].map(|i| a[i] - b[i]);
    let (ours, links) = (delta(after, before), delta(links_after, links_before));
    assert_eq!(
        ours, links,
        "program (in pkts, in bytes, out pkts, out bytes) vs the veths' counters"
    );
    assert!(ours[0] >= N as u64 && ours[1] >= frame_bytes, "{ours:?}");

    // Every frame was counted under its interface: a paged frame's headers are parsed from a
    // copy, and its key keeps the interface it was seen on (slot 0 counts hooks of no
    // interface; both ends have one).
    let unassigned = counters.read_slot(0).unwrap();
    assert_eq!(
        unassigned.sum(Counter::Packets),
        0,
        "packets counted under no interface: {unassigned:?}"
    );

    // Every frame is one event on each side, with its interface, its ports, its length and no
    // parse error: sent by a's egress hook, received by b's ingress hook.
    let events: Vec<_> = drain(&mut ring)
        .into_iter()
        .filter(|e| e.key.dst_port == UDP_PORT)
        .collect();
    for (d, ifindex) in [
        (Direction::Egress, ifindex_a),
        (Direction::Ingress, ifindex_b),
    ] {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.key.direction == d as u8)
            .collect();
        assert_eq!(mine.len(), N as usize, "{d:?} events");
        let elsewhere: Vec<u32> = mine
            .iter()
            .map(|e| e.key.ifindex)
            .filter(|&i| i != ifindex)
            .collect();
        assert!(
            elsewhere.is_empty(),
            "{d:?}: {} of {N} frames keyed to another interface than {ifindex}, e.g. {:?}",
            elsewhere.len(),
            &elsewhere[..elsewhere.len().min(3)]
        );
        assert!(mine.iter().all(|e| e.flags & EVENT_FLAG_PARSE_ERROR == 0));
        assert!(
            mine.iter()
                .all(|e| (40000..40003).contains(&e.key.src_port))
        );
        let bytes: u64 = mine.iter().map(|e| e.bytes as u64).sum();
        assert_eq!(bytes, frame_bytes, "{d:?} bytes");
    }
    assert_eq!(counters.read().unwrap().sum(Counter::ParseErrors), 0);
}

const TCP_PORT: u16 = 5201;
const BULK: usize = 48 << 20;
const TRANSACTIONS: usize = 200;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Bulk data a -> b (48 MiB, checked byte by byte), then small request/response transactions,
/// over a veth with GSO (TSO off, so the stack segments just before the driver and the veth
/// counts real segments) and GRO on the receiver: the egress hook sees GSO aggregates, the
/// ingress hook GRO aggregates, and both must add up to the interfaces' own counters.
#[test]
fn real_tcp_with_gso_and_gro_is_counted_exactly_and_arrives_intact() {
    let pair = NetPair::new(true);
    for (ns, ifname) in [(&pair.ns_a, &pair.if_a), (&pair.ns_b, &pair.if_b)] {
        netns::ethtool_k(ns, ifname, &["tso", "off", "gso", "on", "gro", "on"]);
    }
    let (mut prog, _) = attach_everywhere(&pair);
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let (before, links_before) = quiet_totals(&pair, &counters);
    drain(&mut ring);

    let dst = SocketAddr::new(netns::ADDR_B4.parse().unwrap(), TCP_PORT);
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = NetPair::spawn_in_ns(&pair.ns_b, move || {
        let l = TcpListener::bind(dst).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0;
        while at < BULK {
            let n = c.read(&mut buf[..(BULK - at).min(1 << 16)]).unwrap();
            assert!(n > 0, "the client closed early, at byte {at}");
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(at + k), "byte {} changed on the way", at + k);
            }
            at += n;
        }
        let mut req = [0u8; 64];
        for t in 0..TRANSACTIONS {
            c.read_exact(&mut req).unwrap();
            assert_eq!(req, [t as u8; 64]);
            c.write_all(&[!(t as u8); 256]).unwrap();
        }
        c
    });
    ready_rx.recv().unwrap();
    let (client, client_port) = NetPair::in_ns(&pair.ns_a, move || {
        let mut c = TcpStream::connect(dst).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let data: Vec<u8> = (0..BULK).map(pattern).collect();
        c.write_all(&data).unwrap();
        let mut resp = [0u8; 256];
        for t in 0..TRANSACTIONS {
            c.write_all(&[t as u8; 64]).unwrap();
            c.read_exact(&mut resp).unwrap();
            assert_eq!(resp, [!(t as u8); 256]);
        }
        let port = c.local_addr().unwrap().port();
        (c, port)
    });
    let server = server.join().unwrap();
    let (after, links_after) = quiet_totals(&pair, &counters);
    drop((client, server));

    let delta = |a: [u64; 4], b: [u64; 4]| [0, 1, 2, 3].map(|i| a[i] - b[i]);
    let (ours, mut links) = (delta(after, before), delta(links_after, links_before));
    // With GRO on, a veth receives through NAPI and counts each frame's bytes there, after
    // `eth_type_trans` pulled the Ethernet header (`stats->xdp_bytes += skb->len` in
    // veth_xdp_rcv, drivers/net/veth.c); its peer's tx counters are those same numbers. So
    // both count 14 bytes less per frame than went through the hooks.
    links[1] += 14 * links[0];
    links[3] += 14 * links[2];
    assert_eq!(
        ours, links,
        "program (in pkts, in bytes, out pkts, out bytes) vs the veths' counters (+14 B/frame)"
    );
    assert!(ours[1] > BULK as u64 && ours[3] > BULK as u64, "{ours:?}");

    let events = drain(&mut ring);
    let tcp: Vec<_> = events.iter().filter(|e| e.key.protocol == 6).collect();
    for e in &tcp {
        let ports = (e.key.src_port, e.key.dst_port);
        assert!(
            ports == (client_port, TCP_PORT) || ports == (TCP_PORT, client_port),
            "unexpected ports {ports:?}"
        );
        assert_eq!(e.flags & EVENT_FLAG_PARSE_ERROR, 0);
    }
    for d in Direction::ALL {
        let aggregates = tcp
            .iter()
            .filter(|e| e.key.direction == d as u8 && e.packets > 1)
            .count();
        assert!(
            aggregates > 0,
            "{d:?}: no GSO/GRO aggregate seen, the test did not exercise them"
        );
    }
    assert_eq!(counters.read().unwrap().sum(Counter::ParseErrors), 0);
}

/// Helpers that can change a packet (pull, store, resize, re-tag, checksum rewrites); an
/// observer must call none of them.
const CHANGING_HELPERS: &[&str] = &[
    "bpf_skb_pull_data",
    "bpf_skb_store_bytes",
    "bpf_skb_change_proto",
    "bpf_skb_change_type",
    "bpf_skb_change_tail",
    "bpf_skb_change_head",
    "bpf_skb_adjust_room",
    "bpf_skb_vlan_push",
    "bpf_skb_vlan_pop",
    "bpf_l3_csum_replace",
    "bpf_l4_csum_replace",
];

/// The id of the program behind `fd` (`bpf_prog_info.id`, BPF_OBJ_GET_INFO_BY_FD).
fn prog_id(fd: std::os::fd::BorrowedFd<'_>) -> u32 {
    let mut info = [0u32; 64];
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: 256,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: a valid attr for BPF_OBJ_GET_INFO_BY_FD (15); the kernel writes into `info`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 15, &mut attr, size_of::<Attr>() as u32) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    info[1]
}

#[test]
fn the_program_calls_no_helper_that_changes_a_packet() {
    require_bpf();
    let prog = KernelProgram::load(&LoadOptions::default()).expect("loading the classifier");
    for d in Direction::ALL {
        let id = prog_id(prog.program_fd(d));
        let out = std::process::Command::new("bpftool")
            .args(["prog", "dump", "xlated", "id", &id.to_string()])
            .output()
            .expect("bpftool (package bpftool)");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("call bpf_skb_load_bytes"),
            "the dump names helpers"
        );
        for h in CHANGING_HELPERS {
            assert!(
                !text.contains(&format!("call {h}#")),
                "{d:?} calls {h}:\n{text}"
            );
        }
    }
}
