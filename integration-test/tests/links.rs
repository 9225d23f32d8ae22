//! The classifier on real traffic of other link shapes: VLAN tags held as skb metadata (tx
//! offload, pushed by a sender-side TC program; rx, where the stack untags before the hook).

use std::{net::SocketAddr, time::Duration};

use ayaflow::ebpf::{KernelProgram, LoadOptions};
use ayaflow_common::{
    event::{EVENT_FLAG_PARSE_ERROR, PacketEvent},
    flow::{Direction, ETH_P_IP, ETH_P_IPV6},
};
use integration_test::{
    frames::*,
    netns::{self, NetPair},
    require_bpf, txring,
    vlan_push::VlanPusher,
    wait_for,
};

/// Loads the classifier (raw mode) and attaches it to `if_a`'s egress and `if_b`'s ingress.
fn attach_a_to_b(pair: &NetPair) -> KernelProgram {
    require_bpf();
    let mut prog = KernelProgram::load(&LoadOptions::default()).expect("loading the classifier");
    for (ns, ifname, d) in [
        (&pair.ns_a, &pair.if_a, Direction::Egress),
        (&pair.ns_b, &pair.if_b, Direction::Ingress),
    ] {
        let ifname = ifname.clone();
        prog = NetPair::in_ns(ns, move || {
            prog.attach(&ifname, &[d])
                .unwrap_or_else(|e| panic!("attaching to {ifname}: {e}"));
            prog
        });
    }
    prog
}

/// Waits until the ring holds `n` events to UDP port `port` on each hook, and returns them.
fn events_to(ring: &mut ayaflow::ebpf::EventRing, port: u16, n: usize) -> Vec<PacketEvent> {
    let mut got = Vec::new();
    wait_for(10, "the events of every datagram", || {
        while let Some(item) = ring.next_record() {
            let e = ayaflow::decode::packet_event(item).expect("a whole event");
            if e.key.dst_port == port {
                got.push(e);
            }
        }
        (got.len() >= 2 * n).then_some(())
    });
    assert_eq!(got.len(), 2 * n, "one event per datagram and hook");
    got
}

const PORT: u16 = 9999;
const COUNT: usize = 10;
const PAYLOAD: usize = 100;
/// Ethernet + IPv4 + UDP + payload, untagged.
const FRAME: usize = 14 + 20 + 8 + PAYLOAD;

/// Sends `COUNT` datagrams from a to b through a UDP socket; b's MAC is a static neighbour (an
/// ARP request would be tagged too, and b, with no VLAN device, would not answer).
fn send_udp(pair: &NetPair) {
    let mac_b = netns::mac(&pair.ns_b, &pair.if_b);
    let lladdr = mac_b.map(|b| format!("{b:02x}")).join(":");
    netns::ip(&[
        "-n",
        &pair.ns_a,
        "neigh",
        "replace",
        netns::ADDR_B4,
        "lladdr",
        &lladdr,
        "dev",
        &pair.if_a,
    ]);
    NetPair::in_ns(&pair.ns_a, || {
        let s = std::net::UdpSocket::bind((netns::ADDR_A4, 40100)).unwrap();
        let dst: SocketAddr = (netns::ADDR_B4.parse::<std::net::IpAddr>().unwrap(), PORT).into();
        for _ in 0..COUNT {
            s.send_to(&[5u8; PAYLOAD], dst).unwrap();
        }
    });
}

fn assert_udp_a_to_b(events: &[PacketEvent], vlan_id: u16, bytes: usize) {
    for e in events {
        assert_eq!(
            (
                e.key.ether_type,
                e.key.protocol,
                e.key.src_port,
                e.key.dst_port
            ),
            (ETH_P_IP, 17, 40100, PORT),
            "{e:?}"
        );
        assert_eq!(&e.key.src_addr[..4], &A4.octets());
        assert_eq!(&e.key.dst_addr[..4], &B4.octets());
        assert_eq!(e.flags & EVENT_FLAG_PARSE_ERROR, 0, "{e:?}");
        assert_eq!(e.vlan_id, vlan_id, "{e:?}");
        assert_eq!((e.packets, e.bytes as usize), (1, bytes), "{e:?}");
    }
}

