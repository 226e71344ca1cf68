/*!
Retention in the bucket: `kache gc --remote`, by last use.

S3 does not record reads, so kache records use itself, cheaply: every
sync run that pulls or pushes entries writes one small *use record*,
`{prefix}/.kache/uses/{time}-{nonce}.json` (the entries it moved), and
never rewrites an entry object. An entry's last use is the newest of
its object's `LastModified` (its push) and the use records naming it.

`kache gc --remote --max-age DUR | --max-size SIZE`:
1. takes the gc lock, `{prefix}/.kache/gc.lock`, so two gc runs never
   work at once (the others say so and do nothing; a lock older than an
   hour is a crashed gc's and is taken over). Where the service honours
   `If-None-Match: *` the conditional PUT is the lock; where it does not
   (Garage) a run writes the lock only if it saw none, waits two seconds
   and reads it back (see `take_lock`); the lock is read again before
   anything is deleted;
2. reads the use records and lists the entry objects;
3. picks the entries unused for longer than `--max-age`, or the least
   recently used until the rest fit `--max-size`;
4. reads the use records again and spares any entry a sync used in the
   meantime (a pull records what it is about to fetch before fetching
   it), then deletes in batches (`DeleteObjects`, one request per object
   where the service lacks it), at most `s3_concurrency` at once;
5. compacts: one record of the survivors' last uses replaces the
   records it read, so the records never grow beyond one per sync run
   since the last gc.
*/

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::config::Config;
use crate::remote::s3::S3Remote;
use crate::remote::{ErrorKind, Remote, layout};
use crate::store::{CacheKey, CrateName, now_secs};
use crate::transfer::uses::{UseRecord, nonce};
use crate::units::{format_size, parse_size};

/// A lock older than this belongs to a gc that died.
const STALE_LOCK_SECS: u64 = 3600;
/// How long a lock taken without `If-None-Match` waits for a competing
/// run's write to land before reading its own back.
const SETTLE: Duration = Duration::from_secs(2);
/// Objects per `DeleteObjects` request (the S3 maximum).
const BATCH: usize = 1000;
/// The largest use record read.
const MAX_RECORD: u64 = 64 << 20;

/// An entry object with its last use.
#[derive(Clone, Debug, Serialize)]
struct Candidate {
    #[serde(rename = "crate")]
    crate_name: CrateName,
    key: CacheKey,
    object: String,
    size: u64,
    last_use: u64,
}

/// Reads every use record under the prefix not in `seen`; folds them
/// into `last`. Returns the names read.
fn read_records(
    pool: &rayon::ThreadPool,
    remote: &dyn Remote,
    prefix: &str,
    seen: &BTreeSet<String>,
    last: &mut BTreeMap<(String, String), u64>,
) -> Result<Vec<String>> {
    let listed = remote.list(&layout::uses_prefix(prefix)).map_err(|e| {
        anyhow!(
            "cannot list the use records {}: {e}",
            remote.describe(&layout::uses_prefix(prefix))
        )
    })?;
    let names: Vec<String> = listed
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.ends_with(".json") && !seen.contains(n))
        .collect();
    let got: Vec<(String, Result<Vec<u8>, crate::remote::RemoteError>)> = pool.install(|| {
        use rayon::prelude::*;
        names
            .par_iter()
            .map(|n| (n.clone(), remote.get_bytes(n, MAX_RECORD)))
            .collect()
    });
    let mut read = Vec::new();
    for (n, r) in got {
        let bytes = match r {
            Ok(b) => b,
            // Compacted away by another gc since the listing.
            Err(e) if e.kind == ErrorKind::NotFound => continue,
            Err(e) => bail!("cannot read the use record {}: {e}", remote.describe(&n)),
        };
        // A record that does not parse is left alone (and not counted).
        let Ok(rec) = serde_json::from_slice::<UseRecord>(&bytes) else {
            continue;
        };
        for (c, k) in rec.entries {
            let v = last.entry((c, k)).or_default();
            *v = (*v).max(rec.ts);
        }
        for (c, k, t) in rec.last_use {
            let v = last.entry((c, k)).or_default();
            *v = (*v).max(t);
        }
        read.push(n);
    }
    Ok(read)
}

