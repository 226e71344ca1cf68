/*!
One pull, the same for `kache sync --pull` and the daemon's fetches:
plan what the store lacks and the filter keeps, record the use, then
download, verify and import on the pool.

The listing is the caller's (a sync lists the whole bucket or the
Cargo.lock's crates, the daemon one crate), and so is what becomes of
the outcomes (the sync's reporter, the daemon's counters and log).

The use record is written before anything is fetched, so a
`kache gc --remote` running meanwhile spares what is being pulled. A
read-only runner writes nothing to the bucket, use records included.
*/

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crossbeam_channel::Receiver;
use rayon::ThreadPool;
use rayon::prelude::*;

use super::exec::{self, Ctx};
use super::plan::{self, EntryId, Filtered, PullFilter, RemoteIndex, Transfer};
use super::report::Outcome;
use super::uses;
use crate::remote::Remote;

/// How one pull runs.
pub(crate) struct Pull<'a> {
    pub(crate) pool: &'a ThreadPool,
    /// The store, the remote (use records are written through it too),
    /// the bucket prefix and the trust policy that verifies.
    pub(crate) ctx: &'a Ctx<'a>,
    pub(crate) filter: &'a PullFilter,
    /// Leave out the entries that only their manifests tell apart and
    /// that were built against a dependency version `filter.versions`
    /// does not name (one ranged request each). Right when `versions` is
    /// a whole Cargo.lock, as for a sync; not when it names one crate,
    /// as a daemon fetch's does.
    pub(crate) check_deps: bool,
    /// Write a use record (not on a read-only runner).
    pub(crate) record_use: bool,
    /// Plan only: nothing is recorded or fetched.
    pub(crate) dry_run: bool,
}

/// What a pull planned.
pub(crate) struct Planned {
    /// What the filter left out, with the reason.
    pub(crate) filtered: Vec<Filtered>,
    /// On a dry run, what would be pulled; otherwise empty (the
    /// transfers ran, and their outcomes went to `consume`).
    pub(crate) unrun: Vec<Transfer>,
}

/// Plans the pull of what `idx` (the listing) holds and `local` (the
/// store) lacks, records the use and runs the transfers. `consume` reads
/// one outcome per transfer on a thread of its own, given the planned
/// (entries, bytes); it is not called when there is nothing to pull.
pub(crate) fn pull(
    p: &Pull<'_>,
    local: &HashSet<EntryId>,
    idx: &RemoteIndex,
    consume: impl FnOnce((u64, u64), &Receiver<Outcome>) + Send,
) -> Planned {
    let (mut pulls, mut filtered) = plan::plan_pull(local, idx, p.filter);
    if p.check_deps
        && let Some(versions) = &p.filter.versions
    {
        let unusable = built_against_other_versions(p.pool, p.ctx.remote, &pulls, idx, versions);
        pulls.retain(|t| {
            if unusable.contains(&(t.crate_name.clone(), t.key.clone())) {
                filtered.push(Filtered {
                    crate_name: t.crate_name.clone(),
                    key: t.key.clone(),
                    size: t.size,
                    reason: "built against a dependency version Cargo.lock does not name",
                });
                false
            } else {
                true
            }
        });
    }
    if p.dry_run {
        return Planned {
            filtered,
            unrun: pulls,
        };
    }
    if p.record_use {
        let used: Vec<EntryId> = pulls
            .iter()
            .map(|t| (t.crate_name.clone(), t.key.clone()))
            .collect();
        uses::record_use(p.ctx.remote, p.ctx.prefix, &used);
    }
    exec::run_with(p.pool, p.ctx, pulls, consume);
    Planned {
        filtered,
        unrun: Vec::new(),
    }
}

