//! IPFIX export into a real collector: the agent on a veth in a test namespace exports to
//! nfcapd (Debian `nfdump`) on that namespace's loopback; `nfdump` must show every flow of known
//! TCP, UDP and ICMP traffic over IPv4 and IPv6 with exactly the packets and bytes an
//! independent AF_PACKET tap saw (per flow and direction, summed over the active-timeout
//! records), the right protocol, ports and TCP flags. tshark decodes the export with no
//! malformed or unknown-template warnings, with consistent sequence numbers and refreshed
//! templates. A collector down at start costs counted drops only, and the export resumes.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use integration_test::{
    agent::{Agent, metric},
    collector::{Collector, NfRecord},
    netns::{ADDR_A4, ADDR_A6, ADDR_B4, ADDR_B6, NetPair},
    netns_ifindex, require_bpf,
    tap::{Tap, totals},
    wait_for,
};

const COLLECTOR_PORT: u16 = 4739;

/// Known traffic from a to b over one IP version: a TCP connection that lasts about 3 s
/// (longer than the 1 s active timeout), 10 UDP datagrams, 5 pings.
fn traffic(pair: &NetPair, v6: bool, tcp_port: u16) {
    let (src, dst) = if v6 {
        (ADDR_A6, ADDR_B6)
    } else {
        (ADDR_A4, ADDR_B4)
    };
    let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let out = NetPair::command(&pair.ns_a, "ping")
        .args([
            if v6 { "-6" } else { "-4" },
            "-c",
            "5",
            "-i",
            "0.05",
            "-s",
            "100",
        ])
        .arg(dst.to_string())
        .output()
        .expect("ping");
    assert!(
        out.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = NetPair::spawn_in_ns(&pair.ns_b, move || {
        let s = UdpSocket::bind(SocketAddr::new(dst, 9999)).unwrap();
        ready_tx.send(()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..10 {
            s.recv(&mut buf).expect("the UDP datagrams");
        }
    });
    ready_rx.recv().unwrap();
    NetPair::in_ns(&pair.ns_a, move || {
        let s = UdpSocket::bind(SocketAddr::new(src, 40000)).unwrap();
        for _ in 0..10 {
            s.send_to(&[7u8; 200], SocketAddr::new(dst, 9999)).unwrap();
        }
    });
    receiver.join().unwrap();

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = NetPair::spawn_in_ns(&pair.ns_b, move || {
        let l = TcpListener::bind(SocketAddr::new(dst, tcp_port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 4000];
        for _ in 0..6 {
            c.read_exact(&mut buf).unwrap();
        }
        c.write_all(&[1u8; 1000]).unwrap();
        let mut end = [0u8; 1];
        assert_eq!(c.read(&mut end).unwrap(), 0, "the client closes");
    });
    ready_rx.recv().unwrap();
    NetPair::in_ns(&pair.ns_a, move || {
        let mut c = TcpStream::connect(SocketAddr::new(dst, tcp_port)).unwrap();
        // Six writes half a second apart: the flow outlives the active timeout.
        for _ in 0..6 {
            c.write_all(&[9u8; 4000]).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
        let mut back = vec![0u8; 1000];
        c.read_exact(&mut back).unwrap();
    });
    server.join().unwrap();
}

/// nfdump's records summed per (ingress?, proto, src, sport, dst, dport): (records, packets,
/// bytes, flags seen).
type Sums = BTreeMap<(bool, u8, IpAddr, u16, IpAddr, u16), (u64, u64, u64, String)>;

fn sums(records: &[NfRecord], ifindex: u32) -> Sums {
    let mut m = Sums::new();
    for r in records {
        assert!(
            (r.input == ifindex) != (r.output == ifindex),
            "each record has the capture interface on exactly one side: {r:?}"
        );
        let ports = if matches!(r.proto, 1 | 58) {
            (0, 0)
        } else {
            (r.src_port, r.dst_port)
        };
        let e = m
            .entry((r.input == ifindex, r.proto, r.src, ports.0, r.dst, ports.1))
            .or_default();
        e.0 += 1;
        e.1 += r.packets;
        e.2 += r.bytes;
        for c in r.flags.chars().filter(|c| *c != '.') {
            if !e.3.contains(c) {
                e.3.push(c);
            }
        }
    }
    m
}

fn exported_flows_match_the_tap(mode: &str) {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(&pair.ns_b, COLLECTOR_PORT, &dir.path().join("flows"));
    let capture = dir.path().join("export.pcap");
    let mut dump = NetPair::command(&pair.ns_b, "tcpdump")
        // `-Z root`: writing into the test's private directory, not as user tcpdump.
        .args(["-i", "lo", "-U", "-Z", "root", "-w"])
        .arg(&capture)
        .args(["udp", "port", &COLLECTOR_PORT.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    wait_for(30, "tcpdump to start capturing", || {
        capture.exists().then_some(())
    });
    let tap = Tap::start(&pair.ns_b, &pair.if_b);
    let collector_addr = format!("127.0.0.1:{COLLECTOR_PORT}");
    let agent = Agent::start_on_b(
        &pair,
        &dir.path().join("t.db"),
        &[
            "--direction",
            "both",
            "--capture-mode",
            mode,
            "--ipfix-collectors",
            &collector_addr,
            "--ipfix-active-timeout",
            "1",
            "--ipfix-template-refresh",
            "1",
        ],
    );
    // The tap and the agent start at different moments; with the link quiet, their difference
    // is fixed. Every frame of the traffic is then seen by both once it is back.
    let difference = |agent: &Agent| -> Option<i64> {
        let (_, m) = agent.get("/metrics")?;
        let seen: u64 = totals(&tap.frames()).values().map(|v| v.0).sum();
        let counted = metric(&m, "ayaflow_packets_total{direction=\"ingress\"}")?
            + metric(&m, "ayaflow_packets_total{direction=\"egress\"}")?;
        Some(counted as i64 - seen as i64)
    };
    let baseline = wait_for(30, "a quiet link", || {
        let first = difference(&agent)?;
        std::thread::sleep(Duration::from_millis(300));
        (difference(&agent)? == first).then_some(first)
    });
    traffic(&pair, false, 8080);
    traffic(&pair, true, 8081);
    wait_for(60, "the agent to count every frame the tap saw", || {
        (difference(&agent)? == baseline).then_some(())
    });
    let (_, m) = agent.get("/metrics").unwrap();
    let log = agent.log();
    assert!(agent.terminate().success(), "exit 0 on SIGTERM: {log}");
    let truth = totals(&tap.stop());
    // SAFETY: kill on the pid of a child we started and have not reaped.
    unsafe { libc::kill(dump.id() as i32, libc::SIGTERM) };
    dump.wait().unwrap();
    let nf_log = collector.log();
    let records = collector.stop();
    let ifindex = NetPair::in_ns(&pair.ns_b, {
        let i = pair.if_b.clone();
        move || netns_ifindex(&i)
    });
    let got = sums(&records, ifindex);

    let ends: Vec<IpAddr> = [ADDR_A4, ADDR_B4, ADDR_A6, ADDR_B6]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    // The traffic's flows: between the two ends (not the links' multicast chatter).
    let ours = |t: &(u8, IpAddr, u16, IpAddr, u16)| {
        matches!(t.0, 1 | 6 | 17 | 58) && ends.contains(&t.1) && ends.contains(&t.3)
    };
    let mut checked = 0;
    for ((outgoing, tuple), (packets, bytes)) in &truth {
        let Some(t) = tuple.filter(ours) else {
            continue;
        };
        let key = (!outgoing, t.0, t.1, t.2, t.3, t.4);
        let e = got.get(&key).unwrap_or_else(|| {
            panic!(
                "no record of {key:?} ({packets} packets); nfdump: {records:#?}\nnfcapd: {nf_log}"
            )
        });
        assert_eq!((e.1, e.2), (*packets, *bytes), "{key:?}: packets and bytes");
        if t.0 == 6 && t.2 != 8080 && t.2 != 8081 {
            // The client's side of a connection: SYN, ACK, PSH and FIN.
            for flag in ['S', 'A', 'P', 'F'] {
                assert!(e.3.contains(flag), "{key:?} flags {} lack {flag}", e.3);
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "every flow of the traffic checked ({checked})"
    );
    let between_ends = got
        .keys()
        .filter(|k| ends.contains(&k.2) && ends.contains(&k.4))
        .count();
    assert_eq!(
        between_ends, checked,
        "no flow in the export that the tap did not see: {got:#?}"
    );
    assert!(
        got.values().any(|e| e.0 > 1),
        "the long TCP flow was reported more than once (active timeout)"
    );
    assert_eq!(
        metric(
            &m,
            "ayaflow_ipfix_records_dropped_total{collector=\"127.0.0.1:4739\",reason=\"unreachable\"}"
        ),
        Some(0)
    );
    check_with_tshark(&capture);
}

/// tshark decodes every message: no malformed packet, no data set without its template,
/// sequence numbers that count the records, and templates sent more than once.
fn check_with_tshark(capture: &std::path::Path) {
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(capture)
        .args([
            "-d",
            &format!("udp.port=={COLLECTOR_PORT},cflow"),
            "-T",
            "fields",
            "-E",
            "separator=;",
            "-e",
            "cflow.sequence",
            "-e",
            "cflow.flowset_id",
            "-e",
            "cflow.octets",
            "-e",
            "_ws.expert.message",
        ])
        .output()
        .expect("tshark (Debian package tshark; `cargo xtask test` installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut template_messages, mut next_seq, mut messages) = (0, None, 0);
    for line in text.lines() {
        let f: Vec<&str> = line.split(';').collect();
        assert_eq!(f.len(), 4, "{line}");
        let expert = f[3].to_ascii_lowercase();
        assert!(
            !expert.contains("malformed")
                && !expert.contains("template")
                && !expert.contains("unknown"),
            "tshark warns: {line}"
        );
        let seq: u64 = f[0]
            .parse()
            .unwrap_or_else(|_| panic!("no sequence in {line}"));
        if let Some(n) = next_seq {
            assert_eq!(seq, n, "sequence numbers count the data records: {line}");
        }
        let records = if f[2].is_empty() {
            0
        } else {
            f[2].split(',').count() as u64
        };
        next_seq = Some(seq + records);
        if f[1].split(',').any(|id| id == "2") {
            template_messages += 1;
        }
        messages += 1;
    }
    assert!(messages > 0, "the capture holds the export");
    assert!(
        template_messages >= 2,
        "templates refreshed: {template_messages} in {messages} messages"
    );
}

#[test]
fn raw_mode_flows_reach_nfcapd_exactly() {
    exported_flows_match_the_tap("raw");
}

#[test]
fn flow_mode_flows_reach_nfcapd_exactly() {
    exported_flows_match_the_tap("flows");
}

/// The collector is down when the agent starts: capture stays exact, the records of that time
/// are counted as dropped, and once nfcapd runs the flows after it arrive whole.
#[test]
fn a_collector_down_at_start_costs_counted_drops_and_export_resumes() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let collector_addr = format!("127.0.0.1:{COLLECTOR_PORT}");
    let agent = Agent::start_on_b(
        &pair,
        &dir.path().join("t.db"),
        &[
            "--ipfix-collectors",
            &collector_addr,
            "--ipfix-active-timeout",
            "1",
            "--ipfix-idle-timeout",
            "1",
            "--ipfix-template-refresh",
            "1",
        ],
    );
    let dropped = |agent: &Agent| -> Option<u64> {
        let (_, m) = agent.get("/metrics")?;
        metric(
            &m,
            &format!(
                "ayaflow_ipfix_records_dropped_total{{collector=\"{collector_addr}\",reason=\"unreachable\"}}"
            ),
        )
    };
    // Nothing listens: records go nowhere, and the refusals are counted.
    let mut port = 41000;
    wait_for(60, "records dropped while the collector is down", || {
        NetPair::in_ns(&pair.ns_a, move || {
            let s = UdpSocket::bind((ADDR_A4, port)).unwrap();
            s.send_to(&[1u8; 50], (ADDR_B4, 9)).unwrap();
        });
        port += 1;
        (dropped(&agent)? > 0).then_some(())
    });
    let collector = Collector::start(&pair.ns_b, COLLECTOR_PORT, &dir.path().join("flows"));
    let drops_before = dropped(&agent).unwrap();
    // After the collector is up: a new flow of 7 datagrams, in once templates came again.
    let sent = |port: u16| {
        NetPair::in_ns(&pair.ns_a, move || {
            let s = UdpSocket::bind((ADDR_A4, port)).unwrap();
            for _ in 0..7 {
                s.send_to(&[2u8; 100], (ADDR_B4, 9)).unwrap();
            }
        })
    };
    // Wait for the session to be back (templates sent, no refusal) before the flow.
    wait_for(60, "the agent to see the collector again", || {
        let log = agent.log();
        log.contains("IPFIX collector reachable again")
            .then_some(())
    });
    sent(45000);
    let log = agent.log();
    assert!(agent.terminate().success(), "{log}");
    let records = collector.stop();
    let flow: Vec<_> = records
        .iter()
        .filter(|r| r.proto == 17 && r.src_port == 45000)
        .collect();
    assert_eq!(
        flow.iter().map(|r| r.packets).sum::<u64>(),
        7,
        "{records:#?}"
    );
    assert_eq!(
        flow.iter().map(|r| r.bytes).sum::<u64>(),
        7 * (14 + 20 + 8 + 100),
        "{records:#?}"
    );
    assert!(drops_before > 0);
    assert_eq!(
        log.matches("IPFIX collector unreachable").count(),
        1,
        "one line for the outage: {log}"
    );
}
