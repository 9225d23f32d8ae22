//! The history view against a known set of raw rows.

use std::collections::BTreeSet;

use fantoccini::Locator;
use integration_test::{agent::Agent, netns::NetPair, require_bpf, wait_for};
use serde_json::Value;

use super::{
    FOREIGN_RESOURCES, PAGE, UDP_OVERHEAD,
    browser::{Browser, Kind, in_browser_ns},
    rows_script, send_udp,
};

/// Datagrams of the known set (one raw row each): more than two pages of 100.
const ROWS: u64 = 250;
const PAYLOAD: usize = 60;
const PORT: u16 = 9998;

/// Parses a CSV without quoted fields (the page quotes only fields with `,`, `"` or a newline,
/// which these rows do not have).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

fn history_pages_walk_every_row_once_and_the_chart_and_csv_hold_what_is_shown(kind: Kind) {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_on_b(&pair, &dir.path().join("h.db"), &["--direction", "ingress"]);
    send_udp(&pair, 41000, PORT, ROWS, PAYLOAD);
    let query = format!("/api/history?port={PORT}&proto=UDP&limit=1000");
    let api_ids: BTreeSet<u64> = wait_for(30, "the known rows in /api/history", || {
        let (_, body) = agent.get(&query)?;
        let doc: Value = serde_json::from_str(&body).ok()?;
        let rows = doc["rows"].as_array()?;
        (rows.len() as u64 == ROWS)
            .then(|| rows.iter().map(|r| r["id"].as_u64().unwrap()).collect())
    });
    let downloads = tempfile::tempdir().unwrap();
    let ns = pair.ns_b.clone();
    let if_b = pair.if_b.clone();
    in_browser_ns(&ns.clone(), move || async move {
        let b = Browser::start(kind, &ns, 1366, 800, downloads.path()).await;
        b.client
            .goto(&format!("{PAGE}#history"))
            .await
            .expect("the page loads");
        b.until(30, "the history view", "return !document.getElementById('view-history').hidden && document.getElementById('h-page').textContent.startsWith('page 1');").await;
        b.client
            .find(Locator::Id("h-port"))
            .await
            .unwrap()
            .send_keys(&PORT.to_string())
            .await
            .unwrap();
        b.client
            .find(Locator::Id("h-proto"))
            .await
            .unwrap()
            .send_keys("UDP")
            .await
            .unwrap();
        b.client
            .find(Locator::Id("h-limit"))
            .await
            .unwrap()
            .select_by_value("100")
            .await
            .unwrap();
        // Mark the table so the next page is told apart from this one.
        b.js(
            "document.getElementById('h-page').textContent = '';",
            vec![],
        )
        .await;
        b.client
            .find(Locator::Id("h-show"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();

        // Walk the pages with "Older" until it is disabled.
        let rows = rows_script("h-table");
        let mut seen: Vec<u64> = Vec::new();
        let mut sizes = Vec::new();
        let mut first_page = Vec::new();
        for page in 1.. {
            let text = b
                .until(30, &format!("page {page}"), &format!(
                    "const t = document.getElementById('h-page').textContent; return t.startsWith('page {page}:') ? t : null;"
                ))
                .await;
            let got = b.js(&rows, vec![]).await;
            let ids: Vec<u64> = got
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["key"].as_str().unwrap().parse().unwrap())
                .collect();
            for r in got.as_array().unwrap() {
                assert_eq!(r["packets"], "1", "{r}");
                assert_eq!(
                    r["bytes"],
                    (PAYLOAD as u64 + UDP_OVERHEAD).to_string(),
                    "{r}"
                );
                assert_eq!(r["dst_text"], format!("192.0.2.2:{PORT}"), "{r}");
            }
            if page == 1 {
                first_page = ids.clone();
            }
            sizes.push(ids.len());
            seen.extend(&ids);
            let older_disabled = b
                .js(
                    "return document.getElementById('h-older').disabled;",
                    vec![],
                )
                .await;
            if older_disabled == true {
                assert!(text.as_str().unwrap().ends_with("the oldest"), "{text}");
                break;
            }
            b.client
                .find(Locator::Id("h-older"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
        assert_eq!(sizes, [100, 100, 50], "page sizes");
        let unique: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no row twice");
        assert_eq!(unique, api_ids, "every row of the set, exactly once");
        assert!(
            seen.windows(2).all(|w| w[0] > w[1]),
            "newest first across pages"
        );

        // The CSV of the page shown (the last) holds exactly its rows.
        let table = b.js(&rows, vec![]).await;
        b.client
            .find(Locator::Id("h-csv"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let csv_path = wait_for(30, "the CSV download", || {
            std::fs::read_dir(downloads.path())
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "csv"))
                // Written whole: a download can show its name before its bytes.
                .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.ends_with('\n')))
        });
        let csv = parse_csv(&std::fs::read_to_string(&csv_path).unwrap());
        let head = &csv[0];
        let col = |name: &str| {
            head.iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("{name} in {head:?}"))
        };
        let table = table.as_array().unwrap();
        assert_eq!(csv.len() - 1, table.len(), "one CSV line per row shown");
        assert!(
            csv[1..].iter().all(|line| line[col("interface")] == if_b),
            "every row was seen on {if_b}"
        );
        for (line, r) in csv[1..].iter().zip(table) {
            for (csv_col, table_col) in [
                ("id", "key"),
                ("direction", "direction"),
                ("interface", "interface"),
                ("proto", "proto"),
                ("src", "src"),
                ("dst", "dst"),
                ("packets", "packets"),
                ("bytes", "bytes"),
                ("unix_seconds", "time"),
            ] {
                assert_eq!(
                    Value::from(line[col(csv_col)].clone()),
                    r[table_col],
                    "{csv_col} of {line:?} vs {r}"
                );
            }
        }

        // The chart counts every row of the range, and "Newer" goes back.
        let totals = b
            .until(30, "the chart", "const p = document.getElementById('chart-h-packets').dataset.total, q = document.getElementById('chart-h-bytes').dataset.total; return p && q ? [Number(p), Number(q)] : null;")
            .await;
        assert_eq!(
            totals,
            serde_json::json!([ROWS, ROWS * (PAYLOAD as u64 + UDP_OVERHEAD)])
        );
        b.client
            .find(Locator::Id("h-newer"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.until(
            30,
            "page 2 again",
            "return document.getElementById('h-page').textContent.startsWith('page 2:');",
        )
        .await;
        b.client
            .find(Locator::Id("h-newer"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.until(
            30,
            "page 1 again",
            "return document.getElementById('h-page').textContent.startsWith('page 1:');",
        )
        .await;
        let again = b.js(&rows, vec![]).await;
        let again: Vec<u64> = again
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(again, first_page);

        assert_eq!(b.js(FOREIGN_RESOURCES, vec![]).await, serde_json::json!([]));
        assert_eq!(
            b.errors(&[]).await,
            Vec::<String>::new(),
            "errors in the page"
        );
    });
    drop(agent);
    drop(pair);
}

/// Aggregated history, at a phone's width: the page picks the agent's kind, the chart and the
/// table hold the known connection's windows, the CSV has the windows' columns, and neither
/// view is wider than the screen.
fn aggregated_history_at_a_phone_width(kind: Kind) {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_on_b(
        &pair,
        &dir.path().join("h.db"),
        &["--direction", "ingress", "--aggregation-window", "5"],
    );
    const SENT: u64 = 30;
    send_udp(&pair, 41001, PORT, SENT, PAYLOAD);
    // The window closes within its length and a tick.
    wait_for(60, "the known connection's windows in /api/history", || {
        let (_, body) = agent.get(&format!("/api/history?port={PORT}"))?;
        let doc: Value = serde_json::from_str(&body).ok()?;
        let packets: u64 = doc["rows"]
            .as_array()?
            .iter()
            .map(|r| r["packets"].as_u64().unwrap_or(0))
            .sum();
        (doc["kind"] == "aggregated" && packets == SENT).then_some(())
    });
    let downloads = tempfile::tempdir().unwrap();
    let ns = pair.ns_b.clone();
    in_browser_ns(&ns.clone(), move || async move {
        let b = Browser::start(kind, &ns, 390, 844, downloads.path()).await;
        let narrow = "return document.documentElement.scrollWidth <= window.innerWidth;";
        b.client.goto(PAGE).await.expect("the page loads");
        b.until(
            30,
            "a frame",
            "return document.querySelectorAll('#conn-table tbody tr[data-key]').length;",
        )
        .await;
        assert_eq!(
            b.js(narrow, vec![]).await,
            true,
            "the live view fits a phone's width"
        );
        b.client.goto(&format!("{PAGE}#history")).await.unwrap();
        b.until(
            30,
            "the history view",
            "return document.getElementById('h-page').textContent.startsWith('page 1');",
        )
        .await;
        let kind = b
            .js("return document.getElementById('h-kind').value;", vec![])
            .await;
        assert_eq!(kind, "aggregated", "the agent's own kind by default");
        b.client
            .find(Locator::Id("h-port"))
            .await
            .unwrap()
            .send_keys(&PORT.to_string())
            .await
            .unwrap();
        b.js(
            "document.getElementById('h-page').textContent = '';",
            vec![],
        )
        .await;
        b.client
            .find(Locator::Id("h-show"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.until(
            30,
            "the filtered page",
            "return document.getElementById('h-page').textContent.startsWith('page 1:');",
        )
        .await;
        let table = b.js(&rows_script("h-table"), vec![]).await;
        let packets: u64 = table
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["packets"].as_str().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(packets, SENT, "{table}");
        let total = b
            .until(
                30,
                "the chart",
                "return Number(document.getElementById('chart-h-packets').dataset.total || 0);",
            )
            .await;
        assert_eq!(total, SENT);
        let note = b
            .js(
                "return document.getElementById('chart-note').textContent;",
                vec![],
            )
            .await;
        assert!(note.as_str().unwrap().contains("windows"), "{note}");
        assert_eq!(
            b.js(narrow, vec![]).await,
            true,
            "the history view fits a phone's width"
        );
        b.client
            .find(Locator::Id("h-csv"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let csv_path = wait_for(30, "the CSV download", || {
            std::fs::read_dir(downloads.path())
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "csv"))
                // Written whole: a download can show its name before its bytes.
                .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.ends_with('\n')))
        });
        let csv = parse_csv(&std::fs::read_to_string(&csv_path).unwrap());
        assert_eq!(
            csv[0][..5],
            [
                "id",
                "window_start_utc",
                "window_end_utc",
                "window_start",
                "window_end"
            ]
        );
        assert_eq!(csv.len() - 1, table.as_array().unwrap().len());
        assert_eq!(
            b.errors(&[]).await,
            Vec::<String>::new(),
            "errors in the page"
        );
    });
    drop(agent);
    drop(pair);
}

in_both_browsers!(history_pages_walk_every_row_once_and_the_chart_and_csv_hold_what_is_shown);

in_both_browsers!(aggregated_history_at_a_phone_width);
