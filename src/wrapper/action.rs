/*!
The one pipeline every cached action goes through: a rustc compile
(`rustc`), a C compile (`cc`), and whatever kind comes next.

The flow, written once in [`cached`]:

1. look the base key's recorded input lists up in the store;
2. on a miss, take the key's compile lock (so parallel builds compile
   once) and look again;
3. on a miss, ask the daemon for a remote hit and look again;
4. a hit restores the outputs and replays the recorded stdout and
   stderr, running nothing (`KACHE_VERIFY=1` runs it anyway and
   compares);
5. a miss runs the program for real, its output passing through live,
   and records the entry, keyed by what the run actually read.

Each kind implements [`Action`]: how it runs, which entries fit it, how
it restores, compares and records. The kind-independent steps (the
lookup, the replay, the events, publishing and handing the entry to the
daemon) live here and nowhere else.
*/

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use super::background::{self, Side};
use super::explain::Explain;
use super::inputs;
use super::paths::Paths;
use super::probe::Probe;
use super::probe::{self, RealProbe};
use super::process::{run_plain, truthy, warn};
use super::scan::RootScan;
use crate::config::WrapperConfig;
use crate::store::entry::{Inputs, Origin};
use crate::store::events::{Event, Outcome};
use crate::store::{BlobHash, CacheKey, CrateName, Entry, Store};

/// What every cacheable action works with.
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a WrapperConfig,
    pub(crate) store: &'a Store,
    /// The store folder of its entries.
    pub(crate) crate_name: CrateName,
    pub(crate) paths: Paths,
    pub(crate) probe: RealProbe<'a>,
    pub(crate) start: Instant,
    /// The kind, as events and entries name it: `None` for Rust.
    pub(crate) lang: Option<&'static str>,
}

/// What every real run leaves, whatever the kind.
pub(crate) struct Ran {
    pub(crate) code: i32,
    pub(crate) compile_ms: u64,
    pub(crate) out_raw: Vec<u8>,
    pub(crate) err_raw: Vec<u8>,
    /// The filesystem's clock before the run started.
    pub(crate) before: Option<SystemTime>,
}

impl Ran {
    /// What `run_pumped` returned for a run started at `t0`.
    pub(crate) fn finished(
        (status, out_raw, err_raw): (std::process::ExitStatus, Vec<u8>, Vec<u8>),
        t0: Instant,
        before: Option<SystemTime>,
    ) -> Ran {
        Ran {
            code: super::process::exit_code(status),
            compile_ms: crate::units::millis(t0.elapsed()),
            out_raw,
            err_raw,
            before,
        }
    }
}

/// One kind of cached action.
pub(crate) trait Action<'a> {
    /// What a real run leaves beyond [`Ran`] (rustc's link line, the C
    /// compiler's dependency file).
    type Extra;

    fn ctx(&self) -> &Ctx<'a>;

    /// Whether a stored entry can answer this action (its shape).
    fn fits(&self, _entry: &Entry) -> bool {
        true
    }

    /// The toolchain digest the daemon's remote fetch filters by.
    fn toolchain(&self) -> Option<String>;

    /// What progress lines and warnings put before "local hit",
    /// "miss"...: empty for rustc, the kind and the source otherwise.
    fn label(&self) -> String;

    /// Runs the program for real, its output passing through live.
    fn run(&self) -> Result<(Ran, Self::Extra)>;

    /// Puts the entry's outputs (and side files such as dep-info) in
    /// place for this action; the bytes restored.
    fn restore(&self, entry: &Entry) -> Result<u64>;

    /// `KACHE_VERIFY=1`: the outputs the run left that differ from what
    /// the entry would have restored.
    fn differ(&self, entry: &Entry) -> Vec<String>;

    /// Whether two runs make the same bytes, so `KACHE_VERIFY` can
    /// compare (an incremental compile does not, under plain cargo too).
    fn reproducible(&self) -> bool {
        true
    }

    /// Whether a successful run may be stored in the background (see
    /// `background`); if so, pins what the record will read. `false`
    /// (the default) stores before the wrapper returns.
    fn pin(&self) -> bool {
        false
    }

    /// Stores a successful run under its full key (see [`Ctx::publish`]
    /// and [`Ctx::unstored`]); the exit code to exit with.
    fn record(&self, base: CacheKey, why: Explain, ran: Ran, extra: Self::Extra) -> Result<i32>;
}

