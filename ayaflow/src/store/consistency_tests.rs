//! Ids and snapshots that readers and paging clients rely on: an id is never handed out twice,
//! and one history query sees one state of the file.

use super::tests::{packet, temp_store};
use super::*;

fn window(tuple: FiveTuple, start: i64) -> WindowRow {
    WindowRow {
        window_start_unix: start,
        window_end_unix: start + 60,
        tuple,
        direction: Direction::Egress,
        packets: 3,
        bytes: 300,
    }
}

fn aggregated() -> HistoryQuery {
    HistoryQuery {
        kind: HistoryKind::Aggregated,
        ..HistoryQuery::default()
    }
}

fn page_ids(page: &HistoryPage) -> Vec<i64> {
    page.rows.iter().map(HistoryRow::id).collect()
}

fn max_tuple_id(store: &Store) -> i64 {
    store
        .conn
        .query_row("SELECT coalesce(max(id), 0) FROM tuples", [], |r| r.get(0))
        .expect("max id")
}

/// Everything deleted: every packet and window expired, unused keys swept.
fn delete_everything(store: &mut Store) {
    store.tuples.created_since_sweep = MIN_TUPLES_BEFORE_SWEEP;
    while store
        .delete_older_than(u64::MAX / 2, 10_000)
        .expect("delete")
        > 0
    {}
    assert_eq!(store.row_counts().expect("counts"), RowCounts::default());
    assert_eq!(max_tuple_id(store), 0, "every key swept");
}

#[test]
fn ids_continue_after_retention_empties_every_table_and_after_a_reopen() {
    let (dir, mut store) = temp_store();
    let raw: Vec<Packet> = (0..3).map(packet).collect();
    store.insert_packets(&raw).expect("insert");
    let t = raw[0].tuple;
    store
        .insert_windows(&[window(t, 0), window(t, 60)])
        .expect("insert");
    assert_eq!(
        page_ids(&store.query_history(&HistoryQuery::default()).unwrap()),
        [3, 2, 1]
    );
    assert_eq!(
        page_ids(&store.query_history(&aggregated()).unwrap()),
        [2, 1]
    );
    let keys_before = max_tuple_id(&store);
    assert_eq!(keys_before, 1, "raw and window rows share the key");

    delete_everything(&mut store);
    // A client holding `next_cursor` 3 (or 2) must not meet new rows under old ids.
    store.insert_packets(&[packet(7)]).expect("insert");
    store.insert_windows(&[window(t, 120)]).expect("insert");
    assert_eq!(
        page_ids(&store.query_history(&HistoryQuery::default()).unwrap()),
        [4]
    );
    assert_eq!(page_ids(&store.query_history(&aggregated()).unwrap()), [3]);
    assert!(
        max_tuple_id(&store) > keys_before,
        "a key created after the sweep gets a new id, not a swept one"
    );

    // The floors are in the file: a new writer (an agent restart) continues from them.
    delete_everything(&mut store);
    drop(store);
    let mut store = Store::open(dir.path().join("h.db")).expect("reopen");
    store.insert_packets(&[packet(8)]).expect("insert");
    store.insert_windows(&[window(t, 180)]).expect("insert");
    assert_eq!(
        page_ids(&store.query_history(&HistoryQuery::default()).unwrap()),
        [5]
    );
    assert_eq!(page_ids(&store.query_history(&aggregated()).unwrap()), [4]);
}

#[test]
fn a_history_query_reads_one_snapshot_while_retention_deletes() {
    let (dir, mut writer) = temp_store();
    let t = packet(0).tuple;
    let windows: Vec<WindowRow> = (0..5).map(|i| window(t, i * 60)).collect();
    writer.insert_windows(&windows).expect("insert");
    let reader = Store::open_read_only(dir.path().join("h.db")).expect("reader");

    // Between finding the ids and reading the rows, retention deletes every row and key (and
    // the writer starts again with a new key), as the agent's writer may at any time.
    let page = reader
        .query_history_between(&aggregated(), || {
            delete_everything(&mut writer);
            let mut other = packet(1).tuple;
            other.dst_port = 9999;
            writer
                .insert_windows(&[window(other, 600)])
                .expect("insert");
        })
        .expect("query");
    assert_eq!(
        page_ids(&page),
        [5, 4, 3, 2, 1],
        "the page as of its first read"
    );
    for row in &page.rows {
        let HistoryRow::Aggregated(w) = row else {
            panic!("expected windows, got {row:?}");
        };
        assert_eq!(
            (w.window.tuple, w.window.packets),
            (t, 3),
            "each row with its own key"
        );
    }
    // The next query sees the new state.
    let page = reader.query_history(&aggregated()).expect("query");
    assert_eq!(page_ids(&page), [6]);
}
