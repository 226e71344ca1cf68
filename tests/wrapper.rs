//! Wrapper mode under real `cargo build`s of the fixture workspace in
//! `tests/fixtures/ws` (path dependencies only; `--offline`).
//!
//! The workspace: `alpha` (lib, a feature, an `option_env!`), `beta`
//! (lib on alpha), `macros` (proc-macro), `genlib` (build script that sets
//! a rustc-env and writes into `OUT_DIR`) and `app` (bin printing a value
//! computed through all of them).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{cargo_through_kache, clean_env, copy_tree, kache, kache_bin, show, stderr};

/// Compiles a cold build of the fixture runs through kache.
const COMPILES: usize = 6;
const APP_OUT: &str = "hello total=52 label=built";

fn fixture_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ws")
}

/// One test's sandbox: a temp dir holding checkouts, target dirs and the
/// cache dir.
struct Sandbox {
    dir: tempfile::TempDir,
    cache: PathBuf,
}

/// A checkout of the fixture with its own target dir.
struct Checkout {
    ws: PathBuf,
    target: PathBuf,
    cache: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        Sandbox { dir, cache }
    }

    /// A workspace written from `files` (relative path, content), with its
    /// own target dir.
    fn workspace(&self, name: &str, files: &[(&str, &str)]) -> Checkout {
        let ws = self.dir.path().join(name).join("ws");
        for (rel, text) in files {
            let p = ws.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        Checkout {
            target: self.dir.path().join(name).join("target"),
            ws,
            cache: self.cache.clone(),
        }
    }

    fn checkout(&self, name: &str) -> Checkout {
        let ws = self.dir.path().join(name).join("ws");
        copy_tree(&fixture_src(), &ws);
        Checkout {
            target: self.dir.path().join(name).join("target"),
            ws,
            cache: self.cache.clone(),
        }
    }

    fn events_path(&self) -> PathBuf {
        self.cache.join("events.jsonl")
    }

    /// The events logged since the last call (the log is emptied).
    fn take_events(&self) -> Vec<serde_json::Value> {
        let p = self.events_path();
        let text = fs::read_to_string(&p).unwrap_or_default();
        let _ = fs::remove_file(&p);
        text.lines()
            .map(|l| serde_json::from_str(l).expect("event is JSON"))
            .collect()
    }
}

/// The compile events (non-empty crate) of a list: build-script runs,
/// a kind of their own, are judged in `differential::build_scripts`.
fn compiles(ev: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    ev.iter()
        .filter(|e| e["crate"] != "" && e["lang"] != "build-script")
        .collect()
}