/// Runs one cacheable action through the pipeline; the exit code.
/// `ran` is set once the program ran, so a caller handling an error
/// never runs it twice.
pub(crate) fn cached<'a, A: Action<'a>>(
    a: &A,
    base: CacheKey,
    base_why: Explain,
    ran: &mut Option<i32>,
) -> Result<i32> {
    let ctx = a.ctx();
    let verify = truthy("KACHE_VERIFY");
    let mut found = lookup(a, &base);
    let mut guard = None;
    // Inside a build script's twin (see `script::twin`), at idle
    // priority: a lock it held would make the build wait on it.
    let lock = std::env::var_os(crate::wrapper::script::TWIN_VAR).is_none();
    if found.is_none() && lock {
        guard = ctx.store.compile_lock(&base);
        // Looked up again only if another compile held the key: one that
        // publishes between the lookup and a free lock costs at most a
        // second compile of the same entry (publishing has one winner).
        if guard.as_ref().is_none_or(|(_, waited)| *waited) {
            found = lookup(a, &base);
        }
    }
    if let Some(e) = &found
        && !verify
    {
        if let Some(code) = hit(a, e, false)? {
            return Ok(code);
        }
        // Evicted between the lookup and the restore: a miss.
        found = None;
        if guard.is_none() && lock {
            guard = ctx.store.compile_lock(&base);
        }
    }
    let _guard = guard;
    if found.is_none()
        && crate::daemon::client::remote_fetch(ctx.cfg, ctx.store, &ctx.crate_name, a.toolchain())
        && let Some(e) = lookup(a, &base)
        && let Some(code) = hit(a, &e, true)?
    {
        return Ok(code);
    }

    // Miss (or a hit to verify): run for real.
    let (run, extra) = a.run()?;
    *ran = Some(run.code);
    if run.code != 0 {
        ctx.progress(&labelled(a, "miss (failed)"), 0);
        ctx.unstored("the compile failed", run.compile_ms);
        return Ok(run.code);
    }
    if let Some(e) = &found {
        if !a.reproducible() {
            ctx.event(Outcome::Passthrough)
                .reason("KACHE_VERIFY: an incremental compile is not reproducible; not compared")
                .write(ctx.store);
            return Ok(run.code);
        }
        return verify_hit(a, e, run.compile_ms);
    }
    if ctx.cfg.background_store && a.pin() {
        match background::fork(ctx.store) {
            Some(Side::Parent) => {
                ctx.progress(&labelled(a, "miss (stored in the background)"), 0);
                return Ok(run.code);
            }
            Some(Side::Child(lock)) => {
                let ms = run.compile_ms;
                if let Err(e) = a.record(base, base_why, run, extra) {
                    // The compile succeeded and cargo has its outputs (a
                    // target dir removed at once takes the inputs away).
                    ctx.unstored(&format!("not stored in the background: {e:#}"), ms);
                }
                drop(lock);
                // The wrapper that forked has just let go of the lock.
                crate::store::gc::auto(ctx.store, ctx.cfg.max_size, Duration::from_secs(5));
                background::exit();
            }
            None => {}
        }
    }
    let code = a.record(base, base_why, run, extra)?;
    crate::store::gc::auto(ctx.store, ctx.cfg.max_size, Duration::from_millis(300));
    Ok(code)
}

/// `what` after the action's label.
fn labelled<'a, A: Action<'a>>(a: &A, what: &str) -> String {
    let l = a.label();
    if l.is_empty() {
        what.to_string()
    } else {
        format!("{l} {what}")
    }
}

/// The first entry, among the input lists recorded under `base`, whose
/// full key is in the store and that fits the action.
pub(crate) fn lookup<'a, A: Action<'a>>(a: &A, base: &CacheKey) -> Option<Entry> {
    let ctx = a.ctx();
    for inputs in ctx.store.inputs_for(base) {
        let Some(full) = inputs::full_key(&inputs, &ctx.paths, &ctx.probe) else {
            continue;
        };
        match ctx.store.get(&ctx.crate_name, &full) {
            Ok(Some(e)) if a.fits(&e) && crate::trust::usable(ctx.store, &e, &ctx.cfg.trusted) => {
                return Some(e);
            }
            Ok(_) => {}
            // A manifest proven corrupt: drop it so this run can replace
            // it. An I/O error (EMFILE, EIO) leaves it alone.
            Err(e) if crate::store::is_corrupt(&e) => {
                let _ = ctx.store.remove(&ctx.crate_name, &full);
            }
            Err(_) => {}
        }
    }
    None
}

