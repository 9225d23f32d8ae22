//! Headless Chromium (chromedriver, Debian `chromium-driver`) or Firefox ESR (geckodriver,
//! built into the project's `.tools/bin` by `cargo xtask setup`; Debian `firefox-esr`) driven
//! over WebDriver inside a test namespace, so the browser reaches the agent's API on that
//! namespace's loopback and nothing else: the namespaces have no route out.
//!
//! Everything here runs on a thread that has joined the namespace ([`in_browser_ns`]): the
//! WebDriver client's sockets, opened by the runtime on that thread, live there too.

use std::{
    future::Future,
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
};

use fantoccini::{Client, ClientBuilder, wd::WebDriverCompatibleCommand};
use serde_json::{Value, json};

use integration_test::{netns::NetPair, wait_for};

/// The WebDriver server's port on the namespace's loopback.
const DRIVER_PORT: u16 = 9515;

/// The narrowest window Firefox makes, CSS pixels.
pub const FIREFOX_MIN_WIDTH: u32 = 500;

/// The browsers the UI is tested in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chromium,
    Firefox,
}

impl Kind {
    /// The WebDriver server of this browser, with what installs it.
    fn driver(self) -> (PathBuf, &'static str) {
        match self {
            Kind::Chromium => (
                "chromedriver".into(),
                "Debian chromium-driver; `cargo xtask setup` installs it",
            ),
            Kind::Firefox => {
                // `cargo xtask setup` builds it into the project's tools; else PATH's.
                let ours =
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/geckodriver");
                let path = if ours.is_file() {
                    ours
                } else {
                    "geckodriver".into()
                };
                (
                    path,
                    "geckodriver from crates.io in .tools/bin; `cargo xtask setup` installs it",
                )
            }
        }
    }

    /// The capabilities of a headless session with a `width` x `height` window, its profile in
    /// `profile` and downloads going to `downloads` without a prompt.
    fn capabilities(self, width: u32, height: u32, profile: &Path, downloads: &Path) -> Value {
        match self {
            Kind::Chromium => json!({
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
                        format!("--user-data-dir={}", profile.display()),
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
            }),
            Kind::Firefox => json!({
                "browserName": "firefox",
                "moz:firefoxOptions": {
                    "binary": "/usr/bin/firefox-esr",
                    "args": [
                        "-headless",
                        format!("--width={width}"),
                        format!("--height={height}"),
                        // geckodriver uses this profile in place, its prefs written into it.
                        "-profile",
                        profile.display().to_string(),
                    ],
                    "prefs": {
                        // Downloads: to `downloads`, no dialog, CSV saved as it comes.
                        "browser.download.dir": downloads.display().to_string(),
                        "browser.download.folderList": 2,
                        "browser.download.useDownloadDir": true,
                        "browser.download.always_ask_before_handling_new_types": false,
                        "browser.download.manager.showWhenStarting": false,
                        "browser.helperApps.neverAsk.saveToDisk": "text/csv",
                        // Nothing of the browser's own (updates, telemetry, safe browsing,
                        // captive portal probes) is wanted; geckodriver turns off the rest.
                        "app.update.disabledForTesting": true,
                        "datareporting.policy.dataSubmissionEnabled": false,
                        "toolkit.telemetry.enabled": false,
                        "browser.safebrowsing.malware.enabled": false,
                        "browser.safebrowsing.phishing.enabled": false,
                        "network.captive-portal-service.enabled": false,
                        "network.connectivity-service.enabled": false,
                    },
                },
            }),
        }
    }
}

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

/// A WebDriver server process and one browser session; both end on drop.
pub struct Browser {
    pub client: Client,
    pub kind: Kind,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts the WebDriver server of `kind` in `ns` (call from [`in_browser_ns`] with the same
    /// `ns`) and a headless browser whose page is `width` x `height` (in Firefox at least
    /// [`FIREFOX_MIN_WIDTH`] wide), downloads going to `downloads`.
    pub async fn start(kind: Kind, ns: &str, width: u32, height: u32, downloads: &Path) -> Browser {
        let (program, installed) = kind.driver();
        let driver = NetPair::command(ns, &program.display().to_string())
            .arg(format!("--port={DRIVER_PORT}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, which the browser it starts joins: see `Driver`.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} ({installed}): {e}", program.display()));
        let driver = Driver(driver);
        wait_for(30, "the WebDriver server to listen", || {
            TcpStream::connect(("127.0.0.1", DRIVER_PORT)).ok()
        });
        let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
        let caps = kind.capabilities(width, height, profile.path(), downloads);
        let caps = caps.as_object().expect("an object").clone();
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{DRIVER_PORT}"))
            .await
            .unwrap_or_else(|e| panic!("a WebDriver session with headless {kind:?}: {e}"));
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
        let inner = client
            .execute("return [window.innerWidth, window.innerHeight];", vec![])
            .await
            .expect("reading the viewport");
        // Firefox makes no window narrower than 500 CSS pixels (headless too, whatever the
        // pixel ratio): its "phone" is that wide.
        let min = if kind == Kind::Firefox {
            FIREFOX_MIN_WIDTH
        } else {
            0
        };
        assert_eq!(
            inner,
            json!([width.max(min), height]),
            "{kind:?}'s viewport"
        );
        Browser {
            client,
            kind,
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

    /// The errors the page met (`ui/errors.js` keeps them: uncaught exceptions, unhandled
    /// rejections, failed loads, CSP violations, `console.error`), and in Chromium also its log's
    /// (level SEVERE, since the last call: failed requests too), but for those containing one of
    /// `allowed`.
    pub async fn errors(&self, allowed: &[&str]) -> Vec<String> {
        let page = self
            .js(
                "return window.ayaflowErrors || ['no window.ayaflowErrors: /ui/errors.js did not run'];",
                vec![],
            )
            .await;
        let mut out: Vec<String> = page
            .as_array()
            .expect("an array")
            .iter()
            .map(|e| format!("page: {}", e.as_str().unwrap_or_default()))
            .collect();
        if self.kind == Kind::Chromium {
            let log = self
                .client
                .issue_cmd(BrowserLog)
                .await
                .expect("chromedriver returns the browser log");
            out.extend(
                log.as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| format!("log: {}", e["message"].as_str().unwrap_or_default())),
            );
        }
        out.retain(|m| !allowed.iter().any(|a| m.contains(a)));
        out
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }
}

/// The WebDriver server and every browser process it started, killed on drop: neither
/// chromedriver nor geckodriver takes its browser with it when killed, so the whole process
/// group goes (ours: the server's group, made for it), then any descendant that left it.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        let mut ours = descendants(pgid);
        // SAFETY: signals the process group we created for the server.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        ours.extend(descendants(pgid));
        for pid in ours {
            // SAFETY: a descendant of the server, which we started.
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
