/*!
`RUSTC_WRAPPER` mode.

C, C++ and assembler compiles (`kache CC ARGS...`, from the `cc` crate,
`CMake`'s compiler launcher or `CC="kache gcc"`) are handled in `cc`.

Cargo runs `kache RUSTC ARGS...` (or `kache WORKSPACE_WRAPPER RUSTC
ARGS...`). A cacheable compile is looked up by its key (see `key`); a hit
restores the stored outputs and replays rustc's output without running
rustc; a miss runs rustc, streams its output live and stores the result.
Everything else passes straight through. Any internal error falls back
to running rustc exactly as without kache, with one warning line.
*/

pub(crate) mod args;
mod call;
mod cc;
pub(crate) mod glob;
pub(crate) mod key;
mod link;
mod probe;
pub(crate) mod restore;
mod stamp;

pub(crate) use self::call::is_wrapper_call;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use self::args::{Compile, Verdict};
use self::key::{Declared, Paths};
use self::probe::RealProbe;
use crate::config::WrapperConfig;
use crate::store::entry::{DepInfo, Inputs, Origin};
use crate::store::{CacheKey, CrateName, Entry, FileRecord, Store, normalize_crate, now_secs};

fn truthy(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        !v.is_empty() && v != "0" && v != "false" && v != "no" && v != "off"
    })
}

/// Runs a program with inherited stdio; its exit code.
fn run_plain(program: &OsString, rest: &[OsString]) -> i32 {
    match Command::new(program).args(rest).status() {
        Ok(s) => exit_code(s),
        Err(e) => {
            eprintln!(
                "error: kache: cannot run {}: {e}",
                program.to_string_lossy()
            );
            1
        }
    }
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code()
        .unwrap_or_else(|| s.signal().map_or(1, |sig| 128 + sig))
}

/// One wrapper outcome, for the event log.
struct Event<'a> {
    crate_name: &'a str,
    result: &'a str,
    start: Instant,
    size: u64,
    key: &'a str,
    compile_ms: u64,
}

fn log(store: &Store, e: &Event<'_>) {
    let line = serde_json::json!({
        "ts": now_secs(),
        "crate": e.crate_name,
        "result": e.result,
        "ms": crate::units::millis(e.start.elapsed()),
        "size": e.size,
        "key": e.key,
        "compile_ms": e.compile_ms,
    });
    store.log_event(&line.to_string());
}

fn progress(crate_name: &str, what: &str, start: Instant, size: u64) {
    if std::env::var("KACHE_PROGRESS").is_ok_and(|v| v.trim() == "1") {
        eprintln!(
            "[kache] {crate_name}: {what} ({}ms, {})",
            start.elapsed().as_millis(),
            crate::units::format_size(size)
        );
    }
}

