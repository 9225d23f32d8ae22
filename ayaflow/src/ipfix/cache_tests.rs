use super::*;
use crate::flow::Protocol;

const S: u64 = 1_000_000_000;

fn obs(port: u16, direction: Direction, t: u64, packets: u64, flags: u8) -> Observation {
    Observation {
        tuple: FiveTuple {
            proto: Protocol::Tcp,
            src: "10.0.0.1".parse().unwrap(),
            src_port: port,
            dst: "10.0.0.2".parse().unwrap(),
            dst_port: 443,
            interface: Default::default(),
        },
        direction,
        packets,
        bytes: packets * 100,
        first_ns: t,
        last_ns: t,
        tcp_flags: flags,
        icmp_type: 0,
        icmp_code: 0,
        vlan_id: 0,
    }
}

fn cache(capacity: usize) -> FlowCache {
    // The tuples here have no interface name: index 3.
    let names = crate::ifname::IfindexNames::default();
    names.set(3, "");
    FlowCache::new(capacity, 10 * S, 5 * S, names)
}

#[test]
fn records_of_a_flow_sum_to_what_was_added() {
    let mut c = cache(16);
    let mut out = Vec::new();
    for t in 0..25 {
        c.add(&obs(1000, Direction::Ingress, t * S, 2, 0x10));
        c.take_due(t * S, &mut out);
    }
    c.take_due(40 * S, &mut out);
    assert!(c.is_empty(), "idle after 5 s");
    let reasons: Vec<_> = out.iter().map(|r| r.end_reason).collect();
    assert_eq!(
        reasons,
        [EndReason::Active, EndReason::Active, EndReason::Idle],
        "active at 10 s and 20 s, then idle"
    );
    assert_eq!(out.iter().map(|r| r.packets).sum::<u64>(), 50);
    assert_eq!(out.iter().map(|r| r.bytes).sum::<u64>(), 5000);
    assert_eq!((out[0].start_ms, out[0].end_ms), (0, 10_000));
    assert_eq!(
        (out[1].start_ms, out[1].end_ms),
        (11_000, 20_000),
        "a record starts with the first packet after the last one"
    );
    assert!(
        out.iter()
            .all(|r| r.ingress_interface == 3 && r.egress_interface == 0)
    );
}

#[test]
fn fin_or_rst_ends_the_record_at_once() {
    let mut c = cache(16);
    let mut out = Vec::new();
    c.add(&obs(1, Direction::Egress, S, 1, 0x02));
    c.add(&obs(1, Direction::Egress, 2 * S, 1, 0x11));
    c.take_due(2 * S, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_reason, EndReason::EndOfFlow);
    assert_eq!((out[0].packets, out[0].tcp_flags), (2, 0x13));
    assert_eq!((out[0].egress_interface, out[0].flow_direction), (3, 1));
    assert!(c.is_empty());
}

#[test]
fn a_full_cache_sends_new_flows_at_once_and_loses_nothing() {
    let mut c = cache(2);
    let mut out = Vec::new();
    for port in 0..5 {
        c.add(&obs(port, Direction::Ingress, S, 3, 0));
    }
    assert_eq!(c.len(), 2);
    assert_eq!(c.overflow_records, 3);
    c.take_all(&mut out);
    assert_eq!(out.len(), 5);
    assert_eq!(out.iter().map(|r| r.packets).sum::<u64>(), 15);
    let overflow = out
        .iter()
        .filter(|r| r.end_reason == EndReason::LackOfResources)
        .count();
    assert_eq!(overflow, 3);
    assert!(
        out.iter()
            .filter(|r| r.end_reason != EndReason::LackOfResources)
            .all(|r| r.end_reason == EndReason::Forced)
    );
}

#[test]
fn non_ip_frames_are_not_cached() {
    let mut c = cache(4);
    let mut o = obs(0, Direction::Ingress, S, 1, 0);
    o.tuple.proto = Protocol::Ether(0x0806);
    c.add(&o);
    assert!(c.is_empty());
}
