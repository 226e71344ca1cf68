//! Cache keys, in two levels ("direct mode"), so a hit never runs rustc.
//!
//! - The *base key* hashes everything known before the compile: the
//!   toolchain, the normalised arguments (link arguments by their real
//!   value), the content of every `--extern` file, static libraries and
//!   the native libraries on the `-L` paths, the target spec, the
//!   `CARGO_*` environment, what the package's build script declared
//!   (`rerun-if-changed` files and directories, `rerun-if-env-changed`
//!   variables), the inputs the user declared for the crate and, for
//!   linked outputs, the linker.
//! - The *full key* adds what only the compile itself could tell: the
//!   content of every source file and the value of every env var it read
//!   (dep-info), the content of every file the link read (rustc's
//!   `--print link-args`), and the real value of every machine-local root
//!   found in the outputs. The lists are recorded in the store's index
//!   under the base key, so a lookup tries each known list.
//!
//! Machine-local paths (workspace root, target dir, `CARGO_HOME`, `HOME`)
//! are replaced by sentinels where the outputs do not depend on them, so
//! checkouts at different paths and different machines meet on the same
//! keys; an output that contains one of them is keyed by its real value.
//!
//! This module does no I/O of its own: files, programs and the
//! environment are read through a [`Probe`] the caller passes in, so a
//! golden test can pin the key of a fixed input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::args::{Arg, Compile, tokenize};
use crate::store::CacheKey;
use crate::store::entry::Inputs;

/// Bumped whenever the key scheme changes.
const KEY_VERSION: &str = "kache-wrapper-key-4";

/// Marks an unset env var (distinct from an empty one).
pub(crate) const UNSET: &str = "\u{0}unset";

/// Machine-local path prefixes and the sentinel each one becomes. The
/// sentinels are absolute paths so they also serve as
/// `--remap-path-prefix` targets.
#[derive(Clone, Debug, Default)]
pub(crate) struct Paths {
    /// (real, sentinel), most specific (longest real) first.
    rules: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
}

impl Paths {
    pub(crate) fn detect(out_dir: &Path) -> Result<Paths> {
        let cwd = std::env::current_dir().context("no current directory")?;
        Ok(Paths::detect_rooted(out_dir, cwd.clone(), cwd))
    }

