/*!
Build-script runs: the third kind of cached action.

Cargo runs a package's build script itself; kache only compiles it. So
when kache compiles a build script (`build_script_*`, a binary), it keeps
the real executable beside cargo's name for it and puts a small launcher
(`launcher`) in its place. Cargo runs the launcher, which runs `kache
--kache-run-build-script REAL`, and kache decides: a hit restores
`OUT_DIR` (`outdir`) and replays the script's stdout (the `cargo:`
directives, which cargo then reads as if the script printed them) and
stderr, starting no process; a miss runs the script for real, traced
(`trace`), and records it.

The key (see the README, "What a build script's key covers"):
- base: the script's executable by content, its arguments, its working
  directory and every environment variable but the few in
  [`VOLATILE_VARS`] (cargo's unit environment, `CARGO_CFG_*`, features,
  `CARGO_ENCODED_RUSTFLAGS`, the compilers and flags the cc, cmake and
  pkg-config crates read, `PATH`), machine-local paths as sentinels;
- full: every file the script and its children opened or executed, by
  content (absent ones as absence), every directory they listed, by its
  listing, the variables it declared with `rerun-if-env-changed`, and the
  machine-local roots found in `OUT_DIR`'s files.

Never stored: a failing run; a run that wrote outside `OUT_DIR` (the
temp dir and kache's own store aside); a run the tracer could not see
whole. `OUT_DIR` is emptied before a run, so what is stored is what a
run into a fresh target dir makes.
*/

mod launcher;
mod outdir;
mod twin;

pub(crate) use self::launcher::{RUN_ARG, install as install_launcher};
pub(crate) use self::twin::VAR as TWIN_VAR;

use std::cell::{Cell, OnceCell};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use super::action::{self, Action, Call, Ctx, Ran};
use super::explain::Explain;
use super::hasher::KeyHasher;
use super::paths::Paths;
use super::probe::Probe;
use super::process::{run_plain, run_pumped, truthy};
use super::trace::{self, Trace, Tracer};
use crate::config::WrapperConfig;
use crate::store::entry::Inputs;
use crate::store::{CacheKey, CrateName, Entry, FileRecord, Store};

/// The kind, as events and entries name it.
const LANG: Option<&str> = Some("build-script");

/// The one file of a build-script entry: `OUT_DIR` as a tar.
const OUT_TAR: &str = "out.tar";

/// Variables left out of the key: they change from run to run or from
/// terminal to terminal and say nothing about what a build script makes
/// (the number of jobs, the jobserver, the shell's state, the terminal,
/// the CI run's identity), and kache's own. A variable the script
/// declares with `rerun-if-env-changed` is keyed even if listed here.
const VOLATILE_VARS: [&str; 25] = [
    "NUM_JOBS",
    "CARGO_MAKEFLAGS",
    "MAKELEVEL",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "TERM",
    "COLORTERM",
    "TERM_PROGRAM",
    "TERM_PROGRAM_VERSION",
    "LS_COLORS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "SSH_AUTH_SOCK",
    "SSH_CLIENT",
    "SSH_CONNECTION",
    "SSH_TTY",
    "TMUX",
    "TMUX_PANE",
    "STY",
    "WINDOWID",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    // kache's own path, which differs between machines.
    "RUSTC_WRAPPER",
];

/// Prefixes of variables left out of the key, as [`VOLATILE_VARS`]:
/// kache's settings, the desktop session's, and the per-run identity of
/// a CI job: GitHub Actions' (`GITHUB_RUN_ID`, `RUNNER_TEMP`, ...),
/// GitLab's (`CI_JOB_ID`, `CI_PIPELINE_ID`, `GITLAB_USER_ID`, ...),
/// Buildkite's (`BUILDKITE_*`) and `CircleCI`'s (`CIRCLE_*`). Each job
/// has its own: keyed, no build script would be shared between jobs.
const VOLATILE_PREFIXES: [&str; 10] = [
    "KACHE_",
    "XDG_",
    "DBUS_",
    "GITHUB_",
    "RUNNER_",
    "ACTIONS_",
    "CI_",
    "GITLAB_",
    "BUILDKITE_",
    "CIRCLE_",
];

