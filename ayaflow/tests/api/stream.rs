//! WS /api/stream

use super::*;

#[tokio::test]
async fn stream_pushes_the_live_document_every_second_despite_a_stuck_client() {
    let s = start(Setup {
        publish: Some(Duration::from_secs(1)),
        ..Setup::default()
    })
    .await;
    let mut live = s.ok_json("/api/live").await;
    // Each document has its own time.
    let untimed = |doc: &mut Value| doc.as_object_mut().and_then(|o| o.remove("time_ms"));
    untimed(&mut live).expect("/api/live has time_ms");
    // Connected first and never read from.
    let _stuck = s.connect().await.expect("the stuck client connects");
    let mut ws = s.connect().await.expect("the reader connects");
    eventually("both clients are counted", || {
        s.state.stats.stream_clients.load(Ordering::Relaxed) == 2
    })
    .await;

    let mut arrivals = Vec::new();
    for _ in 0..4 {
        let frame = next_text(&mut ws).await;
        arrivals.push(Instant::now());
        let mut doc: Value = serde_json::from_str(&frame).expect("frames are JSON");
        untimed(&mut doc).expect("frames have time_ms");
        assert_eq!(doc, live, "each frame is the /api/live document");
    }
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(500) && gap <= Duration::from_millis(2500),
            "frames {gap:?} apart, expected about 1 s"
        );
    }
}

#[tokio::test]
async fn stream_drops_a_client_that_stops_reading_and_keeps_serving_the_others() {
    let (packets, _) = many_connections();
    let s = start(Setup {
        live: packets,
        // ~16 KB frames every 20 ms fill a stuck client's socket buffers within seconds.
        publish: Some(Duration::from_millis(20)),
        limits: StreamLimits {
            max_clients: 4,
            send_timeout: Duration::from_millis(500),
        },
        ..Setup::default()
    })
    .await;

    // A tiny receive buffer (which also turns off its autotuning) so the stuck client's side
    // fills quickly.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = sock.connect(s.addr).await.expect("connect");
    let (stuck, _) = tokio_tungstenite::client_async(s.ws_url("/api/stream"), tcp)
        .await
        .expect("the stuck client connects");

    let mut ws = s.connect().await.expect("the reader connects");
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let stats = s.state.stats.clone();
    eventually("the stuck client is dropped", || {
        stats.stream_dropped_slow.load(Ordering::Relaxed) >= 1
    })
    .await;
    eventually("only the reader is left", || {
        stats.stream_clients.load(Ordering::Relaxed) == 1
    })
    .await;
    let before = received.load(Ordering::Relaxed);
    assert!(
        before > 0,
        "the reader got frames while the other was stuck"
    );
    eventually("the reader still gets frames", || {
        received.load(Ordering::Relaxed) >= before + 10
    })
    .await;
    assert!(!reader.is_finished(), "the reader was not dropped");
    assert_eq!(stats.stream_dropped_slow.load(Ordering::Relaxed), 1);
    drop(stuck);
}

#[tokio::test]
async fn stream_client_cap_gives_503_json_and_frees_slots() {
    let s = start(Setup {
        limits: StreamLimits {
            max_clients: 2,
            ..StreamLimits::default()
        },
        ..Setup::default()
    })
    .await;
    let mut first = s.connect().await.expect("slot 1");
    let _second = s.connect().await.expect("slot 2");
    match s.connect().await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            if let Some(body) = resp.body().as_deref().filter(|b| !b.is_empty()) {
                let v: Value = serde_json::from_slice(body).expect("a JSON body");
                assert!(v["error"].is_string() && v["hint"].is_string(), "{v}");
            }
        }
        Err(e) => panic!("expected a 503 response, got {e}"),
        Ok(_) => panic!("a third client got in past a cap of 2"),
    }
    let reply = s.upgrade_by_hand("/api/stream").await;
    let v = assert_error(&reply, 503, "already 2 stream clients");
    assert!(
        v["hint"].as_str().is_some_and(|h| h.contains("/api/live")),
        "{v}"
    );
    assert_eq!(s.state.stats.stream_rejected.load(Ordering::Relaxed), 2);

    first.close(None).await.expect("close handshake starts");
    let deadline = Instant::now() + PATIENCE;
    let _third = loop {
        match s.connect().await {
            Ok(ws) => break ws,
            Err(tungstenite::Error::Http(resp)) if resp.status().as_u16() == 503 => {
                assert!(
                    Instant::now() < deadline,
                    "the closed client's slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("connecting after a close: {e}"),
        }
    };
}

#[tokio::test]
async fn stream_refuses_plain_gets_and_parameters_with_json() {
    let s = start(Setup::default()).await;
    let reply = s.get("/api/stream").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_error(&reply, 400, "not a WebSocket upgrade");
    let reply = s.get("/api/stream?limit=5").await;
    assert_error(&reply, 400, "limit");
    match tokio_tungstenite::connect_async(s.ws_url("/api/stream?sort=bytes")).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn shutdown_closes_stream_clients_and_stops_the_server() {
    let s = start(Setup {
        publish: Some(Duration::from_secs(1)),
        ..Setup::default()
    })
    .await;
    let mut ws = s.connect().await.expect("connects");
    eventually("the client is counted", || {
        s.state.stats.stream_clients.load(Ordering::Relaxed) == 1
    })
    .await;
    s.stop.send(true).expect("the server still listens");
    let close = loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the server closes the stream in time")
            .expect("a close frame before the end")
            .expect("a well-formed frame");
        match msg {
            Message::Close(frame) => break frame,
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    let served = tokio::time::timeout(PATIENCE, s.task)
        .await
        .expect("serve returns after shutdown")
        .expect("serve did not panic");
    served.expect("serve ends cleanly");
    assert!(
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("http://{}/healthz", s.addr))
            .send()
            .await
            .is_err(),
        "nothing listens after shutdown"
    );
}

/// A web page of another origin cannot open the stream (403, counted); the agent's own origin
/// and clients without `Origin` can. Clients send nothing, and one that sends a large message
/// is cut off rather than buffered.
#[tokio::test]
async fn stream_refuses_foreign_origins_and_large_client_messages() {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let s = start(Setup {
        publish: Some(Duration::from_millis(200)),
        ..Setup::default()
    })
    .await;
    let with_origin = |origin: &str| {
        let mut req = s.ws_url("/api/stream").into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    match tokio_tungstenite::connect_async(with_origin("http://evil.example")).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let own = format!("http://{}", s.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(with_origin(&own))
        .await
        .expect("the agent's own origin is served");
    let frame = next_text(&mut ws).await;
    assert!(frame.contains("connections"), "{frame}");
    let metrics = s.get("/metrics").await.body;
    assert!(
        metrics.contains("ayaflow_stream_refused_origin_total 1"),
        "{metrics}"
    );
    // A 1 MiB message from the client ends its connection.
    ws.send(Message::Text("x".repeat(1 << 20).into()))
        .await
        .ok();
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection ends");
}
