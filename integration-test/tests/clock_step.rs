//! The system clock stepped while the agent runs (NTP, an operator): packets after the step are
//! dated by the new clock, in both capture modes. The kernel stamps packets with the boot
//! clock, which a step leaves alone, so the agent must re-derive the boot -> Unix offset; with an
//! offset taken once at start, every packet after a step forward was dated an hour in the past
//! and the live table expired each connection at its next tick.
//!
//! The step is made for the agent alone, never for the machine: libfaketime (Debian
//! `libfaketime`) is preloaded into the agent with a time offset read from a file that the test
//! rewrites; the monotonic and boot clocks stay real (`FAKETIME_DONT_FAKE_MONOTONIC`).

use std::net::{SocketAddr, UdpSocket};

use integration_test::{
    agent::Agent,
    netns::{ADDR_A4, ADDR_B4, NetPair},
    require_bpf, wait_for,
};
use serde_json::Value;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// The step: one hour forward, far more than the connection timeout (60 s).
const STEP_SECS: u64 = 3600;

/// Sends `count` UDP datagrams from a:`port` to b:9 (discard: nothing listens, nothing comes
/// back but ICMP, which is ingress on a only).
fn send_udp(pair: &NetPair, port: u16, count: usize) {
    NetPair::in_ns(&pair.ns_a, move || {
        let s = UdpSocket::bind(SocketAddr::new(ADDR_A4.parse().unwrap(), port)).unwrap();
        for _ in 0..count {
            s.send_to(&[5u8; 100], SocketAddr::new(ADDR_B4.parse().unwrap(), 9))
                .unwrap();
        }
    });
}

/// The live connection from a:`port`, once it has `packets` packets.
fn live_connection(agent: &Agent, port: u16, packets: u64) -> Value {
    let src = format!("{ADDR_A4}:{port}");
    wait_for(
        30,
        &format!("{packets} packets from {src} in /api/live"),
        || {
            let (code, body) = agent.get("/api/live?limit=1000")?;
            assert_eq!(code, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            v["connections"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| {
                    c["connection"]["src"] == src.as_str() && c["stats"]["packets_count"] == packets
                })
                .cloned()
        },
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn packets_after_a_step_are_dated_by_the_new_clock(mode: &str) {
    require_bpf();
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's libfaketime (`cargo xtask test` does)"
    );
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let offset_file = dir.path().join("faketime");
    std::fs::write(&offset_file, "+0\n").unwrap();
    let db = dir.path().join("t.db");
    let env = [
        "env".to_string(),
        format!("LD_PRELOAD={LIBFAKETIME}"),
        format!("FAKETIME_TIMESTAMP_FILE={}", offset_file.display()),
        "FAKETIME_NO_CACHE=1".to_string(),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".to_string(),
    ];
    let wrapper: Vec<&str> = env.iter().map(String::as_str).collect();
    let agent = Agent::start_wrapped(
        &pair.ns_b,
        3000,
        dir.path(),
        &wrapper,
        &[
            "--interface",
            &pair.if_b,
            "--db-path",
            db.to_str().unwrap(),
            "--capture-mode",
            mode,
        ],
    );

    send_udp(&pair, 41000, 3);
    let before = live_connection(&agent, 41000, 3);
    let seen = before["stats"]["last_seen"].as_u64().unwrap();
    assert!(
        seen.abs_diff(unix_now()) < 30,
        "before the step, last_seen {seen} is the real time ({})",
        unix_now()
    );

    std::fs::write(&offset_file, format!("+{STEP_SECS}s\n")).unwrap();
    let stepped = unix_now() + STEP_SECS;
    send_udp(&pair, 41001, 4);
    let after = live_connection(&agent, 41001, 4);
    let seen = after["stats"]["last_seen"].as_u64().unwrap();
    assert!(
        seen + 30 >= stepped && seen <= stepped + 30,
        "after the agent's clock stepped {STEP_SECS} s forward, a new packet's last_seen is \
         {seen}, expected about {stepped}: {after}\n{}",
        agent.log()
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn raw_mode_packets_after_a_clock_step_are_dated_by_the_new_clock() {
    packets_after_a_step_are_dated_by_the_new_clock("raw");
}

#[test]
fn flow_mode_packets_after_a_clock_step_are_dated_by_the_new_clock() {
    packets_after_a_step_are_dated_by_the_new_clock("flows");
}
