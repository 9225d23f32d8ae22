//! Runs the real `ayaflow` binary inside a test namespace and talks to its API there.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{netns::NetPair, wait_for};

/// The agent binary built by `cargo xtask test` (target/debug/ayaflow).
pub fn binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/debug/ayaflow");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        bin.display()
    );
    bin
}

/// A running agent in namespace `ns`; killed (SIGKILL) on drop if still running.
pub struct Agent {
    pub child: Child,
    pub ns: String,
    pub port: u16,
    pub stderr_path: PathBuf,
}

impl Agent {
    /// Starts `ayaflow args...` in `ns` with its API on 127.0.0.1:`port` of that namespace,
    /// and waits until `/readyz` answers 200.
    pub fn start(ns: &str, port: u16, dir: &std::path::Path, args: &[&str]) -> Agent {
        Agent::start_wrapped(ns, port, dir, &[], args)
    }

    /// Like [`Agent::start`], with the agent run through `wrapper` (a program and its
    /// arguments that exec the agent, e.g. `setpriv ... --`), so the child pid stays the
    /// agent's.
    pub fn start_wrapped(
        ns: &str,
        port: u16,
        dir: &std::path::Path,
        wrapper: &[&str],
        args: &[&str],
    ) -> Agent {
        let stderr_path = dir.join(format!("agent-{port}.log"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let bin = binary();
        let mut cmd = match wrapper {
            [] => NetPair::command(ns, bin.to_str().unwrap()),
            [program, rest @ ..] => {
                let mut c = NetPair::command(ns, program);
                c.args(rest).arg(&bin);
                c
            }
        };
        let child = cmd
            .args(["--bind-address", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting ayaflow");
        let mut agent = Agent {
            child,
            ns: ns.to_string(),
            port,
            stderr_path,
        };
        wait_for(60, "the agent's /readyz", || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("the agent exited early ({status}): {}", agent.log());
            }
            agent.get("/readyz").filter(|(code, _)| *code == 200)
        });
        agent
    }

    /// Starts the agent on `pair`'s b end (`--interface if_b`), its history in `db`, port 3000
    /// of namespace b, plus `extra` arguments.
    pub fn start_on_b(pair: &NetPair, db: &std::path::Path, extra: &[&str]) -> Agent {
        let dir = db.parent().expect("the database file is in a directory");
        let mut args = vec![
            "--interface",
            &pair.if_b,
            "--db-path",
            db.to_str().expect("UTF-8 path"),
        ];
        args.extend(extra);
        Agent::start(&pair.ns_b, 3000, dir, &args)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// GET `path` from the agent: (status, body), or None if it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.ns, self.port, path)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // `ip netns exec` replaces itself with the agent, so the child pid is the agent's.
        // SAFETY: kill on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_for(60, "the agent to exit after SIGTERM", || {
            self.child.try_wait().ok().flatten()
        });
        std::mem::forget(self);
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET from inside namespace `ns` to 127.0.0.1:`port`.
pub fn http_get(ns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(ns, port, path, &[]).map(|r| (r.status, r.body))
}

/// An HTTP response: status, header block (lower-cased) and body.
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Like [`http_get`], with extra request `headers` (name, value), returning the headers too.
pub fn http_get_with(
    ns: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<Response> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    NetPair::in_ns(ns, move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        let head = head.to_ascii_lowercase();
        let body = if head.contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        Some(Response { status, head, body })
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n..];
        s = s.strip_prefix("\r\n").unwrap_or(s);
    }
    out
}

/// The sum of the samples `name{labels}` selects (every series whose labels include these).
pub fn metric(text: &str, sample: &str) -> Option<u64> {
    ayaflow::metrics::sample_sum(text, sample)
}

/// `Command` helper that asserts success.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
