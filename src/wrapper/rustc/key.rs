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
use crate::wrapper::explain::Explain;
use crate::wrapper::explain::UNSET;
use crate::wrapper::hasher::KeyHasher;
use crate::wrapper::paths::Paths;
use crate::wrapper::probe::Probe;

/// Bumped whenever the key scheme changes.
const KEY_VERSION: &str = "kache-wrapper-key-4";

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
pub(crate) fn keyed_cargo_var(name: &str) -> bool {
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
            // Its directory is this target dir's own; that the compile
            // is incremental is keyed: its code is split into other
            // codegen units, so its outputs are not a non-incremental
            // compile's bytes (see the README: an entry answers only
            // compiles of its own kind).
            "-C" if value.starts_with("incremental=") => h.field("-C", "incremental"),
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

/// A declared variable's value as keyed: through the sentinels, as the
/// full key keys `env!` values, so a path into this checkout (ring's
/// script declares `OUT_DIR`) is the same in every checkout.
fn env_value(v: &str, paths: &Paths, probe: &dyn Probe) -> String {
    probe
        .var(v)
        .map_or_else(|| UNSET.to_string(), |x| paths.normalize(&x))
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
                h.field("value", &env_value(&v, paths, probe));
            }
        }
    }
    for v in &declared.env {
        h.field("declared-env", v);
        h.field("value", &env_value(v, paths, probe));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::entry::Inputs;
    use crate::wrapper::inputs::{full_key, full_key_explained};

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
    fn build_script_output() {
        let (f, e) = parse_build_output(
            "cargo:rerun-if-changed=migrations\ncargo::rerun-if-env-changed=DB\ncargo:rustc-cfg=x\ncargo:rerun-if-changed=build.rs\n",
        );
        assert_eq!(f, vec!["migrations", "build.rs"]);
        assert_eq!(e, vec!["DB"]);
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
        let crate::wrapper::rustc::args::Verdict::Cache(c) =
            crate::wrapper::rustc::args::classify(&args, true, None)
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
            dirs: vec![],
            shadows: None,
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
