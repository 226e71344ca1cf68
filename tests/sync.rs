//! `kache sync` against a real S3 server (s3s-fs in-process, or the
//! external one named by `KACHE_TEST_S3`_*), through a fault-injecting
//! proxy where the test needs one.
//!
//! This file holds the helpers the sync tests share and the basics: push
//! and pull round trips, following Cargo.lock, `--dry-run`, paged
//! listings, the concurrency bound, retried and failing objects,
//! credentials and missing settings, progress output, and the CI recipe
//! with real cargo builds. By topic:
//!
//! - `reliability`: faults, bad objects, crashes, concurrency, full disk,
//!   bad settings, and the soak run by `ci/soak.sh`;
//! - `partial`: no all-or-nothing failures (issue 9 §3);
//! - `filters`: pull only what the build can use (issue 9 §2);
//! - `retention`: retention in the bucket by last use (issue 9 §1);
//! - `bench`: the benchmarks, ignored, run by name by the `ci/` scripts.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use std::time::{Duration, Instant};

use crate::common::{
    World, cargo_through_kache, copy_tree, kache, ok, put_entry, run_checked, show, stderr, stdout,
};
use crate::s3server::{Fault, Proxy};

mod bench;
mod filters;
mod partial;
mod reliability;
mod retention;

impl World {
    /// A workspace dir with a Cargo.lock naming `packages`.
    fn workspace(&self, name: &str, packages: &[&str]) -> PathBuf {
        let d = self.tmp.path().join(name);
        fs::create_dir_all(d.join("src")).unwrap();
        fs::write(
            d.join("Cargo.toml"),
            "[package]\nname = \"ws\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        let mut lock = String::from("version = 3\n");
        for p in packages {
            lock.push_str("\n[[package]]\nname = \"");
            lock.push_str(p);
            lock.push_str("\"\nversion = \"0.1.0\"\n");
        }
        fs::write(d.join("Cargo.lock"), lock).unwrap();
        d
    }

    /// A directory with no Cargo.lock anywhere above (checked).
    fn no_workspace(&self) -> PathBuf {
        let d = self.tmp.path().join("nowhere");
        fs::create_dir_all(&d).unwrap();
        assert!(
            d.ancestors().all(|a| !a.join("Cargo.lock").exists()),
            "a Cargo.lock above the temp dir spoils the test"
        );
        d
    }

    fn sync(&self, cache: &Path, cwd: &Path, args: &[&str]) -> Output {
        self.sync_via(None, cache, cwd, args, &[])
    }

    fn sync_via(
        &self,
        proxy: Option<&Proxy>,
        cache: &Path,
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut c = kache(cache);
        match proxy {
            Some(p) => self.s3.configure_at(&mut c, &p.endpoint),
            None => self.s3.configure(&mut c),
        }
        c.env("KACHE_PROGRESS", "0");
        for (k, v) in env {
            c.env(k, v);
        }
        c.current_dir(cwd).arg("sync").args(args);
        run_checked(&mut c)
    }
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(o)))
}

/// (crate, key) of every entry in a cache dir.
fn entries(cache: &Path) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let Ok(rd) = fs::read_dir(cache.join("entries")) else {
        return out;
    };
    for c in rd.flatten() {
        for e in fs::read_dir(c.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(k) = name.strip_suffix(".json") {
                out.insert((c.file_name().to_string_lossy().to_string(), k.to_string()));
            }
        }
    }
    out
}

