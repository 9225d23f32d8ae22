//! 400, 403, 404, 405, health

use super::*;

#[tokio::test]
async fn bad_parameters_get_400_naming_the_parameter() {
    let s = start(Setup {
        raw: raw_rows(3),
        ..Setup::default()
    })
    .await;
    // (path, the parameter the answer must name)
    let cases = [
        ("/api/live?limit=abc", "limit"),
        ("/api/live?limit=-1", "limit"),
        ("/api/live?limit=0", "limit"),
        ("/api/live?limit=1001", "limit"),
        ("/api/live?limit=", "limit"),
        ("/api/live?limit=2.5", "limit"),
        ("/api/live?limit=99999999999999999999999", "limit"),
        ("/api/live?sort=size", "sort"),
        ("/api/live?sort=", "sort"),
        ("/api/live?top=5", "top"),
        ("/api/history?limit=x", "limit"),
        ("/api/history?limit=-5", "limit"),
        ("/api/history?limit=0", "limit"),
        ("/api/history?before=0", "before"),
        ("/api/history?before=-1", "before"),
        ("/api/history?before=abc", "before"),
        ("/api/history?from=-1", "from"),
        ("/api/history?from=yesterday", "from"),
        ("/api/history?to=99999999999", "to"),
        ("/api/history?from=200&to=100", "to"),
        ("/api/history?port=65536", "port"),
        ("/api/history?port=-1", "port"),
        ("/api/history?port=http", "port"),
        ("/api/history?proto=SCTP", "proto"),
        ("/api/history?proto=IP-300", "proto"),
        ("/api/history?proto=ETH-0xZZ", "proto"),
        ("/api/history?direction=up", "direction"),
        ("/api/history?direction=INGRESS", "direction"),
        ("/api/history?kind=flows", "kind"),
        ("/api/history?addr=not-an-ip", "addr"),
        ("/api/history?addr=10.0.0.0/8", "addr"),
        ("/api/history?offset=100", "offset"),
        ("/api/history?limit=5&bogus=1", "bogus"),
        ("/api/stream?limit=5", "limit"),
    ];
    for (path, name) in cases {
        let reply = s.get(path).await;
        let v = assert_error(&reply, 400, name);
        let error = v["error"].as_str().expect("error");
        assert!(
            error.contains(name),
            "{path}: error {error:?} names {name:?}"
        );
        let hint = v["hint"].as_str().expect("hint");
        if error.starts_with("unknown") {
            assert!(hint.starts_with("accepted parameters: "), "{path}: {hint}");
        } else {
            assert!(
                hint.starts_with(&format!("{name} must be ")),
                "{path}: {hint}"
            );
        }
    }
}

#[tokio::test]
async fn peers_outside_allowed_ips_get_403_json_everywhere() {
    let s = start(Setup {
        allowed_ips: vec!["10.0.0.0/8"],
        raw: raw_rows(3),
        publish: Some(Duration::from_secs(1)),
        ..Setup::default()
    })
    .await;
    s.state.ready.store(true, Ordering::Relaxed);
    let paths = [
        "/metrics",
        "/api/live",
        "/api/live?limit=bad",
        "/api/history",
        "/api/history?limit=5",
        "/api/stream",
        "/healthz",
        "/readyz",
        "/no/such/route",
    ];
    for path in paths {
        let reply = s.get(path).await;
        let v = assert_error(&reply, 403, "127.0.0.1");
        assert!(
            v["hint"]
                .as_str()
                .is_some_and(|h| h.contains("allowed_ips")),
            "{path}: {v}"
        );
    }
    assert_error(
        &s.request(reqwest::Method::POST, "/api/live").await,
        403,
        "127.0.0.1",
    );
    // The WebSocket upgrade, from a real client and by hand (to read the body).
    match s.connect().await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        Err(e) => panic!("expected a 403 response, got {e}"),
        Ok(_) => panic!("a denied peer got a stream"),
    }
    assert_error(&s.upgrade_by_hand("/api/stream").await, 403, "127.0.0.1");
    assert_eq!(s.state.stats.stream_clients.load(Ordering::Relaxed), 0);
    let denied = paths.len() as u64 + 3;
    assert_eq!(s.state.stats.denied.load(Ordering::Relaxed), denied);
}

