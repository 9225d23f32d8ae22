//! The real agent attached to a veth in a test namespace: known ICMP, UDP and TCP traffic over
//! IPv4 and IPv6 must show up exactly (packets and bytes, per direction) in `/metrics` and
//! `/api/live`, checked against the traffic sent and against an AF_PACKET tap on the same
//! interface; SIGTERM detaches everything; bad interfaces and double attachment fail clearly.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
};

use integration_test::{
    agent::{Agent, metric},
    netns::{ADDR_A4, ADDR_A6, ADDR_B4, ADDR_B6, NetPair},
    require_bpf,
    tap::{Tap, totals},
    wait_for,
};
use serde_json::Value;

const UDP_PAYLOAD: usize = 200;
const UDP_COUNT: usize = 10;
const PING_COUNT: usize = 5;
const PING_SIZE: usize = 100;

/// Sends the known traffic from namespace a to b over one IP version. Returns the two ends of
/// the TCP connection, still open: a closed connection leaves the live table (FIN both ways).
fn send_traffic(pair: &NetPair, v6: bool) -> (TcpStream, TcpStream) {
    let (src, dst) = if v6 {
        (ADDR_A6, ADDR_B6)
    } else {
        (ADDR_A4, ADDR_B4)
    };
    let out = NetPair::command(&pair.ns_a, "ping")
        .args([
            if v6 { "-6" } else { "-4" },
            "-c",
            &PING_COUNT.to_string(),
            "-i",
            "0.05",
            "-s",
            &PING_SIZE.to_string(),
            "-W",
            "5",
            dst,
        ])
        .output()
        .expect("ping (package iputils-ping)");
    assert!(
        out.status.success(),
        "ping failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // UDP a -> b to a bound socket (so b answers nothing).
    let dst_ip: std::net::IpAddr = dst.parse().unwrap();
    let src_ip: std::net::IpAddr = src.parse().unwrap();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let receiver = NetPair::spawn_in_ns(&pair.ns_b, move || {
        let s = UdpSocket::bind(SocketAddr::new(dst_ip, 9999)).unwrap();
        bound_tx.send(()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..UDP_COUNT {
            s.recv(&mut buf).expect("receiving the UDP datagrams");
        }
    });
    bound_rx.recv().unwrap();
    NetPair::in_ns(&pair.ns_a, move || {
        let s = UdpSocket::bind(SocketAddr::new(src_ip, 40000)).unwrap();
        for _ in 0..UDP_COUNT {
            s.send_to(&[7u8; UDP_PAYLOAD], SocketAddr::new(dst_ip, 9999))
                .unwrap();
        }
    });
    receiver.join().unwrap();

    // TCP: a connects to b, sends 20 KB, b echoes 1 KB, both close.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = NetPair::spawn_in_ns(&pair.ns_b, move || {
        let l = TcpListener::bind(SocketAddr::new(dst_ip, 8080)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut got = vec![0u8; 20_000];
        c.read_exact(&mut got).unwrap();
        c.write_all(&[1u8; 1000]).unwrap();
        c
    });
    ready_rx.recv().unwrap();
    let client = NetPair::in_ns(&pair.ns_a, move || {
        let mut c = TcpStream::connect(SocketAddr::new(dst_ip, 8080)).unwrap();
        c.write_all(&[9u8; 20_000]).unwrap();
        let mut back = vec![0u8; 1000];
        c.read_exact(&mut back).unwrap();
        c
    });
    (client, server.join().unwrap())
}

/// Runs the traffic with the agent on b's veth and checks every number.
fn exact_counts(direction: &str, mode: &str, extra: &[&str]) -> String {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    // The tap starts first and a baseline is taken once both are quiet: frames from links
    // coming up (MLD reports, router solicitations) may reach one and not the other.
    let tap = Tap::start(&pair.ns_b, &pair.if_b);
    let mut args = vec!["--capture-mode", mode, "--direction", direction];
    args.extend(extra);
    let agent = Agent::start_on_b(&pair, &db, &args);
    let both = direction == "both";
    let counts = |agent: &Agent, tap: &Tap| -> Option<([u64; 4], [u64; 4], String, Truth)> {
        let (_, before) = agent.get("/metrics")?;
        let truth = totals(&tap.frames());
        let (_, after) = agent.get("/metrics")?;
        let read = |t: &str| -> Option<[u64; 4]> {
            let m = |name: &str, d: &str| metric(t, &format!("{name}{{direction=\"{d}\"}}"));
            Some([
                m("ayaflow_packets_total", "ingress")?,
                m("ayaflow_bytes_total", "ingress")?,
                m("ayaflow_packets_total", "egress")?,
                m("ayaflow_bytes_total", "egress")?,
            ])
        };
        let (a, b) = (read(&before)?, read(&after)?);
        let sum = |outgoing: bool| {
            truth
                .iter()
                .filter(|((o, _), _)| *o == outgoing)
                .fold((0, 0), |a, (_, v)| (a.0 + v.0, a.1 + v.1))
        };
        let (i, o) = (sum(false), if both { sum(true) } else { (0, 0) });
        (a == b).then_some((b, [i.0, i.1, o.0, o.1], after, truth))
    };
    let stable = |agent: &Agent, tap: &Tap| {
        let first = counts(agent, tap)?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let second = counts(agent, tap)?;
        (first.0 == second.0 && first.1 == second.1).then_some(second)
    };
    let (agent_base, tap_base, _, _) =
        wait_for(30, "the new links to fall quiet", || stable(&agent, &tap));

    let _tcp4 = send_traffic(&pair, false);
    let _tcp6 = send_traffic(&pair, true);

    // Compare what each saw since the baseline, once both have caught up.
    let (text, truth) = wait_for(30, "the agent's counters to equal the tap's", || {
        let (agent_now, tap_now, text, truth) = counts(&agent, &tap)?;
        let delta = |now: [u64; 4], base: [u64; 4]| [0, 1, 2, 3].map(|k| now[k] - base[k]);
        let (a, t) = (delta(agent_now, agent_base), delta(tap_now, tap_base));
        if a != t {
            eprintln!("not yet: agent {a:?}, tap {t:?}");
        }
        (a == t).then_some((text, truth))
    });
    drop(tap.stop());
    assert_eq!(
        metric(&text, "ayaflow_ringbuf_drops_total{direction=\"ingress\"}"),
        Some(0)
    );
    let kernel_total = metric(&text, "ayaflow_packets_total{direction=\"ingress\"}").unwrap()
        + metric(&text, "ayaflow_packets_total{direction=\"egress\"}").unwrap();

    // Per connection, against the traffic sent (computed) and the tap.
    // The live table catches up with the kernel's totals: at once after the ring buffer is
    // drained (raw mode), or after the next sweep (flow mode).
    let live: Value = wait_for(30, "the live table to account for every packet", || {
        let (_, body) = agent.get("/api/live?limit=1000")?;
        let live: Value = serde_json::from_str(&body).ok()?;
        let sum: u64 = live["connections"]
            .as_array()?
            .iter()
            .map(|c| c["stats"]["packets_count"].as_u64().unwrap_or(0))
            .sum();
        let total = live["total_packets"].as_u64()?;
        (sum == total && total >= kernel_total).then_some(live)
    });
    let find = |src: &str, dst: &str, proto: &str| -> Value {
        live["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                let k = &c["connection"];
                k["proto"] == proto
                    && ((k["src"] == src && k["dst"] == dst)
                        || (k["src"] == dst && k["dst"] == src))
            })
            .unwrap_or_else(|| panic!("no {proto} {src} <-> {dst} in {live}"))["stats"]
            .clone()
    };
    let factor = if both { 2 } else { 1 };
    for (a, b, ip_hdr, icmp) in [
        (ADDR_A4, ADDR_B4, 20, "ICMP"),
        (ADDR_A6, ADDR_B6, 40, "ICMPv6"),
    ] {
        let (ea, eb) = if ip_hdr == 40 {
            (format!("[{a}]"), format!("[{b}]"))
        } else {
            (a.to_string(), b.to_string())
        };
        let udp = find(&format!("{ea}:40000"), &format!("{eb}:9999"), "UDP");
        assert_eq!(udp["packets_count"], UDP_COUNT as u64);
        assert_eq!(
            udp["bytes_count"],
            (UDP_COUNT * (14 + ip_hdr + 8 + UDP_PAYLOAD)) as u64
        );
        assert_eq!(udp["ingress_packets"], UDP_COUNT as u64);
        assert_eq!(udp["egress_packets"], 0);
        let ping = find(&format!("{ea}:0"), &format!("{eb}:0"), icmp);
        let b_ip: std::net::IpAddr = b.parse().unwrap();
        let proto = if ip_hdr == 40 { 58 } else { 1 };
        let (pk, by) = tap_sum(&truth, both, |p, s, _, d, _| {
            p == proto && (s == b_ip || d == b_ip)
        });
        assert_eq!(ping["packets_count"], pk, "{icmp} vs the tap");
        assert_eq!(ping["bytes_count"], by, "{icmp} vs the tap");
        if icmp == "ICMP" {
            // No neighbour discovery in ICMPv4 (ARP is not IP): exactly the pings sent.
            assert_eq!(pk, (factor * PING_COUNT) as u64);
            assert_eq!(
                by,
                (factor * PING_COUNT * (14 + ip_hdr + 8 + PING_SIZE)) as u64
            );
        }
        // TCP: whatever the stack sent (ACK timing varies), exactly what the tap saw.
        let tcp = live["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["connection"]["proto"] == "TCP" && c["connection"]["dst"] == format!("{eb}:8080")
            })
            .unwrap_or_else(|| panic!("no TCP connection to {eb}:8080 in {live}"))["stats"]
            .clone();
        let (pk, by) = tap_sum(&truth, both, |p, s, sp, d, dp| {
            p == 6 && ((d == b_ip && dp == 8080) || (s == b_ip && sp == 8080))
        });
        assert!(pk > 10, "the tap saw the TCP exchange");
        assert_eq!(tcp["packets_count"], pk, "TCP packets vs the tap");
        assert_eq!(tcp["bytes_count"], by, "TCP bytes vs the tap");
    }
    // Raw history agrees too: one row per UDP datagram, with its exact size. (Flow mode keeps
    // no per-packet rows; its windows are checked in lifecycle.rs.)
    if mode == "raw" {
        let rows: Vec<Value> = wait_for(30, "the UDP rows in /api/history", || {
            let (_, body) = agent.get("/api/history?proto=UDP&port=9999&limit=1000")?;
            let doc: Value = serde_json::from_str(&body).ok()?;
            let rows = doc["rows"].as_array()?.clone();
            (rows.len() >= 2 * UDP_COUNT).then_some(rows)
        });
        assert_eq!(rows.len(), 2 * UDP_COUNT);
        let size = |ip_hdr: usize| (14 + ip_hdr + 8 + UDP_PAYLOAD) as u64;
        let count = |b: u64| rows.iter().filter(|r| r["bytes"] == b).count();
        assert_eq!((count(size(20)), count(size(40))), (UDP_COUNT, UDP_COUNT));
        assert!(
            rows.iter()
                .all(|r| r["direction"] == "ingress" && r["packets"] == 1)
        );
    }
    drop(agent);
    text
}