/// The gc lock, held by this run.
struct Lock {
    name: String,
    me: Vec<u8>,
}

impl Lock {
    /// Whether the lock object still holds this run's bytes.
    fn still_ours(&self, remote: &dyn Remote) -> Result<bool> {
        Ok(read_lock(remote, &self.name)?.as_deref() == Some(&self.me[..]))
    }
}

/// The lock object's bytes, `None` when there is none.
fn read_lock(remote: &dyn Remote, name: &str) -> Result<Option<Vec<u8>>> {
    match remote.get_bytes(name, 4096) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("cannot read the gc lock {}: {e}", remote.describe(name)),
    }
}

/// Whether a lock's bytes name a gc that is still alive.
fn live(held: &[u8]) -> bool {
    let v: serde_json::Value = serde_json::from_slice(held).unwrap_or_default();
    now_secs().saturating_sub(v["ts"].as_u64().unwrap_or(0)) <= STALE_LOCK_SECS
}

/// Takes the gc lock; `None` when another live gc holds it.
///
/// Where the service honours `If-None-Match: *` (AWS S3, `MinIO`) the
/// conditional PUT is the lock; a second conditional PUT of the same
/// bytes answering 412 proves the service checks. Where it does not
/// (Garage, where the last writer wins), the lock is: no live lock seen,
/// our PUT within `SETTLE / 2` of that look, then `SETTLE` of quiet, then
/// our bytes read back. Two runs that both saw no lock both wrote within
/// `SETTLE / 2` of it, so each reads back after the other's write and
/// only the last writer goes on; a run that looks later sees the lock.
/// The same wait follows taking over a stale lock, since two runs may
/// both have removed it.
fn take_lock(remote: &dyn Remote, prefix: &str) -> Result<Option<Lock>> {
    let name = layout::gc_lock(prefix);
    let me = format!("{{\"ts\":{},\"nonce\":\"{}\"}}", now_secs(), nonce()).into_bytes();
    let put = |if_absent| remote.put_bytes(&name, &me, if_absent);
    for _ in 0..3 {
        let looked = Instant::now();
        let held = read_lock(remote, &name)?;
        let stale = match &held {
            Some(h) if *h == me => false,
            Some(h) if live(h) => return Ok(None),
            Some(_) => true,
            None => false,
        };
        if stale {
            remote
                .delete(std::slice::from_ref(&name))
                .map_err(|e| anyhow!("cannot remove a stale gc lock: {e}"))?;
        }
        match put(true) {
            Ok(()) => {}
            // Ours when a retried PUT found its own first attempt.
            Err(e) if e.kind == ErrorKind::Precondition => {
                if read_lock(remote, &name)?.as_deref() != Some(&me[..]) {
                    return Ok(None);
                }
            }
            Err(e) => bail!("cannot take the gc lock {}: {e}", remote.describe(&name)),
        }
        let checked = match put(true) {
            Err(e) if e.kind == ErrorKind::Precondition => true,
            Ok(()) => false,
            Err(e) => bail!("cannot take the gc lock {}: {e}", remote.describe(&name)),
        };
        if checked && !stale {
            return Ok(Some(Lock { name, me }));
        }
        if looked.elapsed() > SETTLE / 2 {
            // Too slow to be sure no other run looked at the same time:
            // look again (our own bytes do not stop us).
            continue;
        }
        std::thread::sleep(SETTLE);
        let lock = Lock { name, me };
        return Ok(lock.still_ours(remote)?.then_some(lock));
    }
    // Leave no lock of ours behind to block the next gc for an hour.
    if read_lock(remote, &name).is_ok_and(|b| b.as_deref() == Some(&me[..])) {
        let _ = remote.delete(std::slice::from_ref(&name));
    }
    bail!(
        "cannot take the gc lock {}: the service answers too slowly to take it safely; try again",
        remote.describe(&name)
    )
}

