//! Interfaces that come and go while the agent runs (real veths in namespaces, the real agent):
//! a named interface deleted and re-created, patterns over veths created, renamed and removed
//! while traffic flows, and hundreds of veths attached and detached without leaking links.
//!
//! Counts are compared with each interface's own counters (`rx_packets`), read when both have
//! settled: the agent's per-interface series must equal them exactly.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Instant,
};

use integration_test::{
    agent::{Agent, metric},
    netns::{ADDR_B4, LinkStats, NetPair, ip},
    require_bpf, wait_for,
};

fn ingress(name: &str) -> String {
    format!("ayaflow_packets_total{{direction=\"ingress\",interface=\"{name}\"}}")
}

/// `/api/status`'s entry for `name`: (state, ifindex), if listed.
fn status_of(agent: &Agent, name: &str) -> Option<(String, u64)> {
    let (_, body) = agent.get("/api/status")?;
    let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
    doc["interfaces"].as_array()?.iter().find_map(|i| {
        (i["name"] == name).then(|| {
            (
                i["state"].as_str().unwrap_or_default().to_string(),
                i["ifindex"].as_u64().unwrap_or(0),
            )
        })
    })
}

fn metrics(agent: &Agent) -> String {
    agent.get("/metrics").map(|(_, b)| b).unwrap_or_default()
}

/// Waits until the agent's ingress count of `name` equals the interface's own received
/// packets (plus `before`, what earlier interfaces of that name counted), and returns it.
fn settled_ingress(agent: &Agent, ns: &str, name: &str, before: u64) -> u64 {
    wait_for(
        30,
        &format!("{name}'s ingress count to match rx_packets"),
        || {
            let rx = LinkStats::read(ns, name).rx_packets + before;
            let counted = metric(&metrics(agent), &ingress(name))?;
            (counted == rx && rx == LinkStats::read(ns, name).rx_packets + before).then_some(rx)
        },
    )
}

/// Sends `n` UDP datagrams from namespace `ns` to `dst`.
fn send(ns: &str, src: Ipv4Addr, dst: Ipv4Addr, n: usize) {
    NetPair::in_ns(ns, move || {
        let s = UdpSocket::bind(SocketAddr::new(src.into(), 0)).expect("binding the sender");
        for _ in 0..n {
            s.send_to(&[0x5a; 32], SocketAddr::new(dst.into(), 9))
                .expect("sending a datagram");
        }
    });
}

/// A veth from namespace `ns_a` (`peer`, `a`/30) to `ns_b` (`name`, `b`/30), up, without IPv6
/// (no router solicitations or MLD reports mixed into the counts).
fn veth(ns_a: &str, ns_b: &str, peer: &str, name: &str, a: &str, b: &str) {
    ip(&[
        "link", "add", peer, "netns", ns_a, "type", "veth", "peer", "name", name, "netns", ns_b,
    ]);
    for (ns, ifc, addr) in [(ns_a, peer, a), (ns_b, name, b)] {
        let off = format!("net.ipv6.conf.{ifc}.disable_ipv6=1");
        integration_test::agent::run(NetPair::command(ns, "sysctl").args(["-q", "-w", &off]));
        ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", ifc]);
        ip(&["-n", ns, "link", "set", ifc, "up"]);
    }
}

