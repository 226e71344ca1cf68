/*!
Running the plan: listings and transfers on one rayon pool of
`s3_concurrency` threads, so no more requests than that are ever in
flight. Workers never print: each sends one `Outcome` per transfer.
*/

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};
use rayon::ThreadPool;
use rayon::prelude::*;

use super::plan::{Direction, Transfer, totals};
use super::report::Outcome;
use crate::remote::{ErrorKind, Listed, Remote, RemoteError, layout};
use crate::store::Store;
use crate::store::archive::{self, Packed, Unpacked};
use crate::trust::{Policy, Refused};

/// What every transfer needs.
pub(crate) struct Ctx<'a> {
    pub(crate) store: &'a Store,
    pub(crate) remote: &'a dyn Remote,
    /// The bucket prefix (object names are parsed against it).
    pub(crate) prefix: &'a str,
    pub(crate) level: i32,
    /// Signing uploads, verifying downloads.
    pub(crate) trust: &'a Policy,
    /// Set after a fatal error: the remaining transfers are not started.
    pub(crate) stop: AtomicBool,
}

/// Lists every prefix, in parallel on the pool. Each prefix gets its own
/// result: one failed listing fails only what lies under that prefix.
pub(crate) fn list_all(
    pool: &ThreadPool,
    remote: &dyn Remote,
    prefixes: &[String],
) -> Vec<(String, Result<Vec<Listed>, RemoteError>)> {
    pool.install(|| {
        prefixes
            .par_iter()
            .with_max_len(1)
            .map(|p| (p.clone(), remote.list(p)))
            .collect()
    })
}

/// Runs the transfers; one outcome each is sent on `tx` (none for
/// transfers skipped after a fatal error).
pub(crate) fn run(pool: &ThreadPool, ctx: &Ctx<'_>, transfers: Vec<Transfer>, tx: Sender<Outcome>) {
    pool.install(|| {
        transfers
            .into_par_iter()
            .with_max_len(1)
            .for_each_with(tx, |tx, t| {
                if ctx.stop.load(Ordering::Relaxed) {
                    return;
                }
                let o = match t.dir {
                    Direction::Pull => pull_one(ctx, t),
                    Direction::Push => push_one(ctx, t),
                };
                if matches!(o, Outcome::Fatal(..)) {
                    ctx.stop.store(true, Ordering::Relaxed);
                }
                let _ = tx.send(o);
            });
    });
}

/// Runs the transfers from this thread while `consume` reads their
/// outcomes on another, given the planned (entries, bytes); with nothing
/// to run, `consume` is not called. The transfers run here, not on a
/// thread of their own, so a caller that is itself a worker of `pool`
/// (the daemon's prefetch) helps run them instead of waiting on them.
pub(crate) fn run_with(
    pool: &ThreadPool,
    ctx: &Ctx<'_>,
    transfers: Vec<Transfer>,
    consume: impl FnOnce((u64, u64), &Receiver<Outcome>) + Send,
) {
    let Some(dir) = transfers.first().map(|t| t.dir) else {
        return;
    };
    debug_assert!(transfers.iter().all(|t| t.dir == dir));
    let total = totals(&transfers, dir);
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::scope(|s| {
        s.spawn(move || consume(total, &rx));
        run(pool, ctx, transfers, tx);
    });
}

fn failure(t: Transfer, what: &str, e: &RemoteError) -> Outcome {
    let msg = format!("{what}: {e}");
    if e.kind.is_fatal() {
        Outcome::Fatal(t, msg)
    } else {
        Outcome::Failed(t, msg)
    }
}

fn pull_one(ctx: &Ctx<'_>, t: Transfer) -> Outcome {
    if ctx.store.contains(&t.crate_name, &t.key) {
        return Outcome::Skipped(t, "already present");
    }
    let name = t.object.clone();
    let tmp = ctx.store.tmp_path("download");
    let res = pull_via(ctx, &t, &name, &tmp);
    let _ = fs::remove_file(&tmp);
    res.unwrap_or_else(|o| o)
}

/// With trusted keys, how much of an object is read first: its
/// signature is checked on these bytes before the rest is fetched. A
/// manifest that has not ended within the second is refused.
const HEADS: [u64; 2] = [64 << 10, 8 << 20];

