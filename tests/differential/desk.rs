//! kache on a developer's desk (issue 22): cargo's dev profile with
//! incremental compilation on for the workspace's crates, the crate being
//! edited stored in the background, and a store that keeps itself within
//! `local_max_size`. Plain cargo is the oracle throughout.

use std::fs;
use std::path::Path;

use super::{Diff, root, show};
use crate::common::{kache, settle};

/// Sessions rustc keeps in cargo's incremental dir for crate `name`.
fn incremental_sessions(target: &Path, profile: &str, name: &str) -> usize {
    let Ok(rd) = fs::read_dir(target.join(profile).join("incremental")) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}-"))
        })
        .count()
}

/// The results kache logged for `krate` since the last look (the store
/// settled first: background stores are done).
fn results_of(d: &Diff, krate: &str) -> Vec<String> {
    settle(&d.cache);
    d.take_events()
        .into_iter()
        .filter(|(c, _)| c == krate)
        .map(|(_, r)| r)
        .collect()
}

/// Edits in a workspace crate, each followed by run, check and test
/// (interleaved, as an editor and a terminal do), print what plain cargo
/// prints; rustc runs incremental in cargo's own incremental dir; after
/// `rm -rf target` the workspace crates come back from the store and the
/// next edit compiles incrementally again.
#[test]
fn edit_loop_stays_incremental_and_matches_plain_cargo() {
    let r = root();
    let d = Diff::new(r.path(), "a", "desk").background();
    let run = ["run", "-q", "-p", "deskapp"];
    d.same("first build", &run, &[]);
    assert!(
        incremental_sessions(&d.kt, "debug", "deskcore") > 0,
        "rustc did not compile deskcore incrementally under kache"
    );
    for i in 1..=3 {
        d.edit(
            "deskcore/src/lib.rs",
            &format!("hello v{}", i - 1),
            &format!("hello v{i}"),
        );
        let out = d.same(&format!("run after edit {i}"), &run, &[]);
        assert!(out.contains(&format!("hello v{i} 3")), "{out}");
        d.same(&format!("check after edit {i}"), &["check"], &[]);
        d.same(&format!("test after edit {i}"), &["test", "-q"], &[]);
        d.same(&format!("build after edit {i}"), &["build"], &[]);
    }
    d.take_events();
    let out = d.same_restored("run", &run, &[]);
    assert!(out.contains("hello v3 3"), "{out}");
    let res = results_of(&d, "deskcore");
    assert!(
        !res.is_empty() && res.iter().all(|r| r == "local_hit"),
        "deskcore was not restored from the store after rm -rf target: {res:?}"
    );
    // Restored, then edited: rustc starts a fresh incremental session.
    let _ = fs::remove_dir_all(d.kt.join("debug/incremental"));
    d.edit("deskcore/src/lib.rs", "hello v3", "hello v4");
    let out = d.same("run after restore and edit", &run, &[]);
    assert!(out.contains("hello v4 3"), "{out}");
    assert!(incremental_sessions(&d.kt, "debug", "deskcore") > 0);
    // Plain cargo on the same target dir takes over what kache left.
    d.edit("deskcore/src/lib.rs", "hello v4", "hello v5");
    let o = d.plain_on_kache_target(&run, &[]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello v5 3"),
        "{}",
        show(&o)
    );
}

/// An entry compiled incrementally answers only incremental compiles, and
/// the reverse: their code is split differently, so their bytes differ,
/// and CI (`CARGO_INCREMENTAL=0`) must get what plain cargo makes there.
#[test]
fn incremental_and_non_incremental_entries_stay_apart() {
    let r = root();
    let d = Diff::new(r.path(), "a", "desk").background();
    let run = ["run", "-q", "-p", "deskapp"];
    let off = [("CARGO_INCREMENTAL", "0")];
    d.same("incremental", &run, &[]);
    d.take_events();
    let out = d.same_restored("non-incremental", &run, &off);
    assert!(out.contains("hello v0 3"), "{out}");
    assert_eq!(results_of(&d, "deskcore"), ["miss"]);
    assert_eq!(
        incremental_sessions(&d.kt, "debug", "deskcore"),
        0,
        "CARGO_INCREMENTAL=0 compiled incrementally"
    );
    d.same_restored("non-incremental again", &run, &off);
    assert_eq!(results_of(&d, "deskcore"), ["local_hit"]);
    d.same_restored("incremental again", &run, &[]);
    assert_eq!(results_of(&d, "deskcore"), ["local_hit"]);
}

