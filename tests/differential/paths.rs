//! Differential classes 2 and 7, paths: paths baked into outputs
//! (`CARGO_MANIFEST_DIR`, `CARGO_BIN_EXE_<name>`, an rpath to `OUT_DIR`)
//! in two checkouts sharing one cache; paths with a space, a second
//! checkout after deleting the first, the user's `--remap-path-prefix`,
//! and a relative cache dir.

use std::fs;
use std::path::Path;
use std::process::Output;

use super::{Diff, compiling, norm, root};
use crate::common::show;

/// A binary printing `env!("CARGO_MANIFEST_DIR")`, built in two checkouts
/// sharing one cache; its path-independent dependency is still shared.
#[test]
fn baked_paths_manifest_dir() {
    let r = root();
    let a = Diff::new(r.path(), "a", "paths");
    let b = Diff::new(r.path(), "b", "paths");
    let run = ["run", "-q", "-p", "whereami"];
    a.same("checkout a", &run, &[]);
    a.take_events();
    b.kache_ok(&["build", "-p", "whereami"], &[]);
    let ev = b.take_events();
    assert!(
        ev.contains(&("plainlib".into(), "local_hit".into())),
        "a crate whose output does not depend on its path is not shared \
         between checkouts: {ev:?}"
    );
    let out = b.same("checkout b", &run, &[]);
    assert!(
        out.contains(&*b.ws.to_string_lossy()),
        "plain cargo printed {out} (a test bug)"
    );
    fs::remove_dir_all(&a.base).unwrap();
    b.same_restored("checkout b, checkout a deleted", &run, &[]);
}

/// An integration test running `env!("CARGO_BIN_EXE_whereami")`: checkout
/// B's tests must run B's binary, also once checkout A is gone.
#[test]
fn baked_paths_bin_exe_in_integration_test() {
    let r = root();
    let a = Diff::new(r.path(), "a", "paths");
    let b = Diff::new(r.path(), "b", "paths");
    let test = ["test", "-q", "-p", "whereami", "--test", "run"];
    a.same("checkout a", &test, &[]);
    a.take_events();
    b.same("checkout b", &test, &[]);
    fs::remove_dir_all(&a.base).unwrap();
    b.same("checkout b, checkout a deleted", &test, &[]);
    b.same_restored("checkout b, checkout a deleted", &test, &[]);
}

/// `-Wl,-rpath,$OUT_DIR` from a build script that builds librp.so: B's
/// binary must load B's library, not A's.
#[test]
fn baked_paths_rpath_to_out_dir() {
    let r = root();
    let a = Diff::new(r.path(), "a", "paths");
    let b = Diff::new(r.path(), "b", "paths");
    let run = ["run", "-q", "-p", "rpath"];
    a.same("checkout a", &run, &[]);
    b.same("checkout b", &run, &[]);
    // A's library now returns 8; B's still returns 7.
    a.edit("rpath/rp.c", "return 7", "return 8");
    a.same("checkout a after editing its rp.c", &run, &[]);
    b.same("checkout b after a's librp.so changed", &run, &[]);
    // `cargo run` puts OUT_DIR on LD_LIBRARY_PATH; run the binaries as a
    // user would, by their path, so only their run path finds librp.so.
    let direct = |t: &Path| {
        let o = std::process::Command::new(t.join("debug/rpath"))
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        format!("{} {}", o.status, String::from_utf8_lossy(&o.stdout).trim())
    };
    assert_eq!(
        direct(&b.kt),
        direct(&b.pt),
        "checkout b's binary run by its path: kache's (left) differs from plain cargo's (right)"
    );
    // The binary's RUNPATH names B's own target dir.
    let exe = b.kt.join("debug/rpath");
    let re = std::process::Command::new("readelf")
        .arg("-d")
        .arg(&exe)
        .output()
        .expect("readelf");
    let dynamic = String::from_utf8_lossy(&re.stdout);
    let rp: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("RUNPATH") || l.contains("RPATH"))
        .collect();
    assert!(
        rp.iter().all(|l| l.contains(&*b.kt.to_string_lossy())),
        "checkout b's binary has another checkout's run path: {rp:?} (b's target is {})",
        b.kt.display()
    );
    fs::remove_dir_all(&a.base).unwrap();
    b.same_restored("checkout b, checkout a deleted", &run, &[]);
}

// ---------------------------------------------------------------------
// Paths with a space, the user's --remap-path-prefix
// ---------------------------------------------------------------------