/// A tag in `vlan_tci` (tx offload) is reported like a tag in the frame, on the sender's egress
/// and on the receiver's ingress, and counted on the wire (4 bytes per frame); with 802.1ad
/// offloaded, the inner 802.1Q tag stays in the frame and is walked.
#[test]
fn offloaded_vlan_tags_are_reported_and_counted() {
    for (tags, vlan_id, bytes) in [
        (vec![(0x8100, 100)], 100, FRAME + 4),
        (vec![(0x8100, 100), (0x88a8, 200)], 200, FRAME + 8),
    ] {
        eprintln!("case: tags {tags:x?}");
        let pair = NetPair::new(false);
        let ifname = pair.if_a.clone();
        let _pusher = NetPair::in_ns(&pair.ns_a, move || VlanPusher::attach(&ifname, &tags));
        let mut prog = attach_a_to_b(&pair);
        let mut ring = prog.take_events().unwrap();
        send_udp(&pair);
        assert_udp_a_to_b(&events_to(&mut ring, PORT, COUNT), vlan_id, bytes);
    }
}

/// A tag that arrives in the frame is moved to `vlan_tci` by the receiving stack before the TC
/// hook (`skb_vlan_untag` in `__netif_receive_skb_core`): the receiver's ingress still reports
/// it, and counts the same bytes as the sender's egress, where it is in the frame.
#[test]
fn in_frame_vlan_tags_untagged_on_receive_are_still_reported() {
    let pair = NetPair::new(false);
    let mut prog = attach_a_to_b(&pair);
    let mut ring = prog.take_events().unwrap();
    let (mac_a, mac_b) = (
        netns::mac(&pair.ns_a, &pair.if_a),
        netns::mac(&pair.ns_b, &pair.if_b),
    );
    let untagged = deliverable(
        eth(
            ETH_P_IP,
            &ipv4(17, A4, B4, &[], 0, &udp(40100, PORT, &[5; PAYLOAD])),
        ),
        mac_b,
        mac_a,
    );
    let mut tagged = untagged[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 42]);
    tagged.extend_from_slice(&untagged[12..]);
    let frames = vec![tagged; COUNT];
    NetPair::in_ns(&pair.ns_a, {
        let ifname = pair.if_a.clone();
        move || txring::send(&ifname, &frames, Duration::from_secs(10))
    });
    assert_udp_a_to_b(&events_to(&mut ring, PORT, COUNT), 42, FRAME + 4);
}

