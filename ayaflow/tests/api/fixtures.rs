//! Fixtures

use super::*;

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture addresses are valid")
}

pub(crate) fn tuple(
    proto: Protocol,
    src: &str,
    src_port: u16,
    dst: &str,
    dst_port: u16,
) -> FiveTuple {
    FiveTuple {
        proto,
        src: ip(src),
        src_port,
        dst: ip(dst),
        dst_port,
        interface: ayaflow::ifname::InterfaceId::intern("eth0"),
    }
}

pub(crate) fn packet(
    tuple: FiveTuple,
    direction: Direction,
    ts_unix_ns: u64,
    bytes: u32,
) -> Packet {
    Packet {
        tuple,
        direction,
        ts_unix_ns,
        packets: 1,
        bytes,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        flags: 0,
        vlan_id: 0,
    }
}

/// Three connections whose `/api/live` document is written out in full in `live_exact_json`:
/// TCP over IPv4 seen both ways, UDP over IPv6, ICMP.
pub(crate) fn small_table() -> Vec<Packet> {
    let tcp = tuple(Protocol::Tcp, "192.168.1.5", 443, "10.0.0.2", 34560);
    let udp6 = tuple(Protocol::Udp, "fd00::1", 5353, "fd00::2", 53);
    let icmp = tuple(Protocol::Icmp, "10.0.0.9", 0, "10.0.0.1", 0);
    vec![
        packet(tcp, Direction::Ingress, T * SEC + SEC / 2, 1000),
        packet(tcp, Direction::Ingress, (T + 1) * SEC + SEC / 5, 1000),
        // The reply: same connection, still oriented as first seen.
        packet(tcp.reversed(), Direction::Egress, (T + 3) * SEC, 60),
        packet(tcp, Direction::Ingress, (T + 5) * SEC + 9 * SEC / 10, 1000),
        packet(udp6, Direction::Egress, (T + 2) * SEC, 100),
        packet(udp6, Direction::Egress, (T + 3) * SEC + 1, 100),
        packet(icmp, Direction::Ingress, (T + 4) * SEC + 5, 84),
    ]
}

/// One connection of `many_connections`, as the test expects it back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Model {
    pub(crate) src_port: u16,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) first_seen: u64,
    pub(crate) last_seen: u64,
}

/// 60 UDP connections 10.1.0.1:(10000+i) -> 10.2.0.1:53 whose packet counts, byte counts,
/// first and last times each rank them in a different order.
pub(crate) fn many_connections() -> (Vec<Packet>, Vec<Model>) {
    let mut packets = Vec::new();
    let mut models = Vec::new();
    for i in 0..60u64 {
        let port = 10_000 + i as u16;
        let t = tuple(Protocol::Udp, "10.1.0.1", port, "10.2.0.1", 53);
        let n = i + 2;
        let size = (1000 - 15 * i) as u32;
        // 7 and 13 are coprime with 60: two more permutations of 0..60.
        let first = T + (i * 7) % 60;
        let last = T + 1000 + (i * 13) % 60;
        packets.push(packet(t, Direction::Egress, first * SEC, size));
        for _ in 1..n {
            packets.push(packet(t, Direction::Egress, last * SEC, size));
        }
        models.push(Model {
            src_port: port,
            packets: n,
            bytes: n * u64::from(size),
            first_seen: first,
            last_seen: last,
        });
    }
    for key in [
        |m: &Model| m.packets,
        |m: &Model| m.bytes,
        |m: &Model| m.first_seen,
        |m: &Model| m.last_seen,
    ] {
        let distinct: BTreeSet<u64> = models.iter().map(key).collect();
        assert_eq!(
            distinct.len(),
            60,
            "the fixture must not tie on any sort key"
        );
    }
    (packets, models)
}

/// Raw history rows: `n` packets one second apart over four kinds of conversation.
pub(crate) fn raw_rows(n: u64) -> Vec<Packet> {
    (0..n)
        .map(|i| {
            let (t, tcp_flags, icmp_type) = match i % 4 {
                0 => (
                    tuple(
                        Protocol::Tcp,
                        "10.0.0.1",
                        40_000 + (i % 7) as u16,
                        "10.0.0.2",
                        443,
                    ),
                    0x10,
                    0,
                ),
                1 => (tuple(Protocol::Udp, "10.0.0.3", 5353, "10.0.0.1", 53), 0, 0),
                2 => (tuple(Protocol::Icmpv6, "fd00::1", 0, "fd00::2", 0), 0, 128),
                _ => (
                    tuple(Protocol::Tcp, "fd00::2", 50_000, "fd00::3", 8080),
                    0x02,
                    0,
                ),
            };
            let direction = if i % 3 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let mut p = packet(t, direction, (T + i) * SEC + 123_456_789, 60 + i as u32);
            p.tcp_flags = tcp_flags;
            p.icmp_type = icmp_type;
            p
        })
        .collect()
}

/// Aggregated history rows: 12 one-minute windows over two conversations.
pub(crate) fn window_rows() -> Vec<WindowRow> {
    (0..12u64)
        .map(|k| {
            let t = if k % 2 == 0 {
                tuple(Protocol::Udp, "10.0.0.3", 5353, "10.0.0.1", 53)
            } else {
                tuple(Protocol::Tcp, "fd00::2", 50_000, "fd00::3", 8080)
            };
            let start = (T + 60 * k) as i64;
            WindowRow {
                window_start_unix: start,
                window_end_unix: start + 60,
                tuple: t,
                direction: if k % 3 == 0 {
                    Direction::Ingress
                } else {
                    Direction::Egress
                },
                packets: k + 1,
                bytes: 100 * (k + 1),
            }
        })
        .collect()
}

/// `addr:port` as the API writes it.
pub(crate) fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

pub(crate) fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The JSON a raw row must have, built field by field from the fixture.
pub(crate) fn raw_json(id: u64, p: &Packet) -> Value {
    json!({
        "id": id,
        "timestamp": p.ts_unix_ns / SEC,
        "timestamp_ns": p.ts_unix_ns,
        "direction": direction_name(p.direction),
        "interface": &*p.tuple.interface.name(),
        "proto": p.tuple.proto.to_string(),
        "src": endpoint(p.tuple.src, p.tuple.src_port),
        "dst": endpoint(p.tuple.dst, p.tuple.dst_port),
        "packets": p.packets,
        "bytes": p.bytes,
        "tcp_flags": p.tcp_flags,
        "icmp_type": p.icmp_type,
        "icmp_code": p.icmp_code,
    })
}

/// The JSON a window row must have.
pub(crate) fn window_json(id: u64, w: &WindowRow) -> Value {
    json!({
        "id": id,
        "window_start": w.window_start_unix,
        "window_end": w.window_end_unix,
        "direction": direction_name(w.direction),
        "interface": &*w.tuple.interface.name(),
        "proto": w.tuple.proto.to_string(),
        "src": endpoint(w.tuple.src, w.tuple.src_port),
        "dst": endpoint(w.tuple.dst, w.tuple.dst_port),
        "packets": w.packets,
        "bytes": w.bytes,
    })
}
