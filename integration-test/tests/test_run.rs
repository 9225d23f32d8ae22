//! The classifier on crafted frames through BPF_PROG_TEST_RUN: every protocol, VLAN tags, IPv4
//! options and fragments, IPv6 extension headers, GSO accounting and malformed frames. Each case
//! asserts the exact event, the exact counters and that the packet is let through.

use std::net::{Ipv4Addr, Ipv6Addr};

use ayaflow::ebpf::{
    KernelProgram, LoadOptions,
    counters::Totals,
    sweep::FlowDelta,
    test_run::{SkBuffCtx, test_run},
};
use ayaflow_common::{
    counters::Counter,
    event::{EVENT_FLAG_FRAGMENT, EVENT_FLAG_PARSE_ERROR, PacketEvent},
    flow::{Direction, FlowKey},
};
use integration_test::{frames::*, require_bpf};

/// TC_ACT_UNSPEC as the kernel reports it: "not my decision", the packet goes on.
const PASS: u32 = -1i32 as u32;
const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

struct Run {
    events: Vec<PacketEvent>,
    totals: Totals,
}

/// Loads a fresh program, runs `frame` once through `direction`'s hook, returns what it saw.
fn run(direction: Direction, frame: &[u8], ctx: Option<&SkBuffCtx>) -> Run {
    require_bpf();
    let mut prog = KernelProgram::load(&LoadOptions::default()).expect("loading the classifier");
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let r = test_run(prog.program_fd(direction), frame, ctx, 1)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e}", frame.len()));
    assert_eq!(
        r.retval, PASS,
        "the classifier must let every packet through"
    );
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(ayaflow::decode::packet_event(&item).expect("a whole event"));
    }
    Run {
        events,
        totals: counters.read().unwrap(),
    }
}

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

fn key(ether_type: u16, protocol: u8, src: [u8; 16], sp: u16, dst: [u8; 16], dp: u16) -> FlowKey {
    FlowKey {
        src_addr: src,
        dst_addr: dst,
        src_port: sp,
        dst_port: dp,
        ether_type,
        protocol,
        direction: 0,
    }
}

