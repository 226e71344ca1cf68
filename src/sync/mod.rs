/*!
`kache sync`: move entries between the local store and S3.

The order of a run: resolve the settings and credentials, find the
Cargo.lock filter, list the remote (per crate prefix, in parallel),
plan, then run the transfers on the pool while `report` draws progress.
With neither `--pull` nor `--push`, pull runs first, then push (which
reuses what the pull listed and lists only the crates it still lacks).

Nothing is all-or-nothing: a listing that fails after retries fails only
its crate (not pulled, or not pushed, since what the bucket holds there
is unknown) and is counted; a failed transfer fails only its entry. Only
what dooms every request (credentials, permissions, a missing bucket, a
full disk) stops the run, and a run in which no listing succeeded is
reported as one line. `--allow-partial` turns every one of these into
exit 0: the cache never fails the build job.
*/

pub(crate) mod retention;

use std::collections::{BTreeSet, HashSet};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rayon::ThreadPool;

use crate::cli::SyncCmd;
use crate::config::Config;
use crate::lockfile;
use crate::remote::s3::S3Remote;
use crate::remote::{Remote, layout};
use crate::store::Store;
use crate::transfer::plan::{self, Direction, EntryId, RemoteIndex, Transfer};
use crate::transfer::report::{self, ListingFailure, Progress, Reporter};
use crate::transfer::{exec, uses};

