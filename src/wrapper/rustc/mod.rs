/*!
rustc compiles: `kache RUSTC ARGS...` (or `kache WORKSPACE_WRAPPER RUSTC
ARGS...`, `kache clippy-driver rustc ARGS...`).

`args` classifies a call (cacheable or passed through, and why); `key`
computes its base key; `link` reads the link line of a linked output.
A cacheable compile goes through the wrapper's pipeline (`action`) as a
[`Job`]: a hit restores the outputs and dep-info and replays rustc's
output; a miss runs rustc with kache's path remapping and records the
outputs, keyed by what the compile read (dep-info), what the link read
and the machine-local roots found in the outputs.
*/

pub(crate) mod args;
pub(crate) mod key;
mod link;

use std::ffi::OsString;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use self::args::{Compile, Verdict};
use self::key::Declared;
use super::action::{self, Action, Call, Ctx, Ran};
use super::background::Pinned;
use super::call::is_rustc_like;
use super::depinfo::parse_dep_info;
use super::explain::Explain;
use super::paths::Paths;
use super::probe::{Probe, RealProbe};
use super::process::{run_plain, run_pumped, truthy};
use super::restore;
use crate::config::WrapperConfig;
use crate::store::entry::{DepInfo, Inputs, Origin};
use crate::store::{CacheKey, CrateName, Entry, FileRecord, Store, normalize_crate};

/// Handles a rustc call; returns the exit code to exit with.
pub(crate) fn main(argv: &[OsString]) -> i32 {
    let start = Instant::now();
    if std::env::var_os("KACHE_ACTIVE").is_some() || !is_rustc_like(&argv[1]) {
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
        Some(a) if is_rustc_like(a.as_ref()) => Some(expanded.remove(0)),
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
                    super::process::warn(&e, "running rustc uncached");
                    run_plain(rustc, rest)
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
            let call = Call {
                cfg: &cfg,
                crate_name: &name,
                lang: None,
                start,
            };
            return call.pass_through(reason, rustc, rest);
        }
    };
    if let Some(l) = lead {
        compile.run_args.insert(0, l);
    }
    let crate_name = entry_crate(&compile);
    let call = Call {
        cfg: &cfg,
        crate_name: &crate_name,
        lang: None,
        start,
    };
    let rustc_name = normalize_crate(&compile.crate_name);
    if cfg
        .never_cache
        .iter()
        .any(|n| *n == *crate_name || *n == rustc_name)
    {
        return call.pass_through("never_cache", rustc, rest);
    }
    if let Some(reason) = side_effect_macro(&compile) {
        return call.pass_through(reason, rustc, rest);
    }
    let mut ran = None;
    match cached(&cfg, rustc, &compile, &expanded, start, &mut ran) {
        Ok(0) if cfg.cache_build_scripts && is_build_script(&compile) => {
            launch_through_kache(&compile);
            0
        }
        Ok(code) => code,
        Err(e) => call.failed(
            &e,
            ran,
            ("rustc output not cached", "running rustc uncached"),
            || {
                // A restore may have failed half way: rustc cannot
                // overwrite read-only links.
                unlink_outputs(&compile);
                run_plain(rustc, rest)
            },
        ),
    }
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

/// Whether the compile makes a build script's executable.
fn is_build_script(c: &Compile) -> bool {
    c.crate_name.starts_with("build_script_") && c.crate_types.iter().all(|t| t == "bin")
}

