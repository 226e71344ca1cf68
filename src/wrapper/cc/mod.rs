/*!
C, C++ and assembler compiles: `kache CC ARGS...`.

The `cc` crate runs `RUSTC_WRAPPER COMPILER ARGS` when the wrapper is
kache; `CMake` does the same through `CMAKE_<LANG>_COMPILER_LAUNCHER`,
make through `CC="kache gcc"`. A one-source `-c` compile (see `args`) is
looked up by its key (see `key`): a hit restores the object (and the
dependency file the caller asked for, with this checkout's paths) and
replays the compiler's output, running neither the compiler nor the
preprocessor; a miss runs the compiler with kache's additions (a
dependency file of its own when the caller asked for none, debug paths
mapped to the sentinels) and stores the object once the compile
succeeded. Everything else runs unchanged. Any internal error runs the
compiler as without kache, with one warning line.

Never stored: a failing compile; a compile whose source or headers
expand `__DATE__`/`__TIME__` (unless `SOURCE_DATE_EPOCH` pins them) or
`__TIMESTAMP__`; one that read a header kache cannot place on the
search path; one whose inputs changed while it ran.
*/

mod args;
pub(crate) mod key;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use self::args::{CcCompile, Lang, Verdict};
use super::action::{self, Action, Call, Ctx, Ran};
use super::call::is_rustc_like;
use super::explain::Explain;
use super::hasher::KeyHasher;
use super::probe::Probe;
use super::process::{run_plain, run_pumped, truthy};
use super::restore;
use crate::config::WrapperConfig;
use crate::store::entry::{DepInfo, Inputs, Shadows};
use crate::store::{CacheKey, CrateName, Entry, FileRecord, Store};

/// The kind, as events and entries name it.
const LANG: Option<&str> = Some("c");

/// The store folder of compiles made outside cargo.
const OUTSIDE_CARGO: &str = "kache_c";

/// Whether `argv` (`kache PROGRAM ...`) is a C/C++ compiler call rather
/// than a `RUSTC_WORKSPACE_WRAPPER` one.
pub(crate) fn is_cc_call(argv: &[OsString]) -> bool {
    argv.len() > 1
        && !is_rustc_like(&argv[1])
        && !argv.get(2).is_some_and(|a| is_rustc_like(a))
        && super::call::is_c_compiler(&argv[1])
}

/// Runs `kache COMPILER ARGS`; returns the exit code to exit with.
pub(crate) fn main(argv: &[OsString]) -> i32 {
    let start = Instant::now();
    let compiler = &argv[1];
    let rest = &argv[2..];
    if truthy("KACHE_DISABLED") {
        return run_plain(compiler, rest);
    }
    let verdict = match expand(rest) {
        Ok(a) => args::classify(&a),
        Err(why) => Verdict::Pass(why),
    };
    let cfg = match WrapperConfig::load() {
        Ok(c) => c,
        Err(e) => {
            if let Verdict::Cache(_) = verdict {
                super::process::warn(&e, "running the compiler uncached");
            }
            return run_plain(compiler, rest);
        }
    };
    let crate_name = entry_crate();
    // A call that compiles nothing (cc-rs's `-E` probes, links) names no
    // crate, so `kache stats` does not count it as a compile passed by.
    let named = if rest.iter().any(|a| a == "-c") {
        crate_name.as_str()
    } else {
        ""
    };
    let call = Call {
        cfg: &cfg,
        crate_name: &crate_name,
        lang: LANG,
        start,
    };
    let c = match verdict {
        Verdict::Cache(c) if cfg.cache_c => c,
        Verdict::Cache(_) => return call.pass_through("C caching is off", compiler, rest),
        Verdict::Pass(why) => {
            let unnamed = Call {
                crate_name: named,
                ..call
            };
            return unnamed.pass_through(&why, compiler, rest);
        }
    };
    if let Some(why) = refuse(&c) {
        return call.pass_through(&why, compiler, rest);
    }
    let mut ran = None;
    match cached(&cfg, compiler, &c, &crate_name, start, &mut ran) {
        Ok(code) => code,
        Err(e) => call.failed(
            &e,
            ran,
            ("object not cached", "running the compiler uncached"),
            || run_plain(compiler, rest),
        ),
    }
}