/// Asserts one event with `expected` fields (timestamp aside) and the matching counters.
fn assert_one(r: &Run, expected: PacketEvent, proto_counter: Counter, parse_error: bool) {
    assert_eq!(r.events.len(), 1, "exactly one event per packet");
    let mut got = r.events[0];
    assert!(got.timestamp_ns > 0);
    got.timestamp_ns = 0;
    assert_eq!(got, expected);
    let d = Direction::from_u8(expected.key.direction).unwrap();
    let t = &r.totals;
    assert_eq!(t.get(d, Counter::Packets), expected.packets as u64);
    assert_eq!(t.get(d, Counter::Bytes), expected.bytes as u64);
    assert_eq!(t.get(d, proto_counter), expected.packets as u64);
    assert_eq!(t.get(d, Counter::ParseErrors), parse_error as u64);
    assert_eq!(t.get(d, Counter::RingbufDrops), 0);
    let other = if d == Direction::Ingress {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    assert_eq!(
        t.get(other, Counter::Packets),
        0,
        "only the hook that ran counts"
    );
    let sum: u64 = [
        Counter::Tcp,
        Counter::Udp,
        Counter::Icmp,
        Counter::OtherIp,
        Counter::NonIp,
    ]
    .iter()
    .map(|&c| t.get(d, c))
    .sum();
    assert_eq!(
        sum, expected.packets as u64,
        "per-protocol counters add up to the total"
    );
}

fn event(key: FlowKey, bytes: usize) -> PacketEvent {
    PacketEvent {
        key,
        bytes: bytes as u32,
        packets: 1,
        ..PacketEvent::default()
    }
}

#[test]
fn ipv4_tcp_ports_and_flags() {
    let f = eth(
        ETH_P_IP,
        &ipv4(6, A4, B4, &[], 0, &tcp(40000, 443, 0x12, b"hello")),
    );
    let r = run(Direction::Ingress, &f, None);
    let e = PacketEvent {
        tcp_flags: 0x12,
        ..event(key(0x0800, 6, v4(A4), 40000, v4(B4), 443), f.len())
    };
    assert_one(&r, e, Counter::Tcp, false);
}

#[test]
fn ipv4_udp_on_egress_records_the_hook() {
    let f = eth(
        ETH_P_IP,
        &ipv4(17, A4, B4, &[], 0, &udp(5353, 53, &[0; 100])),
    );
    let r = run(Direction::Egress, &f, None);
    let mut k = key(0x0800, 17, v4(A4), 5353, v4(B4), 53);
    k.direction = Direction::Egress as u8;
    assert_one(&r, event(k, f.len()), Counter::Udp, false);
}

#[test]
fn ipv4_icmp_type_and_code() {
    let f = eth(ETH_P_IP, &ipv4(1, A4, B4, &[], 0, &icmp(8, 0, &[0; 56])));
    let r = run(Direction::Ingress, &f, None);
    let e = PacketEvent {
        icmp_type: 8,
        ..event(key(0x0800, 1, v4(A4), 0, v4(B4), 0), f.len())
    };
    assert_one(&r, e, Counter::Icmp, false);
}

#[test]
fn ipv6_icmpv6_type_and_code() {
    let f = eth(ETH_P_IPV6, &ipv6(58, A6, B6, &icmp(129, 0, &[0; 8])));
    let r = run(Direction::Ingress, &f, None);
    let e = PacketEvent {
        icmp_type: 129,
        ..event(key(0x86dd, 58, A6.octets(), 0, B6.octets(), 0), f.len())
    };
    assert_one(&r, e, Counter::Icmp, false);
}

#[test]
fn ipv4_options_honour_ihl() {
    let f = eth(
        ETH_P_IP,
        &ipv4(
            17,
            A4,
            B4,
            &[1, 1, 1, 0, 1, 1, 1, 0],
            0,
            &udp(1000, 2000, b"x"),
        ),
    );
    let r = run(Direction::Ingress, &f, None);
    assert_one(
        &r,
        event(key(0x0800, 17, v4(A4), 1000, v4(B4), 2000), f.len()),
        Counter::Udp,
        false,
    );
}

#[test]
fn ipv4_first_fragment_has_ports_later_ones_do_not() {
    // More-fragments set, offset 0: the UDP header is there.
    let first = eth(
        ETH_P_IP,
        &ipv4(17, A4, B4, &[], 0x2000, &udp(1000, 2000, &[0; 64])),
    );
    let r = run(Direction::Ingress, &first, None);
    assert_one(
        &r,
        event(key(0x0800, 17, v4(A4), 1000, v4(B4), 2000), first.len()),
        Counter::Udp,
        false,
    );
    // Offset 9 (72 bytes): payload bytes that merely look like ports must not be read as such.
    let later = eth(ETH_P_IP, &ipv4(17, A4, B4, &[], 9, &[0xab; 64]));
    let r = run(Direction::Ingress, &later, None);
    let e = PacketEvent {
        flags: EVENT_FLAG_FRAGMENT,
        ..event(key(0x0800, 17, v4(A4), 0, v4(B4), 0), later.len())
    };
    assert_one(&r, e, Counter::Udp, false);
}

#[test]
fn vlan_single_and_double_tagged() {
    let inner = ipv4(17, A4, B4, &[], 0, &udp(1, 2, b"v"));
    let single = eth_vlan(&[(0x8100, 100)], ETH_P_IP, &inner);
    let r = run(Direction::Ingress, &single, None);
    let e = PacketEvent {
        vlan_id: 100,
        ..event(key(0x0800, 17, v4(A4), 1, v4(B4), 2), single.len())
    };
    assert_one(&r, e, Counter::Udp, false);
    let double = eth_vlan(&[(0x88a8, 200), (0x8100, 100)], ETH_P_IP, &inner);
    let r = run(Direction::Ingress, &double, None);
    let e = PacketEvent {
        vlan_id: 200,
        ..event(key(0x0800, 17, v4(A4), 1, v4(B4), 2), double.len())
    };
    assert_one(&r, e, Counter::Udp, false);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    // Hop-by-hop -> routing -> destination options -> TCP.
    let chain = ipv6_ext(
        43,
        0,
        &ipv6_ext(60, 1, &ipv6_ext(6, 0, &tcp(5000, 80, 0x02, &[]))),
    );
    let f = eth(ETH_P_IPV6, &ipv6(0, A6, B6, &chain));
    let r = run(Direction::Ingress, &f, None);
    let e = PacketEvent {
        tcp_flags: 0x02,
        ..event(key(0x86dd, 6, A6.octets(), 5000, B6.octets(), 80), f.len())
    };
    assert_one(&r, e, Counter::Tcp, false);
}

#[test]
fn ipv6_fragments() {
    let first = eth(
        ETH_P_IPV6,
        &ipv6(44, A6, B6, &ipv6_frag(17, 0, true, &udp(7, 8, &[0; 32]))),
    );
    let r = run(Direction::Ingress, &first, None);
    assert_one(
        &r,
        event(key(0x86dd, 17, A6.octets(), 7, B6.octets(), 8), first.len()),
        Counter::Udp,
        false,
    );
    let later = eth(
        ETH_P_IPV6,
        &ipv6(44, A6, B6, &ipv6_frag(17, 5, false, &[0xcd; 32])),
    );
    let r = run(Direction::Ingress, &later, None);
    let e = PacketEvent {
        flags: EVENT_FLAG_FRAGMENT,
        ..event(key(0x86dd, 17, A6.octets(), 0, B6.octets(), 0), later.len())
    };
    assert_one(&r, e, Counter::Udp, false);
}

#[test]
fn other_ip_protocols_keep_their_number() {
    let f = eth(ETH_P_IP, &ipv4(47, A4, B4, &[], 0, &[0; 24]));
    let r = run(Direction::Ingress, &f, None);
    assert_one(
        &r,
        event(key(0x0800, 47, v4(A4), 0, v4(B4), 0), f.len()),
        Counter::OtherIp,
        false,
    );
}

#[test]
fn non_ip_frames_keep_their_ethertype() {
    let f = eth(ETH_P_ARP, &[0; 28]);
    let r = run(Direction::Ingress, &f, None);
    assert_one(
        &r,
        event(key(ETH_P_ARP, 0, [0; 16], 0, [0; 16], 0), f.len()),
        Counter::NonIp,
        false,
    );
}

#[test]
fn gso_aggregate_counts_every_segment_and_its_headers() {
    // 3 segments of 1000 payload bytes each, one set of headers (14 + 20 + 20) in the skb.
    let f = eth(
        ETH_P_IP,
        &ipv4(6, A4, B4, &[], 0, &tcp(1, 2, 0x10, &[0; 3000])),
    );
    let ctx = SkBuffCtx::default().gso_segs(3).gso_size(1000);
    let r = run(Direction::Ingress, &f, Some(&ctx));
    let wire = f.len() + 2 * (14 + 20 + 20);
    let e = PacketEvent {
        packets: 3,
        tcp_flags: 0x10,
        ..event(key(0x0800, 6, v4(A4), 1, v4(B4), 2), wire)
    };
    assert_one(&r, e, Counter::Tcp, false);
}

/// Truncated at every header, bad IHL, bogus IPv6 chain: counted, flagged, passed, and the
/// event keeps what was parsed before the fault.
#[test]
fn malformed_frames_are_counted_and_passed() {
    let udp4 = eth(ETH_P_IP, &ipv4(17, A4, B4, &[], 0, &udp(1, 2, &[])));
    let tcp4 = eth(ETH_P_IP, &ipv4(6, A4, B4, &[], 0, &tcp(1, 2, 0, &[])));
    let tcp6 = eth(ETH_P_IPV6, &ipv6(6, A6, B6, &tcp(1, 2, 0, &[])));
    let mut bad_ihl = udp4.clone();
    bad_ihl[14] = 0x43; // IHL 3: shorter than the fixed header
    let mut long_chain = Vec::new();
    for _ in 0..9 {
        long_chain = ipv6_ext(60, 0, &long_chain);
    }
    let bogus6 = eth(ETH_P_IPV6, &ipv6(60, A6, B6, &long_chain));
    let cases: Vec<(&str, Vec<u8>, FlowKey, Counter)> = vec![
        (
            "vlan tag cut",
            eth_vlan(&[(0x8100, 1)], ETH_P_IP, &[])[..16].to_vec(),
            key(0x8100, 0, [0; 16], 0, [0; 16], 0),
            Counter::NonIp,
        ),
        // Behind a VLAN tag: the kernel's test runner refuses untagged IPv4/IPv6 frames shorter
        // than the IP header (see the last test), real interfaces do not.
        (
            "ipv4 cut",
            eth_vlan(&[(0x8100, 5)], ETH_P_IP, &udp4[14..24]),
            key(0x0800, 0, [0; 16], 0, [0; 16], 0),
            Counter::OtherIp,
        ),
        (
            "udp cut",
            udp4[..14 + 20 + 4].to_vec(),
            key(0x0800, 17, v4(A4), 0, v4(B4), 0),
            Counter::Udp,
        ),
        (
            "tcp cut",
            tcp4[..14 + 20 + 10].to_vec(),
            key(0x0800, 6, v4(A4), 0, v4(B4), 0),
            Counter::Tcp,
        ),
        (
            "ipv6 cut",
            eth_vlan(&[(0x8100, 5)], ETH_P_IPV6, &tcp6[14..44]),
            key(0x86dd, 0, [0; 16], 0, [0; 16], 0),
            Counter::OtherIp,
        ),
        (
            "tcp6 cut",
            tcp6[..14 + 40 + 8].to_vec(),
            key(0x86dd, 6, A6.octets(), 0, B6.octets(), 0),
            Counter::Tcp,
        ),
        (
            "bad ihl",
            bad_ihl,
            key(0x0800, 17, v4(A4), 0, v4(B4), 0),
            Counter::Udp,
        ),
        (
            "bogus ipv6 chain",
            bogus6,
            key(0x86dd, 60, A6.octets(), 0, B6.octets(), 0),
            Counter::OtherIp,
        ),
    ];
    for (name, frame, k, c) in cases {
        eprintln!("case: {name}");
        let r = run(Direction::Ingress, &frame, None);
        let vlan_id = if frame[12..14] == [0x81, 0x00] {
            u16::from_be_bytes([frame[14], frame[15]])
        } else {
            0
        };
        let vlan_id = if name == "vlan tag cut" { 0 } else { vlan_id };
        let e = PacketEvent {
            flags: EVENT_FLAG_PARSE_ERROR,
            vlan_id,
            ..event(k, frame.len())
        };
        assert_one(&r, e, c, true);
    }
}

/// The kernel's test runner itself refuses frames shorter than an Ethernet header (empty ones
/// too) and untagged IPv4/IPv6 frames shorter than their IP header, so those cases reach the
/// classifier only behind a VLAN tag (above). This pins that kernel behaviour down, so the
/// malformed-frame coverage above is known to be complete.
#[test]
fn frames_the_kernel_test_runner_refuses() {
    require_bpf();
    let prog = KernelProgram::load(&LoadOptions::default()).unwrap();
    let ip4 = eth(ETH_P_IP, &[0x45; 10]);
    let ip6 = eth(ETH_P_IPV6, &[0x60; 30]);
    for frame in [vec![], vec![0u8; 1], vec![0u8; 13], ip4, ip6] {
        let err = test_run(prog.program_fd(Direction::Ingress), &frame, None, 1).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EINVAL),
            "length {}",
            frame.len()
        );
    }
}