/// Runs the wrapper; returns the exit code to exit with.
pub(crate) fn main(argv: &[OsString]) -> i32 {
    let start = Instant::now();
    if std::env::var_os("KACHE_ACTIVE").is_none() && cc::is_cc_call(argv) {
        return cc::main(argv);
    }
    if std::env::var_os("KACHE_ACTIVE").is_some() || !args::is_rustc_like(&argv[1]) {
        // A nested call, or the RUSTC_WORKSPACE_WRAPPER shape
        // (`kache WRAPPER rustc ARGS`): run argv[1] uncached.
        return run_plain(&argv[1], &argv[2..]);
    }
    let rustc = &argv[1];
    let rest = &argv[2..];
    let Some(mut expanded) = args::expand_argfiles(rest) else {
        return run_plain(rustc, rest);
    };
    // clippy-driver as workspace wrapper: `kache clippy-driver rustc ARGS`.
    let lead: Option<String> = match expanded.first() {
        Some(a) if args::is_rustc_like(a.as_ref()) => Some(expanded.remove(0)),
        _ => None,
    };
    let out_dir_env = std::env::var("OUT_DIR").ok();
    if truthy("KACHE_DISABLED") {
        // Pure pass-through; only clear read-only outputs a restore left
        // (hard links to blobs), which rustc refuses to overwrite.
        if let Verdict::Cache(c) = args::classify(&expanded, true, out_dir_env.as_deref()) {
            unlink_outputs(&c);
        }
        return run_plain(rustc, rest);
    }
    let cfg = match WrapperConfig::load() {
        Ok(c) => c,
        Err(e) => {
            return match args::classify(&expanded, true, out_dir_env.as_deref()) {
                Verdict::Cache(c) => {
                    // Outputs an earlier hit restored are read-only.
                    unlink_outputs(&c);
                    fallback(rustc, rest, &e)
                }
                Verdict::Pass(_) => run_plain(rustc, rest),
            };
        }
    };
    let mut compile = match args::classify(&expanded, cfg.cache_executables, out_dir_env.as_deref())
    {
        Verdict::Cache(c) => c,
        Verdict::Pass(reason) => {
            let name = expanded
                .iter()
                .position(|a| a == "--crate-name")
                .and_then(|i| expanded.get(i + 1))
                .filter(|n| *n != "___")
                .map(|n| normalize_crate(n))
                .unwrap_or_default();
            return pass_through(&cfg, &name, reason, rustc, rest, start);
        }
    };
    if let Some(l) = lead {
        compile.run_args.insert(0, l);
    }
    let crate_name = entry_crate(&compile);
    let rustc_name = normalize_crate(&compile.crate_name);
    if cfg
        .never_cache
        .iter()
        .any(|n| *n == *crate_name || *n == rustc_name)
    {
        return pass_through(&cfg, &crate_name, "never_cache", rustc, rest, start);
    }
    if let Some(reason) = side_effect_macro(&compile) {
        return pass_through(&cfg, &crate_name, reason, rustc, rest, start);
    }
    let mut ran = None;
    match cached(&cfg, rustc, &compile, &expanded, start, &mut ran) {
        Ok(code) => code,
        Err(e) => match ran {
            // rustc already ran: never run it twice.
            Some(code) => {
                warn(&e, "rustc output not cached");
                if let Ok(store) = Store::open(&cfg.cache_dir) {
                    log_error(&store, &entry_crate(&compile), start);
                }
                code
            }
            None => {
                if let Ok(store) = Store::open(&cfg.cache_dir) {
                    log_error(&store, &entry_crate(&compile), start);
                }
                // A restore may have failed half way: rustc cannot
                // overwrite read-only links.
                unlink_outputs(&compile);
                fallback(rustc, rest, &e)
            }
        },
    }
}

/// Runs rustc uncached and logs why, for `kache stats` and `kache why-miss`.
fn pass_through(
    cfg: &WrapperConfig,
    crate_name: &str,
    reason: &str,
    rustc: &OsString,
    rest: &[OsString],
    start: Instant,
) -> i32 {
    let code = run_plain(rustc, rest);
    let line = serde_json::json!({
        "ts": now_secs(),
        "crate": crate_name,
        "result": "passthrough",
        "reason": reason,
        "ms": crate::units::millis(start.elapsed()),
        "size": 0,
        "key": "",
        "compile_ms": 0,
    });
    Store::at(&cfg.cache_dir).log_event(&line.to_string());
    code
}

/// Variables through which a build tool asks proc macros to write files
/// while they expand (napi-rs's TypeScript definitions: the CLI sets
/// one, `napi-derive` writes the definitions of each crate it expands).
/// A hit would run no macro and so write nothing.
const SIDE_EFFECT_VARS: [(&str, &str); 3] = [
    (
        "NAPI_TYPE_DEF_TMP_FOLDER",
        "a proc macro writes files while it expands (NAPI_TYPE_DEF_TMP_FOLDER is set)",
    ),
    (
        "TYPE_DEF_TMP_FOLDER",
        "a proc macro writes files while it expands (TYPE_DEF_TMP_FOLDER is set)",
    ),
    (
        "TYPE_DEF_TMP_PATH",
        "a proc macro writes files while it expands (TYPE_DEF_TMP_PATH is set)",
    ),
];