pub(crate) fn gc_remote(
    cfg: &Config,
    max_age: Option<u64>,
    max_size: Option<&str>,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode> {
    let started = Instant::now();
    // Ages count from the start (the lock may take a moment).
    let now = now_secs();
    let max_size = max_size
        .map(|s| {
            parse_size(s).ok_or_else(|| {
                anyhow!("invalid value `{s}` for --max-size: expected a size such as 512MiB, 10GB or 50GiB")
            })
        })
        .transpose()?;
    if max_age.is_none() && max_size.is_none() {
        bail!("kache gc --remote needs --max-age DUR or --max-size SIZE (or both)");
    }
    let remote = S3Remote::from_config(cfg)?;
    let prefix = cfg.prefix.value.as_str();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.s3_concurrency.value)
        .thread_name(|i| format!("kache-gc-{i}"))
        .build()
        .context("cannot start the gc threads")?;

    let lock = if dry_run {
        None
    } else if let Some(l) = take_lock(&remote, prefix)? {
        Some(l)
    } else {
        crate::transfer::report::warning(
            "another kache gc --remote holds the lock on this bucket; nothing done",
        );
        return Ok(ExitCode::SUCCESS);
    };
    let gc = Gc {
        pool: &pool,
        remote: &remote,
        prefix,
        now,
        started,
    };
    let mode = match &lock {
        Some(l) => Mode::Delete(l),
        None => Mode::DryRun,
    };
    let res = gc.run(max_age, max_size, mode, json);
    // Remove the lock only while it is ours (a run that lost it to a
    // stale takeover leaves the new holder's alone).
    if let Some(l) = lock
        && l.still_ours(&remote).unwrap_or(false)
    {
        let _ = remote.delete(&[l.name]);
    }
    res
}

/// One `gc --remote` run: the bucket, and the time its ages count from.
struct Gc<'a> {
    pool: &'a rayon::ThreadPool,
    remote: &'a dyn Remote,
    prefix: &'a str,
    now: u64,
    started: Instant,
}

/// Whether a run deletes (holding the lock) or only plans.
#[derive(Clone, Copy)]
enum Mode<'a> {
    DryRun,
    Delete(&'a Lock),
}

/// What a run decided and did, for the report.
struct Outcome {
    all: Vec<Candidate>,
    doomed: Vec<Candidate>,
    spared: u64,
    failed: Vec<(String, String)>,
    records_compacted: usize,
}