/// Sweeps until the table holds no connection (drained slots are freed a grace period after
/// they were drained), returning every delta on the way.
fn sweep_until_empty(flows: &mut ayaflow::ebpf::sweep::FlowSweeper) -> Vec<FlowDelta> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut all = flows.sweep(u64::MAX).copied().collect::<Vec<_>>();
    while flows.tracked() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "slots still held after 30 s: {}",
            flows.tracked()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
        all.extend(flows.sweep(u64::MAX).copied().collect::<Vec<_>>());
    }
    all
}

/// The classifier loaded in flow mode with a flow table of `flow_map_size` slots.
fn load_flow_mode(flow_map_size: u32) -> KernelProgram {
    require_bpf();
    let opts = LoadOptions {
        capture_mode: ayaflow_common::globals::CAPTURE_MODE_FLOWS,
        flow_map_size,
        ..LoadOptions::default()
    };
    KernelProgram::load(&opts).expect("loading the classifier in flow mode")
}

/// Flow mode: packets of one connection accumulate in `FLOWS` (no event), a second connection
/// that does not fit in a full table falls back to an event flagged as such, and both are
/// counted. Once the first connection is idle its slot is freed, and the second one gets it.
#[test]
fn flow_mode_aggregates_then_falls_back_when_full() {
    use ayaflow_common::event::EVENT_FLAG_FLOW_FALLBACK;
    let mut prog = load_flow_mode(1);
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let mut flows = prog.take_flows().unwrap();
    assert_eq!(flows.capacity(), 1);
    let first = eth(
        ETH_P_IP,
        &ipv4(17, A4, B4, &[], 0, &udp(1000, 53, &[0; 40])),
    );
    let second = eth(
        ETH_P_IP,
        &ipv4(17, A4, B4, &[], 0, &udp(1001, 53, &[0; 40])),
    );
    let fd = prog.program_fd(Direction::Ingress);
    for _ in 0..3 {
        assert_eq!(test_run(fd, &first, None, 1).unwrap().retval, PASS);
    }
    assert_eq!(test_run(fd, &second, None, 1).unwrap().retval, PASS);

    // The first connection: one slot with 3 packets, no events.
    let deltas = flows
        .sweep(ayaflow::ebpf::sweep::flow_clock_ns())
        .copied()
        .collect::<Vec<_>>();
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    assert_eq!(
        (deltas[0].tuple.src_port, deltas[0].packets, deltas[0].bytes),
        (1000, 3, 3 * first.len() as u64)
    );
    assert!(
        flows
            .sweep(ayaflow::ebpf::sweep::flow_clock_ns())
            .copied()
            .collect::<Vec<_>>()
            .is_empty(),
        "nothing new, nothing reported again"
    );
    // The second: the table (1 slot) was full, so it came as a flagged event.
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(ayaflow::decode::packet_event(&item).unwrap());
    }
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key.src_port, 1001);
    assert_eq!(events[0].flags, EVENT_FLAG_FLOW_FALLBACK);
    let t = counters.read().unwrap();
    assert_eq!(t.get(Direction::Ingress, Counter::Packets), 4);
    assert_eq!(
        t.get(Direction::Ingress, Counter::Bytes),
        4 * first.len() as u64
    );
    assert_eq!(t.get(Direction::Ingress, Counter::FlowFallbacks), 1);
    assert_eq!(t.get(Direction::Ingress, Counter::RingbufDrops), 0);

    // Idle (every slot is, at `u64::MAX`): drained, then freed, with nothing more to report.
    assert!(sweep_until_empty(&mut flows).is_empty());
    // The freed slot takes the second connection: no event this time.
    assert_eq!(test_run(fd, &second, None, 1).unwrap().retval, PASS);
    let deltas = flows
        .sweep(ayaflow::ebpf::sweep::flow_clock_ns())
        .copied()
        .collect::<Vec<_>>();
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    assert_eq!((deltas[0].tuple.src_port, deltas[0].packets), (1001, 1));
    assert!(ring.next().is_none());
    assert_eq!(
        counters
            .read()
            .unwrap()
            .get(Direction::Ingress, Counter::FlowFallbacks),
        1
    );
}