/// Why a compile must run for its side effects: one of
/// [`SIDE_EFFECT_VARS`] is set and the compile loads a proc macro.
fn side_effect_macro(compile: &Compile) -> Option<&'static str> {
    let loads_macro = compile
        .externs
        .iter()
        .any(|(_, p)| p.as_deref().is_some_and(|p| p.ends_with(".so")));
    if !loads_macro {
        return None;
    }
    SIDE_EFFECT_VARS
        .iter()
        .find(|(v, _)| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
        .map(|(_, reason)| *reason)
}

/// The store (and remote) folder of a compile's entries: the cargo
/// package name, normalised, so that build scripts, binaries and tests
/// sit with their package and `kache sync --pull` finds them through
/// Cargo.lock; rustc's `--crate-name` outside cargo.
fn entry_crate(compile: &Compile) -> CrateName {
    std::env::var("CARGO_PKG_NAME")
        .ok()
        .and_then(|n| CrateName::normalize(&n))
        .or_else(|| CrateName::normalize(&compile.crate_name))
        .unwrap_or_else(CrateName::unnamed)
}

/// Logs a miss whose outputs were not stored (a failed compile, or
/// sources edited while rustc ran).
fn unstored_miss(store: &Store, crate_name: &str, start: Instant, compile_ms: u64) {
    log(
        store,
        &Event {
            crate_name,
            result: "miss",
            start,
            size: 0,
            key: "",
            compile_ms,
        },
    );
}

fn log_error(store: &Store, crate_name: &str, start: Instant) {
    log(
        store,
        &Event {
            crate_name,
            result: "error",
            start,
            size: 0,
            key: "",
            compile_ms: 0,
        },
    );
}

fn warn(e: &anyhow::Error, what: &str) {
    let cause = format!("{e:#}").replace('\n', " ");
    eprintln!("warning: kache: {cause}; {what}");
}

/// Runs rustc exactly as without kache, after one warning line.
fn fallback(rustc: &OsString, rest: &[OsString], e: &anyhow::Error) -> i32 {
    warn(e, "running rustc uncached");
    run_plain(rustc, rest)
}

/// Removes read-only outputs of a compile from its out dir.
fn unlink_outputs(c: &Compile) {
    let mut names: Vec<String> = c.outputs().into_iter().map(|(n, _)| n).collect();
    names.push(c.dep_info_name());
    restore::unlink_readonly(&c.out_dir, &names);
}

/// Looks up each recorded input list of `base`; the first whose full key
/// has an entry.
fn lookup(
    store: &Store,
    crate_name: &CrateName,
    base: &CacheKey,
    paths: &Paths,
    probe: &RealProbe<'_>,
) -> Result<Option<Entry>> {
    for inputs in store.inputs_for(base) {
        let Some(full) = key::full_key(&inputs, paths, probe) else {
            continue;
        };
        match store.get(crate_name, &full) {
            Ok(Some(e)) => return Ok(Some(e)),
            Ok(None) => {}
            // A manifest proven corrupt: drop it so this compile can
            // replace it. An I/O error (EMFILE, EIO) leaves it alone.
            Err(e) if crate::store::is_corrupt(&e) => {
                let _ = store.remove(crate_name, &full);
            }
            Err(_) => {}
        }
    }
    Ok(None)
}

/// For a proc macro or dylib: the shared libraries its link read, under
/// its `.so`'s content hash, so the compiles that load it key them.
fn record_runtime_libs(store: &Store, entry: &Entry) {
    let Some(inputs) = &entry.inputs else { return };
    let libs: Vec<String> = inputs
        .link
        .iter()
        .filter(|l| l.ends_with(".so") || l.contains(".so."))
        .cloned()
        .collect();
    for f in entry.files.iter().filter(|f| f.name.ends_with(".so")) {
        store.set_runtime_libs(&f.hash, &libs);
    }
}

