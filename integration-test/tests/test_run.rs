//! The classifier on crafted frames through BPF_PROG_TEST_RUN: every protocol, VLAN tags, IPv4
//! options and fragments, IPv6 extension headers, GSO accounting and malformed frames. Each case
//! asserts the exact event, the exact counters and that the packet is let through.

use std::net::Ipv4Addr;

use ayaflow::ebpf::{
    KernelProgram, LoadOptions,
    counters::Totals,
    test_run::{SkBuffCtx, test_run},
};
use ayaflow_common::{
    counters::Counter,
    event::{EVENT_FLAG_FRAGMENT, EVENT_FLAG_PARSE_ERROR, PacketEvent},
    flow::{Direction, ETH_TYPE_8023, FlowKey},
};
use integration_test::{frames::*, require_bpf};

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
    while let Some(item) = ring.next_record() {
        events.push(ayaflow::decode::packet_event(item).expect("a whole event"));
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
        // BPF_PROG_TEST_RUN runs the program on the loopback device.
        ifindex: 1,
        _pad: 0,
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

/// IEEE 802.3 frames carry a length where Ethernet II has an EtherType (STP's BPDUs: length 38,
/// then LLC 42 42 03): non-IP under one name (`ETH_TYPE_8023`), not "EtherType 0x0026"; also
/// behind a VLAN tag, and at the largest length.
#[test]
fn ieee_802_3_length_frames_are_non_ip_without_an_ethertype() {
    let mut bpdu = vec![0x42, 0x42, 0x03];
    bpdu.resize(38, 0);
    for (name, frame) in [
        ("stp", eth(38, &bpdu)),
        ("tagged", eth_vlan(&[(0x8100, 7)], 38, &bpdu)),
        ("length 1500", eth(1500, &[0xaa; 1500])),
    ] {
        eprintln!("case: {name}");
        let r = run(Direction::Ingress, &frame, None);
        let e = PacketEvent {
            vlan_id: if name == "tagged" { 7 } else { 0 },
            ..event(key(ETH_TYPE_8023, 0, [0; 16], 0, [0; 16], 0), frame.len())
        };
        assert_one(&r, e, Counter::NonIp, false);
    }
    // 0x0600 is the first EtherType (the kernel's ETH_P_802_3_MIN): kept as it is.
    let f = eth(0x0600, &[0; 46]);
    let r = run(Direction::Ingress, &f, None);
    assert_one(
        &r,
        event(key(0x0600, 0, [0; 16], 0, [0; 16], 0), f.len()),
        Counter::NonIp,
        false,
    );
}

/// `hops` destination-options headers, then TCP.
fn ipv6_chain_then_tcp(hops: usize) -> Vec<u8> {
    let mut chain = tcp(5000, 80, 0x02, &[]);
    let mut next = 6;
    for _ in 0..hops {
        chain = ipv6_ext(next, 0, &chain);
        next = 60;
    }
    eth(ETH_P_IPV6, &ipv6(next, A6, B6, &chain))
}

/// Up to 8 extension headers are walked (README); a ninth makes the chain bogus.
#[test]
fn ipv6_chains_of_up_to_eight_extension_headers_are_accepted() {
    let f = ipv6_chain_then_tcp(8);
    let r = run(Direction::Ingress, &f, None);
    let e = PacketEvent {
        tcp_flags: 0x02,
        ..event(key(0x86dd, 6, A6.octets(), 5000, B6.octets(), 80), f.len())
    };
    assert_one(&r, e, Counter::Tcp, false);
    let f = ipv6_chain_then_tcp(9);
    let r = run(Direction::Ingress, &f, None);
    let e = PacketEvent {
        flags: EVENT_FLAG_PARSE_ERROR,
        ..event(key(0x86dd, 6, A6.octets(), 0, B6.octets(), 0), f.len())
    };
    assert_one(&r, e, Counter::Tcp, true);
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

/// An encapsulated GSO aggregate (VXLAN on 4789 or 8472, Geneve with options): every segment
/// repeats the outer headers, the tunnel header and the inner headers; the key is the outer
/// flow. A single tunnel frame counts its length; UDP GSO to another port only the outer headers.
#[test]
fn encapsulated_gso_counts_the_inner_headers_of_every_segment() {
    let inner = eth(
        ETH_P_IP,
        &ipv4(6, B4, A4, &[], 0, &tcp(7, 8, 0x10, &[0; 3000])),
    );
    let inner_hdrs = 14 + 20 + 20;
    let vxlan = |port: u16, body: &[u8]| {
        let mut t = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
        t.extend_from_slice(body);
        eth(ETH_P_IP, &ipv4(17, A4, B4, &[], 0, &udp(50000, port, &t)))
    };
    let mut geneve_hdr = vec![0x02, 0, 0x65, 0x58, 0, 0, 42, 0];
    geneve_hdr.extend_from_slice(&[0; 8]); // 2 words of options
    geneve_hdr.extend_from_slice(&inner);
    let geneve = eth(
        ETH_P_IP,
        &ipv4(17, A4, B4, &[], 0, &udp(50000, 6081, &geneve_hdr)),
    );
    let outer = 14 + 20 + 8;
    for (name, frame, port, per_segment) in [
        ("vxlan", vxlan(4789, &inner), 4789, outer + 8 + inner_hdrs),
        (
            "vxlan linux port",
            vxlan(8472, &inner),
            8472,
            outer + 8 + inner_hdrs,
        ),
        ("geneve", geneve, 6081, outer + 16 + inner_hdrs),
        ("udp gso", vxlan(9000, &inner), 9000, outer),
    ] {
        eprintln!("case: {name}");
        let ctx = SkBuffCtx::default().gso_segs(3).gso_size(1000);
        let r = run(Direction::Ingress, &frame, Some(&ctx));
        let e = PacketEvent {
            packets: 3,
            ..event(
                key(0x0800, 17, v4(A4), 50000, v4(B4), port),
                frame.len() + 2 * per_segment,
            )
        };
        assert_one(&r, e, Counter::Udp, false);
    }
    let single = vxlan(4789, &inner);
    let r = run(Direction::Ingress, &single, None);
    let e = event(key(0x0800, 17, v4(A4), 50000, v4(B4), 4789), single.len());
    assert_one(&r, e, Counter::Udp, false);
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