/// The arguments as text, response files (`@file`) expanded; `Err` says
/// why the call cannot be read.
fn expand(rest: &[OsString]) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(rest.len());
    for a in rest {
        let s = a.to_str().ok_or("an argument that is not UTF-8")?;
        match s.strip_prefix('@') {
            Some(p) if !p.is_empty() => {
                let text = fs::read_to_string(p)
                    .map_err(|_| "a response file that cannot be read".to_string())?;
                out.extend(args::split_response(&text).ok_or("a nested response file")?);
            }
            _ => out.push(s.to_string()),
        }
    }
    Ok(out)
}

/// Compiles that the arguments allow but the environment or the source
/// does not.
fn refuse(c: &CcCompile) -> Option<String> {
    for v in ["DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES"] {
        if std::env::var_os(v).is_some() {
            return Some(format!(
                "{v} is set (the compiler writes a file of its own)"
            ));
        }
    }
    if c.lang() == Lang::Asm {
        // The assembler's own includes are in no dependency output.
        let text = fs::read(&c.source).ok()?;
        for d in [&b".include"[..], b".incbin"] {
            if memchr::memmem::find(&text, d).is_some() {
                return Some("an assembler source with .include or .incbin".into());
            }
        }
    }
    None
}

/// The store folder of a compile's entries: the package whose build
/// script runs the compiler (cargo sets `CARGO_PKG_NAME` for it),
/// normalised, so that sync and the Cargo.lock pull filter see it with
/// the package; one folder of its own outside cargo.
fn entry_crate() -> CrateName {
    std::env::var("CARGO_PKG_NAME")
        .ok()
        .and_then(|n| CrateName::normalize(&n))
        .or_else(|| CrateName::parse(OUTSIDE_CARGO))
        .unwrap_or_else(CrateName::unnamed)
}

/// The compile's paths made absolute.
struct Places {
    object: PathBuf,
    dep_file: Option<PathBuf>,
}

/// What one cacheable C compile works with.
struct Job<'a> {
    ctx: Ctx<'a>,
    c: &'a CcCompile,
    compiler: &'a OsString,
    compiler_str: &'a str,
    places: Places,
}

/// What a C compile leaves beyond [`Ran`].
struct DepOutput {
    /// The dependency file the compiler wrote, read.
    dep_text: Option<std::io::Result<String>>,
    /// Whether that file was kache's own (the caller asked for none).
    own_deps: bool,
    /// Every header, when the caller's file leaves some out (`-MMD`).
    all_headers: Option<std::io::Result<String>>,
}

fn cached(
    cfg: &WrapperConfig,
    compiler: &OsString,
    c: &CcCompile,
    crate_name: &CrateName,
    start: Instant,
    ran: &mut Option<i32>,
) -> Result<i32> {
    let compiler_str = compiler
        .to_str()
        .ok_or_else(|| anyhow!("the compiler path is not UTF-8"))?;
    let store = Store::open(&cfg.cache_dir)?;
    let cwd = std::env::current_dir().context("no current directory")?;
    let places = Places {
        object: cwd.join(&c.output),
        dep_file: c.dep_file.as_ref().map(|d| cwd.join(d)),
    };
    let out_dir = places
        .object
        .parent()
        .ok_or_else(|| anyhow!("object {} has no directory", places.object.display()))?
        .to_path_buf();
    let job = Job {
        ctx: Ctx::in_package(cfg, &store, crate_name, &out_dir, cwd, start, LANG),
        c,
        compiler,
        compiler_str,
        places,
    };
    let (base, base_why) = key::base_key(compiler_str, c, &job.ctx.paths, &job.ctx.probe)?;
    action::cached(&job, base, base_why, ran)
}