    /// Like [`Paths::detect`] for a compile that runs in `cwd` inside
    /// the workspace `ws` (a build script's C compile runs in its
    /// package's directory): `ws` is the `/kache-ws` root.
    pub(crate) fn detect_rooted(out_dir: &Path, cwd: PathBuf, ws: PathBuf) -> Paths {
        let out_abs = if out_dir.is_absolute() {
            out_dir.to_path_buf()
        } else {
            cwd.join(out_dir)
        };
        let target = out_abs
            .ancestors()
            .find(|d| d.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from));
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".cargo")));
        let mut rules = Vec::new();
        let mut add = |p: Option<PathBuf>, s: &str| {
            if let Some(p) = p.and_then(|p| p.to_str().map(|s| s.trim_end_matches('/').to_string()))
                && p.len() > 1
                && !rules.iter().any(|(r, _): &(String, String)| *r == p)
            {
                rules.push((p, s.to_string()));
            }
        };
        add(target, "/kache-target");
        // cargo compiles a registry or git dependency in its own folder
        // under CARGO_HOME: that folder is named through CARGO_HOME, so a
        // debugger maps every dependency with the one CARGO_HOME rule
        // (`kache debug-map`) and `/kache-ws` always means the workspace.
        let under_cargo_home = cargo_home.as_ref().is_some_and(|h| ws.starts_with(h));
        if !under_cargo_home {
            add(Some(ws), "/kache-ws");
        }
        add(cargo_home, "/kache-cargo-home");
        add(home, "/kache-home");
        rules.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Paths { rules, cwd }
    }

    #[cfg(test)]
    pub(crate) fn from_rules(rules: &[(&str, &str)], cwd: &str) -> Paths {
        let mut rules: Vec<(String, String)> = rules
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Paths {
            rules,
            cwd: PathBuf::from(cwd),
        }
    }

    /// Real paths -> sentinels.
    pub(crate) fn normalize(&self, s: &str) -> String {
        let pairs: Vec<(&str, &str)> = self
            .rules
            .iter()
            .map(|(r, t)| (r.as_str(), t.as_str()))
            .collect();
        replace_paths(s, &pairs)
    }

    /// Sentinels -> real paths of this checkout.
    pub(crate) fn expand(&self, s: &str) -> String {
        let pairs: Vec<(&str, &str)> = self
            .rules
            .iter()
            .map(|(r, t)| (t.as_str(), r.as_str()))
            .collect();
        replace_paths(s, &pairs)
    }

    /// A path the compile read, for an input list: a relative path (rustc
    /// resolved it from the workspace) and an absolute one under the
    /// target dir or `CARGO_HOME` (cargo made it from those, the same way
    /// in every checkout) are normalised; any other absolute path is kept
    /// as it is, since the source or a build script named it literally
    /// and another checkout reads that same file.
    pub(crate) fn normalize_input(&self, p: &str) -> String {
        if !p.starts_with('/') {
            return self.normalize(p);
        }
        let pairs: Vec<(&str, &str)> = self
            .rules
            .iter()
            .filter(|(_, t)| t == "/kache-target" || t == "/kache-cargo-home")
            .map(|(r, t)| (r.as_str(), t.as_str()))
            .collect();
        replace_paths(p, &pairs)
    }

    /// A path as rustc got it (an argument), made absolute for this
    /// checkout; unlike [`Paths::resolve`], nothing is expanded.
    pub(crate) fn absolute(&self, real: &str) -> PathBuf {
        let p = PathBuf::from(real);
        if p.is_absolute() { p } else { self.cwd.join(p) }
    }

    /// Real paths -> sentinels in a dep-info file, whose rules write a
    /// space in a path as `\ ` (env-dep lines carry values as they are).
    pub(crate) fn normalize_dep_info(&self, text: &str) -> String {
        self.map_dep_info(text, true)
    }

    /// Sentinels -> real paths of this checkout in a dep-info file.
    pub(crate) fn expand_dep_info(&self, text: &str) -> String {
        self.map_dep_info(text, false)
    }

    /// rustc writes the targets of a rule with prerequisites (its outputs)
    /// as they are, and escapes spaces in prerequisites and in the phony
    /// rules it adds for them; env-dep lines carry values as they are.
    fn map_dep_info(&self, text: &str, normalize: bool) -> String {
        let esc: Vec<(String, String)> = self
            .rules
            .iter()
            .map(|(r, t)| {
                let e = r.replace(' ', "\\ ");
                if normalize {
                    (e, t.clone())
                } else {
                    (t.clone(), e)
                }
            })
            .collect();
        let pairs: Vec<(&str, &str)> = esc.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let plain = |l: &str| {
            if normalize {
                self.normalize(l)
            } else {
                self.expand(l)
            }
        };
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            if line.starts_with('#') {
                out.push_str(&plain(line));
            } else if normalize {
                out.push_str(&plain(&replace_paths(line, &pairs)));
            } else {
                match rule_split(line) {
                    Some((targets, deps)) if !deps.trim().is_empty() => {
                        out.push_str(&plain(targets));
                        out.push(':');
                        out.push_str(&replace_paths(deps, &pairs));
                    }
                    _ => out.push_str(&replace_paths(line, &pairs)),
                }
            }
        }
        out
    }

    /// (real path, sentinel) pairs, most specific first.
    pub(crate) fn rules(&self) -> &[(String, String)] {
        &self.rules
    }

    /// `--remap-path-prefix` flags, least specific first (rustc's last
    /// matching rule wins).
    pub(crate) fn remap_args(&self) -> Vec<String> {
        self.rules
            .iter()
            .rev()
            .map(|(real, sent)| format!("--remap-path-prefix={real}={sent}"))
            .collect()
    }

    /// A path from the dep-info or the index, made absolute for this
    /// checkout.
    pub(crate) fn resolve(&self, normalized: &str) -> PathBuf {
        let p = PathBuf::from(self.expand(normalized));
        if p.is_absolute() { p } else { self.cwd.join(p) }
    }
}

/// Characters that continue a path component: a match must not start
/// right after one, nor end right before one, so `/w` never matches
/// inside `/work` and a sentinel never matches inside `/x/kache-ws`.
fn path_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'+' | b'~')
}

