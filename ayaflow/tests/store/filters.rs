//! Store: filters and paging

use super::*;

/// Nine raw rows (ids 1..=9), one second apart, covering every filter.
pub(crate) fn filter_fixture(store: &mut Store) {
    let rows = [
        (
            tuple(Protocol::Tcp, "10.0.0.1", 40_000, "10.0.0.2", 80),
            Direction::Ingress,
        ),
        (
            tuple(Protocol::Tcp, "10.0.0.2", 80, "10.0.0.1", 40_000),
            Direction::Egress,
        ),
        (
            tuple(Protocol::Udp, "10.0.0.3", 5353, "224.0.0.251", 5353),
            Direction::Egress,
        ),
        (
            tuple(Protocol::Udp, "fd00::1", 546, "ff02::1:2", 547),
            Direction::Egress,
        ),
        (
            tuple(Protocol::Icmpv6, "fe80::1", 0, "fd00::1", 0),
            Direction::Ingress,
        ),
        (
            tuple(Protocol::Icmp, "10.0.0.1", 0, "8.8.8.8", 0),
            Direction::Egress,
        ),
        (
            tuple(Protocol::Ip(47), "10.0.0.9", 0, "10.0.0.1", 0),
            Direction::Ingress,
        ),
        (
            tuple(Protocol::Ether(0x0806), "0.0.0.0", 0, "0.0.0.0", 0),
            Direction::Ingress,
        ),
        (
            tuple(Protocol::Tcp, "10.0.0.1", 40_001, "10.0.0.2", 443),
            Direction::Egress,
        ),
    ];
    let packets: Vec<Packet> = rows
        .iter()
        .enumerate()
        // 123 ns past each second, so time bounds are tested below second precision too.
        .map(|(i, &(t, d))| packet(t, d, (T + i as u64) * SEC + 123))
        .collect();
    store.insert_packets(&packets).expect("insert");
}

#[test]
fn every_raw_filter_selects_exactly_the_matching_rows() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    filter_fixture(&mut store);
    let q = HistoryQuery::default;
    let t = |s: u64| Some((T + s) as i64);

    assert_eq!(query(&store, q()), [9, 8, 7, 6, 5, 4, 3, 2, 1]);
    // Time range, half-open [from, to).
    let range = HistoryQuery {
        from_unix_s: t(2),
        to_unix_s: t(5),
        ..q()
    };
    assert_eq!(query(&store, range), [5, 4, 3]);
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                from_unix_s: t(7),
                ..q()
            }
        ),
        [9, 8]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                to_unix_s: t(1),
                ..q()
            }
        ),
        [1]
    );
    assert!(
        query(
            &store,
            HistoryQuery {
                from_unix_s: t(100),
                ..q()
            }
        )
        .is_empty()
    );
    // Address, as source or destination, IPv4 and IPv6.
    let addr = |a: &str| HistoryQuery {
        addr: Some(ip(a)),
        ..q()
    };
    assert_eq!(query(&store, addr("10.0.0.1")), [9, 7, 6, 2, 1]);
    assert_eq!(query(&store, addr("fd00::1")), [5, 4]);
    assert_eq!(query(&store, addr("ff02::1:2")), [4]);
    assert!(
        query(&store, addr("10.0.0.10")).is_empty(),
        "no prefix matching"
    );
    // Port, as source or destination.
    let port = |p| HistoryQuery {
        port: Some(p),
        ..q()
    };
    assert_eq!(query(&store, port(80)), [2, 1]);
    assert_eq!(query(&store, port(5353)), [3]);
    assert_eq!(query(&store, port(547)), [4]);
    // Protocol, every naming form.
    let proto = |p| HistoryQuery {
        proto: Some(p),
        ..q()
    };
    assert_eq!(query(&store, proto(Protocol::Tcp)), [9, 2, 1]);
    assert_eq!(query(&store, proto(Protocol::Udp)), [4, 3]);
    assert_eq!(query(&store, proto(Protocol::Icmp)), [6]);
    assert_eq!(query(&store, proto(Protocol::Icmpv6)), [5]);
    assert_eq!(query(&store, proto(Protocol::Ip(47))), [7]);
    assert_eq!(query(&store, proto(Protocol::Ether(0x0806))), [8]);
    // Direction.
    let dir = |d| HistoryQuery {
        direction: Some(d),
        ..q()
    };
    assert_eq!(query(&store, dir(Direction::Ingress)), [8, 7, 5, 1]);
    assert_eq!(query(&store, dir(Direction::Egress)), [9, 6, 4, 3, 2]);
    // Filters combine with AND, and with the cursor.
    let combo = HistoryQuery {
        addr: Some(ip("10.0.0.1")),
        proto: Some(Protocol::Tcp),
        direction: Some(Direction::Egress),
        ..q()
    };
    assert_eq!(query(&store, combo), [9, 2]);
    let below = HistoryQuery {
        addr: Some(ip("10.0.0.1")),
        before_id: Some(9),
        ..q()
    };
    assert_eq!(query(&store, below), [7, 6, 2, 1]);
}

