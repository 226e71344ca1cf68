/*!
`kache sync`: move entries between the local store and S3.

The order of a run: resolve the settings and credentials, find the
Cargo.lock filter, list the remote (per crate prefix, in parallel),
plan, then run the transfers on the pool while `report` draws progress.
With neither `--pull` nor `--push`, pull runs first, then push (which
reuses what the pull listed and lists only the crates it still lacks).
*/

pub(crate) mod exec;
pub(crate) mod plan;
pub(crate) mod report;

use std::collections::{BTreeSet, HashSet};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use rayon::ThreadPool;

use crate::cli::SyncCmd;
use crate::config::{Config, Credentials, config_path};
use crate::lockfile;
use crate::remote::s3::S3Remote;
use crate::remote::{Remote, RemoteError, layout};
use crate::store::Store;
use plan::{Direction, EntryId, RemoteIndex, Transfer};
use report::{Progress, Reporter};

pub(crate) fn run(cfg: &Config, cmd: &SyncCmd) -> Result<ExitCode> {
    let started = Instant::now();
    let (do_pull, do_push) = if cmd.pull || cmd.push {
        (cmd.pull, cmd.push)
    } else {
        (true, true)
    };
    if cfg.bucket.value.is_none() {
        let file = config_path().map_or_else(
            || "the config file".to_string(),
            |p| p.display().to_string(),
        );
        bail!(
            "no remote configured: no S3 bucket is set (set KACHE_S3_BUCKET, or cache.remote.bucket in {file})"
        );
    }
    let creds = Credentials::resolve(cfg)
        .context("cannot load S3 credentials")?
        .ok_or_else(|| {
            anyhow!(
                "no S3 credentials found (set KACHE_S3_ACCESS_KEY and KACHE_S3_SECRET_KEY, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials)"
            )
        })?;
    let remote = S3Remote::new(cfg, &creds)?;
    let store = if cmd.dry_run {
        Store::at(&cfg.cache_dir.value)
    } else {
        Store::open(&cfg.cache_dir.value)?
    };
    let prefix = cfg.prefix.value.as_str();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.s3_concurrency.value)
        .thread_name(|i| format!("kache-sync-{i}"))
        .build()
        .context("cannot start the sync threads")?;

    let filter = if do_pull && !cmd.all {
        workspace_filter(cmd)?
    } else {
        None
    };

    let mut local: HashSet<EntryId> = local_entries(&store)?;
    let mut idx = RemoteIndex::new();
    // Crates whose remote prefix is already listed (`None`: all of them).
    let mut listed: Option<BTreeSet<String>> = Some(BTreeSet::new());
    let mut plan_all: Vec<Transfer> = Vec::new();
    let ctx = exec::Ctx {
        store: &store,
        remote: &remote,
        prefix,
        level: cfg.compression_level.value,
        stop: AtomicBool::new(false),
    };
    let mut reporter = Reporter::new(Progress::from_env());

    if do_pull {
        let prefixes = plan::pull_prefixes(prefix, filter.as_ref());
        let found = list(&pool, &remote, &prefixes)?;
        idx = plan::index(prefix, found);
        listed = filter.clone();
        let pull = plan::plan_pull(&local, &idx, filter.as_ref());
        if cmd.dry_run {
            plan_all.extend(pull);
        } else {
            execute(&pool, &ctx, &mut reporter, "pull", pull);
            if reporter.summary.fatal.is_none() {
                local = local_entries(&store)?;
            }
        }
    }

    if do_push && reporter.summary.fatal.is_none() {
        let crates = plan::push_crates(local.iter());
        let missing: Vec<String> = match &listed {
            None => Vec::new(),
            Some(done) => crates
                .iter()
                .filter(|c| !done.contains(*c))
                .map(|c| layout::crate_prefix(prefix, c))
                .collect(),
        };
        let found = list(&pool, &remote, &missing)?;
        for (c, keys) in plan::index(prefix, found) {
            idx.entry(c).or_default().extend(keys);
        }
        let candidates: Vec<(EntryId, u64)> = local
            .iter()
            .filter(|(c, k)| !idx.get(c).is_some_and(|keys| keys.contains_key(k)))
            .filter_map(|(c, k)| match store.get(c, k) {
                Ok(e) => Some(((c.clone(), k.clone()), e?.size())),
                // Corrupt or unreadable: planned anyway, so the push
                // reports it (packing fails it) rather than skipping it
                // silently.
                Err(_) => Some(((c.clone(), k.clone()), 0)),
            })
            .collect();
        let push = plan::plan_push(&candidates, &idx);
        if cmd.dry_run {
            plan_all.extend(push);
        } else {
            execute(&pool, &ctx, &mut reporter, "push", push);
        }
    }

    if cmd.dry_run {
        report::print_plan(&plan_all, cmd.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut summary = reporter.summary;
    summary.seconds = started.elapsed().as_secs_f64();
    report::print_summary(&summary, cmd.json)?;
    if let Some(fatal) = &summary.fatal {
        bail!("{fatal}");
    }
    if summary.failed.entries > 0 && !cmd.allow_partial {
        eprintln!(
            "error: {} of {} transfers failed (--allow-partial exits 0 anyway)",
            summary.failed.entries,
            summary.failed.entries
                + summary.pulled.entries
                + summary.pushed.entries
                + summary.skipped.entries
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The crates of the workspace's Cargo.lock, or `None` (with a note)
/// if there is none.
fn workspace_filter(cmd: &SyncCmd) -> Result<Option<BTreeSet<String>>> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let start = lockfile::start_dir(cmd.manifest_path.as_deref(), &cwd)?;
    match lockfile::find_from(&start) {
        Some(p) => Ok(Some(lockfile::crates(&p)?)),
        None => {
            report::note(&format!(
                "no Cargo.lock found in {} or above; pulling every crate",
                start.display()
            ));
            Ok(None)
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

fn list(
    pool: &ThreadPool,
    remote: &dyn Remote,
    prefixes: &[String],
) -> Result<Vec<crate::remote::Listed>> {
    exec::list_all(pool, remote, prefixes).map_err(|(p, e): (String, RemoteError)| {
        anyhow!("cannot list {}: {e}", remote.describe(&p))
    })
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