fn hit(
    store: &Store,
    entry: &Entry,
    compile: &Compile,
    paths: &Paths,
    start: Instant,
    remote: bool,
) -> Result<i32> {
    let size = restore::restore(store, entry, &compile.out_dir, paths)?;
    record_runtime_libs(store, entry);
    store.set_origins(entry);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(paths.expand(&entry.stdout).as_bytes());
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(paths.expand(&entry.stderr).as_bytes());
    let _ = err.flush();
    store.touch(&entry.crate_name, &entry.key);
    let (what, result) = if remote {
        ("remote hit", "remote_hit")
    } else {
        ("local hit", "local_hit")
    };
    progress(&compile.crate_name, what, start, size);
    log(
        store,
        &Event {
            crate_name: &entry.crate_name,
            result,
            start,
            size,
            key: &entry.key,
            compile_ms: entry.compile_ms,
        },
    );
    Ok(0)
}

/// The inputs the user declared for a crate.
fn declared(cfg: &WrapperConfig, crate_name: &str, compile: &Compile) -> Declared {
    let mut d = Declared::default();
    for n in [crate_name.to_string(), normalize_crate(&compile.crate_name)] {
        if let Some(i) = cfg.inputs.get(&n) {
            d.env.extend(i.env.iter().cloned());
            d.files.extend(i.files.iter().cloned());
        }
    }
    d.env.sort();
    d.env.dedup();
    d.files.sort();
    d.files.dedup();
    d
}

/// What one cacheable compile works with.
struct Job<'a> {
    cfg: &'a WrapperConfig,
    compile: &'a Compile,
    rustc: &'a str,
    store: &'a Store,
    crate_name: CrateName,
    paths: Paths,
    probe: RealProbe<'a>,
    /// The out dir, absolute.
    out_dir: std::path::PathBuf,
    start: Instant,
}

/// What a real compile left.
struct Ran {
    code: i32,
    compile_ms: u64,
    out_raw: Vec<u8>,
    err_raw: Vec<u8>,
    /// The link line rustc printed, for a linked output.
    link_text: Option<std::io::Result<String>>,
    /// The filesystem's clock before the compile started.
    before: Option<std::time::SystemTime>,
}

fn cached(
    cfg: &WrapperConfig,
    rustc: &OsString,
    compile: &Compile,
    args: &[String],
    start: Instant,
    ran: &mut Option<i32>,
) -> Result<i32> {
    let rustc_str = rustc
        .to_str()
        .ok_or_else(|| anyhow!("rustc path is not UTF-8"))?;
    let store = Store::open(&cfg.cache_dir)?;
    let paths = Paths::detect(&compile.out_dir)?;
    let out_dir = paths.absolute(&compile.out_dir.to_string_lossy());
    let job = Job {
        cfg,
        compile,
        rustc: rustc_str,
        crate_name: entry_crate(compile),
        probe: RealProbe::new(&store),
        store: &store,
        paths,
        out_dir,
        start,
    };
    let decl = declared(cfg, &job.crate_name, compile);
    let (base, base_why) = key::base_key(rustc_str, compile, args, &job.paths, &decl, &job.probe)?;
    let verify = truthy("KACHE_VERIFY");
    let mut found = job.lookup(&base)?;
    let _guard = if found.is_none() {
        let g = job.store.compile_lock(&base);
        found = job.lookup(&base)?;
        g
    } else {
        None
    };
    if let Some(e) = &found
        && !verify
    {
        return hit(job.store, e, compile, &job.paths, start, false);
    }
    if found.is_none()
        && job.remote_fetch()
        && let Some(e) = job.lookup(&base)?
    {
        return hit(job.store, &e, compile, &job.paths, start, true);
    }

    // Miss (or a hit to verify): compile for real.
    let run = job.compile(rustc)?;
    *ran = Some(run.code);
    if run.code != 0 {
        progress(&compile.crate_name, "miss (failed)", start, 0);
        unstored_miss(job.store, &job.crate_name, start, run.compile_ms);
        return Ok(run.code);
    }
    if let Some(e) = &found {
        return verify_hit(job.store, e, &job.out_dir, start, run.compile_ms);
    }
    job.record(base, base_why, run)
}