/// Flow mode: a slot whose packet count reached half its field (2^27 packets without a sweep)
/// takes no more; the next packet goes to the ring buffer as a fallback, and after a sweep the
/// slot counts again. Nothing is lost or counted twice.
#[test]
fn a_slot_near_full_falls_back_until_swept() {
    use ayaflow_common::{event::EVENT_FLAG_FLOW_FALLBACK, flow::counts::PACKET_BITS};
    let mut prog = load_flow_mode(16);
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let mut flows = prog.take_flows().unwrap();
    let fd = prog.program_fd(Direction::Ingress);
    // Each run: a GSO skb said to hold 65,535 segments (the test runner takes the count as
    // given, so the frame itself can stay small).
    let f = eth(
        ETH_P_IP,
        &ipv4(6, A4, B4, &[], 0, &tcp(7, 8, 0x10, &[0; 40])),
    );
    let ctx = SkBuffCtx::default().gso_segs(65_535).gso_size(1);
    let segs = 65_535u64;
    let wire = (f.len() + 65_534 * (14 + 20 + 20)) as u64;
    let half = 1u64 << (PACKET_BITS - 1);
    // The smallest number of runs that reaches half: all of them fit, the next one does not.
    let fitting = half.div_ceil(segs);
    test_run(fd, &f, Some(&ctx), fitting as u32).expect("test run");
    assert!(ring.next().is_none(), "no event while the slot has room");
    assert_eq!(test_run(fd, &f, Some(&ctx), 1).unwrap().retval, PASS);
    let event = ayaflow::decode::packet_event(&ring.next().expect("a fallback event")).unwrap();
    assert_eq!(
        (
            event.flags,
            u64::from(event.packets),
            u64::from(event.bytes)
        ),
        (EVENT_FLAG_FLOW_FALLBACK, segs, wire)
    );
    assert!(ring.next().is_none());

    let now = ayaflow::ebpf::sweep::flow_clock_ns();
    let deltas = flows.sweep(now).copied().collect::<Vec<_>>();
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    assert_eq!(
        (deltas[0].packets, deltas[0].bytes),
        (fitting * segs, fitting * wire)
    );
    // Swept: the slot counts again.
    assert_eq!(test_run(fd, &f, Some(&ctx), 1).unwrap().retval, PASS);
    assert!(ring.next().is_none(), "counted in the slot again");
    let deltas = flows
        .sweep(ayaflow::ebpf::sweep::flow_clock_ns())
        .copied()
        .collect::<Vec<_>>();
    assert_eq!((deltas[0].packets, deltas[0].bytes), (segs, wire));
    let t = counters.read().unwrap();
    assert_eq!(
        t.get(Direction::Ingress, Counter::Packets),
        (fitting + 2) * segs
    );
    assert_eq!(t.get(Direction::Ingress, Counter::FlowFallbacks), 1);
}

