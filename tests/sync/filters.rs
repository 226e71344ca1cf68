//! Issue 9 §2: pull only what the build can use. A pull for this
//! toolchain and this Cargo.lock leaves out, from the listing alone, the
//! other toolchain's entries and other versions' entries; `--all` still
//! pulls everything.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::{entries, json};
use crate::common::{World, cargo_through_kache, copy_tree, ok, show};

/// A bucket filled from one workspace by two toolchains and by two
/// versions of one crate: a pull for this toolchain and this Cargo.lock
/// leaves out, from the listing alone, the other toolchain's entries and
/// the other version's, says so in `--dry-run` (counts and bytes, by
/// reason), and everything it does pull is used by the build. `--all`
/// still pulls everything.
#[test]
fn pull_fetches_only_what_this_toolchain_and_lockfile_use() {
    let w = World::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ws");
    let build = |ws: &Path, target: &Path, cache: &Path, env: &[(&str, &str)]| {
        let mut c = cargo_through_kache(ws, target, cache, &["build"]);
        for (k, v) in env {
            c.env(k, v);
        }
        ok(&c.output().unwrap());
    };
    // Another toolchain: the same compiler under another identity.
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let real = format!(
        "{}/bin/rustc",
        String::from_utf8_lossy(&sysroot.stdout).trim()
    );
    let tc2 = w.tmp.path().join("tc2/bin");
    fs::create_dir_all(&tc2).unwrap();
    let fake = tc2.join("rustc");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -vV ]; then \"{real}\" -vV; echo 'kache-test: another toolchain'; exit 0; fi\nexec \"{real}\" \"$@\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();

    // Runner A: this toolchain, this Cargo.lock.
    let ws_a = w.tmp.path().join("a/ws");
    copy_tree(&fixture, &ws_a);
    let cache_a = w.cache("cache-a");
    build(&ws_a, &w.tmp.path().join("a/t"), &cache_a, &[]);
    ok(&w.sync(&cache_a, &ws_a, &["--push"]));
    let used = entries(&cache_a);
    // Runner T: the other toolchain.
    let ws_t = w.tmp.path().join("t/ws");
    copy_tree(&fixture, &ws_t);
    let cache_t = w.cache("cache-t");
    let fake_s = fake.to_string_lossy().to_string();
    build(
        &ws_t,
        &w.tmp.path().join("t/t"),
        &cache_t,
        &[("RUSTC", &fake_s)],
    );
    ok(&w.sync(&cache_t, &ws_t, &["--push"]));
    let other_tc = entries(&cache_t);
    assert!(other_tc.is_disjoint(&used));
    // Runner V: the workspace at version 0.2.0.
    let ws_v = w.tmp.path().join("v/ws");
    fixture_at_version(&ws_v, "0.2.0");
    let cache_v = w.cache("cache-v");
    build(&ws_v, &w.tmp.path().join("v/t"), &cache_v, &[]);
    ok(&w.sync(&cache_v, &ws_v, &["--push"]));
    let other_v = entries(&cache_v);
    // Runner D: only `alpha` at 0.2.0; its dependents keep their version
    // but are built against alpha 0.2.0.
    let ws_d = w.tmp.path().join("d/ws");
    copy_tree(&fixture, &ws_d);
    let alpha = ws_d.join("alpha/Cargo.toml");
    let text = fs::read_to_string(&alpha).unwrap();
    fs::write(
        &alpha,
        text.replace("version.workspace = true", "version = \"0.2.0\""),
    )
    .unwrap();
    let cache_d = w.cache("cache-d");
    build(&ws_d, &w.tmp.path().join("d/t"), &cache_d, &[]);
    ok(&w.sync(&cache_d, &ws_d, &["--push"]));
    let other_d: BTreeSet<(String, String)> =
        entries(&cache_d).difference(&used).cloned().collect();
    assert!(other_d.iter().any(|(c, _)| c == "beta"), "{other_d:?}");

    // Runner B: A's Cargo.lock, A's toolchain, an empty store.
    let ws_b = w.tmp.path().join("b/ws");
    copy_tree(&fixture, &ws_b);
    fs::copy(ws_a.join("Cargo.lock"), ws_b.join("Cargo.lock")).unwrap();
    let cache_b = w.cache("cache-b");
    let o = w.sync(&cache_b, &ws_b, &["--pull", "--dry-run", "--json"]);
    ok(&o);
    let plan = json(&o);
    let f = &plan["filtered"];
    assert_eq!(
        f["another toolchain"]["entries"],
        other_tc.len() as u64,
        "{plan:#}"
    );
    // D's alpha 0.2.0 is V's (the same compile): one object.
    let (alpha_d, built_d): (BTreeSet<_>, BTreeSet<_>) =
        other_d.iter().cloned().partition(|(c, _)| c == "alpha");
    let wrong_version: BTreeSet<_> = other_v.union(&alpha_d).collect();
    assert_eq!(
        f["a version Cargo.lock does not name"]["entries"],
        wrong_version.len() as u64,
        "{plan:#}"
    );
    assert_eq!(
        f["built against a dependency version Cargo.lock does not name"]["entries"],
        built_d.len() as u64,
        "{plan:#}"
    );
    assert!(f["another toolchain"]["bytes"].as_u64().unwrap() > 0);
    let text = w.sync(&cache_b, &ws_b, &["--pull", "--dry-run"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("(another toolchain)"), "{text}");
    assert!(
        text.contains("(a version Cargo.lock does not name)"),
        "{text}"
    );

    pull_then_build_hits(&w, &ws_b, &cache_b, &used);

    // --all: everything, whatever made it.
    let cache_all = w.cache("cache-all");
    ok(&w.sync(&cache_all, &ws_b, &["--pull", "--all"]));
    let everything: BTreeSet<_> = used
        .iter()
        .chain(&other_tc)
        .chain(&other_v)
        .chain(&other_d)
        .collect();
    assert_eq!(entries(&cache_all).len(), everything.len());
}

