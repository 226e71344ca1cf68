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
use crate::store::events::{Event, Outcome};
use crate::transfer::plan::{self, Direction, EntryId, RemoteIndex, Transfer};
use crate::transfer::report::{self, ListingFailure, Progress, Reporter};
use crate::transfer::{self, exec};

pub(crate) fn run(cfg: &Config, cmd: &SyncCmd) -> Result<ExitCode> {
    let started = Instant::now();
    if cfg.read_only.value && cmd.push {
        return read_only_push(cfg, cmd);
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
    let stopped = stop_reason(&summary, nothing_listed);
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
    let failed = partial_failures(&summary);
    if !failed.is_empty() && !cmd.allow_partial {
        eprintln!(
            "error: {} (--allow-partial exits 0 anyway)",
            failed.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--push` on a read-only runner: one CI script serves both kinds of
/// job, so the push is a success that uploads nothing.
fn read_only_push(cfg: &Config, cmd: &SyncCmd) -> Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}

/// The one line for a sync that could not use the cache at all: a fatal
/// error (credentials, permissions, missing bucket, settings), or every
/// listing failed (the endpoint cannot be reached).
fn stop_reason(summary: &report::Summary, nothing_listed: bool) -> Option<String> {
    summary.fatal.clone().or_else(|| {
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
    })
}

/// What a sync that went on failed to do, one phrase each: refused
/// entries, failed transfers, failed listings. Empty if nothing failed.
fn partial_failures(summary: &report::Summary) -> Vec<String> {
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
    failed
}

/// Records what a sync moved in the event log, for `kache stats`.
fn log_sync(cfg: &Config, s: &report::Summary) {
    if s.pulled.entries + s.pushed.entries == 0 {
        return;
    }
    let mut ev = Event::new(Outcome::Sync, "");
    ev.pulled = s.pulled.entries;
    ev.pulled_bytes = s.pulled.bytes;
    ev.pushed = s.pushed.entries;
    ev.pushed_bytes = s.pushed.bytes;
    ev.write(&Store::at(&cfg.cache_dir.value));
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
    if do_push {
        // Entries a build is still storing in the background go too, and
        // those of build scripts still being traced behind it.
        store.settle_for_upload();
    }
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
        let pull = transfer::Pull {
            pool: self.pool,
            ctx: &self.ctx,
            filter: &pull_filter,
            check_deps: true,
            record_use: !self.cfg.read_only.value,
            dry_run: self.cmd.dry_run,
        };
        let planned = transfer::pull(&pull, &k.local, &k.idx, |total, rx| {
            reporter.phase("pull", total, rx);
        });
        reporter.filtered(planned.filtered);
        if self.cmd.dry_run {
            k.plan.extend(planned.unrun);
            return Ok(());
        }
        crate::store::gc::auto(
            self.store,
            self.cfg.max_size.value,
            std::time::Duration::from_secs(10),
        );
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
                .filter(|c| !done.contains(c.as_str()))
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
        exec::run_with(self.pool, &self.ctx, push, |total, rx| {
            reporter.phase("push", total, rx);
        });
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
            .filter(|(c, _)| !unlisted.contains(c.as_str()))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;
    use crate::config::{Setting, Source};
    use crate::remote::ErrorKind;
    use crate::remote::dir::DirRemote;
    use crate::store::{Entry, FileRecord};
    use crate::transfer::report::{Count, Summary};

    fn default<T>(value: T) -> Setting<T> {
        Setting {
            value,
            source: Source::Default,
        }
    }

    /// Settings as with no file and no environment, the store at
    /// `cache_dir`.
    fn config(cache_dir: &Path) -> Config {
        Config {
            file: None,
            cache_dir: default(cache_dir.to_path_buf()),
            max_size: default(10 << 30),
            bucket: default(None),
            endpoint: default(None),
            region: default("us-east-1".into()),
            prefix: default("p".into()),
            profile: default(None),
            timeout: default(Duration::from_secs(30)),
            s3_concurrency: default(2),
            compression_level: default(3),
            cache_executables: default(false),
            cache_c: default(true),
            cache_build_scripts: default(true),
            trace_behind: default(false),
            background_store: default(true),
            daemon_autostart: default(false),
            daemon_wait: default(Duration::from_millis(500)),
            never_cache: default(Vec::new()),
            inputs: default(BTreeMap::new()),
            signing_key: default(None),
            trusted_keys: default(Vec::new()),
            read_only: default(false),
        }
    }

    fn read_only(source: Source) -> Config {
        let mut cfg = config(Path::new("/nonexistent/kache"));
        cfg.read_only = Setting {
            value: true,
            source,
        };
        cfg
    }

    fn cmd(pull: bool, push: bool) -> SyncCmd {
        SyncCmd {
            pull,
            push,
            all: false,
            dry_run: false,
            manifest_path: None,
            allow_partial: false,
            json: false,
        }
    }

    fn pool() -> ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    }

    #[test]
    fn directions_follow_the_flags_else_both_or_pull_only_when_read_only() {
        let rw = config(Path::new("/nonexistent/kache"));
        let ro = read_only(Source::Env("KACHE_READ_ONLY"));
        assert_eq!(directions(&rw, &cmd(false, false)), (true, true));
        assert_eq!(directions(&rw, &cmd(true, false)), (true, false));
        assert_eq!(directions(&rw, &cmd(false, true)), (false, true));
        assert_eq!(directions(&ro, &cmd(false, false)), (true, false));
        assert_eq!(directions(&ro, &cmd(true, false)), (true, false));
        // `run` answers a read-only push before asking; the flags still
        // say what was asked.
        assert_eq!(directions(&ro, &cmd(false, true)), (false, true));
    }

    #[test]
    fn read_only_source_names_the_variable_or_the_file() {
        assert_eq!(
            read_only_source(&read_only(Source::Env("KACHE_READ_ONLY"))),
            "KACHE_READ_ONLY=1"
        );
        assert_eq!(
            read_only_source(&read_only(Source::File(PathBuf::from("/etc/kache.toml")))),
            "cache.remote.read_only in /etc/kache.toml"
        );
        assert_eq!(read_only_source(&read_only(Source::Default)), "default");
    }

    #[test]
    fn a_read_only_push_succeeds_without_touching_the_remote() {
        // No bucket is configured: any attempt to reach one would fail.
        let d = tempfile::tempdir().unwrap();
        let mut cfg = config(&d.path().join("store"));
        cfg.read_only.value = true;
        let code = run(&cfg, &cmd(false, true)).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(!d.path().join("store").exists(), "a store was created");
    }

    const LOCK: &str = r#"version = 4

[[package]]
name = "demo"
version = "0.1.0"
dependencies = ["Foo-Bar", "baz 1.0.0", "baz 2.1.0"]

[[package]]
name = "Foo-Bar"
version = "0.3.0"

[[package]]
name = "baz"
version = "1.0.0"

[[package]]
name = "baz"
version = "2.1.0"
"#;

    fn workspace(lock: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs_write(&d.path().join("Cargo.toml"), "[package]\nname = \"demo\"\n");
        if let Some(l) = lock {
            fs_write(&d.path().join("Cargo.lock"), l);
        }
        d
    }

    fn fs_write(p: &Path, text: &str) {
        std::fs::write(p, text).unwrap();
    }

    fn with_manifest(dir: &Path) -> SyncCmd {
        SyncCmd {
            manifest_path: Some(dir.join("Cargo.toml")),
            ..cmd(true, false)
        }
    }

    #[test]
    fn workspace_filter_keeps_the_crates_and_versions_of_cargo_lock() {
        let ws = workspace(Some(LOCK));
        let f = workspace_filter(&with_manifest(ws.path())).unwrap();
        let crates: Vec<&str> = f
            .crates
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(crates, ["baz", "demo", "foo_bar"]);
        let versions = f.versions.unwrap();
        let of = |c: &str| -> Vec<&str> { versions[c].iter().map(String::as_str).collect() };
        assert_eq!(of("baz"), ["1.0.0", "2.1.0"]);
        assert_eq!(of("foo_bar"), ["0.3.0"]);
        assert_eq!(of("demo"), ["0.1.0"]);
        assert_eq!(f.toolchain, local_toolchain(ws.path()));
    }

    #[test]
    fn workspace_filter_without_cargo_lock_keeps_every_crate() {
        let ws = workspace(None);
        if lockfile::find_from(ws.path()).is_some() {
            // A Cargo.lock above the temporary directory: not this case.
            return;
        }
        let f = workspace_filter(&with_manifest(ws.path())).unwrap();
        assert!(f.crates.is_none());
        assert!(f.versions.is_none());
        assert_eq!(f.toolchain, local_toolchain(ws.path()));
    }

    #[test]
    fn workspace_filter_fails_on_a_missing_manifest_or_a_bad_lock() {
        let ws = workspace(None);
        let missing = SyncCmd {
            manifest_path: Some(ws.path().join("nope/Cargo.toml")),
            ..cmd(true, false)
        };
        let err = workspace_filter(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        fs_write(&ws.path().join("Cargo.lock"), "[[package]\n");
        let err = workspace_filter(&with_manifest(ws.path()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("malformed "), "{err}");
    }

    #[test]
    fn local_toolchain_is_the_compilers_short_id_or_none() {
        let d = tempfile::tempdir().unwrap();
        let id = local_toolchain(d.path()).expect("rustc runs");
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        // The same compiler from another directory.
        assert_eq!(
            local_toolchain(Path::new(env!("CARGO_MANIFEST_DIR"))),
            Some(id)
        );
        // A directory it cannot run in.
        assert_eq!(local_toolchain(&d.path().join("gone")), None);
    }

    #[test]
    fn local_entries_lists_the_store() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(local_entries(&s).unwrap().is_empty());
        let (hash, size) = s.put_blob_reader(&b"rlib"[..], None).unwrap();
        let key = crate::store::ids::test::key(&"1".repeat(64));
        let foo = crate::store::ids::test::krate("foo");
        let file = FileRecord {
            name: "libfoo.rlib".into(),
            hash,
            size,
            executable: false,
        };
        s.publish(&Entry::new(foo.clone(), key.clone(), vec![file]))
            .unwrap();
        let want: HashSet<EntryId> = [(foo, key)].into();
        assert_eq!(local_entries(&s).unwrap(), want);
    }

    #[test]
    fn log_sync_records_only_syncs_that_moved_something() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path());
        let s = Store::open(d.path()).unwrap();
        log_sync(&cfg, &Summary::default());
        assert!(!s.events_path().exists());
        let sum = Summary {
            pulled: Count {
                entries: 2,
                bytes: 300,
            },
            pushed: Count {
                entries: 1,
                bytes: 40,
            },
            ..Summary::default()
        };
        log_sync(&cfg, &sum);
        let text = std::fs::read_to_string(s.events_path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["result"], "sync");
        assert_eq!(v["crate"], "");
        assert_eq!(v["pulled"], 2);
        assert_eq!(v["pulled_bytes"], 300);
        assert_eq!(v["pushed"], 1);
        assert_eq!(v["pushed_bytes"], 40);
        assert!(v["ts"].as_u64().unwrap() > 0);
    }

    fn listing_failure(crate_name: &str, error: &str) -> ListingFailure {
        ListingFailure {
            direction: Direction::Pull,
            crate_name: Some(crate_name.into()),
            prefix: format!("p/{crate_name}/"),
            entries: None,
            error: error.into(),
            fatal: false,
        }
    }

    #[test]
    fn stop_reason_is_the_fatal_error_or_every_listing_failing() {
        let mut sum = Summary::default();
        assert_eq!(stop_reason(&sum, false), None);
        sum.failed_listings
            .push(listing_failure("a", "cannot list a: down"));
        assert_eq!(stop_reason(&sum, false), None);
        assert_eq!(
            stop_reason(&sum, true).as_deref(),
            Some("cannot use the cache: cannot list a: down")
        );
        sum.failed_listings
            .push(listing_failure("b", "cannot list b: down"));
        assert_eq!(
            stop_reason(&sum, true).as_deref(),
            Some("cannot use the cache: all 2 listings failed; the first: cannot list a: down")
        );
        sum.fatal = Some("access denied".into());
        assert_eq!(stop_reason(&sum, true).as_deref(), Some("access denied"));
        assert_eq!(stop_reason(&sum, false).as_deref(), Some("access denied"));
    }

    #[test]
    fn partial_failures_name_refusals_transfers_and_listings() {
        let count = |entries| Count { entries, bytes: 0 };
        let mut sum = Summary {
            pulled: count(5),
            skipped: count(1),
            ..Summary::default()
        };
        assert!(partial_failures(&sum).is_empty());
        sum.refused = count(1);
        assert_eq!(
            partial_failures(&sum),
            [
                "1 entry refused: not signed by a trusted key (KACHE_TRUSTED_KEYS); the build compiles it"
            ]
        );
        sum.refused = count(2);
        sum.failed = count(3);
        sum.pushed = count(4);
        sum.listings = 7;
        sum.failed_listings.push(listing_failure("a", "x"));
        assert_eq!(
            partial_failures(&sum),
            [
                "2 entries refused: not signed by a trusted key (KACHE_TRUSTED_KEYS); the build compiles them",
                // failed + refused + pulled + pushed + skipped
                "3 of 15 transfers failed",
                "1 of 7 listings failed",
            ]
        );
    }

    /// Makes every listing of `prefix` fail with `kind`.
    fn fail(remote: &DirRemote, prefix: &str, kind: ErrorKind) {
        remote.fail.lock().unwrap().insert(prefix.to_string(), kind);
    }

    #[test]
    fn list_fails_only_the_crates_whose_listing_failed() {
        let d = tempfile::tempdir().unwrap();
        let remote = DirRemote::new(d.path());
        let ka = "a".repeat(64);
        for (c, k) in [("a", &ka), ("b", &"b".repeat(64))] {
            let name = layout::object_name("p", c, k);
            let p = d.path().join(&name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs_write(&p, "archive");
        }
        let prefixes = vec![
            layout::crate_prefix("p", "a"),
            layout::crate_prefix("p", "b"),
        ];
        fail(&remote, &prefixes[1], ErrorKind::Transient);
        let mut reporter = Reporter::new(Progress::Off);
        let (found, failed) = list(
            &pool(),
            &remote,
            "p",
            &prefixes,
            Direction::Push,
            &|c| (c == "b").then_some(3),
            &mut reporter,
        )
        .unwrap();
        let names: Vec<&str> = found.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, [layout::object_name("p", "a", &ka)]);
        assert_eq!(failed, BTreeSet::from(["b".to_string()]));
        assert_eq!(reporter.summary.listings, 2);
        let fl = &reporter.summary.failed_listings;
        assert_eq!(fl.len(), 1);
        assert_eq!(fl[0].crate_name.as_deref(), Some("b"));
        assert_eq!(fl[0].prefix, "p/b/");
        assert_eq!(fl[0].entries, Some(3));
        assert_eq!(fl[0].direction, Direction::Push);
        assert_eq!(fl[0].error, "cannot list dir://p/b/: injected Transient");
        assert!(!fl[0].fatal);
    }

    #[test]
    fn a_fatal_listing_failure_stops_the_sync() {
        let d = tempfile::tempdir().unwrap();
        let remote = DirRemote::new(d.path());
        let prefixes = vec![layout::root_prefix("p")];
        fail(&remote, &prefixes[0], ErrorKind::AccessDenied);
        let mut reporter = Reporter::new(Progress::Off);
        let err = list(
            &pool(),
            &remote,
            "p",
            &prefixes,
            Direction::Pull,
            &|_| None,
            &mut reporter,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot list dir://p/: injected AccessDenied"
        );
        let fl = &reporter.summary.failed_listings;
        assert_eq!(fl.len(), 1);
        assert!(fl[0].fatal);
        // The root prefix is every crate's.
        assert_eq!(fl[0].crate_name, None);
        assert!(reporter.nothing_listed());
    }
}