/// Flow mode with thousands of connections: every one is reported once, nothing twice, and a
/// later packet shows up as exactly one delta.
#[test]
fn flow_sweep_reports_every_connection_once() {
    const FLOWS: u16 = 5000;
    let mut prog = load_flow_mode(16384);
    let mut sweeper = prog.take_flows().unwrap();
    let counters = prog.take_counters().unwrap();
    let fd = prog.program_fd(Direction::Ingress);
    let frame = |port: u16| {
        eth(
            ETH_P_IP,
            &ipv4(17, A4, B4, &[], 0, &udp(port, 53, &[0; 20])),
        )
    };
    for port in 0..FLOWS {
        test_run(fd, &frame(10_000 + port), None, 1).unwrap();
    }
    // At a quarter full, probing finds every connection a slot.
    assert_eq!(
        counters
            .read()
            .unwrap()
            .get(Direction::Ingress, Counter::FlowFallbacks),
        0
    );
    let now = ayaflow::ebpf::sweep::flow_clock_ns();
    let deltas = sweeper.sweep(now).copied().collect::<Vec<_>>();
    assert_eq!(deltas.len(), FLOWS as usize);
    let mut ports: Vec<u16> = deltas.iter().map(|d| d.tuple.src_port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), FLOWS as usize, "each connection once");
    assert!(
        deltas
            .iter()
            .all(|d| d.packets == 1 && d.bytes == frame(0).len() as u64)
    );
    assert!(
        sweeper.sweep(now).copied().collect::<Vec<_>>().is_empty(),
        "nothing new, nothing reported again"
    );
    test_run(fd, &frame(10_007), None, 1).unwrap();
    let again = sweeper.sweep(now).copied().collect::<Vec<_>>();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].tuple.src_port, again[0].packets), (10_007, 1));
}