/// Of the pulls that only their manifests can tell apart (same crate,
/// version, target and toolchain), those built against a dependency
/// version the Cargo.lock does not name. Each manifest is read from the
/// first 64 KiB of its object (one ranged request, in parallel); an
/// object whose head cannot be read is kept (pulled, as before).
fn built_against_other_versions(
    pool: &ThreadPool,
    remote: &dyn Remote,
    pull: &[Transfer],
    idx: &RemoteIndex,
    versions: &BTreeMap<String, BTreeSet<String>>,
) -> HashSet<EntryId> {
    let ambiguous = plan::ambiguous(pull, idx);
    pool.install(|| {
        ambiguous
            .par_iter()
            .filter_map(|t| {
                let head = remote.get_head(&t.object, 64 << 10).ok()?;
                let e = crate::store::archive::peek_manifest(&head)?;
                let deps = e.origin.map(|o| o.deps).unwrap_or_default();
                (!plan::deps_usable(&deps, versions)).then(|| (t.crate_name.clone(), t.key.clone()))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::remote::dir::DirRemote;
    use crate::remote::{ErrorKind, Listed, RemoteError, layout};
    use crate::store::Entry;
    use crate::store::Store;
    use crate::store::entry::Origin;
    use crate::transfer::exec::tests::{ctx_on, pool, run_all, store_with};
    use crate::transfer::plan::{Direction, RemoteObject};

    /// A remote that serves the heads of chosen objects.
    struct Heads(HashMap<String, Vec<u8>>);

    impl Remote for Heads {
        fn list(&self, _: &str) -> Result<Vec<Listed>, RemoteError> {
            unreachable!("only heads are read")
        }
        fn get(&self, _: &str, _: &Path, _: u64) -> Result<u64, RemoteError> {
            unreachable!("only heads are read")
        }
        fn put(&self, _: &str, _: &Path, _: u64) -> Result<(), RemoteError> {
            unreachable!("only heads are read")
        }
        fn describe(&self, name: &str) -> String {
            format!("heads://{name}")
        }
        fn get_head(&self, name: &str, n: u64) -> Result<Vec<u8>, RemoteError> {
            let bytes = self
                .0
                .get(name)
                .ok_or_else(|| RemoteError::new(ErrorKind::NotFound, name))?;
            Ok(bytes[..bytes.len().min(usize::try_from(n).unwrap())].to_vec())
        }
    }

    fn origin(deps: &[&str]) -> Origin {
        Origin {
            version: "1.0.0".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            toolchain: "0123456789ab".into(),
            deps: deps.iter().map(|d| (*d).to_string()).collect(),
        }
    }

    /// The start of an archive: its manifest, the first member.
    fn head(crate_name: &str, key: &str, deps: &[&str]) -> Vec<u8> {
        let mut e = Entry::new(
            crate::store::ids::test::krate(crate_name),
            crate::store::ids::test::key(key),
            Vec::new(),
        );
        e.origin = Some(origin(deps));
        let json = serde_json::to_vec(&e).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(json.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "manifest.json", &json[..]).unwrap();
        zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
    }

    #[test]
    fn built_against_other_versions_reads_only_ambiguous_manifests() {
        let key = |c: char| crate::store::ids::test::key(&c.to_string().repeat(64));
        // foo has three entries of one version, target and toolchain: one
        // built against baz 1.0.0 (in Cargo.lock), one against baz 9.9.9
        // (not), one whose head cannot be read. bar has one entry, built
        // against baz 9.9.9 too, but nothing else could serve it.
        let pulls = [
            ("foo", key('1'), Some(&["baz@1.0.0"][..])),
            ("foo", key('2'), Some(&["baz@9.9.9"][..])),
            ("foo", key('3'), None),
            ("bar", key('4'), Some(&["baz@9.9.9"][..])),
        ];
        let mut idx = RemoteIndex::new();
        let mut heads = HashMap::new();
        let mut plan = Vec::new();
        for (c, k, deps) in &pulls {
            let object = format!("p/{c}/{k}.tar.zst");
            if let Some(deps) = deps {
                heads.insert(object.clone(), head(c, k, deps));
            }
            idx.entry(crate::store::ids::test::krate(c))
                .or_default()
                .insert(
                    k.clone(),
                    RemoteObject {
                        size: 10,
                        name: object.clone(),
                        origin: Some(origin(&[])),
                    },
                );
            plan.push(Transfer {
                dir: Direction::Pull,
                crate_name: crate::store::ids::test::krate(c),
                key: k.clone(),
                size: 10,
                object,
            });
        }
        let versions = BTreeMap::from([("baz".to_string(), BTreeSet::from(["1.0.0".to_string()]))]);
        let unusable =
            built_against_other_versions(&pool(2), &Heads(heads), &plan, &idx, &versions);
        let want: HashSet<EntryId> = [(crate::store::ids::test::krate("foo"), key('2'))].into();
        assert_eq!(unusable, want);
    }

    /// Pulls what `remote` holds under `p/` into `store` as `how` says;
    /// returns what was planned and the outcomes seen.
    fn pull_into(
        store: &Store,
        remote: &DirRemote,
        how: impl FnOnce(&mut Pull<'_>),
    ) -> (Planned, Vec<Outcome>) {
        let idx = plan::index("p", remote.list("p/").unwrap());
        let ctx = ctx_on(store, remote);
        let (pool, filter) = (pool(2), PullFilter::default());
        let mut p = Pull {
            pool: &pool,
            ctx: &ctx,
            filter: &filter,
            check_deps: false,
            record_use: true,
            dry_run: false,
        };
        how(&mut p);
        let mut seen = Vec::new();
        let planned = pull(&p, &HashSet::new(), &idx, |total, rx| {
            assert_eq!(total.0, 3);
            seen.extend(rx.iter());
        });
        (planned, seen)
    }

    fn use_records(remote: &DirRemote) -> usize {
        remote.list(&layout::uses_prefix("p")).unwrap().len()
    }

    #[test]
    fn pull_records_the_use_then_imports() {
        let (d, s, ts) = store_with(3);
        let remote = DirRemote::new(&d.path().join("bucket"));
        assert_eq!(run_all(&ctx_on(&s, &remote), &pool(2), ts).len(), 3);
        assert_eq!(use_records(&remote), 0);

        // A dry run plans and touches nothing.
        let fresh = Store::open(&d.path().join("dry")).unwrap();
        let (planned, seen) = pull_into(&fresh, &remote, |p| p.dry_run = true);
        assert_eq!(planned.unrun.len(), 3);
        assert!(seen.is_empty() && fresh.list().unwrap().is_empty());
        assert_eq!(use_records(&remote), 0);

        // A read-only runner imports but writes no use record.
        let ro = Store::open(&d.path().join("ro")).unwrap();
        let (planned, seen) = pull_into(&ro, &remote, |p| p.record_use = false);
        assert!(planned.unrun.is_empty());
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|o| matches!(o, Outcome::Done(..))));
        assert_eq!(ro.list().unwrap().len(), 3);
        assert_eq!(use_records(&remote), 0);

        // Otherwise one use record, then the entries.
        let rw = Store::open(&d.path().join("rw")).unwrap();
        let (_, seen) = pull_into(&rw, &remote, |_| {});
        assert_eq!(seen.len(), 3);
        assert_eq!(rw.list().unwrap().len(), 3);
        assert_eq!(use_records(&remote), 1);
    }
}
