//! The agent's lifecycle on a real interface: SIGTERM detaches everything and flushes history;
//! a missing interface and a second agent on the same hook fail with a clear message and
//! leave nothing attached.

use aya::programs::{SchedClassifier, TcAttachType};
use ayaflow::{
    flow::{Direction, Protocol},
    store::{HistoryQuery, MAX_HISTORY_LIMIT, Store},
};
use integration_test::{
    KillOnDrop,
    agent::{Agent, binary, metric, run},
    netns::{ADDR_A4, ADDR_B4, NetPair},
    require_bpf,
};

/// The names of the programs attached to `ifname` inside `ns`: TCX links (the kernel query
/// `bpftool net` makes; Debian's bpftool 7.1 does not print TCX yet) and legacy tc filters.
fn attachments(ns: &str, ifname: &str) -> String {
    let name = ifname.to_string();
    let mut out = NetPair::in_ns(ns, move || {
        let mut names = String::new();
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(&name, hook).expect("querying TCX links");
            for p in progs {
                names += p.name_as_str().unwrap_or("?");
                names += "\n";
            }
        }
        names
    });
    for hook in ["ingress", "egress"] {
        out += &run(NetPair::command(ns, "tc").args(["filter", "show", "dev", ifname, hook]));
    }
    out
}

#[test]
fn sigterm_detaches_and_keeps_every_row() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let agent = Agent::start_on_b(&pair, &db, &["--direction", "both"]);
    assert!(
        attachments(&pair.ns_b, &pair.if_b).contains("tc_ingress"),
        "attached while running"
    );
    let out = NetPair::command(&pair.ns_a, "ping")
        .args(["-c", "3", "-i", "0.05", ADDR_B4])
        .output()
        .unwrap();
    assert!(out.status.success());
    let log_before = agent.log();
    let status = agent.terminate();
    assert!(status.success(), "exit 0 on SIGTERM; log: {log_before}");
    let left = attachments(&pair.ns_b, &pair.if_b);
    assert!(
        !left.contains("tc_ingress") && !left.contains("tc_egress"),
        "still attached after SIGTERM: {left}"
    );
    // Every ICMP packet is in the history after the graceful stop: 3 requests in, 3 replies out.
    assert_eq!(
        (
            rows(&db, Direction::Egress, Some(Protocol::Icmp)),
            rows(&db, Direction::Ingress, Some(Protocol::Icmp))
        ),
        (3, 3),
        "ICMP rows in {}",
        db.display()
    );
}

#[test]
fn missing_interface_fails_clearly() {
    require_bpf();
    let pair = NetPair::new(false);
    let out = NetPair::command(&pair.ns_b, binary().to_str().unwrap())
        .args([
            "--interface",
            "nosuchif0",
            "--db-path",
            "/nonexistent-dir/never-created.db",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"nosuchif0\" does not exist") && err.contains("ip link"),
        "{err}"
    );
}

#[test]
fn second_agent_on_the_same_hook_is_refused() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let db1 = dir.path().join("1.db");
    let first = Agent::start_on_b(&pair, &db1, &[]);
    let out = NetPair::command(&pair.ns_b, binary().to_str().unwrap())
        .args([
            "--interface",
            &pair.if_b,
            "--port",
            "3001",
            "--db-path",
            dir.path().join("2.db").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already attached") && err.contains("bpftool link"),
        "{err}"
    );
    // The refused agent left nothing behind: exactly one ingress program remains.
    let shown = attachments(&pair.ns_b, &pair.if_b);
    assert_eq!(shown.matches("tc_ingress").count(), 1, "{shown}");
    assert!(first.terminate().success());
}