impl Job<'_> {
    fn lookup(&self, base: &CacheKey) -> Result<Option<Entry>> {
        lookup(self.store, &self.crate_name, base, &self.paths, &self.probe)
    }

    /// Asks the daemon for a remote hit; true if it fetched one.
    fn remote_fetch(&self) -> bool {
        crate::daemon::client::remote_fetch(
            self.cfg,
            self.store,
            &self.crate_name,
            key::Probe::identity(&self.probe, self.rustc, &["-vV"])
                .ok()
                .map(|vv| crate::store::toolchain_id(&vv)),
        )
    }

    /// Runs rustc, its output passing through live.
    fn compile(&self, rustc: &OsString) -> Result<Ran> {
        let compile = self.compile;
        unlink_outputs(compile);
        // The link line goes beside the outputs, never into the store: a
        // full or broken store must not fail the compile.
        let link_args = (compile.links() && compile.emit.iter().any(|e| e == "link")).then(|| {
            self.out_dir.join(format!(
                ".{}.kache-link-args.{}",
                compile.dep_info_name(),
                std::process::id()
            ))
        });
        let mut cmd = Command::new(rustc);
        cmd.args(rustc_args(compile, &self.paths))
            .env("KACHE_ACTIVE", "1")
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = &link_args {
            cmd.arg(format!("--print=link-args={}", p.display()));
        }
        let before = self.store.fs_clock();
        let t0 = Instant::now();
        let (status, out_raw, err_raw) = run_pumped(&mut cmd, &self.paths, self.rustc, "rustc")?;
        let link_text = link_args.as_ref().map(|p| {
            let t = fs::read_to_string(p);
            let _ = fs::remove_file(p);
            t
        });
        Ok(Ran {
            code: exit_code(status),
            compile_ms: crate::units::millis(t0.elapsed()),
            out_raw,
            err_raw,
            link_text,
            before,
        })
    }

    /// The files the link read and the paths it would have taken before
    /// them, normalised for the input list (the outputs left out).
    fn link_inputs(
        &self,
        link_text: Option<std::io::Result<String>>,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let Some(t) = link_text else {
            return Ok((Vec::new(), Vec::new()));
        };
        let t = t.context("rustc wrote no link line")?;
        let outs: Vec<std::path::PathBuf> = self
            .compile
            .outputs()
            .iter()
            .map(|(n, _)| self.out_dir.join(n))
            .collect();
        let li = link::link_inputs(
            &t,
            &self.paths.cwd,
            &|p: &std::path::Path| p.is_file(),
            &|| link::default_lib_dirs(&t),
        );
        let norm = |v: Vec<std::path::PathBuf>| -> Vec<String> {
            v.into_iter()
                .filter(|p| !outs.contains(p))
                .map(|p| self.paths.normalize_input(&p.to_string_lossy()))
                .collect()
        };
        Ok((norm(li.files), norm(li.absent)))
    }

    /// Puts the outputs into the store, scanned on the way for the
    /// machine-local roots they contain (which then join the key).
    fn store_outputs(&self) -> Result<(Vec<FileRecord>, Vec<String>)> {
        let outputs = self.compile.outputs();
        let mut files = Vec::with_capacity(outputs.len());
        let mut roots = Vec::new();
        for (name, executable) in &outputs {
            let p = self.out_dir.join(name);
            let f = File::open(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let (hash, size) = self
                .store
                .put_blob_reader(RootScan::new(f, self.paths.rules(), &mut roots), None)
                .with_context(|| format!("cannot store {}", p.display()))?;
            files.push(FileRecord {
                name: name.clone(),
                hash,
                size,
                executable: *executable,
            });
        }
        roots.sort();
        Ok((files, roots))
    }

    /// Stores what rustc produced, keyed by what it actually read.
    fn record(&self, base: CacheKey, base_why: key::Explain, run: Ran) -> Result<i32> {
        let compile = self.compile;
        let dep_path = self.out_dir.join(compile.dep_info_name());
        let dep_text = fs::read_to_string(&dep_path)
            .with_context(|| format!("cannot read dep-info {}", dep_path.display()))?;
        let deps = key::parse_dep_info(&dep_text);
        let (link, absent) = self.link_inputs(run.link_text)?;
        let mut inputs = Inputs {
            base,
            files: deps
                .files
                .iter()
                .map(|f| self.paths.normalize_input(f))
                .collect(),
            env: deps.env,
            link,
            absent,
            roots: Vec::new(),
        };
        let _w = self.store.writer_lock()?;
        let (files, roots) = self.store_outputs()?;
        inputs.roots = roots;
        let (full, full_why) = key::full_key_explained(&inputs, &self.paths, &self.probe)
            .ok_or_else(|| anyhow!("an input listed in {} is gone", dep_path.display()))?;
        let mut why = base_why;
        why.extend(full_why);
        if run
            .before
            .is_none_or(|b| probe::changed_since(&self.probe.files_read(), b))
        {
            // An input changed while rustc ran: its outputs may not match
            // the content the key was computed from. Not an error; not
            // stored (the blobs just written are unreferenced; gc
            // removes them).
            unstored_miss(self.store, &self.crate_name, self.start, run.compile_ms);
            return Ok(run.code);
        }
        let size = files.iter().map(|f| f.size).sum();
        let mut entry = Entry::new(self.crate_name.clone(), full.clone(), files);
        entry.stdout = self.paths.normalize(&String::from_utf8_lossy(&run.out_raw));
        entry.stderr = self.paths.normalize(&String::from_utf8_lossy(&run.err_raw));
        entry.dep_info = Some(DepInfo {
            name: compile.dep_info_name(),
            text: self.paths.normalize_dep_info(&dep_text),
        });
        entry.inputs = Some(inputs);
        entry.compile_ms = run.compile_ms;
        entry.explain = why;
        entry.origin = origin(self.rustc, compile, &self.probe).map(|mut o| {
            o.deps = extern_origins(self.store, compile, &self.paths, &self.probe);
            o
        });
        record_runtime_libs(self.store, &entry);
        self.store.set_origins(&entry);
        self.store.publish(&entry)?;
        crate::daemon::client::after_store(self.cfg, self.store, &self.crate_name, &full);
        progress(&compile.crate_name, "miss", self.start, size);
        let line = serde_json::json!({
            "ts": now_secs(),
            "crate": self.crate_name,
            "result": "miss",
            "ms": crate::units::millis(self.start.elapsed()),
            "size": size,
            "key": full,
            "compile_ms": run.compile_ms,
            "inputs": entry.explain,
        });
        self.store.log_event(&line.to_string());
        Ok(run.code)
    }
}

