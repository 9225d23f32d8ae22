//! The connection bounds of `api::serve`: header-read timeout, connection cap, bounded shutdown

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::*;

/// A complete request, as a well-behaved HTTP/1.1 client sends it (keep-alive by default).
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: ayaflow\r\n\r\n";

/// A request line and one header, and then nothing: the client never finishes its headers.
const PARTIAL: &[u8] = b"GET /api/live HTTP/1.1\r\nHost: ayaflow\r\n";

/// Longer than any test here runs: a connection this timeout would close stays open.
const NEVER: Duration = Duration::from_secs(600);

/// How long a client beyond the cap must go unanswered. Only a wait can show that something
/// does not happen; a correct server never fails this check, however slow the machine.
const NOT_SERVED: Duration = Duration::from_millis(500);

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .expect("the server's port takes connections")
}

/// Reads until the server closes `socket` (end of file, or a reset) and returns when that was;
/// whatever it sends before (a 408, say) is skipped. Panics if it is still open after
/// `PATIENCE`.
async fn closed_by_server(socket: &mut TcpStream) -> Instant {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut buf = [0; 1024];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Instant::now(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server left the connection open for {PATIENCE:?}"),
        }
    }
}

/// Reads one response with a `content-length` body from `socket`: (status, body).
async fn read_response(socket: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = socket.read(&mut buf).await.expect("the response arrives");
        assert!(n > 0, "closed before a whole response: {data:?}");
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("a content-length header")
            .trim()
            .parse()
            .expect("a numeric content-length");
        let body = &text[end + 4..];
        if body.len() >= length {
            let status = head[9..12].parse().expect("a status code");
            return (status, body.to_string());
        }
    }
}

/// Sends `GET /healthz` on `socket` and reads the answer, keeping the connection open.
async fn healthz_on(socket: &mut TcpStream) -> (u16, String) {
    socket
        .write_all(HEALTHZ)
        .await
        .expect("the request is sent");
    read_response(socket).await
}

/// Reads the unlabelled sample `name` off the classic text format.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .expect("a numeric sample")
}

#[tokio::test]
async fn clients_that_do_not_finish_their_headers_are_closed_after_the_header_timeout() {
    let timeout = Duration::from_secs(1);
    let s = start(Setup {
        serve: ServeLimits {
            header_read_timeout: timeout,
            ..ServeLimits::default()
        },
        ..Setup::default()
    })
    .await;
    let began = Instant::now();
    let mut partial = connect(s.addr).await;
    partial.write_all(PARTIAL).await.expect("sent");
    // Connects and sends nothing at all.
    let mut silent = connect(s.addr).await;
    // Others are served meanwhile. (On connections of their own: a pooled one, idle as long
    // as the timeout, would be closed by it too, racing the next request.)
    assert_eq!(healthz_on(&mut connect(s.addr).await).await.0, 200);

    let (partial_closed, silent_closed) = tokio::join!(
        closed_by_server(&mut partial),
        closed_by_server(&mut silent)
    );
    for (who, closed) in [("partial", partial_closed), ("silent", silent_closed)] {
        assert!(
            closed - began >= timeout,
            "the {who} client was closed after {:?}, before the header timeout",
            closed - began
        );
    }
    assert_eq!(
        healthz_on(&mut connect(s.addr).await).await.0,
        200,
        "the server goes on"
    );
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_waits_until_a_connection_closes() {
    const CAP: usize = 3;
    let s = start(Setup {
        serve: ServeLimits {
            max_connections: CAP,
            // The held connections stay open for the whole test.
            header_read_timeout: NEVER,
            ..ServeLimits::default()
        },
        ..Setup::default()
    })
    .await;
    let stats = s.state.stats.clone();
    // CAP clients that were served and keep their connection alive, idle.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut c = connect(s.addr).await;
        assert_eq!(healthz_on(&mut c).await, (200, "ok".into()));
        held.push(c);
    }
    eventually("every slot is held and the cap is reached", || {
        stats.connections.load(Ordering::Relaxed) == CAP as u64
            && stats.connection_cap_reached.load(Ordering::Relaxed) >= 1
    })
    .await;

    // One more gets a TCP connection (the kernel's listen backlog) and no answer.
    let mut waiting = connect(s.addr).await;
    waiting.write_all(HEALTHZ).await.expect("sent");
    let mut answer = tokio::spawn(async move {
        let reply = read_response(&mut waiting).await;
        (reply, waiting)
    });
    assert!(
        tokio::time::timeout(NOT_SERVED, &mut answer).await.is_err(),
        "a client beyond the cap of {CAP} was served"
    );
    assert_eq!(stats.connections.load(Ordering::Relaxed), CAP as u64);

    // One held client leaves: the waiting one is accepted and answered.
    drop(held.pop());
    let (reply, waiting) = tokio::time::timeout(PATIENCE, answer)
        .await
        .expect("the waiting client is served once a slot frees")
        .expect("the reader did not panic");
    assert_eq!(reply, (200, "ok".into()));

    // It leaves too, and a scrape (one more connection) sees the two held ones and itself.
    drop(waiting);
    let text = s.get("/metrics").await.body;
    assert_eq!(
        sample(&text, "ayaflow_api_connections"),
        CAP as f64,
        "{text}"
    );
    assert!(sample(&text, "ayaflow_api_connection_cap_reached_total") >= 1.0);
}

#[tokio::test]
async fn shutdown_ends_in_bounded_time_while_a_slowloris_client_holds_a_connection() {
    let s = start(Setup {
        serve: ServeLimits {
            // So the header timeout cannot be what closes it: the drain does.
            header_read_timeout: NEVER,
            drain_timeout: Duration::from_secs(1),
            ..ServeLimits::default()
        },
        ..Setup::default()
    })
    .await;
    let stats = s.state.stats.clone();
    let mut slow = connect(s.addr).await;
    slow.write_all(PARTIAL).await.expect("sent");
    eventually("the server holds the connection", || {
        stats.connections.load(Ordering::Relaxed) == 1
    })
    .await;

    s.stop.send(true).expect("the server still listens");
    tokio::time::timeout(PATIENCE, s.task)
        .await
        .expect("serve returns while the slowloris client is still connected")
        .expect("serve did not panic")
        .expect("serve ends cleanly");
    closed_by_server(&mut slow).await;
    assert_eq!(stats.connections.load(Ordering::Relaxed), 0);
}
