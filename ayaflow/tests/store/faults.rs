//! Storage writer: faults and recovery

use super::*;

#[test]
fn a_full_disk_is_counted_and_writing_resumes_when_space_returns() {
    let (_dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(10)));
    wait_for("10 rows written", || written(&stats) == 10);

    // A cap below the current size means "no growth": like a disk with no free block.
    storage.simulate_disk_size(Some(1));
    assert!(tx.send_packets(fresh_packets(5_000)));
    wait_for("a `full` write error", || {
        stats.snapshot().write_errors(ErrorKind::Full) >= 2
    });
    assert_eq!(written(&stats), 10);
    assert_eq!(
        counts(&path).packets,
        10,
        "the failed transaction left nothing behind"
    );
    assert_eq!(
        stats.snapshot().queued_rows,
        5_000,
        "failed rows are kept for a retry"
    );

    storage.simulate_disk_size(None);
    wait_for("the retried rows written", || written(&stats) == 5_010);
    assert_eq!(counts(&path).packets, 5_010);
    let end = storage.shutdown();
    assert_eq!(end.rows_dropped_total(), 0);
}

#[test]
fn a_locked_database_is_retried_until_released() {
    let (_dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let locker = rusqlite::Connection::open(&path).expect("raw open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(100)));
    wait_for("a `locked` write error", || {
        stats.snapshot().write_errors(ErrorKind::Locked) >= 1
    });
    assert_eq!(written(&stats), 0);
    assert_eq!(
        counts(&path).packets,
        0,
        "readers still read while the lock is held"
    );

    locker.execute_batch("COMMIT").expect("unlock");
    wait_for("rows written after the lock is released", || {
        written(&stats) == 100
    });
    assert_eq!(counts(&path).packets, 100);
    let end = storage.shutdown();
    assert_eq!(end.rows_dropped_total(), 0);
}

#[test]
fn a_removed_file_is_recreated_and_writing_continues() {
    let (_dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(10)));
    wait_for("10 rows written", || written(&stats) == 10);

    // Only the main file, as `rm history.db` would: the -wal and -shm stay behind.
    fs::remove_file(&path).expect("remove the database");
    wait_for("the file recreated", || {
        path.exists() && stats.snapshot().reopens >= 1
    });
    assert!(tx.send_packets(fresh_packets(20)));
    wait_for("30 rows written", || written(&stats) == 30);
    assert_eq!(
        counts(&path).packets,
        20,
        "the new file has the new rows, not the old WAL's"
    );
    let end = storage.shutdown();
    assert_eq!(end.rows_dropped_total(), 0);
    assert_eq!(counts(&path).packets, 20);
}

#[test]
fn a_replaced_file_is_reopened_and_written() {
    let (dir, path) = temp_db();
    let storage = Storage::spawn(StorageConfig::new(&path)).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    assert!(tx.send_packets(fresh_packets(10)));
    wait_for("10 rows written", || written(&stats) == 10);

    // Another valid history file, holding one row, moved over the path.
    let other = dir.path().join("other.db");
    Store::open(&other)
        .and_then(|mut s| s.insert_packets(&fresh_packets(1)))
        .expect("prepare the replacement");
    fs::rename(&other, &path).expect("replace the database");
    wait_for("the writer reopened", || stats.snapshot().reopens >= 1);
    assert!(tx.send_packets(fresh_packets(5)));
    wait_for("15 rows written", || written(&stats) == 15);
    let end = storage.shutdown();
    assert_eq!(end.rows_dropped_total(), 0);
    assert_eq!(
        counts(&path).packets,
        1 + 5,
        "the replacement's row plus the new ones"
    );
}

/// Child half of `committed_rows_survive_kill_9`: writes rows, reports, waits to be killed.
pub(crate) fn kill_9_child(path: &Path) {
    let storage = Storage::spawn(StorageConfig::new(path)).expect("spawn");
    let stats = storage.stats();
    assert!(storage.sender().send_packets(fresh_packets(1_000)));
    wait_for("1000 rows written", || written(&stats) == 1_000);
    println!("ROWS_COMMITTED");
    // The parent kills us; exit on our own only if it never does.
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(3);
}

#[test]
fn committed_rows_survive_kill_9() {
    const CHILD_ENV: &str = "AYAFLOW_TEST_KILL9_DB";
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        kill_9_child(Path::new(&path));
        return;
    }
    let (_dir, path) = temp_db();
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            "faults::committed_rows_survive_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child test process");
    let stdout = child.stdout.take().expect("stdout is piped");
    let committed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("ROWS_COMMITTED"));
    // Child::kill sends SIGKILL: no destructor, no checkpoint, no clean close.
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap the child");
    assert!(committed, "the child never reported its rows as written");

    // The agent's restart: open for writing (recovers the WAL), then read.
    let store = Store::open(&path).expect("reopen after the crash");
    assert_eq!(store.row_counts().expect("count").packets, 1_000);
}
