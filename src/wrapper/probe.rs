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
    /// [`Probe::hash`] of each of `ps`.
    fn hashes(&self, ps: &[PathBuf]) -> Vec<Option<String>> {
        ps.iter().map(|p| self.hash(p)).collect()
    }
    /// What is at each of `paths`, as [`Probe::kind`] says.
    fn kinds(&self, paths: &[PathBuf]) -> Vec<&'static str> {
        kinds_of(paths)
    }
    /// [`look`] at `paths`.
    fn look(&self, paths: &[PathBuf]) -> Look {
        look(paths)
    }
    /// A record remembered under `id` (in the store's `hashes/`, a cache
    /// rebuilt on demand); `None` if there is none.
    fn recall(&self, _id: &str) -> Option<String> {
        None
    }
    /// Remembers `text` under `id`, for [`Probe::recall`].
    fn remember(&self, _id: &str, _text: &str) {}
}

/// A quick hash of path bytes for [`look`]'s maps, eight bytes at a
/// time (the paths come from the compile's own input list; `SipHash`'s
/// resistance to chosen keys buys nothing there and cost a third of a
/// lookup).
#[derive(Clone, Copy, Default)]
struct QuickHash;

impl std::hash::BuildHasher for QuickHash {
    type Hasher = Quick;
    fn build_hasher(&self) -> Quick {
        Quick(0)
    }
}

struct Quick(u64);

impl std::hash::Hasher for Quick {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or_default());
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What [`look`] found.
pub(crate) struct Look {
    /// What is at each path: `none`, `file`, `dir` or `other`.
    pub(crate) kinds: Vec<&'static str>,
    /// Every existing directory looked at (or listed), with its identity
    /// (`store::file_identity`) and whether that identity is settled:
    /// no name in it can appear, go or change kind without changing it.
    pub(crate) dirs: Vec<(PathBuf, String, bool)>,
    /// Whether a link was met where a name was looked for (a path, or a
    /// missing directory): what a link resolves to can change with no
    /// directory looked at changing.
    pub(crate) links: bool,
}

/// What is at each path, as [`Probe::kind`] says.
pub(crate) fn kinds_of(paths: &[PathBuf]) -> Vec<&'static str> {
    look(paths).kinds
}