fn volatile(name: &str) -> bool {
    VOLATILE_VARS.contains(&name) || VOLATILE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `MAKEFLAGS` and `MFLAGS` without the job count and the jobserver:
/// what is left (variable overrides, `-k`...) reaches every `make` a
/// build script runs.
fn make_flags(value: &str) -> String {
    value
        .split_whitespace()
        .filter(|t| !(t.starts_with("-j") || t.starts_with("--jobserver")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether cargo runs this build through kache: cargo tells build
/// scripts its `RUSTC_WRAPPER`. A launcher left in a target dir that a
/// plain cargo now builds runs the script as is.
fn under_kache() -> bool {
    let Some(w) = std::env::var_os("RUSTC_WRAPPER").filter(|w| !w.is_empty()) else {
        return false;
    };
    if Path::new(&w).file_stem().is_some_and(|s| s == "kache") {
        return true;
    }
    // kache under another name: the same binary as this one.
    let named = super::probe::resolve_program(&w.to_string_lossy()).canonicalize();
    let me = std::env::current_exe().and_then(|p| p.canonicalize());
    matches!((named, me), (Ok(a), Ok(b)) if a == b)
}

/// How a build-script miss is traced on this machine (`kache doctor`):
/// `Ok(how)`, or `Err(why)` where build-script runs cannot be cached.
/// A twin's namespace is tried with directories under `base`.
pub(crate) fn how_traced(trace_behind: bool, base: &Path) -> Result<String, String> {
    if !trace::SUPPORTED {
        return Err("kache traces build scripts on x86_64 and aarch64 only".into());
    }
    // Before the tracer's thread: the namespace is made in a fork.
    let behind = trace_behind.then(|| twin::can_isolate(base));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut tracer = Tracer::attach(&mut cmd).map_err(|e| e.to_string())?;
    let child = cmd.spawn();
    tracer.spawned();
    let _ = child.map(|mut c| c.wait());
    if let Some(why) = tracer.finish().incomplete {
        return Err(format!(
            "the kernel gives no seccomp listener (Linux 5.5 or later): {why}"
        ));
    }
    Ok(match behind {
        None => "a miss is traced inline (trace_behind = false)".into(),
        Some(Ok(())) => "a miss runs at full speed, traced by a twin behind the build".into(),
        Some(Err(e)) => format!(
            "a miss is traced inline: no private mount namespace here ({e}); allow unprivileged user namespaces to trace behind the build"
        ),
    })
}

/// Runs `kache --kache-run-build-script REAL ARGS...`; the exit code.
pub(crate) fn main(argv: &[OsString]) -> i32 {
    let start = Instant::now();
    let Some(real) = argv.get(2) else {
        eprintln!("error: kache: {RUN_ARG} needs the build script to run");
        return 2;
    };
    let rest = &argv[3..];
    if truthy("KACHE_DISABLED") || !under_kache() || std::env::var_os(TWIN_VAR).is_some() {
        return run_plain(real, rest);
    }
    let cfg = match WrapperConfig::load() {
        Ok(c) => c,
        Err(e) => {
            super::process::warn(&e, "running the build script uncached");
            return run_plain(real, rest);
        }
    };
    let crate_name = std::env::var("CARGO_PKG_NAME")
        .ok()
        .and_then(|n| CrateName::normalize(&n))
        .unwrap_or_else(CrateName::unnamed);
    let call = Call {
        cfg: &cfg,
        crate_name: &crate_name,
        lang: LANG,
        start,
    };
    if !cfg.cache_build_scripts {
        return call.pass_through("build-script caching is off", real, rest);
    }
    if !trace::SUPPORTED {
        return call.pass_through(
            "kache cannot trace build scripts on this architecture",
            real,
            rest,
        );
    }
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return call.pass_through("no OUT_DIR", real, rest);
    };
    let mut ran = None;
    match cached(&cfg, real, rest, &out_dir, &crate_name, start, &mut ran) {
        Ok(code) => code,
        Err(e) => call.failed(
            &e,
            ran,
            (
                "build-script output not cached",
                "running the build script uncached",
            ),
            || run_plain(real, rest),
        ),
    }
}

/// What one build-script run works with.
struct Job<'a> {
    ctx: Ctx<'a>,
    real: &'a OsString,
    real_str: &'a str,
    args: &'a [OsString],
    /// `OUT_DIR`, absolute.
    out_dir: PathBuf,
    /// The base key, for a twin (see `twin`).
    base: OnceCell<(CacheKey, Explain)>,
    /// The run was untraced: a twin traces it and records.
    behind: Cell<bool>,
    /// In a twin: where `OUT_DIR` really is (clear and pack go there,
    /// not through the path a detached mount would leave).
    pack_from: OnceCell<PathBuf>,
}

fn cached(
    cfg: &WrapperConfig,
    real: &OsString,
    args: &[OsString],
    out_dir: &Path,
    crate_name: &CrateName,
    start: Instant,
    ran: &mut Option<i32>,
) -> Result<i32> {
    let real_str = real
        .to_str()
        .ok_or_else(|| anyhow!("the build script's path is not UTF-8"))?;
    let store = Store::open(&cfg.cache_dir)?;
    let cwd = std::env::current_dir().context("no current directory")?;
    let out_dir = cwd.join(out_dir);
    let job = Job {
        ctx: Ctx::in_package(cfg, &store, crate_name, &out_dir, cwd, start, LANG),
        real,
        real_str,
        args,
        out_dir,
        base: OnceCell::new(),
        behind: Cell::new(false),
        pack_from: OnceCell::new(),
    };
    let (base, why) = job.base_key()?;
    if let Ok(reason) = std::fs::read_to_string(uncacheable_path(&store, &base)) {
        // Refused last time, whatever it read: tracing it again would
        // only cost time. Run as is, untraced (nothing is stored).
        let call = Call {
            cfg,
            crate_name,
            lang: LANG,
            start,
        };
        let code = call.pass_through(&format!("not cacheable: {reason}"), real, args);
        *ran = Some(code);
        return Ok(code);
    }
    let _ = job.base.set((base.clone(), why.clone()));
    action::cached(&job, base, why, ran)
}

impl Job<'_> {
    /// The script by content, its arguments and working directory, and
    /// the environment (see [`VOLATILE_VARS`]).
    fn base_key(&self) -> Result<(CacheKey, Explain)> {
        let (paths, probe) = (&self.ctx.paths, &self.ctx.probe);
        let mut h = KeyHasher::new("kache-build-script-1");
        let script = probe
            .hash(Path::new(self.real_str))
            .ok_or_else(|| anyhow!("cannot read the build script {}", self.real_str))?;
        h.field("build-script", &script);
        for a in self.args {
            h.field("arg", &paths.normalize(&a.to_string_lossy()));
        }
        h.field("cwd", &paths.normalize(&paths.cwd.to_string_lossy()));
        let mut vars = probe.vars();
        vars.sort();
        for (name, value) in vars {
            if volatile(&name) {
                continue;
            }
            let value = match name.as_str() {
                "MAKEFLAGS" | "MFLAGS" => make_flags(&value),
                _ => value,
            };
            h.field("env", &name);
            h.field("value", &paths.normalize(&value));
        }
        // What a compiler's `-march=native` or the script's own CPU
        // detection sees.
        h.field("native-cpu", &super::cc::key::native_cpu());
        Ok(h.finish_explained())
    }

    /// The traced reads as an input list: files by content, absent ones
    /// and those only looked at by existence, listed directories; what the run wrote itself, `OUT_DIR`, kache's
    /// store and the kernel's pseudo files left out.
    fn traced_inputs(&self, t: &Trace) -> TracedInputs {
        let out_real = self
            .out_dir
            .canonicalize()
            .unwrap_or_else(|_| self.out_dir.clone());
        let skip = |p: &Path| {
            p.starts_with(self.ctx.store.root())
                || ["/proc", "/sys", "/dev"].iter().any(|d| p.starts_with(d))
                || t.written.contains(p)
        };
        // A path into OUT_DIR is an output, unless a link there leads out
        // of it (cxx-build links the package into OUT_DIR): then it is
        // keyed where it leads.
        let place = |p: &PathBuf| -> Option<PathBuf> {
            if !p.starts_with(&self.out_dir) && !p.starts_with(&out_real) {
                return Some(p.clone());
            }
            let real = p
                .canonicalize()
                .or_else(|_| {
                    let dir = p.parent().unwrap_or(p).canonicalize()?;
                    Ok::<_, std::io::Error>(dir.join(p.file_name().unwrap_or_default()))
                })
                .ok()?;
            (!real.starts_with(&out_real)).then_some(real)
        };
        let (mut files, mut absent, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
        let mut looks = Looks::new(self, t);
        for p in t
            .probed
            .iter()
            .filter(|p| !t.read.contains(*p))
            .filter_map(place)
        {
            if !skip(&p) {
                // Looked at, not opened: keyed by what is there.
                absent.push(self.ctx.paths.normalize(&p.to_string_lossy()));
                looks.looked_at(&p);
                looks.named(&p);
            }
        }
        for p in t.read.iter().filter_map(place).filter(|p| !skip(p)) {
            let p = &p;
            looks.named(p);
            let shown = self.ctx.paths.normalize(&p.to_string_lossy());
            match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => {
                    dirs.push(shown);
                    looks.looked_at(p);
                }
                Ok(m) if m.is_file() => files.push(shown),
                // A socket, fifo or device: nothing to key.
                Ok(_) => {}
                Err(_) => {
                    absent.push(shown);
                    looks.looked_at(p);
                }
            }
        }
        files.sort();
        files.dedup();
        absent.sort();
        absent.dedup();
        dirs.sort();
        dirs.dedup();
        let (settled, on_the_way) = looks.finish();
        TracedInputs {
            files,
            absent,
            dirs,
            settled,
            on_the_way,
        }
    }

    /// The first path the run wrote outside `OUT_DIR`: kache's store, the
    /// temp dirs and `/dev` are allowed too, but not the checkout, the
    /// target dir or `CARGO_HOME` even where they lie in the temp dir.
    fn wrote_outside(&self, t: &Trace) -> Option<PathBuf> {
        let with_real = |v: Vec<PathBuf>| -> Vec<PathBuf> {
            let mut out = v.clone();
            out.extend(v.iter().filter_map(|p| p.canonicalize().ok()));
            out
        };
        let own = with_real(vec![
            self.out_dir.clone(),
            self.ctx.store.root().to_path_buf(),
        ]);
        let project = with_real(self.project_roots());
        let scratch = with_real(vec![
            PathBuf::from("/dev"),
            PathBuf::from("/tmp"),
            PathBuf::from("/var/tmp"),
            std::env::temp_dir(),
        ]);
        let under = |p: &Path, roots: &[PathBuf]| roots.iter().any(|r| p.starts_with(r));
        t.written
            .iter()
            .find(|p| {
                !under(p, &own)
                    && (under(p, &project)
                        || !under(p, &scratch)
                        // A file left in the temp dir: a hit would not
                        // make it, and the outputs may name it.
                        || (!p.starts_with("/dev") && p.symlink_metadata().is_ok()))
            })
            .cloned()
    }
}

impl Job<'_> {
    /// The checkout, the target dir and `CARGO_HOME` (the roots kache
    /// maps, but the home directory) and the working directory.
    fn project_roots(&self) -> Vec<PathBuf> {
        self.ctx
            .paths
            .rules()
            .iter()
            .filter(|(_, s)| s != "/kache-home")
            .map(|(r, _)| PathBuf::from(r))
            .chain([self.ctx.paths.cwd.clone()])
            .collect()
    }

    /// `OUT_DIR` as this process reaches it (in a twin, the scratch
    /// directory mounted over it).
    fn out_dir_really(&self) -> &Path {
        self.pack_from.get().map_or(&self.out_dir, |p| p.as_path())
    }

    /// Runs the script traced, into an empty `OUT_DIR`; for a `twin`,
    /// without cargo's jobserver.
    fn run_traced(&self, twin: bool) -> Result<(Ran, Trace)> {
        outdir::clear(self.out_dir_really())?;
        let mut cmd = Command::new(self.real);
        cmd.args(self.args)
            // A daemon started by a compile inside the script would keep
            // the tracer's filter after the run.
            .env("KACHE_DAEMON_AUTOSTART", "0")
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if twin {
            cmd.env(TWIN_VAR, "1").env_remove("CARGO_MAKEFLAGS");
            for v in ["MAKEFLAGS", "MFLAGS"] {
                if let Ok(value) = std::env::var(v) {
                    cmd.env(v, make_flags(&value));
                }
            }
        }
        let mut tracer = Tracer::attach(&mut cmd).context("cannot trace the build script")?;
        let before = self.ctx.store.fs_clock();
        let t0 = Instant::now();
        // Its output passes through byte for byte.
        let pumped = run_pumped(
            &mut cmd,
            &Paths::default(),
            self.real_str,
            "the build script",
        );
        tracer.spawned();
        let trace = tracer.finish();
        Ok((Ran::finished(pumped?, t0, before), trace))
    }
}