/// Sends `count` pings from a to b and waits for them to finish.
/// SIGTERM in the middle of traffic: every packet the kernel counted until it was detached is
/// in the history. The agent detaches first, waits for the program runs in flight, then drains
/// the ring, flushes and closes; draining while still attached lost what arrived after the
/// drain (counted, never stored).
#[test]
fn sigterm_under_traffic_stores_every_packet_counted_until_detach() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let agent = Agent::start_on_b(&pair, &db, &[]);
    // About 5,000 packets a second from a to b (nothing listens on b: only the datagrams come
    // in), for 30 s at most: slow enough for the ring never to drop, busy enough that packets
    // arrive through every step of the shutdown.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        NetPair::spawn_in_ns(&pair.ns_a, move || {
            let s = std::net::UdpSocket::bind((ADDR_A4, 42000)).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                for _ in 0..5 {
                    let _ = s.send_to(&[3u8; 64], (ADDR_B4, 9));
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    integration_test::wait_for(30, "traffic to be counted", || {
        let (_, m) = agent.get("/metrics")?;
        (metric(&m, "ayaflow_packets_total{direction=\"ingress\"}")? >= 2000).then_some(())
    });
    let log_path = agent.stderr_path.clone();
    let status = agent.terminate();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let log = strip_ansi(&std::fs::read_to_string(&log_path).unwrap());
    assert!(status.success(), "exit 0 on SIGTERM; log: {log}");
    let field = |name: &str| -> u64 {
        let at = log
            .find("the kernel's final totals")
            .unwrap_or_else(|| panic!("no final totals in the log: {log}"));
        let line = log[at..].lines().next().unwrap();
        let v = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        v.parse().unwrap()
    };
    assert_eq!(field("ring_drops"), 0, "the ring kept up: {log}");
    assert_eq!(
        rows(&db, Direction::Ingress, None),
        field("ingress_packets") as usize,
        "every packet counted until the detach is stored; log: {log}"
    );
}

/// `log` without its terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// A new database is created at the current schema and said so once; nothing claims a
/// migration (it used to log "migrating ... a minute per ten million rows" twice).
#[test]
fn a_new_database_is_created_not_migrated() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_on_b(&pair, &dir.path().join("new.db"), &[]);
    let log = strip_ansi(&agent.log());
    assert!(agent.terminate().success());
    assert_eq!(
        log.matches("created the history database").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("migrating"), "{log}");
}

/// An API open beyond loopback with no allowlist is said once at start; with an allowlist, or
/// on loopback (every other test), it is not.
#[test]
fn an_api_open_to_everyone_is_warned_about_once() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    for (extra, warned) in [(None, 1), (Some("10.0.0.0/8"), 0)] {
        let log_path = dir.path().join(format!("open-{warned}.log"));
        let mut cmd = NetPair::command(&pair.ns_b, binary().to_str().unwrap());
        cmd.args([
            "--interface",
            &pair.if_b,
            "--bind-address",
            "0.0.0.0",
            "--port",
            "3001",
        ])
        .arg("--db-path")
        .arg(dir.path().join(format!("open-{warned}.db")))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
        if let Some(nets) = extra {
            cmd.args(["--allowed-ips", nets, "--allowed-ips", "127.0.0.1"]);
        }
        let mut child = KillOnDrop(cmd.spawn().unwrap());
        integration_test::wait_for(60, "the agent's /readyz", || {
            integration_test::agent::http_get(&pair.ns_b, 3001, "/readyz")
                .filter(|(code, _)| *code == 200)
        });
        // SAFETY: kill on the pid of a child we started and have not reaped.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
        let status = child.0.wait().unwrap();
        let log = strip_ansi(&std::fs::read_to_string(&log_path).unwrap());
        assert!(status.success(), "{log}");
        assert_eq!(
            log.matches("the API answers anyone who reaches this port")
                .count(),
            warned,
            "{log}"
        );
    }
}

/// Raw rows seen by `direction` (of protocol `proto`, if given), every page, read through the
/// store as the API reads them (`sqlite3` cannot read raw rows packed in blocks).
fn rows(db: &std::path::Path, direction: Direction, proto: Option<Protocol>) -> usize {
    let store = Store::open(db).expect("the history opens");
    let (mut n, mut before_id) = (0, None);
    loop {
        let page = store
            .query_history(&HistoryQuery {
                limit: MAX_HISTORY_LIMIT,
                direction: Some(direction),
                proto,
                before_id,
                ..HistoryQuery::default()
            })
            .expect("the history is readable");
        n += page.rows.len();
        match page.next_cursor {
            Some(c) => before_id = Some(c),
            None => return n,
        }
    }
}

