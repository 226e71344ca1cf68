/*!
Remote hits: on a local miss the wrapper asks for the crate and waits
(within `cache.daemon_wait`); the daemon lists `{prefix}/{crate}/` and
pulls what the store lacks with `transfer::pull`, exactly as `kache sync
--pull` does (verified, imported atomically). The first request from a
workspace also prefetches the crates of its Cargo.lock.

Coalescing: concurrent requests for one crate (and version) share one
fetch, through one `Mutex<HashMap>` of slots with its own `Condvar`; a
crate fetched in the last `FRESH` is not listed again. A build's fetch
runs on a thread of its own, so the build can stop waiting for it (see
`pace`: never longer than compiling would take) while it goes on to
fill the store; prefetches run on the fetch pool; both take their
permits ahead of the uploads. A failing remote pauses them all (the
breaker); a slow one only stops the waits.
*/

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::pace::{Now, Pace};
use super::protocol::FetchReply;
use super::shared::{Live, Shared, add};
use super::{lock, log};
use crate::lockfile;
use crate::remote::{Remote, layout};
use crate::store::CrateName;
use crate::transfer::plan::{self, PullFilter};
use crate::transfer::report::Outcome;
use crate::transfer::{self, Pull};
use crate::trust::{Policy, TrustedKey};

/// A crate fetched this recently is not listed again.
const FRESH: Duration = Duration::from_secs(30);

/// Most refusals remembered (then forgotten all at once).
const MAX_REFUSALS: usize = 100_000;

/// A build's request for a crate's remote entries.
pub(super) struct Ask<'a> {
    /// The remote it uses (the daemon serves only its own).
    pub(super) remote: &'a str,
    pub(super) crate_name: &'a CrateName,
    /// Its workspace, whose Cargo.lock is prefetched.
    pub(super) workspace: Option<String>,
    pub(super) version: Option<&'a str>,
    /// How long it waits.
    pub(super) wait_ms: u64,
    pub(super) trust: Trust,
}

/// The trusted keys of the build that asked (none: nothing is verified).
pub(super) type Trust = Arc<Vec<TrustedKey>>;

/// The trusted keys as one string: fetches for builds that trust the
/// same keys are shared, and refusals are remembered by it.
fn trust_id(t: &[TrustedKey]) -> String {
    let mut keys: Vec<String> = t.iter().map(ToString::to_string).collect();
    keys.sort();
    keys.join(",")
}

#[derive(Default)]
struct Slot {
    /// When the fetch under way started.
    running: Option<Instant>,
    /// When the last one ended.
    at: Option<Instant>,
}

/// What a caller does about a crate's fetch.
enum Claim {
    /// Run it: the slot is now marked running.
    Mine,
    /// Another caller's is under way.
    Running,
    /// One ended within `FRESH`.
    Fresh,
    Paused,
}

/// The fetches under way and done, and what they brought.
#[derive(Default)]
pub(super) struct Fetches {
    /// By `crate` or `crate@version`.
    slots: Mutex<HashMap<String, Slot>>,
    cv: Condvar,
    /// Cargo.lock files prefetched, with their mtime.
    prefetched: Mutex<HashSet<(PathBuf, u64)>>,
    /// The toolchain id the last build asked with: what a pull keeps.
    toolchain: Mutex<Option<String>>,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    /// Remote entries refused: not signed by a trusted key.
    pub(super) refused: AtomicU64,
    /// The entries refused, by the trusted keys they were refused for
    /// (see `Trust::id`): not downloaded again for those keys.
    refusals: Mutex<HashSet<(String, plan::EntryId)>>,
    pub(super) entries_fetched: AtomicU64,
    /// What waits are decided from.
    pace: Mutex<Pace>,
    /// Requests answered at once: compiling was expected to be faster.
    pub(super) not_waited: AtomicU64,
}

impl Fetches {
    /// Keeps the toolchain a build asked with, when it says.
    pub(super) fn set_toolchain(&self, toolchain: Option<String>) {
        if toolchain.is_some() {
            *lock(&self.toolchain) = toolchain;
        }
    }

    /// Forgets which crates were fetched (the remote changed).
    pub(super) fn forget(&self) {
        lock(&self.slots).clear();
    }

    /// Answers a build's request (see [`Ask`]).
    pub(super) fn request(self: &Arc<Self>, sh: &Arc<Shared>, ask: Ask<'_>) -> FetchReply {
        let Ask {
            remote,
            crate_name,
            workspace,
            version,
            wait_ms,
            trust,
        } = ask;
        let live = sh.live();
        if remote != live.id {
            add(&self.misses, 1);
            return FetchReply {
                ok: false,
                entries: 0,
                error: Some("this daemon serves another remote".into()),
            };
        }
        if let Some(w) = workspace {
            self.prefetch(sh, &live, Path::new(&w), (crate_name, version), &trust);
        }
        let res = self.fetch_for_build(sh, &live, crate_name, version, wait_ms, &trust);
        let entries = lock(&live.fetched).get(crate_name).copied().unwrap_or(0);
        add(
            if entries > 0 {
                &self.hits
            } else {
                &self.misses
            },
            1,
        );
        FetchReply {
            ok: res.is_ok(),
            entries,
            error: res.err(),
        }
    }