impl<'a> Action<'a> for Job<'a> {
    type Extra = Trace;

    fn ctx(&self) -> &Ctx<'a> {
        &self.ctx
    }

    fn fits(&self, entry: &Entry) -> bool {
        entry.files.len() == 1 && entry.files[0].name == OUT_TAR && entry.lang.as_deref() == LANG
    }

    fn toolchain(&self) -> Option<String> {
        action::cargo_origin(&self.ctx.probe).map(|o| o.toolchain)
    }

    fn label(&self) -> String {
        "build script".to_string()
    }

    /// Runs the script: untraced, as plain cargo does, while a twin
    /// traces it behind the build (see `twin`); traced where no twin can
    /// run, and to verify a hit.
    fn run(&self) -> Result<(Ran, Trace)> {
        if !truthy("KACHE_VERIFY")
            && let Some((base, why)) = self.base.get()
            && let Some(twin) = twin::start(self, base, why)
        {
            self.behind.set(true);
            let t0 = Instant::now();
            let code = run_plain(self.real, self.args);
            twin.ran(code);
            let ran = Ran {
                code,
                compile_ms: crate::units::millis(t0.elapsed()),
                out_raw: Vec::new(),
                err_raw: Vec::new(),
                before: None,
            };
            return Ok((ran, Trace::default()));
        }
        self.run_traced(false)
    }

    fn restore(&self, entry: &Entry) -> Result<u64> {
        let f = &entry.files[0];
        outdir::clear(&self.out_dir)?;
        outdir::unpack(&self.ctx.store.blob_path(&f.hash), &self.out_dir)?;
        Ok(f.size)
    }

    fn differ(&self, entry: &Entry) -> Vec<String> {
        let mut roots = Vec::new();
        match outdir::pack(&self.ctx, &self.out_dir, &mut roots) {
            Ok((hash, _)) if hash == entry.files[0].hash => Vec::new(),
            _ => vec![self.out_dir.display().to_string()],
        }
    }

    fn record(&self, base: CacheKey, base_why: Explain, run: Ran, trace: Trace) -> Result<i32> {
        let ctx = &self.ctx;
        if self.behind.get() {
            ctx.progress("build script miss (traced behind the build)", 0);
            return Ok(run.code);
        }
        let (stdout, stderr) = match self.refusal(&trace, &run) {
            Ok(out) => out,
            Err(why) => {
                // The same script in the same environment will be refused
                // again: the next runs go untraced (see `cached`).
                mark_uncacheable(ctx.store, &base, &why);
                ctx.unstored(&why, run.compile_ms);
                return Ok(run.code);
            }
        };
        let traced = self.traced_inputs(&trace);
        let (settled, on_the_way) = (traced.settled, traced.on_the_way);
        let mut inputs = Inputs {
            base,
            files: traced.files,
            env: declared_env(&stdout),
            link: Vec::new(),
            absent: traced.absent,
            roots: Vec::new(),
            dirs: traced.dirs,
            shadows: None,
        };
        let _w = ctx.store.writer_lock()?;
        let mut roots = Vec::new();
        let (hash, size) = outdir::pack(ctx, self.out_dir_really(), &mut roots)?;
        roots.sort();
        inputs.roots = roots;
        let Some((full, why)) = ctx.full_key(&inputs, base_why) else {
            bail!("a file the build script read is gone");
        };
        let moved = run.before.map_or(Some(None), |b| {
            super::probe::first_changed(&settled, b)
                .or_else(|| replaced_since(&on_the_way, b))
                .map(Some)
        });
        if let Some(p) = moved {
            let what = p.map_or(String::new(), |p| {
                format!(" ({})", ctx.paths.normalize(&p.to_string_lossy()))
            });
            ctx.unstored(
                &format!("a path the build script looked at changed while it ran{what}"),
                run.compile_ms,
            );
            return Ok(run.code);
        }
        if ctx.inputs_changed(run.before) {
            ctx.unstored(
                "an input changed while the build script ran",
                run.compile_ms,
            );
            return Ok(run.code);
        }
        let tar = FileRecord {
            name: OUT_TAR.to_string(),
            hash,
            size,
            executable: false,
        };
        let mut entry = Entry::new(ctx.crate_name.clone(), full, vec![tar]);
        entry.stdout = ctx.paths.normalize(&stdout);
        entry.stderr = ctx.paths.normalize(&stderr);
        entry.inputs = Some(inputs);
        entry.compile_ms = run.compile_ms;
        entry.explain = why;
        entry.origin = action::cargo_origin(&ctx.probe);
        entry.lang = LANG.map(str::to_string);
        ctx.publish(&entry, "build script")?;
        Ok(run.code)
    }
}