impl<'a> Action<'a> for Job<'a> {
    type Extra = DepOutput;

    fn ctx(&self) -> &Ctx<'a> {
        &self.ctx
    }

    /// One object per entry.
    fn fits(&self, entry: &Entry) -> bool {
        entry.files.len() == 1
    }

    fn toolchain(&self) -> Option<String> {
        action::cargo_origin(&self.ctx.probe).map(|o| o.toolchain)
    }

    fn label(&self) -> String {
        format!("C ({})", self.c.source)
    }

    /// Runs the compiler with kache's additions, its output passing
    /// through live, and reads the dependency file it wrote.
    fn run(&self) -> Result<(Ran, DepOutput)> {
        let c = self.c;
        let own_deps = c
            .dep_file
            .is_none()
            .then(|| self.ctx.store.tmp_path("cc-deps.d"));
        let mut cmd = Command::new(self.compiler);
        cmd.args(&c.args);
        if let Some(d) = &own_deps {
            cmd.arg("-MD").arg("-MF").arg(d);
        }
        if !c.own_prefix_map {
            // Debug info names the sentinels, not this checkout (least
            // specific first: the last matching map wins). `__FILE__` keeps
            // the real path: an object holding it is keyed by it.
            for (real, sent) in self.ctx.paths.rules().iter().rev() {
                cmd.arg(format!("-fdebug-prefix-map={real}={sent}"));
            }
        }
        cmd.env("KACHE_ACTIVE", "1")
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let before = self.ctx.store.fs_clock();
        let all_headers = list_all_headers(self.compiler, c, self.ctx.store);
        let t0 = Instant::now();
        let ran = Ran::finished(
            run_pumped(&mut cmd, &self.ctx.paths, self.compiler_str, "the compiler")?,
            t0,
            before,
        );
        let dep_path = own_deps.clone().or_else(|| self.places.dep_file.clone());
        let dep_text = dep_path.as_ref().map(fs::read_to_string);
        let all_headers_text = all_headers.as_ref().map(fs::read_to_string);
        for d in own_deps.iter().chain(&all_headers) {
            let _ = fs::remove_file(d);
        }
        Ok((
            ran,
            DepOutput {
                dep_text,
                own_deps: own_deps.is_some(),
                all_headers: all_headers_text,
            },
        ))
    }

    /// Restores the object (under this compile's name) and the dependency
    /// file the caller asked for.
    fn restore(&self, entry: &Entry) -> Result<u64> {
        let paths = &self.ctx.paths;
        let dep_text = match (&self.places.dep_file, &entry.dep_info) {
            (Some(p), Some(d)) => Some((p, paths.expand_dep_info(&d.text))),
            (Some(_), None) => bail!("entry {} has no dependency file", entry.key),
            (None, _) => None,
        };
        let mut e = entry.clone();
        e.dep_info = None;
        e.files[0].name = file_name(&self.places.object)?;
        let out_dir = self.places.object.parent().unwrap_or(Path::new("."));
        let size = restore::restore(self.ctx.store, &e, out_dir, paths)?;
        if let Some((p, text)) = dep_text {
            restore::write_fresh(p, text.as_bytes())?;
        }
        Ok(size)
    }

    fn differ(&self, entry: &Entry) -> Vec<String> {
        if action::same_as_blob(self.ctx.store, &self.places.object, &entry.files[0].hash) {
            Vec::new()
        } else {
            vec![self.places.object.display().to_string()]
        }
    }

    /// Stores the object the compiler produced, keyed by the headers it
    /// read and the ones that could have shadowed them.
    fn record(&self, base: CacheKey, base_why: Explain, run: Ran, deps: DepOutput) -> Result<i32> {
        let (c, ctx) = (self.c, &self.ctx);
        let dep_text = match deps.dep_text {
            Some(Ok(t)) => t,
            _ if c.lang() == Lang::Asm && deps.own_deps => String::new(),
            _ => bail!("the compiler wrote no dependency file"),
        };
        let mut headers = match &deps.all_headers {
            None => key::parse_make_deps(&dep_text),
            Some(Ok(all)) => key::parse_make_deps(all),
            Some(Err(_)) => bail!("kache's run listing every header failed"),
        };
        headers.retain(|h| *h != c.source);
        headers.sort();
        headers.dedup();
        let Some(probed) = self.scan_sources(&headers, run.compile_ms)? else {
            return Ok(run.code);
        };
        let files: Vec<String> = headers.iter().map(|h| ctx.paths.normalize(h)).collect();
        let Some(shadows) = self.shadows(&files, probed, run.compile_ms)? else {
            return Ok(run.code);
        };
        let mut inputs = Inputs {
            base,
            files,
            env: Vec::new(),
            link: Vec::new(),
            absent: Vec::new(),
            roots: Vec::new(),
            dirs: Vec::new(),
            shadows: Some(shadows),
        };
        let _w = ctx.store.writer_lock()?;
        let mut roots = Vec::new();
        let (hash, size) = ctx.store_output(&self.places.object, &mut roots)?;
        roots.sort();
        inputs.roots = roots;
        let (full, why) = ctx
            .full_key(&inputs, base_why)
            .ok_or_else(|| anyhow!("a header the compile read is gone"))?;
        if ctx.inputs_changed(run.before) {
            ctx.unstored("an input changed while the compiler ran", run.compile_ms);
            return Ok(run.code);
        }
        let object = FileRecord {
            name: file_name(&self.places.object)?,
            hash,
            size,
            executable: false,
        };
        let mut entry = Entry::new(ctx.crate_name.clone(), full, vec![object]);
        entry.stdout = ctx.paths.normalize(&String::from_utf8_lossy(&run.out_raw));
        entry.stderr = ctx.paths.normalize(&String::from_utf8_lossy(&run.err_raw));
        if let Some(d) = &self.places.dep_file {
            entry.dep_info = Some(DepInfo {
                name: file_name(d)?,
                text: ctx.paths.normalize_dep_info(&dep_text),
            });
        }
        entry.inputs = Some(inputs);
        entry.compile_ms = run.compile_ms;
        entry.explain = why;
        entry.origin = action::cargo_origin(&ctx.probe);
        entry.lang = LANG.map(str::to_string);
        ctx.publish(&entry, "C")?;
        Ok(run.code)
    }
}