/// Puts kache's launcher in place of a build script just compiled or
/// restored, so cargo runs the script through kache. On failure the
/// script stays as rustc made it, with one warning.
fn launch_through_kache(c: &Compile) {
    for (name, executable) in c.outputs() {
        if executable && let Err(e) = super::script::install_launcher(&c.out_dir.join(name)) {
            super::process::warn(&e, "the build script runs uncached");
        }
    }
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

/// Removes read-only outputs of a compile from its out dir.
fn unlink_outputs(c: &Compile) {
    let mut names: Vec<String> = c.outputs().into_iter().map(|(n, _)| n).collect();
    names.push(c.dep_info_name());
    restore::unlink_readonly(&c.out_dir, &names);
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

/// What one cacheable rustc compile works with.
struct Job<'a> {
    ctx: Ctx<'a>,
    compile: &'a Compile,
    rustc: &'a OsString,
    rustc_str: &'a str,
    /// The out dir, absolute.
    out_dir: std::path::PathBuf,
    /// What a background store reads, opened before the fork.
    pinned: std::cell::RefCell<Option<Pinned>>,
}

/// What a rustc run leaves beyond [`Ran`]: the link line it printed, for
/// a linked output.
type LinkText = Option<std::io::Result<String>>;

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
        ctx: Ctx {
            cfg,
            store: &store,
            crate_name: entry_crate(compile),
            paths,
            probe: RealProbe::new(&store),
            start,
            lang: None,
        },
        compile,
        rustc,
        rustc_str,
        out_dir,
        pinned: std::cell::RefCell::new(None),
    };
    let decl = declared(cfg, &job.ctx.crate_name, compile);
    let (base, base_why) = key::base_key(
        rustc_str,
        compile,
        args,
        &job.ctx.paths,
        &decl,
        &job.ctx.probe,
    )?;
    action::cached(&job, base, base_why, ran)
}

