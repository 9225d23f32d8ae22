//! Headless Chromium driven over WebDriver (chromedriver, Debian `chromium-driver`) inside a
//! test namespace, so the browser reaches the agent's API on that namespace's loopback and
//! nothing else: the namespaces have no route out.
//!
//! Everything here runs on a thread that has joined the namespace ([`in_browser_ns`]): the
//! WebDriver client's sockets, opened by the runtime on that thread, live there too.

use std::{
    future::Future,
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Stdio},
};

use fantoccini::{Client, ClientBuilder, wd::WebDriverCompatibleCommand};
use serde_json::{Value, json};

use integration_test::{netns::NetPair, wait_for};

/// chromedriver's port on the namespace's loopback.
const DRIVER_PORT: u16 = 9515;

/// Runs `f` to completion on a single-threaded runtime on a thread inside namespace `ns`.
pub fn in_browser_ns<T, F>(ns: &str, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    NetPair::in_ns(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime builds")
            .block_on(f())
    })
}

/// A chromedriver process and one browser session; both end on drop.
pub struct Browser {
    pub client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver in `ns` (call from [`in_browser_ns`] with the same `ns`) and a
    /// headless Chromium with a `width` x `height` window, downloads going to `downloads`.
    pub async fn start(ns: &str, width: u32, height: u32, downloads: &Path) -> Browser {
        let driver = NetPair::command(ns, "chromedriver")
            .arg(format!("--port={DRIVER_PORT}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, which the browser it starts joins: see `Driver`.
            .process_group(0)
            .spawn()
            .expect(
                "starting chromedriver (Debian chromium-driver; `cargo xtask setup` installs it)",
            );
        let driver = Driver(driver);
        wait_for(30, "chromedriver to listen", || {
            TcpStream::connect(("127.0.0.1", DRIVER_PORT)).ok()
        });
        let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    // Root in a test: Chromium's sandbox needs an unprivileged user.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                    // Nothing of the browser's own (updates, sync, safe browsing) is wanted.
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--hide-scrollbars",
                    "--force-color-profile=srgb",
                ],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let caps = caps.as_object().expect("an object").clone();
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{DRIVER_PORT}"))
            .await
            .expect("a WebDriver session with headless Chromium");
        // The window includes the browser's own frame: size it so the page gets
        // `width` x `height` (what the screenshots are).
        client
            .set_window_size(width, height)
            .await
            .expect("resizing the window");
        let inner = client
            .execute("return [window.innerWidth, window.innerHeight];", vec![])
            .await
            .expect("reading the viewport");
        let px = |i: usize| inner[i].as_u64().unwrap_or(0) as u32;
        let (w, h) = (
            width + width.saturating_sub(px(0)),
            height + height.saturating_sub(px(1)),
        );
        client
            .set_window_size(w, h)
            .await
            .expect("resizing the window");
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("running {script:?}: {e}"))
    }

    /// Polls `script` every 100 ms until it returns something truthy (not null, false, 0, "",
    /// or an empty array), or panics after `secs` with `what` and the last value.
    pub async fn until(&self, secs: u64, what: &str, script: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let v = self.js(script, vec![]).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(_) => true,
                Value::Bool(true) => true,
            };
            if truthy {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {secs} s waiting for {what}; last value {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The browser's console and network log since the last call: (level, message).
    pub async fn log(&self) -> Vec<(String, String)> {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("chromedriver returns the browser log");
        entries
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or("").to_string(),
                            e["message"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }
}

/// chromedriver and every browser process it started, killed on drop: chromedriver does not
/// take its browser with it when killed, so the whole process group goes (ours: chromedriver's
/// group, made for it), then any descendant that left it.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        let mut ours = descendants(pgid);
        // SAFETY: signals the process group we created for chromedriver.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        ours.extend(descendants(pgid));
        for pid in ours {
            // SAFETY: a descendant of chromedriver, which we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The processes descended from `root` (from /proc's parent links), `root` excluded.
fn descendants(root: i32) -> Vec<i32> {
    let mut links = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name (which may hold spaces): state, ppid, ...
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            links.push((pid, ppid));
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            links
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out.remove(0);
    out
}

/// chromedriver's `POST /session/{id}/se/log` with `{"type": "browser"}`: the console
/// messages, failed loads and CSP violations, which W3C WebDriver has no command for.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_string()),
        )
    }
}
