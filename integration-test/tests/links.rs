//! The classifier on real traffic of other link shapes: VLAN tags held as skb metadata (tx
//! offload, pushed by a sender-side TC program; rx, where the stack untags before the hook).

use std::{net::SocketAddr, time::Duration};

use ayaflow::ebpf::{KernelProgram, LoadOptions};
use ayaflow_common::{
    event::{EVENT_FLAG_PARSE_ERROR, PacketEvent},
    flow::{Direction, ETH_P_IP},
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
fn events_to(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    port: u16,
    n: usize,
) -> Vec<PacketEvent> {
    let mut got = Vec::new();
    wait_for(10, "the events of every datagram", || {
        while let Some(item) = ring.next() {
            let e = ayaflow::decode::packet_event(&item).expect("a whole event");
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
