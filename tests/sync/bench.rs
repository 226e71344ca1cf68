//! Sync benchmarks: figures, not checks. All ignored; the `ci/` scripts
//! run them by name (`ci/bench-gc-remote.sh`, `ci/bench-pull-filter.sh`),
//! or run them all with
//! `cargo test --release --test tests sync::bench -- --ignored --nocapture`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{entries, json};
use crate::common::{
    World, cargo_through_kache, copy_tree, ok, put_entry, run_checked, show, stderr, stdout,
};

/// Figures, not a check: push and pull of many incompressible entries and
/// of one large one, with wall time and peak memory. Run with
/// `cargo test --test tests bench_ -- --ignored --nocapture`
/// (`KACHE_BENCH_BIN` picks another kache binary, e.g. a release build).
#[test]
#[ignore = "benchmark"]
fn bench_push_pull() {
    let w = World::new();
    let nowhere = w.no_workspace();
    let bin = std::env::var("KACHE_BENCH_BIN").ok();
    let n: usize = std::env::var("KACHE_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let a = w.cache("a");
    let noise = |seed: &str, len: usize| {
        let mut v = vec![0u8; len];
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .finalize_xof()
            .fill(&mut v);
        v
    };
    let mut bytes = 0;
    for i in 0..n {
        let d = noise(&format!("e{i}"), 256 << 10);
        bytes += d.len();
        put_entry(
            &a,
            &format!("c{}", i % 20),
            &format!("s{i}"),
            &[("lib.rlib", &d)],
        );
    }
    let run = |label: &str, cache: &Path, args: &[&str]| {
        let exe = bin
            .clone()
            .map_or_else(crate::common::kache_bin, PathBuf::from);
        let mut c = std::process::Command::new("/usr/bin/time");
        c.arg("-f").arg("%e s, %M KiB peak").arg(exe);
        crate::common::clean_env(&mut c);
        c.env("KACHE_CACHE_DIR", cache);
        w.s3.configure(&mut c);
        c.env("KACHE_PROGRESS", "0")
            .current_dir(&nowhere)
            .arg("sync")
            .args(args);
        let t = Instant::now();
        let o = run_checked(&mut c);
        ok(&o);
        let tail = stderr(&o).lines().last().unwrap_or("").to_string();
        eprintln!("{label}: {:.2}s ({tail})", t.elapsed().as_secs_f64());
        t.elapsed()
    };
    eprintln!(
        "{n} entries of 256 KiB (incompressible), {} MiB",
        bytes >> 20
    );
    let up = run("push", &a, &["--push"]);
    let b = w.cache("b");
    let down = run("pull", &b, &["--pull"]);
    #[allow(clippy::cast_precision_loss)]
    let mib = bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "push {:.1} MiB/s, pull {:.1} MiB/s",
        mib / up.as_secs_f64(),
        mib / down.as_secs_f64()
    );
    assert_eq!(entries(&b).len(), n);

    // One large entry: memory must not grow with it.
    let big = w.cache("big");
    let d = noise("big", 256 << 20);
    put_entry(&big, "huge", "x", &[("libhuge.rlib", &d)]);
    drop(d);
    run("push 256 MiB entry", &big, &["--push"]);
    run("pull 256 MiB entry", &w.cache("big2"), &["--pull"]);
}

