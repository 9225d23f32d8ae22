//! Aggregated history under load, through the real attached program and the real agent
//! (issue 16 items 1 and 2):
//! - a closed window with more rows than the storage queue's whole budget (524,288 rows) is
//!   stored whole: the agent hands it to the writer in chunks, waiting for room, instead of
//!   dropping it as one batch that can never fit;
//! - the aggregator is bounded (`--aggregation-max-rows`): a spoofed-source flood, one new key
//!   per packet, keeps the agent's heap flat, and the overflow rows keep the totals exact.
//!
//! Both tests run the agent in raw mode on b's ingress, with a ring buffer large enough for the
//! whole burst (no ring drops, asserted), and send from namespace a only, over the pair: UDP
//! datagrams to 198.18.0.0/15 (the benchmarking range, routed via b, which forwards nothing),
//! and crafted frames out of a's veth. Against the agent before the fixes (dcff69e), the first
//! test fails with 530,002 rows dropped as `queue_full` and the second with the heap growing as
//! much as the unbounded control's (about 33 MB for 200,000 keys).

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use integration_test::{
    agent::{Agent, metric, run},
    frames::{ETH_P_IP, eth, ipv4, udp},
    netns::{ADDR_A4, ADDR_B4, NetPair, ip},
    netns_ifindex, require_bpf, wait_for,
};

/// The storage queue's budget (`storage::DEFAULT_MAX_QUEUED_ROWS`): a window with more rows
/// than this used to be dropped whole.
const QUEUE_BUDGET: usize = 524_288;
/// Distinct (destination address, port) pairs of the big window: over the budget by ~1%.
const BIG_WINDOW_TUPLES: usize = 530_000;
const _: () = assert!(BIG_WINDOW_TUPLES > QUEUE_BUDGET);
/// Enough for every event of either test at once (72 bytes each with the ring's header), so
/// the agent may fall behind the sender without losing one.
const RING_BYTES: &str = "67108864";
/// UDP payload of every datagram: 18 bytes make a 60-byte frame (the Ethernet minimum).
const PAYLOAD: usize = 18;
const FRAME_BYTES: u64 = 14 + 20 + 8 + PAYLOAD as u64;

