//! The README's pictures: the live and history views at a laptop's width (1366x800) and a
//! phone's (390x844), over about a minute of mixed traffic. Ignored by `cargo test`; regenerate them
//! with `cargo xtask screenshots` (or this test with `--ignored`), which writes
//! `docs/ui-{live,history}-{laptop,phone}.png` (another directory: `AYAFLOW_UI_SCREENSHOTS`).

use std::{path::PathBuf, process::Stdio, time::Duration};

use integration_test::{
    KillOnDrop,
    agent::Agent,
    netns::{ADDR_B4, NetPair},
    require_bpf,
};

use super::{
    PAGE, Steady,
    browser::{Browser, Kind, in_browser_ns},
    send_udp,
};

#[test]
#[ignore = "writes docs/*.png; run with `cargo xtask screenshots`"]
fn screenshots() {
    require_bpf();
    let out = std::env::var_os("AYAFLOW_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs"));
    std::fs::create_dir_all(&out).unwrap();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_on_b(&pair, &dir.path().join("h.db"), &["--direction", "both"]);
    for (port, count, payload) in [(40001, 40, 900), (40002, 120, 300), (40003, 15, 1200)] {
        send_udp(&pair, port, 53, count, payload);
    }
    // Steady traffic while the pictures are taken (at most 4 minutes).
    let _ping = KillOnDrop(
        NetPair::command(&pair.ns_a, "ping")
            .args(["-c", "480", "-i", "0.5", "-s", "400", ADDR_B4])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let minute = Duration::from_secs(240);
    let _steady = [
        Steady::start(&pair, 40100, 443, 1200, Duration::from_millis(4), minute),
        Steady::start(&pair, 40101, 8080, 400, Duration::from_millis(15), minute),
        Steady::start(&pair, 40102, 123, 60, Duration::from_millis(100), minute),
    ];
    let ns = pair.ns_b.clone();
    let downloads = tempfile::tempdir().unwrap();
    in_browser_ns(&ns.clone(), move || async move {
        for (device, width, height) in [("laptop", 1366, 800), ("phone", 390, 844)] {
            let b = Browser::start(Kind::Chromium, &ns, width, height, downloads.path()).await;
            b.client.goto(PAGE).await.unwrap();
            b.until(
                120,
                "a minute of chart",
                "return Number(document.getElementById('chart-pps').dataset.samples) >= 45;",
            )
            .await;
            std::fs::write(
                out.join(format!("ui-live-{device}.png")),
                b.screenshot().await,
            )
            .unwrap();
            b.client.goto(&format!("{PAGE}#history")).await.unwrap();
            b.js("document.getElementById('h-range').value = '15m'; document.getElementById('h-port').value = '443'; document.getElementById('h-show').click();", vec![]).await;
            b.until(
                60,
                "the history chart",
                "return document.getElementById('chart-note').textContent.includes('s per bar');",
            )
            .await;
            std::fs::write(
                out.join(format!("ui-history-{device}.png")),
                b.screenshot().await,
            )
            .unwrap();
            assert_eq!(
                b.errors(&[]).await,
                Vec::<String>::new(),
                "errors in the page"
            );
            eprintln!("wrote {}/ui-{{live,history}}-{device}.png", out.display());
        }
    });
    drop(agent);
}