impl Job<'_> {
    /// The names `__has_include` asks for in the source and its headers;
    /// `None` (the miss logged) when one expands a clock macro or asks in
    /// a way kache cannot key.
    fn scan_sources(&self, headers: &[String], compile_ms: u64) -> Result<Option<Vec<String>>> {
        // Clock macros make the object depend on when it was compiled.
        // `__has_include` asks about files that may not exist: their names
        // are keyed in every directory.
        let epoch = self.ctx.probe.var("SOURCE_DATE_EPOCH").is_some();
        let mut probed = Vec::new();
        for f in std::iter::once(&self.c.source).chain(headers) {
            let bytes =
                fs::read(self.ctx.paths.absolute(f)).with_context(|| format!("cannot read {f}"))?;
            if let Some(m) = key::clock_macro(&bytes, epoch) {
                self.ctx.unstored(&format!("{f} expands {m}"), compile_ms);
                return Ok(None);
            }
            match key::has_include_names(&bytes) {
                Ok(names) => probed.extend(names),
                Err(why) => {
                    self.ctx.unstored(&format!("{f} has {why}"), compile_ms);
                    return Ok(None);
                }
            }
        }
        probed.sort();
        probed.dedup();
        Ok(Some(probed))
    }

    /// What the headers that would have shadowed those read are computed
    /// from (normalised `files`, the headers read); `None` (the miss
    /// logged) when a header was found where kache does not search.
    fn shadows(
        &self,
        files: &[String],
        probed: Vec<String>,
        compile_ms: u64,
    ) -> Result<Option<Shadows>> {
        let (c, paths) = (self.c, &self.ctx.paths);
        let builtin = builtin_dirs(self.ctx.store, self.compiler_str, c)?;
        let search = key::search_dirs(c, &builtin, &|v| self.ctx.probe.var(v));
        let shadows = Shadows {
            source: paths.normalize(&c.source),
            search: search.iter().map(|d| paths.normalize(d)).collect(),
            forced: !c.forced.is_empty(),
            probed,
        };
        let s = &shadows;
        match key::unplaced(&s.source, files, &s.search, s.forced) {
            Ok(()) => Ok(Some(shadows)),
            Err(why) => {
                self.ctx.unstored(&why, compile_ms);
                Ok(None)
            }
        }
    }
}