/// Figures: planning over 10,000 objects in 500 crates, by one listing of
/// the whole prefix (`--all`) and by 500 per-crate listings (Cargo.lock).
#[test]
#[ignore = "benchmark"]
fn bench_plan_10k() {
    // Needs the bucket's files (or session tokens): always the
    // in-process server, even when an external one is configured.
    let w = World::local();
    let mut crates = Vec::new();
    for c in 0..500u32 {
        let name = format!("crate_{c}");
        let dir =
            w.s3.bucket_dir
                .as_ref()
                .unwrap()
                .join(&w.s3.prefix)
                .join(&name);
        fs::create_dir_all(&dir).unwrap();
        for k in 0..20u32 {
            let key = blake3::hash(format!("{c}/{k}").as_bytes())
                .to_hex()
                .to_string();
            fs::write(dir.join(format!("{key}.tar.zst")), b"x").unwrap();
        }
        crates.push(name);
    }
    let names: Vec<&str> = crates.iter().map(String::as_str).collect();
    let ws = w.workspace("ws", &names);
    let bin =
        std::env::var("KACHE_BENCH_BIN").map_or_else(|_| crate::common::kache_bin(), PathBuf::from);
    for (label, args) in [
        (
            "--all (one paginated listing)",
            vec!["--pull", "--all", "--dry-run"],
        ),
        ("Cargo.lock (500 listings)", vec!["--pull", "--dry-run"]),
    ] {
        let mut c = std::process::Command::new("/usr/bin/time");
        c.arg("-f").arg("%e s, %M KiB peak").arg(&bin);
        crate::common::clean_env(&mut c);
        w.s3.configure(&mut c);
        c.env("KACHE_CACHE_DIR", w.cache("empty"))
            .env("KACHE_PROGRESS", "0")
            .current_dir(&ws)
            .arg("sync")
            .args(&args);
        let o = run_checked(&mut c);
        ok(&o);
        let planned = stdout(&o)
            .lines()
            .filter(|l| l.starts_with("pull "))
            .count();
        let tail = stderr(&o).lines().last().unwrap_or("").to_string();
        eprintln!("plan {label}: {planned} entries planned, {tail}");
        assert_eq!(planned, 10_000);
    }
}

/// Benchmark, run by ci/bench-gc-remote.sh: plans `kache gc --remote`
/// over a bucket of `KACHE_BENCH_ENTRIES` (default 100,000) entries on an
/// in-process s3s-fs server, and prints the wall time and peak memory
/// (`/usr/bin/time -v`) of the plan (`--dry-run`) and of listing the
/// same bucket with `kache sync --pull --all --dry-run` (the listing
/// alone), for scale.
#[test]
#[ignore = "benchmark; run by ci/bench-gc-remote.sh"]
fn bench_gc_remote_plan() {
    let n: usize = std::env::var("KACHE_BENCH_ENTRIES").map_or(100_000, |v| v.parse().unwrap());
    let w = World::local();
    let cache = w.cache("c");
    // Objects written straight into the server's directory (fast), in the
    // layout kache writes, over 200 crates.
    for i in 0..n {
        let c = format!("crate_{:03}", i % 200);
        let key = blake3::hash(&(i as u64).to_le_bytes()).to_hex().to_string();
        let name = format!(
            "{}/{c}/1.0.{}/x86_64-unknown-linux-gnu/0123456789ab/{key}.tar.zst",
            w.s3.prefix,
            i % 7
        );
        let p = w.s3.object_file(&name).expect("s3s-fs");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, [0u8; 64]).unwrap();
    }
    // Some use records, as syncs leave them.
    let ws = w.workspace("ws", &["crate_000"]);
    let timed = |args: &[&str]| -> (f64, u64, String) {
        let mut c = std::process::Command::new("/usr/bin/time");
        c.arg("-v").arg(crate::common::kache_bin()).args(args);
        crate::common::clean_env(&mut c);
        c.env("KACHE_CACHE_DIR", &cache).current_dir(&ws);
        w.s3.configure(&mut c);
        let t0 = Instant::now();
        let o = c.output().unwrap();
        let secs = t0.elapsed().as_secs_f64();
        assert!(o.status.success(), "{}", show(&o));
        let err = stderr(&o);
        let rss = err
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Maximum resident set size (kbytes): ")
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        (secs, rss, stdout(&o))
    };
    let (ls, lrss, _) = timed(&["sync", "--pull", "--all", "--dry-run", "--json"]);
    let (gs, grss, out) = timed(&["gc", "--remote", "--max-size", "1MB", "--dry-run", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["entries"], n as u64);
    println!(
        "gc --remote plan over {n} entries: {gs:.2} s, peak {:.1} MiB; listing alone (sync --pull --all --dry-run): {ls:.2} s, peak {:.1} MiB; plan / listing time {:.2}",
        grss as f64 / 1024.0,
        lrss as f64 / 1024.0,
        gs / ls
    );
}