/// Replaces each `from` by its `to` in one left-to-right pass (replaced
/// text is never scanned again), only where `from` stands as whole path
/// components; the first pair that matches at a position wins, so pass
/// the most specific first.
fn replace_paths(s: &str, pairs: &[(&str, &str)]) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] == b'/' && (i == 0 || !path_char(b[i - 1])) {
            let hit = pairs.iter().find(|(from, _)| {
                !from.is_empty()
                    && b[i..].starts_with(from.as_bytes())
                    && b.get(i + from.len()).is_none_or(|&c| !path_char(c))
            });
            if let Some((from, to)) = hit {
                out.push_str(&s[copied..i]);
                out.push_str(to);
                i += from.len();
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    out
}

/// A hasher that frames every field, so ("ab","c") != ("a","bc"). It also
/// remembers the fields, so a miss can be explained (`kache why-miss`).
pub(crate) struct KeyHasher {
    h: blake3::Hasher,
    fields: Vec<(String, String)>,
}

impl KeyHasher {
    pub(crate) fn new(domain: &str) -> KeyHasher {
        let mut h = KeyHasher {
            h: blake3::Hasher::new(),
            fields: Vec::new(),
        };
        h.field("domain", domain);
        h
    }

    pub(crate) fn field(&mut self, label: &str, value: &str) {
        for part in [label, value] {
            self.h.update(&(part.len() as u64).to_le_bytes());
            self.h.update(part.as_bytes());
        }
        self.fields.push((label.to_string(), value.to_string()));
    }

    pub(crate) fn finish(self) -> CacheKey {
        CacheKey::of(&self.h.finalize())
    }

    /// The hash and a readable account of what went into it.
    pub(crate) fn finish_explained(self) -> (CacheKey, Explain) {
        let e = explain(&self.fields);
        (self.finish(), e)
    }
}

/// A key's inputs by name (`arg -C opt-level`, `file src/lib.rs`,
/// `env FOO`, ...), each with a value or a digest; env values are shown
/// only by class (unset, empty, or set with a short digest), never as is.
pub(crate) type Explain = BTreeMap<String, String>;

fn short(v: &str) -> String {
    blake3::hash(v.as_bytes()).to_hex()[..12].to_string()
}

fn class(v: &str) -> String {
    match v {
        UNSET => "unset".to_string(),
        "" => "empty".to_string(),
        v => format!("set ({})", short(v)),
    }
}

/// Turns recorded key fields into an [`Explain`].
fn explain(fields: &[(String, String)]) -> Explain {
    let mut out = Explain::new();
    let mut put = |k: String, v: String| {
        let slot = out.entry(k).or_default();
        if !slot.is_empty() {
            slot.push_str("; ");
        }
        slot.push_str(&v);
    };
    let mut i = 0;
    while i < fields.len() {
        let (label, value) = (&fields[i].0, &fields[i].1);
        let next = fields.get(i + 1).map(|f| f.1.as_str()).unwrap_or_default();
        i += 1;
        match label.as_str() {
            "domain" | "base" => {}
            "file" | "link" => {
                put(
                    format!("{label} {value}"),
                    next.get(..12).unwrap_or(next).to_string(),
                );
                i += 1;
            }
            "env" | "rerun-if-env-changed" | "declared-env" => {
                put(format!("{label} {value}"), class(next));
                i += 1;
            }
            "root" | "absent" => {
                put(format!("{label} {value}"), next.to_string());
                i += 1;
            }
            "-C" | "-Z" => {
                let (k, v) = value.split_once('=').unwrap_or((value.as_str(), ""));
                put(format!("arg {label} {k}"), v.to_string());
            }
            "--extern" | "static-lib" | "native" => {
                let (k, v) = value.split_once(['=', ':']).unwrap_or((value.as_str(), ""));
                put(format!("{label} {k}"), v.to_string());
            }
            l if l.starts_with("env:") => put(l.to_string(), value.clone()),
            l if l.starts_with('-') || l.is_empty() => {
                let name = if l.is_empty() { "input" } else { l };
                put(format!("arg {name}"), value.clone());
            }
            l => {
                let shown = if value.len() > 100 || value.contains('\n') {
                    let first = value.lines().next().unwrap_or_default();
                    let first: String = first.chars().take(80).collect();
                    format!("{first} ({})", short(value))
                } else {
                    value.clone()
                };
                put(l.to_string(), shown);
            }
        }
    }
    out
}

/// The wrapper's window on the machine: every file hash, program output
/// and environment read that goes into a key.
pub(crate) trait Probe {
    /// The blake3 hash of a file's content; `None` if it cannot be read.
    fn hash(&self, p: &Path) -> Option<String>;
    /// The output of `program args...` (a toolchain identity).
    fn identity(&self, program: &str, args: &[&str]) -> Result<String>;
    /// One environment variable (lossy UTF-8).
    fn var(&self, name: &str) -> Option<String>;
    /// Every environment variable (lossy UTF-8).
    fn vars(&self) -> Vec<(String, String)>;
    /// A directory's entries as (name, `is_dir`), sorted; empty if unreadable.
    fn list_dir(&self, dir: &Path) -> Vec<(String, bool)>;
    /// A small text file; `None` if absent.
    fn read_text(&self, p: &Path) -> Option<String>;
    /// The content hash of a program, found through `PATH` like a
    /// command (`None` if it cannot be found or read).
    fn program_hash(&self, program: &str) -> Option<String>;
    /// The shared libraries a proc macro or dylib (by its content hash)
    /// was linked against, as recorded when it was built (normalised
    /// paths): it loads them while it runs inside rustc.
    fn runtime_libs(&self, so_hash: &str) -> Vec<String>;
}

/// Inputs the user declared for a crate in the settings.
#[derive(Clone, Debug, Default)]
pub(crate) struct Declared {
    pub(crate) env: Vec<String>,
    /// Paths or globs relative to the package root.
    pub(crate) files: Vec<String>,
}

/// `CARGO_*` variables cargo sets for a compile; anything else under
/// `CARGO_` is cargo's own configuration (tokens included), which reaches
/// rustc only through its arguments, or is read through `env!` and then
/// listed in the dep-info.
fn keyed_cargo_var(name: &str) -> bool {
    matches!(
        name,
        "CARGO"
            | "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_MANIFEST_LINKS"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_TARGET_TMPDIR"
            | "CARGO_RUSTC_CURRENT_DIR"
            | "RUSTC_BOOTSTRAP"
    ) || [
        "CARGO_PKG_",
        "CARGO_BIN_EXE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Environment variables the C compiler driver that links reads (gcc
/// and clang): library and program search paths.
const LINKER_ENV: [&str; 3] = ["LIBRARY_PATH", "COMPILER_PATH", "GCC_EXEC_PREFIX"];

/// Flags whose value is dropped from the key (with the flag itself).
fn dropped_flag(flag: &str, value: &str) -> bool {
    match flag {
        "--out-dir" => true,
        "-L" => value.starts_with("dependency="),
        "-C" => value.starts_with("incremental="),
        _ => false,
    }
}

/// Link arguments reach the linker as they are: keyed by real value.
fn raw_value(flag: &str, value: &str) -> bool {
    flag == "-C" && (value.starts_with("link-arg=") || value.starts_with("link-args="))
}

/// Most files a declared directory may hold before kache gives up on
/// keying it (and the compile runs uncached).
const MAX_DECLARED_FILES: usize = 20_000;

/// Hashes a declared file, directory (everything under it) or glob.
fn hash_declared(
    h: &mut KeyHasher,
    label: &str,
    root: &Path,
    pat: &str,
    paths: &Paths,
    probe: &dyn Probe,
) -> Result<()> {
    let mut files = Vec::new();
    if pat.contains(['*', '?', '[']) {
        let lit: Vec<&str> = pat
            .split('/')
            .take_while(|c| !c.contains(['*', '?', '[']))
            .collect();
        let base = root.join(lit.join("/"));
        walk(&base, &lit.join("/"), probe, &mut files)?;
        files.retain(|(rel, _)| crate::wrapper::glob::glob_match(pat, rel));
    } else {
        let p = root.join(pat);
        if probe.hash(&p).is_some() {
            files.push((pat.to_string(), p));
        } else {
            walk(&p, pat, probe, &mut files)?;
            if files.is_empty() && probe.list_dir(&p).is_empty() {
                h.field(label, &format!("{}:missing", paths.normalize(pat)));
                return Ok(());
            }
        }
    }
    files.sort();
    h.field(label, &paths.normalize(pat));
    for (rel, p) in files {
        let d = probe
            .hash(&p)
            .with_context(|| format!("cannot read {}", p.display()))?;
        h.field("file", &paths.normalize(&rel));
        h.field("content", &d);
    }
    Ok(())
}

fn walk(dir: &Path, rel: &str, probe: &dyn Probe, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    for (name, is_dir) in probe.list_dir(dir) {
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if is_dir {
            walk(&dir.join(&name), &r, probe, out)?;
        } else {
            out.push((r, dir.join(&name)));
        }
        if out.len() > MAX_DECLARED_FILES {
            bail!(
                "{} holds more than {MAX_DECLARED_FILES} files",
                dir.display()
            );
        }
    }
    Ok(())
}

/// What a build script printed that makes cargo rerun it: paths
/// (`rerun-if-changed`) and variables (`rerun-if-env-changed`).
pub(crate) fn parse_build_output(text: &str) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    let mut env = Vec::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix("cargo::")
            .or_else(|| line.strip_prefix("cargo:"))
        else {
            continue;
        };
        if let Some(p) = rest.strip_prefix("rerun-if-changed=") {
            files.push(p.to_string());
        } else if let Some(v) = rest.strip_prefix("rerun-if-env-changed=") {
            env.push(v.to_string());
        }
    }
    (files, env)
}

/// Everything the base key is made of, computed up front.
pub(crate) fn base_key(
    rustc: &str,
    c: &Compile,
    args: &[String],
    paths: &Paths,
    declared: &Declared,
    probe: &dyn Probe,
) -> Result<(CacheKey, Explain)> {
    let mut h = KeyHasher::new(KEY_VERSION);
    let rustc_name = Path::new(rustc)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    h.field("compiler-name", &rustc_name);
    h.field("toolchain", &probe.identity(rustc, &["-vV"])?);
    // The program itself: a script named `rustc` that adds flags answers
    // `-vV` like the compiler it runs.
    h.field(
        "compiler-content",
        &probe.program_hash(rustc).unwrap_or_default(),
    );
    if c.coverage {
        // Not remapped: the coverage map names the real source paths,
        // compressed, where no scan of the outputs would see them.
        for (real, sentinel) in paths.rules() {
            h.field("coverage-root", &format!("{sentinel}={real}"));
        }
    }
    hash_args(&mut h, rustc, args, paths, probe)?;
    hash_native_libs(&mut h, c, paths, probe)?;
    if c.links() {
        hash_linker(&mut h, c, paths, probe)?;
    }
    if rustc_name.starts_with("clippy-driver") {
        hash_clippy_config(&mut h, probe);
    }
    let mut vars: Vec<(String, String)> = probe
        .vars()
        .into_iter()
        .filter(|(k, _)| keyed_cargo_var(k))
        .collect();
    vars.sort();
    for (k, v) in vars {
        h.field(&format!("env:{k}"), &paths.normalize(&v));
    }
    hash_declared_inputs(&mut h, declared, paths, probe)?;
    Ok(h.finish_explained())
}

/// The arguments: `--cfg`s sorted, `--extern`s by content (and a proc
/// macro's runtime libraries), a target JSON by content, everything
/// else by its normalised value (link arguments by their real one).
fn hash_args(
    h: &mut KeyHasher,
    rustc: &str,
    args: &[String],
    paths: &Paths,
    probe: &dyn Probe,
) -> Result<()> {
    let mut cfgs = Vec::new();
    let mut check_cfgs = Vec::new();
    let mut externs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for Arg { flag, value, .. } in tokenize(args) {
        if dropped_flag(&flag, &value) {
            continue;
        }
        match flag.as_str() {
            "--cfg" => cfgs.push(value),
            "--check-cfg" => check_cfgs.push(value),
            "--extern" => {
                let (name, file, digest) = extern_digest(h, &value, paths, probe)?;
                externs
                    .entry(name)
                    .or_default()
                    .push(format!("{file}:{digest}"));
            }
            "--target" => {
                let p = paths.absolute(&value);
                match probe.hash(&p).filter(|_| value.ends_with(".json")) {
                    Some(d) => h.field("target-json", &d),
                    None => h.field("target", &value),
                }
            }
            "-C" if value == "target-cpu=native" => {
                // `native` means this machine's CPU: key the features it
                // resolves to, so another CPU never gets this code.
                h.field("-C", &value);
                h.field(
                    "native-cpu",
                    &probe.identity(rustc, &["--print", "cfg", "-C", "target-cpu=native"])?,
                );
            }
            _ if raw_value(&flag, &value) => h.field(&flag, &value),
            _ => h.field(&flag, &paths.normalize(&value)),
        }
    }
    cfgs.sort();
    check_cfgs.sort();
    for v in cfgs {
        h.field("--cfg", &v);
    }
    for v in check_cfgs {
        h.field("--check-cfg", &v);
    }
    for (name, mut files) in externs {
        files.sort();
        h.field("--extern", &format!("{name}={}", files.join(",")));
    }
    Ok(())
}

/// One `--extern name=path`: (name, file name, content digest). A proc
/// macro runs inside the compile: the shared libraries it loads are
/// keyed too.
fn extern_digest(
    h: &mut KeyHasher,
    value: &str,
    paths: &Paths,
    probe: &dyn Probe,
) -> Result<(String, String, String)> {
    let (name, path) = value.split_once('=').unwrap_or((value, ""));
    let digest = if path.is_empty() {
        String::new()
    } else {
        let p = paths.absolute(path);
        let d = probe
            .hash(&p)
            .with_context(|| format!("cannot read --extern {}", p.display()))?;
        if path.ends_with(".so") {
            for lib in probe.runtime_libs(&d) {
                let got = probe.hash(&paths.resolve(&lib)).unwrap_or_default();
                h.field("runtime-lib", &format!("{lib}:{got}"));
            }
        }
        d
    };
    let file = Path::new(path)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((name.to_string(), file, digest))
}

/// Native libraries on the search paths: `-l static=` ones by name, and
/// every static library there, since `#[link(kind = "static")]` in the
/// source bundles one that no argument names; and every crate there,
/// since `extern crate x;` loads one from them.
fn hash_native_libs(
    h: &mut KeyHasher,
    c: &Compile,
    paths: &Paths,
    probe: &dyn Probe,
) -> Result<()> {
    let search: Vec<PathBuf> = c
        .lib_paths
        .iter()
        .filter(|(k, _)| k != "dependency" && k != "crate")
        .map(|(_, p)| paths.absolute(p))
        .collect();
    for (kind, name) in &c.libs {
        let found = search
            .iter()
            .map(|d| d.join(format!("lib{name}.a")))
            .find_map(|p| probe.hash(&p));
        match found {
            Some(d) => h.field("static-lib", &format!("{name}:{d}")),
            None if kind == "static" => bail!("static library {name} not found"),
            None => h.field("lib", name),
        }
    }
    for dir in &search {
        for (name, is_dir) in probe.list_dir(dir) {
            let lib = [".a", ".rlib", ".rmeta"].iter().any(|e| name.ends_with(e));
            if is_dir || !lib {
                continue;
            }
            if let Some(d) = probe.hash(&dir.join(&name)) {
                h.field("native", &format!("{name}:{d}"));
            }
        }
    }
    Ok(())
}

/// For a linked output: the linker's name, `--version`, content, and the
/// variables that tell the driver where to look.
fn hash_linker(h: &mut KeyHasher, c: &Compile, paths: &Paths, probe: &dyn Probe) -> Result<()> {
    let linker = c.linker.clone().unwrap_or_else(|| "cc".to_string());
    h.field("linker", &paths.normalize(&linker));
    h.field("linker-version", &probe.identity(&linker, &["--version"])?);
    // Its content too: a wrapper script that adds flags, or another
    // `cc` first on PATH, answers `--version` the same.
    h.field(
        "linker-content",
        &probe.program_hash(&linker).unwrap_or_default(),
    );
    // Where the driver looks for libraries and its own parts: keyed by
    // value when set (unset leaves the key as it was).
    for v in LINKER_ENV {
        if let Some(x) = probe.var(v) {
            h.field(&format!("linker-env:{v}"), &x);
        }
    }
    Ok(())
}

/// clippy-driver reads its configuration from clippy.toml and `CLIPPY_ARGS`.
fn hash_clippy_config(h: &mut KeyHasher, probe: &dyn Probe) {
    h.field("clippy-args", &probe.var("CLIPPY_ARGS").unwrap_or_default());
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = probe.var("CLIPPY_CONF_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = probe.var("CARGO_MANIFEST_DIR") {
        dirs.extend(Path::new(&d).ancestors().map(Path::to_path_buf));
    }
    for d in dirs {
        for n in ["clippy.toml", ".clippy.toml"] {
            if let Some(d) = probe.hash(&d.join(n)) {
                h.field("clippy-toml", &d);
            }
        }
    }
}

/// What the package's build script declared (cargo reruns it, and
/// recompiles the package, when these change, so a proc macro that
/// reads them is keyed by them too), and what the user declared for
/// the crate.
fn hash_declared_inputs(
    h: &mut KeyHasher,
    declared: &Declared,
    paths: &Paths,
    probe: &dyn Probe,
) -> Result<()> {
    let pkg_root = probe.var("CARGO_MANIFEST_DIR").map(PathBuf::from);
    if let Some(out_dir) = probe.var("OUT_DIR") {
        let output = Path::new(&out_dir).with_file_name("output");
        if let Some(text) = probe.read_text(&output) {
            let (files, env) = parse_build_output(&text);
            let root = pkg_root.clone().unwrap_or_else(|| paths.cwd.clone());
            for f in files {
                let pat = rel_or_abs(&root, &f);
                hash_declared(h, "rerun-if-changed", &root, &pat, paths, probe)
                    .with_context(|| format!("build script input {f}"))?;
            }
            for v in env {
                h.field("rerun-if-env-changed", &v);
                h.field("value", &probe.var(&v).unwrap_or_else(|| UNSET.to_string()));
            }
        }
    }
    for v in &declared.env {
        h.field("declared-env", v);
        h.field("value", &probe.var(v).unwrap_or_else(|| UNSET.to_string()));
    }
    let root = pkg_root.unwrap_or_else(|| paths.cwd.clone());
    for f in &declared.files {
        hash_declared(h, "declared-file", &root, f, paths, probe)?;
    }
    Ok(())
}

/// A declared path as a pattern relative to `root` when it lies under it
/// (so the key does not depend on where the checkout is), else as given.
fn rel_or_abs(root: &Path, p: &str) -> String {
    let path = Path::new(p);
    match path.strip_prefix(root) {
        Ok(r) if path.is_absolute() => r.to_string_lossy().into_owned(),
        _ => p.to_string(),
    }
}

/// The full key of an input list, or `None` if a listed file is missing.
pub(crate) fn full_key(inputs: &Inputs, paths: &Paths, probe: &dyn Probe) -> Option<CacheKey> {
    full_hasher(inputs, paths, probe).map(KeyHasher::finish)
}

/// The full key and an account of its inputs beyond the base key.
pub(crate) fn full_key_explained(
    inputs: &Inputs,
    paths: &Paths,
    probe: &dyn Probe,
) -> Option<(CacheKey, Explain)> {
    full_hasher(inputs, paths, probe).map(KeyHasher::finish_explained)
}

fn full_hasher(inputs: &Inputs, paths: &Paths, probe: &dyn Probe) -> Option<KeyHasher> {
    let mut h = KeyHasher::new("full");
    h.field("base", &inputs.base);
    for f in &inputs.files {
        let digest = probe.hash(&paths.resolve(f))?;
        h.field("file", f);
        h.field("content", &digest);
    }
    for name in &inputs.env {
        let v = match probe.var(name) {
            Some(v) => paths.normalize(&v),
            None => UNSET.to_string(),
        };
        h.field("env", name);
        h.field("value", &v);
    }
    for f in &inputs.link {
        let digest = probe.hash(&paths.resolve(f))?;
        h.field("link", f);
        h.field("content", &digest);
    }
    for f in &inputs.absent {
        h.field("absent", f);
        let here = probe.hash(&paths.resolve(f)).is_some();
        h.field("exists", if here { "yes" } else { "no" });
    }
    for s in &inputs.roots {
        h.field("root", s);
        h.field("real", &paths.expand(s));
    }
    Some(h)
}

/// What a dep-info file says the compile read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DepInfo {
    pub(crate) files: Vec<String>,
    pub(crate) env: Vec<String>,
}

