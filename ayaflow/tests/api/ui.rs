//! GET /api/status, the web UI's files (/, /ui/*) and their headers, and the stream's token
//! subprotocol

use ayaflow::{
    api::{InterfaceState, InterfaceStatus, Status, ui},
    config::{CaptureMode, DirectionChoice},
};

use super::*;

/// A response with its headers.
async fn get_with(s: &Server, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = s.client.get(s.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("the server answers")
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
        .unwrap_or_default()
}

/// Every file the page loads: the `/ui/` references of index.html and the `./x.js` imports
/// of each script, followed.
async fn ui_files(s: &Server) -> Vec<String> {
    let page = s.get("/").await.body;
    let mut todo: Vec<String> = page
        .split('"')
        .filter(|p| p.starts_with("/ui/"))
        .map(str::to_owned)
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) || !path.ends_with(".js") {
            continue;
        }
        let text = s.get(&path).await.body;
        for import in text.split('"').filter(|p| p.starts_with("./")) {
            todo.push(format!("/ui/{}", &import[2..]));
        }
    }
    seen.into_iter().collect()
}

#[tokio::test]
async fn status_exact_json() {
    let since = 1_700_000_123;
    let s = start(Setup {
        status: Some(Status {
            version: "9.8.7",
            capture_mode: CaptureMode::Flows,
            direction: DirectionChoice::Both,
            started_at: Instant::now() - Duration::from_secs(90),
            interfaces: Arc::new(move || {
                vec![InterfaceStatus {
                    name: "eth0".into(),
                    ifindex: 2,
                    state: InterfaceState::Attached,
                    since_unix: since,
                    reason: None,
                }]
            }),
            interfaces_ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }),
        history_kind: HistoryKind::Aggregated,
        ..Setup::default()
    })
    .await;
    let mut doc = s.ok_json("/api/status").await;
    let uptime = doc["uptime_seconds"].as_u64().expect("uptime is a number");
    assert!((90..120).contains(&uptime), "uptime {uptime}");
    let counters = doc
        .as_object_mut()
        .and_then(|o| o.remove("counters"))
        .expect("counters");
    doc["uptime_seconds"] = json!(90);
    assert_eq!(
        doc,
        json!({"version": "9.8.7", "capture_mode": "flows", "direction": "both",
               "uptime_seconds": 90, "history": "aggregated",
               "interfaces": [{"name": "eth0", "ifindex": 2, "state": "attached",
                               "since_unix": since, "reason": null}]})
    );
    // The loss counters: /metrics names, summed values, the catalogue's help text; the same
    // names and values as /api/live's `losses`.
    let live = s.ok_json("/api/live").await;
    let counters = counters.as_array().expect("counters is an array");
    let names: Vec<&str> = counters
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    let want: Vec<String> = ayaflow::api::live::LOSS_COUNTERS
        .iter()
        .filter(|n| !n.starts_with("ayaflow_ipfix"))
        .map(|n| format!("{n}_total"))
        .collect();
    assert_eq!(names, want);
    for c in counters {
        let name = c["name"].as_str().expect("name");
        assert_eq!(c["value"], live["losses"][name], "{name}");
        assert!(
            c["help"].as_str().is_some_and(|h| h.len() > 10),
            "{name} has help"
        );
    }
    assert_eq!(counters[0]["value"], 6, "3 ring-buffer drops per hook");
}

#[tokio::test]
async fn status_defaults_name_this_version() {
    let s = start(Setup::default()).await;
    let doc = s.ok_json("/api/status").await;
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["capture_mode"], "raw");
    assert_eq!(doc["direction"], "ingress");
    assert_eq!(doc["history"], "raw");
    assert_eq!(doc["interfaces"], json!([]));
}