    /// The first request of a build pulls the crates of its Cargo.lock
    /// in the background (once per Cargo.lock version), if that
    /// Cargo.lock names the asking crate at its version: one found from
    /// a directory cargo runs in for another workspace
    /// (`--manifest-path`) is not this build's, and its crates would
    /// only crowd the store.
    fn prefetch(
        self: &Arc<Self>,
        sh: &Arc<Shared>,
        live: &Arc<Live>,
        dir: &Path,
        asking: (&CrateName, Option<&str>),
        trust: &Trust,
    ) {
        let Some(lock_path) = lockfile::find_from(dir) else {
            return;
        };
        let stamp = fs::metadata(&lock_path).map_or(0, |m| m.mtime() as u64);
        let at = (lock_path.clone(), stamp);
        if !lock(&self.prefetched).insert(at.clone()) {
            return;
        }
        let (me, sh, lv) = (Arc::clone(self), Arc::clone(sh), Arc::clone(live));
        let trust = Arc::clone(trust);
        let (asking, asking_version) = (asking.0.clone(), asking.1.map(str::to_string));
        let _ = std::thread::Builder::new()
            .name("kache-prefetch".into())
            .spawn(move || {
                let crates: Vec<(CrateName, String)> = match lockfile::build_order(&lock_path) {
                    Ok(m) => m
                        .into_iter()
                        .filter_map(|(c, v)| Some((CrateName::parse(&c)?, v)))
                        .collect(),
                    Err(e) => {
                        log(&format!("cannot prefetch: {e:#}"));
                        return;
                    }
                };
                if !names(&crates, &asking, asking_version.as_deref()) {
                    // Another crate of the right build may still start it.
                    lock(&me.prefetched).remove(&at);
                    return;
                }
                // A pool of its own, half the connections: a build's
                // fetch, on the shared pool, never queues behind the
                // whole Cargo.lock.
                let pool = match rayon::ThreadPoolBuilder::new()
                    .num_threads((sh.pool.current_num_threads() / 2).max(1))
                    .thread_name(|i| format!("kache-prefetch-{i}"))
                    .build()
                {
                    Ok(p) => p,
                    Err(e) => {
                        log(&format!("cannot prefetch: {e}"));
                        return;
                    }
                };
                let t0 = Instant::now();
                // In the Cargo.lock's build order, crates compiled last
                // first: each worker takes the next one. (A parallel
                // iterator would split the list and start in the middle.)
                let next = AtomicUsize::new(0);
                pool.scope(|s| {
                    for _ in 0..pool.current_num_threads() {
                        s.spawn(|_| {
                            while let Some((c, v)) =
                                crates.get(next.fetch_add(1, Ordering::Relaxed))
                            {
                                let slot = slot_key(c, Some(v), &trust);
                                if let (Claim::Mine, _) = me.claim(&sh, &slot) {
                                    let job = Job {
                                        crate_name: c,
                                        version: Some(v),
                                        trust: &trust,
                                        pool: &pool,
                                    };
                                    let _ = me.run(&sh, &lv, &job, &slot);
                                }
                            }
                        });
                    }
                });
                log(&format!(
                    "prefetched {} crate(s) of {} in {} ms",
                    crates.len(),
                    lock_path.display(),
                    t0.elapsed().as_millis()
                ));
            });
    }

