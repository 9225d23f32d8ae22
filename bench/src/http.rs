//! A minimal HTTP/1.1 GET from inside a namespace, and a Prometheus text sample reader.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use crate::netns;

/// GET `path` from 127.0.0.1:`port` inside `ns`: (status, body), or None if nothing answers.
pub fn get(ns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    netns::in_ns(ns, move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Some((status, body))
    })
    .ok()
    .flatten()
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The sum of the samples `name{labels}` selects (every series whose labels include these).
pub fn metric(text: &str, sample: &str) -> Option<u64> {
    ayaflow::metrics::sample_sum(text, sample)
}
