//! Cache keys, in two levels ("direct mode"), so a hit never runs rustc.
//!
//! - The *base key* hashes everything known before the compile: the
//!   toolchain, the normalised arguments, the content of every `--extern`
//!   file, static libraries, the target spec, the `CARGO_*` environment and,
//!   for linked outputs, the linker.
//! - The *full key* adds the content of every source file and the value of
//!   every env var the compile read, as listed by the dep-info file of the
//!   compile that made the entry. The lists are recorded in the store's
//!   index under the base key, so a lookup tries each known list.
//!
//! Machine-local paths (workspace root, target dir, `CARGO_HOME`, `HOME`)
//! are replaced by sentinels everywhere, so checkouts at different paths
//! and different machines meet on the same keys.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};

use super::args::Compile;
use crate::store::{Store, entry::Inputs, hash_file};

/// Bumped whenever the key scheme changes.
const KEY_VERSION: &str = "kache-wrapper-key-1";

/// Marks an unset env var (distinct from an empty one).
const UNSET: &str = "\u{0}unset";

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
        add(Some(cwd.clone()), "/kache-ws");
        add(cargo_home, "/kache-cargo-home");
        add(home, "/kache-home");
        rules.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Ok(Paths { rules, cwd })
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
        let mut s = s.to_string();
        for (real, sent) in &self.rules {
            if s.contains(real.as_str()) {
                s = s.replace(real.as_str(), sent);
            }
        }
        s
    }

    /// Sentinels -> real paths of this checkout.
    pub(crate) fn expand(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (real, sent) in &self.rules {
            if s.contains(sent.as_str()) {
                s = s.replace(sent.as_str(), real);
            }
        }
        s
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

/// A hasher that frames every field, so ("ab","c") != ("a","bc").
pub(crate) struct KeyHasher(blake3::Hasher);

impl KeyHasher {
    pub(crate) fn new(domain: &str) -> KeyHasher {
        let mut h = KeyHasher(blake3::Hasher::new());
        h.field("domain", domain);
        h
    }

    pub(crate) fn field(&mut self, label: &str, value: &str) {
        for part in [label, value] {
            self.0.update(&(part.len() as u64).to_le_bytes());
            self.0.update(part.as_bytes());
        }
    }

    pub(crate) fn finish(self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

/// Output of `PROGRAM ARG`, cached in the store by the program's path,
/// mtime and size (and `RUSTUP_TOOLCHAIN`), so it is spawned once.
fn cached_identity(store: &Store, program: &str, arg: &str) -> Result<String> {
    let resolved = resolve_program(program);
    let meta =
        fs::metadata(&resolved).with_context(|| format!("cannot find {}", resolved.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = KeyHasher::new("identity");
    h.field("path", &resolved.to_string_lossy());
    h.field("mtime", &mtime.to_string());
    h.field("size", &meta.len().to_string());
    h.field("arg", arg);
    h.field(
        "rustup",
        &std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_default(),
    );
    let id = h.finish();
    let dir = store.root().join("toolchains");
    let file = dir.join(&id);
    if let Ok(text) = fs::read_to_string(&file) {
        return Ok(text);
    }
    let out = Command::new(&resolved)
        .arg(arg)
        .env("KACHE_ACTIVE", "1")
        .output()
        .with_context(|| format!("cannot run {} {arg}", resolved.display()))?;
    if !out.status.success() {
        bail!("{} {arg} failed", resolved.display());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let _ = fs::create_dir_all(&dir);
    // Best effort: without it the program is run again next time.
    let _ = store.write_atomic("identity", &file, text.as_bytes());
    Ok(text)
}

/// A program name resolved through `PATH` (a path is returned as is).
fn resolve_program(program: &str) -> PathBuf {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.to_path_buf();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join(program);
            if c.is_file() {
                return c;
            }
        }
    }
    p.to_path_buf()
}

/// `CARGO_*` variables that change per build without changing the output.
fn ignored_cargo_var(name: &str) -> bool {
    matches!(
        name,
        "CARGO_MAKEFLAGS"
            | "CARGO_BUILD_JOBS"
            | "CARGO_ENCODED_RUSTFLAGS"
            | "CARGO_TARGET_DIR"
            | "CARGO_BUILD_TARGET_DIR"
            | "CARGO_HOME"
            | "CARGO_INCREMENTAL"
            | "CARGO_TERM_COLOR"
            | "CARGO_TERM_PROGRESS_WHEN"
            | "CARGO_TERM_VERBOSE"
            | "CARGO_TERM_QUIET"
    ) || name.starts_with("CARGO_REGISTRIES_")
        || name.starts_with("CARGO_HTTP_")
        || name.starts_with("CARGO_NET_")
}

/// Flags whose value is dropped from the key (with the flag itself).
fn dropped_flag(flag: &str, value: &str) -> bool {
    match flag {
        "--out-dir" | "--diagnostic-width" => true,
        "-L" => value.starts_with("dependency="),
        "-C" => value.starts_with("incremental="),
        _ => false,
    }
}

/// Splits rustc args into (flag, value) pairs; a lone value (the input)
/// has an empty flag.
fn pairs(args: &[String]) -> Vec<(String, String)> {
    const SPLIT: [&str; 2] = ["-C", "-L"];
    const TAKES_VALUE: [&str; 24] = [
        "--crate-name",
        "--out-dir",
        "--emit",
        "--crate-type",
        "--extern",
        "--target",
        "--cfg",
        "--check-cfg",
        "--cap-lints",
        "--error-format",
        "--json",
        "--color",
        "--edition",
        "-A",
        "-W",
        "-D",
        "-F",
        "--force-warn",
        "--remap-path-prefix",
        "--diagnostic-width",
        "-Z",
        "--env-set",
        "-l",
        "--codegen",
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if SPLIT.contains(&a.as_str()) || TAKES_VALUE.contains(&a.as_str()) {
            let v = args.get(i + 1).cloned().unwrap_or_default();
            out.push((a.clone(), v));
            i += 2;
            continue;
        }
        if let Some((f, v)) = a.split_once('=').filter(|(f, _)| f.starts_with("--")) {
            out.push((f.to_string(), v.to_string()));
        } else if let Some(f) = SPLIT
            .iter()
            .chain(["-l", "-A", "-W", "-D", "-F", "-Z"].iter())
            .find(|f| a.starts_with(**f) && a.len() > f.len())
        {
            out.push((f.to_string(), a[f.len()..].to_string()));
        } else if a.starts_with('-') {
            out.push((a.clone(), String::new()));
        } else {
            out.push((String::new(), a.clone()));
        }
        i += 1;
    }
    out
}

/// Everything the base key is made of, computed up front.
pub(crate) fn base_key(
    store: &Store,
    rustc: &str,
    c: &Compile,
    args: &[String],
    paths: &Paths,
) -> Result<String> {
    let mut h = KeyHasher::new(KEY_VERSION);
    let rustc_name = Path::new(rustc)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    h.field("compiler-name", &rustc_name);
    h.field("toolchain", &cached_identity(store, rustc, "-vV")?);

    let mut cfgs = Vec::new();
    let mut check_cfgs = Vec::new();
    let mut externs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (flag, value) in pairs(args) {
        if dropped_flag(&flag, &value) {
            continue;
        }
        match flag.as_str() {
            "--cfg" => cfgs.push(value),
            "--check-cfg" => check_cfgs.push(value),
            "--extern" => {
                let (name, path) = value.split_once('=').unwrap_or((value.as_str(), ""));
                let digest = if path.is_empty() {
                    String::new()
                } else {
                    let p = paths.resolve(path);
                    store
                        .hash_file_cached(&p)
                        .with_context(|| format!("cannot read --extern {}", p.display()))?
                };
                let file = Path::new(path)
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                externs
                    .entry(name.to_string())
                    .or_default()
                    .push(format!("{file}:{digest}"));
            }
            "--target" => {
                let p = paths.resolve(&value);
                if value.ends_with(".json") && p.is_file() {
                    let d = hash_file(&p)?;
                    h.field("target-json", &d);
                } else {
                    h.field("target", &value);
                }
            }
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

    // Native libraries: static ones always, all of them for linked outputs.
    let search: Vec<PathBuf> = c
        .lib_paths
        .iter()
        .filter(|(k, _)| k != "dependency" && k != "crate")
        .map(|(_, p)| paths.resolve(p))
        .collect();
    for (kind, name) in &c.libs {
        if kind != "static" && !c.links() {
            continue;
        }
        let found = search
            .iter()
            .map(|d| d.join(format!("lib{name}.a")))
            .find(|p| p.is_file());
        match found {
            Some(p) => h.field("static-lib", &format!("{name}:{}", hash_file(&p)?)),
            None if kind == "static" => bail!("static library {name} not found"),
            None => {}
        }
    }

    if c.links() {
        let linker = c.linker.clone().unwrap_or_else(|| "cc".to_string());
        h.field("linker", &paths.normalize(&linker));
        h.field(
            "linker-version",
            &cached_identity(store, &linker, "--version")?,
        );
    }

    // clippy-driver reads its configuration from clippy.toml and CLIPPY_ARGS.
    if rustc_name.starts_with("clippy-driver") {
        h.field(
            "clippy-args",
            &std::env::var("CLIPPY_ARGS").unwrap_or_default(),
        );
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(d) = std::env::var_os("CLIPPY_CONF_DIR") {
            dirs.push(PathBuf::from(d));
        }
        if let Some(d) = std::env::var_os("CARGO_MANIFEST_DIR") {
            dirs.extend(Path::new(&d).ancestors().map(Path::to_path_buf));
        }
        for d in dirs {
            for n in ["clippy.toml", ".clippy.toml"] {
                let p = d.join(n);
                if p.is_file() {
                    h.field("clippy-toml", &hash_file(&p)?);
                }
            }
        }
    }

    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| {
            (k.starts_with("CARGO_") || k == "CARGO" || k == "RUSTC_BOOTSTRAP")
                && !ignored_cargo_var(k)
        })
        .collect();
    vars.sort();
    for (k, v) in vars {
        h.field(&format!("env:{k}"), &paths.normalize(&v));
    }
    Ok(h.finish())
}

/// The full key of an input list, or `None` if a listed file is missing.
pub(crate) fn full_key(inputs: &Inputs, paths: &Paths) -> Option<String> {
    let mut h = KeyHasher::new("full");
    h.field("base", &inputs.base);
    for f in &inputs.files {
        let digest = hash_file(&paths.resolve(f)).ok()?;
        h.field("file", f);
        h.field("content", &digest);
    }
    for name in &inputs.env {
        let v = match std::env::var_os(name) {
            Some(v) => paths.normalize(&v.to_string_lossy()),
            None => UNSET.to_string(),
        };
        h.field("env", name);
        h.field("value", &v);
    }
    Some(h.finish())
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
        if b[i] == b':' && (i + 1 == b.len() || b[i + 1] == b' ') && (i == 0 || b[i - 1] != b'\\') {
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
    fn args_pairs() {
        let a: Vec<String> =
            "--crate-name foo src/lib.rs -C opt-level=3 -Cdebuginfo=2 --cfg x -L dependency=/d"
                .split(' ')
                .map(String::from)
                .collect();
        let p = pairs(&a);
        assert_eq!(p[0], ("--crate-name".into(), "foo".into()));
        assert_eq!(p[1], (String::new(), "src/lib.rs".into()));
        assert_eq!(p[3], ("-C".into(), "debuginfo=2".into()));
        assert!(dropped_flag(&p[5].0, &p[5].1));
    }
}