/// `-MMD`: the caller's dependency file leaves out system headers, and a
/// compile writes one such file only, so kache lists every header with a
/// preprocessor run of its own (`-M -MF FILE`), before the compile (a
/// header changed after it is newer than the compile's start, and a
/// header deleted after it cannot be hashed: neither is stored). The
/// file, or `None` when the caller's file lists every header; a failed
/// run leaves no file (then nothing is stored).
fn list_all_headers(compiler: &OsString, c: &CcCompile, store: &Store) -> Option<PathBuf> {
    let args = c.list_headers.as_ref()?;
    let file = store.tmp_path("cc-all-deps.d");
    let ok = Command::new(compiler)
        .args(args)
        .arg("-M")
        .arg("-MF")
        .arg(&file)
        .env("KACHE_ACTIVE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = fs::remove_file(&file);
    }
    Some(file)
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} has no file name", p.display()))
}

/// The variables through which the environment adds search directories:
/// left out of the built-in directories' probe (kache adds their
/// directories itself, from their value at each compile).
const INCLUDE_ENV: [&str; 4] = [
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
];

/// The compiler's built-in search directories for this language and the
/// flags that change them, from `CC FLAGS -E -v -x LANG /dev/null`,
/// remembered in the store by the compiler's path, size and mtime.
fn builtin_dirs(store: &Store, compiler: &str, c: &CcCompile) -> Result<Vec<String>> {
    if c.lang() == Lang::Asm {
        return Ok(Vec::new());
    }
    let resolved = super::probe::resolve_program(compiler);
    let meta =
        fs::metadata(&resolved).with_context(|| format!("cannot find {}", resolved.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = KeyHasher::new("cc-search-dirs");
    h.field("path", &resolved.to_string_lossy());
    h.field("mtime", &mtime.to_string());
    h.field("size", &meta.len().to_string());
    h.field("lang", c.lang().x_name());
    for f in &c.search_flags {
        h.field("flag", f);
    }
    for v in ["GCC_EXEC_PREFIX", "COMPILER_PATH"] {
        h.field(v, &std::env::var(v).unwrap_or_default());
    }
    let dir = store.root().join("toolchains");
    let file = dir.join(h.finish());
    let text = if let Ok(t) = fs::read_to_string(&file) {
        t
    } else {
        let mut cmd = Command::new(&resolved);
        cmd.args(&c.search_flags)
            .args(["-E", "-v", "-x", c.lang().x_name(), "/dev/null"])
            .env("KACHE_ACTIVE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for v in INCLUDE_ENV {
            cmd.env_remove(v);
        }
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {} -E -v", resolved.display()))?;
        if !out.status.success() {
            bail!("{} -E -v failed", resolved.display());
        }
        let t = String::from_utf8_lossy(&out.stderr).into_owned();
        if !t.contains("End of search list") {
            bail!("{} -E -v printed no search list", resolved.display());
        }
        let _ = fs::create_dir_all(&dir);
        let _ = store.write_atomic("cc-dirs", &file, t.as_bytes());
        t
    };
    Ok(key::parse_builtin_dirs(&text))
}