#[tokio::test]
async fn the_ui_is_served_with_a_same_origin_policy() {
    let s = start(Setup::default()).await;
    let files = ui_files(&s).await;
    for f in [
        "/ui/app.css",
        "/ui/main.js",
        "/ui/live.js",
        "/ui/history.js",
        "/ui/icon.svg",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} in {files:?}");
    }
    let mut total = 0;
    for path in std::iter::once("/".to_string()).chain(files) {
        let r = get_with(&s, &path, &[]).await;
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let want_type = match path.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("svg") => "image/svg+xml",
            _ => "text/html",
        };
        assert!(header(&r, "content-type").starts_with(want_type), "{path}");
        assert_eq!(header(&r, "content-security-policy"), ui::CSP, "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{path}");
        let etag = header(&r, "etag");
        assert!(etag.starts_with('"'), "{path} has an ETag");
        total += r.bytes().await.expect("a body").len();
        let again = get_with(&s, &path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status().as_u16(), 304, "{path} revalidated");
    }
    assert_eq!(
        total,
        ui::total_bytes(),
        "the page loads every embedded file"
    );
    for directive in [
        "default-src 'self'",
        "connect-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(ui::CSP.contains(directive), "{directive}");
    }
    assert!(
        !ui::CSP.contains("unsafe"),
        "no unsafe-inline or unsafe-eval"
    );
}

#[tokio::test]
async fn the_ui_is_behind_the_allowlist() {
    let s = start(Setup {
        allowed_ips: vec!["10.0.0.0/8"],
        ..Setup::default()
    })
    .await;
    for path in [
        "/",
        "/ui/main.js",
        "/ui/app.css",
        "/ui/icon.svg",
        "/ui/nothing.js",
    ] {
        assert_error(&s.get(path).await, 403, "127.0.0.1");
    }
}

/// The upgrade request for /api/stream offering `protocols`.
fn offering(s: &Server, protocols: &str) -> tungstenite::handshake::client::Request {
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(s.ws_url("/api/stream"))
            .expect("a valid URL");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        protocols.parse().expect("a valid header"),
    );
    req
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn with_a_token_the_page_loads_and_the_stream_takes_it_as_a_subprotocol() {
    const TOKEN: &str = "t0ken/with+base64=";
    let s = start(Setup {
        api_token: Some(TOKEN),
        publish: Some(Duration::from_millis(100)),
        ..Setup::default()
    })
    .await;
    for path in ["/", "/ui/main.js", "/ui/api.js"] {
        assert_eq!(s.get(path).await.status, 200, "{path} needs no token");
    }
    assert_error(&s.get("/api/status").await, 401, "token");

    let good = format!("ayaflow, ayaflow.bearer.{}", hex(TOKEN));
    let (mut ws, resp) = tokio_tungstenite::connect_async(offering(&s, &good))
        .await
        .expect("the token as a subprotocol opens the stream");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("ayaflow"),
        "the server selects the plain protocol, never echoes the token"
    );
    let frame: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON frames");
    assert!(frame["connections"].is_array());

    let refused_before = s.state.stats.unauthorized.load(Ordering::Relaxed);
    for bad in [
        format!("ayaflow, ayaflow.bearer.{}", hex("t0ken/with+base64")),
        format!("ayaflow, ayaflow.bearer.{}", &hex(TOKEN)[1..]),
        "ayaflow".to_string(),
        format!("ayaflow, ayaflow.bearer.{TOKEN}"),
    ] {
        match tokio_tungstenite::connect_async(offering(&s, &bad)).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "{bad}")
            }
            Err(e) => panic!("expected 401 for {bad}, got {e}"),
            Ok(_) => panic!("a stream with {bad}"),
        }
    }
    assert_eq!(
        s.state.stats.unauthorized.load(Ordering::Relaxed),
        refused_before + 4
    );
    // The subprotocol opens only the stream.
    let r = get_with(&s, "/api/live", &[("sec-websocket-protocol", &good)]).await;
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn a_client_offering_the_protocol_gets_it_and_one_offering_none_gets_none() {
    let s = start(Setup::default()).await;
    let (_, resp) = tokio_tungstenite::connect_async(offering(&s, "ayaflow"))
        .await
        .expect("opens");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("ayaflow")
    );
    let (_, resp) = tokio_tungstenite::connect_async(s.ws_url("/api/stream"))
        .await
        .expect("opens");
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
}
