//! The top connections by each sort key, built off the capture path's locks and shared by every
//! reader (`/api/live`, each stream frame) until the next one is built.
//!
//! Why a published snapshot rather than a ranking kept up to date on every packet: there are
//! four sort keys, each would need an ordered index updated per packet (a cost on the capture
//! path for every connection, watched or not), while a snapshot costs one pass over the table
//! per tick, and only while someone reads it. The pass copies one shard at a time out of its
//! lock (a few thousand entries, tens of microseconds) and ranks the copy outside it, so
//! capture never waits for the walk; readers only clone an `Arc`.
//!
//! [`LiveRanking`] builds on demand: a tick rebuilds it only if someone read it within
//! [`DEMAND_WINDOW`], so an agent nobody watches spends nothing on it, and a reader that finds
//! it older than [`MAX_AGE`] (nobody watched, or the builder is behind) builds it itself. Both
//! may block for the length of a build: call them off the async workers.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering as AtomicOrdering},
    },
    time::{Duration, Instant},
};

use super::*;
use crate::sync::lock;

/// How old a ranking may be when a reader gets it: two ticks of the agent (250 ms each), so
/// that a build that ends a little after its tick still counts as current.
pub const MAX_AGE: Duration = Duration::from_millis(500);

/// A tick rebuilds the ranking if it was read within this long: longer than the stream's
/// period (1 s), so a connected stream client keeps every frame current.
pub const DEMAND_WINDOW: Duration = Duration::from_secs(2);

/// The top connections by every [`SortKey`], as of one pass over the table.
#[derive(Debug)]
pub struct Ranking {
    /// Per [`SortKey::ALL`] index: the highest `k` active connections, highest first.
    by: [Vec<ConnectionSnapshot>; SortKey::ALL.len()],
    /// When the pass started.
    built_at: Instant,
}

impl Ranking {
    /// A ranking of nothing (before the first pass), dated `built_at`.
    fn empty(built_at: Instant) -> Ranking {
        Ranking {
            by: Default::default(),
            built_at,
        }
    }

    /// The `n` highest by `sort` (fewer if the pass kept fewer), highest first.
    pub fn top(&self, n: usize, sort: SortKey) -> Vec<ConnectionSnapshot> {
        let all = &self.by[sort.index()];
        all[..n.min(all.len())].to_vec()
    }

    /// When the pass this ranking came from started.
    pub fn built_at(&self) -> Instant {
        self.built_at
    }
}

/// The rank of `s` under `sort`: smaller is higher. Ties on the counter are broken by the
/// oriented tuple, ascending, so the order is the same on every pass; no two connections share
/// an oriented tuple, so no two ranks are equal.
fn rank(s: &ConnectionSnapshot, sort: SortKey) -> (Reverse<u64>, &FiveTuple) {
    (Reverse(primary(s, sort)), &s.tuple)
}

fn primary(s: &ConnectionSnapshot, sort: SortKey) -> u64 {
    match sort {
        SortKey::Packets => s.packets,
        SortKey::Bytes => s.bytes,
        SortKey::LastSeen => s.last_seen_unix_ns,
        SortKey::FirstSeen => s.first_seen_unix_ns,
    }
}

/// The `k` best of a stream of connections under one sort key, in O(len) plus a selection per
/// `k` accepted: once `k` are held, anything ranking below the `k`-th is refused by comparing
/// the counter alone, without building its snapshot.
struct Selector {
    sort: SortKey,
    k: usize,
    held: Vec<ConnectionSnapshot>,
    /// Counter and tuple of the `k`-th best so far, once `k` are held.
    bar: Option<(u64, FiveTuple)>,
}

impl Selector {
    fn new(sort: SortKey, k: usize) -> Selector {
        Selector {
            sort,
            k,
            held: Vec::new(),
            bar: None,
        }
    }

    fn offer(&mut self, key: &FiveTuple, e: &Entry) {
        let counter = match self.sort {
            SortKey::Packets => e.total_packets(),
            SortKey::Bytes => e.total_bytes(),
            SortKey::LastSeen => e.last_seen,
            SortKey::FirstSeen => e.first_seen,
        };
        if let Some((bar, bar_tuple)) = &self.bar
            && (counter < *bar || (counter == *bar && e.oriented(key) > *bar_tuple))
        {
            return;
        }
        self.held.push(e.snapshot(key));
        if self.held.len() >= self.k.saturating_mul(2) {
            self.keep_best();
        }
    }