fn ping(pair: &NetPair, count: usize) {
    let out = NetPair::command(&pair.ns_a, "ping")
        .args(["-c", &count.to_string(), "-i", "0.02", "-W", "5", ADDR_B4])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `sqlite3 db query`, trimmed.
fn sql(db: &std::path::Path, query: &str) -> String {
    run(std::process::Command::new("sqlite3").arg(db).arg(query))
        .trim()
        .to_string()
}

/// Aggregated history (1 s windows) sums exactly to the traffic, in both capture modes: the
/// current, partial window is flushed at SIGTERM.
#[test]
fn aggregated_windows_sum_to_the_traffic() {
    require_bpf();
    for mode in ["raw", "flows"] {
        let pair = NetPair::new(false);
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        let agent = Agent::start_on_b(
            &pair,
            &db,
            &[
                "--direction",
                "both",
                "--capture-mode",
                mode,
                "--aggregation-window",
                "1",
            ],
        );
        ping(&pair, 25);
        assert!(agent.terminate().success());
        let q = "SELECT direction, SUM(packets), SUM(bytes) FROM windows_view WHERE proto = 'ICMP' GROUP BY direction ORDER BY direction";
        // 25 echo requests in, 25 replies out, 14 + 20 + 8 + 56 bytes each.
        assert_eq!(
            sql(&db, q),
            "egress|25|2450\ningress|25|2450",
            "mode {mode}"
        );
        assert_eq!(
            sql(
                &db,
                "SELECT (SELECT COUNT(*) FROM packets) + (SELECT COUNT(*) FROM packet_blocks)"
            ),
            "0",
            "no raw rows in aggregated mode"
        );
        let bad = sql(
            &db,
            "SELECT COUNT(*) FROM windows WHERE window_end - window_start != 1 OR window_start % 1 != 0",
        );
        assert_eq!(bad, "0");
    }
}

/// After `kill -9` the database opens cleanly and holds every row that was committed: the agent
/// commits at least every 200 ms, so only the last unflushed moment can be missing.
#[test]
fn kill_9_keeps_every_committed_row() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let mut agent = Agent::start_on_b(&pair, &db, &[]);
    ping(&pair, 20);
    // Every echo request passed the hook before its reply came back, so once the agent has an
    // event for every packet the kernel counted, and has written them all, kill. (Counting
    // events alone raced: ARP on the pair can make up the number before the last request's
    // event is read.)
    integration_test::wait_for(30, "every counted packet to be committed", || {
        let (_, m) = agent.get("/metrics")?;
        let counted = metric(&m, "ayaflow_packets_total{direction=\"ingress\"}")?;
        let events = metric(&m, "ayaflow_events_total")?;
        let written = metric(&m, "ayaflow_storage_rows_written_total")?;
        (counted >= 20 && events == counted && written == events).then_some(())
    });
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert_eq!(sql(&db, "PRAGMA integrity_check"), "ok");
    assert_eq!(rows(&db, Direction::Ingress, Some(Protocol::Icmp)), 20);
    drop(agent);
}

/// Invalid configuration stops the agent before it loads or attaches anything, naming the
/// option, the value and what is expected.
#[test]
fn invalid_configuration_exits_before_attaching() {
    require_bpf();
    let pair = NetPair::new(false);
    let out = NetPair::command(&pair.ns_b, binary().to_str().unwrap())
        .args(["--interface", &pair.if_b, "--aggregation-window", "-5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--aggregation-window") && err.contains("-5"),
        "{err}"
    );
    assert!(
        !attachments(&pair.ns_b, &pair.if_b).contains("tc_"),
        "nothing attached"
    );
}