/// What is at each path, following links (as [`Probe::kind`]), looking
/// once per directory rather than once per path where that is cheaper: a
/// C compile's shadow set names thousands of headers, nearly all in a few
/// directories or under missing ones. A missing directory (or one under
/// a missing one) holds nothing; a directory holding many of the paths
/// is listed once; a link, an unlistable directory or a few paths are
/// looked at one by one.
pub(crate) fn look(paths: &[PathBuf]) -> Look {
    use std::cell::Cell;
    type HashMap<K, V> = std::collections::HashMap<K, V, QuickHash>;
    use std::os::unix::ffi::OsStrExt;
    /// Paths in one directory from which listing it beats a look each.
    const LIST_FROM: usize = 16;
    let links = Cell::new(false);
    let one = |p: &Path| {
        let m = match fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                links.set(true);
                fs::metadata(p)
            }
            m => m,
        };
        match m {
            Err(_) => "none",
            Ok(m) if m.is_file() => "file",
            Ok(m) if m.is_dir() => "dir",
            Ok(_) => "other",
        }
    };
    // (directory, name) by the last `/`; `None` for a name that is not
    // one (`.`, `..`, empty), looked at on its own.
    let split = |p: &[u8]| -> Option<(usize, usize)> {
        let at = p.iter().rposition(|&c| c == b'/')?;
        let name = &p[at + 1..];
        if name.is_empty() || name == b"." || name == b".." {
            return None;
        }
        Some((if at == 0 { 1 } else { at }, at + 1))
    };
    let mut wanted: HashMap<&[u8], Vec<usize>> = HashMap::default();
    let mut out = vec!["none"; paths.len()];
    for (i, p) in paths.iter().enumerate() {
        let b = p.as_os_str().as_bytes();
        match split(b) {
            Some((dir_end, _)) => wanted.entry(&b[..dir_end]).or_default().push(i),
            None => out[i] = one(p),
        }
    }
    let name_of = |i: usize| -> &[u8] {
        let b = paths[i].as_os_str().as_bytes();
        split(b).map_or(b, |(_, start)| &b[start..])
    };
    // Whether a directory exists, each looked at once, its parent first
    // (when that too is a directory some path names, or under one): a
    // missing one answers for all under it, since the kernel walks every
    // leading part of a path (`a/gone/../b` needs `a/gone`).
    let mut d = Dirs {
        known: HashMap::default(),
        seen: HashMap::default(),
        links: false,
    };
    let dirs: Vec<&[u8]> = wanted.keys().copied().collect();
    for dir in dirs {
        if !is_dir(dir, &mut d) {
            continue;
        }
        let path = Path::new(std::ffi::OsStr::from_bytes(dir));
        let names = &wanted[dir];
        let listed = (names.len() >= LIST_FROM)
            .then(|| fs::read_dir(path).ok())
            .flatten();
        let Some(listing) = listed else {
            for &i in names {
                out[i] = one(&paths[i]);
            }
            continue;
        };
        let mut index: HashMap<&[u8], Vec<usize>> = HashMap::default();
        for &i in names {
            index.entry(name_of(i)).or_default().push(i);
        }
        for e in listing {
            let Ok(e) = e else {
                // A listing cut short: look at each path instead.
                for &i in names {
                    out[i] = one(&paths[i]);
                }
                break;
            };
            let Some(hits) = index.get(e.file_name().as_bytes()) else {
                continue;
            };
            let kind = match e.file_type() {
                Ok(t) if t.is_file() => "file",
                Ok(t) if t.is_dir() => "dir",
                Ok(t) if !t.is_symlink() => "other",
                // A link is what it points to.
                _ => one(&paths[hits[0]]),
            };
            for &i in hits {
                out[i] = kind;
            }
        }
    }
    let dirs = needed_dirs(&d.known, &d.seen, &wanted);
    Look {
        kinds: out,
        dirs,
        links: links.get() || d.links,
    }
}

type QuickMap<K, V> = std::collections::HashMap<K, V, QuickHash>;

/// The directories [`look`] looked at.
struct Dirs<'p> {
    known: QuickMap<&'p [u8], bool>,
    seen: QuickMap<&'p [u8], (String, bool)>,
    links: bool,
}
/// Whether `dir` exists, its parent looked at first (see [`look`]).
fn is_dir<'p>(dir: &'p [u8], d: &mut Dirs<'p>) -> bool {
    if let Some(&k) = d.known.get(dir) {
        return k;
    }
    let parent = dir
        .iter()
        .rposition(|&c| c == b'/')
        .filter(|&at| at > 0)
        .map(|at| &dir[..at]);
    let path = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(dir));
    let k = parent.is_none_or(|p| is_dir(p, d))
        && match fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                let id = crate::store::file_identity(&m);
                d.seen.insert(dir, (id, crate::store::settled(&m)));
                true
            }
            Ok(_) => false,
            Err(_) => {
                // A dangling link may come to point at a directory.
                if fs::symlink_metadata(path).is_ok() {
                    d.links = true;
                }
                false
            }
        };
    d.known.insert(dir, k);
    k
}

/// The directories whose identity tells whether the same look would find
/// the same: those names were looked for in, and the parent of each
/// missing one. (Their ancestors are walked again by the kernel whenever
/// they are looked at.) `known`: whether each directory looked at exists;
/// `seen`: the identity of each that does.
fn needed_dirs<S: std::hash::BuildHasher, V>(
    known: &std::collections::HashMap<&[u8], bool, S>,
    seen: &std::collections::HashMap<&[u8], (String, bool), S>,
    wanted: &std::collections::HashMap<&[u8], V, S>,
) -> Vec<(PathBuf, String, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let mut needed: Vec<&[u8]> = Vec::new();
    for (&dir, &exists) in known {
        if exists {
            if wanted.contains_key(dir) {
                needed.push(dir);
            }
        } else if let Some(at) = dir.iter().rposition(|&c| c == b'/') {
            let parent = &dir[..at.max(1)];
            if known.get(parent) == Some(&true) {
                needed.push(parent);
            }
        }
    }
    needed.sort_unstable();
    needed.dedup();
    needed
        .into_iter()
        .filter_map(|dir| {
            let (id, settled) = seen.get(dir)?;
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(dir));
            Some((path, id.clone(), *settled))
        })
        .collect()
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
    first_changed(files, before).is_some()
}