#[test]
fn a_named_interface_deleted_and_recreated_is_counted_again_exactly() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_on_b(&pair, &dir.path().join("h.db"), &[]);
    let (a4, b4): (Ipv4Addr, Ipv4Addr) = ("192.0.2.1".parse().unwrap(), ADDR_B4.parse().unwrap());
    // The interface received packets before the agent attached (IPv6 neighbour discovery):
    // compare what both count from a moment when they agree on the difference.
    let (rx0, counted0) = wait_for(30, "a quiet moment", || {
        let rx = LinkStats::read(&pair.ns_b, &pair.if_b).rx_packets;
        let counted = metric(&metrics(&agent), &ingress(&pair.if_b))?;
        (rx == LinkStats::read(&pair.ns_b, &pair.if_b).rx_packets).then_some((rx, counted))
    });
    send(&pair.ns_a, a4, b4, 100);
    let delta = wait_for(30, "the first datagrams counted exactly", || {
        let rx = LinkStats::read(&pair.ns_b, &pair.if_b).rx_packets - rx0;
        let counted = metric(&metrics(&agent), &ingress(&pair.if_b))? - counted0;
        (counted == rx && rx >= 100).then_some(rx)
    });
    assert!(delta >= 100, "{delta}");
    let (_, old_index) = status_of(&agent, &pair.if_b).expect("listed");

    ip(&["-n", &pair.ns_a, "link", "del", &pair.if_a]);
    wait_for(
        30,
        "/readyz 503 while the named interface is missing",
        || agent.get("/readyz").filter(|(code, _)| *code == 503),
    );
    // What the deleted interface counted, to the last packet.
    let first = metric(&metrics(&agent), &ingress(&pair.if_b)).expect("its series stays");
    assert_eq!(
        status_of(&agent, &pair.if_b).map(|s| s.0).as_deref(),
        Some("missing")
    );
    assert!(
        agent.log().contains("interface left: detaching"),
        "{}",
        agent.log()
    );

    let created = Instant::now();
    veth(
        &pair.ns_a,
        &pair.ns_b,
        &pair.if_a,
        &pair.if_b,
        "192.0.2.1",
        ADDR_B4,
    );
    let new_index = wait_for(30, "the re-created interface attached", || {
        status_of(&agent, &pair.if_b).filter(|(s, _)| s == "attached")
    })
    .1;
    eprintln!(
        "re-created {} attached {:?} after its creation",
        pair.if_b,
        created.elapsed()
    );
    assert_ne!(new_index, old_index, "a re-created interface is a new one");
    wait_for(30, "/readyz 200 again", || {
        agent.get("/readyz").filter(|(code, _)| *code == 200)
    });
    send(&pair.ns_a, a4, b4, 250);
    // The series of the name goes on from what the deleted interface counted.
    let total = settled_ingress(&agent, &pair.ns_b, &pair.if_b, first);
    // Exact (equal to what the new interface received: the datagrams and an ARP request).
    assert!(total >= first + 250, "{total}");
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn a_pattern_follows_veths_that_come_go_and_are_renamed_each_counted_under_its_own_name() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let tag = &pair.if_b[2..pair.if_b.len() - 1];
    let (p0, p1, px) = (format!("p{tag}0"), format!("p{tag}1"), format!("p{tag}x"));
    let pattern = format!("p{tag}*");
    let excluded = format!("p{tag}x*");
    let agent = Agent::start(
        &pair.ns_b,
        3000,
        dir.path(),
        &[
            "--interface",
            &pattern,
            "--exclude-interface",
            &excluded,
            "--db-path",
            dir.path().join("h.db").to_str().unwrap(),
        ],
    );
    // Ready with a pattern that matches nothing yet.
    assert!(status_of(&agent, &pair.if_b).is_none());

    let subnets = [
        (&p0, "198.51.100.1", "198.51.100.2"),
        (&p1, "198.51.100.5", "198.51.100.6"),
        (&px, "198.51.100.9", "198.51.100.10"),
    ];
    for (name, a, b) in subnets {
        veth(&pair.ns_a, &pair.ns_b, &format!("{name}a"), name, a, b);
    }
    for name in [&p0, &p1] {
        wait_for(30, &format!("{name} attached"), || {
            status_of(&agent, name).filter(|(s, _)| s == "attached")
        });
    }
    for (n, (_, a, b)) in [300, 200, 100].into_iter().zip(subnets) {
        send(&pair.ns_a, a.parse().unwrap(), b.parse().unwrap(), n);
    }
    let c0 = settled_ingress(&agent, &pair.ns_b, &p0, 0);
    let c1 = settled_ingress(&agent, &pair.ns_b, &p1, 0);
    assert!(c0 >= 300 && c1 >= 200, "{c0} {c1}");
    let text = metrics(&agent);
    assert_eq!(metric(&text, &ingress(&px)), None, "excluded: no series");
    assert_eq!(status_of(&agent, &px), None, "excluded: not listed");
    assert_eq!(metric(&text, "ayaflow_interfaces_attached"), Some(2));

    // Renamed out of the pattern: detached, its series keeps its last value.
    let out = format!("q{tag}1");
    ip(&["-n", &pair.ns_b, "link", "set", &p1, "name", &out]);
    wait_for(30, &format!("{p1} detached"), || {
        status_of(&agent, &p1).filter(|(s, _)| s == "detached")
    });
    let send_on_p1 = |n| {
        send(
            &pair.ns_a,
            subnets[1].1.parse().unwrap(),
            subnets[1].2.parse().unwrap(),
            n,
        )
    };
    send_on_p1(50);
    // Renamed back into it under another name: attached and counted from then.
    let back = format!("p{tag}9");
    let before = LinkStats::read(&pair.ns_b, &out).rx_packets;
    ip(&["-n", &pair.ns_b, "link", "set", &out, "name", &back]);
    wait_for(30, &format!("{back} attached"), || {
        status_of(&agent, &back).filter(|(s, _)| s == "attached")
    });
    send_on_p1(70);
    let text = metrics(&agent);
    assert_eq!(
        metric(&text, &ingress(&p1)),
        Some(c1),
        "a gone name's series stays"
    );
    assert_eq!(
        metric(&text, &ingress(&out)),
        None,
        "never observed under {out}"
    );
    let c9 = wait_for(30, &format!("{back}'s count"), || {
        let rx = LinkStats::read(&pair.ns_b, &back).rx_packets - before;
        (metric(&metrics(&agent), &ingress(&back))? == rx).then_some(rx)
    });
    assert!(c9 >= 70, "{c9}");

    // Deleted: detached; the node's total is still the sum of every interface's series.
    ip(&["-n", &pair.ns_b, "link", "del", &p0]);
    wait_for(30, &format!("{p0} detached"), || {
        status_of(&agent, &p0).filter(|(s, _)| s == "detached")
    });
    let text = metrics(&agent);
    assert_eq!(metric(&text, "ayaflow_interfaces_attached"), Some(1));
    assert_eq!(metric(&text, &ingress(&p0)), Some(c0));
    assert_eq!(
        metric(&text, "ayaflow_packets_total{direction=\"ingress\"}"),
        Some(c0 + c1 + c9)
    );
    // Connections carry their interface.
    let (_, live) = agent.get("/api/live?limit=100").unwrap();
    let live: serde_json::Value = serde_json::from_str(&live).unwrap();
    let seen: Vec<&str> = live["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["connection"]["interface"].as_str())
        .collect();
    assert!(seen.contains(&back.as_str()), "{seen:?}");
    assert!(!seen.contains(&px.as_str()), "{seen:?}");
    assert_eq!(agent.terminate().code(), Some(0));
}