/// The argv rustc (or the workspace wrapper) runs with: cargo's
/// arguments in cargo's order (a workspace wrapper such as clippy-driver
/// takes the rustc path first), then kache's path remapping, then the
/// user's own `--remap-path-prefix` flags again, so that they still win
/// (rustc applies the last matching rule). A coverage build is not
/// remapped: its coverage map must name the real sources.
fn rustc_args(compile: &Compile, paths: &Paths) -> Vec<String> {
    let mut argv = compile.run_args.clone();
    if !compile.coverage {
        argv.extend(paths.remap_args());
        argv.extend(
            args::tokenize(&compile.run_args)
                .into_iter()
                .filter(|a| a.flag == "--remap-path-prefix")
                .map(|a| format!("--remap-path-prefix={}", a.value)),
        );
    }
    argv
}

/// `name@version` of the `--extern`s whose origin the store knows.
fn extern_origins(store: &Store, c: &Compile, paths: &Paths, probe: &RealProbe<'_>) -> Vec<String> {
    use self::key::Probe;
    let mut out: Vec<String> = c
        .externs
        .iter()
        .filter_map(|(_, p)| p.as_deref())
        .filter_map(|p| probe.hash(&paths.absolute(p)))
        .filter_map(|h| store.origin_of(&h))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the entry is for: the package version, the target triple and a
/// short digest of the toolchain (`None` if any is not a safe name).
fn origin(rustc: &str, compile: &Compile, probe: &RealProbe<'_>) -> Option<Origin> {
    use self::key::Probe;
    let vv = probe.identity(rustc, &["-vV"]).ok()?;
    let host = vv.lines().find_map(|l| l.strip_prefix("host: "))?.trim();
    let target = match &compile.target {
        Some(t) => std::path::Path::new(t)
            .file_stem()
            .map_or_else(|| t.clone(), |s| s.to_string_lossy().into_owned()),
        None => host.to_string(),
    };
    let o = Origin {
        version: probe
            .var("CARGO_PKG_VERSION")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "_".to_string()),
        target,
        toolchain: crate::store::toolchain_id(&vv),
        deps: Vec::new(),
    };
    o.is_valid().then_some(o)
}