impl Job<'_> {
    /// The run's stdout and stderr as text, or why it cannot be stored:
    /// a trace kache cannot trust whole, a write outside `OUT_DIR`,
    /// output that is not text or names one of kache's sentinels (a
    /// replay must be what the script printed).
    fn refusal(&self, trace: &Trace, run: &Ran) -> Result<(String, String), String> {
        if let Some(why) = &trace.incomplete {
            return Err(format!("the trace is incomplete: {why}"));
        }
        if let Some(p) = self.wrote_outside(trace) {
            return Err(format!(
                "the build script wrote outside OUT_DIR: {}",
                p.display()
            ));
        }
        let (Ok(stdout), Ok(stderr)) = (
            String::from_utf8(run.out_raw.clone()),
            String::from_utf8(run.err_raw.clone()),
        ) else {
            return Err("the build script printed bytes that are not UTF-8".into());
        };
        let rules = self.ctx.paths.rules();
        if rules
            .iter()
            .any(|(_, s)| stdout.contains(s.as_str()) || stderr.contains(s.as_str()))
        {
            return Err("the build script printed a kache sentinel path".into());
        }
        Ok((stdout, stderr))
    }
}

/// Where the store remembers that the runs under a base key cannot be
/// stored, and why.
fn uncacheable_path(store: &Store, base: &CacheKey) -> PathBuf {
    store.root().join("uncacheable").join(base.as_str())
}