/// Restores the entry and replays its output, running nothing; `None`
/// if the entry was evicted since it was looked up. The restore holds
/// the store's writer lock, so no gc removes a blob half way through.
fn hit<'a, A: Action<'a>>(a: &A, entry: &Entry, remote: bool) -> Result<Option<i32>> {
    let ctx = a.ctx();
    let lock = ctx.store.writer_lock()?;
    if !ctx.store.contains(&entry.crate_name, &entry.key) {
        return Ok(None);
    }
    // Used now: the next eviction takes others first.
    ctx.store.touch(&entry.crate_name, &entry.key);
    let size = a.restore(entry)?;
    drop(lock);
    replay(&ctx.paths, entry);
    let (what, result) = if remote {
        ("remote hit", Outcome::RemoteHit)
    } else {
        ("local hit", Outcome::LocalHit)
    };
    ctx.progress(&labelled(a, what), size);
    let mut ev = ctx.event(result);
    ev.size = size;
    ev.key = entry.key.to_string();
    ev.compile_ms = entry.compile_ms;
    ev.write(ctx.store);
    Ok(Some(0))
}

/// Writes the entry's recorded stdout and stderr, with this checkout's
/// paths.
fn replay(paths: &Paths, entry: &Entry) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(paths.expand(&entry.stdout).as_bytes());
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(paths.expand(&entry.stderr).as_bytes());
    let _ = err.flush();
}

/// `KACHE_VERIFY=1`: a hit ran for real; compares what it wrote with
/// what the entry would have restored. The fresh output stays in place
/// either way.
fn verify_hit<'a, A: Action<'a>>(a: &A, e: &Entry, compile_ms: u64) -> Result<i32> {
    let ctx = a.ctx();
    let bad = a.differ(e);
    let result = if bad.is_empty() {
        Outcome::Verified
    } else {
        eprintln!(
            "warning: kache: verify mismatch: {}crate {} key {}: {} differ from the stored entry; keeping the fresh output",
            labelled(a, ""),
            e.crate_name,
            e.key,
            bad.join(", ")
        );
        Outcome::VerifyMismatch
    };
    let mut ev = ctx.event(result);
    ev.crate_name = e.crate_name.to_string();
    ev.size = e.size();
    ev.key = e.key.to_string();
    ev.compile_ms = compile_ms;
    ev.files = bad;
    ev.write(ctx.store);
    Ok(0)
}

/// Whether the file at `p` holds exactly the blob `hash` names, and the
/// blob in the store does too (`KACHE_VERIFY`).
pub(crate) fn same_as_blob(store: &Store, p: &Path, hash: &BlobHash) -> bool {
    let restored = crate::store::hash_file(&store.blob_path(hash)).ok();
    let fresh = crate::store::hash_file(p).ok();
    fresh.is_some() && fresh == restored && restored.as_deref() == Some(hash.as_str())
}