/// Benchmark, run by ci/bench-pull-filter.sh: a bucket filled from one
/// workspace by two toolchains (stable and nightly when rustup has it,
/// else the same compiler under another identity) and by two versions of
/// one dependency (`alpha` 0.1.0 and 0.2.0); a stable runner with the
/// 0.1.0 Cargo.lock pulls, then builds. Prints the bytes pulled over the
/// bytes of the entries the build used, with the filter and with `--all`.
#[test]
#[ignore = "benchmark; run by ci/bench-pull-filter.sh"]
fn bench_pull_filter() {
    let w = World::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ws");
    let build = |name: &str, env: &[(&str, &str)], edit: Option<(&str, &str, &str)>| {
        let ws = w.tmp.path().join(name).join("ws");
        copy_tree(&fixture, &ws);
        if let Some((file, from, to)) = edit {
            let p = ws.join(file);
            let t = fs::read_to_string(&p).unwrap();
            assert!(t.contains(from));
            fs::write(&p, t.replace(from, to)).unwrap();
        }
        let cache = w.cache(&format!("{name}-cache"));
        let mut c =
            cargo_through_kache(&ws, &w.tmp.path().join(name).join("t"), &cache, &["build"]);
        for (k, v) in env {
            c.env(k, v);
        }
        ok(&c.output().unwrap());
        ok(&w.sync(&cache, &ws, &["--push"]));
        (ws, cache)
    };
    let (ws_a, _) = build("a", &[], None);
    let nightly = std::process::Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("nightly"))
        });
    let second = if nightly {
        "nightly"
    } else {
        "another identity of stable"
    };
    if nightly {
        build("n", &[("RUSTUP_TOOLCHAIN", "nightly")], None);
    } else {
        let sysroot = std::process::Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .unwrap();
        let real = format!(
            "{}/bin/rustc",
            String::from_utf8_lossy(&sysroot.stdout).trim()
        );
        let fake = w.tmp.path().join("tc2/rustc");
        fs::create_dir_all(fake.parent().unwrap()).unwrap();
        fs::write(&fake, format!("#!/bin/sh\nif [ \"$1\" = -vV ]; then \"{real}\" -vV; echo other; exit 0; fi\nexec \"{real}\" \"$@\"\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        build("n", &[("RUSTC", fake.to_str().unwrap())], None);
    }
    build(
        "v",
        &[],
        Some((
            "alpha/Cargo.toml",
            "version.workspace = true",
            "version = \"0.2.0\"",
        )),
    );

    let measure = |name: &str, args: &[&str]| -> (u64, u64) {
        let ws = w.tmp.path().join(name).join("ws");
        copy_tree(&fixture, &ws);
        fs::copy(ws_a.join("Cargo.lock"), ws.join("Cargo.lock")).unwrap();
        let cache = w.cache(&format!("{name}-cache"));
        let mut plan_args = args.to_vec();
        plan_args.extend(["--dry-run", "--json"]);
        let plan = json(&w.sync(&cache, &ws, &plan_args));
        let sizes: std::collections::BTreeMap<String, u64> = plan["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["key"].as_str().unwrap().to_string(),
                    t["size"].as_u64().unwrap(),
                )
            })
            .collect();
        let o = w.sync(&cache, &ws, args);
        ok(&o);
        let pulled = json(&w.sync(&cache, &ws, &["--pull", "--json"]));
        let _ = pulled;
        let total: u64 = sizes.values().sum();
        let o = cargo_through_kache(&ws, &w.tmp.path().join(name).join("t"), &cache, &["build"])
            .output()
            .unwrap();
        ok(&o);
        let ev = fs::read_to_string(cache.join("events.jsonl")).unwrap();
        let mut used = 0;
        for l in ev.lines() {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            if e["result"] == "local_hit" {
                used += sizes.get(e["key"].as_str().unwrap()).copied().unwrap_or(0);
            } else if e["result"] == "miss" {
                panic!("the build missed after the pull: {l}");
            }
        }
        (total, used)
    };
    let (p1, u1) = measure("b", &["--pull"]);
    let (p2, u2) = measure("c", &["--pull", "--all"]);
    println!(
        "bucket: stable + {second}, alpha 0.1.0 + 0.2.0\n\
         filtered pull: {p1} bytes pulled, {u1} used: {:.2}\n\
         --all pull:    {p2} bytes pulled, {u2} used: {:.2}",
        p1 as f64 / u1 as f64,
        p2 as f64 / u2 as f64
    );
}