/// A version with build metadata (`2.1.3+zstd.1.5.7`, as most `-sys`
/// crates that vendor a C library carry): the `+` survives the bucket's
/// listing, so a pull by Cargo.lock fetches those entries too, and the
/// build hits them.
#[test]
fn a_version_with_build_metadata_is_pulled_by_cargo_lock() {
    let w = World::new();
    let ws_a = w.tmp.path().join("a/ws");
    fixture_at_version(&ws_a, "0.1.0+meta.1.2");
    let cache_a = w.cache("cache-a");
    let o = cargo_through_kache(&ws_a, &w.tmp.path().join("a/t"), &cache_a, &["build"])
        .output()
        .unwrap();
    ok(&o);
    ok(&w.sync(&cache_a, &ws_a, &["--push"]));
    let used = entries(&cache_a);
    assert!(!used.is_empty());

    // Runner B: the same tree and Cargo.lock, an empty store.
    let ws_b = w.tmp.path().join("b/ws");
    copy_tree(&ws_a, &ws_b);
    let cache_b = w.cache("cache-b");
    pull_then_build_hits(&w, &ws_b, &cache_b, &used);
}

/// A copy of the `ws` fixture whose workspace version is `version`.
fn fixture_at_version(ws: &Path, version: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ws");
    copy_tree(&fixture, ws);
    let manifest = ws.join("Cargo.toml");
    let text = fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("version = \"0.1.0\""), "{text}");
    let text = text.replace("version = \"0.1.0\"", &format!("version = \"{version}\""));
    fs::write(&manifest, text).unwrap();
}

/// Runner B pulls by its Cargo.lock: it gets exactly `used`, and its
/// build hits every one of them.
fn pull_then_build_hits(w: &World, ws_b: &Path, cache_b: &Path, used: &BTreeSet<(String, String)>) {
    let o = w.sync(cache_b, ws_b, &["--pull", "--json"]);
    ok(&o);
    assert_eq!(&entries(cache_b), used, "{}", show(&o));
    let target = ws_b.parent().unwrap().join("t");
    let o = cargo_through_kache(ws_b, &target, cache_b, &["build"])
        .output()
        .unwrap();
    ok(&o);
    let ev = fs::read_to_string(cache_b.join("events.jsonl")).unwrap();
    let hits = ev.lines().filter(|l| l.contains("\"local_hit\"")).count();
    assert_eq!(hits, used.len(), "{ev}");
}