fn results(ev: &[serde_json::Value]) -> Vec<(String, String)> {
    compiles(ev)
        .iter()
        .map(|e| {
            (
                e["crate"].as_str().unwrap().to_string(),
                e["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn keys(ev: &[serde_json::Value]) -> BTreeSet<String> {
    compiles(ev)
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

fn assert_all(ev: &[serde_json::Value], result: &str, n: usize) {
    let r = results(ev);
    assert_eq!(r.len(), n, "{r:?}");
    assert!(
        r.iter().all(|(_, x)| x == result),
        "expected all {result}: {r:?}"
    );
}

impl Checkout {
    fn cargo(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.cargo_cmd(args, env).output().unwrap()
    }

    fn cargo_cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = cargo_through_kache(&self.ws, &self.target, &self.cache, args);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn build_ok(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let o = self.cargo(args, env);
        assert!(o.status.success(), "cargo {args:?} failed\n{}", show(&o));
        o
    }

    fn run_app(&self, profile: &str) -> String {
        self.run_bin(profile, "app")
    }

    fn run_bin(&self, profile: &str, bin: &str) -> String {
        let o = Command::new(self.target.join(profile).join(bin))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let p = self.ws.join(rel);
        let s = fs::read_to_string(&p).unwrap();
        assert!(s.contains(from));
        fs::write(&p, s.replace(from, to)).unwrap();
    }
}

/// The names of the files in the store's `tmp/`.
fn tmp_files(cache: &Path) -> Vec<String> {
    match fs::read_dir(cache.join("tmp")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every manifest in the store parses and names blobs that exist with
/// the recorded size and content. Returns the number of entries.
fn assert_entries_complete(cache: &Path) -> usize {
    let mut n = 0;
    let Ok(crates) = fs::read_dir(cache.join("entries")) else {
        return 0;
    };
    for c in crates {
        for m in fs::read_dir(c.unwrap().path()).unwrap() {
            let p = m.unwrap().path();
            let bytes = fs::read(&p).unwrap();
            let e: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|err| panic!("half-written manifest {}: {err}", p.display()));
            for f in e["files"].as_array().unwrap() {
                let h = f["hash"].as_str().unwrap();
                let blob = cache.join("blobs").join(&h[..2]).join(h);
                let data = fs::read(&blob)
                    .unwrap_or_else(|err| panic!("{}: blob {h} missing: {err}", p.display()));
                assert_eq!(data.len() as u64, f["size"].as_u64().unwrap(), "{h}");
                assert_eq!(blake3::hash(&data).to_hex().as_str(), h, "blob {h} corrupt");
            }
            n += 1;
        }
    }
    n
}

/// The store holds only complete entries: every one `kache list` shows
/// verifies, `kache gc --verify` finds nothing wrong, and gc leaves
/// `tmp/` empty. Returns the gc report.
fn assert_store_sound(cache: &Path) -> serde_json::Value {
    let n = assert_entries_complete(cache);
    let o = kache(cache).args(["list", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), n, "{listed}");
    let o = kache(cache)
        .args(["gc", "--verify", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["corrupt_blobs"], 0, "{rep}");
    assert_eq!(rep["entries_removed"], 0, "{rep}");
    assert_eq!(rep["entries_kept"], n as u64, "{rep}");
    let left = tmp_files(cache);
    let owners: Vec<String> = left
        .iter()
        .map(|n| {
            let pid = n.split('.').nth(1).unwrap_or("");
            fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()
        })
        .collect();
    assert_eq!(left, Vec::<String>::new(), "gc left tmp files {owners:?}");
    rep
}

#[test]
fn cold_clean_warm_fresh_edit_and_second_checkout() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let cold = sb.take_events();
    assert_all(&cold, "miss", COMPILES);
    // Entries sit under their cargo package (build scripts included), so
    // `kache sync --pull` finds them through Cargo.lock.
    let dirs: BTreeSet<String> = fs::read_dir(sb.cache.join("entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let want: BTreeSet<String> = ["alpha", "app", "beta", "genlib", "macros"]
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    assert_eq!(dirs, want);
    // Incremental compilation stays on for the workspace's crates, in
    // cargo's own directory (issue 22).
    let inc = a.target.join("debug/incremental");
    assert!(
        fs::read_dir(&inc).is_ok_and(|mut d| d.next().is_some()),
        "no incremental session under {}",
        inc.display()
    );
    assert!(
        compiles(&cold)
            .iter()
            .all(|e| e["compile_ms"].as_u64().is_some())
    );

    // cargo clean, then a warm build: every compile is a local hit.
    a.build_ok(&["clean"], &[]);
    a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let warm = sb.take_events();
    assert_all(&warm, "local_hit", COMPILES);
    assert_eq!(keys(&warm), keys(&cold));

    // Restored files are private, writable copies: no inode is shared
    // with a blob, so nothing written into target/ reaches the store.
    use std::os::unix::fs::MetadataExt;
    let mut blobs = BTreeSet::new();
    for d in fs::read_dir(sb.cache.join("blobs")).unwrap() {
        for b in fs::read_dir(d.unwrap().path()).unwrap() {
            blobs.insert(b.unwrap().metadata().unwrap().ino());
        }
    }
    for e in fs::read_dir(a.target.join("debug/deps")).unwrap() {
        let m = e.unwrap().metadata().unwrap();
        assert!(!blobs.contains(&m.ino()));
        assert!(!m.permissions().readonly());
    }

    // After a restore, cargo considers everything fresh.
    let v = a.build_ok(&["build", "-v"], &[]);
    let err = stderr(&v);
    assert!(!err.contains("Running"), "{err}");
    assert!(err.contains("Fresh alpha"), "{err}");
    assert!(compiles(&sb.take_events()).is_empty());

    // A second checkout at another path (own target dir) hits everything.
    // (with progress lines asked for).
    let b = sb.checkout("b");
    let o = b.build_ok(&["build"], &[("KACHE_PROGRESS", "1")]);
    assert_eq!(b.run_app("debug"), APP_OUT);
    let err = stderr(&o);
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("[kache] ")).collect();
    assert_eq!(progress.len(), COMPILES, "{}", show(&o));
    assert!(
        progress
            .iter()
            .any(|l| l.starts_with("[kache] alpha: local hit ("))
    );
    assert_all(&sb.take_events(), "local_hit", COMPILES);

    // Editing beta recompiles beta and app only; the program shows it.
    a.edit("beta/src/lib.rs", "+ 2", "+ 5");
    a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), "hello total=55 label=built");
    let mut r = results(&sb.take_events());
    r.sort();
    assert_eq!(
        r,
        vec![
            ("app".into(), "miss".into()),
            ("beta".into(), "miss".into())
        ]
    );
    // Reverting serves the old entries again, not the edited ones.
    a.edit("beta/src/lib.rs", "+ 5", "+ 2");
    a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let mut r = results(&sb.take_events());
    r.sort();
    assert_eq!(
        r,
        vec![
            ("app".into(), "local_hit".into()),
            ("beta".into(), "local_hit".into())
        ]
    );
}

#[test]
fn features_flags_profile_env_and_check_make_separate_entries() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    a.build_ok(&["build"], &[]);
    let base = keys(&sb.take_events());
    assert_eq!(base.len(), COMPILES);

    let variant = |what: &str, args: &[&str], env: &[(&str, &str)], expect_miss: &[&str]| {
        a.build_ok(args, env);
        let ev = sb.take_events();
        let r = results(&ev);
        for c in expect_miss {
            assert!(
                r.iter().any(|(n, x)| n == c && x == "miss"),
                "{what}: expected {c} to miss: {r:?}"
            );
        }
        ev
    };

    let ev = variant(
        "feature",
        &["build", "--features", "app/extra"],
        &[],
        &["alpha", "beta", "app"],
    );
    assert!(keys(&ev).iter().any(|k| !base.contains(k)));
    assert_eq!(a.run_app("debug"), "hello total=1012 label=built");

    variant(
        "rustflags",
        &["build"],
        &[("RUSTFLAGS", "--cfg kache_test")],
        &["alpha", "beta", "genlib", "app"],
    );
    variant(
        "deny warnings",
        &["build"],
        &[("RUSTFLAGS", "-D warnings")],
        &["alpha", "beta", "genlib", "app"],
    );
    variant(
        "release",
        &["build", "--release"],
        &[],
        &["alpha", "beta", "genlib", "app"],
    );
    assert_eq!(a.run_app("release"), APP_OUT);

    // An env var read with option_env!: only alpha and its dependents.
    let ev = variant(
        "env",
        &["build"],
        &[("KACHE_FIXTURE_GREETING", "hi")],
        &["alpha", "app"],
    );
    assert!(!results(&ev).iter().any(|(n, _)| n == "genlib"));
    assert_eq!(a.run_app("debug"), "hi total=52 label=built");
    // Set but empty is not unset.
    variant(
        "empty env",
        &["build"],
        &[("KACHE_FIXTURE_GREETING", "")],
        &["alpha", "app"],
    );
    assert_eq!(a.run_app("debug"), "total=52 label=built");
    // ... and back: served from the first entries.
    a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let r = results(&sb.take_events());
    assert!(r.iter().all(|(_, x)| x == "local_hit"), "{r:?}");

    // A build-script env var (rerun-if-env-changed -> rustc-env -> env!).
    variant(
        "build env",
        &["build"],
        &[("KACHE_FIXTURE_BUILD", "other")],
        &["genlib", "app"],
    );
    assert_eq!(a.run_app("debug"), "hello total=52 label=other");

    // cargo check never takes a cargo build entry, nor the other way.
    a.build_ok(&["clean"], &[]);
    variant(
        "check",
        &["check"],
        &[],
        &["alpha", "beta", "genlib", "app"],
    );
    a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let r = results(&sb.take_events());
    assert!(r.iter().all(|(_, x)| x == "local_hit"), "{r:?}");
    a.build_ok(&["clean"], &[]);
    a.build_ok(&["check"], &[]);
    let r = results(&sb.take_events());
    assert!(r.iter().all(|(_, x)| x == "local_hit"), "{r:?}");
}

#[test]
fn compile_error_passes_through_and_is_not_stored() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    a.edit(
        "beta/src/lib.rs",
        "alpha::base() + 2",
        "alpha::base() + \"two\"",
    );
    let o = a.cargo(&["build"], &[]);
    assert!(!o.status.success(), "{}", show(&o));
    let err = stderr(&o);
    assert!(err.contains("error[E0277]"), "{err}");
    assert!(err.contains("beta/src/lib.rs"), "{err}");
    assert!(!err.contains("kache"), "{err}");
    let r = results(&sb.take_events());
    assert!(r.contains(&("beta".into(), "miss".into())), "{r:?}");
    let beta_entries = sb.cache.join("entries/beta");
    assert!(
        !beta_entries.exists() || fs::read_dir(&beta_entries).unwrap().count() == 0,
        "a failed compile was stored"
    );
    // Same result as rustc without kache.
    let plain = a.cargo(&["build"], &[("KACHE_DISABLED", "1")]);
    assert_eq!(plain.status.code(), o.status.code());
    sb.take_events();

    // Warnings are part of the entry: a hit replays them.
    a.edit(
        "beta/src/lib.rs",
        "alpha::base() + \"two\"\n}",
        "alpha::base() + 2\n}\n\nfn unused_helper() {}",
    );
    let warnings = |o: &Output| -> Vec<String> {
        stderr(o)
            .lines()
            .skip_while(|l| !l.starts_with("warning: function `unused_helper`"))
            .take_while(|l| !l.contains("generated 1 warning"))
            .map(String::from)
            .collect()
    };
    let cold = a.build_ok(&["build"], &[]);
    let cold_w = warnings(&cold);
    assert!(cold_w.len() > 2, "{}", show(&cold));
    a.build_ok(&["clean"], &[]);
    sb.take_events();
    let warm = a.build_ok(&["build"], &[]);
    let r = results(&sb.take_events());
    assert!(r.contains(&("beta".into(), "local_hit".into())), "{r:?}");
    assert_eq!(warnings(&warm), cold_w);
}

#[test]
fn concurrent_builds_share_one_cache() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    let b = sb.checkout("b");
    std::thread::scope(|s| {
        let ha = s.spawn(|| a.cargo(&["build"], &[]));
        let hb = s.spawn(|| b.cargo(&["build"], &[]));
        for o in [ha.join().unwrap(), hb.join().unwrap()] {
            assert!(o.status.success(), "{}", show(&o));
        }
    });
    assert_eq!(a.run_app("debug"), APP_OUT);
    assert_eq!(b.run_app("debug"), APP_OUT);
    let r = results(&sb.take_events());
    assert_eq!(r.len(), 2 * COMPILES, "{r:?}");
    assert!(
        r.iter().all(|(_, x)| x == "miss" || x == "local_hit"),
        "{r:?}"
    ); // The per-key lock: each compile ran once, the other build restored it.
    let misses = r.iter().filter(|(_, x)| x == "miss").count();
    assert_eq!(misses, COMPILES, "{r:?}");
    assert_store_sound(&sb.cache);
}

#[test]
fn unwritable_cache_dir_fails_open_with_one_warning_per_compile() {
    let sb = Sandbox::new();
    let mut a = sb.checkout("a");
    let file = sb.dir.path().join("a-file");
    fs::write(&file, "not a dir").unwrap();
    a.cache = file.join("cache");
    let o = a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("kache")).collect();
    assert_eq!(warnings.len(), COMPILES, "{err}");
    for w in warnings {
        assert!(w.starts_with("warning: kache: "), "{w}");
        assert!(w.ends_with("; running rustc uncached"), "{w}");
    }
}

#[test]
fn disabled_never_touches_the_store() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    a.build_ok(&["build"], &[("KACHE_DISABLED", "1")]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    assert!(!sb.cache.exists());
}

#[test]
fn disabled_after_restore_recompiles_over_read_only_links() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    a.build_ok(&["build", "-p", "alpha"], &[]);
    assert_all(&sb.take_events(), "miss", 1);
    a.build_ok(&["clean"], &[]);
    a.build_ok(&["build", "-p", "alpha"], &[]);
    assert_all(&sb.take_events(), "local_hit", 1);
    a.edit("alpha/src/lib.rs", "{ 40 }", "{ 41 }");
    a.build_ok(&["build"], &[("KACHE_DISABLED", "1")]);
    assert_eq!(a.run_app("debug"), "hello total=53 label=built");
    assert!(compiles(&sb.take_events()).is_empty());
}