/// A reader that looks for the machine-local roots (real paths) in what
/// passes through it, so the outputs are scanned in the same pass that
/// stores them. Memory stays bounded whatever the file size.
struct RootScan<'a, R> {
    inner: R,
    rules: &'a [(String, String)],
    finders: Vec<memchr::memmem::Finder<'a>>,
    /// Sentinels of the roots found so far.
    found: &'a mut Vec<String>,
    /// The last bytes of the previous read: a path may straddle two.
    tail: Vec<u8>,
    keep: usize,
}

impl<'a, R: Read> RootScan<'a, R> {
    fn new(inner: R, rules: &'a [(String, String)], found: &'a mut Vec<String>) -> Self {
        let keep = rules.iter().map(|(r, _)| r.len()).max().unwrap_or(1) - 1;
        RootScan {
            inner,
            rules,
            finders: rules
                .iter()
                .map(|(r, _)| memchr::memmem::Finder::new(r.as_bytes()))
                .collect(),
            found,
            tail: Vec::new(),
            keep,
        }
    }
}

impl<R: Read> Read for RootScan<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && self.found.len() < self.rules.len() {
            let chunk = &buf[..n];
            // Across the seam: the previous tail and this chunk's head.
            self.tail.extend_from_slice(&chunk[..n.min(self.keep)]);
            for (f, (_, sent)) in self.finders.iter().zip(self.rules) {
                if !self.found.contains(sent)
                    && (f.find(chunk).is_some() || f.find(&self.tail).is_some())
                {
                    self.found.push(sent.clone());
                }
            }
            if n > self.keep {
                self.tail.clear();
                self.tail.extend_from_slice(&chunk[n - self.keep..]);
            } else {
                let cut = self.tail.len().saturating_sub(self.keep);
                self.tail.drain(..cut);
            }
        }
        Ok(n)
    }
}

/// The sentinels of the machine-local roots whose real path appears in
/// any of the outputs: such an output depends on where it was built.
#[cfg(test)]
fn roots_in(outputs: &[std::path::PathBuf], paths: &Paths) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for p in outputs {
        let f = File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
        std::io::copy(
            &mut RootScan::new(f, paths.rules(), &mut found),
            &mut std::io::sink(),
        )?;
    }
    found.sort();
    Ok(found)
}

