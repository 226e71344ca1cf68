/*!
Remote hits: on a local miss the wrapper asks for the crate and waits
(within `cache.daemon_wait`); the daemon lists `{prefix}/{crate}/` and
pulls what the store lacks with `transfer::pull`, exactly as `kache sync
--pull` does (verified, imported atomically). The first request from a
workspace also prefetches the crates of its Cargo.lock.

Coalescing: concurrent requests for one crate (and version) share one
fetch, through one `Mutex<HashMap>` of slots with its own `Condvar`; a
crate fetched in the last `FRESH` is not listed again. Fetches run on
the fetch pool and take their permits ahead of the uploads.
*/

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

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
    running: bool,
    /// When a running fetch outlives a waiting build (`None`: a prefetch,
    /// which no build waits on).
    deadline: Option<Instant>,
    at: Option<Instant>,
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
            self.prefetch(sh, &live, Path::new(&w), &trust);
        }
        let wait = Duration::from_millis(wait_ms);
        let res = self.fetch_crate(sh, &live, crate_name, version, wait, &trust);
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

    /// The first request from a workspace pulls the crates of its
    /// Cargo.lock in the background (once per Cargo.lock version).
    fn prefetch(self: &Arc<Self>, sh: &Arc<Shared>, live: &Arc<Live>, dir: &Path, trust: &Trust) {
        let Some(lock_path) = lockfile::find_from(dir) else {
            return;
        };
        let stamp = fs::metadata(&lock_path).map_or(0, |m| m.mtime() as u64);
        if !lock(&self.prefetched).insert((lock_path.clone(), stamp)) {
            return;
        }
        let (me, sh, lv) = (Arc::clone(self), Arc::clone(sh), Arc::clone(live));
        let trust = Arc::clone(trust);
        let _ = std::thread::Builder::new()
            .name("kache-prefetch".into())
            .spawn(move || {
                let crates: Vec<(CrateName, String)> = match lockfile::versions(&lock_path) {
                    Ok(m) => m
                        .into_iter()
                        .filter_map(|(c, vs)| Some((CrateName::parse(&c)?, vs)))
                        .flat_map(|(c, vs)| vs.into_iter().map(move |v| (c.clone(), v)))
                        .collect(),
                    Err(e) => {
                        log(&format!("cannot prefetch: {e:#}"));
                        return;
                    }
                };
                let t0 = Instant::now();
                sh.pool.install(|| {
                    crates.par_iter().with_max_len(1).for_each(|(c, v)| {
                        let _ = me.fetch_crate(&sh, &lv, c, Some(v), Duration::MAX, &trust);
                    });
                });
                log(&format!(
                    "prefetched {} crate(s) of {} in {} ms",
                    crates.len(),
                    lock_path.display(),
                    t0.elapsed().as_millis()
                ));
            });
    }

    /// Brings the crate's remote entries into the store, unless it was
    /// done within `FRESH` or the remote is paused. Concurrent callers
    /// for one crate share one fetch. `wait` is how long the asking build
    /// waits (`Duration::MAX`: a prefetch, which nobody waits on).
    fn fetch_crate(
        &self,
        sh: &Shared,
        live: &Live,
        crate_name: &CrateName,
        version: Option<&str>,
        wait: Duration,
        trust: &Trust,
    ) -> Result<(), String> {
        let slot_key = match version {
            Some(v) => format!("{crate_name}@{v}"),
            None => crate_name.to_string(),
        };
        // Builds trusting other keys do not share a fetch.
        let slot_key = format!("{slot_key} {}", trust_id(trust));
        let asked = Instant::now();
        let mine = asked.checked_add(wait);
        {
            let mut slots = lock(&self.slots);
            loop {
                let now = Instant::now();
                if sh.breaker.paused().is_some() {
                    return Err("remote paused after a failure or a slow answer".into());
                }
                // A fetch a build is still waiting for past its deadline:
                // the remote is slow; say so once instead of making every
                // compile wait.
                if slots
                    .values()
                    .any(|s| s.running && s.deadline.is_some_and(|d| d < now))
                {
                    drop(slots);
                    sh.breaker.trip("a fetch is taking longer than builds wait");
                    return Err("remote slow".into());
                }
                let slot = slots.entry(slot_key.clone()).or_default();
                if !slot.running {
                    if slot.at.is_some_and(|t| t.elapsed() < FRESH) {
                        return Ok(());
                    }
                    slot.running = true;
                    slot.deadline = mine;
                    break;
                }
                // A prefetch (on a fetch-pool thread) never waits for
                // another fetch: that one may need the pool's threads to
                // finish.
                if mine.is_none() {
                    return Ok(());
                }
                if mine.is_some_and(|d| d < now) || asked.elapsed() > Duration::from_mins(10) {
                    return Err("timed out waiting for the fetch under way".into());
                }
                let left =
                    mine.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
                slots = self
                    .cv
                    .wait_timeout(
                        slots,
                        left.clamp(Duration::from_millis(5), Duration::from_secs(1)),
                    )
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
        }
        let t0 = Instant::now();
        let res = self.fetch_now(sh, live, crate_name, version, trust);
        {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(slot_key).or_default();
            slot.running = false;
            slot.deadline = None;
            slot.at = Some(Instant::now());
        }
        self.cv.notify_all();
        match &res {
            Err(e) => sh.breaker.trip(e),
            Ok(()) if t0.elapsed() > wait => sh.breaker.trip(&format!(
                "fetching {crate_name} took {} ms, more than the {} ms a build waits",
                t0.elapsed().as_millis(),
                wait.as_millis()
            )),
            Ok(()) => sh.breaker.ok(),
        }
        res
    }

    /// Lists the crate and pulls what the store lacks of it: what `kache
    /// sync --pull` would keep for this crate, version and toolchain.
    fn fetch_now(
        &self,
        sh: &Shared,
        live: &Live,
        crate_name: &CrateName,
        version: Option<&str>,
        trust: &Trust,
    ) -> Result<(), String> {
        let remote = sh.remote(live, true);
        let prefix = layout::crate_prefix(&live.prefix, crate_name);
        let listed = remote
            .list(&prefix)
            .map_err(|e| format!("cannot list {}: {e}", remote.describe(&prefix)))?;
        let idx = plan::index(&live.prefix, listed);
        if let Some(keys) = idx.get(crate_name) {
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
            pool: &sh.pool,
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
            None => Ok(()),
        }
    }
}