/// Flow mode with connections coming and going: freed slots are reused first (the free stack
/// is last in, first out), so however many connections came before, the ones in use occupy a
/// packed run of slots, a few pages of a large table rather than one page each.
#[test]
fn flow_slots_in_use_stay_packed_through_churn() {
    const AT_ONCE: u16 = 200;
    let mut prog = load_flow_mode(65536);
    let mut sweeper = prog.take_flows().unwrap();
    let counters = prog.take_counters().unwrap();
    let fd = prog.program_fd(Direction::Ingress);
    let mut delivered = 0u64;
    let mut first_used = None;
    for round in 0..10u16 {
        for i in 0..AT_ONCE {
            let port = 1000 + round * AT_ONCE + i;
            let frame = eth(
                ETH_P_IP,
                &ipv4(17, A4, B4, &[], 0, &udp(port, 53, &[0; 20])),
            );
            test_run(fd, &frame, None, 1).unwrap();
            delivered += 1;
        }
        let used = sweeper.slots_in_use();
        assert_eq!(used.len(), AT_ONCE as usize, "round {round}");
        let span = used[used.len() - 1] - used[0] + 1;
        assert_eq!(
            span, AT_ONCE as usize,
            "round {round}: {AT_ONCE} connections spread over {span} slots"
        );
        // The same slots every round: those freed last are handed out first.
        let first = first_used.get_or_insert_with(|| used.clone());
        assert_eq!(&used, first, "round {round}");
        let taken: u64 = sweep_until_empty(&mut sweeper)
            .iter()
            .map(|d| d.packets)
            .sum();
        assert_eq!(taken, u64::from(AT_ONCE), "round {round}");
    }
    let t = counters.read().unwrap();
    assert_eq!(t.get(Direction::Ingress, Counter::Packets), delivered);
    assert_eq!(t.get(Direction::Ingress, Counter::FlowFallbacks), 0);
}