/// `KACHE_VERIFY=1`: a hit was compiled for real; compares what rustc
/// wrote with what the entry would have restored. The compiled output
/// stays in place either way.
fn verify_hit(
    store: &Store,
    e: &Entry,
    out_dir: &std::path::Path,
    start: Instant,
    compile_ms: u64,
) -> Result<i32> {
    let mut bad = Vec::new();
    for f in &e.files {
        // What a restore would have put there: the blob's actual bytes.
        let restored = crate::store::hash_file(&store.blob_path(&f.hash)).ok();
        let compiled = crate::store::hash_file(&out_dir.join(&f.name)).ok();
        if compiled.is_none() || compiled != restored || restored.as_deref() != Some(&f.hash) {
            bad.push(f.name.clone());
        }
    }
    let result = if bad.is_empty() {
        "verified"
    } else {
        eprintln!(
            "warning: kache: verify mismatch: crate {} key {}: {} differ from the stored entry; keeping the compiled output",
            e.crate_name,
            e.key,
            bad.join(", ")
        );
        "verify_mismatch"
    };
    let line = serde_json::json!({
        "ts": now_secs(),
        "crate": e.crate_name,
        "result": result,
        "ms": crate::units::millis(start.elapsed()),
        "size": e.size(),
        "key": e.key,
        "compile_ms": compile_ms,
        "files": bad,
    });
    store.log_event(&line.to_string());
    Ok(0)
}

/// Runs `cmd`, its stdout and stderr piped, passing them through live
/// (see `pump`); returns how it exited and what it printed on each.
/// `program` is its path, `waiting_for` how a wait error names it.
fn run_pumped(
    cmd: &mut Command,
    paths: &Paths,
    program: &str,
    waiting_for: &str,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>)> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let child_out = child.stdout.take().expect("piped stdout");
    let child_err = child.stderr.take().expect("piped stderr");
    let p2 = paths.clone();
    let out_thread = std::thread::spawn(move || pump(child_out, &p2, false));
    let err_raw = pump(child_err, paths, true);
    let out_raw = out_thread.join().unwrap_or_default();
    let status = child
        .wait()
        .with_context(|| format!("waiting for {waiting_for}"))?;
    Ok((status, out_raw, err_raw))
}

/// Copies a child's output to ours line by line (sentinels from the
/// path remapping expanded back to this checkout), returning the raw bytes.
fn pump(r: impl Read, paths: &Paths, stderr: bool) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        raw.extend_from_slice(&line);
        let shown = paths.expand(&String::from_utf8_lossy(&line));
        if stderr {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(shown.as_bytes());
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(shown.as_bytes());
            let _ = o.flush();
        }
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_found_across_chunk_boundaries() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::from_rules(
            &[("/home/u/ws", "/kache-ws"), ("/home/u/t", "/kache-target")],
            "/home/u/ws",
        );
        let p = d.path().join("bin");
        let mut bytes = vec![0u8; 3 << 20];
        let at = (1 << 20) - 4; // straddles the first chunk's end
        bytes[at..at + 10].copy_from_slice(b"/home/u/ws");
        fs::write(&p, &bytes).unwrap();
        assert_eq!(
            roots_in(std::slice::from_ref(&p), &paths).unwrap(),
            vec!["/kache-ws"]
        );
        fs::write(&p, vec![7u8; 2 << 20]).unwrap();
        assert!(
            roots_in(std::slice::from_ref(&p), &paths)
                .unwrap()
                .is_empty()
        );
        // Reads of a few bytes each: a path spread over several reads.
        let mut found = Vec::new();
        let data = b"xx/home/u/t/yy".to_vec();
        let mut r = RootScan::new(Chunks(&data, 3), paths.rules(), &mut found);
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(found, vec!["/kache-target"]);
    }

    /// A reader that hands out at most `.1` bytes a call.
    struct Chunks<'a>(&'a [u8], usize);

    impl Read for Chunks<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
}