type Truth = integration_test::tap::Totals;

/// Packets and bytes the tap saw for tuples matching `f` (ingress only unless `both`).
fn tap_sum(
    truth: &Truth,
    both: bool,
    f: impl Fn(u8, IpAddr, u16, IpAddr, u16) -> bool,
) -> (u64, u64) {
    let mut sum = (0, 0);
    for ((outgoing, tuple), (p, n)) in truth {
        if let Some((proto, s, sp, d, dp)) = *tuple
            && f(proto, s, sp, d, dp)
            && (!outgoing || both)
        {
            sum.0 += p;
            sum.1 += n;
        }
    }
    sum
}

#[test]
fn exact_counts_ingress_only() {
    exact_counts("ingress", "raw", &[]);
}

#[test]
fn exact_counts_both_directions() {
    exact_counts("both", "raw", &[]);
}

/// Flow mode (aggregated in the kernel) reports the same connections, packets and bytes as the
/// tap, hence as raw mode on the same traffic.
#[test]
fn flow_mode_exact_counts_ingress_only() {
    exact_counts("ingress", "flows", &[]);
}

#[test]
fn flow_mode_exact_counts_both_directions() {
    exact_counts("both", "flows", &[]);
}

/// A flow table too small for the traffic: new connections fall back to ring-buffer events,
/// the fallback is counted, and every number stays exact.
#[test]
fn flow_mode_full_map_falls_back_to_events() {
    let text = exact_counts("both", "flows", &["--flow-map-size", "4"]);
    let fallbacks = metric(&text, "ayaflow_flow_fallbacks_total{direction=\"ingress\"}").unwrap()
        + metric(&text, "ayaflow_flow_fallbacks_total{direction=\"egress\"}").unwrap();
    assert!(
        fallbacks > 0,
        "a 4-slot table must overflow with this traffic: {text}"
    );
}
