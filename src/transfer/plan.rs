/*!
The sync plan. Pure: what is local, what is remote, and the direction in;
the list of transfers out.
*/

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use crate::remote::{Listed, layout};
use crate::store::entry::Origin;
use crate::store::{CacheKey, CrateName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    Pull,
    Push,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Pull => "pull",
            Direction::Push => "push",
        }
    }
}

/// One entry to move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Transfer {
    #[serde(rename = "direction")]
    pub(crate) dir: Direction,
    #[serde(rename = "crate")]
    pub(crate) crate_name: CrateName,
    pub(crate) key: CacheKey,
    /// Remote object size for pulls; the entry's file sizes for pushes.
    pub(crate) size: u64,
    /// The object name in the bucket.
    pub(crate) object: String,
}

/// One listed entry object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RemoteObject {
    pub(crate) size: u64,
    pub(crate) name: String,
    pub(crate) origin: Option<Origin>,
}

/// What a pull keeps: the crates of Cargo.lock and their versions, and
/// the local toolchain. `None` fields keep everything.
#[derive(Clone, Debug, Default)]
pub(crate) struct PullFilter {
    pub(crate) crates: Option<BTreeSet<String>>,
    /// Crate -> versions named in Cargo.lock.
    pub(crate) versions: Option<BTreeMap<String, BTreeSet<String>>>,
    /// The toolchain id of the compiler this workspace builds with.
    pub(crate) toolchain: Option<String>,
}

/// An entry a pull leaves out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Filtered {
    #[serde(rename = "crate")]
    pub(crate) crate_name: CrateName,
    pub(crate) key: CacheKey,
    pub(crate) size: u64,
    pub(crate) reason: &'static str,
}

/// Why a pull leaves out an entry of this origin, if it does.
fn filtered_out(f: &PullFilter, crate_name: &str, origin: Option<&Origin>) -> Option<&'static str> {
    let o = origin?;
    if f.toolchain.as_ref().is_some_and(|t| *t != o.toolchain) {
        return Some("another toolchain");
    }
    let versions = f.versions.as_ref()?.get(crate_name)?;
    (o.version != "_" && !versions.contains(&o.version))
        .then_some("a version Cargo.lock does not name")
}

/// A local entry: (crate, key).
pub(crate) type EntryId = (CrateName, CacheKey);

/// What the remote holds, by crate: key -> object.
pub(crate) type RemoteIndex = BTreeMap<CrateName, BTreeMap<CacheKey, RemoteObject>>;

/// Which crate prefixes a pull lists: `None` = the whole prefix (no
/// filter), else one per crate.
pub(crate) fn pull_prefixes(prefix: &str, filter: Option<&BTreeSet<String>>) -> Vec<String> {
    match filter {
        None => vec![layout::root_prefix(prefix)],
        Some(set) => set
            .iter()
            .map(|c| layout::crate_prefix(prefix, c))
            .collect(),
    }
}

/// The crates a push lists: those with local entries, each once.
pub(crate) fn push_crates<'a>(local: impl IntoIterator<Item = &'a EntryId>) -> BTreeSet<CrateName> {
    local.into_iter().map(|(c, _)| c.clone()).collect()
}

/// Folds listings into an index, ignoring foreign objects.
pub(crate) fn index(prefix: &str, listed: impl IntoIterator<Item = Listed>) -> RemoteIndex {
    let mut idx = RemoteIndex::new();
    for l in listed {
        if let Some(p) = layout::parse(prefix, &l.name) {
            idx.entry(p.crate_name).or_default().insert(
                p.key,
                RemoteObject {
                    size: l.size,
                    name: l.name,
                    origin: p.origin,
                },
            );
        }
    }
    idx
}

/// Whether an entry built against `deps` (`name@version`) can serve a
/// build of this Cargo.lock: every one of them is named there at that
/// version.
pub(crate) fn deps_usable(deps: &[String], versions: &BTreeMap<String, BTreeSet<String>>) -> bool {
    deps.iter().all(|d| {
        d.rsplit_once('@').is_some_and(|(n, v)| {
            versions
                .get(&crate::store::normalize_crate(n))
                .is_some_and(|vs| vs.contains(v))
        })
    })
}

