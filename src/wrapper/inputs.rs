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
    let names = shadow_names(&s.source, headers, &s.search, s.forced, &s.probed).ok()?;
    let resolved: Vec<_> = names.iter().map(|f| paths.resolve(f)).collect();
    let mut present: Vec<(&String, &str)> = names
        .iter()
        .zip(probe.kinds(&resolved))
        .filter(|(_, kind)| *kind != "none")
        .collect();
    present.sort_unstable();
    present.dedup();
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