#[test]
fn every_aggregated_filter_selects_exactly_the_matching_rows() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let w = |start: u64, t: FiveTuple, d| WindowRow {
        window_start_unix: start as i64,
        window_end_unix: start as i64 + 60,
        tuple: t,
        direction: d,
        packets: 1,
        bytes: 1,
    };
    store
        .insert_windows(&[
            w(
                T,
                tuple(Protocol::Tcp, "10.0.0.1", 40_000, "10.0.0.2", 80),
                Direction::Ingress,
            ),
            w(
                T + 60,
                tuple(Protocol::Udp, "fd00::1", 546, "ff02::1:2", 547),
                Direction::Egress,
            ),
            w(
                T + 120,
                tuple(Protocol::Tcp, "10.0.0.2", 80, "10.0.0.1", 40_000),
                Direction::Egress,
            ),
        ])
        .expect("insert");
    let q = || HistoryQuery {
        kind: HistoryKind::Aggregated,
        ..HistoryQuery::default()
    };
    let t = |s: u64| Some((T + s) as i64);
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                from_unix_s: t(60),
                ..q()
            }
        ),
        [3, 2]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                to_unix_s: t(60),
                ..q()
            }
        ),
        [1]
    );
    let range = HistoryQuery {
        from_unix_s: t(1),
        to_unix_s: t(121),
        ..q()
    };
    assert_eq!(query(&store, range), [3, 2]);
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                addr: Some(ip("fd00::1")),
                ..q()
            }
        ),
        [2]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                addr: Some(ip("10.0.0.1")),
                ..q()
            }
        ),
        [3, 1]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                port: Some(80),
                ..q()
            }
        ),
        [3, 1]
    );
    assert_eq!(
        query(
            &store,
            HistoryQuery {
                proto: Some(Protocol::Udp),
                ..q()
            }
        ),
        [2]
    );
    let egress = HistoryQuery {
        direction: Some(Direction::Egress),
        ..q()
    };
    assert_eq!(query(&store, egress), [3, 2]);
}

/// Follows `next_cursor` to the end; checks that pages are newest first and disjoint.
pub(crate) fn all_pages(store: &Store, mut q: HistoryQuery) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    loop {
        let page = store.query_history(&q).expect("query");
        let page_ids = ids(&page);
        assert!(
            page_ids.windows(2).all(|w| w[0] > w[1]),
            "newest first: {page_ids:?}"
        );
        if let Some(c) = page.next_cursor {
            assert_eq!(
                Some(&c),
                page_ids.last(),
                "the cursor is the last id of the page"
            );
        }
        pages.push(page_ids);
        match page.next_cursor {
            Some(c) => q.before_id = Some(c),
            None => return pages,
        }
    }
}

#[test]
fn cursor_pages_are_disjoint_and_complete() {
    let (_dir, path) = temp_db();
    let mut store = Store::open(&path).expect("open");
    let t = tuple(Protocol::Tcp, "10.0.0.1", 1, "10.0.0.2", 2);
    let packets: Vec<Packet> = (0..240u64)
        .map(|i| {
            let d = if i % 2 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            packet(t, d, (T + i) * SEC)
        })
        .collect();
    store.insert_packets(&packets).expect("insert");

    // 240 rows, 40 per page: six full pages, and the sixth says it is the last.
    let pages = all_pages(
        &store,
        HistoryQuery {
            limit: 40,
            ..HistoryQuery::default()
        },
    );
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [40; 6]);
    let flat: Vec<i64> = pages.concat();
    assert_eq!(
        flat,
        (1..=240).rev().collect::<Vec<i64>>(),
        "disjoint and complete"
    );

    // With a filter: 120 egress rows (even ids), 25 per page.
    let q = HistoryQuery {
        limit: 25,
        direction: Some(Direction::Egress),
        ..HistoryQuery::default()
    };
    let pages = all_pages(&store, q);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [25, 25, 25, 25, 20]
    );
    let flat: BTreeSet<i64> = pages.concat().into_iter().collect();
    assert_eq!(flat, (1..=120).map(|i| 2 * i).collect::<BTreeSet<i64>>());

    // A limit of 0 still makes progress (one row per page).
    let one = store
        .query_history(&HistoryQuery {
            limit: 0,
            ..HistoryQuery::default()
        })
        .expect("query");
    assert_eq!((ids(&one), one.next_cursor), (vec![240], Some(240)));
}