/// The pulls that share their crate, version, target and toolchain with
/// another: only their manifests can tell them apart.
pub(crate) fn ambiguous<'a>(plan: &'a [Transfer], remote: &RemoteIndex) -> Vec<&'a Transfer> {
    let origin = |t: &Transfer| {
        remote
            .get(&t.crate_name)
            .and_then(|k| k.get(&t.key))
            .and_then(|o| o.origin.clone())
            .map(|o| (t.crate_name.clone(), o.version, o.target, o.toolchain))
    };
    let mut count: BTreeMap<(CrateName, String, String, String), usize> = BTreeMap::new();
    for t in plan {
        if let Some(g) = origin(t) {
            *count.entry(g).or_default() += 1;
        }
    }
    plan.iter()
        .filter(|t| origin(t).is_some_and(|g| count[&g] > 1))
        .collect()
}

/// Remote objects not present locally that the filter keeps, and those
/// it leaves out (with the reason).
pub(crate) fn plan_pull(
    local: &HashSet<EntryId>,
    remote: &RemoteIndex,
    filter: &PullFilter,
) -> (Vec<Transfer>, Vec<Filtered>) {
    let mut out = Vec::new();
    let mut left = Vec::new();
    for (c, keys) in remote {
        if filter
            .crates
            .as_ref()
            .is_some_and(|f| !f.contains(c.as_str()))
        {
            continue;
        }
        for (k, o) in keys {
            if local.contains(&(c.clone(), k.clone())) {
                continue;
            }
            if let Some(reason) = filtered_out(filter, c, o.origin.as_ref()) {
                left.push(Filtered {
                    crate_name: c.clone(),
                    key: k.clone(),
                    size: o.size,
                    reason,
                });
                continue;
            }
            out.push(Transfer {
                dir: Direction::Pull,
                crate_name: c.clone(),
                key: k.clone(),
                size: o.size,
                object: o.name.clone(),
            });
        }
    }
    (out, left)
}

/// Local entries the remote lacks (under either name), each with its
/// size and object name.
pub(crate) fn plan_push(local: &[(EntryId, u64, String)], remote: &RemoteIndex) -> Vec<Transfer> {
    let mut out: Vec<Transfer> = local
        .iter()
        .filter(|((c, k), _, _)| !remote.get(c).is_some_and(|keys| keys.contains_key(k)))
        .map(|((c, k), size, object)| Transfer {
            dir: Direction::Push,
            crate_name: c.clone(),
            key: k.clone(),
            size: *size,
            object: object.clone(),
        })
        .collect();
    out.sort_by(|a, b| (&a.crate_name, &a.key).cmp(&(&b.crate_name, &b.key)));
    out.dedup();
    out
}

