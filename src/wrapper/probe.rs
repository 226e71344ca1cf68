/*!
What a key reads of the machine: the [`Probe`] trait, and the real one.

Key code does no I/O of its own: files, programs and the environment are
read through a [`Probe`], so a golden test can pin a key. [`RealProbe`]
remembers file hashes in the store, caches toolchain identities there and
reads the process environment. Every file it hashes is remembered, so a
miss can check afterwards that none of them changed while the action ran.
*/

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};

use super::hasher::KeyHasher;
use crate::store::Store;

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
    /// What is at a path, following links: `none`, `file`, `dir` or
    /// `other`.
    fn kind(&self, p: &Path) -> &'static str {
        match fs::metadata(p) {
            Err(_) => "none",
            Ok(m) if m.is_file() => "file",
            Ok(m) if m.is_dir() => "dir",
            Ok(_) => "other",
        }
    }
}

pub(crate) struct RealProbe<'a> {
    store: &'a Store,
    read: RefCell<Vec<PathBuf>>,
}

impl<'a> RealProbe<'a> {
    pub(crate) fn new(store: &'a Store) -> RealProbe<'a> {
        RealProbe {
            store,
            read: RefCell::new(Vec::new()),
        }
    }

    /// Every file hashed so far.
    pub(crate) fn files_read(&self) -> Vec<PathBuf> {
        self.read.borrow().clone()
    }
}

/// Whether any of `files` changed (or appeared) after `before`, judged by
/// its change time, which no `cp -p`, `touch -d` or `tar x` can set back.
/// `before` is a stamp of the filesystem's own (coarse) clock taken just
/// before rustc started; a change in that same clock tick counts as
/// before it (a dependency restored a moment earlier shares the tick,
/// and rustc reads nothing in its first tick).
pub(crate) fn changed_since(files: &[PathBuf], before: std::time::SystemTime) -> bool {
    let Ok(b) = before.duration_since(UNIX_EPOCH) else {
        return true;
    };
    files.iter().any(|f| match fs::metadata(f) {
        Ok(m) => {
            let c = (m.ctime(), m.ctime_nsec());
            c > (b.as_secs() as i64, i64::from(b.subsec_nanos()))
        }
        Err(_) => true,
    })
}

impl Probe for RealProbe<'_> {
    fn hash(&self, p: &Path) -> Option<String> {
        let h = self.store.hash_file_cached(p).ok()?;
        self.read.borrow_mut().push(p.to_path_buf());
        Some(h)
    }

    fn identity(&self, program: &str, args: &[&str]) -> Result<String> {
        cached_identity(self.store, program, args)
    }

    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(os_text)
    }

    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, os_text(v))))
            .collect()
    }

    fn list_dir(&self, dir: &Path) -> Vec<(String, bool)> {
        let Ok(rd) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out: Vec<(String, bool)> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let is_dir = fs::metadata(e.path()).is_ok_and(|m| m.is_dir());
                Some((name, is_dir))
            })
            .collect();
        out.sort();
        out
    }

    fn read_text(&self, p: &Path) -> Option<String> {
        fs::read_to_string(p).ok()
    }

    fn program_hash(&self, program: &str) -> Option<String> {
        self.hash(&resolve_program(program))
    }

    fn runtime_libs(&self, so_hash: &str) -> Vec<String> {
        self.store.runtime_libs(so_hash)
    }
}

/// An environment value as text, losslessly: a value that is not UTF-8
/// is spelled out byte for byte (never confused with the text `rustc`
/// would see after a lossy conversion).
fn os_text(v: std::ffi::OsString) -> String {
    use std::os::unix::ffi::OsStrExt;
    match v.into_string() {
        Ok(s) => s,
        Err(v) => {
            let hex = v
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .concat();
            format!("\u{0}bytes:{hex}")
        }
    }
}

/// Output of `PROGRAM ARGS`, cached in the store by the program's path,
/// mtime and size (and `RUSTUP_TOOLCHAIN`), so it is spawned once. For
/// `target-cpu=native` the CPU's flags are part of the cache id too.
fn cached_identity(store: &Store, program: &str, args: &[&str]) -> Result<String> {
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
    for a in args {
        h.field("arg", a);
    }
    h.field(
        "rustup",
        &std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_default(),
    );
    if args.iter().any(|a| a.contains("native")) {
        let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: Vec<&str> = cpu
            .lines()
            .filter(|l| l.starts_with("flags") || l.starts_with("model name"))
            .take(2)
            .collect();
        h.field("cpu", &flags.join("\n"));
    }
    let id = h.finish();
    let dir = store.root().join("toolchains");
    let file = dir.join(&id);
    if let Ok(text) = fs::read_to_string(&file) {
        return Ok(text);
    }
    let out = Command::new(&resolved)
        .args(args)
        .env("KACHE_ACTIVE", "1")
        .output()
        .with_context(|| format!("cannot run {} {}", resolved.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!("{} {} failed", resolved.display(), args.join(" "));
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let _ = fs::create_dir_all(&dir);
    // Best effort: without it the program is run again next time.
    let _ = store.write_atomic("identity", &file, text.as_bytes());
    Ok(text)
}

/// A program name resolved through `PATH` (a path is returned as is).
pub(crate) fn resolve_program(program: &str) -> PathBuf {
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
