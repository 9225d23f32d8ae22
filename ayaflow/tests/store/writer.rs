//! Storage writer: normal operation

use super::*;

#[test]
fn the_writer_stores_packets_and_windows_and_counts_them() {
    let (_dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(100)));
    let window = WindowRow {
        window_start_unix: T as i64,
        window_end_unix: T as i64 + 10,
        tuple: tuple(Protocol::Tcp, "10.0.0.1", 1, "10.0.0.2", 2),
        direction: Direction::Ingress,
        packets: 5,
        bytes: 500,
    };
    let dropped = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
        .block_on(tx.send_windows_within(vec![window; 3], Duration::from_secs(5)));
    assert_eq!(dropped, 0);
    wait_for("103 rows written", || written(&stats) == 103);
    assert_eq!(
        counts(&path),
        RowCounts {
            packets: 100,
            windows: 3
        }
    );

    let end = storage.shutdown();
    assert_eq!(end.rows_written, 103);
    assert_eq!(end.rows_dropped_total(), 0);
    assert_eq!(end.write_errors_total(), 0);
    assert_eq!(end.queued_rows, 0);
}

#[test]
fn retention_in_the_writer_deletes_expired_rows() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        // Runs every clamp(5 s / 10, 1 s, 60 s) = 1 s.
        retention: Some(Duration::from_secs(5)),
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    let t = tuple(Protocol::Udp, "10.0.0.1", 1, "10.0.0.2", 2);
    let hour_ago = now_ns() - 3_600 * SEC;
    let in_an_hour = now_ns() + 3_600 * SEC;
    // 12,000 expired rows need three retention batches.
    assert!(tx.send_packets(vec![packet(t, Direction::Ingress, hour_ago); 12_000]));
    assert!(tx.send_packets(vec![packet(t, Direction::Ingress, in_an_hour); 7]));
    wait_for("12,000 expired rows deleted", || {
        stats.snapshot().retention_deleted == 12_000
    });
    assert_eq!(counts(&path).packets, 7);
    let end = storage.shutdown();
    assert_eq!(end.rows_written, 12_007);
    assert_eq!(end.retention_deleted, 12_000);
}

#[test]
fn queue_overflow_is_counted_exactly() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        max_queued_rows: 100,
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    // Hold the write lock so the writer cannot make room: what fits is fully determined.
    let locker = rusqlite::Connection::open(&path).expect("raw open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let tx = storage.sender();
    let stats = storage.stats();

    let accepted: Vec<bool> = (0..10)
        .map(|_| tx.send_packets(fresh_packets(30)))
        .collect();
    assert_eq!(
        accepted,
        [
            true, true, true, false, false, false, false, false, false, false
        ]
    );
    assert!(
        tx.send_packets(fresh_packets(10)),
        "exactly fills the budget"
    );
    assert!(
        !tx.send_packets(fresh_packets(1)),
        "one row more does not fit"
    );
    let s = stats.snapshot();
    assert_eq!(s.rows_dropped(DropReason::QueueFull), 7 * 30 + 1);
    assert_eq!(s.queued_rows, 100);

    locker.execute_batch("COMMIT").expect("unlock");
    wait_for("the 100 accepted rows written", || written(&stats) == 100);
    let end = storage.shutdown();
    assert_eq!(counts(&path).packets, 100);
    assert_eq!(
        end.rows_written + end.rows_dropped_total(),
        10 * 30 + 10 + 1
    );
    assert_eq!(end.rows_dropped(DropReason::QueueFull), 211);
}

#[test]
fn every_row_is_written_or_counted_with_concurrent_senders() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        // A small budget, so some batches are dropped while others are written.
        max_queued_rows: 1_000,
        flush_interval: Duration::from_millis(5),
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    let accepted: u64 = std::thread::scope(|s| {
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let tx = storage.sender();
                s.spawn(move || {
                    (0..200)
                        .filter(|_| tx.send_packets(fresh_packets(37)))
                        .count() as u64
                        * 37
                })
            })
            .collect();
        senders
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .sum()
    });
    let end = storage.shutdown();
    let sent = 4 * 200 * 37;
    assert_eq!(end.rows_written, accepted, "every accepted row is written");
    assert_eq!(end.rows_dropped(DropReason::QueueFull), sent - accepted);
    assert_eq!(end.rows_written + end.rows_dropped_total(), sent);
    assert_eq!(counts(&path).packets, accepted);
    assert_eq!(end.queued_rows, 0);
}

#[test]
fn shutdown_writes_every_queued_row() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        // Never flushes on its own during the test: only shutdown can write these rows.
        flush_interval: Duration::from_secs(3_600),
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    let tx = storage.sender();
    for _ in 0..50 {
        assert!(tx.send_packets(fresh_packets(100)));
    }
    assert_eq!(counts(&path).packets, 0, "nothing flushed yet");
    let end = storage.shutdown();
    assert_eq!(end.rows_written, 5_000);
    assert_eq!(end.rows_dropped_total(), 0);
    assert_eq!(counts(&path).packets, 5_000);
    assert!(!tx.send_packets(fresh_packets(1)), "the queue is closed");
}

#[test]
fn shutdown_counts_rows_it_cannot_write_before_the_deadline() {
    let (_dir, path) = temp_db();
    let config = StorageConfig {
        flush_interval: Duration::from_secs(3_600),
        drain_timeout: Duration::from_millis(300),
        ..StorageConfig::new(&path)
    };
    let storage = Storage::spawn(config).expect("spawn");
    let locker = rusqlite::Connection::open(&path).expect("raw open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    assert!(storage.sender().send_packets(fresh_packets(50)));
    let end = storage.shutdown();
    assert_eq!(end.rows_written, 0);
    assert_eq!(end.rows_dropped(DropReason::Shutdown), 50);
    assert!(end.write_errors(ErrorKind::Locked) >= 1);
    assert_eq!(end.queued_rows, 0);
}