/// Entries and bytes of a list of transfers in one direction.
pub(crate) fn totals(plan: &[Transfer], dir: Direction) -> (u64, u64) {
    plan.iter()
        .filter(|t| t.dir == dir)
        .fold((0, 0), |(n, b), t| (n + 1, b + t.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::ids::test::krate;

    fn k(c: char) -> CacheKey {
        crate::store::ids::test::key(&c.to_string().repeat(64))
    }

    fn listed(prefix: &str, c: &str, key: &str, size: u64) -> Listed {
        Listed {
            name: layout::object_name(prefix, c, key),
            size,
            modified: None,
        }
    }

    #[test]
    fn pull_filters_and_skips_local() {
        let remote = index(
            "p",
            vec![
                listed("p", "serde", &k('a'), 10),
                listed("p", "serde", &k('b'), 20),
                listed("p", "other", &k('c'), 30),
                Listed {
                    name: "p/README".into(),
                    size: 1,
                    modified: None,
                },
            ],
        );
        let local: HashSet<EntryId> = [(krate("serde"), k('a'))].into_iter().collect();
        let filter = PullFilter {
            crates: Some(["serde".to_string()].into_iter().collect()),
            ..PullFilter::default()
        };
        let (plan, left) = plan_pull(&local, &remote, &filter);
        assert!(left.is_empty());
        assert_eq!(
            plan,
            vec![Transfer {
                dir: Direction::Pull,
                crate_name: krate("serde"),
                key: k('b'),
                size: 20,
                object: layout::object_name("p", "serde", &k('b')),
            }]
        );
        let (all, _) = plan_pull(&local, &remote, &PullFilter::default());
        assert_eq!(all.len(), 2);
        assert_eq!(totals(&all, Direction::Pull), (2, 50));
        assert_eq!(totals(&all, Direction::Push), (0, 0));
    }

    #[test]
    fn push_skips_what_remote_has() {
        let remote = index("p", vec![listed("p", "serde", &k('a'), 10)]);
        let local = vec![
            ((krate("serde"), k('a')), 100, String::new()),
            ((krate("serde"), k('b')), 200, String::new()),
            ((krate("foo"), k('c')), 300, String::new()),
        ];
        let plan = plan_push(&local, &remote);
        let keys: Vec<_> = plan
            .iter()
            .map(|t| (t.crate_name.as_str(), t.size))
            .collect();
        assert_eq!(keys, vec![("foo", 300), ("serde", 200)]);
        assert!(plan.iter().all(|t| t.dir == Direction::Push));
        let crates = push_crates(local.iter().map(|(id, _, _)| id));
        assert_eq!(crates.into_iter().collect::<Vec<_>>(), vec!["foo", "serde"]);
    }

    #[test]
    fn pull_leaves_out_other_toolchains_and_versions() {
        let o = |v: &str, tc: &str| Origin {
            version: v.into(),
            target: "x86_64-unknown-linux-gnu".into(),
            toolchain: tc.into(),
            deps: Vec::new(),
        };
        let long = |c: &str, key: &str, size: u64, or: &Origin| Listed {
            name: layout::entry_object("p", c, key, Some(or)),
            size,
            modified: None,
        };
        let remote = index(
            "p",
            vec![
                long("serde", &k('a'), 10, &o("1.0.0", "aaaa")),
                long("serde", &k('b'), 20, &o("1.0.0", "bbbb")),
                long("serde", &k('c'), 30, &o("0.9.0", "aaaa")),
                listed("p", "serde", &k('d'), 40),
            ],
        );
        let filter = PullFilter {
            crates: Some(["serde".to_string()].into_iter().collect()),
            versions: Some(
                [(
                    "serde".to_string(),
                    ["1.0.0".to_string()].into_iter().collect(),
                )]
                .into_iter()
                .collect(),
            ),
            toolchain: Some("aaaa".into()),
        };
        let (plan, left) = plan_pull(&HashSet::new(), &remote, &filter);
        let keys: Vec<&str> = plan.iter().map(|t| &t.key[..1]).collect();
        // The short (kache 0.1) name carries no origin: kept.
        assert_eq!(keys, vec!["a", "d"]);
        let why: Vec<(&str, &str)> = left.iter().map(|f| (&f.key[..1], f.reason)).collect();
        assert_eq!(
            why,
            vec![
                ("b", "another toolchain"),
                ("c", "a version Cargo.lock does not name")
            ]
        );
        // --all keeps everything.
        assert_eq!(
            plan_pull(&HashSet::new(), &remote, &PullFilter::default())
                .0
                .len(),
            4
        );
    }

    #[test]
    fn dependency_versions() {
        let lock: BTreeMap<String, BTreeSet<String>> = [
            (
                "alpha".to_string(),
                ["0.1.0".to_string()].into_iter().collect(),
            ),
            (
                "serde_json".to_string(),
                ["1.0.1".to_string()].into_iter().collect(),
            ),
        ]
        .into_iter()
        .collect();
        assert!(deps_usable(
            &["alpha@0.1.0".into(), "serde-json@1.0.1".into()],
            &lock
        ));
        assert!(!deps_usable(&["alpha@0.2.0".into()], &lock));
        assert!(!deps_usable(&["gamma@1.0.0".into()], &lock));
        assert!(deps_usable(&[], &lock));
    }

    #[test]
    fn prefixes_per_crate() {
        let f: BTreeSet<String> = ["a".to_string(), "b".to_string()].into_iter().collect();
        assert_eq!(pull_prefixes("x", Some(&f)), vec!["x/a/", "x/b/"]);
        assert_eq!(pull_prefixes("x", None), vec!["x/"]);
        assert_eq!(pull_prefixes("", None), vec![""]);
    }
}