/// The two tests each load the machine's two cores; one at a time, so neither's sender or
/// agent starves the other's.
static SERIAL: Mutex<()> = Mutex::new(());

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Returns once the current `window`-second window (epoch-aligned, as the agent's) has at
/// least `room` seconds left, so traffic sent now falls into one window.
fn wait_for_window_room(window: u64, room: u64) {
    assert!(room < window);
    wait_for(window + 5, "a window with room for the traffic", || {
        let into = unix_now() % window as f64;
        (window as f64 - into >= room as f64).then_some(())
    });
}

/// The agent's `/metrics` text.
fn metrics(agent: &Agent) -> String {
    let (code, body) = agent.get("/metrics").expect("the agent answers /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of `sample` in `text`, which must have it.
fn m(text: &str, sample: &str) -> u64 {
    metric(text, sample).unwrap_or_else(|| panic!("{sample} is missing from /metrics:\n{text}"))
}

const INGRESS_PACKETS: &str = "ayaflow_packets_total{direction=\"ingress\"}";
const INGRESS_UDP: &str = "ayaflow_protocol_packets_total{direction=\"ingress\",protocol=\"udp\"}";
const RING_DROPS: &str = "ayaflow_ringbuf_drops_total{direction=\"ingress\"}";
const EVENTS: &str = "ayaflow_events_total";
const QUEUE_FULL: &str = "ayaflow_storage_rows_dropped_total{reason=\"queue_full\"}";
const ROWS_WRITTEN: &str = "ayaflow_storage_rows_written_total";
const QUEUED: &str = "ayaflow_storage_queued_rows";
const OVERFLOW: &str = "ayaflow_window_overflow_packets_total";
const WINDOW_ROWS: &str = "ayaflow_window_rows";

/// Waits until the hook has counted `udp` UDP packets on ingress and the agent has read an
/// event for every packet counted; returns the metrics then.
fn wait_for_every_event(agent: &Agent, udp: u64) -> String {
    wait_for(
        120,
        &format!("{udp} UDP packets, each read as an event"),
        || {
            let text = metrics(agent);
            let counted = m(&text, INGRESS_PACKETS);
            (m(&text, INGRESS_UDP) >= udp && m(&text, EVENTS) == counted).then_some(text)
        },
    )
}

/// `sqlite3 db query`, trimmed.
fn sql(db: &Path, query: &str) -> String {
    run(std::process::Command::new("sqlite3").arg(db).arg(query))
        .trim()
        .to_string()
}

/// The window rows with their keys, as `windows_view` shows them, joined so that SQLite walks
/// the rows and looks each key up by id. (Through the view, a filter on key columns makes it
/// walk the matching keys and scan every row for each: quadratic, minutes at 530,000 rows.)
const WINDOW_ROWS_WITH_KEYS: &str = "FROM windows AS w CROSS JOIN tuples AS k ON k.id = w.tuple_id";

fn sql_u64(db: &Path, query: &str) -> u64 {
    let out = sql(db, query);
    out.parse()
        .unwrap_or_else(|_| panic!("{query} gave {out:?}, not a number"))
}

/// The agent's anonymous resident memory (heap, stacks; not the ring buffer's shared pages),
/// in KiB, from /proc/<pid>/status.
fn rss_anon_kib(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RssAnon in /proc/<agent>/status:\n{status}"))
}

/// The `i`-th destination of the big window: 198.18.0.0/15, 16 ports per address.
fn big_window_destination(i: usize) -> SocketAddr {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let addr = Ipv4Addr::from(base + 1 + (i / 16) as u32);
    SocketAddr::new(addr.into(), 10_000 + (i % 16) as u16)
}

/// A window of more rows than the storage queue holds is stored whole once it closes: a row per
/// datagram, every packet counted once, nothing dropped as `queue_full`.
#[test]
fn a_closed_window_larger_than_the_storage_queue_is_stored_whole() {
    require_bpf();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const WINDOW: u64 = 30;
    let pair = NetPair::new(false);
    ip(&[
        "-n",
        &pair.ns_a,
        "route",
        "add",
        "198.18.0.0/15",
        "via",
        ADDR_B4,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let agent = Agent::start_on_b(
        &pair,
        &db,
        &[
            "--capture-mode",
            "raw",
            "--aggregation-window",
            &WINDOW.to_string(),
            // Above the window's rows, so every tuple keeps its own row (no overflow row).
            "--aggregation-max-rows",
            "2000000",
            "--ring-buffer-size",
            RING_BYTES,
        ],
    );

    // One datagram to each destination, all inside one window: about 2 to 5 s of sending here,
    // so a window with 20 s left has room even on a loaded machine (asserted below).
    wait_for_window_room(WINDOW, 20);
    let window_start = (unix_now() as u64) / WINDOW * WINDOW;
    let started = Instant::now();
    let sent = NetPair::in_ns(&pair.ns_a, || {
        let s = UdpSocket::bind(SocketAddr::new(ADDR_A4.parse().unwrap(), 40_000)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..BIG_WINDOW_TUPLES {
            s.send_to(&[0x5a; PAYLOAD], big_window_destination(i))
                .expect("sending a datagram");
            if i % 4096 == 0 {
                assert!(Instant::now() < deadline, "sending took over 60 s (at {i})");
            }
        }
        BIG_WINDOW_TUPLES as u64
    });
    let send_time = started.elapsed();
    eprintln!("sent {sent} datagrams in {send_time:.2?}");
    assert_eq!(
        (unix_now() as u64) / WINDOW * WINDOW,
        window_start,
        "the datagrams took {send_time:?} and straddled a window boundary; the test needs them \
         in one window"
    );

    let text = wait_for_every_event(&agent, sent);
    assert_eq!(m(&text, RING_DROPS), 0, "the ring buffer lost events");
    assert_eq!(
        m(&text, INGRESS_UDP),
        sent,
        "the hook saw every datagram once"
    );
    // The events counter moves when a batch is read, the window's rows when it is added: wait
    // for the last batch to reach the aggregator (or the window to close, which fails below).
    let text = wait_for(60, "the last events in the open window", || {
        let t = metrics(&agent);
        let closed = (unix_now() as u64) >= window_start + WINDOW;
        (m(&t, WINDOW_ROWS) >= sent || closed).then_some(t)
    });
    assert_eq!(m(&text, OVERFLOW), 0, "no key went to the overflow row");
    let held = m(&text, WINDOW_ROWS);
    assert!(
        held >= sent,
        "the open window holds a row per tuple ({held})"
    );

    // The window closes at window_start + WINDOW; then the agent hands it to the writer in
    // chunks, each waiting (up to the window's length) for the writer to make room. Stop at the
    // first drop: that is the failure this test is about.
    let room_left = (window_start + WINDOW).saturating_sub(unix_now() as u64);
    let text = wait_for(room_left + 180, "the closed window to be written", || {
        let text = metrics(&agent);
        let done = m(&text, ROWS_WRITTEN) >= sent && m(&text, QUEUED) == 0;
        (done || m(&text, QUEUE_FULL) > 0).then_some(text)
    });
    assert_eq!(
        m(&text, QUEUE_FULL),
        0,
        "rows of the closed window were dropped as queue_full:\n{}",
        agent.log()
    );
    eprintln!(
        "written {} rows {:.1?} after the send began",
        m(&text, ROWS_WRITTEN),
        started.elapsed()
    );
    assert_eq!(agent.terminate().code(), Some(0));

    // The big window in the file: one row per datagram, one packet each, all in one window.
    let ours = format!(
        "{WINDOW_ROWS_WITH_KEYS} WHERE direction = 'ingress' AND proto = 'UDP' \
         AND src = '192.0.2.1' AND src_port = 40000 AND dst LIKE '198.1_.%'"
    );
    let rows = sql_u64(&db, &format!("SELECT COUNT(*) {ours}"));
    let packets = sql_u64(&db, &format!("SELECT SUM(packets) {ours}"));
    let bytes = sql_u64(&db, &format!("SELECT SUM(bytes) {ours}"));
    let keys = sql_u64(
        &db,
        &format!("SELECT COUNT(*) FROM (SELECT DISTINCT dst, dst_port {ours})"),
    );
    let windows = sql(
        &db,
        &format!("SELECT DISTINCT window_start || '-' || window_end {ours}"),
    );
    eprintln!(
        "stored: {rows} rows, {keys} distinct destinations, {packets} packets, {bytes} bytes"
    );
    assert_eq!(rows, sent, "a row per datagram");
    assert_eq!(keys, sent, "a row per destination, none twice");
    assert_eq!(packets, sent, "every packet stored once");
    assert_eq!(bytes, sent * FRAME_BYTES);
    assert_eq!(
        windows,
        format!("{window_start}-{}", window_start + WINDOW),
        "all in the one window"
    );
    assert!(
        rows as usize > QUEUE_BUDGET,
        "the window outnumbered the queue"
    );
}

/// Sends `count` Ethernet frames out of a's veth, each a UDP datagram to b:9 from its own
/// spoofed source (10.x.y.z, port by `first + i`), so every frame is a new five-tuple. The frames
/// are addressed to a MAC that is not b's, so b's stack drops them after the hook: nothing
/// answers. Returns the frames sent.
fn spoofed_flood(pair: &NetPair, first: u32, count: u32) -> u64 {
    let ifname = pair.if_a.clone();
    NetPair::in_ns(&pair.ns_a, move || {
        // SAFETY: plain socket calls on an fd we own and close at the end.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = netns_ifindex(&ifname) as i32;
            to.sll_halen = 6;
            let deadline = Instant::now() + Duration::from_secs(60);
            for i in first..first + count {
                let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i);
                let sport = 1024 + (i % 60_000) as u16;
                let frame = eth(
                    ETH_P_IP,
                    &ipv4(
                        17,
                        src,
                        ADDR_B4.parse().unwrap(),
                        &[],
                        0,
                        &udp(sport, 9, &[0; PAYLOAD]),
                    ),
                );
                // ENOBUFS: the device refused the frame, send it again. (A frame lost silently
                // before the hook would show in the UDP count, asserted after each flood.)
                loop {
                    let n = libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&to as *const libc::sockaddr_ll).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    );
                    if n == frame.len() as isize {
                        break;
                    }
                    let e = std::io::Error::last_os_error();
                    assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "sendto: {e}");
                    assert!(Instant::now() < deadline, "the flood took over 60 s");
                }
            }
            libc::close(fd);
        }
        u64::from(count)
    })
}

/// Frames of the warm-up, then of the flood: all distinct keys.
const WARMUP: u32 = 2_000;
const FLOOD: u32 = 200_000;
const MAX_ROWS: u64 = 1_000;

/// One run of the flood against an agent with `--aggregation-max-rows max_rows`: the agent,
/// its metrics after the flood, and its RssAnon (KiB) after the warm-up and after the flood.
fn flood_run(pair: &NetPair, db: &Path, max_rows: u64) -> (Agent, String, u64, u64) {
    // A window far longer than the test, so every key stays open until SIGTERM flushes it:
    // the aggregator holds all it may at the second reading.
    const WINDOW: u64 = 3600;
    let agent = Agent::start_on_b(
        pair,
        db,
        &[
            "--capture-mode",
            "raw",
            "--aggregation-window",
            &WINDOW.to_string(),
            "--aggregation-max-rows",
            &max_rows.to_string(),
            // The live table is allocated up front but its pages become resident as it fills:
            // a small one, full after the warm-up, keeps it out of the comparison.
            "--max-connections",
            "1000",
            "--ring-buffer-size",
            RING_BYTES,
        ],
    );
    // A run takes seconds: one window holds it (two would mean two overflow rows).
    wait_for_window_room(WINDOW, 60);
    // The warm-up touches what the first traffic allocates (batches, the full live table, a
    // bounded aggregator's every row) before the first reading.
    let mut sent = spoofed_flood(pair, 0, WARMUP);
    wait_for_every_event(&agent, sent);
    let before = rss_anon_kib(&agent);
    sent += spoofed_flood(pair, WARMUP, FLOOD);
    let text = wait_for_every_event(&agent, sent);
    let after = rss_anon_kib(&agent);
    assert_eq!(m(&text, RING_DROPS), 0, "the ring buffer lost events");
    assert_eq!(m(&text, INGRESS_UDP), sent, "the hook saw every frame once");
    (agent, text, before, after)
}

/// A spoofed-source flood (a new five-tuple per packet) against `--aggregation-max-rows 1000`:
/// the open windows stay at 1000 rows plus an overflow row, the agent's heap does not grow with
/// the flood (an unbounded agent's does, measured alongside), and every packet is stored once.
#[test]
fn a_spoofed_source_flood_keeps_the_aggregator_bounded_and_totals_exact() {
    require_bpf();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = NetPair::new(false);
    // Only the flood on b's ingress: no IPv6 from a (router solicitations, MLD reports).
    run(NetPair::command(&pair.ns_a, "sysctl").args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"]));
    let dir = tempfile::tempdir().unwrap();
    let sent = u64::from(WARMUP + FLOOD);

    // The control: bounded far above the flood, the aggregator holds a row per frame.
    let (control, _, c_before, c_after) =
        flood_run(&pair, &dir.path().join("control.db"), 2_000_000);
    drop(control);
    let control_growth = c_after.saturating_sub(c_before);

    let db = dir.path().join("bounded.db");
    let (agent, _, before, after) = flood_run(&pair, &db, MAX_ROWS);
    let growth = after.saturating_sub(before);
    eprintln!(
        "RssAnon: bounded {before} -> {after} KiB (+{growth}), unbounded {c_before} -> {c_after} \
         KiB (+{control_growth}), for {FLOOD} new keys"
    );
    // Each key of an unbounded aggregator costs at least its key and sums (56 bytes), so the
    // control must grow by over 10 MiB (measured: about 33 MiB, 165 bytes a key); a bounded
    // one, full since the warm-up, keeps what it had: allow 4 MiB of allocator noise (thread
    // caches, a grown buffer), and at most a quarter of the control's growth.
    assert!(
        control_growth > 10 * 1024,
        "an unbounded aggregator grows with the flood (+{control_growth} KiB): else this test \
         measures nothing"
    );
    assert!(
        growth < 4 * 1024 && growth * 4 < control_growth,
        "the bounded agent grew by {growth} KiB during the flood (unbounded: +{control_growth})"
    );
    // The events counter moves when a batch is read, the aggregator's when it is added: wait
    // for the last batch to reach the aggregator.
    let text = wait_for(60, "the last events in the open windows", || {
        let t = metrics(&agent);
        (m(&t, OVERFLOW) >= sent - MAX_ROWS).then_some(t)
    });
    let held = m(&text, WINDOW_ROWS);
    let overflow = m(&text, OVERFLOW);
    eprintln!("open rows {held}, overflow packets {overflow}");
    // The bound: MAX_ROWS keys plus the overflow row (one direction, one window).
    assert!(held <= MAX_ROWS + 1, "the open windows hold {held} rows");
    // Every frame past the first MAX_ROWS keys went to the overflow row.
    assert_eq!(overflow, sent - MAX_ROWS);

    // SIGTERM stores the open window; the file then sums exactly to the flood.
    assert_eq!(agent.terminate().code(), Some(0));
    let total = sql_u64(&db, &format!("SELECT SUM(packets) {WINDOW_ROWS_WITH_KEYS}"));
    let total_bytes = sql_u64(&db, &format!("SELECT SUM(bytes) {WINDOW_ROWS_WITH_KEYS}"));
    let over = format!(
        "{WINDOW_ROWS_WITH_KEYS} WHERE proto = 'IP-255' AND src = '0.0.0.0' AND src_port = 0 \
         AND dst = '0.0.0.0' AND dst_port = 0"
    );
    let over_rows = sql_u64(&db, &format!("SELECT COUNT(*) {over}"));
    let over_packets = sql_u64(&db, &format!("SELECT SUM(packets) {over}"));
    let per_window = sql(
        &db,
        &format!(
            "SELECT window_start, direction, COUNT(*) {WINDOW_ROWS_WITH_KEYS} \
             GROUP BY window_start, direction ORDER BY 3 DESC LIMIT 1"
        ),
    );
    let most: u64 = per_window.rsplit('|').next().unwrap().parse().unwrap();
    let rows = sql_u64(&db, &format!("SELECT COUNT(*) {WINDOW_ROWS_WITH_KEYS}"));
    eprintln!(
        "stored: {rows} rows, {total} packets ({over_packets} in {over_rows} overflow rows), \
         most rows in a window and direction: {per_window}"
    );
    assert_eq!(
        total, sent,
        "every packet stored once, overflow row included"
    );
    assert_eq!(total_bytes, sent * FRAME_BYTES);
    assert_eq!(
        over_rows, 1,
        "one overflow row for the one window and direction"
    );
    assert_eq!(
        over_packets, overflow,
        "the overflow row holds what the metric counted"
    );
    assert!(most <= MAX_ROWS + 1, "{per_window}");
    assert_eq!(rows, MAX_ROWS + 1);
    assert_eq!(
        sql_u64(
            &db,
            &format!(
                "SELECT COUNT(*) {WINDOW_ROWS_WITH_KEYS} WHERE proto = 'UDP' AND packets != 1"
            )
        ),
        0,
        "each key kept apart has its one packet"
    );
}