fn mark_uncacheable(store: &Store, base: &CacheKey, why: &str) {
    let p = uncacheable_path(store, base);
    if let Some(dir) = p.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let _ = store.write_atomic("uncacheable", &p, why.as_bytes());
    }
}

/// What a traced run read, as input lists.
/// What a run looked at that must not have changed while it ran, for
/// it to be stored (see [`TracedInputs::settled`] and
/// [`replaced_since`]). A path that appeared, went or changed kind while
/// the run went on is keyed as it is after the run, not as the run saw
/// it: it, or the directory above it, changed since the run began. Not
/// judged so: a temp dir itself (everyone's files come and go there),
/// directories the run wrote into, and directories in the target dir,
/// which cargo fills as the run goes on (the dynamic loader of every
/// program the script starts looks in its `deps` first).
struct Looks<'t> {
    temps: Vec<PathBuf>,
    target: Option<PathBuf>,
    wrote_into: BTreeSet<&'t Path>,
    settled: BTreeSet<PathBuf>,
    on_the_way: BTreeSet<PathBuf>,
}

impl<'t> Looks<'t> {
    fn new(job: &Job<'_>, t: &'t Trace) -> Looks<'t> {
        Looks {
            temps: temp_dirs(),
            target: job
                .ctx
                .paths
                .rules()
                .iter()
                .find(|(_, s)| s == "/kache-target")
                .map(|(r, _)| PathBuf::from(r)),
            wrote_into: t.written.iter().filter_map(|p| p.parent()).collect(),
            settled: BTreeSet::new(),
            on_the_way: BTreeSet::new(),
        }
    }

    fn in_target(&self, h: &Path) -> bool {
        self.target.as_ref().is_some_and(|t| h.starts_with(t))
    }

    fn busy(&self, h: &Path) -> bool {
        self.temps.iter().any(|t| t == h) || self.in_target(h) || self.wrote_into.contains(h)
    }

    /// `p` was looked for or listed: it is judged where it is (a file in
    /// the target dir too: only cargo's directories there change as it
    /// fills them), or else the nearest directory above it that exists.
    fn looked_at(&mut self, p: &Path) {
        let here = p.ancestors().find(|a| a.symlink_metadata().is_ok());
        let judged = here.filter(|h| {
            let file = *h == p && h.symlink_metadata().is_ok_and(|m| !m.is_dir());
            if file && self.in_target(h) {
                !self.wrote_into.contains(h)
            } else {
                !self.busy(h)
            }
        });
        if let Some(here) = judged {
            self.settled.insert(here.to_path_buf());
        }
    }

    /// The run named `p`: the directories and links on the way to it
    /// count too (one renamed or swapped, a `current` link moved to a
    /// new SDK, changes what `p` is without changing it).
    fn named(&mut self, p: &Path) {
        for a in p.ancestors().skip(1) {
            if a.parent().is_none() || !self.on_the_way.insert(a.to_path_buf()) {
                break;
            }
        }
    }

    /// (settled, on the way): only what exists (a missing one stays
    /// missing, or its directory changed: judged as settled).
    fn finish(self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let on_the_way = self
            .on_the_way
            .iter()
            .filter(|a| !self.busy(a) && a.symlink_metadata().is_ok())
            .cloned()
            .collect();
        (self.settled.into_iter().collect(), on_the_way)
    }
}

