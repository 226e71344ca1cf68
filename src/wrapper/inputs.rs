/*!
The full key of a recorded input list.

A key is two levels ("direct mode", see `rustc::key`, `cc::key` and
`script`): the base key of what is known before the action runs, and the
full key, which adds what only the run could tell (the files it read, the
env vars it looked at, the roots in its outputs, the directories it
listed). The full key is the same for every kind of action: it is
computed here from an [`Inputs`] list through a [`Probe`], so a lookup
tries each list recorded under the base key.
*/

use std::path::PathBuf;

use super::cc::key::shadow_names;
use super::explain::{Explain, UNSET};
use super::hasher::KeyHasher;
use super::paths::Paths;
use super::probe::Probe;
use crate::store::CacheKey;
use crate::store::entry::{Inputs, Shadows};

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

/// What is at a path that must stay absent: a file that appeared, but
/// also a directory.
fn exists(kind: &str) -> &str {
    match kind {
        "file" => "yes",
        "none" => "no",
        k => k,
    }
}

/// Keys a C compile's shadow set: what it is computed from (the headers
/// are keyed already), and those of its names that are present, with
/// what is there. Accounted for in one line (thousands of names, nearly
/// all absent): those present.
fn shadow_fields(
    h: &mut KeyHasher,
    s: &Shadows,
    headers: &[String],
    paths: &Paths,
    probe: &dyn Probe,
) -> Option<()> {
    // A hand-made or hostile input list must not take a lookup hours.
    if headers.len() > MAX_HEADERS || s.search.len() > MAX_SEARCH {
        return None;
    }
    let memo = memo_id(s, headers, paths);
    let present = match probe.recall(&memo).and_then(|t| still_true(&t)) {
        Some(m) if m.again.is_empty() => m.present,
        // Names in directories too fresh to trust looked at again.
        Some(m) => {
            let again: Vec<PathBuf> = m.again.iter().map(PathBuf::from).collect();
            let look = probe.look(&again);
            let mut present = m.present;
            present.extend(present_of(again.iter().zip(look.kinds), paths));
            present.sort_unstable();
            present.dedup();
            let young = young_after(&paths.expand(&s.source));
            if !look.links && unsure_dirs(&look.dirs, young).is_empty() {
                // All settled now: the next lookup looks at none.
                let mut dirs = m.dirs;
                dirs.extend(dir_ids(look.dirs));
                remember(probe, &memo, dirs, present.clone(), Vec::new());
            }
            present
        }
        None => {
            // The names as this checkout's paths (expanding a few hundred
            // inputs, not thousands of names), normalised back where present.
            let real =
                |v: &[String]| -> Vec<String> { v.iter().map(|f| paths.expand(f)).collect() };
            let names = shadow_names(
                &paths.expand(&s.source),
                &real(headers),
                &real(&s.search),
                s.forced,
                &s.probed,
            )
            .ok()?;
            let resolved: Vec<PathBuf> = names
                .into_iter()
                .map(|n| {
                    let p = PathBuf::from(n);
                    if p.is_absolute() {
                        p
                    } else {
                        paths.cwd.join(p)
                    }
                })
                .collect();
            let look = probe.look(&resolved);
            let present = present_of(resolved.iter().zip(look.kinds.iter().copied()), paths);
            if !look.links {
                let young = young_after(&paths.expand(&s.source));
                remember_look(probe, &memo, &resolved, look, paths, young);
            }
            present
        }
    };
    h.hidden("shadow-source", &s.source);
    for d in &s.search {
        h.hidden("shadow-search", d);
    }
    h.hidden("shadow-forced", if s.forced { "yes" } else { "no" });
    for p in &s.probed {
        h.hidden("shadow-probed", p);
    }
    for (f, kind) in &present {
        h.hidden("present", f);
        h.hidden("kind", kind);
    }
    let shown = if present.is_empty() {
        "none present".to_string()
    } else {
        let list: Vec<String> = present.iter().map(|(f, k)| format!("{f} ({k})")).collect();
        format!("present: {}", list.join(", "))
    };
    h.account("shadowing headers", shown);
    Some(())
}