#[test]
fn argv_shapes() {
    let mut c = Command::new(kache_bin());
    clean_env(&mut c);
    let dir = tempfile::tempdir().unwrap();
    c.env("KACHE_CACHE_DIR", dir.path().join("cache"));
    // rustc -vV passes through.
    let o = c.args(["rustc", "-vV"]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("rustc "));
    // The workspace-wrapper shape runs the wrapper with the rest.
    let mut c = Command::new(kache_bin());
    clean_env(&mut c);
    c.env("KACHE_CACHE_DIR", dir.path().join("cache"));
    let o = c.args(["/bin/echo", "rustc", "-vV"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "rustc -vV");
    // A C compiler run through RUSTC_WRAPPER by the cc crate (`$CC`
    // given as a path is run as is).
    let mut c = Command::new(kache_bin());
    clean_env(&mut c);
    c.env("KACHE_CACHE_DIR", dir.path().join("cache"));
    let o = c.args(["/bin/echo", "-O0", "x.c"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "-O0 x.c",
        "{}",
        show(&o)
    );
    // Subcommands are still subcommands.
    let mut c = Command::new(kache_bin());
    clean_env(&mut c);
    let o = c.args(["help"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Usage"),
        "{}",
        show(&o)
    );
    // An @argfile is read (and rustc sees it unchanged).
    let argfile = dir.path().join("args");
    fs::write(&argfile, "-vV\n").unwrap();
    let mut c = Command::new(kache_bin());
    clean_env(&mut c);
    c.env("KACHE_CACHE_DIR", dir.path().join("cache"));
    let o = c
        .arg("rustc")
        .arg(format!("@{}", argfile.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("rustc "));
}

#[test]
fn executables_pass_through_when_not_cached() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    a.build_ok(&["build"], &[("KACHE_CACHE_EXECUTABLES", "false")]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let mut r = results(&sb.take_events());
    r.sort();
    let want: Vec<(String, String)> = [
        ("alpha", "miss"),
        ("app", "passthrough"),
        ("beta", "miss"),
        ("build_script_build", "passthrough"),
        ("genlib", "miss"),
        ("macros", "passthrough"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(r, want);
}

/// A one-package workspace whose binary embeds `data.bin` (large, so
/// storing it takes a while).
fn big_workspace(sb: &Sandbox) -> Checkout {
    sb.workspace(
        "big",
        &[
            (
                "Cargo.toml",
                "[workspace]\nresolver = \"3\"\nmembers = [\"big\"]\n",
            ),
            (
                "big/Cargo.toml",
                "[package]\nname = \"big\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
            ),
            (
                "big/src/main.rs",
                "static DATA: &[u8] = include_bytes!(\"../data.bin\");\n\
                 fn main() {\n\
                 \x20   let s: u64 = DATA.iter().map(|&b| u64::from(b)).sum();\n\
                 \x20   println!(\"sum={s} len={}\", DATA.len());\n\
                 }\n",
            ),
        ],
    )
}

/// Pseudo-random bytes (incompressible enough), and the line the big
/// program prints for them.
fn big_data(seed: u32, len: usize) -> (Vec<u8>, String) {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    (data, format!("sum={sum} len={len}"))
}

#[test]
fn killed_while_storing_leaves_no_half_entry() {
    let sb = Sandbox::new();
    let c = big_workspace(&sb);
    let mut leftovers = Vec::new();
    let mut want = String::new();
    // Kill the whole build (cargo, kache, rustc) with SIGKILL as soon as
    // kache has a blob half written under tmp/. A try that misses the
    // window (the store was too quick) changes the data and tries again.
    for seed in 1..=6 {
        let (data, line) = big_data(seed, 24 << 20);
        fs::write(c.ws.join("big/data.bin"), &data).unwrap();
        want = line;
        use std::os::unix::process::CommandExt;
        let mut child = c
            .cargo_cmd(&["build"], &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_mins(5);
        let mut killed = false;
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            if tmp_files(&sb.cache).iter().any(|n| n.starts_with("blob.")) {
                let st = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status()
                    .unwrap();
                assert!(st.success());
                killed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = child.kill();
        child.wait().unwrap();
        if !killed {
            continue;
        }
        // Right after the crash: no half entry is visible.
        assert_entries_complete(&sb.cache);
        leftovers = tmp_files(&sb.cache);
        // SIGKILL is asynchronous: wait until each writer is at least a
        // zombie (which gc counts as dead; it may stay one until reaped).
        for n in &leftovers {
            let stat = format!("/proc/{}/stat", n.split('.').nth(1).unwrap());
            for _ in 0..500 {
                match fs::read_to_string(&stat) {
                    Ok(s) if !s.contains(") Z") => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    _ => break,
                }
            }
        }
        if !leftovers.is_empty() {
            break;
        }
    }
    assert!(
        !leftovers.is_empty(),
        "never caught kache while it was storing"
    );

    // The next build through kache works and the program is right.
    c.build_ok(&["build"], &[]);
    assert_eq!(c.run_bin("debug", "big"), want);
    // ... and so does a build from the cache.
    c.build_ok(&["clean"], &[]);
    c.build_ok(&["build"], &[]);
    assert_eq!(c.run_bin("debug", "big"), want);

    // Only complete entries; the dead writer's leftovers are gone (the
    // first stored miss counts the store, a gc pass that clears them, or
    // this gc does).
    assert_store_sound(&sb.cache);
    let left = tmp_files(&sb.cache);
    assert!(
        leftovers.iter().all(|n| !left.contains(n)),
        "{leftovers:?} still in tmp/"
    );

    // Builds from the cache killed at staggered points (lookup, restore,
    // replay): the next build is still right and the store still sound.
    for delay_ms in [0, 20, 60, 150, 400] {
        c.build_ok(&["clean"], &[]);
        use std::os::unix::process::CommandExt;
        let mut child = c
            .cargo_cmd(&["build"], &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status();
        child.wait().unwrap();
        c.build_ok(&["build"], &[]);
        assert_eq!(c.run_bin("debug", "big"), want, "killed after {delay_ms}ms");
        assert_store_sound(&sb.cache);
    }
}

/// Unmounts a test mount, even when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_builds_right_with_one_warning_per_failed_store() {
    let sb = Sandbox::new();
    fs::create_dir_all(&sb.cache).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&sb.cache)
        .output();
    // Needs root, as this project's machines and CI run: fail loudly
    // rather than pass without testing anything.
    match mounted {
        Ok(o) if o.status.success() => {}
        other => panic!("this test needs root to mount a tmpfs: {other:?}"),
    }
    let _unmount = Unmount(sb.cache.clone());
    let one_line_warnings = |o: &Output| -> usize {
        let err = stderr(o);
        let warnings: Vec<&str> = err.lines().filter(|l| l.contains("kache")).collect();
        for w in &warnings {
            assert!(w.starts_with("warning: kache: "), "{err}");
            assert!(w.ends_with("; rustc output not cached"), "{err}");
        }
        warnings.len()
    };

    // A disk full from the start: every store fails, nothing is left.
    for d in ["blobs", "entries", "index", "tmp", "locks", "toolchains"] {
        fs::create_dir_all(sb.cache.join(d)).unwrap();
    }
    let filler = sb.cache.join("filler");
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }
    let z = sb.checkout("z");
    let o = z.build_ok(&["build"], &[]);
    assert_eq!(z.run_app("debug"), APP_OUT);
    assert_eq!(one_line_warnings(&o), COMPILES, "{}", show(&o));
    assert_eq!(tmp_files(&sb.cache), Vec::<String>::new());
    assert_eq!(assert_entries_complete(&sb.cache), 0);
    fs::remove_file(&filler).unwrap();

    // Room for some outputs, not all.
    let a = sb.checkout("a");
    let o = a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let warnings = one_line_warnings(&o);
    // Each compile either stored a complete entry or warned once.
    let stored = assert_entries_complete(&sb.cache);
    assert!(warnings > 0, "the disk never filled up\n{}", show(&o));
    assert_eq!(warnings + stored, COMPILES, "{}", show(&o));
    // The failed stores left nothing behind in tmp/.
    assert_eq!(tmp_files(&sb.cache), Vec::<String>::new());
    assert_store_sound(&sb.cache);

    // Still right from the (partial) cache.
    a.build_ok(&["clean"], &[]);
    a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    // Same exit code as without kache on a failing compile.
    a.edit(
        "beta/src/lib.rs",
        "alpha::base() + 2",
        "alpha::base() + \"two\"",
    );
    let failed = a.cargo(&["build"], &[]);
    let plain = a.cargo(&["build"], &[("KACHE_DISABLED", "1")]);
    assert!(!failed.status.success());
    assert_eq!(failed.status.code(), plain.status.code());
    assert_store_sound(&sb.cache);
}

#[test]
fn source_edited_while_rustc_runs_is_not_stored_under_the_new_content() {
    let sb = Sandbox::new();
    let sync = sb.dir.path().join("sync");
    fs::create_dir_all(&sync).unwrap();
    // `pause!()` tells the test the compile has started (rustc has read
    // the source by then) and waits until the test has edited it.
    let c = sb.workspace(
        "edit",
        &[
            (
                "Cargo.toml",
                "[workspace]\nresolver = \"3\"\nmembers = [\"pause\", \"prog\"]\n",
            ),
            (
                "pause/Cargo.toml",
                "[package]\nname = \"pause\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\
                 [lib]\nproc-macro = true\n",
            ),
            (
                "pause/src/lib.rs",
                "use proc_macro::TokenStream;\n\
                 #[proc_macro]\n\
                 pub fn pause(_: TokenStream) -> TokenStream {\n\
                 \x20   if let Some(d) = std::env::var_os(\"KACHE_TEST_SYNC\") {\n\
                 \x20       let d = std::path::PathBuf::from(d);\n\
                 \x20       std::fs::write(d.join(\"started\"), b\"\").unwrap();\n\
                 \x20       for _ in 0..6000 {\n\
                 \x20           if d.join(\"go\").exists() { break; }\n\
                 \x20           std::thread::sleep(std::time::Duration::from_millis(10));\n\
                 \x20       }\n\
                 \x20   }\n\
                 \x20   TokenStream::new()\n\
                 }\n",
            ),
            (
                "prog/Cargo.toml",
                "[package]\nname = \"prog\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\
                 [dependencies]\npause = { path = \"../pause\" }\n",
            ),
            (
                "prog/src/main.rs",
                "pause::pause!();\nfn main() {\n    println!(\"v={}\", 1);\n}\n",
            ),
        ],
    );
    // Build the proc macro first, without pausing.
    c.build_ok(&["build", "-p", "pause"], &[]);
    let sync_s = sync.to_str().unwrap();
    let env = [("KACHE_TEST_SYNC", sync_s)];
    let child = {
        let mut cmd = c.cargo_cmd(&["build"], &env);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_mins(2);
    while !sync.join("started").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "compile never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // rustc compiles the old source; the file now holds the new one.
    c.edit("prog/src/main.rs", "\"v={}\", 1", "\"v={}\", 2");
    fs::write(sync.join("go"), b"").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(c.run_bin("debug", "prog"), "v=1");

    // cargo sees the edit and recompiles: the result must be the new
    // program, never the old output stored under the new source's key.
    c.build_ok(&["build"], &env);
    assert_eq!(c.run_bin("debug", "prog"), "v=2");
    c.build_ok(&["clean"], &[]);
    c.build_ok(&["build"], &env);
    assert_eq!(c.run_bin("debug", "prog"), "v=2");
    assert_store_sound(&sb.cache);
}

/// `KACHE_VERIFY=1`: a hit also compiles for real; a stored entry that no
/// longer matches (here a blob damaged behind kache's back) is reported
/// with crate, key and file, counted by `kache stats`, and the compiled
/// output is what the build uses.
#[test]
fn verify_mode_reports_a_mismatch_and_keeps_the_compiled_output() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    // Non-incremental: an incremental compile is not byte-reproducible
    // even under plain cargo, so KACHE_VERIFY does not compare it (see
    // `verify_mode_skips_incremental_compiles`).
    let off = ("CARGO_INCREMENTAL", "0");
    a.build_ok(&["build"], &[off]);
    sb.take_events();
    // Damage alpha's stored rlib (same size, other bytes).
    let mut damaged = 0;
    for d in fs::read_dir(sb.cache.join("entries/alpha")).unwrap() {
        let e: serde_json::Value =
            serde_json::from_slice(&fs::read(d.unwrap().path()).unwrap()).unwrap();
        for f in e["files"].as_array().unwrap() {
            if f["name"].as_str().unwrap().ends_with(".rlib") {
                let h = f["hash"].as_str().unwrap();
                let p = sb.cache.join("blobs").join(&h[..2]).join(h);
                let mut bytes = fs::read(&p).unwrap();
                let n = bytes.len();
                bytes[n / 2] ^= 0xff;
                let mut perm = fs::metadata(&p).unwrap().permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perm.set_readonly(false);
                fs::set_permissions(&p, perm).unwrap();
                fs::write(&p, bytes).unwrap();
                damaged += 1;
            }
        }
    }
    assert_eq!(damaged, 1);
    a.build_ok(&["clean"], &[]);
    let o = a.build_ok(&["build"], &[("KACHE_VERIFY", "1"), off]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let err = stderr(&o);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("verify mismatch"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("crate alpha key "), "{err}");
    assert!(lines[0].contains(".rlib"), "{err}");
    let s = kache(&sb.cache).args(["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(v["verify_mismatches"], 1, "{}", show(&s));
    let ev = sb.take_events();
    let r = results(&ev);
    assert_eq!(
        r.iter().filter(|(_, x)| x == "verify_mismatch").count(),
        1,
        "{r:?}"
    );
    assert_eq!(
        r.iter().filter(|(_, x)| x == "verified").count(),
        COMPILES - 1,
        "{r:?}"
    );
}

/// Two clean incremental compiles of one crate differ in their object
/// files under plain cargo too: `KACHE_VERIFY` runs an incremental compile
/// for real, keeps its output and logs it as not compared, never as a
/// mismatch.
#[test]
fn verify_mode_skips_incremental_compiles() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    a.build_ok(&["build"], &[]);
    a.build_ok(&["clean"], &[]);
    sb.take_events();
    let o = a.build_ok(&["build"], &[("KACHE_VERIFY", "1")]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    assert!(!stderr(&o).contains("verify mismatch"), "{}", show(&o));
    let r = results(&sb.take_events());
    assert!(
        r.iter().any(|(_, x)| x == "passthrough"),
        "no incremental compile was skipped: {r:?}"
    );
    assert!(r.iter().all(|(_, x)| x != "verify_mismatch"), "{r:?}");
}

/// `kache why-miss CRATE` names the input that made the last miss.
#[test]
fn why_miss_names_the_changed_input() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    a.build_ok(&["build"], &[]);
    let none = kache(&sb.cache)
        .args(["why-miss", "alpha"])
        .output()
        .unwrap();
    assert!(none.status.success(), "{}", show(&none));
    assert!(
        String::from_utf8_lossy(&none.stdout).contains("no other entry of alpha"),
        "{}",
        show(&none)
    );
    a.edit("alpha/src/lib.rs", "{ 40 }", "{ 41 }");
    a.build_ok(&["build"], &[]);
    let o = kache(&sb.cache)
        .args(["why-miss", "alpha", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = v["nearest"]["differences"].as_array().unwrap();
    assert_eq!(d.len(), 1, "{v:#}");
    assert_eq!(d[0]["input"], "file alpha/src/lib.rs", "{v:#}");
    assert_eq!(d[0]["kind"], "a source or link input");
    // An env var: shown by class, never by value.
    a.build_ok(&["build"], &[("RUSTFLAGS", "-C opt-level=1")]);
    let o = kache(&sb.cache)
        .args(["why-miss", "alpha"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("arg -C opt-level"), "{text}");
    let unknown = kache(&sb.cache)
        .args(["why-miss", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .starts_with("error: no recorded miss of crate nosuch"),
        "{}",
        show(&unknown)
    );
}

/// Issue 7: wrapper mode reads only the settings it needs; invalid values
/// of others (file or environment) change nothing. A file that is not
/// TOML falls back to rustc with one warning, even over read-only
/// outputs a hit restored.
#[test]
fn wrapper_needs_only_its_own_settings() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    let cfg = sb.dir.path().join("config.toml");
    let cfg_s = cfg.to_str().unwrap();
    fs::write(
        &cfg,
        "[cache]\ns3_concurrency = 0\nlocal_max_size = \"12XB\"\nbogus = 1\n\
         never_cache = [\"someone_else\"]\n\
         [cache.remote]\nendpoint = \"localhost:9000\"\ntimeout = \"soon\"\n",
    )
    .unwrap();
    let env = [("KACHE_CONFIG", cfg_s)];
    let o = a.build_ok(&["build", "-p", "alpha"], &env);
    assert!(!stderr(&o).contains("kache"), "{}", show(&o));
    assert_all(&sb.take_events(), "miss", 1);
    a.build_ok(&["clean"], &[]);
    let o = a.build_ok(
        &["build", "-p", "alpha"],
        &[
            ("KACHE_CONFIG", cfg_s),
            ("KACHE_S3_CONCURRENCY", "0"),
            ("KACHE_MAX_SIZE", "12XB"),
            ("KACHE_S3_ENDPOINT", "nope"),
            ("KACHE_LOG", "loud"),
        ],
    );
    assert!(!stderr(&o).contains("kache"), "{}", show(&o));
    assert_all(&sb.take_events(), "local_hit", 1);

    // Not TOML: alpha's restored outputs are read-only links; rustc must
    // still be able to replace them.
    fs::write(&cfg, "[cache\n").unwrap();
    a.edit("alpha/src/lib.rs", "{ 40 }", "{ 41 }");
    let o = a.build_ok(&["build"], &env);
    assert_eq!(a.run_app("debug"), "hello total=53 label=built");
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("kache")).collect();
    assert!(!warnings.is_empty(), "{err}");
    for w in &warnings {
        assert!(
            w.starts_with("warning: kache: malformed config file ")
                && w.ends_with("; running rustc uncached"),
            "{w}"
        );
    }
}

/// Issue 7: a relative `KACHE_CACHE_DIR` made a store in each crate's
/// directory; the wrapper now warns once per compile and runs rustc.
#[test]
fn a_relative_cache_dir_is_a_warning_and_plain_rustc() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    let o = a.build_ok(
        &["build", "-p", "alpha"],
        &[("KACHE_CACHE_DIR", "rel-cache")],
    );
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("kache")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("KACHE_CACHE_DIR `rel-cache` must be an absolute path"),
        "{err}"
    );
    assert!(!a.ws.join("alpha/rel-cache").exists());
    assert!(!a.ws.join("rel-cache").exists());
}

/// A crate under `never_cache` always compiles and is never stored.
#[test]
fn never_cache_compiles_the_listed_crate_every_time() {
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    let env = [("KACHE_NEVER_CACHE", "Alpha,other")];
    a.build_ok(&["build"], &env);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let r = results(&sb.take_events());
    assert!(
        r.contains(&("alpha".to_string(), "passthrough".to_string())),
        "{r:?}"
    );
    assert!(!sb.cache.join("entries/alpha").exists());
    a.build_ok(&["clean"], &[]);
    a.build_ok(&["build"], &env);
    let r = results(&sb.take_events());
    assert!(
        r.contains(&("alpha".to_string(), "passthrough".to_string())),
        "{r:?}"
    );
    assert!(
        r.contains(&("beta".to_string(), "local_hit".to_string())),
        "{r:?}"
    );
}

/// Issue 23: the store belongs to its user. A fresh store is created
/// mode 0700; one that others may write into (or, as root, one another
/// user owns) is refused: a command says so in one `error:` line, and a
/// build through the wrapper still succeeds, compiled by plain rustc with
/// one warning per compile, taking nothing from the store and adding
/// nothing to it.
#[test]
fn a_store_others_can_write_to_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sb = Sandbox::new();
    let a = sb.checkout("a");
    a.build_ok(&["build"], &[]);
    assert_eq!(fs::metadata(&sb.cache).unwrap().mode() & 0o777, 0o700);
    let entries = || {
        fs::read_dir(sb.cache.join("entries"))
            .unwrap()
            .flat_map(|c| fs::read_dir(c.unwrap().path()).unwrap())
            .count()
    };
    let stored = entries();
    assert!(stored > 0);
    sb.take_events();

    fs::set_permissions(&sb.cache, fs::Permissions::from_mode(0o777)).unwrap();
    let o = kache(&sb.cache).arg("gc").output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{}", show(&o));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cache directory ") && err.contains("writable by others"),
        "{err}"
    );
    // A planted entry is never served: the build compiles everything.
    a.build_ok(&["clean"], &[]);
    let o = a.build_ok(&["build"], &[]);
    assert_eq!(a.run_app("debug"), APP_OUT);
    let warned = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("warning: kache:") && l.contains("writable by others"))
        .count();
    assert!(warned > 0, "{}", show(&o));
    assert_eq!(entries(), stored);
    assert!(
        results(&sb.take_events()).is_empty(),
        "the wrapper used a store others can write to"
    );

    // Owned by another user (only root can make one here).
    let me = fs::metadata(sb.dir.path()).unwrap().uid();
    if me == 0 {
        fs::set_permissions(&sb.cache, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&sb.cache, Some(65534), None).unwrap();
        let o = kache(&sb.cache).arg("gc").output().unwrap();
        assert!(!o.status.success(), "{}", show(&o));
        assert!(
            stderr(&o).contains("belongs to uid 65534, not to this user"),
            "{}",
            show(&o)
        );
    }
}
