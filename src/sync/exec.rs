/*!
Running the plan: listings and transfers on one rayon pool of
`s3_concurrency` threads, so no more requests than that are ever in
flight. Workers never print: each sends one `Outcome` per transfer.
*/

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Sender;
use rayon::ThreadPool;
use rayon::prelude::*;

use super::plan::{Direction, Transfer};
use super::report::Outcome;
use crate::remote::{Listed, Remote, RemoteError, layout};
use crate::store::Store;
use crate::store::archive::{self, Packed, Unpacked};

/// What every transfer needs.
pub(crate) struct Ctx<'a> {
    pub(crate) store: &'a Store,
    pub(crate) remote: &'a dyn Remote,
    pub(crate) prefix: &'a str,
    pub(crate) level: i32,
    /// Set after a fatal error: the remaining transfers are not started.
    pub(crate) stop: AtomicBool,
}

/// Lists every prefix, in parallel on the pool. The first error wins
/// (returned with the prefix it concerns).
pub(crate) fn list_all(
    pool: &ThreadPool,
    remote: &dyn Remote,
    prefixes: &[String],
) -> Result<Vec<Listed>, (String, RemoteError)> {
    let pages: Result<Vec<Vec<Listed>>, (String, RemoteError)> = pool.install(|| {
        prefixes
            .par_iter()
            .with_max_len(1)
            .map(|p| remote.list(p).map_err(|e| (p.clone(), e)))
            .collect()
    });
    Ok(pages?.into_iter().flatten().collect())
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
    let name = layout::object_name(ctx.prefix, &t.crate_name, &t.key);
    let tmp = ctx.store.tmp_path("download");
    let res = pull_via(ctx, &t, &name, &tmp);
    let _ = fs::remove_file(&tmp);
    res.unwrap_or_else(|o| o)
}

fn pull_via(ctx: &Ctx<'_>, t: &Transfer, name: &str, tmp: &Path) -> Result<Outcome, Outcome> {
    let what = format!("cannot download {}", ctx.remote.describe(name));
    let n = ctx
        .remote
        .get(name, tmp)
        .map_err(|e| failure(t.clone(), &what, &e))?;
    let file = File::open(tmp)
        .map_err(|e| Outcome::Failed(t.clone(), format!("cannot read {}: {e}", tmp.display())))?;
    let reader = std::io::BufReader::with_capacity(256 * 1024, file);
    match archive::unpack(ctx.store, &t.crate_name, &t.key, reader) {
        Ok(Unpacked::Imported(_)) => Ok(Outcome::Done(t.clone(), n)),
        Ok(Unpacked::AlreadyPresent) => Ok(Outcome::Skipped(t.clone(), "appeared locally")),
        Err(e) => Err(Outcome::Failed(
            t.clone(),
            format!(
                "corrupt object {}, nothing imported: {e:#}",
                ctx.remote.describe(name)
            ),
        )),
    }
}

fn push_one(ctx: &Ctx<'_>, t: Transfer) -> Outcome {
    let name = layout::object_name(ctx.prefix, &t.crate_name, &t.key);
    let tmp = ctx.store.tmp_path("upload");
    let res = push_via(ctx, &t, &name, &tmp);
    let _ = fs::remove_file(&tmp);
    res.unwrap_or_else(|o| o)
}

fn push_via(ctx: &Ctx<'_>, t: &Transfer, name: &str, tmp: &Path) -> Result<Outcome, Outcome> {
    let packed = (|| -> anyhow::Result<Packed> {
        let file = File::create(tmp)?;
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        let p = archive::pack(ctx.store, &t.crate_name, &t.key, &mut w, ctx.level)?;
        w.flush()?;
        Ok(p)
    })()
    .map_err(|e| Outcome::Failed(t.clone(), format!("cannot pack the entry: {e:#}")))?;
    let len = match packed {
        Packed::Vanished => return Ok(Outcome::Skipped(t.clone(), "vanished locally")),
        Packed::Done(n) => n,
    };
    let what = format!("cannot upload {}", ctx.remote.describe(name));
    ctx.remote
        .put(name, tmp, len)
        .map_err(|e| failure(t.clone(), &what, &e))?;
    Ok(Outcome::Done(t.clone(), len))
}