/// A build that starts while another's outputs are still being stored
/// in the background waits for them (the key's compile lock is held by
/// the background store) and hits: a second checkout of the same
/// workspace built right after the first.
#[test]
fn a_build_right_after_a_background_store_hits() {
    let r = root();
    let a = Diff::new(r.path(), "a", "desk").background();
    let b = Diff::new(r.path(), "b", "desk").background();
    let run = ["run", "-q", "-p", "deskapp"];
    a.same("first checkout", &run, &[]);
    let o = b.kache_ok(&run, &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("hello v0 3"));
    let res = results_of(&b, "deskapp");
    assert_eq!(res, ["miss", "local_hit"], "{}", show(&o));
}

/// Bytes of the store's blobs.
fn blob_bytes(cache: &Path) -> u64 {
    let mut n = 0;
    for shard in fs::read_dir(cache.join("blobs")).unwrap().flatten() {
        for f in fs::read_dir(shard.path()).unwrap().flatten() {
            n += f.metadata().unwrap().len();
        }
    }
    n
}

/// With `KACHE_MAX_SIZE` under what a dev and a release build store
/// together and nobody running `kache gc`, every build ends within 1.10x
/// the limit; the most recently used build still restores, and `kache
/// stats` says what was evicted.
#[test]
fn the_store_keeps_itself_within_local_max_size() {
    let run_dev = ["run", "-q", "-p", "deskapp"];
    let run_rel = ["run", "-q", "--release", "-p", "deskapp"];
    // What each build stores, without a limit.
    let r = root();
    let d = Diff::new(r.path(), "a", "desk").background();
    d.kache_ok(&run_dev, &[]);
    settle(&d.cache);
    let dev = blob_bytes(&d.cache);
    d.kache_ok(&run_rel, &[]);
    settle(&d.cache);
    let rel = blob_bytes(&d.cache) - dev;
    let limit = dev.max(rel) * 5 / 4;
    assert!(limit < dev + rel, "dev {dev} B, release {rel} B");

    let r = root();
    let d = Diff::new(r.path(), "b", "desk").background();
    let lim = limit.to_string();
    let env = [("KACHE_MAX_SIZE", lim.as_str())];
    for (what, args) in [("dev", &run_dev[..]), ("release", &run_rel[..])] {
        d.same(what, args, &env);
        settle(&d.cache);
        let size = blob_bytes(&d.cache);
        assert!(
            size * 10 <= limit * 11,
            "after the {what} build the store holds {size} B, limit {limit} B"
        );
    }
    let o = kache(&d.cache).arg("stats").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("evicted:") && l.contains("(local_max_size)")),
        "{text}"
    );
    d.take_events();
    let out = d.same_restored("release, the most recent build", &run_rel, &env);
    assert!(out.contains("hello v0 3"), "{out}");
    let res = results_of(&d, "deskapp");
    assert_eq!(res, ["local_hit"]);
}

/// Builds racing over a store far smaller than one build: every build
/// succeeds and prints what plain cargo prints, and no restore ever
/// meets a half-evicted entry (kache never falls back to plain rustc
/// with a warning).
#[test]
fn concurrent_builds_over_a_tiny_limit_never_fail() {
    let r = root();
    let ds: Vec<Diff> = (0..3)
        .map(|i| Diff::new(r.path(), &format!("c{i}"), "desk").background())
        .collect();
    let run = ["run", "-q", "-p", "deskapp"];
    let expect = {
        let p = ds[0].plain(&run, &[]);
        assert!(p.status.success(), "{}", show(&p));
        String::from_utf8_lossy(&p.stdout).into_owned()
    };
    let env = [("KACHE_MAX_SIZE", "64KiB")];
    std::thread::scope(|s| {
        for d in &ds {
            let expect = &expect;
            s.spawn(move || {
                for round in 0..3 {
                    let o = d.kache_ok(&run, &env);
                    assert_eq!(String::from_utf8_lossy(&o.stdout), *expect, "round {round}");
                    let err = String::from_utf8_lossy(&o.stderr);
                    assert!(!err.contains("warning: kache"), "round {round}: {err}");
                    d.wipe_kache_target();
                }
            });
        }
    });
    // The test exercised eviction.
    let o = kache(&ds[0].cache).arg("stats").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.lines().any(|l| l.starts_with("evicted:")), "{text}");
}