/// Flow mode while the agent sweeps at the same time, on another CPU, draining and freeing
/// slots as fast as it can (every slot counts as idle): the sums taken add up exactly to the
/// packets the program saw, none lost between a read and a free, none counted twice.
#[test]
fn flow_sweeps_racing_the_kernel_lose_nothing() {
    const CALLS: u32 = 200;
    const REPEAT: u32 = 50_000;
    let mut prog = load_flow_mode(64);
    let mut sweeper = prog.take_flows().unwrap();
    let counters = prog.take_counters().unwrap();
    let fd = prog.program_fd(Direction::Ingress);
    let frames: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            eth(
                ETH_P_IP,
                &ipv4(6, A4, B4, &[], 0, &tcp(40_000 + i, 443, 0x10, &[0; 10])),
            )
        })
        .collect();
    let sent = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            for call in 0..CALLS {
                let frame = &frames[call as usize % frames.len()];
                assert_eq!(test_run(fd, frame, None, REPEAT).unwrap().retval, PASS);
            }
        });
        let mut all = Vec::new();
        while !sender.is_finished() {
            all.extend(sweeper.sweep(u64::MAX).copied().collect::<Vec<_>>());
        }
        sender.join().unwrap();
        all.extend(sweep_until_empty(&mut sweeper));
        all
    });
    let packets: u64 = sent.iter().map(|d| d.packets).sum();
    let bytes: u64 = sent.iter().map(|d| d.bytes).sum();
    let expected_packets = u64::from(CALLS) * u64::from(REPEAT);
    let t = counters.read().unwrap();
    let fallbacks = t.get(Direction::Ingress, Counter::FlowFallbacks);
    assert_eq!(
        packets + fallbacks,
        expected_packets,
        "{fallbacks} fell back"
    );
    assert_eq!(
        bytes + fallbacks * frames[0].len() as u64,
        t.get(Direction::Ingress, Counter::Bytes)
    );
    assert_eq!(
        t.get(Direction::Ingress, Counter::Packets),
        expected_packets
    );
    let ports: std::collections::BTreeSet<u16> = sent.iter().map(|d| d.tuple.src_port).collect();
    assert_eq!(ports.len(), frames.len());
}
