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
mod key;

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use self::args::{CcCompile, Lang, Verdict};
use super::key::{Explain, KeyHasher, Paths, Probe};
use super::probe::RealProbe;
use super::{RootScan, restore, run_plain, run_pumped, truthy, warn};
use crate::config::WrapperConfig;
use crate::store::entry::{DepInfo, Inputs, Origin};
use crate::store::{BlobHash, CacheKey, CrateName, Entry, FileRecord, Store, now_secs};

/// The store folder of compiles made outside cargo.
const OUTSIDE_CARGO: &str = "kache_c";

/// Whether `argv` (`kache PROGRAM ...`) is a C/C++ compiler call rather
/// than a `RUSTC_WORKSPACE_WRAPPER` one.
pub(crate) fn is_cc_call(argv: &[OsString]) -> bool {
    argv.len() > 1
        && !super::args::is_rustc_like(&argv[1])
        && !argv.get(2).is_some_and(|a| super::args::is_rustc_like(a))
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
            return match verdict {
                Verdict::Cache(_) => {
                    warn(&e, "running the compiler uncached");
                    run_plain(compiler, rest)
                }
                Verdict::Pass(_) => run_plain(compiler, rest),
            };
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
    let c = match verdict {
        Verdict::Cache(c) if cfg.cache_c => c,
        Verdict::Cache(_) => {
            return pass_through(&cfg, &crate_name, "C caching is off", compiler, rest, start);
        }
        Verdict::Pass(why) => return pass_through(&cfg, named, &why, compiler, rest, start),
    };
    if let Some(why) = refuse(&c) {
        return pass_through(&cfg, &crate_name, &why, compiler, rest, start);
    }
    let mut ran = None;
    match cached(&cfg, compiler, &c, &crate_name, start, &mut ran) {
        Ok(code) => code,
        Err(e) => {
            if let Ok(store) = Store::open(&cfg.cache_dir) {
                log(
                    &store,
                    serde_json::json!({
                        "crate": crate_name, "result": "error", "size": 0, "key": "",
                        "compile_ms": 0, "ms": crate::units::millis(start.elapsed()),
                    }),
                );
            }
            match ran {
                // The compiler already ran: never run it twice.
                Some(code) => {
                    warn(&e, "object not cached");
                    code
                }
                None => {
                    warn(&e, "running the compiler uncached");
                    run_plain(compiler, rest)
                }
            }
        }
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

/// Appends an event (with `ts` and `lang`) to the log.
fn log(store: &Store, mut v: serde_json::Value) {
    v["ts"] = now_secs().into();
    v["lang"] = "c".into();
    store.log_event(&v.to_string());
}

fn pass_through(
    cfg: &WrapperConfig,
    crate_name: &str,
    reason: &str,
    compiler: &OsString,
    rest: &[OsString],
    start: Instant,
) -> i32 {
    let code = run_plain(compiler, rest);
    log(
        &Store::at(&cfg.cache_dir),
        serde_json::json!({
            "crate": crate_name, "result": "passthrough", "reason": reason,
            "ms": crate::units::millis(start.elapsed()), "size": 0, "key": "", "compile_ms": 0,
        }),
    );
    code
}

/// The workspace a compile belongs to: the nearest directory with a
/// Cargo.lock above the package (`CARGO_MANIFEST_DIR`), when the compile
/// runs inside that package (the package itself under `CARGO_HOME`);
/// else the working directory.
fn workspace_root(cwd: &Path) -> PathBuf {
    let Some(pkg) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        return cwd.to_path_buf();
    };
    if !cwd.starts_with(&pkg) {
        return cwd.to_path_buf();
    }
    // A registry or git dependency: its own folder (named through
    // CARGO_HOME, like its Rust compiles).
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if cargo_home.is_some_and(|h| pkg.starts_with(h)) {
        return pkg;
    }
    pkg.ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .map_or(pkg.clone(), Path::to_path_buf)
}

/// What the entry is for, under cargo: the package version, the target
/// and the Rust toolchain of the build (so `kache sync --pull` keeps it
/// exactly when it keeps the package's Rust entries).
fn origin(probe: &RealProbe<'_>) -> Option<Origin> {
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

/// The first entry, among the recorded input lists of `base`, whose
/// full key is in the store.
fn lookup(
    store: &Store,
    crate_name: &CrateName,
    base: &CacheKey,
    paths: &Paths,
    probe: &RealProbe<'_>,
) -> Option<Entry> {
    for inputs in store.inputs_for(base) {
        let Some(full) = super::key::full_key(&inputs, paths, probe) else {
            continue;
        };
        match store.get(crate_name, &full) {
            Ok(Some(e)) if e.files.len() == 1 => return Some(e),
            Err(e) if crate::store::is_corrupt(&e) => {
                let _ = store.remove(crate_name, &full);
            }
            _ => {}
        }
    }
    None
}

/// The compile's paths made absolute.
struct Places {
    object: PathBuf,
    dep_file: Option<PathBuf>,
}

/// What one cacheable C compile works with.
struct Job<'a> {
    cfg: &'a WrapperConfig,
    c: &'a CcCompile,
    compiler: &'a str,
    store: &'a Store,
    crate_name: &'a CrateName,
    places: Places,
    paths: Paths,
    probe: RealProbe<'a>,
    start: Instant,
}

/// What a real compile left.
struct Ran {
    code: i32,
    compile_ms: u64,
    out_raw: Vec<u8>,
    err_raw: Vec<u8>,
    /// The dependency file the compiler wrote, read.
    dep_text: Option<std::io::Result<String>>,
    /// Whether that file was kache's own (the caller asked for none).
    own_deps: bool,
    /// Every header, when the caller's file leaves some out (`-MMD`).
    all_headers: Option<std::io::Result<String>>,
    /// The filesystem's clock before the compile started.
    before: Option<std::time::SystemTime>,
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
    let job = Job::new(cfg, c, compiler_str, &store, crate_name, start)?;
    let (base, base_why) = key::base_key(compiler_str, c, &job.paths, &job.probe)?;
    let verify = truthy("KACHE_VERIFY");
    let mut found = job.lookup(&base);
    let _guard = if found.is_none() {
        let g = store.compile_lock(&base);
        found = job.lookup(&base);
        g
    } else {
        None
    };
    if let Some(e) = &found
        && !verify
    {
        return hit(&store, e, c, &job.places, &job.paths, start, false);
    }
    if found.is_none()
        && job.remote_fetch()
        && let Some(e) = job.lookup(&base)
    {
        return hit(&store, &e, c, &job.places, &job.paths, start, true);
    }

    // Miss (or a hit to verify): compile for real.
    let run = job.compile(compiler)?;
    *ran = Some(run.code);
    if run.code != 0 {
        job.unstored("the compile failed", run.compile_ms);
        return Ok(run.code);
    }
    if let Some(e) = &found {
        return verify_hit(&store, e, &job.places, start, run.compile_ms);
    }
    job.record(base, base_why, run)
}

impl<'a> Job<'a> {
    /// The compile's places, from the working directory.
    fn new(
        cfg: &'a WrapperConfig,
        c: &'a CcCompile,
        compiler: &'a str,
        store: &'a Store,
        crate_name: &'a CrateName,
        start: Instant,
    ) -> Result<Self> {
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
        let ws = workspace_root(&cwd);
        let paths = Paths::detect_rooted(&out_dir, cwd, ws);
        Ok(Job {
            cfg,
            c,
            compiler,
            store,
            crate_name,
            places,
            paths,
            probe: RealProbe::new(store),
            start,
        })
    }

    fn lookup(&self, base: &CacheKey) -> Option<Entry> {
        lookup(self.store, self.crate_name, base, &self.paths, &self.probe)
    }

    /// Asks the daemon for a remote hit; true if it fetched one.
    fn remote_fetch(&self) -> bool {
        crate::daemon::client::remote_fetch(
            self.cfg,
            self.store,
            self.crate_name,
            origin(&self.probe).map(|o| o.toolchain),
        )
    }

    /// Logs a miss that is not stored, and why.
    fn unstored(&self, reason: &str, compile_ms: u64) {
        log(
            self.store,
            serde_json::json!({
                "crate": self.crate_name, "result": "miss", "reason": reason, "size": 0,
                "key": "", "compile_ms": compile_ms, "ms": crate::units::millis(self.start.elapsed()),
            }),
        );
    }

    /// Runs the compiler with kache's additions, its output passing
    /// through live, and reads the dependency file it wrote.
    fn compile(&self, compiler: &OsString) -> Result<Ran> {
        let c = self.c;
        let own_deps = c
            .dep_file
            .is_none()
            .then(|| self.store.tmp_path("cc-deps.d"));
        let mut cmd = Command::new(compiler);
        cmd.args(&c.args);
        if let Some(d) = &own_deps {
            cmd.arg("-MD").arg("-MF").arg(d);
        }
        if !c.own_prefix_map {
            // Debug info names the sentinels, not this checkout (least
            // specific first: the last matching map wins). `__FILE__` keeps
            // the real path: an object holding it is keyed by it.
            for (real, sent) in self.paths.rules().iter().rev() {
                cmd.arg(format!("-fdebug-prefix-map={real}={sent}"));
            }
        }
        cmd.env("KACHE_ACTIVE", "1")
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let before = self.store.fs_clock();
        let all_headers = list_all_headers(compiler, c, self.store);
        let t0 = Instant::now();
        let (status, out_raw, err_raw) =
            run_pumped(&mut cmd, &self.paths, self.compiler, "the compiler")?;
        let compile_ms = crate::units::millis(t0.elapsed());
        let code = super::exit_code(status);
        let dep_path = own_deps.clone().or_else(|| self.places.dep_file.clone());
        let dep_text = dep_path.as_ref().map(fs::read_to_string);
        let all_headers_text = all_headers.as_ref().map(fs::read_to_string);
        for d in own_deps.iter().chain(&all_headers) {
            let _ = fs::remove_file(d);
        }
        Ok(Ran {
            code,
            compile_ms,
            out_raw,
            err_raw,
            dep_text,
            all_headers: all_headers_text,
            own_deps: own_deps.is_some(),
            before,
        })
    }

    /// Stores the object the compiler produced, keyed by the headers it
    /// read and the ones that could have shadowed them.
    fn record(&self, base: CacheKey, base_why: Explain, run: Ran) -> Result<i32> {
        let c = self.c;
        let dep_text = match run.dep_text {
            Some(Ok(t)) => t,
            _ if c.lang() == Lang::Asm && run.own_deps => String::new(),
            _ => bail!("the compiler wrote no dependency file"),
        };
        let mut headers = match &run.all_headers {
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
        let Some(absent) = self.absent(&headers, &probed, run.compile_ms)? else {
            return Ok(run.code);
        };
        let mut inputs = Inputs {
            base,
            files: headers.iter().map(|h| self.paths.normalize(h)).collect(),
            env: Vec::new(),
            link: Vec::new(),
            absent: absent.iter().map(|h| self.paths.normalize(h)).collect(),
            roots: Vec::new(),
        };
        let _w = self.store.writer_lock()?;
        let (hash, size, roots) = self.store_object()?;
        inputs.roots = roots;
        let (full, full_why) = super::key::full_key_explained(&inputs, &self.paths, &self.probe)
            .ok_or_else(|| anyhow!("a header the compile read is gone"))?;
        if run
            .before
            .is_none_or(|b| super::probe::changed_since(&self.probe.files_read(), b))
        {
            self.unstored("an input changed while the compiler ran", run.compile_ms);
            return Ok(run.code);
        }
        let mut why = base_why;
        why.extend(full_why);
        let object = FileRecord {
            name: file_name(&self.places.object)?,
            hash,
            size,
            executable: false,
        };
        let mut entry = Entry::new(self.crate_name.clone(), full, vec![object]);
        entry.stdout = self.paths.normalize(&String::from_utf8_lossy(&run.out_raw));
        entry.stderr = self.paths.normalize(&String::from_utf8_lossy(&run.err_raw));
        if let Some(d) = &self.places.dep_file {
            entry.dep_info = Some(DepInfo {
                name: file_name(d)?,
                text: self.paths.normalize_dep_info(&dep_text),
            });
        }
        entry.inputs = Some(inputs);
        entry.compile_ms = run.compile_ms;
        entry.explain = why;
        entry.origin = origin(&self.probe);
        entry.lang = Some("c".into());
        self.publish(&entry, size)?;
        Ok(run.code)
    }

    /// The names `__has_include` asks for in the source and its headers;
    /// `None` (the miss logged) when one expands a clock macro or asks in
    /// a way kache cannot key.
    fn scan_sources(&self, headers: &[String], compile_ms: u64) -> Result<Option<Vec<String>>> {
        // Clock macros make the object depend on when it was compiled.
        // `__has_include` asks about files that may not exist: their names
        // are keyed in every directory.
        let epoch = self.probe.var("SOURCE_DATE_EPOCH").is_some();
        let mut probed = Vec::new();
        for f in std::iter::once(&self.c.source).chain(headers) {
            let bytes =
                fs::read(self.paths.absolute(f)).with_context(|| format!("cannot read {f}"))?;
            if let Some(m) = key::clock_macro(&bytes, epoch) {
                self.unstored(&format!("{f} expands {m}"), compile_ms);
                return Ok(None);
            }
            match key::has_include_names(&bytes) {
                Ok(names) => probed.extend(names),
                Err(why) => {
                    self.unstored(&format!("{f} has {why}"), compile_ms);
                    return Ok(None);
                }
            }
        }
        probed.sort();
        probed.dedup();
        Ok(Some(probed))
    }

    /// The headers that are absent but would have shadowed those read;
    /// `None` (the miss logged) when a header was found where kache does
    /// not search.
    fn absent(
        &self,
        headers: &[String],
        probed: &[String],
        compile_ms: u64,
    ) -> Result<Option<Vec<String>>> {
        let c = self.c;
        let builtin = builtin_dirs(self.store, self.compiler, c)?;
        let search = key::search_dirs(c, &builtin, &|v| self.probe.var(v));
        match key::shadow_candidates(&c.source, headers, &search, !c.forced.is_empty(), probed) {
            Ok(a) => Ok(Some(a)),
            Err(why) => {
                self.unstored(&why, compile_ms);
                Ok(None)
            }
        }
    }

    /// Puts the object into the store, scanned on the way for the
    /// machine-local roots it contains: its hash, size and roots.
    fn store_object(&self) -> Result<(BlobHash, u64, Vec<String>)> {
        let object = &self.places.object;
        let mut roots = Vec::new();
        let f = File::open(object).with_context(|| format!("cannot read {}", object.display()))?;
        let (hash, size) = self
            .store
            .put_blob_reader(RootScan::new(f, self.paths.rules(), &mut roots), None)
            .with_context(|| format!("cannot store {}", object.display()))?;
        roots.sort();
        Ok((hash, size, roots))
    }

    /// Publishes the entry, hands it to the daemon to upload and logs the
    /// miss.
    fn publish(&self, entry: &Entry, size: u64) -> Result<()> {
        self.store.publish(entry)?;
        crate::daemon::client::after_store(self.cfg, self.store, self.crate_name, &entry.key);
        super::progress(self.crate_name, "C miss", self.start, size);
        log(
            self.store,
            serde_json::json!({
                "crate": self.crate_name, "result": "miss", "size": size, "key": entry.key,
                "compile_ms": entry.compile_ms, "ms": crate::units::millis(self.start.elapsed()),
                "inputs": entry.explain,
            }),
        );
        Ok(())
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

/// Restores the object (under this compile's name) and the dependency
/// file the caller asked for, then replays the compiler's output.
fn hit(
    store: &Store,
    entry: &Entry,
    c: &CcCompile,
    places: &Places,
    paths: &Paths,
    start: Instant,
    remote: bool,
) -> Result<i32> {
    use std::io::Write;
    let dep_text = match (&places.dep_file, &entry.dep_info) {
        (Some(p), Some(d)) => Some((p, paths.expand_dep_info(&d.text))),
        (Some(_), None) => bail!("entry {} has no dependency file", entry.key),
        (None, _) => None,
    };
    let mut e = entry.clone();
    e.dep_info = None;
    e.files[0].name = file_name(&places.object)?;
    let out_dir = places.object.parent().unwrap_or(Path::new("."));
    let size = restore::restore(store, &e, out_dir, paths)?;
    if let Some((p, text)) = dep_text {
        restore::write_fresh(p, text.as_bytes())?;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(paths.expand(&entry.stdout).as_bytes());
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(paths.expand(&entry.stderr).as_bytes());
    let _ = err.flush();
    store.touch(&entry.crate_name, &entry.key);
    let result = if remote { "remote_hit" } else { "local_hit" };
    super::progress(
        &entry.crate_name,
        &format!("C {result} ({})", c.source),
        start,
        size,
    );
    log(
        store,
        serde_json::json!({
            "crate": entry.crate_name, "result": result, "size": size, "key": entry.key,
            "compile_ms": entry.compile_ms, "ms": crate::units::millis(start.elapsed()),
        }),
    );
    Ok(0)
}

/// `KACHE_VERIFY=1`: the hit was compiled for real; compares the object.
fn verify_hit(
    store: &Store,
    e: &Entry,
    places: &Places,
    start: Instant,
    compile_ms: u64,
) -> Result<i32> {
    let compiled = crate::store::hash_file(&places.object).ok();
    let ok = compiled.as_deref() == Some(e.files[0].hash.as_str());
    if !ok {
        eprintln!(
            "warning: kache: verify mismatch: {} key {}: {} differs from the stored entry; keeping the compiled object",
            e.crate_name,
            e.key,
            places.object.display()
        );
    }
    log(
        store,
        serde_json::json!({
            "crate": e.crate_name, "result": if ok { "verified" } else { "verify_mismatch" },
            "size": e.size(), "key": e.key, "compile_ms": compile_ms,
            "ms": crate::units::millis(start.elapsed()),
        }),
    );
    Ok(0)
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