impl<'a> Ctx<'a> {
    /// The context of an action inside a cargo package (a build script's
    /// run, a C compile it makes) that works in `cwd` and writes into
    /// `out_dir`: the workspace is the package's (see
    /// `paths::workspace_root`).
    pub(crate) fn in_package(
        cfg: &'a WrapperConfig,
        store: &'a Store,
        crate_name: &CrateName,
        out_dir: &Path,
        cwd: std::path::PathBuf,
        start: Instant,
        lang: Option<&'static str>,
    ) -> Ctx<'a> {
        let ws = super::paths::workspace_root(&cwd);
        Ctx {
            cfg,
            store,
            crate_name: crate_name.clone(),
            paths: Paths::detect_rooted(out_dir, cwd, ws),
            probe: RealProbe::new(store),
            start,
            lang,
        }
    }

    /// An event of this action, timed from its start.
    pub(crate) fn event(&self, result: Outcome) -> Event {
        Event::new(result, &self.crate_name)
            .took(self.start)
            .lang(self.lang)
    }

    /// Logs a miss that was not stored, and why.
    pub(crate) fn unstored(&self, reason: &str, compile_ms: u64) {
        let mut ev = self.event(Outcome::Miss).reason(reason);
        ev.compile_ms = compile_ms;
        ev.write(self.store);
    }

    /// `KACHE_PROGRESS=1`: one line per action on stderr.
    pub(crate) fn progress(&self, what: &str, size: u64) {
        if std::env::var("KACHE_PROGRESS").is_ok_and(|v| v.trim() == "1") {
            eprintln!(
                "[kache] {}: {what} ({}ms, {})",
                self.crate_name,
                self.start.elapsed().as_millis(),
                crate::units::format_size(size)
            );
        }
    }

    /// Whether an input the key was computed from changed while the
    /// program ran (its outputs may not match that content).
    pub(crate) fn inputs_changed(&self, before: Option<SystemTime>) -> bool {
        before.is_none_or(|b| probe::changed_since(&self.probe.files_read(), b))
    }

    /// The full key of the input list the run produced, and its account
    /// added to the base key's.
    pub(crate) fn full_key(
        &self,
        inputs: &Inputs,
        base_why: Explain,
    ) -> Option<(CacheKey, Explain)> {
        let (full, full_why) = inputs::full_key_explained(inputs, &self.paths, &self.probe)?;
        let mut why = base_why;
        why.extend(full_why);
        Some((full, why))
    }

    /// Puts one output file into the store, scanned on the way for the
    /// machine-local roots it contains (added to `roots`).
    pub(crate) fn store_output(
        &self,
        p: &Path,
        roots: &mut Vec<String>,
    ) -> Result<(BlobHash, u64)> {
        let f = File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
        self.store_open(&f, p, roots)
    }

    /// [`Ctx::store_output`] of a file already open (read from where it
    /// stands).
    pub(crate) fn store_open(
        &self,
        f: &File,
        p: &Path,
        roots: &mut Vec<String>,
    ) -> Result<(BlobHash, u64)> {
        self.store
            .put_blob_reader(RootScan::new(f, self.paths.rules(), roots), None)
            .with_context(|| format!("cannot store {}", p.display()))
    }

    /// Publishes a recorded entry, hands it to the daemon to upload and
    /// logs the stored miss with its key's inputs.
    pub(crate) fn publish(&self, entry: &Entry, label: &str) -> Result<()> {
        if self.store.publish(entry)? {
            self.store.mark_built(entry);
        } else if !self.cfg.trusted.is_empty()
            && let Ok(Some(old)) = self.store.get(&entry.crate_name, &entry.key)
            && !crate::trust::usable(self.store, &old, &self.cfg.trusted)
        {
            // What this build would not restore (pulled unverified, or
            // signed by a key no longer trusted) gives way to what it
            // compiled.
            self.store.replace(entry)?;
            self.store.mark_built(entry);
        }
        crate::daemon::client::after_store(self.cfg, self.store, &self.crate_name, &entry.key);
        let size = entry.size();
        let what = if label.is_empty() {
            "miss".to_string()
        } else {
            format!("{label} miss")
        };
        self.progress(&what, size);
        let mut ev = self.event(Outcome::Miss);
        ev.size = size;
        ev.key = entry.key.to_string();
        ev.compile_ms = entry.compile_ms;
        ev.inputs = Some(entry.explain.clone());
        ev.write(self.store);
        Ok(())
    }
}

/// What the entry is for, under cargo: the package version, the target
/// and the Rust toolchain of the build (so `kache sync --pull` keeps it
/// exactly when it keeps the package's Rust entries).
pub(crate) fn cargo_origin(probe: &RealProbe<'_>) -> Option<Origin> {
    let rustc = probe.var("RUSTC")?;
    let vv = probe.identity(&rustc, &["-vV"]).ok()?;
    let o = Origin {
        version: probe.var("CARGO_PKG_VERSION").filter(|v| !v.is_empty())?,
        target: probe.var("TARGET")?,
        toolchain: crate::store::toolchain_id(&vv),
        deps: Vec::new(),
    };
    o.is_valid().then_some(o)
}

/// Who an action outside the pipeline is logged as: a pass-through or
/// an action whose pipeline failed.
pub(crate) struct Call<'a> {
    pub(crate) cfg: &'a WrapperConfig,
    pub(crate) crate_name: &'a str,
    pub(crate) lang: Option<&'static str>,
    pub(crate) start: Instant,
}

impl Call<'_> {
    fn event(&self, result: Outcome) -> Event {
        Event::new(result, self.crate_name)
            .took(self.start)
            .lang(self.lang)
    }

    /// Runs a program uncached and logs why, for `kache stats` and
    /// `kache why-miss`.
    pub(crate) fn pass_through(&self, reason: &str, program: &OsString, rest: &[OsString]) -> i32 {
        let code = run_plain(program, rest);
        self.event(Outcome::Passthrough)
            .reason(reason)
            .write(&Store::at(&self.cfg.cache_dir));
        code
    }

    /// The pipeline failed inside kache: logs an error, then keeps the
    /// exit code of a program that already ran (never running it twice:
    /// warns `not_cached`), or warns `uncached` and runs it through
    /// `fallback`.
    pub(crate) fn failed(
        &self,
        e: &anyhow::Error,
        ran: Option<i32>,
        (not_cached, uncached): (&str, &str),
        fallback: impl FnOnce() -> i32,
    ) -> i32 {
        if let Ok(store) = Store::open(&self.cfg.cache_dir) {
            self.event(Outcome::Error).write(&store);
        }
        match ran {
            Some(code) => {
                warn(e, not_cached);
                code
            }
            None => {
                warn(e, uncached);
                fallback()
            }
        }
    }
}