pub(crate) fn run(cfg: &Config, cmd: &SyncCmd) -> Result<ExitCode> {
    let started = Instant::now();
    if cfg.read_only.value && cmd.push {
        // One CI script serves both kinds of job: a read-only runner's
        // push is a success that uploads nothing.
        report::note(&format!(
            "read-only runner ({}): nothing pushed",
            read_only_source(cfg)
        ));
        if cmd.json {
            let summary = report::Summary {
                read_only: true,
                ..report::Summary::default()
            };
            report::print_summary(&summary, true)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut reporter = Reporter::new(Progress::from_env());
    let res = sync(cfg, cmd, &mut reporter);
    let (plan, error) = match res {
        Ok(plan) => (plan, None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let nothing_listed = reporter.nothing_listed();
    if !nothing_listed {
        reporter.flush_listings();
    }
    let mut summary = std::mem::take(&mut reporter.summary);
    summary.seconds = started.elapsed().as_secs_f64();
    if error.is_some() {
        summary.fatal = error;
    }
    // The one line for a sync that could not use the cache at all: a
    // fatal error (credentials, permissions, missing bucket, settings),
    // or every listing failed (the endpoint cannot be reached).
    let stopped = summary.fatal.clone().or_else(|| {
        nothing_listed.then(|| {
            let fl = &summary.failed_listings;
            let first = &fl[0];
            let all = if fl.len() > 1 {
                format!("all {} listings failed; the first: ", fl.len())
            } else {
                String::new()
            };
            format!("cannot use the cache: {all}{}", first.error)
        })
    });
    // `fatal` in --json: whatever stopped the sync, this included.
    summary.fatal.clone_from(&stopped);
    if !cmd.dry_run {
        log_sync(cfg, &summary);
    }
    if cmd.dry_run {
        if let Some(plan) = &plan {
            report::print_plan(plan, &summary.failed_listings, &summary.filtered, cmd.json)?;
        }
    } else if cmd.json || summary.listings > 0 {
        report::print_summary(&summary, cmd.json)?;
    }
    if let Some(msg) = stopped {
        if cmd.allow_partial {
            report::warning(&format!(
                "{msg}; going on without the cache (--allow-partial)"
            ));
            return Ok(ExitCode::SUCCESS);
        }
        bail!("{msg}");
    }
    let transfers = summary.failed.entries
        + summary.refused.entries
        + summary.pulled.entries
        + summary.pushed.entries
        + summary.skipped.entries;
    let mut failed = Vec::new();
    if summary.refused.entries > 0 {
        failed.push(format!(
            "{} {} refused: not signed by a trusted key (KACHE_TRUSTED_KEYS); the build compiles {}",
            summary.refused.entries,
            if summary.refused.entries == 1 { "entry" } else { "entries" },
            if summary.refused.entries == 1 { "it" } else { "them" },
        ));
    }
    if summary.failed.entries > 0 {
        failed.push(format!(
            "{} of {transfers} transfers failed",
            summary.failed.entries
        ));
    }
    if !summary.failed_listings.is_empty() {
        failed.push(format!(
            "{} of {} listings failed",
            summary.failed_listings.len(),
            summary.listings
        ));
    }
    if !failed.is_empty() && !cmd.allow_partial {
        eprintln!(
            "error: {} (--allow-partial exits 0 anyway)",
            failed.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Records what a sync moved in the event log, for `kache stats`.
fn log_sync(cfg: &Config, s: &report::Summary) {
    if s.pulled.entries + s.pushed.entries == 0 {
        return;
    }
    let line = serde_json::json!({
        "ts": crate::store::now_secs(),
        "crate": "",
        "result": "sync",
        "pulled": s.pulled.entries,
        "pulled_bytes": s.pulled.bytes,
        "pushed": s.pushed.entries,
        "pushed_bytes": s.pushed.bytes,
    });
    Store::at(&cfg.cache_dir.value).log_event(&line.to_string());
}

/// The sync itself, filling the reporter's summary. Returns the plan for
/// a dry run. An error here is one that stops the sync (settings,
/// credentials, a fatal listing failure); failed transfers and listings
/// are counted in the summary instead.
fn sync(cfg: &Config, cmd: &SyncCmd, reporter: &mut Reporter) -> Result<Option<Vec<Transfer>>> {
    let (do_pull, do_push) = directions(cfg, cmd);
    reporter.summary.read_only = cfg.read_only.value;
    let remote = S3Remote::from_config(cfg)?;
    let trust = cfg.trust_policy(do_push && !cmd.dry_run)?;
    let store = if cmd.dry_run {
        Store::at(&cfg.cache_dir.value)
    } else {
        Store::open(&cfg.cache_dir.value)?
    };
    if do_pull && !trust.trusted.is_empty() && store.has_unverified() {
        report::note(
            "this store holds entries pulled without verification (before trusted keys were set); `kache gc --verify` removes them",
        );
    }
    let prefix = cfg.prefix.value.as_str();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.s3_concurrency.value)
        .thread_name(|i| format!("kache-sync-{i}"))
        .build()
        .context("cannot start the sync threads")?;
    let run = Run {
        cfg,
        cmd,
        pool: &pool,
        remote: &remote,
        store: &store,
        prefix,
        ctx: exec::Ctx {
            store: &store,
            remote: &remote,
            prefix,
            level: cfg.compression_level.value,
            trust: &trust,
            stop: AtomicBool::new(false),
        },
    };
    let mut known = Known {
        local: local_entries(&store)?,
        idx: RemoteIndex::new(),
        listed: Some(BTreeSet::new()),
        plan: Vec::new(),
    };
    if do_pull {
        run.pull(&mut known, reporter)?;
    }
    if do_push && reporter.summary.fatal.is_none() {
        run.push(&mut known, reporter)?;
    }
    Ok(cmd.dry_run.then_some(known.plan))
}

/// Pull, push or both: the flags, else both, or pull only on a
/// read-only runner.
fn directions(cfg: &Config, cmd: &SyncCmd) -> (bool, bool) {
    if cmd.pull || cmd.push {
        (cmd.pull, cmd.push)
    } else if cfg.read_only.value {
        report::note(&format!(
            "read-only runner ({}): pulling only",
            read_only_source(cfg)
        ));
        (true, false)
    } else {
        (true, true)
    }
}

/// What one sync works with.
struct Run<'a> {
    cfg: &'a Config,
    cmd: &'a SyncCmd,
    pool: &'a ThreadPool,
    remote: &'a S3Remote,
    store: &'a Store,
    prefix: &'a str,
    ctx: exec::Ctx<'a>,
}

/// What a sync knows so far: the local entries, the remote's (by the
/// listings made), which crates are listed (`None`: all of them), and
/// for a dry run the plan.
struct Known {
    local: HashSet<EntryId>,
    idx: RemoteIndex,
    listed: Option<BTreeSet<String>>,
    plan: Vec<Transfer>,
}

impl Run<'_> {
    /// Lists what the build can use, plans and fetches what is missing.
    fn pull(&self, k: &mut Known, reporter: &mut Reporter) -> Result<()> {
        let pull_filter = if self.cmd.all {
            plan::PullFilter::default()
        } else {
            workspace_filter(self.cmd)?
        };
        let filter = pull_filter.crates.clone();
        let prefixes = plan::pull_prefixes(self.prefix, filter.as_ref());
        let (found, failed) = list(
            self.pool,
            self.remote,
            self.prefix,
            &prefixes,
            Direction::Pull,
            &|_| None,
            reporter,
        )?;
        k.idx = plan::index(self.prefix, found);
        k.listed = match (&filter, failed.is_empty()) {
            (None, true) => None,
            (None, false) => Some(BTreeSet::new()),
            (Some(f), _) => Some(f.difference(&failed).cloned().collect()),
        };
        let (mut pull, mut left) = plan::plan_pull(&k.local, &k.idx, &pull_filter);
        if let Some(versions) = &pull_filter.versions {
            let unusable =
                built_against_other_versions(self.pool, self.remote, &pull, &k.idx, versions);
            pull.retain(|t| {
                if unusable.contains(&(t.crate_name.clone(), t.key.clone())) {
                    left.push(plan::Filtered {
                        crate_name: t.crate_name.clone(),
                        key: t.key.clone(),
                        size: t.size,
                        reason: "built against a dependency version Cargo.lock does not name",
                    });
                    false
                } else {
                    true
                }
            });
        }
        reporter.filtered(left);
        if self.cmd.dry_run {
            k.plan.extend(pull);
            return Ok(());
        }
        // Recorded before fetching, so a gc running now spares them. A
        // read-only runner writes nothing, use records included.
        if !self.cfg.read_only.value {
            let used: Vec<(String, String)> = pull
                .iter()
                .map(|t| (t.crate_name.clone(), t.key.clone()))
                .collect();
            uses::record_use(self.remote, self.prefix, &used);
        }
        execute(self.pool, &self.ctx, reporter, "pull", pull);
        if reporter.summary.fatal.is_none() {
            k.local = local_entries(self.store)?;
        }
        Ok(())
    }

    /// Lists the crates it is about to push that the pull did not list,
    /// and uploads every local entry the bucket lacks.
    fn push(&self, k: &mut Known, reporter: &mut Reporter) -> Result<()> {
        let crates = plan::push_crates(k.local.iter());
        let missing: Vec<String> = match &k.listed {
            None => Vec::new(),
            Some(done) => crates
                .iter()
                .filter(|c| !done.contains(*c))
                .map(|c| layout::crate_prefix(self.prefix, c))
                .collect(),
        };
        let local = &k.local;
        let count = |c: &str| Some(local.iter().filter(|(lc, _)| lc == c).count() as u64);
        // Crates whose listing failed are not pushed: what the bucket
        // holds for them is unknown, and an object is never uploaded twice.
        let (found, unlisted) = list(
            self.pool,
            self.remote,
            self.prefix,
            &missing,
            Direction::Push,
            &count,
            reporter,
        )?;
        for (c, keys) in plan::index(self.prefix, found) {
            k.idx.entry(c).or_default().extend(keys);
        }
        let push = plan::plan_push(&self.push_candidates(k, &unlisted), &k.idx);
        if self.cmd.dry_run {
            k.plan.extend(push);
            return Ok(());
        }
        let planned: Vec<EntryId> = push
            .iter()
            .map(|t| (t.crate_name.clone(), t.key.clone()))
            .collect();
        execute(self.pool, &self.ctx, reporter, "push", push);
        self.clear_pending(k, &planned, reporter);
        Ok(())
    }

    /// Local entries of listed crates that the bucket lacks, with size
    /// and object name.
    fn push_candidates(
        &self,
        k: &Known,
        unlisted: &BTreeSet<String>,
    ) -> Vec<(EntryId, u64, String)> {
        k.local
            .iter()
            .filter(|(c, _)| !unlisted.contains(c))
            .filter(|(c, key)| !k.idx.get(c).is_some_and(|keys| keys.contains_key(key)))
            .filter_map(|(c, key)| match self.store.get(c, key) {
                Ok(e) => {
                    let e = e?;
                    let object = layout::entry_object(self.prefix, c, key, e.origin.as_ref());
                    Some(((c.clone(), key.clone()), e.size(), object))
                }
                // Corrupt or unreadable: planned anyway, so the push
                // reports it (packing fails it) rather than skipping it
                // silently.
                Err(_) => Some((
                    (c.clone(), key.clone()),
                    0,
                    layout::object_name(self.prefix, c, key),
                )),
            })
            .collect()
    }

    /// Clears the daemon's upload markers of what the bucket now holds.
    fn clear_pending(&self, k: &Known, planned: &[EntryId], reporter: &Reporter) {
        let Some(id) = self.cfg.remote_identity() else {
            return;
        };
        let failed: HashSet<EntryId> = reporter
            .summary
            .failures
            .iter()
            .map(|f| (f.crate_name.clone(), f.key.clone()))
            .collect();
        let dir = crate::store::pending::pending_dir(self.store.root(), &id);
        for (c, key) in crate::store::pending::pending_markers(&dir) {
            let id = (c, key);
            let there = k
                .idx
                .get(&id.0)
                .is_some_and(|keys| keys.contains_key(&id.1));
            if there || (planned.contains(&id) && !failed.contains(&id)) {
                let _ = std::fs::remove_file(dir.join(&id.0).join(&id.1));
            }
        }
    }
}

/// Where the read-only setting came from, for messages.
fn read_only_source(cfg: &Config) -> String {
    match &cfg.read_only.source {
        crate::config::Source::Env(v) => format!("{v}=1"),
        crate::config::Source::File(p) => format!("cache.remote.read_only in {}", p.display()),
        crate::config::Source::Default => "default".to_string(),
    }
}

/// What a pull of this workspace keeps: the crates and versions of its
/// Cargo.lock (everything, with a note, if there is none) and the
/// toolchain its builds use (`$RUSTC`, else `rustc`, run in the
/// workspace so rustup's toolchain files count).
fn workspace_filter(cmd: &SyncCmd) -> Result<plan::PullFilter> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let start = lockfile::start_dir(cmd.manifest_path.as_deref(), &cwd)?;
    let toolchain = local_toolchain(&start);
    if let Some(p) = lockfile::find_from(&start) {
        let versions = lockfile::versions(&p)?;
        Ok(plan::PullFilter {
            crates: Some(versions.keys().cloned().collect()),
            versions: Some(versions),
            toolchain,
        })
    } else {
        report::note(&format!(
            "no Cargo.lock found in {} or above; pulling every crate",
            start.display()
        ));
        Ok(plan::PullFilter {
            toolchain,
            ..plan::PullFilter::default()
        })
    }
}

/// Of the pulls that only their manifests can tell apart (same crate,
/// version, target and toolchain), those built against a dependency
/// version the Cargo.lock does not name. Each manifest is read from the
/// first 64 KiB of its object (one ranged request, in parallel); an
/// object whose head cannot be read is kept (pulled, as before).
fn built_against_other_versions(
    pool: &ThreadPool,
    remote: &dyn Remote,
    pull: &[Transfer],
    idx: &RemoteIndex,
    versions: &std::collections::BTreeMap<String, BTreeSet<String>>,
) -> HashSet<EntryId> {
    use rayon::prelude::*;
    let ambiguous = plan::ambiguous(pull, idx);
    pool.install(|| {
        ambiguous
            .par_iter()
            .filter_map(|t| {
                let head = remote.get_head(&t.object, 64 << 10).ok()?;
                let e = crate::store::archive::peek_manifest(&head)?;
                let deps = e.origin.map(|o| o.deps).unwrap_or_default();
                (!plan::deps_usable(&deps, versions)).then(|| (t.crate_name.clone(), t.key.clone()))
            })
            .collect()
    })
}

/// The toolchain id (see `store::toolchain_id`) of the compiler cargo
/// would run in `dir`; `None` (with a note) if it cannot be run.
fn local_toolchain(dir: &std::path::Path) -> Option<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = std::process::Command::new(&rustc)
        .arg("-vV")
        .current_dir(dir)
        .env("KACHE_ACTIVE", "1")
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            Some(crate::store::toolchain_id(&text))
        }
        _ => {
            report::note(&format!(
                "cannot run {} -vV; pulling entries of every toolchain",
                rustc.to_string_lossy()
            ));
            None
        }
    }
}