/// Splits a make rule's path list, honouring `\ ` escapes.
fn split_paths(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if chars.peek() == Some(&' ') => {
                cur.push(' ');
                chars.next();
            }
            ' ' | '\t' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Finds the `: ` that ends a rule's target (not an escaped one).
fn rule_split(line: &str) -> Option<(&str, &str)> {
    let b = line.as_bytes();
    for i in 0..b.len() {
        let ends = b
            .get(i + 1)
            .is_none_or(|c| matches!(c, b' ' | b'\n' | b'\r'));
        if b[i] == b':' && ends && (i == 0 || b[i - 1] != b'\\') {
            return Some((&line[..i], &line[i + 1..]));
        }
    }
    None
}

/// Parses rustc's dep-info: the first rule's prerequisites and the
/// `# env-dep:` lines. Paths are returned as written (normalise them
/// afterwards).
pub(crate) fn parse_dep_info(text: &str) -> DepInfo {
    let mut d = DepInfo::default();
    let mut first = true;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# env-dep:") {
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            if !d.env.iter().any(|e| e == name) {
                d.env.push(name.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if first && let Some((_, deps)) = rule_split(line) {
            d.files = split_paths(deps);
            first = false;
        }
    }
    d.files.sort();
    d.files.dedup();
    d.env.sort();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_parse() {
        let text = "/t/deps/foo-1.d: src/lib.rs src/a\\ b.rs /t/build/x/out/gen.rs\n\n\
            /t/deps/libfoo-1.rlib: src/lib.rs src/a\\ b.rs /t/build/x/out/gen.rs\n\n\
            src/lib.rs:\nsrc/a\\ b.rs:\n\n# env-dep:FOO=bar\n# env-dep:UNSET_ONE\n# env-dep:OUT_DIR=/t/build/x/out\n";
        let d = parse_dep_info(text);
        assert_eq!(
            d.files,
            vec!["/t/build/x/out/gen.rs", "src/a b.rs", "src/lib.rs"]
        );
        assert_eq!(d.env, vec!["FOO", "OUT_DIR", "UNSET_ONE"]);
    }

    #[test]
    fn normalize_most_specific_first() {
        let p = Paths::from_rules(
            &[
                ("/w", "/kache-ws"),
                ("/w/target", "/kache-target"),
                ("/root", "/kache-home"),
            ],
            "/w",
        );
        assert_eq!(
            p.normalize("/w/target/debug /w/src /root/x"),
            "/kache-target/debug /kache-ws/src /kache-home/x"
        );
        assert_eq!(
            p.expand("/kache-target/debug /kache-ws/src"),
            "/w/target/debug /w/src"
        );
        assert_eq!(p.remap_args()[0], "--remap-path-prefix=/w=/kache-ws");
        assert_eq!(
            p.remap_args()[2],
            "--remap-path-prefix=/w/target=/kache-target"
        );
        assert_eq!(p.resolve("src/lib.rs"), PathBuf::from("/w/src/lib.rs"));
    }

    #[test]
    fn args_tokens() {
        let a: Vec<String> =
            "--crate-name foo src/lib.rs -C opt-level=3 -Cdebuginfo=2 --cfg x -L dependency=/d"
                .split(' ')
                .map(String::from)
                .collect();
        let p: Vec<(String, String)> = tokenize(&a)
            .into_iter()
            .map(|t| (t.flag, t.value))
            .collect();
        assert_eq!(p[0], ("--crate-name".into(), "foo".into()));
        assert_eq!(p[1], (String::new(), "src/lib.rs".into()));
        assert_eq!(p[3], ("-C".into(), "debuginfo=2".into()));
        assert!(dropped_flag(&p[5].0, &p[5].1));
    }

    #[test]
    fn paths_are_replaced_as_whole_components_once() {
        let p = Paths::from_rules(
            &[("/t/kache-target", "/kache-target"), ("/w", "/kache-ws")],
            "/w",
        );
        assert_eq!(
            p.normalize("/work /w/x =/w \"/w\""),
            "/work /kache-ws/x =/kache-ws \"/kache-ws\""
        );
        assert_eq!(p.normalize("/t/kache-target/debug"), "/kache-target/debug");
        assert_eq!(p.expand("/kache-target/debug"), "/t/kache-target/debug");
        assert_eq!(p.expand("/opt/kache-target/x"), "/opt/kache-target/x");
        assert_eq!(
            p.absolute("/t/kache-target/a"),
            PathBuf::from("/t/kache-target/a")
        );
    }

    #[test]
    fn build_script_output() {
        let (f, e) = parse_build_output(
            "cargo:rerun-if-changed=migrations\ncargo::rerun-if-env-changed=DB\ncargo:rustc-cfg=x\ncargo:rerun-if-changed=build.rs\n",
        );
        assert_eq!(f, vec!["migrations", "build.rs"]);
        assert_eq!(e, vec!["DB"]);
    }

    #[test]
    fn dep_info_with_spaces_is_rewritten() {
        let p = Paths::from_rules(&[("/a b/ws", "/kache-ws")], "/a b/ws");
        let text = "/a b/ws/t/foo.d: /a\\ b/ws/src/lib.rs\n/a\\ b/ws/src/lib.rs:\n\n# env-dep:X=/a b/ws/y\n";
        let n = p.normalize_dep_info(text);
        assert_eq!(
            n,
            "/kache-ws/t/foo.d: /kache-ws/src/lib.rs\n/kache-ws/src/lib.rs:\n\n# env-dep:X=/kache-ws/y\n"
        );
        assert_eq!(p.expand_dep_info(&n), text);
    }

    /// A probe with fixed answers, for the golden key.
    struct Fixed;

    impl Probe for Fixed {
        fn hash(&self, p: &Path) -> Option<String> {
            Some(
                blake3::hash(p.to_string_lossy().as_bytes())
                    .to_hex()
                    .to_string(),
            )
        }
        fn identity(&self, program: &str, args: &[&str]) -> Result<String> {
            Ok(format!("{program} {}", args.join(" ")))
        }
        fn var(&self, name: &str) -> Option<String> {
            self.vars()
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
        }
        fn vars(&self) -> Vec<(String, String)> {
            [
                ("CARGO_PKG_NAME", "foo"),
                ("CARGO_REGISTRY_TOKEN", "secret"),
                ("CARGO_MAKEFLAGS", "-j --jobserver-fds=3,4"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        }
        fn list_dir(&self, _dir: &Path) -> Vec<(String, bool)> {
            Vec::new()
        }
        fn read_text(&self, _p: &Path) -> Option<String> {
            None
        }
        fn program_hash(&self, program: &str) -> Option<String> {
            self.hash(Path::new(program))
        }
        fn runtime_libs(&self, _so_hash: &str) -> Vec<String> {
            Vec::new()
        }
    }

    /// Pins the key of a fixed input: a change to the key scheme must be
    /// deliberate (bump `KEY_VERSION` and this value together).
    #[test]
    fn golden_key() {
        let args: Vec<String> = "--crate-name foo --edition=2021 src/lib.rs --error-format=json \
            --crate-type lib --emit=dep-info,metadata,link -C metadata=abc \
            -C extra-filename=-0123 --out-dir /w/target/debug/deps \
            -L dependency=/w/target/debug/deps --extern bar=/w/target/debug/deps/libbar-1.rmeta \
            --cfg feature=\"x\" --diagnostic-width=80"
            .split_whitespace()
            .map(String::from)
            .collect();
        let crate::wrapper::args::Verdict::Cache(c) =
            crate::wrapper::args::classify(&args, true, None)
        else {
            panic!("not cached")
        };
        let paths = Paths::from_rules(&[("/w", "/kache-ws"), ("/w/target", "/kache-target")], "/w");
        let (base, why) =
            base_key("rustc", &c, &args, &paths, &Declared::default(), &Fixed).unwrap();
        assert_eq!(why["arg --diagnostic-width"], "80");
        assert_eq!(why["arg -C metadata"], "abc");
        assert_eq!(why["toolchain"], "rustc -vV");
        assert_eq!(
            base,
            "c383cc2e17c5271f5158c413f0631ed08a086a5b932ca585aba4b0110fdab817"
        );
        let inputs = Inputs {
            base,
            files: vec!["src/lib.rs".into()],
            env: vec!["CARGO_PKG_NAME".into(), "NOPE".into()],
            link: vec![],
            absent: vec![],
            roots: vec!["/kache-ws".into()],
        };
        let full = full_key(&inputs, &paths, &Fixed).unwrap();
        let (f2, why) = full_key_explained(&inputs, &paths, &Fixed).unwrap();
        assert_eq!(f2, full);
        assert_eq!(why["env NOPE"], "unset");
        assert!(why["env CARGO_PKG_NAME"].starts_with("set ("), "{why:?}");
        assert_eq!(
            full,
            "fc328e4b8cf5a10de6d9d693e07b2e5fe20ca76450dc0b3e9b8f15af923a9586"
        );
        // Another checkout path leaves the base key alone (the extern's
        // content aside, which `Fixed` derives from its path); the
        // diagnostic width, which changes stderr, does not.
        let moved = Paths::from_rules(&[("/v", "/kache-ws"), ("/v/target", "/kache-target")], "/v");
        let key_of = |from: &str, to: &str, p: &Paths| {
            let a: Vec<String> = args
                .iter()
                .filter(|a| !a.starts_with("--extern") && !a.contains("libbar"))
                .map(|a| a.replace(from, to))
                .collect();
            base_key("rustc", &c, &a, p, &Declared::default(), &Fixed)
                .unwrap()
                .0
        };
        assert_eq!(key_of("/w/", "/w/", &paths), key_of("/w/", "/v/", &moved));
        assert_ne!(key_of("=80", "=80", &paths), key_of("=80", "=100", &paths));
    }
}
