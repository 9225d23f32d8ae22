//! The link watcher (`ayaflow::links`) in a network namespace of its own: links created,
//! renamed, set up, deleted, created again, moved in and out, each reported once, in order,
//! with the kernel's names and ifindexes.

use std::{process::Command, sync::mpsc, thread, time::Duration};

use ayaflow::links::{self, Link, LinkEvent};
use integration_test::netns::{enter, ip};
use tokio::sync::oneshot;

/// How long each expected event may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;

/// Network namespaces deleted on drop, even when the test panics.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The ifindex of `name` in namespace `ns`, from `ip -o link show` (`7: name@peer: <...>`).
fn ifindex(ns: &str, name: &str) -> u32 {
    let out = ip(&["-n", ns, "-o", "link", "show", "dev", name]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {text:?}"))
}

fn veth(ns: &str, name: &str, up: bool) -> Link {
    Link {
        ifindex: ifindex(ns, name),
        name: name.to_owned(),
        link_type: ARPHRD_ETHER,
        up,
    }
}

/// The watcher running in namespace `ns`, on a thread of its own with a current-thread
/// runtime; its events forwarded to a std channel the test can wait on with a timeout.
struct Watcher {
    initial: Vec<Link>,
    events: mpsc::Receiver<LinkEvent>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(ns: &str) -> Watcher {
        let path = format!("/var/run/netns/{ns}");
        let (initial_tx, initial_rx) = mpsc::channel();
        let (events_tx, events) = mpsc::channel();
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            enter(&path);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a tokio runtime");
            runtime.block_on(async move {
                let mut watch = links::watch_links(links::EVENTS_CAPACITY)
                    .await
                    .unwrap_or_else(|e| panic!("starting the link watcher: {e}"));
                initial_tx
                    .send(watch.links.clone())
                    .expect("the test waits for the initial links");
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        event = watch.events.recv() => match event {
                            Some(e) => {
                                if events_tx.send(e).is_err() {
                                    break;
                                }
                            }
                            None => panic!("the watcher stopped: {:?}", watch.task.await),
                        },
                    }
                }
                drop(watch.events);
                let ended = tokio::time::timeout(EVENT_TIMEOUT, watch.task).await;
                assert!(
                    matches!(ended, Ok(Ok(Ok(())))),
                    "the watcher's task did not end cleanly once its receiver was dropped: \
                     {ended:?}"
                );
            });
        });
        let initial = initial_rx
            .recv_timeout(EVENT_TIMEOUT)
            .expect("the watcher lists the links at start");
        Watcher {
            initial,
            events,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The next `n` events, sorted (for steps that change two links at once, whose order is
    /// the kernel's business).
    fn next(&self, n: usize, step: &str) -> Vec<LinkEvent> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.events.recv_timeout(EVENT_TIMEOUT) {
                Ok(e) => got.push(e),
                Err(e) => panic!(
                    "{step}: {e} waiting {EVENT_TIMEOUT:?} for event {} of {n}; got {got:?}",
                    got.len() + 1
                ),
            }
        }
        got.sort_by_key(|e| format!("{e:?}"));
        got
    }

    fn expect(&self, step: &str, mut expected: Vec<LinkEvent>) {
        expected.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(self.next(expected.len(), step), expected, "{step}");
    }

    /// Stops the watcher and surfaces its thread's panic, if any.
    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("the watcher thread panicked");
        }
    }
}

fn removed(link: &Link) -> LinkEvent {
    LinkEvent::Removed {
        ifindex: link.ifindex,
        name: link.name.clone(),
    }
}

#[test]
fn links_are_followed_as_they_come_change_and_go() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates network namespaces and needs root (euid is {euid}): run `cargo \
         xtask test` as root"
    );
    let tag = format!("lw{}", std::process::id());
    let (watched, other) = (format!("{tag}w"), format!("{tag}o"));
    ip(&["netns", "add", &watched]);
    let _namespaces = Namespaces(vec![watched.clone(), other.clone()]);
    ip(&["netns", "add", &other]);
    let w = watched.as_str();

    let watcher = Watcher::start(w);
    assert_eq!(
        watcher.initial,
        [Link {
            ifindex: ifindex(w, "lo"),
            name: "lo".to_owned(),
            link_type: ARPHRD_LOOPBACK,
            up: false,
        }],
        "a new namespace has only lo, down"
    );

    ip(&[
        "-n", w, "link", "add", "lwa", "type", "veth", "peer", "name", "lwb",
    ]);
    let (a, b) = (veth(w, "lwa", false), veth(w, "lwb", false));
    watcher.expect(
        "veth pair created",
        vec![LinkEvent::Added(a.clone()), LinkEvent::Added(b.clone())],
    );

    ip(&["-n", w, "link", "set", "lwa", "name", "lwc"]);
    let c = veth(w, "lwc", false);
    assert_eq!(c.ifindex, a.ifindex, "a rename keeps the ifindex");
    watcher.expect(
        "renamed",
        vec![LinkEvent::Changed {
            before: a.clone(),
            now: c.clone(),
        }],
    );

    ip(&["-n", w, "link", "set", "lwc", "up"]);
    let c_up = veth(w, "lwc", true);
    watcher.expect(
        "set up",
        vec![LinkEvent::Changed {
            before: c.clone(),
            now: c_up.clone(),
        }],
    );

    // The kernel closes an up link before unregistering it: it is seen going down first.
    ip(&["-n", w, "link", "del", "lwc"]);
    watcher.expect(
        "veth pair deleted",
        vec![
            LinkEvent::Changed {
                before: c_up.clone(),
                now: c.clone(),
            },
            removed(&c),
            removed(&b),
        ],
    );

    ip(&[
        "-n", w, "link", "add", "lwa", "type", "veth", "peer", "name", "lwb",
    ]);
    let (a2, b2) = (veth(w, "lwa", false), veth(w, "lwb", false));
    assert!(
        a2.ifindex != a.ifindex && b2.ifindex != b.ifindex,
        "created again, with new ifindexes: {a2:?} {b2:?} after {a:?} {b:?}"
    );
    watcher.expect(
        "the same names created again",
        vec![LinkEvent::Added(a2), LinkEvent::Added(b2)],
    );

    ip(&[
        "-n", &other, "link", "add", "lwm", "type", "veth", "peer", "name", "lwn",
    ]);
    ip(&["-n", &other, "link", "set", "lwm", "netns", w]);
    let m = veth(w, "lwm", false);
    watcher.expect(
        "moved in from another namespace",
        vec![LinkEvent::Added(m.clone())],
    );

    ip(&["-n", w, "link", "set", "lwm", "netns", &other]);
    watcher.expect("moved out to another namespace", vec![removed(&m)]);

    // Last, a change that shows nothing else was reported after the move out.
    ip(&["-n", w, "link", "set", "lo", "up"]);
    let lo = watcher.initial[0].clone();
    watcher.expect(
        "lo set up",
        vec![LinkEvent::Changed {
            before: lo.clone(),
            now: Link { up: true, ..lo },
        }],
    );
    watcher.stop();
}