/// With a token: 401 (JSON, `WWW-Authenticate: Bearer`, counted) without it or with another
/// one, the answer with it; the probes stay open; a stream needs it too.
#[tokio::test]
async fn a_token_guards_every_route_but_the_probes() {
    const TOKEN: &str = "s3cret-token-for-the-test";
    let s = start(Setup {
        api_token: Some(TOKEN),
        raw: raw_rows(3),
        ..Setup::default()
    })
    .await;
    s.state.ready.store(true, Ordering::Relaxed);
    let get = |path: &'static str, auth: Option<String>| {
        let mut req = s.client.get(s.url(path));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let guarded = [
        "/metrics",
        "/api/status",
        "/api/live",
        "/api/history",
        "/no/such/route",
    ];
    let wrong = [
        None,
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[1..])),
        Some(format!("bearer {TOKEN}")),
        Some(TOKEN.to_string()),
        Some("Bearer ".to_string()),
    ];
    for path in guarded {
        for auth in &wrong {
            let r = get(path, auth.clone()).await.expect("the server answers");
            assert_eq!(r.status().as_u16(), 401, "{path} with {auth:?}");
            assert_eq!(
                r.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{path}"
            );
            let body: serde_json::Value = r.json().await.expect("a JSON error");
            assert!(
                body["hint"]
                    .as_str()
                    .is_some_and(|h| h.contains("--api-token-file")),
                "{body}"
            );
        }
        let r = get(path, Some(format!("Bearer {TOKEN}"))).await.unwrap();
        let want = if path == "/no/such/route" { 404 } else { 200 };
        assert_eq!(r.status().as_u16(), want, "{path} with the token");
    }
    for probe in ["/healthz", "/readyz"] {
        let r = get(probe, None).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{probe} is open to probes");
    }
    // The stream: refused without the token, served with it.
    match s.connect().await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        Err(e) => panic!("expected a 401 response, got {e}"),
        Ok(_) => panic!("a stream without the token"),
    }
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(s.ws_url("/api/stream"))
            .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("a stream with the token");
    drop(ws);
    let refused = (guarded.len() * wrong.len()) as u64 + 1;
    assert_eq!(s.state.stats.unauthorized.load(Ordering::Relaxed), refused);
    assert_eq!(s.state.stats.denied.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn dual_stack_listener_matches_mapped_ipv4_peers_as_ipv4() {
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let Some(v4_only) = try_start(Setup {
        allowed_ips: vec!["127.0.0.1/32"],
        bind: any6,
        ..Setup::default()
    })
    .await
    else {
        eprintln!("skipping: IPv6 is not available here");
        return;
    };
    let port = v4_only.addr.port();
    let client = &v4_only.client;
    let get = |host: &str| {
        let url = format!("http://{host}:{port}/api/live");
        async move { send(client.get(url)).await }
    };
    let via_v4 = match client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) => {
            // net.ipv6.bindv6only=1: the [::] socket takes no IPv4.
            eprintln!("skipping the IPv4 half: [::] does not accept IPv4 here ({e})");
            false
        }
    };
    if via_v4 {
        // The socket reports ::ffff:127.0.0.1, which must match 127.0.0.1/32.
        assert_eq!(get("127.0.0.1").await.status, 200);
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/api/stream"))
            .await
            .expect("the mapped IPv4 peer may stream");
        drop(ws);
    }
    assert_error(&get("[::1]").await, 403, "::1 is not in allowed_ips");

    let v6_only = start(Setup {
        allowed_ips: vec!["::1/128"],
        bind: any6,
        ..Setup::default()
    })
    .await;
    let port = v6_only.addr.port();
    let client = &v6_only.client;
    let get = |host: &str| {
        let url = format!("http://{host}:{port}/api/live");
        async move { send(client.get(url)).await }
    };
    assert_eq!(get("[::1]").await.status, 200);
    if via_v4 {
        let v = assert_error(&get("127.0.0.1").await, 403, "127.0.0.1");
        // Named as the IPv4 address it is, not as ::ffff:127.0.0.1.
        assert_eq!(v["error"], "127.0.0.1 is not in allowed_ips");
    }
}

#[tokio::test]
async fn health_readiness_and_unknown_routes() {
    let s = start(Setup::default()).await;
    let h = s.get("/healthz").await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok"));
    assert_error(&s.get("/readyz").await, 503, "not ready");
    s.state.ready.store(true, Ordering::Relaxed);
    let r = s.get("/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready"));
    s.state.ready.store(false, Ordering::Relaxed);
    assert_error(&s.get("/readyz").await, 503, "not ready");

    let v = assert_error(&s.get("/api/nope").await, 404, "no such route");
    assert!(
        v["hint"]
            .as_str()
            .is_some_and(|h| h.contains("/api/history")),
        "{v}"
    );
    assert_error(&s.get("/index.html").await, 404, "no such route");
    assert_error(&s.get("/ui/nothing.js").await, 404, "no UI file");
    for path in ["/api/live", "/api/history", "/metrics"] {
        let reply = s.request(reqwest::Method::POST, path).await;
        assert_error(&reply, 405, "GET");
        let reply = s.request(reqwest::Method::DELETE, path).await;
        assert_error(&reply, 405, "GET");
    }
}