/// The first of `files` that [`changed_since`] `before` (all of them
/// when `before` cannot be read).
pub(crate) fn first_changed(files: &[PathBuf], before: std::time::SystemTime) -> Option<&PathBuf> {
    let Ok(b) = before.duration_since(UNIX_EPOCH) else {
        return files.first();
    };
    files.iter().find(|f| match fs::metadata(f) {
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

    fn recall(&self, id: &str) -> Option<String> {
        fs::read_to_string(self.store.root().join("hashes").join(id)).ok()
    }

    fn remember(&self, id: &str, text: &str) {
        let dir = self.store.root().join("hashes");
        let _ = fs::create_dir_all(&dir);
        self.store
            .write_cache_record(&dir.join(id), text.as_bytes());
    }

    fn hashes(&self, ps: &[PathBuf]) -> Vec<Option<String>> {
        let out: Vec<Option<String>> = self
            .store
            .hash_files_cached(ps)
            .into_iter()
            .map(Result::ok)
            .collect();
        let mut read = self.read.borrow_mut();
        for (p, h) in ps.iter().zip(&out) {
            if h.is_some() {
                read.push(p.clone());
            }
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The batched look answers as a look at each path does: files,
    /// directories, links (to each, dangling, to a directory), a fifo,
    /// names under a missing directory, under a file, through `..`, and a
    /// directory holding enough names to be listed.
    #[test]
    fn kinds_are_what_a_look_at_each_path_says() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("inc/sub")).unwrap();
        fs::write(r.join("inc/a.h"), "a").unwrap();
        fs::write(r.join("inc/sub/b.h"), "b").unwrap();
        symlink(r.join("inc/a.h"), r.join("inc/link.h")).unwrap();
        symlink(r.join("nowhere"), r.join("inc/dangling.h")).unwrap();
        symlink(r.join("inc/sub"), r.join("inc/dirlink.h")).unwrap();
        symlink(r.join("inc"), r.join("alias")).unwrap();
        let fifo = r.join("inc/fifo.h");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let mut names: Vec<PathBuf> = [
            "inc/a.h",
            "inc/sub",
            "inc/link.h",
            "inc/dangling.h",
            "inc/dirlink.h",
            "inc/fifo.h",
            "inc/none.h",
            "inc/sub/b.h",
            "inc/sub/../a.h",
            "inc/gone/../a.h",
            "inc/gone/deeper/x.h",
            "inc/a.h/x.h",
            "alias/a.h",
            "alias/sub/b.h",
            "missing/x.h",
        ]
        .iter()
        .map(|n| r.join(n))
        .collect();
        // Enough names in `inc` for it to be listed rather than looked
        // at name by name.
        names.extend((0..40).map(|i| r.join(format!("inc/n{i}.h"))));
        names.push(PathBuf::from("/"));
        names.push(PathBuf::from("relative-name.h"));
        let one = |p: &Path| match fs::metadata(p) {
            Err(_) => "none",
            Ok(m) if m.is_file() => "file",
            Ok(m) if m.is_dir() => "dir",
            Ok(_) => "other",
        };
        let want: Vec<&str> = names.iter().map(|p| one(p)).collect();
        assert_eq!(kinds_of(&names), want);
        assert_eq!(want[..6], ["file", "dir", "file", "none", "dir", "other"]);
        assert_eq!(want[8], "file");
        assert_eq!(want[9], "none");
    }
}
