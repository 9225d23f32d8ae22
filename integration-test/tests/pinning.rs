//! `--pin` through the real agent and a real bpffs (mounted by each test under a temp dir):
//! counting goes on across SIGTERM and SIGKILL restarts, an upgrade replaces the program in
//! place, a layout change starts clean, flow mode finds the gap's flows, and `ayaflow detach`
//! leaves nothing behind.

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use integration_test::{
    agent::{Agent, binary, metric, run},
    bpffs::Bpffs,
    netns::{ADDR_A4, ADDR_B4, NetPair},
    require_bpf, wait_for,
};
use serde_json::Value;

const UDP_INGRESS: &str = "ayaflow_protocol_packets_total{direction=\"ingress\",protocol=\"udp\"}";
const PACKETS_INGRESS: &str = "ayaflow_packets_total{direction=\"ingress\"}";

/// Sends UDP datagrams from a:`port` to b:9 every millisecond until `stop`; returns how many.
fn steady_sender(pair: &NetPair, port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    NetPair::spawn_in_ns(&pair.ns_a, move || {
        let s = UdpSocket::bind(SocketAddr::new(ADDR_A4.parse().unwrap(), port)).unwrap();
        let mut sent = 0;
        // Bounded: at most a minute, whatever the test does.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            s.send_to(&[1u8; 50], SocketAddr::new(ADDR_B4.parse().unwrap(), 9))
                .unwrap();
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

fn start(pair: &NetPair, dir: &Path, pins: &Path, extra: &[&str]) -> Agent {
    let mut args = vec!["--pin", "--pin-path", pins.to_str().unwrap()];
    args.extend(extra);
    Agent::start_on_b(pair, &dir.join("h.db"), &args)
}

/// SIGTERM; the agent must exit 0 (its log in the failure message).
fn stop_agent(agent: Agent) {
    let log = agent.stderr_path.clone();
    let status = agent.terminate();
    assert!(
        status.success(),
        "the agent exited with {status}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The agent's metric `sample`, recorded in `seen` (every value read, in order).
fn read(agent: &Agent, sample: &str, seen: &mut Vec<u64>) -> u64 {
    let (_, body) = agent.get("/metrics").expect("metrics");
    let v = metric(&body, sample).unwrap_or_else(|| panic!("{sample} missing: {body}"));
    seen.push(v);
    v
}

#[test]
fn counting_continues_across_sigterm_and_sigkill_restarts() {
    require_bpf();
    let pair = NetPair::new(false);
    let fs = Bpffs::mount();
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (mut seen, mut totals) = (Vec::new(), Vec::new());

    let agent = start(&pair, dir.path(), &fs.pins(), &[]);
    let (counted_before, delivered_before) = quiet_counts(&agent, &pair);
    let sender = steady_sender(&pair, 7000, stop.clone());
    wait_for(30, "traffic counted", || {
        (read(&agent, UDP_INGRESS, &mut seen) > 200).then_some(())
    });
    read(&agent, PACKETS_INGRESS, &mut totals);
    stop_agent(agent);
    // The gap: no agent runs, the program counts on.
    std::thread::sleep(Duration::from_secs(1));

    let mut agent = start(&pair, dir.path(), &fs.pins(), &[]);
    read(&agent, PACKETS_INGRESS, &mut totals);
    let after_term = read(&agent, UDP_INGRESS, &mut seen);
    wait_for(30, "more traffic counted", || {
        (read(&agent, UDP_INGRESS, &mut seen) > after_term + 200).then_some(())
    });
    // A crash: no flush, no clean exit; the pins keep everything.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let agent = start(&pair, dir.path(), &fs.pins(), &[]);
    read(&agent, PACKETS_INGRESS, &mut totals);
    let after_kill = read(&agent, UDP_INGRESS, &mut seen);
    wait_for(30, "traffic after the crash", || {
        (read(&agent, UDP_INGRESS, &mut seen) > after_kill + 200).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    // Every datagram sent, through two restarts, counted once.
    wait_for(30, &format!("{sent} datagrams counted"), || {
        (read(&agent, UDP_INGRESS, &mut seen) == sent).then_some(())
    });
    // Everything b's interface received since the first agent started, counted once.
    let (counted, delivered) = quiet_counts(&agent, &pair);
    assert_eq!(
        counted - counted_before,
        delivered - delivered_before,
        "ingress packets counted vs the interface's rx_packets"
    );
    read(&agent, PACKETS_INGRESS, &mut totals);
    // Prometheus sees no reset: no sample below the one before, across both restarts.
    for (what, samples) in [("UDP", &seen), ("total", &totals)] {
        assert!(
            samples.windows(2).all(|w| w[0] <= w[1]),
            "the {what} counter went back: {samples:?}"
        );
    }
    let log = agent.log();
    assert!(log.contains("adopting the pinned maps"), "{log}");
    assert!(log.contains("attached through the pinned link"), "{log}");
    stop_agent(agent);
    detach_leaves_nothing(&fs.pins());
}

#[test]
fn an_upgrade_replaces_the_program_in_place_and_a_layout_change_starts_clean() {
    require_bpf();
    let pair = NetPair::new(false);
    let fs = Bpffs::mount();
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut seen = Vec::new();

    let agent = start(&pair, dir.path(), &fs.pins(), &[]);
    let sender = steady_sender(&pair, 7001, stop.clone());
    wait_for(30, "traffic counted", || {
        (read(&agent, UDP_INGRESS, &mut seen) > 200).then_some(())
    });
    let before = link_prog_ids(&fs.pins());
    stop_agent(agent);
    // Another program (flow mode: another load-time constant), the same maps.
    let agent = start(&pair, dir.path(), &fs.pins(), &["--capture-mode", "flows"]);
    let after = link_prog_ids(&fs.pins());
    assert_eq!(before.len(), 1, "one pinned link: {before:?}");
    assert_eq!(
        before.iter().map(|(l, _)| l).collect::<Vec<_>>(),
        after.iter().map(|(l, _)| l).collect::<Vec<_>>(),
        "the same link"
    );
    assert_ne!(before[0].1, after[0].1, "with the new program");
    let upgraded = read(&agent, UDP_INGRESS, &mut seen);
    wait_for(30, "traffic counted by the new program", || {
        (read(&agent, UDP_INGRESS, &mut seen) > upgraded + 200).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    wait_for(30, &format!("{sent} datagrams counted"), || {
        (read(&agent, UDP_INGRESS, &mut seen) == sent).then_some(())
    });
    stop_agent(agent);

    // Another ring buffer size: the maps cannot be reused; the agent says so and starts clean.
    let agent = start(
        &pair,
        dir.path(),
        &fs.pins(),
        &["--ring-buffer-size", "16777216"],
    );
    assert!(
        agent.log().contains("the pinned maps have another layout"),
        "{}",
        agent.log()
    );
    assert!(
        read(&agent, UDP_INGRESS, &mut seen) < sent,
        "counters started again"
    );
    stop_agent(agent);
    detach_leaves_nothing(&fs.pins());
}

#[test]
fn flow_mode_finds_the_flows_of_the_gap() {
    require_bpf();
    let pair = NetPair::new(false);
    let fs = Bpffs::mount();
    let dir = tempfile::tempdir().unwrap();
    let flows = ["--capture-mode", "flows", "--aggregation-window", "5"];
    let agent = start(&pair, dir.path(), &fs.pins(), &flows);
    stop_agent(agent);
    // While no agent runs: 300 datagrams of a new connection.
    burst(&pair, 7100, 300, 60);
    let agent = start(&pair, dir.path(), &fs.pins(), &flows);
    let src = format!("{ADDR_A4}:7100");
    let live = wait_for(30, "the gap's flow in /api/live", || {
        let (_, body) = agent.get("/api/live?limit=100")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["connections"]
            .as_array()?
            .iter()
            .find(|c| c["connection"]["src"] == src.as_str())
            .cloned()
    });
    assert_eq!(live["stats"]["packets_count"], 300, "{live}");
    // Ethernet 14 + IPv4 20 + UDP 8 + 60.
    assert_eq!(live["stats"]["bytes_count"], 300 * 102, "{live}");
    // SIGTERM flushes the open window: the gap's flow is in the history, exactly.
    stop_agent(agent);
    let windows = ayaflow::store::Store::open_read_only(dir.path().join("h.db"))
        .unwrap()
        .query_history(&ayaflow::store::HistoryQuery {
            kind: ayaflow::store::HistoryKind::Aggregated,
            port: Some(7100),
            ..Default::default()
        })
        .unwrap();
    let packets: u64 = windows
        .rows
        .iter()
        .map(|r| match r {
            ayaflow::store::HistoryRow::Aggregated(w) => w.window.packets,
            other => panic!("expected windows: {other:?}"),
        })
        .sum();
    assert_eq!(packets, 300);
    detach_leaves_nothing(&fs.pins());
}

#[test]
fn raw_mode_reads_the_events_of_the_gap_from_the_pinned_ring() {
    require_bpf();
    let pair = NetPair::new(false);
    let fs = Bpffs::mount();
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&pair, dir.path(), &fs.pins(), &[]);
    stop_agent(agent);
    burst(&pair, 7200, 300, 20);
    let agent = start(&pair, dir.path(), &fs.pins(), &[]);
    // Each event the program wrote into the ring while no agent ran becomes a history row.
    wait_for(30, "the gap's 300 events in the history", || {
        let (_, body) = agent.get("/api/history?port=7200&limit=1000")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["rows"].as_array()?.len() == 300).then_some(())
    });
    let (_, body) = agent.get("/metrics").unwrap();
    assert_eq!(
        metric(&body, "ayaflow_ringbuf_drops_total{direction=\"ingress\"}"),
        Some(0)
    );
    stop_agent(agent);
    detach_leaves_nothing(&fs.pins());
}

#[test]
fn a_pin_path_off_bpffs_and_a_second_agent_are_refused() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(&pair, &dir.path().join("pins"), &dir.path().join("h.db"));
    assert!(stderr.contains("is not on a BPF filesystem"), "{stderr}");
    assert!(stderr.contains("mount -t bpf bpf /sys/fs/bpf"), "{stderr}");

    // Pins this ayaflow does not know: reported with the command that removes them.
    let stale = Bpffs::mount();
    std::fs::create_dir_all(stale.pins().join("programs-v0")).unwrap();
    let stderr = refused(&pair, &stale.pins(), &dir.path().join("h.db"));
    let detach = format!("ayaflow detach --pin-path {}", stale.pins().display());
    assert!(stderr.contains(&detach), "{stderr}");

    let fs = Bpffs::mount();
    let agent = start(&pair, dir.path(), &fs.pins(), &[]);
    let stderr = refused(&pair, &fs.pins(), &dir.path().join("h2.db"));
    assert!(stderr.contains("another ayaflow uses the pins"), "{stderr}");
    stop_agent(agent);
    detach_leaves_nothing(&fs.pins());
}

/// Runs an agent on b with `--pin --pin-path pins` (API on port 3001) that must fail at start;
/// its stderr.
fn refused(pair: &NetPair, pins: &Path, db: &Path) -> String {
    let out = NetPair::command(&pair.ns_b, binary().to_str().unwrap())
        .args([
            "--interface",
            &pair.if_b,
            "--port",
            "3001",
            "--pin",
            "--pin-path",
        ])
        .arg(pins)
        .arg("--db-path")
        .arg(db)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the agent started: {stderr}");
    stderr
}

/// Sends `count` datagrams of `payload` bytes from a:`port` to b:9, at once.
fn burst(pair: &NetPair, port: u16, count: usize, payload: usize) {
    NetPair::in_ns(&pair.ns_a, move || {
        let s = UdpSocket::bind(SocketAddr::new(ADDR_A4.parse().unwrap(), port)).unwrap();
        for _ in 0..count {
            s.send_to(
                &vec![2u8; payload],
                SocketAddr::new(ADDR_B4.parse().unwrap(), 9),
            )
            .unwrap();
        }
    });
}

/// The agent's ingress packets and b's `rx_packets` at one moment without traffic: read until
/// the agent's count is the same before and after the interface's.
fn quiet_counts(agent: &Agent, pair: &NetPair) -> (u64, u64) {
    let rx = format!("/sys/class/net/{}/statistics/rx_packets", pair.if_b);
    let ingress = || {
        let (_, body) = agent.get("/metrics").expect("metrics");
        metric(&body, PACKETS_INGRESS).expect("ingress packets")
    };
    wait_for(30, "a moment without packets", || {
        let before = ingress();
        let delivered: u64 = run(NetPair::command(&pair.ns_b, "cat").arg(&rx))
            .trim()
            .parse()
            .unwrap();
        (ingress() == before).then_some((before, delivered))
    })
}

/// Each pinned link (by link id) with the id of its program, from `bpftool`.
fn link_prog_ids(pins: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(pins.join("links")).unwrap().flatten() {
        let json = run(Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(entry.path()));
        let v: Value = serde_json::from_str(&json).unwrap();
        out.push((v["id"].as_u64().unwrap(), v["prog_id"].as_u64().unwrap()));
    }
    out.sort();
    out
}

/// `ayaflow detach` removes the pins, and with them the links and programs (`bpftool`).
fn detach_leaves_nothing(pins: &Path) {
    let links = link_prog_ids(pins);
    assert!(!links.is_empty(), "pinned links before detach");
    let out = Command::new(binary())
        .args(["detach", "--pin-path"])
        .arg(pins)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("detached: removed"), "{stdout}");
    assert!(!pins.exists(), "the pin directory is gone");
    for (link, prog) in links {
        wait_for(10, &format!("link {link} and program {prog} gone"), || {
            let link_gone = !Command::new("bpftool")
                .args(["link", "show", "id", &link.to_string()])
                .output()
                .unwrap()
                .status
                .success();
            let prog_gone = !Command::new("bpftool")
                .args(["prog", "show", "id", &prog.to_string()])
                .output()
                .unwrap()
                .status
                .success();
            (link_gone && prog_gone).then_some(())
        });
    }
    let again = Command::new(binary())
        .args(["detach", "--pin-path"])
        .arg(pins)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing pinned"));
}
