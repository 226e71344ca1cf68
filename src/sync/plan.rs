/*!
The sync plan. Pure: what is local, what is remote, and the direction in;
the list of transfers out.
*/

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use crate::remote::{Listed, layout};

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
    pub(crate) crate_name: String,
    pub(crate) key: String,
    /// Remote object size for pulls; the entry's file sizes for pushes.
    pub(crate) size: u64,
}

/// A local entry: (crate, key).
pub(crate) type EntryId = (String, String);

/// What the remote holds, by crate: key -> object size.
pub(crate) type RemoteIndex = BTreeMap<String, BTreeMap<String, u64>>;

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
pub(crate) fn push_crates<'a>(local: impl IntoIterator<Item = &'a EntryId>) -> BTreeSet<String> {
    local.into_iter().map(|(c, _)| c.clone()).collect()
}

/// Folds listings into an index, ignoring foreign objects.
pub(crate) fn index(prefix: &str, listed: impl IntoIterator<Item = Listed>) -> RemoteIndex {
    let mut idx = RemoteIndex::new();
    for l in listed {
        if let Some((c, k)) = layout::parse_object(prefix, &l.name) {
            idx.entry(c).or_default().insert(k, l.size);
        }
    }
    idx
}

/// Remote objects not present locally, restricted to `filter` if given.
pub(crate) fn plan_pull(
    local: &HashSet<EntryId>,
    remote: &RemoteIndex,
    filter: Option<&BTreeSet<String>>,
) -> Vec<Transfer> {
    let mut out = Vec::new();
    for (c, keys) in remote {
        if filter.is_some_and(|f| !f.contains(c)) {
            continue;
        }
        for (k, &size) in keys {
            if local.contains(&(c.clone(), k.clone())) {
                continue;
            }
            out.push(Transfer {
                dir: Direction::Pull,
                crate_name: c.clone(),
                key: k.clone(),
                size,
            });
        }
    }
    out
}

/// Local entries the remote lacks. `sizes` gives each entry's size.
pub(crate) fn plan_push(local: &[(EntryId, u64)], remote: &RemoteIndex) -> Vec<Transfer> {
    let mut out: Vec<Transfer> = local
        .iter()
        .filter(|((c, k), _)| !remote.get(c).is_some_and(|keys| keys.contains_key(k)))
        .map(|((c, k), size)| Transfer {
            dir: Direction::Push,
            crate_name: c.clone(),
            key: k.clone(),
            size: *size,
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

    fn k(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn listed(prefix: &str, c: &str, key: &str, size: u64) -> Listed {
        Listed {
            name: layout::object_name(prefix, c, key),
            size,
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
                },
            ],
        );
        let local: HashSet<EntryId> = [("serde".to_string(), k('a'))].into_iter().collect();
        let filter: BTreeSet<String> = ["serde".to_string()].into_iter().collect();
        let plan = plan_pull(&local, &remote, Some(&filter));
        assert_eq!(
            plan,
            vec![Transfer {
                dir: Direction::Pull,
                crate_name: "serde".into(),
                key: k('b'),
                size: 20
            }]
        );
        let all = plan_pull(&local, &remote, None);
        assert_eq!(all.len(), 2);
        assert_eq!(totals(&all, Direction::Pull), (2, 50));
        assert_eq!(totals(&all, Direction::Push), (0, 0));
    }

    #[test]
    fn push_skips_what_remote_has() {
        let remote = index("p", vec![listed("p", "serde", &k('a'), 10)]);
        let local = vec![
            (("serde".to_string(), k('a')), 100),
            (("serde".to_string(), k('b')), 200),
            (("foo".to_string(), k('c')), 300),
        ];
        let plan = plan_push(&local, &remote);
        let keys: Vec<_> = plan
            .iter()
            .map(|t| (t.crate_name.as_str(), t.size))
            .collect();
        assert_eq!(keys, vec![("foo", 300), ("serde", 200)]);
        assert!(plan.iter().all(|t| t.dir == Direction::Push));
        let crates = push_crates(local.iter().map(|(id, _)| id));
        assert_eq!(crates.into_iter().collect::<Vec<_>>(), vec!["foo", "serde"]);
    }

    #[test]
    fn prefixes_per_crate() {
        let f: BTreeSet<String> = ["a".to_string(), "b".to_string()].into_iter().collect();
        assert_eq!(pull_prefixes("x", Some(&f)), vec!["x/a/", "x/b/"]);
        assert_eq!(pull_prefixes("x", None), vec!["x/"]);
        assert_eq!(pull_prefixes("", None), vec![""]);
    }
}