/// A tun device (no link-layer header; ARPHRD_NONE) gets the `_l3` programs: packets the stack
/// sends out of it (egress) and packets written into it (ingress), IPv4 and IPv6, are counted
/// exactly against the device's own counters, with the right keys, from the IP header on.
#[test]
fn tun_frames_are_parsed_from_the_ip_header() {
    use integration_test::{netns::LinkStats, tun::Tun};
    require_bpf();
    let pair = NetPair::new(false);
    let name = format!("{}t", pair.if_a);
    let tun = NetPair::in_ns(&pair.ns_a, {
        let name = name.clone();
        move || Tun::create(&name)
    });
    let ns = pair.ns_a.clone();
    for args in [
        vec!["addr", "add", "198.51.100.1/24", "dev", &name],
        vec!["addr", "add", "2001:db8:1::1/64", "dev", &name, "nodad"],
        vec!["link", "set", &name, "up"],
    ] {
        let mut full = vec!["-n", &ns];
        full.extend(args);
        netns::ip(&full);
    }
    let mut prog = KernelProgram::load(&LoadOptions::default()).expect("loading the classifier");
    prog = NetPair::in_ns(&pair.ns_a, {
        let name = name.clone();
        move || {
            prog.attach(&name, &Direction::ALL).unwrap();
            prog
        }
    });
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let ours = |c: &ayaflow::ebpf::counters::CounterReader| {
        use ayaflow_common::counters::Counter::{Bytes, Packets};
        let t = c.read().unwrap();
        [
            t.get(Direction::Ingress, Packets),
            t.get(Direction::Ingress, Bytes),
            t.get(Direction::Egress, Packets),
            t.get(Direction::Egress, Bytes),
        ]
    };
    let theirs = |s: LinkStats| [s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes];

    // Everything the stack sends out of the tun (ours, router solicitations, MLD) is read here,
    // so that the device counts it as sent (tun counts a packet when it is read).
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (tun_tx, tun_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut tun = tun;
        let mut out = Vec::new();
        let mut writes: Vec<Vec<u8>> = Vec::new();
        loop {
            while let Ok(p) = tun_rx.try_recv() {
                writes.push(p);
            }
            for p in writes.drain(..) {
                tun.send(&p);
            }
            if let Some(p) = tun.recv(Duration::from_millis(20)) {
                out.push(p);
            } else if stop_rx.try_recv().is_ok() {
                return out;
            }
        }
    });
    let quiet = || {
        wait_for(20, "the counters to stand still", || {
            let first = (ours(&counters), theirs(LinkStats::read(&pair.ns_a, &name)));
            std::thread::sleep(Duration::from_millis(300));
            let second = (ours(&counters), theirs(LinkStats::read(&pair.ns_a, &name)));
            (first == second).then_some(second)
        })
    };
    let before = quiet();
    while ring.next_record().is_some() {}

    // Egress: UDP out of the tun, v4 and v6.
    NetPair::in_ns(&pair.ns_a, || {
        let s4 = std::net::UdpSocket::bind("198.51.100.1:40200").unwrap();
        let s6 = std::net::UdpSocket::bind("[2001:db8:1::1]:40200").unwrap();
        for _ in 0..COUNT {
            s4.send_to(&[1u8; PAYLOAD], "198.51.100.2:9999").unwrap();
            s6.send_to(&[1u8; PAYLOAD], "[2001:db8:1::2]:9999").unwrap();
        }
    });
    // Ingress: UDP written into the tun, to a bound socket, v4 and v6.
    let received = NetPair::spawn_in_ns(&pair.ns_a, {
        let tun_tx = tun_tx.clone();
        move || {
            let r4 = std::net::UdpSocket::bind("198.51.100.1:9998").unwrap();
            let r6 = std::net::UdpSocket::bind("[2001:db8:1::1]:9998").unwrap();
            let (a4, b4) = (
                "198.51.100.2".parse().unwrap(),
                "198.51.100.1".parse().unwrap(),
            );
            let (a6, b6) = (
                "2001:db8:1::2".parse().unwrap(),
                "2001:db8:1::1".parse().unwrap(),
            );
            for _ in 0..COUNT {
                let f4 = eth(
                    ETH_P_IP,
                    &ipv4(17, a4, b4, &[], 0, &udp(7777, 9998, &[2; PAYLOAD])),
                );
                let f6 = eth(
                    ETH_P_IPV6,
                    &ipv6(17, a6, b6, &udp(7777, 9998, &[2; PAYLOAD])),
                );
                for f in [f4, f6] {
                    tun_tx
                        .send(deliverable(f, [0; 6], [0; 6])[14..].to_vec())
                        .unwrap();
                }
            }
            let mut buf = [0u8; 2048];
            for s in [&r4, &r6] {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                for _ in 0..COUNT {
                    assert_eq!(s.recv(&mut buf).expect("a datagram from the tun"), PAYLOAD);
                }
            }
        }
    });
    received.join().unwrap();
    let after = quiet();
    stop_tx.send(()).unwrap();
    let sent = reader.join().unwrap();
    let delta = |a: [u64; 4], b: [u64; 4]| [0, 1, 2, 3].map(|i| a[i] - b[i]);
    assert_eq!(
        delta(after.0, before.0),
        delta(after.1, before.1),
        "program (in pkts, in bytes, out pkts, out bytes) vs the tun's counters"
    );
    let to_9999 = sent
        .iter()
        .filter(|p| p.len() == 20 + 8 + PAYLOAD || p.len() == 40 + 8 + PAYLOAD);
    assert_eq!(
        to_9999.count(),
        2 * COUNT,
        "the stack sent every datagram out of the tun"
    );

    let mut events = Vec::new();
    while let Some(item) = ring.next_record() {
        events.push(ayaflow::decode::packet_event(item).unwrap());
    }
    for (d, sport, dport) in [
        (Direction::Egress, 40200, 9999),
        (Direction::Ingress, 7777, 9998),
    ] {
        for (ether_type, ip_len) in [(ETH_P_IP, 20), (ETH_P_IPV6, 40)] {
            let mine: Vec<_> = events
                .iter()
                .filter(|e| e.key.direction == d as u8 && e.key.ether_type == ether_type)
                .filter(|e| (e.key.src_port, e.key.dst_port) == (sport, dport))
                .collect();
            assert_eq!(
                mine.len(),
                COUNT,
                "{d:?} {ether_type:#x}, of {} events",
                events.len()
            );
            for e in mine {
                assert_eq!(e.key.protocol, 17);
                assert_eq!(e.flags & EVENT_FLAG_PARSE_ERROR, 0);
                assert_eq!(
                    e.bytes as usize,
                    ip_len + 8 + PAYLOAD,
                    "no link-layer header"
                );
                let (src, dst): (&[u8], &[u8]) = match (ether_type, d) {
                    (ETH_P_IP, Direction::Egress) => (&[198, 51, 100, 1], &[198, 51, 100, 2]),
                    (ETH_P_IP, _) => (&[198, 51, 100, 2], &[198, 51, 100, 1]),
                    _ => (&[], &[]),
                };
                if !src.is_empty() {
                    assert_eq!((&e.key.src_addr[..4], &e.key.dst_addr[..4]), (src, dst));
                } else {
                    assert_eq!(&e.key.src_addr[..4], &[0x20, 0x01, 0x0d, 0xb8]);
                }
            }
        }
    }
    assert_eq!(
        counters
            .read()
            .unwrap()
            .sum(ayaflow_common::counters::Counter::ParseErrors),
        0
    );
}