    /// A build's request: starts the crate's fetch unless one is under
    /// way, ended within `FRESH`, or the remote is paused, and waits for
    /// it as long as `pace` says (at most `wait_ms`, the build's limit).
    fn fetch_for_build(
        self: &Arc<Self>,
        sh: &Arc<Shared>,
        live: &Arc<Live>,
        crate_name: &CrateName,
        version: Option<&str>,
        wait_ms: u64,
        trust: &Trust,
    ) -> Result<(), String> {
        let slot = slot_key(crate_name, version, trust);
        let (claim, now) = self.claim(sh, &slot);
        match claim {
            Claim::Paused => return Err("remote paused after a failure".into()),
            Claim::Fresh => return Ok(()),
            Claim::Running => {}
            Claim::Mine => {
                let (me, sh2, lv) = (Arc::clone(self), Arc::clone(sh), Arc::clone(live));
                let (c, v, t, k) = (
                    crate_name.clone(),
                    version.map(str::to_string),
                    Arc::clone(trust),
                    slot.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name("kache-fetch".into())
                    .spawn(move || {
                        let job = Job {
                            crate_name: &c,
                            version: v.as_deref(),
                            trust: &t,
                            pool: &sh2.pool,
                        };
                        let _ = me.run(&sh2, &lv, &job, &k);
                    });
                if spawned.is_err() {
                    let job = Job {
                        crate_name,
                        version,
                        trust,
                        pool: &sh.pool,
                    };
                    return self.run(sh, live, &job, &slot);
                }
            }
        }
        self.learn_compile(sh, crate_name);
        let wait = lock(&self.pace).wait(crate_name, now, Duration::from_millis(wait_ms));
        if wait.is_zero() {
            add(&self.not_waited, 1);
            return Ok(());
        }
        let deadline = Instant::now() + wait;
        let mut slots = lock(&self.slots);
        while slots.get(&slot).is_some_and(|s| s.running.is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the fetch under way outlasted the wait".into());
            }
            slots = self
                .cv
                .wait_timeout(slots, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Marks the slot running if nobody fetches it and it is not fresh;
    /// says what the caller is to do, and how long this slot's fetch and
    /// the oldest one have been under way.
    fn claim(&self, sh: &Shared, slot_key: &str) -> (Claim, Now) {
        if sh.breaker.paused().is_some() {
            return (Claim::Paused, Now::default());
        }
        let mut slots = lock(&self.slots);
        let oldest = slots
            .values()
            .filter_map(|s| s.running)
            .min()
            .map(|t| t.elapsed());
        let slot = slots.entry(slot_key.to_string()).or_default();
        let running = slot.running.map(|t| t.elapsed());
        let claim = match (slot.running, slot.at) {
            (Some(_), _) => Claim::Running,
            (None, Some(at)) if at.elapsed() < FRESH => Claim::Fresh,
            (None, _) => {
                slot.running = Some(Instant::now());
                Claim::Mine
            }
        };
        (claim, Now { running, oldest })
    }

    /// Runs a claimed fetch on this thread, then frees its slot and
    /// learns from it: its time, and whether the bucket held the crate.
    fn run(&self, sh: &Shared, live: &Live, job: &Job<'_>, slot_key: &str) -> Result<(), String> {
        let t0 = Instant::now();
        let res = self.fetch_now(sh, live, job);
        {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(slot_key.to_string()).or_default();
            slot.running = None;
            slot.at = Some(Instant::now());
        }
        self.cv.notify_all();
        match &res {
            Err(e) => sh.breaker.trip(e),
            Ok(found) => {
                lock(&self.pace).fetched(t0.elapsed(), *found);
                sh.breaker.ok();
            }
        }
        res.map(|_| ())
    }

    /// A build uploaded an entry of `crate_name`: its compile time is
    /// learned.
    pub(super) fn uploaded(
        &self,
        sh: &Shared,
        crate_name: &CrateName,
        key: &crate::store::CacheKey,
    ) {
        if let Ok(Some(e)) = sh.store.get(crate_name, key) {
            lock(&self.pace).compiled(crate_name, Duration::from_millis(e.compile_ms));
        }
    }

    /// Learns the compile time of `crate_name` from its newest entries
    /// in the store, the first time it is asked for.
    fn learn_compile(&self, sh: &Shared, crate_name: &CrateName) {
        if lock(&self.pace).knows(crate_name) {
            return;
        }
        let Ok(mut refs) = sh.store.list_crate(crate_name) else {
            return;
        };
        refs.sort_by_key(|r| std::cmp::Reverse(r.accessed_ns));
        let longest = refs
            .iter()
            .take(4)
            .filter_map(|r| sh.store.get(crate_name, &r.key).ok().flatten())
            .map(|e| e.compile_ms)
            .max();
        if let Some(ms) = longest {
            lock(&self.pace).compiled(crate_name, Duration::from_millis(ms));
        }
    }

    /// The learned time of a crate's fetch, for `kache daemon status`.
    pub(super) fn fetch_time(&self) -> Option<Duration> {
        lock(&self.pace).fetch_time()
    }

    /// Lists the crate and pulls what the store lacks of it: what `kache
    /// sync --pull` would keep for this crate, version and toolchain.
    fn fetch_now(&self, sh: &Shared, live: &Live, job: &Job<'_>) -> Result<bool, String> {
        let Job {
            crate_name,
            version,
            trust,
            pool,
        } = *job;
        let remote = sh.remote(live, true);
        let prefix = layout::crate_prefix(&live.prefix, crate_name);
        let listed = remote
            .list(&prefix)
            .map_err(|e| format!("cannot list {}: {e}", remote.describe(&prefix)))?;
        let idx = plan::index(&live.prefix, listed);
        let found = idx.get(crate_name).is_some_and(|k| !k.is_empty());
        if let Some(keys) = idx.get(crate_name) {
            if let Some(size) = keys.values().map(|o| o.size).max() {
                lock(&self.pace).listed(crate_name, size);
            }
            lock(&live.known).insert(
                crate_name.clone(),
                (Instant::now(), keys.keys().cloned().collect()),
            );
        }
        let tid = trust_id(trust);
        let mut local: HashSet<plan::EntryId> = sh
            .store
            .list_crate(crate_name)
            .map_err(|e| format!("{e:#}"))?
            .into_iter()
            .map(|e| (e.crate_name, e.key))
            .collect();
        // Refused before for these keys: planned as if present.
        local.extend(
            lock(&self.refusals)
                .iter()
                .filter(|(t, (c, _))| *t == tid && c == crate_name)
                .map(|(_, id)| id.clone()),
        );
        let filter = PullFilter {
            crates: Some(std::iter::once(crate_name.to_string()).collect()),
            versions: version.map(|v| {
                std::iter::once((
                    crate_name.to_string(),
                    std::iter::once(v.to_string()).collect(),
                ))
                .collect()
            }),
            toolchain: lock(&self.toolchain).clone(),
        };
        // Verified against the asking build's keys, whoever started the
        // daemon; the restore checks them again (`trust::usable`).
        let policy = Policy {
            signer: None,
            trusted: trust.to_vec(),
        };
        let mut ctx = live.ctx(&sh.store, &remote);
        ctx.trust = &policy;
        let pull = Pull {
            pool,
            ctx: &ctx,
            filter: &filter,
            // `versions` names this crate only, not the whole Cargo.lock.
            check_deps: false,
            record_use: !live.read_only,
            dry_run: false,
        };
        let mut imported = 0;
        let mut failed = None;
        transfer::pull(&pull, &local, &idx, |_, rx| {
            for o in rx {
                match o {
                    Outcome::Done(..) => imported += 1,
                    Outcome::Skipped(..) => {}
                    // Not a failure of the remote (no pause): the build
                    // compiles what was refused.
                    Outcome::Refused(t, m) => {
                        add(&self.refused, 1);
                        let mut r = lock(&self.refusals);
                        if r.len() >= MAX_REFUSALS {
                            r.clear();
                        }
                        r.insert((tid.clone(), (t.crate_name.clone(), t.key.clone())));
                        drop(r);
                        log(&format!(
                            "remote hit {}/{} {m}",
                            t.crate_name,
                            crate::transfer::report::short(&t.key)
                        ));
                    }
                    Outcome::Failed(_, m) | Outcome::Fatal(_, m) => failed = Some(m),
                }
            }
        });
        if imported > 0 {
            add(&self.entries_fetched, imported);
            *lock(&live.fetched).entry(crate_name.clone()).or_default() += imported;
            crate::store::gc::auto(&sh.store, live.max_size, Duration::from_secs(2));
        }
        match failed {
            Some(m) => Err(m),
            None => Ok(found),
        }
    }
}

/// One crate's fetch: what to fetch, for whom, on which pool (a build's
/// on the shared one, the Cargo.lock prefetch's on its own).
#[derive(Clone, Copy)]
struct Job<'a> {
    crate_name: &'a CrateName,
    version: Option<&'a str>,
    trust: &'a Trust,
    pool: &'a rayon::ThreadPool,
}

/// Whether a Cargo.lock's `crates` name `crate_name` (at `version`, when
/// known).
fn names(crates: &[(CrateName, String)], crate_name: &CrateName, version: Option<&str>) -> bool {
    crates
        .iter()
        .any(|(c, v)| c == crate_name && version.is_none_or(|want| want == v))
}

/// A fetch's slot: by crate (and version), and by the trusted keys, so
/// builds trusting other keys do not share a fetch.
fn slot_key(crate_name: &CrateName, version: Option<&str>, trust: &Trust) -> String {
    match version {
        Some(v) => format!("{crate_name}@{v} {}", trust_id(trust)),
        None => format!("{crate_name} {}", trust_id(trust)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cargo_lock_is_prefetched_only_if_it_names_the_asking_crate() {
        let c = |n: &str| CrateName::parse(n).unwrap();
        let crates = vec![
            (c("serde"), "1.0.200".to_string()),
            (c("zstd_sys"), "2.1.3+zstd.1.5.7".to_string()),
        ];
        assert!(names(&crates, &c("zstd_sys"), Some("2.1.3+zstd.1.5.7")));
        assert!(names(&crates, &c("serde"), None));
        // Another workspace's Cargo.lock: another version, or not there.
        assert!(!names(&crates, &c("serde"), Some("1.0.199")));
        assert!(!names(&crates, &c("tokio"), None));
    }
}