/// What a shadow set's look found, remembered on this machine: every
/// name of the set that is present (with what is there), and every
/// existing directory looked at with its identity. While no such
/// directory changed (a name created, removed or renamed in a directory
/// changes its identity; a missing directory's parent was looked at), the
/// same look finds the same; a look that met a link is not remembered.
/// A directory changed too recently for its identity to tell (a build
/// directory just configured) is not trusted: the names under it are
/// listed in `again`, looked at anew by every lookup, and `present`
/// holds only the others.
#[derive(serde::Serialize, serde::Deserialize)]
struct ShadowMemo {
    dirs: Vec<(String, String)>,
    present: Vec<(String, String)>,
    #[serde(default)]
    again: Vec<String>,
}

/// The names of `resolved` that `kinds` finds present, as this store
/// keys them, sorted.
fn present_of<'a>(
    looked: impl Iterator<Item = (&'a PathBuf, &'static str)>,
    paths: &Paths,
) -> Vec<(String, String)> {
    let mut present: Vec<(String, String)> = looked
        .filter(|(_, kind)| *kind != "none")
        .map(|(f, kind)| (paths.normalize(&f.to_string_lossy()), kind.to_string()))
        .collect();
    present.sort_unstable();
    present.dedup();
    present
}

fn dir_ids(dirs: Vec<(PathBuf, String, bool)>) -> impl Iterator<Item = (String, String)> {
    dirs.into_iter()
        .filter_map(|(d, id, _)| Some((d.into_os_string().into_string().ok()?, id)))
}

fn remember(
    probe: &dyn Probe,
    memo: &str,
    dirs: Vec<(String, String)>,
    present: Vec<(String, String)>,
    again: Vec<String>,
) {
    let m = ShadowMemo {
        dirs,
        present,
        again,
    };
    if let Ok(text) = serde_json::to_string(&m) {
        probe.remember(memo, &text);
    }
}

/// Remembers a look that met no link: what the settled directories
/// decide, and the names under a fresh one (or through `..`) to look at
/// again. Nothing when every name would be looked at again.
/// Whether directory `d` leads path `p`, by their text.
fn leads(d: &[u8], p: &[u8]) -> bool {
    p.starts_with(d) && (d.ends_with(b"/") || p.get(d.len()).is_none_or(|&c| c == b'/'))
}

fn remember_look(
    probe: &dyn Probe,
    memo: &str,
    resolved: &[PathBuf],
    look: super::probe::Look,
    paths: &Paths,
    young_after: i64,
) {
    use std::os::unix::ffi::OsStrExt;
    let unsure = unsure_dirs(&look.dirs, young_after);
    let mut kept: Vec<usize> = Vec::new();
    let mut again: Vec<String> = Vec::new();
    for (i, p) in resolved.iter().enumerate() {
        // A name is decided by its directory, or by the parent of its
        // first missing ancestor: both lead it, as [`look`] wrote them
        // (by its text, `..` and all).
        if !unsure
            .iter()
            .any(|d| leads(d.as_os_str().as_bytes(), p.as_os_str().as_bytes()))
        {
            kept.push(i);
        } else if let Some(s) = p.to_str() {
            again.push(s.to_string());
        } else {
            return;
        }
    }
    again.sort_unstable();
    again.dedup();
    // Not worth it when most names would be looked at again anyway.
    if kept.is_empty() || again.len() > MAX_AGAIN.min(kept.len()) {
        return;
    }
    let present = present_of(kept.iter().map(|&i| (&resolved[i], look.kinds[i])), paths);
    let dirs = look
        .dirs
        .into_iter()
        .filter(|(d, _, _)| !unsure.contains(d))
        .collect();
    remember(probe, memo, dir_ids(dirs).collect(), present, again);
}