/// TCP through VXLAN over the veth pair: the veths carry GSO aggregates of the tunnel (the
/// vxlan device keeps the inner TCP's GSO and encapsulates once), segmented in software at
/// `if_a` (its tunnel segmentation offloads off, so it counts real frames) and re-aggregated by
/// GRO at `if_b`. Each frame on the wire repeats the outer and the inner headers: the program's
/// counts on both veths must equal theirs, and the tunnel's key is the outer UDP flow.
#[test]
fn vxlan_gso_bytes_equal_the_wire_bytes() {
    require_bpf();
    let pair = NetPair::new(true);
    netns::ethtool_k(
        &pair.ns_a,
        &pair.if_a,
        &[
            "tso",
            "off",
            "tx-udp_tnl-segmentation",
            "off",
            "tx-udp_tnl-csum-segmentation",
            "off",
        ],
    );
    netns::ethtool_k(&pair.ns_b, &pair.if_b, &["gro", "on"]);
    for (ns, ifc, local, remote, inner) in [
        (
            &pair.ns_a,
            &pair.if_a,
            netns::ADDR_A4,
            netns::ADDR_B4,
            "10.42.0.1/24",
        ),
        (
            &pair.ns_b,
            &pair.if_b,
            netns::ADDR_B4,
            netns::ADDR_A4,
            "10.42.0.2/24",
        ),
    ] {
        netns::ip(&[
            "-n", ns, "link", "add", "vx42", "type", "vxlan", "id", "42", "local", local, "remote",
            remote, "dstport", "4789", "dev", ifc,
        ]);
        netns::ip(&["-n", ns, "addr", "add", inner, "dev", "vx42"]);
        netns::ip(&["-n", ns, "link", "set", "vx42", "up"]);
    }
    let mut prog = KernelProgram::load(&LoadOptions::default()).expect("loading the classifier");
    for (ns, ifname, d) in [
        (&pair.ns_a, &pair.if_a, Direction::Egress),
        (&pair.ns_b, &pair.if_b, Direction::Ingress),
    ] {
        let ifname = ifname.clone();
        prog = NetPair::in_ns(ns, move || {
            prog.attach(&ifname, &[d]).unwrap();
            prog
        });
    }
    let mut ring = prog.take_events().unwrap();
    let counters = prog.take_counters().unwrap();
    let read = || {
        use ayaflow_common::counters::Counter::{Bytes, Packets};
        let t = counters.read().unwrap();
        let (a, b) = (
            netns::LinkStats::read(&pair.ns_a, &pair.if_a),
            netns::LinkStats::read(&pair.ns_b, &pair.if_b),
        );
        (
            [
                t.get(Direction::Egress, Packets),
                t.get(Direction::Egress, Bytes),
                t.get(Direction::Ingress, Packets),
                t.get(Direction::Ingress, Bytes),
            ],
            [a.tx_packets, a.tx_bytes, b.rx_packets, b.rx_bytes],
        )
    };
    let quiet = || {
        wait_for(20, "the counters to stand still", || {
            let first = read();
            std::thread::sleep(Duration::from_millis(300));
            (read() == first).then_some(first)
        })
    };
    let before = quiet();
    while ring.next_record().is_some() {}

    const BULK: usize = 16 << 20;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = NetPair::spawn_in_ns(&pair.ns_b, move || {
        use std::io::Read;
        let l = std::net::TcpListener::bind("10.42.0.2:5201").unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = vec![0u8; BULK];
        c.read_exact(&mut got).unwrap();
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    });
    ready_rx.recv().unwrap();
    NetPair::in_ns(&pair.ns_a, || {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect("10.42.0.2:5201").unwrap();
        let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
        c.write_all(&data).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
    });
    server.join().unwrap();
    let after = quiet();

    let delta = |a: [u64; 4], b: [u64; 4]| [0, 1, 2, 3].map(|i| a[i] - b[i]);
    let (ours, mut links) = (delta(after.0, before.0), delta(after.1, before.1));
    // if_b receives through NAPI (GRO on), which counts bytes without the Ethernet header, and
    // if_a's tx counters are if_b's receive queue's (see in_place.rs,
    // real_tcp_with_gso_and_gro_is_counted_exactly_and_arrives_intact).
    links[1] += 14 * links[0];
    links[3] += 14 * links[2];
    assert_eq!(
        ours, links,
        "program (a out pkts, a out bytes, b in pkts, b in bytes) vs the veths' counters"
    );
    let mut events = Vec::new();
    while let Some(item) = ring.next_record() {
        events.push(ayaflow::decode::packet_event(item).unwrap());
    }
    for d in Direction::ALL {
        let tunnel: Vec<_> = events
            .iter()
            .filter(|e| e.key.direction == d as u8 && e.key.protocol == 17)
            .filter(|e| e.key.dst_port == 4789)
            .collect();
        assert!(
            tunnel.iter().any(|e| e.packets > 1),
            "{d:?}: no encapsulated GSO/GRO aggregate seen, the test did not exercise them"
        );
        for e in tunnel {
            // The outer flow: a's underlay address to b's, both hooks.
            assert_eq!(&e.key.src_addr[..4], &A4.octets());
            assert_eq!(e.flags & EVENT_FLAG_PARSE_ERROR, 0);
        }
    }
}
