//! Section 5: what the web UI costs the agent. The raw-mode agent of section 4 sees steady
//! traffic (1,000 flows at a fixed rate, so the stream's frames carry a full top 50), and its
//! CPU is read from /proc over the same length of time twice: with no page open, and with the
//! live view open in headless Chromium (which holds the `WS /api/stream`, gets a frame a second
//! and redraws). A hidden tab closes its stream (tests/ui checks it), so it costs what no page
//! costs. The browser's own CPU is reported beside it; it is the viewer's machine's, not the
//! node's.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    http::{self, metric},
    netns::Pair,
    observer::{AGENT_PORT, Running},
    procstat::{self, Cpu},
    sender::{self, Limits, Traffic},
};

/// Packets per second of the background traffic.
pub const RATE: u64 = 2_000;
/// Flows of the background traffic.
pub const FLOWS: u32 = 1_000;

/// Section 5's numbers.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct UiResult {
    /// Length of each measurement.
    pub secs: f64,
    /// The agent's CPU with no page open.
    pub idle: Cpu,
    /// The agent's CPU with the live view open.
    pub open: Cpu,
    /// Chromium's CPU (all its processes) meanwhile.
    pub browser: Cpu,
    /// Bytes of one stream frame (the `/api/live` document with the top 50).
    pub frame_bytes: usize,
    /// The embedded page and its assets, bytes.
    pub ui_bytes: usize,
}

/// Headless Chromium on the page, killed (the whole process tree) on drop.
struct Chromium(Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        for p in procstat::tree(pid).into_iter().rev() {
            if p != pid {
                // SAFETY: kill on a descendant of our own child.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stream_clients(agent: &Running) -> Option<u64> {
    metric(&agent.metrics()?, "ayaflow_stream_clients")
}

/// The agent's CPU over `secs`.
fn measure(agent: &Running, secs: f64) -> Cpu {
    let before = agent.cpu();
    std::thread::sleep(Duration::from_secs_f64(secs));
    agent.cpu().since(&before)
}

pub fn run(pair: &Pair, agent_bin: &Path, dir: &Path, secs: f64) -> Result<UiResult> {
    if !Path::new("/usr/bin/chromium").exists() {
        bail!(
            "section 5 opens the web UI in Chromium: apt-get install chromium (cargo xtask bench does)"
        );
    }
    std::fs::create_dir_all(dir)?;
    let agent = Running::start_agent(pair, dir, agent_bin, &dir.join("ayaflow.db"))?;
    let total = Duration::from_secs_f64(secs * 2.0 + 60.0);
    let (ns_a, if_a) = (pair.ns_a.clone(), pair.if_a.clone());
    let traffic = std::thread::spawn(move || {
        sender::send(
            &ns_a,
            &if_a,
            Traffic {
                v6: false,
                flows: FLOWS,
                paged: false,
            },
            Limits {
                packets: RATE * total.as_secs(),
                max_time: total,
                rate: Some(RATE),
            },
        )
    });
    // Every flow in the table before measuring.
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent
        .metrics()
        .and_then(|t| metric(&t, "ayaflow_active_connections"))
        .unwrap_or(0)
        < u64::from(FLOWS)
    {
        if Instant::now() > deadline {
            bail!(
                "the agent did not see {FLOWS} flows within 30 s: {}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let frame_bytes = http::get(&pair.ns_b, AGENT_PORT, "/api/live?limit=50")
        .map(|(_, b)| b.len())
        .unwrap_or(0);
    let idle = measure(&agent, secs);

    let profile = dir.join("chromium-profile");
    let browser = Chromium(
        Pair::command(&pair.ns_b, "chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1366,800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("http://127.0.0.1:{AGENT_PORT}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromium")?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream_clients(&agent) != Some(1) {
        if Instant::now() > deadline {
            bail!("the page opened no stream within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let browser_before = procstat::tree_cpu(browser.0.id() as i32);
    let open = measure(&agent, secs);
    let browser_cpu = procstat::tree_cpu(browser.0.id() as i32).since(&browser_before);
    drop(browser);
    agent.stop()?;
    let _ = traffic.join();
    let _ = std::fs::remove_dir_all(dir);
    Ok(UiResult {
        secs,
        idle,
        open,
        browser: browser_cpu,
        frame_bytes,
        ui_bytes: ayaflow::api::ui::total_bytes(),
    })
}
