//! Storage writer: the disk budget (`max_db_bytes`) under a flood of raw rows

use super::*;

/// The file and its WAL, in bytes.
fn on_disk(path: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    [path.to_owned(), wal]
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

const BUDGET: u64 = 16 * 1024 * 1024;
const BATCH: usize = 50_000;

#[test]
fn a_raw_flood_stays_within_the_budget_and_keeps_the_newest_rows() {
    // A raw row of these few keys takes about 6 bytes: 5 million rows are about two budgets.
    flood(100, |i| (i % 256) as u16, |_| "192.0.2.1".parse().unwrap());
}

#[test]
fn a_flood_of_distinct_tuples_stays_within_the_budget() {
    // Each packet its own key (a spoofed-source flood): the file is mostly `tuples` rows
    // (about 250 bytes each with their index entries), which go once no row points at them:
    // 400,000 keys are six budgets.
    flood(
        8,
        |i| (i % 65_536) as u16,
        |i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + (i / 65_536) as u32)),
    );
}

/// `batches` batches of raw rows through a writer with [`BUDGET`]; `port` and `src` give the
/// i-th packet's source (of all sent).
fn flood(batches: usize, port: impl Fn(u64) -> u16, src: impl Fn(u64) -> IpAddr) {
    let (_dir, path) = temp_db();
    let mut config = StorageConfig::new(&path);
    config.max_db_bytes = Some(BUDGET);
    let storage = Storage::spawn(config).expect("spawn");
    let tx = storage.sender();
    let stats = storage.stats();
    let t = tuple(Protocol::Udp, "192.0.2.1", 0, "192.0.2.2", 53);
    let mut largest = 0;
    let mut sent = 0u64;
    for b in 0..batches {
        let batch: Vec<Packet> = (0..BATCH as u64)
            .map(|i| {
                let n = sent + i;
                let mut p = packet(t, Direction::Egress, T * SEC + n * 1000);
                p.tuple.src_port = port(n);
                p.tuple.src = src(n);
                p.bytes = b as u32;
                p
            })
            .collect();
        assert!(tx.send_packets(batch), "the queue has room for one batch");
        sent += BATCH as u64;
        wait_for("the batch written", || written(&stats) == sent);
        largest = largest.max(on_disk(&path));
    }
    let s = stats.snapshot();
    assert_eq!(s.rows_dropped_total(), 0, "every row was written");
    assert!(s.size_deleted > 0, "the budget deleted the oldest rows");
    assert_eq!(s.retention_deleted, 0, "no retention by age configured");
    let left = counts(&path).packets;
    assert_eq!(
        left + s.size_deleted,
        sent,
        "each row is in the file or counted as deleted for size"
    );
    // One batch of raw rows takes well under 2 MiB (file pages plus WAL frames).
    assert!(
        largest <= BUDGET + 2 * 1024 * 1024,
        "file + WAL reached {largest} bytes with a budget of {BUDGET}"
    );
    // The rows kept are the newest: the first page holds the last batch's rows.
    let store = Store::open_read_only(&path).expect("reader");
    let page = store
        .query_history(&HistoryQuery::default())
        .expect("query");
    let HistoryRow::Raw(newest) = &page.rows[0] else {
        panic!("expected raw rows");
    };
    assert_eq!(newest.packet.bytes, batches as u32 - 1);
    assert_eq!(newest.id, sent as i64, "the newest row has the last id");
    drop(store);
    storage.shutdown();
    eprintln!(
        "budget {BUDGET}: largest file + WAL {largest}, rows kept {left}, deleted {}",
        s.size_deleted
    );
}
