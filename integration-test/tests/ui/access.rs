//! Who may load the page: the allowlist guards it and each of its files; with a token, the
//! page loads, asks for the token, and then streams.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Stdio,
    time::Duration,
};

use fantoccini::Locator;
use integration_test::{
    KillOnDrop,
    agent::{Agent, binary, http_get, http_get_with, metric},
    netns::{ADDR_B4, NetPair},
    require_bpf, wait_for,
};

use super::{
    PAGE,
    browser::{Browser, Kind, in_browser_ns},
    send_udp,
};

/// GET `path` from namespace `ns` to `addr`:`port`; the status code.
fn status_from(ns: &str, addr: &'static str, port: u16, path: &str) -> u16 {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}:{port}\r\nConnection: close\r\n\r\n");
    NetPair::in_ns(ns, move || {
        let mut s = TcpStream::connect((addr, port)).expect("the agent answers");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line")
    })
}

#[test]
fn a_peer_outside_the_allowlist_gets_403_for_the_page_and_its_files() {
    require_bpf();
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = KillOnDrop(
        NetPair::command(&pair.ns_b, binary().to_str().unwrap())
            .args([
                "--interface",
                &pair.if_b,
                "--bind-address",
                "0.0.0.0",
                "--port",
                "3001",
            ])
            .args(["--allowed-ips", "127.0.0.1"])
            .arg("--db-path")
            .arg(dir.path().join("h.db"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for(60, "the agent's /readyz", || {
        http_get(&pair.ns_b, 3001, "/readyz").filter(|(code, _)| *code == 200)
    });
    let (code, page) = http_get(&pair.ns_b, 3001, "/").expect("the page");
    assert_eq!(code, 200, "loopback is allowed");
    let mut files: Vec<String> = page
        .split('"')
        .filter(|p| p.starts_with("/ui/"))
        .map(str::to_owned)
        .collect();
    // The scripts the entry module imports.
    for js in [
        "main.js",
        "api.js",
        "live.js",
        "history.js",
        "chart.js",
        "table.js",
        "format.js",
    ] {
        files.push(format!("/ui/{js}"));
    }
    for path in std::iter::once("/".to_string()).chain(files) {
        assert_eq!(
            http_get(&pair.ns_b, 3001, &path).map(|r| r.0),
            Some(200),
            "{path} from 127.0.0.1"
        );
        assert_eq!(
            status_from(&pair.ns_a, ADDR_B4, 3001, &path),
            403,
            "{path} from 192.0.2.1"
        );
    }
}

fn with_a_token_the_page_asks_for_it_then_streams(kind: Kind) {
    require_bpf();
    const TOKEN: &str = "ui-token/with+base64=";
    let pair = NetPair::new(false);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let agent = Agent::start_on_b(
        &pair,
        &dir.path().join("h.db"),
        &["--api-token-file", token_file.to_str().unwrap()],
    );
    send_udp(&pair, 42000, 9999, 3, 50);
    let auth = format!("Bearer {TOKEN}");
    let clients = move |ns: &str| {
        let r = http_get_with(ns, 3000, "/metrics", &[("Authorization", &auth)])?;
        metric(&r.body, "ayaflow_stream_clients")
    };
    let ns = pair.ns_b.clone();
    let downloads = tempfile::tempdir().unwrap();
    in_browser_ns(&ns.clone(), move || async move {
        let b = Browser::start(kind, &ns, 1366, 800, downloads.path()).await;
        b.client
            .goto(PAGE)
            .await
            .expect("the page loads without the token");
        b.until(
            30,
            "the token dialog",
            "return document.getElementById('token-dialog').open;",
        )
        .await;
        b.client
            .find(Locator::Css("#token-dialog input"))
            .await
            .unwrap()
            .send_keys(TOKEN)
            .await
            .unwrap();
        b.client
            .find(Locator::Css("#token-dialog button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.until(
            30,
            "the status with the token",
            "return document.querySelector('[data-fact=version]')?.textContent;",
        )
        .await;
        b.until(
            30,
            "a frame of the stream",
            "return document.querySelectorAll('#conn-table tbody tr[data-key]').length;",
        )
        .await;
        wait_for(30, "the page's stream client", || {
            (clients(&ns)? == 1).then_some(())
        });
        // The first request, without the token, was refused: that is how the page knew to ask.
        assert_eq!(
            b.errors(&["status of 401"]).await,
            Vec::<String>::new(),
            "errors in the page"
        );
        // The page's own capture, which all these checks rely on, does see errors: a file that
        // fails to load, and `console.error` (in the page's world, where WebDriver's scripts
        // may not run in Firefox).
        b.js(
            "const s = document.createElement('script'); s.src = '/ui/nothing.js';
             document.head.append(s); console.error('logged on purpose');",
            vec![],
        )
        .await;
        b.until(
            30,
            "the page to keep both errors",
            "const e = window.ayaflowErrors;
             return e.some(m => m.includes('/ui/nothing.js')) && e.includes('logged on purpose');",
        )
        .await;
    });
    drop(agent);
}

in_both_browsers!(with_a_token_the_page_asks_for_it_then_streams);