/// The ids of the BPF programs (`prog_id:`) and the number of BPF links (`link_type:`)
/// process `pid` holds, from its file descriptors' fdinfo.
fn bpf_fds(pid: u32) -> (Vec<u64>, usize) {
    let (mut progs, mut links) = (Vec::new(), 0);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        if info.contains("link_type:") {
            links += 1;
        } else if let Some(id) = info.lines().find_map(|l| l.strip_prefix("prog_id:")) {
            progs.push(id.trim().parse().expect("a program id"));
        }
    }
    (progs, links)
}

/// The links of the kernel (`bpftool link list`) that run one of process `pid`'s programs, and
/// the link descriptors the process holds.
fn links_of(pid: u32) -> (usize, usize) {
    let (progs, held) = bpf_fds(pid);
    let out = integration_test::agent::run(
        std::process::Command::new("bpftool").args(["-j", "link", "list"]),
    );
    let links: serde_json::Value = serde_json::from_str(&out).expect("bpftool's JSON");
    let running = links.as_array().map_or(0, |l| {
        l.iter()
            .filter(|link| {
                link["prog_id"]
                    .as_u64()
                    .is_some_and(|id| progs.contains(&id))
            })
            .count()
    });
    (running, held)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn two_hundred_veths_created_and_removed_twice_leave_no_link_and_bounded_memory() {
    require_bpf();
    const VETHS: usize = 200;
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let tag = &pair.if_b[2..pair.if_b.len() - 1];
    let pattern = format!("m{tag}*");
    let agent = Agent::start(
        &pair.ns_b,
        3000,
        dir.path(),
        &[
            "--interface",
            &pattern,
            "--db-path",
            dir.path().join("h.db").to_str().unwrap(),
        ],
    );
    let pid = agent.child.id();
    // `ip -batch`: one process for all the links.
    let batch = |verb: &str| {
        let lines: String = (0..VETHS)
            .map(|i| match verb {
                "add" => format!("link add m{tag}{i} type veth peer name n{tag}{i}\n"),
                _ => format!("link del m{tag}{i}\n"),
            })
            .collect();
        let file = dir.path().join(format!("{verb}.batch"));
        std::fs::write(&file, lines).unwrap();
        ip(&["-n", &pair.ns_b, "-batch", file.to_str().unwrap()]);
    };
    let mut rss = Vec::new();
    for round in 0..2 {
        let started = Instant::now();
        batch("add");
        wait_for(120, &format!("{VETHS} veths attached"), || {
            (metric(&metrics(&agent), "ayaflow_interfaces_attached")? == VETHS as u64).then_some(())
        });
        let attach = started.elapsed();
        assert_eq!(links_of(pid), (VETHS, VETHS), "one ingress link per veth");
        let started = Instant::now();
        batch("del");
        wait_for(120, "every veth detached", || {
            (metric(&metrics(&agent), "ayaflow_interfaces_attached")? == 0).then_some(())
        });
        eprintln!(
            "round {round}: {VETHS} veths attached in {attach:?} ({:?} each), detached in {:?}",
            attach / VETHS as u32,
            started.elapsed()
        );
        wait_for(30, "no link left", || {
            (links_of(pid) == (0, 0)).then_some(())
        });
        rss.push(rss_kib(pid));
    }
    let text = metrics(&agent);
    assert_eq!(
        metric(&text, "ayaflow_interface_attach_failures_total"),
        Some(0),
        "{}",
        agent.log()
    );
    eprintln!("RSS after each round: {rss:?} KiB");
    assert!(
        rss[1] <= rss[0] + 2048,
        "the second round grew the agent by {} KiB",
        rss[1] - rss[0]
    );
    assert_eq!(agent.terminate().code(), Some(0));
}