/// Most names a remembered look lists to look at again.
const MAX_AGAIN: usize = 4096;

/// The directories a look must not be remembered by: those changed too
/// recently for their identity to tell, and those made after the source
/// (`young_after`, a ctime in seconds): a build directory, recreated by
/// the next configure, whose identity would then throw the whole record
/// away. The names under them are looked at again by every lookup (a
/// directory holding many is listed once).
fn unsure_dirs(dirs: &[(PathBuf, String, bool)], young_after: i64) -> Vec<PathBuf> {
    dirs.iter()
        .filter(|(_, id, settled)| !settled || ctime_of(id).is_none_or(|c| c > young_after))
        .map(|(d, _, _)| d.clone())
        .collect()
}

/// The ctime, in seconds, of a `store::file_identity`.
fn ctime_of(id: &str) -> Option<i64> {
    id.rsplit(':').next()?.split('.').next()?.parse().ok()
}

/// After which ctime a directory counts as made after the source.
fn young_after(source: &str) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(source).map_or(i64::MAX, |m| m.ctime().saturating_add(2))
}

/// Where a shadow set's look is remembered: by everything its names are
/// computed from, as resolved here.
fn memo_id(s: &Shadows, headers: &[String], paths: &Paths) -> String {
    let mut h = blake3::Hasher::new();
    let mut put = |v: &str| {
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    };
    put("kache-shadow-memo-1");
    put(&paths.cwd.to_string_lossy());
    put(&paths.expand(&s.source));
    put(if s.forced { "forced" } else { "-" });
    for d in &s.search {
        put(&paths.expand(d));
    }
    put("probed");
    for p in &s.probed {
        put(p);
    }
    put("headers");
    for f in headers {
        put(&paths.expand(f));
    }
    format!("shadow-{}", h.finalize().to_hex())
}

/// A remembered look, if every directory it trusted is as it was.
fn still_true(text: &str) -> Option<ShadowMemo> {
    let m: ShadowMemo = serde_json::from_str(text).ok()?;
    m.dirs
        .iter()
        .all(|(d, id)| {
            std::fs::metadata(d)
                .is_ok_and(|meta| meta.is_dir() && crate::store::file_identity(&meta) == *id)
        })
        .then_some(m)
}

/// Bounds on a shadow set's inputs (a real compile reads a few thousand
/// headers at most, through a few dozen directories).
const MAX_HEADERS: usize = 100_000;
const MAX_SEARCH: usize = 4_096;