/// Every blob file (name -> bytes) of a cache dir.
fn blobs(cache: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(cache.join("blobs")) else {
        return out;
    };
    for d in rd.flatten() {
        for f in fs::read_dir(d.path()).unwrap().flatten() {
            out.push((
                f.file_name().to_string_lossy().to_string(),
                fs::read(f.path()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

fn manifest(cache: &Path, c: &str, k: &str) -> serde_json::Value {
    let p = cache.join("entries").join(c).join(format!("{k}.json"));
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

/// Fills a cache with `n` small entries spread over `crates`.
fn fill(cache: &Path, crates: &[&str], n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let c = crates[i % crates.len()];
            let body = format!("rlib {c} {i} ").repeat(50 + i);
            let k = put_entry(
                cache,
                c,
                &format!("seed{i}"),
                &[
                    (&format!("lib{c}.rlib"), body.as_bytes()),
                    (&format!("lib{c}.rmeta"), &body.as_bytes()[..100]),
                ],
            );
            (c.to_string(), k)
        })
        .collect()
}

/// `kache gc --verify --json` on a cache: nothing corrupt, nothing
/// removed. Returns the report.
fn verify(cache: &Path) -> serde_json::Value {
    let mut c = kache(cache);
    c.args(["gc", "--verify", "--json"]);
    let o = run_checked(&mut c);
    ok(&o);
    let j = json(&o);
    assert_eq!(j["corrupt_blobs"], 0, "{}", show(&o));
    assert_eq!(j["entries_removed"], 0, "{}", show(&o));
    j
}

/// The entries `kache list --json` shows.
fn listed(cache: &Path) -> usize {
    let mut c = kache(cache);
    c.args(["list", "--json"]);
    let o = run_checked(&mut c);
    ok(&o);
    json(&o).as_array().map_or(0, Vec::len)
}

/// Gaps between the successive requests for paths containing `needle`.
fn gaps(proxy: &Proxy, needle: &str) -> Vec<Duration> {
    let at: Vec<Instant> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.path.contains(needle))
        .map(|s| s.at)
        .collect();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn push_then_pull_round_trip() {
    let w = World::new();
    let a = w.cache("a");
    let made: BTreeSet<_> = fill(&a, &["foo_lib", "bar", "ws"], 6).into_iter().collect();
    let nowhere = w.no_workspace();

    let o = w.sync(&a, &nowhere, &["--push"]);
    ok(&o);
    let out = stdout(&o);
    assert!(out.contains("pushed        6 entries"), "{}", show(&o));
    assert!(out.contains("failed        0 entries"), "{}", show(&o));
    if let Some(objs) = w.s3.objects() {
        assert_eq!(objs.len(), 6, "{objs:?}");
        assert!(objs.iter().all(|o| o.ends_with(".tar.zst")));
    }

    // Objects are immutable: a second push uploads nothing.
    let o = w.sync(&a, &nowhere, &["--push", "--json"]);
    ok(&o);
    assert_eq!(json(&o)["pushed"]["entries"], 0, "{}", show(&o));

    // Pull into an empty cache, filtered by a Cargo.lock naming both.
    let ws = w.workspace("ws", &["foo-lib", "bar", "ws"]);
    let b = w.cache("b");
    let o = w.sync(&b, &ws, &["--pull", "--json"]);
    ok(&o);
    let j = json(&o);
    assert_eq!(j["pulled"]["entries"], 6, "{}", show(&o));
    assert_eq!(j["failed"]["entries"], 0);
    assert!(j["seconds"].as_f64().is_some());
    assert_eq!(entries(&b), made);
    assert_eq!(blobs(&a), blobs(&b));
    for (c, k) in &made {
        // The same manifest, plus the pull's provenance (unverified: no
        // trusted keys are set) and the salt its values were keyed with
        // for the upload (these entries have none).
        let mut pulled = manifest(&b, c, k);
        let p = pulled.as_object_mut().unwrap().remove("pulled").unwrap();
        assert!(
            p["at"].as_u64().is_some() && p.get("signed_by").is_none(),
            "{p}"
        );
        let salt = pulled.as_object_mut().unwrap().remove("salt").unwrap();
        assert_eq!(salt.as_str().map(str::len), Some(64), "{salt}");
        assert_eq!(manifest(&a, c, k), pulled);
    }
    assert!(
        fs::read_dir(b.join("tmp")).unwrap().next().is_none(),
        "temp files left behind"
    );

    // Nothing left to do: success, nothing moved.
    let o = w.sync(&b, &ws, &[]);
    ok(&o);
    assert!(
        stdout(&o).contains("pulled        0 entries"),
        "{}",
        show(&o)
    );
    assert!(
        stdout(&o).contains("pushed        0 entries"),
        "{}",
        show(&o)
    );
}

#[test]
fn pull_follows_cargo_lock() {
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    let a = w.cache("a");
    // `ws_build` stands for a package's build-script entries, stored
    // under the package name: pulled only when the lockfile names it.
    let made = fill(&a, &["serde_json", "unrelated", "ws_build"], 6);
    let nowhere = w.no_workspace();
    ok(&w.sync_via(Some(&proxy), &a, &nowhere, &["--push"], &[]));
    // A push lists only the crate prefixes it pushes.
    let lists: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter_map(|s| s.list_prefix)
        .collect();
    let want: BTreeSet<String> = ["serde_json", "unrelated", "ws_build"]
        .iter()
        .map(|c| format!("{}/{c}/", w.s3.prefix))
        .collect();
    assert_eq!(lists.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(lists.len(), 3, "{lists:?}");

    // The workspace uses serde-json only: `unrelated` is neither listed
    // nor pulled.
    let ws = w.workspace("ws", &["serde-json", "anyhow", "ws-build"]);
    let b = w.cache("b");
    proxy.reset_stats();
    let o = w.sync_via(Some(&proxy), &b, &ws, &["--pull"], &[]);
    ok(&o);
    let got: BTreeSet<String> = entries(&b).into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        got,
        ["serde_json", "ws_build"]
            .iter()
            .map(ToString::to_string)
            .collect()
    );
    let seen = proxy.seen();
    assert!(
        seen.iter().all(|s| !s.path.contains("unrelated")
            && s.list_prefix
                .as_deref()
                .is_none_or(|p| !p.contains("unrelated") && p != format!("{}/", w.s3.prefix))),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.list_prefix.as_deref() == Some(&format!("{}/anyhow/", w.s3.prefix))),
        "one listing per lockfile crate: {seen:?}"
    );

    // --manifest-path from elsewhere does the same.
    let c = w.cache("c");
    let o = w.sync(
        &c,
        &nowhere,
        &[
            "--pull",
            "--manifest-path",
            ws.join("Cargo.toml").to_str().unwrap(),
        ],
    );
    ok(&o);
    assert_eq!(entries(&c), entries(&b));
    // ... also from a member crate's subdirectory (found walking up).
    let member = ws.join("crates/m");
    fs::create_dir_all(&member).unwrap();
    fs::write(member.join("Cargo.toml"), "[package]\nname = \"m\"\n").unwrap();
    let c2 = w.cache("c2");
    ok(&w.sync(&c2, &member, &["--pull"]));
    assert_eq!(entries(&c2), entries(&b));

    // --all ignores the Cargo.lock.
    let d = w.cache("d");
    ok(&w.sync(&d, &ws, &["--pull", "--all"]));
    assert_eq!(entries(&d), made.iter().cloned().collect());

    // No Cargo.lock: says so, pulls everything.
    let e = w.cache("e");
    let o = w.sync(&e, &nowhere, &["--pull"]);
    ok(&o);
    assert!(stderr(&o).contains("no Cargo.lock found"), "{}", show(&o));
    assert_eq!(entries(&e).len(), 6);

    // A malformed Cargo.lock is a clear error naming it.
    let bad = w.tmp.path().join("bad");
    fs::create_dir_all(&bad).unwrap();
    fs::write(bad.join("Cargo.lock"), "[[package]\nname=").unwrap();
    let o = w.sync(&w.cache("f"), &bad, &["--pull"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stderr(&o).contains("malformed") && stderr(&o).contains("Cargo.lock"),
        "{}",
        show(&o)
    );
    assert!(stderr(&o).starts_with("error: "), "{}", show(&o));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", show(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn plain_sync_pulls_then_pushes_listing_each_crate_once() {
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    let nowhere = w.no_workspace();
    let a = w.cache("a");
    fill(&a, &["alpha"], 2);
    ok(&w.sync(&a, &nowhere, &["--push"]));

    let b = w.cache("b");
    fill(&b, &["gamma", "delta"], 4);
    let ws = w.workspace("ws", &["alpha", "gamma"]);
    let o = w.sync_via(Some(&proxy), &b, &ws, &["--json"], &[]);
    ok(&o);
    let j = json(&o);
    assert_eq!(j["pulled"]["entries"], 2, "{}", show(&o));
    assert_eq!(j["pushed"]["entries"], 4, "{}", show(&o));
    let mut lists: Vec<String> = proxy
        .seen()
        .into_iter()
        .filter_map(|s| s.list_prefix)
        .collect();
    lists.sort();
    let p = &w.s3.prefix;
    let mut want: Vec<String> = ["alpha", "delta", "gamma"]
        .iter()
        .map(|c| format!("{p}/{c}/"))
        .collect();
    want.sort();
    assert_eq!(
        lists, want,
        "each crate prefix listed once, the bucket never"
    );
    // Everything is in place now: a second run moves nothing.
    proxy.reset_stats();
    let o = w.sync_via(Some(&proxy), &b, &ws, &["--json"], &[]);
    ok(&o);
    let j = json(&o);
    assert_eq!(j["pulled"]["entries"], 0);
    assert_eq!(j["pushed"]["entries"], 0);
    assert!(
        proxy
            .seen()
            .iter()
            .all(|s| s.method == "GET" && s.list_prefix.is_some())
    );
}

#[test]
fn dry_run_changes_nothing() {
    let w = World::new();
    let a = w.cache("a");
    let nowhere = w.no_workspace();
    fill(&a, &["alpha", "beta"], 4);
    ok(&w.sync(&a, &nowhere, &["--push"]));
    // Now: b has two entries of its own and lacks a's four.
    let b = w.cache("b");
    let own = fill(&b, &["gamma"], 2);
    let before_local = entries(&b);
    let before_blobs = blobs(&b);
    let before_remote = w.s3.objects();

    let o = w.sync(&b, &nowhere, &["--dry-run"]);
    ok(&o);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("pull ")).count(),
        4,
        "{out}"
    );
    let pushes: Vec<&&str> = lines.iter().filter(|l| l.starts_with("push ")).collect();
    assert_eq!(pushes.len(), 2, "{out}");
    for (c, k) in &own {
        assert!(
            pushes
                .iter()
                .any(|l| l.contains(c.as_str()) && l.contains(&k[..12]) && !l.contains(&k[..13])),
            "{out}"
        );
    }
    assert!(out.contains("would pull 4 entries"), "{out}");
    assert!(out.contains("push 2 entries"), "{out}");
    assert_eq!(entries(&b), before_local);
    assert_eq!(blobs(&b), before_blobs);
    assert_eq!(w.s3.objects(), before_remote);

    // --json: the plan, with exact sizes.
    let o = w.sync(&b, &nowhere, &["--dry-run", "--json"]);
    ok(&o);
    let j = json(&o);
    let t = j["transfers"].as_array().unwrap();
    assert_eq!(t.len(), 6);
    assert_eq!(j["pull"]["entries"], 4);
    assert_eq!(j["push"]["entries"], 2);
    // Push sizes are the entries' file sizes.
    let push_bytes: u64 = own
        .iter()
        .map(|(c, k)| {
            manifest(&b, c, k)["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["size"].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(j["push"]["bytes"], push_bytes);
    assert!(t.iter().all(|x| x["key"].as_str().unwrap().len() == 64));

    // A dry run against a cache dir that does not exist creates nothing.
    let ghost = w.cache("ghost");
    ok(&w.sync(&ghost, &nowhere, &["--dry-run", "--pull"]));
    assert!(!ghost.exists());
}

#[test]
fn listing_pages_past_a_thousand_objects() {
    // Needs the bucket's files (or session tokens): always the
    // in-process server, even when an external one is configured.
    let w = World::local();
    let dir =
        w.s3.object_file(&format!("{}/many/x", w.s3.prefix))
            .unwrap();
    let dir = dir.parent().unwrap();
    fs::create_dir_all(dir).unwrap();
    for i in 0..1100u32 {
        let key = blake3::hash(&i.to_le_bytes()).to_hex().to_string();
        fs::write(dir.join(format!("{key}.tar.zst")), b"x").unwrap();
    }
    let proxy = Proxy::start(&w.s3.endpoint);
    let nowhere = w.no_workspace();
    let o = w.sync_via(
        Some(&proxy),
        &w.cache("a"),
        &nowhere,
        &["--pull", "--all", "--dry-run", "--json"],
        &[],
    );
    ok(&o);
    let j = json(&o);
    assert_eq!(j["transfers"].as_array().unwrap().len(), 1100);
    assert_eq!(j["pull"]["bytes"], 1100);
    let lists = proxy
        .seen()
        .iter()
        .filter(|s| s.list_prefix.is_some())
        .count();
    assert_eq!(lists, 2, "two pages of at most 1000");
}

fn concurrency_case(conc: Option<usize>, expect: usize) {
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    proxy.set_delay(Duration::from_millis(120));
    let a = w.cache("a");
    let crates = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
    let n = (expect * 2).max(8);
    fill(&a, &crates, n);
    let nowhere = w.no_workspace();
    let conc_s = conc.map(|c| c.to_string());
    let env: Vec<(&str, &str)> = conc_s
        .as_deref()
        .map(|c| vec![("KACHE_S3_CONCURRENCY", c)])
        .unwrap_or_default();
    let o = w.sync_via(Some(&proxy), &a, &nowhere, &["--push"], &env);
    ok(&o);
    assert_eq!(
        proxy.max_inflight(),
        expect,
        "push at concurrency {expect}: {}",
        show(&o)
    );
    proxy.reset_stats();
    let o = w.sync_via(Some(&proxy), &w.cache("b"), &nowhere, &["--pull"], &env);
    ok(&o);
    assert!(
        stdout(&o).contains(&format!("pulled {n:>8} entries")),
        "{}",
        show(&o)
    );
    assert_eq!(proxy.max_inflight(), expect, "pull at concurrency {expect}");
}

#[test]
fn concurrency_bound_1() {
    concurrency_case(Some(1), 1);
}

#[test]
fn concurrency_bound_4() {
    concurrency_case(Some(4), 4);
}

#[test]
fn concurrency_bound_default_16() {
    concurrency_case(None, 16);
}

#[test]
fn transient_faults_are_retried() {
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    let a = w.cache("a");
    let nowhere = w.no_workspace();
    let made: BTreeSet<_> = fill(&a, &["foo", "bar"], 4).into_iter().collect();
    proxy.fail_next([
        Fault::Status(503, "SlowDown"),
        Fault::Status(500, "InternalError"),
        Fault::Status(429, "TooManyRequests"),
        Fault::Cut,
        Fault::Status(503, "SlowDown"),
    ]);
    let o = w.sync_via(
        Some(&proxy),
        &a,
        &nowhere,
        &["--push"],
        &[("KACHE_S3_CONCURRENCY", "2")],
    );
    ok(&o);
    assert_eq!(proxy.pending_faults(), 0);
    assert!(
        stdout(&o).contains("pushed        4 entries"),
        "{}",
        show(&o)
    );

    // The listing, then the downloads.
    proxy.fail_next([Fault::Status(500, "InternalError"), Fault::Truncate]);
    proxy.fail_next_where(
        ".tar.zst",
        [
            Fault::Truncate,
            Fault::Status(503, "SlowDown"),
            Fault::Cut,
            Fault::Truncate,
        ],
    );
    let b = w.cache("b");
    let o = w.sync_via(
        Some(&proxy),
        &b,
        &nowhere,
        &["--pull"],
        &[("KACHE_S3_CONCURRENCY", "2")],
    );
    ok(&o);
    assert_eq!(proxy.pending_faults(), 0);
    assert_eq!(entries(&b), made);
    assert_eq!(blobs(&a), blobs(&b));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        !all.contains("X-Amz") && !all.contains(&w.s3.secret_key),
        "{all}"
    );
}

#[test]
fn a_failing_object_fails_the_sync_unless_partial_is_allowed() {
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    let a = w.cache("a");
    let nowhere = w.no_workspace();
    let made = fill(&a, &["foo"], 5);
    ok(&w.sync(&a, &nowhere, &["--push"]));
    let (_, bad_key) = &made[2];
    proxy.fail_matching(bad_key, Fault::Status(500, "InternalError"));

    let b = w.cache("b");
    let t = Instant::now();
    let o = w.sync_via(Some(&proxy), &b, &nowhere, &["--pull"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(entries(&b).len(), 4, "the others still arrive");
    assert!(stdout(&o).contains("failed        1 entry"), "{}", show(&o));
    let err = stderr(&o);
    assert!(err.contains(&bad_key[..12]) && err.contains("500"), "{err}");
    assert!(
        !err.contains("X-Amz") && !err.contains("injected-secret"),
        "{err}"
    );

    let c = w.cache("c");
    let o = w.sync_via(
        Some(&proxy),
        &c,
        &nowhere,
        &["--pull", "--allow-partial", "--json"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let j = json(&o);
    assert_eq!(j["failed"]["entries"], 1);
    assert_eq!(j["pulled"]["entries"], 4);
    assert_eq!(j["failures"][0]["key"], bad_key.as_str());
}

#[test]
fn wrong_credentials_stop_at_once_and_say_which() {
    let w = World::new();
    let nowhere = w.no_workspace();
    let a = w.cache("a");
    fill(&a, &["foo"], 3);

    let t = Instant::now();
    let o = w.sync_via(
        None,
        &a,
        &nowhere,
        &["--push"],
        &[("KACHE_S3_SECRET_KEY", "wrong-secret-value-42")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let err = stderr(&o);
    assert!(err.contains("signature mismatch"), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        !err.contains("wrong-secret-value-42") && !err.contains("X-Amz"),
        "{err}"
    );
    assert_eq!(err.matches("error:").count(), 1, "one error line: {err}");

    let o = w.sync_via(
        None,
        &a,
        &nowhere,
        &["--pull", "--all"],
        &[("KACHE_S3_ACCESS_KEY", "AKNOBODY1234")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(err.contains("unknown"), "{err}");
    assert!(
        !err.contains(&w.s3.secret_key) && !err.contains("X-Amz"),
        "{err}"
    );
}

#[test]
fn missing_bucket_and_missing_config() {
    let w = World::new();
    let nowhere = w.no_workspace();
    let a = w.cache("a");
    let o = w.sync_via(
        None,
        &a,
        &nowhere,
        &["--pull", "--all"],
        &[("KACHE_S3_BUCKET", "no-such-bucket-kache")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stderr(&o).contains("bucket `no-such-bucket-kache` does not exist"),
        "{}",
        show(&o)
    );
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", show(&o));

    let mut c = kache(&a);
    c.current_dir(&nowhere).args(["sync", "--pull"]);
    let o = run_checked(&mut c);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr(&o).contains("no S3 bucket"), "{}", show(&o));
}

#[test]
fn a_corrupt_object_is_reported_not_imported() {
    // Needs the bucket's files (or session tokens): always the
    // in-process server, even when an external one is configured.
    let w = World::local();
    let a = w.cache("a");
    let nowhere = w.no_workspace();
    let made = fill(&a, &["foo", "bar"], 4);
    ok(&w.sync(&a, &nowhere, &["--push"]));
    let (c, k) = &made[1];
    let name = format!("{}/{c}/{k}.tar.zst", w.s3.prefix);
    let f = w.s3.object_file(&name).unwrap();
    let mut bytes = fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    bytes[mid + 1] ^= 0xff;
    fs::write(&f, &bytes).unwrap();

    let b = w.cache("b");
    let o = w.sync(&b, &nowhere, &["--pull"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr(&o).contains("corrupt"), "{}", show(&o));
    let got = entries(&b);
    assert_eq!(got.len(), 3);
    assert!(!got.contains(&(c.clone(), k.clone())));
    assert!(fs::read_dir(b.join("tmp")).unwrap().next().is_none());
}

#[test]
fn aws_env_credentials_with_a_session_token() {
    // Needs the bucket's files (or session tokens): always the
    // in-process server, even when an external one is configured.
    let w = World::local();
    let proxy = Proxy::start(&w.s3.endpoint);
    let nowhere = w.no_workspace();
    let a = w.cache("a");
    fill(&a, &["foo"], 2);
    let mut c = kache(&a);
    c.env("KACHE_S3_ENDPOINT", &proxy.endpoint)
        .env("KACHE_S3_BUCKET", &w.s3.bucket)
        .env("KACHE_S3_PREFIX", &w.s3.prefix)
        .env("KACHE_PROGRESS", "0")
        .env("AWS_ACCESS_KEY_ID", &w.s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &w.s3.secret_key)
        .env("AWS_SESSION_TOKEN", "tOkEn-that-must-not-leak")
        .current_dir(&nowhere)
        .args(["sync", "--push"]);
    let o = run_checked(&mut c);
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|s| s.query_names.iter().any(|q| q == "X-Amz-Security-Token")),
        "{seen:?}"
    );
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains("tOkEn-that-must-not-leak"), "{all}");
    assert!(
        o.status.success() && stdout(&o).contains("pushed        2 entries"),
        "{}",
        show(&o)
    );
}

#[test]
fn an_object_deleted_after_listing_is_skipped() {
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    let nowhere = w.no_workspace();
    let a = w.cache("a");
    let made = fill(&a, &["foo"], 3);
    ok(&w.sync(&a, &nowhere, &["--push"]));
    proxy.fail_matching(&made[0].1, Fault::Status(404, "NoSuchKey"));
    let b = w.cache("b");
    let o = w.sync_via(Some(&proxy), &b, &nowhere, &["--pull", "--json"], &[]);
    ok(&o);
    let j = json(&o);
    assert_eq!(j["pulled"]["entries"], 2, "{}", show(&o));
    assert_eq!(j["skipped"]["entries"], 1, "{}", show(&o));
    assert_eq!(j["failed"]["entries"], 0, "{}", show(&o));
}

/// Progress on a terminal (under `script`, when installed): one line
/// rewritten in place; none with `KACHE_PROGRESS=0`. The summary goes to
/// stdout either way.
#[test]
fn progress_on_a_terminal() {
    assert!(
        Path::new("/usr/bin/script").exists(),
        "this test needs /usr/bin/script (util-linux) to give kache a terminal"
    );
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    proxy.set_delay(Duration::from_millis(150));
    let nowhere = w.no_workspace();
    let a = w.cache("a");
    fill(&a, &["foo"], 8);
    let under_tty = |cache: &Path, args: &str, progress: Option<&str>| {
        let mut c = std::process::Command::new("/usr/bin/script");
        crate::common::clean_env(&mut c);
        w.s3.configure_at(&mut c, &proxy.endpoint);
        if let Some(p) = progress {
            c.env("KACHE_PROGRESS", p);
        }
        c.env("KACHE_CACHE_DIR", cache)
            .env("KACHE_S3_CONCURRENCY", "2")
            .current_dir(&nowhere)
            .arg("-qfec")
            .arg(format!(
                "{} sync {args}",
                crate::common::kache_bin().display()
            ))
            .arg("/dev/null");
        let o = run_checked(&mut c);
        ok(&o);
        stdout(&o)
    };
    let out = under_tty(&a, "--push", None);
    assert!(out.contains("\r\x1b[2K[kache] push: "), "{out:?}");
    assert!(out.contains("pushed        8 entries"), "{out:?}");
    let out = under_tty(&w.cache("b"), "--pull", Some("0"));
    assert!(!out.contains("[kache]"), "{out:?}");
    assert!(out.contains("pulled        8 entries"), "{out:?}");
}

/// Not a terminal (CI): a progress line every few seconds on stderr.
#[test]
fn progress_lines_in_logs() {
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    proxy.set_delay(Duration::from_millis(450));
    let nowhere = w.no_workspace();
    let a = w.cache("a");
    fill(&a, &["foo"], 8);
    let o = w.sync_via(
        Some(&proxy),
        &a,
        &nowhere,
        &["--push"],
        &[("KACHE_PROGRESS", ""), ("KACHE_S3_CONCURRENCY", "1")],
    );
    ok(&o);
    let err = stderr(&o);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("[kache] push: "))
        .collect();
    assert!(!lines.is_empty() && lines.len() <= 3, "{err}");
    assert!(!err.contains('\r'), "{err:?}");
    assert!(!stdout(&o).contains("[kache]"));
}

/// The CI recipe end to end: a real cargo build through the wrapper on
/// machine A, `kache sync --push`; on machine B (another checkout path, an
/// empty cache) `kache sync --pull`, then the build compiles nothing.
#[test]
fn ci_recipe_with_real_cargo_builds() {
    fn cargo_build(ws: &Path, target: &Path, cache: &Path) {
        // Read by `alpha` through `option_env!`.
        let o = cargo_through_kache(ws, target, cache, &["build"])
            .env("KACHE_FIXTURE_GREETING", "hi")
            .output()
            .unwrap();
        ok(&o);
    }
    fn results(cache: &Path) -> Vec<String> {
        let text = fs::read_to_string(cache.join("events.jsonl")).unwrap_or_default();
        let _ = fs::remove_file(cache.join("events.jsonl"));
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["crate"] != "")
            .map(|e| e["result"].as_str().unwrap_or("").to_string())
            .collect()
    }

    let w = World::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ws");
    let (ws_a, ws_b) = (w.tmp.path().join("a/ws"), w.tmp.path().join("b/ws"));
    copy_tree(&fixture, &ws_a);
    copy_tree(&fixture, &ws_b);
    let (cache_a, cache_b) = (w.cache("cache-a"), w.cache("cache-b"));

    cargo_build(&ws_a, &w.tmp.path().join("a/target"), &cache_a);
    let cold = results(&cache_a);
    assert!(
        !cold.is_empty() && cold.iter().all(|r| r == "miss"),
        "{cold:?}"
    );
    let o = w.sync(&cache_a, &ws_a, &["--push", "--json"]);
    ok(&o);
    assert_eq!(
        json(&o)["pushed"]["entries"],
        cold.len() as u64,
        "{}",
        show(&o)
    );

    // The lock file is committed in a real project.
    fs::copy(ws_a.join("Cargo.lock"), ws_b.join("Cargo.lock")).unwrap();
    // Build-script entries are stored under their package's name, so
    // the lockfile filter covers them: no `--all` needed.
    assert!(
        !entries(&cache_a)
            .iter()
            .any(|(c, _)| c.starts_with("build_script_")),
        "build scripts stored outside their package"
    );
    let pull: &[&str] = &["--pull"];
    let o = w.sync(&cache_b, &ws_b, pull);
    ok(&o);
    assert_eq!(entries(&cache_b), entries(&cache_a));

    let target_b = w.tmp.path().join("b/target");
    cargo_build(&ws_b, &target_b, &cache_b);
    let warm = results(&cache_b);
    assert_eq!(warm.len(), cold.len(), "{warm:?}");
    assert!(warm.iter().all(|r| r == "local_hit"), "{warm:?}");
    // Cargo finds it all fresh: the dep-info restored says what rustc
    // would have (`alpha`'s `KACHE_FIXTURE_GREETING` value, a keyed
    // digest in the bucket, is put back on the hit).
    cargo_build(&ws_b, &target_b, &cache_b);
    assert_eq!(results(&cache_b), Vec::<String>::new());
    let run = std::process::Command::new(target_b.join("debug/app"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", show(&run));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "hi total=52 label=built"
    );
}