fn pull_via(ctx: &Ctx<'_>, t: &Transfer, name: &str, tmp: &Path) -> Result<Outcome, Outcome> {
    let what = format!("cannot download {}", ctx.remote.describe(name));
    let parsed = layout::parse(ctx.prefix, name);
    let check = archive::Check {
        trusted: &ctx.trust.trusted,
        origin: parsed.as_ref().and_then(|p| p.origin.as_ref()),
    };
    if !check.trusted.is_empty() {
        let refused = |m: String| Outcome::Refused(t.clone(), format!("refused: {m}"));
        for (i, n) in HEADS.into_iter().enumerate() {
            let head = match ctx.remote.get_head(name, n.min(t.size)) {
                Ok(head) => head,
                Err(e) if e.kind == ErrorKind::NotFound => {
                    return Ok(Outcome::Skipped(t.clone(), "vanished remotely"));
                }
                // Not offered: the whole object is verified before staging.
                Err(e) if e.kind == ErrorKind::Unsupported => break,
                Err(e) => return Err(failure(t.clone(), &what, &e)),
            };
            let whole = head.len() as u64 >= t.size;
            match archive::check_head(&head, whole, &t.crate_name, &t.key, &check) {
                Err(r) => return Err(refused(r.to_string())),
                // A small object is all in its head: no further request.
                Ok(_) if whole => return import(ctx, t, name, &head[..], &check, t.size),
                Ok(true) => break,
                Ok(false) if i + 1 == HEADS.len() => {
                    return Err(refused(format!(
                        "not signed by a trusted key (its manifest does not end within the first {} bytes read to check it)",
                        head.len()
                    )));
                }
                Ok(false) => {}
            }
        }
    }
    let n = match ctx.remote.get(name, tmp, t.size) {
        Ok(n) => n,
        // Deleted since it was listed (a lifecycle rule, a cleanup).
        Err(e) if e.kind == ErrorKind::NotFound => {
            return Ok(Outcome::Skipped(t.clone(), "vanished remotely"));
        }
        Err(e) => return Err(failure(t.clone(), &what, &e)),
    };
    let file = File::open(tmp)
        .map_err(|e| Outcome::Failed(t.clone(), format!("cannot read {}: {e}", tmp.display())))?;
    let reader = std::io::BufReader::with_capacity(256 * 1024, file);
    import(ctx, t, name, reader, &check, n)
}

/// Unpacks the downloaded object (`n` bytes) into the store.
fn import(
    ctx: &Ctx<'_>,
    t: &Transfer,
    name: &str,
    reader: impl std::io::Read,
    check: &archive::Check<'_>,
    n: u64,
) -> Result<Outcome, Outcome> {
    match archive::unpack(ctx.store, &t.crate_name, &t.key, reader, check) {
        Ok(Unpacked::Imported(_)) => Ok(Outcome::Done(t.clone(), n)),
        Ok(Unpacked::AlreadyPresent) => Ok(Outcome::Skipped(t.clone(), "appeared locally")),
        Err(e) if e.is::<Refused>() => Err(Outcome::Refused(t.clone(), format!("refused: {e}"))),
        Err(e) if local_disk_failure(&e) => Err(Outcome::Fatal(
            t.clone(),
            format!(
                "cannot import {} into {}: {}",
                ctx.remote.describe(name),
                ctx.store.root().display(),
                root_cause(&e)
            ),
        )),
        Err(e) => Err(Outcome::Failed(
            t.clone(),
            format!(
                "corrupt object {}, nothing imported: {e:#}",
                ctx.remote.describe(name)
            ),
        )),
    }
}

/// The local disk is full or read-only: every further transfer would
/// fail the same way, so the sync stops.
fn local_disk_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::QuotaExceeded
                    | std::io::ErrorKind::ReadOnlyFilesystem
            )
        })
    })
}

fn root_cause(e: &anyhow::Error) -> String {
    e.chain()
        .last()
        .map_or_else(|| e.to_string(), ToString::to_string)
}

pub(crate) fn push_one(ctx: &Ctx<'_>, t: Transfer) -> Outcome {
    let name = t.object.clone();
    let tmp = ctx.store.tmp_path("upload");
    let res = push_via(ctx, &t, &name, &tmp);
    let _ = fs::remove_file(&tmp);
    res.unwrap_or_else(|o| o)
}