struct TracedInputs {
    files: Vec<String>,
    absent: Vec<String>,
    dirs: Vec<String>,
    /// What must not have changed since the run began for the entry to
    /// hold (files read are checked as they are hashed): each directory
    /// listed, each path looked at where it is, or else the nearest
    /// directory above it that exists; not a directory the run itself
    /// wrote into.
    settled: Vec<PathBuf>,
    /// The directories and links on the way to every path the run named
    /// (see [`replaced_since`]).
    on_the_way: Vec<PathBuf>,
}

/// The first of `ways` (directories and links on the way to the paths a
/// run named) replaced since `before`: a link made or changed, a
/// directory renamed into place or gone. A directory whose entries
/// changed (its change and modification times both past `before`) is
/// not taken for replaced: `$HOME` or a checkout gains files while a
/// script runs, and what the script named in them is judged itself.
fn replaced_since(ways: &[PathBuf], before: std::time::SystemTime) -> Option<&PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(b) = before.duration_since(std::time::UNIX_EPOCH) else {
        return ways.first();
    };
    let b = (b.as_secs() as i64, i64::from(b.subsec_nanos()));
    ways.iter().find(|w| match std::fs::symlink_metadata(w) {
        Ok(m) => {
            let changed = (m.ctime(), m.ctime_nsec()) > b;
            let written = (m.mtime(), m.mtime_nsec()) > b;
            changed && !(m.is_dir() && written)
        }
        Err(_) => true,
    })
}

