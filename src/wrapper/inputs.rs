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

use super::explain::{Explain, UNSET};
use super::hasher::KeyHasher;
use super::paths::Paths;
use super::probe::Probe;
use crate::store::CacheKey;
use crate::store::entry::Inputs;

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
        // What is there: a file that appeared, but also a directory.
        let here = match probe.kind(&paths.resolve(f)) {
            "file" => "yes",
            "none" => "no",
            k => k,
        };
        h.field("exists", here);
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