fn push_via(ctx: &Ctx<'_>, t: &Transfer, name: &str, tmp: &Path) -> Result<Outcome, Outcome> {
    let packed = (|| -> anyhow::Result<Packed> {
        let file = File::create(tmp)?;
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        let p = archive::pack(
            ctx.store,
            &t.crate_name,
            &t.key,
            &mut w,
            ctx.level,
            ctx.trust.signer.as_ref(),
        )?;
        w.flush()?;
        Ok(p)
    })()
    .map_err(|e| {
        if let Some(cb) = e.downcast_ref::<archive::CorruptBlob>() {
            ctx.store.drop_corrupt_entry(&t.crate_name, &t.key, &cb.hash);
            return Outcome::Failed(
                t.clone(),
                format!(
                    "local entry is corrupt, nothing uploaded: {cb}; the entry was removed (run `kache gc --verify` to check the rest of the store)"
                ),
            );
        }
        if crate::store::is_corrupt(&e) {
            return Outcome::Failed(
                t.clone(),
                format!("nothing uploaded: {e:#}; run `kache gc --verify` to remove it"),
            );
        }
        if local_disk_failure(&e) {
            Outcome::Fatal(
                t.clone(),
                format!(
                    "cannot pack {}/{} under {}: {}",
                    t.crate_name,
                    t.key,
                    ctx.store.root().join("tmp").display(),
                    root_cause(&e)
                ),
            )
        } else {
            Outcome::Failed(t.clone(), format!("cannot pack the entry: {e:#}"))
        }
    })?;
    let len = match packed {
        Packed::Vanished => return Ok(Outcome::Skipped(t.clone(), "vanished locally")),
        Packed::NotBuiltHere => {
            return Ok(Outcome::Skipped(
                t.clone(),
                "not built here: a signer vouches only for what this machine compiled",
            ));
        }
        Packed::Done(n) => n,
    };
    let what = format!("cannot upload {}", ctx.remote.describe(name));
    ctx.remote
        .put(name, tmp, len)
        .map_err(|e| failure(t.clone(), &what, &e))?;
    Ok(Outcome::Done(t.clone(), len))
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::remote::dir::DirRemote;
    use crate::remote::{ErrorKind, layout};
    use crate::store::{CacheKey, Entry, FileRecord};

    pub(crate) fn store_with(n: usize) -> (tempfile::TempDir, Store, Vec<Transfer>) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store")).unwrap();
        let mut ts = Vec::new();
        for i in 0..n {
            let (h, size) = s
                .put_blob_reader(format!("blob {i}").as_bytes(), None)
                .unwrap();
            let key = CacheKey::of(&blake3::hash(&i.to_le_bytes()));
            let foo = crate::store::ids::test::krate("foo");
            let e = Entry::new(
                foo.clone(),
                key.clone(),
                vec![FileRecord {
                    name: "libfoo.rlib".into(),
                    hash: h,
                    size,
                    executable: false,
                }],
            );
            s.publish(&e).unwrap();
            ts.push(Transfer {
                dir: Direction::Push,
                crate_name: foo,
                object: layout::object_name("p", "foo", &key),
                key,
                size,
            });
        }
        (d, s, ts)
    }

    pub(crate) fn pool(n: usize) -> ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    /// A context on prefix `p`, level 3, no signing or verifying.
    pub(crate) fn ctx_on<'a>(store: &'a Store, remote: &'a dyn Remote) -> Ctx<'a> {
        Ctx {
            store,
            remote,
            prefix: "p",
            level: 3,
            trust: &NO_TRUST,
            stop: AtomicBool::new(false),
        }
    }

    static NO_TRUST: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default);

    pub(crate) fn run_all(ctx: &Ctx<'_>, pool: &ThreadPool, ts: Vec<Transfer>) -> Vec<Outcome> {
        let (tx, rx) = crossbeam_channel::unbounded();
        run(pool, ctx, ts, tx);
        rx.iter().collect()
    }

    #[test]
    fn push_then_pull_within_the_bound() {
        let (d, s, ts) = store_with(12);
        let remote = DirRemote::new(&d.path().join("bucket"));
        let ctx = ctx_on(&s, &remote);
        let out = run_all(&ctx, &pool(3), ts.clone());
        assert_eq!(out.len(), 12);
        assert!(out.iter().all(|o| matches!(o, Outcome::Done(..))));
        assert_eq!(remote.max_inflight.load(Ordering::SeqCst), 3);

        let s2 = Store::open(&d.path().join("store2")).unwrap();
        let ctx2 = ctx_on(&s2, &remote);
        // A pull's size is the object's, as listed.
        let pulls: Vec<Transfer> = ts
            .iter()
            .map(|t| Transfer {
                dir: Direction::Pull,
                size: fs::metadata(d.path().join("bucket").join(&t.object))
                    .unwrap()
                    .len(),
                ..t.clone()
            })
            .collect();
        let out = run_all(&ctx2, &pool(3), pulls.clone());
        assert!(out.iter().all(|o| matches!(o, Outcome::Done(..))));
        assert_eq!(s2.list().unwrap().len(), 12);
        // Already there: skipped without a request.
        let before = remote.requests.load(Ordering::SeqCst);
        let out = run_all(&ctx2, &pool(3), pulls.clone());
        assert!(out.iter().all(|o| matches!(o, Outcome::Skipped(..))));
        assert_eq!(remote.requests.load(Ordering::SeqCst), before);

        // An object larger than it was listed is not imported.
        let s3 = Store::open(&d.path().join("store3")).unwrap();
        let short: Vec<Transfer> = pulls
            .iter()
            .map(|t| Transfer {
                size: t.size - 1,
                ..t.clone()
            })
            .collect();
        let out = run_all(&ctx_on(&s3, &remote), &pool(3), short);
        assert!(
            out.iter()
                .all(|o| matches!(o, Outcome::Failed(_, m) if m.contains("larger than the"))),
            "{out:?}"
        );
        assert!(s3.list().unwrap().is_empty());
    }

    #[test]
    fn a_failed_listing_fails_only_its_prefix() {
        let (d, s, ts) = store_with(3);
        let remote = DirRemote::new(&d.path().join("bucket"));
        let ctx = ctx_on(&s, &remote);
        run_all(&ctx, &pool(2), ts);
        remote
            .fail
            .lock()
            .unwrap()
            .insert("p/bar/".into(), ErrorKind::Transient);
        let prefixes = ["p/foo/".to_string(), "p/bar/".into(), "p/baz/".into()];
        let got = list_all(&pool(2), &remote, &prefixes);
        let names: Vec<_> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            ["p/foo/", "p/bar/", "p/baz/"],
            "one result each, in order"
        );
        assert_eq!(got[0].1.as_ref().unwrap().len(), 3);
        assert_eq!(got[1].1.as_ref().unwrap_err().kind, ErrorKind::Transient);
        assert!(got[2].1.as_ref().unwrap().is_empty());
    }

    #[test]
    fn a_fatal_error_stops_the_rest() {
        let (d, s, ts) = store_with(20);
        let remote = DirRemote::new(&d.path().join("bucket"));
        for t in &ts {
            remote.fail.lock().unwrap().insert(
                layout::object_name("p", &t.crate_name, &t.key),
                ErrorKind::BadSignature,
            );
        }
        let ctx = ctx_on(&s, &remote);
        let out = run_all(&ctx, &pool(2), ts);
        assert!(out.len() < 20, "{} outcomes", out.len());
        assert!(out.iter().all(|o| matches!(o, Outcome::Fatal(..))));
    }

    #[test]
    fn vanished_entries_are_skipped_and_failures_reported() {
        let (d, s, ts) = store_with(4);
        s.remove(&ts[0].crate_name, &ts[0].key).unwrap();
        let remote = DirRemote::new(&d.path().join("bucket"));
        remote.fail.lock().unwrap().insert(
            layout::object_name("p", "foo", &ts[1].key),
            ErrorKind::Transient,
        );
        let ctx = ctx_on(&s, &remote);
        let out = run_all(&ctx, &pool(2), ts);
        let skipped = out
            .iter()
            .filter(|o| matches!(o, Outcome::Skipped(..)))
            .count();
        let failed = out
            .iter()
            .filter(|o| matches!(o, Outcome::Failed(..)))
            .count();
        let done = out
            .iter()
            .filter(|o| matches!(o, Outcome::Done(..)))
            .count();
        assert_eq!((skipped, failed, done), (1, 1, 2));
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }
}