    /// Keeps the best `k` of what is held and raises the bar to the `k`-th.
    fn keep_best(&mut self) {
        let sort = self.sort;
        if self.held.len() > self.k {
            self.held
                .select_nth_unstable_by(self.k - 1, |a, b| rank(a, sort).cmp(&rank(b, sort)));
            self.held.truncate(self.k);
        }
        if self.held.len() == self.k
            && let Some(worst) = self
                .held
                .iter()
                .max_by(|a, b| rank(a, sort).cmp(&rank(b, sort)))
        {
            self.bar = Some((primary(worst, sort), worst.tuple));
        }
    }

    fn finish(mut self) -> Vec<ConnectionSnapshot> {
        self.keep_best();
        let sort = self.sort;
        self.held
            .sort_unstable_by(|a, b| rank(a, sort).cmp(&rank(b, sort)));
        self.held
    }
}

impl ConnectionTable {
    /// One pass over the table: the `k` highest active connections by every sort key. Holds
    /// each shard's lock only to copy its entries out.
    pub fn rank(&self, k: usize) -> Ranking {
        let built_at = Instant::now();
        if k == 0 {
            return Ranking::empty(built_at);
        }
        let mut selectors = SortKey::ALL.map(|s| Selector::new(s, k));
        let mut copy: Vec<(FiveTuple, Entry)> = Vec::new();
        for shard in self.shards() {
            copy.clear();
            copy.extend(self.lock_shard(shard).open());
            for (key, e) in &copy {
                for s in &mut selectors {
                    s.offer(key, e);
                }
            }
        }
        Ranking {
            by: selectors.map(Selector::finish),
            built_at,
        }
    }

    /// The `n` active connections ranking highest by `sort`, highest first: a pass of
    /// [`ConnectionTable::rank`] for one caller (tests, tools); the agent shares one through
    /// [`LiveRanking`].
    pub fn top(&self, n: usize, sort: SortKey) -> Vec<ConnectionSnapshot> {
        self.rank(n).top(n, sort)
    }
}

/// The ranking the agent's readers share: replaced whole by each build, so a reader holding
/// one never holds up capture or the next build.
pub struct LiveRanking {
    table: Arc<ConnectionTable>,
    /// How many connections each sort key keeps: the API's largest `limit`.
    k: usize,
    /// The latest ranking; its lock is held only to clone or replace the `Arc`.
    current: Mutex<Arc<Ranking>>,
    /// One build at a time: a reader that finds the ranking stale while a build runs waits for
    /// that build rather than starting another.
    building: Mutex<()>,
    /// Nanoseconds after `epoch` of the latest read.
    last_read_ns: AtomicU64,
    epoch: Instant,
}

impl LiveRanking {
    /// Shares rankings of the top `k` of `table` per sort key. Nothing is built until read.
    pub fn new(table: Arc<ConnectionTable>, k: usize) -> LiveRanking {
        let epoch = Instant::now();
        // Stale from the start: the first reader builds.
        let stale = epoch.checked_sub(MAX_AGE * 2).unwrap_or(epoch);
        LiveRanking {
            table,
            k,
            current: Mutex::new(Arc::new(Ranking::empty(stale))),
            building: Mutex::new(()),
            last_read_ns: AtomicU64::new(0),
            epoch,
        }
    }

    /// A ranking at most [`MAX_AGE`] old: the shared one, or, if that is older, a new one this
    /// call builds (or waits for). Blocks for at most one build.
    pub fn get(&self) -> Arc<Ranking> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.last_read_ns.store(now.max(1), AtomicOrdering::Relaxed);
        let current = lock(&self.current).clone();
        if current.built_at.elapsed() <= MAX_AGE {
            return current;
        }
        let _building = lock(&self.building);
        let current = lock(&self.current).clone();
        if current.built_at.elapsed() <= MAX_AGE {
            // Built while this call waited.
            return current;
        }
        self.build()
    }

    /// The tick's part: rebuilds the ranking if it was read within [`DEMAND_WINDOW`]; returns
    /// true if and only if it did.
    pub fn refresh(&self) -> bool {
        let read = self.last_read_ns.load(AtomicOrdering::Relaxed);
        let now = self.epoch.elapsed().as_nanos() as u64;
        if read == 0 || now.saturating_sub(read) > DEMAND_WINDOW.as_nanos() as u64 {
            return false;
        }
        let _building = lock(&self.building);
        self.build();
        true
    }

    /// Builds, publishes and returns a new ranking; the caller holds `building`.
    fn build(&self) -> Arc<Ranking> {
        let fresh = Arc::new(self.table.rank(self.k));
        *lock(&self.current) = fresh.clone();
        fresh
    }
}
