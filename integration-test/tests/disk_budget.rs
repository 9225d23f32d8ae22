//! The disk budget through the real agent: a raw-mode flood of distinct tuples (a spoofed
//! flood, the worst case: each packet a new key) into an agent with `--max-db-bytes 16MiB`.
//! The file and its WAL stay within the budget plus one transaction, every row is written,
//! the oldest are deleted (counted with `reason="size"`), the newest are in `/api/history`.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
};

use integration_test::{
    agent::{Agent, metric, run},
    netns::{ADDR_A4, ADDR_B4, NetPair},
    require_bpf, wait_for,
};
use serde_json::Value;

const BUDGET: u64 = 16 * 1024 * 1024;
/// About 250 bytes a row of a new key: five budgets' worth.
const PACKETS: u32 = 300_000;
/// The port of the last datagram, sent after the flood: the newest row.
const LAST_PORT: u16 = 4242;

fn on_disk(db: &Path) -> u64 {
    let wal = db.with_extension("db-wal");
    [db, wal.as_path()]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn a_raw_flood_keeps_the_file_within_the_budget_and_the_newest_rows() {
    require_bpf();
    let pair = NetPair::new(false);
    // a sends to 198.18.0.0/15 (benchmarking addresses) through b, which does not forward:
    // every datagram crosses b's ingress hook once, and nothing answers.
    run(NetPair::command(&pair.ns_a, "ip").args([
        "route",
        "add",
        "198.18.0.0/15",
        "via",
        ADDR_B4,
        "dev",
        &pair.if_a,
    ]));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let agent = Agent::start_on_b(
        &pair,
        &db,
        &[
            "--max-db-bytes",
            "16MiB",
            // Room for the whole flood in the ring: the debug agent reads slower than a sends.
            "--ring-buffer-size",
            "67108864",
            "--max-connections",
            "400000",
        ],
    );
    let metrics = || agent.get("/metrics").expect("metrics").1;
    let before = metric(&metrics(), "ayaflow_packets_total{direction=\"ingress\"}").unwrap_or(0);

    NetPair::in_ns(&pair.ns_a, move || {
        let s = UdpSocket::bind(SocketAddr::new(ADDR_A4.parse().unwrap(), 5000)).unwrap();
        for i in 0..PACKETS {
            // A distinct destination address and port per datagram.
            let dst = Ipv4Addr::from(0xc612_0000 + (i >> 8));
            let port = 1024 + (i & 0xff) as u16;
            s.send_to(&[7u8; 32], SocketAddr::new(dst.into(), port))
                .unwrap();
        }
        s.send_to(
            &[7u8; 32],
            SocketAddr::new(ADDR_B4.parse().unwrap(), LAST_PORT),
        )
        .unwrap();
    });

    // Every packet the hook counted is written (or deleted for size after being written).
    let (mut largest, mut largest_file) = (0, 0);
    let (written, counted) = wait_for(180, "every counted packet written", || {
        largest = largest.max(on_disk(&db));
        largest_file = largest_file.max(std::fs::metadata(&db).map_or(0, |m| m.len()));
        let m = metrics();
        let counted = metric(&m, "ayaflow_packets_total{direction=\"ingress\"}")? - before;
        let written = metric(&m, "ayaflow_storage_rows_written_total")?;
        (counted > u64::from(PACKETS) && written >= counted).then_some((written, counted))
    });
    let m = metrics();
    assert_eq!(
        metric(&m, "ayaflow_ringbuf_drops_total{direction=\"ingress\"}"),
        Some(0)
    );
    for reason in ["queue_full", "write_error", "shutdown"] {
        let sample = format!("ayaflow_storage_rows_dropped_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&m, &sample), Some(0), "{sample}");
    }
    let deleted = metric(&m, "ayaflow_retention_deleted_rows_total{reason=\"size\"}").unwrap();
    assert_eq!(
        metric(&m, "ayaflow_retention_deleted_rows_total{reason=\"age\"}"),
        Some(0)
    );
    assert!(deleted > 0, "the budget deleted the oldest rows: {m}");
    // The file itself never passes its share (three quarters; SQLite enforces it). The WAL
    // holds at most its quarter plus the transaction being written: with every row a new key,
    // a transaction dirties pages all over the key indexes, up to about a budget's worth here.
    assert!(
        largest_file <= BUDGET / 4 * 3,
        "the file reached {largest_file} bytes, its share is {}",
        BUDGET / 4 * 3
    );
    assert!(
        largest <= 2 * BUDGET,
        "file + WAL reached {largest} bytes with a budget of {BUDGET}"
    );

    // The newest row is there, with its exact size.
    let (code, body) = agent
        .get(&format!("/api/history?port={LAST_PORT}"))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["dst"], format!("{ADDR_B4}:{LAST_PORT}"));
    // Ethernet 14 + IPv4 20 + UDP 8 + 32 bytes of payload.
    assert_eq!(rows[0]["bytes"], 74);
    // Between writes (the last one done) the WAL is back within its share: the whole is
    // within the budget.
    let idle = on_disk(&db);
    assert!(
        idle <= BUDGET,
        "file + WAL {idle} bytes after the last write"
    );
    assert!(agent.terminate().success());

    // Each written row is in the file or was deleted for size.
    let kept = ayaflow::store::Store::open_read_only(&db)
        .and_then(|s| s.row_counts())
        .expect("the file reads")
        .packets;
    assert_eq!(kept + deleted, written, "kept {kept} + deleted {deleted}");
    eprintln!(
        "budget {BUDGET}: counted {counted}, written {written}, kept {kept}, deleted {deleted}, \
         largest file + WAL {largest} (file {largest_file}), idle {idle}"
    );
}