fn full_hasher(inputs: &Inputs, paths: &Paths, probe: &dyn Probe) -> Option<KeyHasher> {
    let mut h = KeyHasher::new("full");
    h.field("base", &inputs.base);
    let resolved: Vec<_> = inputs.files.iter().map(|f| paths.resolve(f)).collect();
    for (f, digest) in inputs.files.iter().zip(probe.hashes(&resolved)) {
        h.field("file", f);
        h.field("content", &digest?);
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
    let resolved: Vec<_> = inputs.absent.iter().map(|f| paths.resolve(f)).collect();
    for (f, kind) in inputs.absent.iter().zip(probe.kinds(&resolved)) {
        h.field("absent", f);
        h.field("exists", exists(kind));
    }
    if let Some(s) = &inputs.shadows {
        shadow_fields(&mut h, s, &inputs.files, paths, probe)?;
    }
    for s in &inputs.roots {
        h.field("root", s);
        h.field("real", &paths.expand(s));
    }
    for d in &inputs.dirs {
        let listing: Vec<String> = probe
            .list_dir(&paths.resolve(d))
            .into_iter()
            .map(|(name, dir)| if dir { format!("{name}/") } else { name })
            .collect();
        h.field("dir", d);
        // A missing directory is not an empty one.
        h.field("kind", probe.kind(&paths.resolve(d)));
        h.field("listing", &listing.join("\n"));
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::wrapper::probe::{RealProbe, look};
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// A C compile's shadow set, looked at for real: `-I inc1 -I inc2`,
    /// the headers read in `inc2`.
    fn setup(r: &std::path::Path) -> (Inputs, Paths) {
        for d in ["src", "inc1", "inc2/deep"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("src/a.c"), "").unwrap();
        fs::write(r.join("inc2/x.h"), "").unwrap();
        fs::write(r.join("inc2/deep/y.h"), "").unwrap();
        let p = |s: &str| r.join(s).to_string_lossy().into_owned();
        let inputs = Inputs {
            base: CacheKey::parse(&"a".repeat(64)).unwrap(),
            files: vec![p("inc2/deep/y.h"), p("inc2/x.h")],
            env: vec![],
            link: vec![],
            absent: vec![],
            roots: vec![],
            dirs: vec![],
            shadows: Some(Shadows {
                source: p("src/a.c"),
                search: vec![p("inc1"), p("inc2")],
                forced: false,
                probed: vec![],
            }),
        };
        (inputs, Paths::from_rules(&[], &p("src")))
    }

    fn memos(store: &Store) -> Vec<PathBuf> {
        fs::read_dir(store.root().join("hashes"))
            .map(|r| r.map(|e| e.unwrap().path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("shadow-"))
            .collect()
    }

    /// A forged record changes the key: the lookup used it.
    fn the_record_is_used(memo: &Path, text: &str, key: &dyn Fn() -> CacheKey, k0: &CacheKey) {
        let forged = text.replace("\"present\":[]", "\"present\":[[\"/forged\",\"file\"]]");
        fs::write(memo, forged).unwrap();
        assert_ne!(key(), *k0, "the remembered look was not used");
        fs::write(memo, text).unwrap();
        assert_eq!(key(), *k0);
    }

    /// A remembered look answers only while every directory it looked in
    /// is unchanged: a header created earlier on the path, or in a
    /// directory that did not exist, changes the key at once.
    #[test]
    fn a_remembered_shadow_look_follows_every_change() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("ws");
        let store = Store::open(&d.path().join("store")).unwrap();
        let (inputs, paths) = setup(&r);
        let key = || full_key(&inputs, &paths, &RealProbe::new(&store)).unwrap();
        let k0 = key();
        // Fresh directories: nothing remembered.
        assert!(memos(&store).is_empty());
        std::thread::sleep(Duration::from_millis(5200));
        assert_eq!(key(), k0);
        let memo = memos(&store);
        assert_eq!(memo.len(), 1, "a settled look is remembered");
        // The record is what the next lookup uses...
        let text = fs::read_to_string(&memo[0]).unwrap();
        the_record_is_used(&memo[0], &text, &key, &k0);
        // ... until a shadowing header appears: earlier on the path,
        assert!(text.contains("inc1"), "{text}");
        fs::write(r.join("inc1/x.h"), "").unwrap();
        let k1 = key();
        assert_ne!(k1, k0);
        fs::remove_file(r.join("inc1/x.h")).unwrap();
        assert_eq!(key(), k0);
        // beside the source,
        fs::write(r.join("src/x.h"), "").unwrap();
        assert_ne!(key(), k0);
        fs::remove_file(r.join("src/x.h")).unwrap();
        // or in a directory that was missing.
        fs::create_dir_all(r.join("inc1/deep")).unwrap();
        assert_eq!(key(), k0);
        fs::write(r.join("inc1/deep/y.h"), "").unwrap();
        assert_ne!(key(), k0);
    }

    /// A build directory just configured is too fresh for its identity to
    /// tell: the look is remembered for the settled directories, and the
    /// names under the fresh one are looked at by every lookup, so a
    /// header appearing there in the same second changes the key at once.
    /// Settled, it is still looked at while it is younger than the source
    /// (the next configure makes it anew); once older, the look is
    /// remembered whole.
    #[test]
    fn a_fresh_directory_is_looked_at_again_and_the_rest_remembered() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("ws");
        let store = Store::open(&d.path().join("store")).unwrap();
        let (mut inputs, paths) = setup(&r);
        std::thread::sleep(Duration::from_millis(5200));
        fs::create_dir_all(r.join("gen")).unwrap();
        let gen_dir = r.join("gen").to_string_lossy().into_owned();
        inputs.shadows.as_mut().unwrap().search.insert(0, gen_dir);
        let key = || full_key(&inputs, &paths, &RealProbe::new(&store)).unwrap();
        let k0 = key();
        let memo = memos(&store);
        assert_eq!(memo.len(), 1, "the settled part is remembered");
        let text = fs::read_to_string(&memo[0]).unwrap();
        let m: ShadowMemo = serde_json::from_str(&text).unwrap();
        assert!(m.again.iter().any(|p| p.ends_with("gen/x.h")), "{text}");
        assert!(m.again.iter().all(|p| p.contains("/gen/")), "{text}");
        assert!(m.dirs.iter().any(|(d, _)| d.ends_with("inc1")), "{text}");
        assert!(!m.dirs.iter().any(|(d, _)| d.ends_with("gen")), "{text}");
        // The record is what the next lookup uses...
        the_record_is_used(&memo[0], &text, &key, &k0);
        // ... but the fresh directory is looked at each time,
        fs::write(r.join("gen/x.h"), "").unwrap();
        assert_ne!(key(), k0, "a header in the fresh directory was not seen");
        fs::remove_file(r.join("gen/x.h")).unwrap();
        assert_eq!(key(), k0);
        fs::create_dir_all(r.join("gen/deep")).unwrap();
        fs::write(r.join("gen/deep/y.h"), "").unwrap();
        assert_ne!(key(), k0);
        fs::remove_dir_all(r.join("gen/deep")).unwrap();
        assert_eq!(key(), k0);
        // and the settled ones by their identity.
        fs::write(r.join("inc1/x.h"), "").unwrap();
        assert_ne!(key(), k0);
        fs::remove_file(r.join("inc1/x.h")).unwrap();
        assert_eq!(key(), k0);
        // Settled, but made after the source (a build directory the next
        // configure makes anew): still looked at each time.
        std::thread::sleep(Duration::from_millis(5200));
        assert_eq!(key(), k0);
        let m: ShadowMemo =
            serde_json::from_str(&fs::read_to_string(&memos(&store)[0]).unwrap()).unwrap();
        assert!(m.again.iter().any(|p| p.ends_with("gen/x.h")));
        // Settled and older than the source: remembered whole.
        fs::write(r.join("src/a.c"), "int a;").unwrap();
        std::thread::sleep(Duration::from_millis(5200));
        assert_eq!(key(), k0);
        let m: ShadowMemo =
            serde_json::from_str(&fs::read_to_string(&memos(&store)[0]).unwrap()).unwrap();
        assert!(m.again.is_empty());
        assert!(m.dirs.iter().any(|(d, _)| d.ends_with("gen")));
        fs::write(r.join("gen/x.h"), "").unwrap();
        assert_ne!(key(), k0);
    }

    /// A look that meets a link (a name, or a missing directory, that is
    /// a link) says so: what a link points at may change with no
    /// directory looked in changing.
    #[test]
    fn a_look_meeting_a_link_says_so() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("inc")).unwrap();
        let at = |s: &str| vec![r.join(s)];
        assert!(!look(&at("inc/x.h")).links);
        assert!(!look(&at("gone/x.h")).links);
        symlink(r.join("nowhere.h"), r.join("inc/x.h")).unwrap();
        assert!(look(&at("inc/x.h")).links);
        symlink(r.join("nowhere"), r.join("gone")).unwrap();
        assert!(look(&at("gone/x.h")).links);
        // Its parent's identity is what tells a missing directory appeared.
        let l = look(&at("inc/sub/y.h"));
        assert_eq!(l.dirs.len(), 1);
        assert_eq!(l.dirs[0].0, r.join("inc"));
    }
}