/// Two checkouts at paths with a space: the dep-info of restored crates
/// names this checkout's files, so once the other checkout is gone
/// nothing is rebuilt that plain cargo would not rebuild.
#[test]
fn space_in_workspace_path() {
    two_checkouts_then_delete_one("chk a", "chk b");
}

/// The same without a space: a regression guard, and the control that
/// shows the space is what `space_in_workspace_path` trips on.
#[test]
fn guard_second_checkout_after_deleting_the_first() {
    two_checkouts_then_delete_one("chk_a", "chk_b");
}

fn two_checkouts_then_delete_one(a_name: &str, b_name: &str) {
    let r = root();
    let a = Diff::new(r.path(), a_name, "space");
    let b = Diff::new(r.path(), b_name, "space");
    let run = ["run", "-q", "-p", "spapp"];
    a.same("checkout a", &run, &[]);
    a.take_events();
    b.same("checkout b", &run, &[]);
    // Whether splib is shared depends on how its OUT_DIR env-dep is keyed;
    // the properties below hold either way.
    let shared = b.take_events();
    fs::remove_dir_all(&a.base).unwrap();
    // Nothing changed in b: plain cargo compiles nothing; nor may kache.
    let k = b.kache(&["build", "-p", "spapp"], &[]);
    let p = b.plain(&["build", "-p", "spapp"], &[]);
    assert!(
        k.status.success() && p.status.success(),
        "{}\n{}",
        show(&k),
        show(&p)
    );
    assert_eq!(
        compiling(&k),
        compiling(&p),
        "after deleting checkout a, kache's target in checkout b rebuilt \
         crates that plain cargo found fresh (b's first build: {shared:?})\n{}",
        show(&k)
    );
    // The dep-info kache wrote names only this checkout's files.
    for e in fs::read_dir(b.kt.join("debug/deps")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "d") {
            let text = fs::read_to_string(&p).unwrap();
            assert!(
                !text.contains(a_name) && !text.contains(&a_name.replace(' ', "\\ ")),
                "{} names the other checkout:\n{text}",
                p.display()
            );
        }
    }
    b.same("checkout b, checkout a deleted", &run, &[]);
}

/// The user's own `--remap-path-prefix` in RUSTFLAGS must win: file!()
/// and the panic location of a path dependency outside the workspace
/// (rustc gets its absolute path) show the user's mapping.
#[test]
fn user_remap_path_prefix_wins() {
    let r = root();
    let d = Diff::new(r.path(), "a", "remap").in_dir("app");
    let flags = format!("--remap-path-prefix={}=/user/mapped", d.ws.display());
    let env = [("RUSTFLAGS", flags.as_str())];
    let run = ["run", "-q"];
    let panics = |o: &Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter_map(|l| l.split_once("panicked at "))
            // The thread id before it differs from run to run.
            .map(|(_, at)| at.to_string())
            .collect()
    };
    let (k, p) = d.both("cold build", &run, &env);
    assert_eq!(panics(&k), panics(&p), "panic location differs");
    let out = norm(&p.stdout);
    assert!(
        out.contains("/user/mapped/outside/src/lib.rs"),
        "plain cargo did not apply the mapping (a test bug): {out}"
    );
    d.take_events();
    d.wipe_kache_target();
    let (k, p) = d.both("restored", &run, &env);
    d.assert_hit("restore");
    assert_eq!(
        panics(&k),
        panics(&p),
        "panic location differs after a restore"
    );
}

/// A relative `KACHE_CACHE_DIR`: cargo runs rustc in different dirs
/// (here the workspace root for `app`, the package root for `outside`,
/// a path dependency outside the workspace). kache must use one store
/// (or refuse clearly), never one store per crate directory.
#[test]
fn relative_cache_dir() {
    let r = root();
    let d = Diff::new(r.path(), "a", "remap").in_dir("app");
    let env = [("KACHE_CACHE_DIR", "rel-cache")];
    // (No comparison of output with plain cargo here: kache's own remap
    // of this fixture's paths is documented, see the README.)
    let k = d.kache_ok(&["build"], &env);
    let mut stores = Vec::new();
    let mut stack = vec![d.ws.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                if e.file_name() == "rel-cache" {
                    stores.push(e.path());
                } else {
                    stack.push(e.path());
                }
            }
        }
    }
    assert!(
        stores.len() <= 1,
        "a relative KACHE_CACHE_DIR made a store per crate directory: {stores:?}\n{}",
        show(&k)
    );
}