impl<'a> Action<'a> for Job<'a> {
    type Extra = LinkText;

    fn ctx(&self) -> &Ctx<'a> {
        &self.ctx
    }

    fn toolchain(&self) -> Option<String> {
        self.ctx
            .probe
            .identity(self.rustc_str, &["-vV"])
            .ok()
            .map(|vv| crate::store::toolchain_id(&vv))
    }

    fn label(&self) -> String {
        String::new()
    }

    /// Runs rustc, its output passing through live.
    fn run(&self) -> Result<(Ran, LinkText)> {
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
        let mut cmd = Command::new(self.rustc);
        cmd.args(rustc_args(compile, &self.ctx.paths))
            .env("KACHE_ACTIVE", "1")
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = &link_args {
            cmd.arg(format!("--print=link-args={}", p.display()));
        }
        let before = self.ctx.store.fs_clock();
        let t0 = Instant::now();
        let ran = Ran::finished(
            run_pumped(&mut cmd, &self.ctx.paths, self.rustc_str, "rustc")?,
            t0,
            before,
        );
        let link_text = link_args.as_ref().map(|p| {
            let t = fs::read_to_string(p);
            let _ = fs::remove_file(p);
            t
        });
        Ok((ran, link_text))
    }

    fn restore(&self, entry: &Entry) -> Result<u64> {
        let size = restore::restore(
            self.ctx.store,
            entry,
            &self.compile.out_dir,
            &self.ctx.paths,
        )?;
        record_runtime_libs(self.ctx.store, entry);
        self.ctx.store.set_origins(entry);
        Ok(size)
    }

    fn differ(&self, entry: &Entry) -> Vec<String> {
        entry
            .files
            .iter()
            .filter(|f| !action::same_as_blob(self.ctx.store, &self.out_dir.join(&f.name), &f.hash))
            .map(|f| f.name.clone())
            .collect()
    }

    fn reproducible(&self) -> bool {
        !self.compile.incremental
    }

    /// An incremental compile (a crate being edited) is stored in the
    /// background: its outputs opened and its dep-info read now.
    fn pin(&self) -> bool {
        if !self.compile.incremental {
            return false;
        }
        let names: Vec<String> = self.compile.outputs().into_iter().map(|(n, _)| n).collect();
        let Some(mut p) = Pinned::open(&self.out_dir, &names) else {
            return false;
        };
        let dep_path = self.out_dir.join(self.compile.dep_info_name());
        let Ok(text) = fs::read_to_string(dep_path) else {
            return false;
        };
        p.dep_text = Some(text);
        *self.pinned.borrow_mut() = Some(p);
        true
    }

    /// Stores what rustc produced, keyed by what it actually read.
    fn record(
        &self,
        base: CacheKey,
        base_why: Explain,
        run: Ran,
        link_text: LinkText,
    ) -> Result<i32> {
        let (compile, ctx) = (self.compile, &self.ctx);
        let dep_path = self.out_dir.join(compile.dep_info_name());
        let pinned = self.pinned.borrow();
        let dep_text = match pinned.as_ref().and_then(|p| p.dep_text.clone()) {
            Some(t) => t,
            None => fs::read_to_string(&dep_path)
                .with_context(|| format!("cannot read dep-info {}", dep_path.display()))?,
        };
        let deps = parse_dep_info(&dep_text);
        let (link, absent) = self.link_inputs(link_text)?;
        let mut inputs = Inputs {
            base,
            files: deps
                .files
                .iter()
                .map(|f| ctx.paths.normalize_input(f))
                .collect(),
            env: deps.env,
            link,
            absent,
            roots: Vec::new(),
            dirs: Vec::new(),
            shadows: None,
        };
        let _w = ctx.store.writer_lock()?;
        let (files, roots) = self.store_outputs(pinned.as_ref())?;
        if pinned.as_ref().is_some_and(|p| !p.unchanged()) {
            ctx.unstored(
                "an output was written to before it was stored",
                run.compile_ms,
            );
            return Ok(run.code);
        }
        inputs.roots = roots;
        let (full, why) = ctx
            .full_key(&inputs, base_why)
            .ok_or_else(|| anyhow!("an input listed in {} is gone", dep_path.display()))?;
        if ctx.inputs_changed(run.before) {
            // Its outputs may not match the content the key was computed
            // from. Not an error; not stored (the blobs just written are
            // unreferenced; gc removes them).
            ctx.unstored("an input changed while rustc ran", run.compile_ms);
            return Ok(run.code);
        }
        let mut entry = Entry::new(ctx.crate_name.clone(), full, files);
        entry.stdout = ctx.paths.normalize(&String::from_utf8_lossy(&run.out_raw));
        entry.stderr = ctx.paths.normalize(&String::from_utf8_lossy(&run.err_raw));
        entry.dep_info = Some(DepInfo {
            name: compile.dep_info_name(),
            text: ctx.paths.normalize_dep_info(&dep_text),
        });
        entry.inputs = Some(inputs);
        entry.compile_ms = run.compile_ms;
        entry.explain = why;
        entry.origin = origin(self.rustc_str, compile, &ctx.probe).map(|mut o| {
            o.deps = extern_origins(ctx.store, compile, &ctx.paths, &ctx.probe);
            o
        });
        record_runtime_libs(ctx.store, &entry);
        ctx.store.set_origins(&entry);
        ctx.publish(&entry, "")?;
        Ok(run.code)
    }
}

impl Job<'_> {
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
            &self.ctx.paths.cwd,
            &|p: &std::path::Path| p.is_file(),
            &|| link::default_lib_dirs(&t),
        );
        let norm = |v: Vec<std::path::PathBuf>| -> Vec<String> {
            v.into_iter()
                .filter(|p| !outs.contains(p))
                .map(|p| self.ctx.paths.normalize_input(&p.to_string_lossy()))
                .collect()
        };
        Ok((norm(li.files), norm(li.absent)))
    }

    /// Puts the outputs into the store, scanned on the way for the
    /// machine-local roots they contain (which then join the key).
    /// With `pinned`, from the files opened before a background store.
    fn store_outputs(&self, pinned: Option<&Pinned>) -> Result<(Vec<FileRecord>, Vec<String>)> {
        let outputs = self.compile.outputs();
        let mut files = Vec::with_capacity(outputs.len());
        let mut roots = Vec::new();
        for (name, executable) in &outputs {
            let p = self.out_dir.join(name);
            let (hash, size) = match pinned.and_then(|pin| pin.file(name)) {
                Some(f) => self.ctx.store_open(f, &p, &mut roots)?,
                None => self.ctx.store_output(&p, &mut roots)?,
            };
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