impl Gc<'_> {
    fn run(
        &self,
        max_age: Option<u64>,
        max_size: Option<u64>,
        mode: Mode<'_>,
        json: bool,
    ) -> Result<ExitCode> {
        let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut records = read_records(
            self.pool,
            self.remote,
            self.prefix,
            &BTreeSet::new(),
            &mut last,
        )?;
        let all = self.candidates(&last)?;
        let mut doomed = pick(&all, max_age, max_size, self.now);
        let mut out = Outcome {
            all: Vec::new(),
            doomed: Vec::new(),
            spared: 0,
            failed: Vec::new(),
            records_compacted: 0,
        };
        if let Mode::Delete(lock) = mode {
            if !doomed.is_empty() {
                out.spared = self.spare_fresh(&mut records, &mut doomed, &mut last)?;
            }
            if !doomed.is_empty() && !lock.still_ours(self.remote)? {
                crate::transfer::report::warning(
                    "another kache gc --remote took the lock on this bucket while this one planned; nothing deleted",
                );
                return Ok(ExitCode::SUCCESS);
            }
            out.failed = self.delete(&doomed)?;
            if !records.is_empty() {
                self.compact(&records, last, &all, &doomed)?;
                out.records_compacted = records.len();
            }
        }
        out.all = all;
        out.doomed = doomed;
        self.report(&out, matches!(mode, Mode::DryRun), json)
    }

    /// Every entry object with its last use (the newer of its push and
    /// the use records naming it), least recently used first.
    fn candidates(&self, last: &BTreeMap<(String, String), u64>) -> Result<Vec<Candidate>> {
        let root = layout::root_prefix(self.prefix);
        let listed = self
            .remote
            .list(&root)
            .map_err(|e| anyhow!("cannot list {}: {e}", self.remote.describe(&root)))?;
        let mut all: Vec<Candidate> = listed
            .into_iter()
            .filter_map(|l| {
                let p = layout::parse(self.prefix, &l.name)?;
                let pushed = l.modified.unwrap_or(self.now);
                let used = last
                    .get(&(p.crate_name.to_string(), p.key.to_string()))
                    .copied()
                    .unwrap_or(0);
                Some(Candidate {
                    crate_name: p.crate_name,
                    key: p.key,
                    object: l.name,
                    size: l.size,
                    last_use: pushed.max(used),
                })
            })
            .collect();
        all.sort_by(|a, b| (a.last_use, &a.object).cmp(&(b.last_use, &b.object)));
        Ok(all)
    }

    /// Spares what a sync used since the records were read; returns how
    /// many were spared.
    fn spare_fresh(
        &self,
        records: &mut Vec<String>,
        doomed: &mut Vec<Candidate>,
        last: &mut BTreeMap<(String, String), u64>,
    ) -> Result<u64> {
        let seen: BTreeSet<String> = records.iter().cloned().collect();
        let mut fresh = BTreeMap::new();
        records.extend(read_records(
            self.pool,
            self.remote,
            self.prefix,
            &seen,
            &mut fresh,
        )?);
        let before = doomed.len();
        doomed.retain(|c| !fresh.contains_key(&(c.crate_name.to_string(), c.key.to_string())));
        for ((c, k), t) in fresh {
            let v = last.entry((c, k)).or_default();
            *v = (*v).max(t);
        }
        Ok((before - doomed.len()) as u64)
    }

    /// Deletes in batches, at most `s3_concurrency` at once; returns what
    /// could not be deleted.
    fn delete(&self, doomed: &[Candidate]) -> Result<Vec<(String, String)>> {
        let names: Vec<String> = doomed.iter().map(|c| c.object.clone()).collect();
        let results: Vec<Result<Vec<(String, String)>, crate::remote::RemoteError>> =
            self.pool.install(|| {
                use rayon::prelude::*;
                names
                    .par_chunks(BATCH)
                    .map(|b| self.remote.delete(b))
                    .collect()
            });
        let mut failed = Vec::new();
        for r in results {
            match r {
                Ok(f) => failed.extend(f),
                Err(e) if e.kind.is_fatal() => bail!("cannot delete: {e}"),
                Err(e) => failed.push((String::new(), e.message)),
            }
        }
        Ok(failed)
    }

    /// One record of the survivors' last uses replaces the records read
    /// (entries gone from the bucket are dropped).
    fn compact(
        &self,
        records: &[String],
        last: BTreeMap<(String, String), u64>,
        all: &[Candidate],
        doomed: &[Candidate],
    ) -> Result<()> {
        let id = |c: &Candidate| (c.crate_name.to_string(), c.key.to_string());
        let gone: BTreeSet<(String, String)> = doomed.iter().map(id).collect();
        let alive: BTreeSet<(String, String)> = all.iter().map(id).collect();
        let keep: Vec<(String, String, u64)> = last
            .into_iter()
            .filter(|(id, _)| alive.contains(id) && !gone.contains(id))
            .map(|((c, k), t)| (c, k, t))
            .collect();
        let rec = UseRecord {
            ts: self.now,
            entries: Vec::new(),
            last_use: keep,
        };
        let name = layout::use_record(self.prefix, self.now, Some("compact"), &nonce());
        let body = serde_json::to_vec(&rec)?;
        self.remote
            .put_bytes(&name, &body, false)
            .map_err(|e| anyhow!("cannot write the compacted use record: {e}"))?;
        let _ = self.remote.delete(records);
        Ok(())
    }

    fn report(&self, o: &Outcome, dry_run: bool, json: bool) -> Result<ExitCode> {
        let total: u64 = o.all.iter().map(|c| c.size).sum();
        let deleted_bytes: u64 = o.doomed.iter().map(|c| c.size).sum();
        let kept = o.all.len() - o.doomed.len();
        let out = &mut std::io::stdout().lock();
        if json {
            let v = serde_json::json!({
                "dry_run": dry_run,
                "entries": o.all.len(),
                "bytes": total,
                "deleted": {"entries": o.doomed.len(), "bytes": deleted_bytes},
                "kept": {"entries": kept, "bytes": total - deleted_bytes},
                "spared_by_concurrent_use": o.spared,
                "failed": o.failed.len(),
                "use_records_compacted": o.records_compacted,
                "candidates": if dry_run { serde_json::to_value(&o.doomed)? } else { serde_json::Value::Null },
                "seconds": self.started.elapsed().as_secs_f64(),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        } else {
            if dry_run {
                for c in &o.doomed {
                    writeln!(
                        out,
                        "delete  {:<24} {}  {:>10}  last used {} ago",
                        c.crate_name,
                        &c.key[..12],
                        format_size(c.size),
                        crate::units::format_age(self.now.saturating_sub(c.last_use))
                    )?;
                }
            }
            let verb = if dry_run { "would delete" } else { "deleted" };
            writeln!(
                out,
                "{verb} {} entries ({}), kept {} ({}) of {} in the bucket",
                o.doomed.len(),
                format_size(deleted_bytes),
                kept,
                format_size(total - deleted_bytes),
                o.all.len()
            )?;
            if o.spared > 0 {
                writeln!(out, "spared {} entries a sync used during the gc", o.spared)?;
            }
        }
        if !o.failed.is_empty() {
            for (n, e) in o.failed.iter().take(10) {
                eprintln!("error: cannot delete {}: {e}", self.remote.describe(n));
            }
            return Ok(ExitCode::from(1));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The entries to delete: unused for longer than `max_age`, or the least
/// recently used (`all` is sorted so) until the rest fit `max_size`.
fn pick(
    all: &[Candidate],
    max_age: Option<u64>,
    max_size: Option<u64>,
    now: u64,
) -> Vec<Candidate> {
    let mut remaining: u64 = all.iter().map(|c| c.size).sum();
    let mut doomed = Vec::new();
    for c in all {
        let old = max_age.is_some_and(|a| now.saturating_sub(c.last_use) > a);
        let over = max_size.is_some_and(|m| remaining > m);
        if old || over {
            remaining -= c.size;
            doomed.push(c.clone());
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, size: u64, last_use: u64) -> Candidate {
        Candidate {
            crate_name: crate::store::ids::test::krate(name),
            key: crate::store::ids::test::key(&"e".repeat(64)),
            object: format!("p/{name}/x.tar.zst"),
            size,
            last_use,
        }
    }

    #[test]
    fn picks_by_age_and_by_size_least_recently_used_first() {
        let now = 1_000_000;
        // Sorted least recently used first, as `candidates` returns them.
        let all = vec![
            cand("a", 10, now - 900),
            cand("b", 20, now - 500),
            cand("c", 30, now - 100),
        ];
        let names = |v: Vec<Candidate>| -> Vec<String> {
            v.into_iter().map(|c| c.crate_name.into()).collect()
        };
        assert_eq!(names(pick(&all, Some(600), None, now)), ["a"]);
        assert_eq!(names(pick(&all, None, Some(30), now)), ["a", "b"]);
        assert_eq!(names(pick(&all, None, Some(60), now)), Vec::<String>::new());
        // Both: either rule dooms an entry.
        assert_eq!(names(pick(&all, Some(200), Some(60), now)), ["a", "b"]);
        assert!(pick(&all, Some(0), None, now).len() == 3);
    }
}