/// The temp dirs (`/tmp`, `/var/tmp`, `/dev/shm`, `$TMPDIR`) that
/// exist, by their real paths.
pub(super) fn temp_dirs() -> Vec<PathBuf> {
    [
        Some(PathBuf::from("/tmp")),
        Some(PathBuf::from("/var/tmp")),
        Some(PathBuf::from("/dev/shm")),
        std::env::var_os("TMPDIR").map(PathBuf::from),
    ]
    .into_iter()
    .flatten()
    .filter_map(|p| p.canonicalize().ok())
    .collect()
}

/// The variables a build script declared with `rerun-if-env-changed`.
fn declared_env(stdout: &str) -> Vec<String> {
    let names: BTreeSet<String> = stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("cargo::rerun-if-env-changed=")
                .or_else(|| l.strip_prefix("cargo:rerun-if-env-changed="))
        })
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_env_both_syntaxes() {
        let out = "cargo:rerun-if-env-changed=CC\ncargo::rerun-if-env-changed=B\ncargo:warning=x\ncargo:rerun-if-env-changed=CC\n";
        assert_eq!(declared_env(out), vec!["B", "CC"]);
    }

    #[test]
    fn make_flags_keep_overrides() {
        assert_eq!(
            make_flags(" -j4 --jobserver-auth=3,4 -- LEVEL=debug"),
            "-- LEVEL=debug"
        );
        assert_eq!(make_flags("k -j --jobserver-fds=3,4"), "k");
    }

    #[test]
    fn volatile_vars() {
        assert!(volatile("NUM_JOBS"));
        assert!(volatile("GITHUB_RUN_ID"));
        assert!(volatile("CI_JOB_ID"));
        assert!(volatile("CI_PIPELINE_ID"));
        assert!(volatile("BUILDKITE_BUILD_ID"));
        assert!(volatile("CIRCLE_BUILD_NUM"));
        // Whether it runs in CI at all stays keyed.
        assert!(!volatile("CI"));
        assert!(volatile("KACHE_CACHE_DIR"));
        assert!(!volatile("CC"));
        assert!(!volatile("CARGO_CFG_TARGET_OS"));
        assert!(!volatile("PATH"));
    }
}