fn local_entries(store: &Store) -> Result<HashSet<EntryId>> {
    Ok(store
        .list()?
        .into_iter()
        .map(|e| (e.crate_name, e.key))
        .collect())
}

/// Lists `prefixes` in parallel and records the outcome (`entries_of`
/// gives, for a push, how many local entries a failed crate leaves
/// unpushed). Returns what was found and the crates whose listing
/// failed; a fatal failure (credentials, permissions, a missing bucket)
/// stops the sync.
fn list(
    pool: &ThreadPool,
    remote: &dyn Remote,
    prefix: &str,
    prefixes: &[String],
    dir: Direction,
    entries_of: &dyn Fn(&str) -> Option<u64>,
    reporter: &mut Reporter,
) -> Result<(Vec<crate::remote::Listed>, BTreeSet<String>)> {
    let mut found = Vec::new();
    let mut failures = Vec::new();
    let mut ok = 0;
    let mut fatal = None;
    for (p, res) in exec::list_all(pool, remote, prefixes) {
        match res {
            Ok(l) => {
                ok += 1;
                found.extend(l);
            }
            Err(e) => {
                let error = format!("cannot list {}: {e}", remote.describe(&p));
                if e.kind.is_fatal() && fatal.is_none() {
                    fatal = Some(error.clone());
                }
                let crate_name = layout::prefix_crate(prefix, &p);
                failures.push(ListingFailure {
                    direction: dir,
                    entries: crate_name.as_deref().and_then(entries_of),
                    crate_name,
                    prefix: p,
                    error,
                    fatal: e.kind.is_fatal(),
                });
            }
        }
    }
    let crates: BTreeSet<String> = failures
        .iter()
        .filter_map(|f: &ListingFailure| f.crate_name.clone())
        .collect();
    reporter.listings(ok, failures);
    if let Some(f) = fatal {
        bail!("{f}");
    }
    Ok((found, crates))
}

/// Runs one phase's transfers, reporting as they finish.
fn execute(
    pool: &ThreadPool,
    ctx: &exec::Ctx<'_>,
    reporter: &mut Reporter,
    label: &str,
    transfers: Vec<Transfer>,
) {
    if transfers.is_empty() {
        return;
    }
    let dir = transfers[0].dir;
    let total = plan::totals(&transfers, dir);
    debug_assert!(
        transfers.iter().all(|t| t.dir == dir) && matches!(dir, Direction::Pull | Direction::Push)
    );
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::scope(|s| {
        s.spawn(move || exec::run(pool, ctx, transfers, tx));
        reporter.phase(label, total, &rx);
    });
}
