use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::flow::{Direction, FiveTuple, Protocol};

#[test]
fn a_queued_row_takes_what_the_budget_says() {
    // DEFAULT_MAX_QUEUED_ROWS's memory figure, and the k8s limit built on it.
    assert_eq!(size_of::<Packet>(), 72);
    assert_eq!(DEFAULT_MAX_QUEUED_ROWS * size_of::<Packet>(), 36 << 20);
}

fn packets(n: usize) -> Vec<Packet> {
    (0..n)
        .map(|i| Packet {
            tuple: FiveTuple {
                proto: Protocol::Udp,
                src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                src_port: 53,
                dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
                dst_port: 5353,
                interface: Default::default(),
            },
            direction: Direction::Ingress,
            ts_unix_ns: unix_now_ns() + i as u64,
            packets: 1,
            bytes: 80,
            tcp_flags: 0,
            icmp_type: 0,
            icmp_code: 0,
            flags: 0,
            vlan_id: 0,
        })
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn retention_interval_is_a_tenth_clamped() {
    let mut c = StorageConfig::new("/x.db");
    assert_eq!(c.retention_interval(), None);
    c.retention = Some(Duration::from_secs(5));
    assert_eq!(c.retention_interval(), Some(Duration::from_secs(1)));
    c.retention = Some(Duration::from_secs(300));
    assert_eq!(c.retention_interval(), Some(Duration::from_secs(30)));
    c.retention = Some(Duration::from_secs(86_400));
    assert_eq!(c.retention_interval(), Some(Duration::from_secs(60)));
}

#[test]
fn drop_reasons_are_labelled_in_counter_order() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
    }
    let labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels, ["queue_full", "write_error", "shutdown"]);
}

#[test]
fn writes_within_the_flush_interval_and_counts_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::spawn(StorageConfig::new(dir.path().join("h.db"))).expect("spawn");
    let tx = storage.sender();
    assert!(tx.send_packets(packets(10)));
    assert!(
        tx.send_packets(Vec::new()),
        "an empty batch is trivially accepted"
    );
    let stats = storage.stats();
    wait_for("10 rows written", || stats.snapshot().rows_written == 10);
    assert_eq!(stats.snapshot().queued_rows, 0);
    let end = storage.shutdown();
    assert_eq!(end.rows_written, 10);
    assert_eq!(end.rows_dropped_total(), 0);
}

#[test]
fn sends_after_shutdown_are_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::spawn(StorageConfig::new(dir.path().join("h.db"))).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    storage.shutdown();
    assert!(!tx.send_packets(packets(3)));
    let s = stats.snapshot();
    assert_eq!(s.rows_dropped(DropReason::Shutdown), 3);
    assert_eq!(s.queued_rows, 0);
}

#[test]
fn a_bad_path_fails_at_spawn() {
    let err = Storage::spawn(StorageConfig::new("/nonexistent-ayaflow-dir/h.db"))
        .expect_err("missing directory");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(
        err.to_string().contains("/nonexistent-ayaflow-dir/h.db"),
        "{err}"
    );
}

/// `n` rows of one window, each its own tuple (a DNS server answering random ports).
fn window_rows(n: usize) -> Vec<WindowRow> {
    (0..n)
        .map(|i| WindowRow {
            window_start_unix: 1_700_000_040,
            window_end_unix: 1_700_000_100,
            tuple: FiveTuple {
                proto: Protocol::Udp,
                src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i / 50_000) as u32)),
                src_port: 1024 + (i % 50_000) as u16,
                dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
                dst_port: 53,
                interface: Default::default(),
            },
            direction: Direction::Ingress,
            packets: 1,
            bytes: 80,
        })
        .collect()
}

/// A window with more rows than the whole queue budget is stored whole: it goes in chunks the
/// writer drains as they come (it used to be dropped whole, counted as `queue_full`).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_window_larger_than_the_queue_is_stored_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("h.db");
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let n = DEFAULT_MAX_QUEUED_ROWS + 75_000;
    let dropped = storage
        .sender()
        .send_windows_within(window_rows(n), Duration::from_secs(120))
        .await;
    assert_eq!(dropped, 0);
    let end = storage.shutdown();
    assert_eq!((end.rows_written, end.rows_dropped_total()), (n as u64, 0));
    let stored: i64 = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row("SELECT count(*) FROM windows", [], |r| r.get(0))
        .expect("count");
    assert_eq!(stored, n as i64, "every row in the file");
}

/// Rows that find no room within the wait are dropped, counted and reported, never lost
/// silently; what fitted is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn rows_without_room_after_the_wait_are_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = StorageConfig::new(dir.path().join("h.db"));
    config.max_queued_rows = 10;
    // The writer is slower than the wait: only the first chunk fits.
    config.flush_interval = Duration::from_secs(3600);
    let storage = Storage::spawn(config).expect("spawn");
    let dropped = storage
        .sender()
        .send_windows_within(window_rows(25), Duration::from_millis(50))
        .await;
    let end = storage.shutdown();
    assert_eq!(dropped, 25, "a 25-row chunk never fits a 10-row budget");
    assert_eq!(end.rows_dropped(DropReason::QueueFull), 25);
    assert_eq!(end.rows_written, 0);
}
