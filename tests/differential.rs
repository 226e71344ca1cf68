//! Differential tests: plain cargo is the oracle.
//!
//! Each test copies a fixture workspace from `tests/fixtures/diff/` (path
//! dependencies only), makes a change, and builds (and runs) it twice:
//! through kache (its own target and cache dirs) and with plain cargo (no
//! wrapper, its own target dir). What the programs print, and their exit
//! status, must be the same. "It hit" proves nothing about correctness:
//! a hit is only asserted to show that a test really exercised the cache.
//!
//! The classes follow issue 7 ("Never a wrong artifact"): link inputs,
//! baked paths, build-script-declared and user-declared inputs, edits
//! judged by mtime, `target-cpu=native`, restored files and later
//! compiles, paths with a space and the user's `--remap-path-prefix`; and
//! regression guards for the classes that already pass.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{cargo_plain, cargo_through_kache, copy_tree, show};

mod everyday;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diff")
        .join(name)
}

/// One checkout of a fixture: the workspace copy, the kache target dir,
/// the plain cargo target dir, and the kache cache dir (shared by every
/// checkout made under the same root).
struct Diff {
    /// `ROOT/NAME`: the checkout with its target dirs.
    base: PathBuf,
    /// The fixture copy.
    ws: PathBuf,
    /// Where cargo runs (the workspace root; `ws` unless `in_dir`).
    cwd: PathBuf,
    /// Target dir of the kache builds.
    kt: PathBuf,
    /// Target dir of the plain cargo builds.
    pt: PathBuf,
    cache: PathBuf,
}

type Env<'a> = &'a [(&'a str, &'a str)];

impl Diff {
    /// Copies fixture `fixture` to `root/name/ws`; the cache is `root/cache`.
    fn new(root: &Path, name: &str, fixture_name: &str) -> Diff {
        let base = root.join(name);
        let ws = base.join("ws");
        copy_tree(&fixture(fixture_name), &ws);
        Diff {
            cwd: ws.clone(),
            ws,
            kt: base.join("kt"),
            pt: base.join("pt"),
            cache: root.join("cache"),
            base,
        }
    }

    /// Runs cargo in `ws/sub` (a workspace root below the copy).
    fn in_dir(mut self, sub: &str) -> Diff {
        self.cwd = self.ws.join(sub);
        self
    }

    fn kache(&self, args: &[&str], env: Env<'_>) -> Output {
        let mut c = cargo_through_kache(&self.cwd, &self.kt, &self.cache, args);
        c.envs(env.iter().copied());
        c.output().unwrap()
    }

    fn plain(&self, args: &[&str], env: Env<'_>) -> Output {
        let mut c = cargo_plain(&self.cwd, &self.pt, args);
        c.envs(env.iter().copied());
        c.output().unwrap()
    }

    /// Plain cargo (kache removed from `RUSTC_WRAPPER`) on kache's target dir.
    fn plain_on_kache_target(&self, args: &[&str], env: Env<'_>) -> Output {
        let mut c = cargo_plain(&self.cwd, &self.kt, args);
        c.envs(env.iter().copied());
        c.output().unwrap()
    }

    fn kache_ok(&self, args: &[&str], env: Env<'_>) -> Output {
        let o = self.kache(args, env);
        assert!(
            o.status.success(),
            "cargo {args:?} under kache failed\n{}",
            show(&o)
        );
        o
    }

    /// `cargo ARGS` under kache and under plain cargo: the same stdout
    /// (test timings blanked) and exit status. Returns both outputs.
    fn both(&self, what: &str, args: &[&str], env: Env<'_>) -> (Output, Output) {
        let k = self.kache(args, env);
        let p = self.plain(args, env);
        assert!(
            p.status.success(),
            "{what}: plain cargo {args:?} failed (a test bug)\n{}",
            show(&p)
        );
        let (ks, ps) = (norm(&k.stdout), norm(&p.stdout));
        assert!(
            ks == ps && k.status.code() == p.status.code(),
            "{what}: `cargo {}` under kache differs from plain cargo\n\
             --- kache printed ({})\n{ks}\n--- plain cargo printed ({})\n{ps}\n\
             === kache stderr\n{}",
            args.join(" "),
            k.status,
            p.status,
            tail(&k.stderr, 40),
        );
        let fell_back: Vec<&str> = std::str::from_utf8(&k.stderr)
            .unwrap_or("")
            .lines()
            .filter(|l| l.starts_with("warning: kache:"))
            .collect();
        assert!(
            fell_back.is_empty(),
            "{what}: kache fell back to plain rustc, so the cache was not \
             exercised: {fell_back:?}"
        );
        (k, p)
    }

    /// `both`, returning the common stdout.
    fn same(&self, what: &str, args: &[&str], env: Env<'_>) -> String {
        let (k, _) = self.both(what, args, env);
        norm(&k.stdout)
    }

    /// `rm -rf` kache's target dir (so every crate comes from the store),
    /// then `same`. The plain target dir is kept.
    fn same_restored(&self, what: &str, args: &[&str], env: Env<'_>) -> String {
        self.wipe_kache_target();
        self.same(
            &format!("{what} (after rm -rf target under kache)"),
            args,
            env,
        )
    }

    fn wipe_kache_target(&self) {
        let _ = fs::remove_dir_all(&self.kt);
    }

    /// `cargo clean -p PKG` in both target dirs: cargo itself would not
    /// recompile (the change is invisible to it), so it is made to.
    fn clean_p(&self, pkg: &str) {
        let k = self.kache(&["clean", "-p", pkg], &[]);
        assert!(k.status.success(), "{}", show(&k));
        let p = self.plain(&["clean", "-p", pkg], &[]);
        assert!(p.status.success(), "{}", show(&p));
    }

    /// The (crate, result) of every compile kache logged since the last
    /// call (the event log is emptied).
    fn take_events(&self) -> Vec<(String, String)> {
        let p = self.cache.join("events.jsonl");
        let text = fs::read_to_string(&p).unwrap_or_default();
        let _ = fs::remove_file(&p);
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("event is JSON"))
            .filter(|e| e["crate"].as_str().is_some_and(|c| !c.is_empty()))
            .map(|e| {
                (
                    e["crate"].as_str().unwrap().to_string(),
                    e["result"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Asserts that kache served at least one local hit since the last
    /// look at the event log: the test exercised the cache.
    fn assert_hit(&self, what: &str) {
        let ev = self.take_events();
        assert!(
            ev.iter().any(|(_, r)| r == "local_hit"),
            "{what}: kache served no hit, so the cache was not exercised: {ev:?}"
        );
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.ws.join(rel)
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let p = self.path(rel);
        let s = fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "{rel} has no {from:?}");
        fs::write(&p, s.replace(from, to)).unwrap();
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }
}

/// Stdout as text, test timings blanked.
fn norm(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .map(|l| match l.find("; finished in ") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(b: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The packages cargo says it is compiling.
fn compiling(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("Compiling "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

fn root() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------
// 1. Link inputs
// ---------------------------------------------------------------------

/// Cold, restored from the store, then `change`, then again and restored:
/// kache must print what plain cargo prints at every step.
fn link_case(fixture_pkg: &str, env0: Env<'_>, change: impl FnOnce(&Diff), env1: Env<'_>) {
    let r = root();
    let d = Diff::new(r.path(), "a", "link");
    let run = ["run", "-q", "-p", fixture_pkg];
    let before = d.same("cold build", &run, env0);
    d.take_events();
    d.same_restored("unchanged", &run, env0);
    d.assert_hit("restore of the unchanged workspace");
    change(&d);
    let after = d.same("after the change", &run, env1);
    assert_ne!(before, after, "plain cargo saw no change (a test bug)");
    d.same_restored("after the change", &run, env1);
}

/// 1a: app -> mid -> csys; csys's build script builds libfoo.a from foo.c.
#[test]
fn link_inputs_static_lib_of_a_dependency_c_edit() {
    link_case(
        "app",
        &[],
        |d| d.edit("csys/foo.c", "100 + VALUE", "200 + VALUE"),
        &[],
    );
}

/// 1a for a test harness: app's unit test prints the C value.
#[test]
fn link_inputs_static_lib_in_a_test_harness() {
    let r = root();
    let d = Diff::new(r.path(), "a", "link");
    let test = [
        "test",
        "-q",
        "-p",
        "app",
        "--bin",
        "app",
        "--",
        "--nocapture",
    ];
    let before = d.same("cold build", &test, &[]);
    d.take_events();
    d.same_restored("unchanged", &test, &[]);
    d.assert_hit("restore of the unchanged workspace");
    d.edit("csys/foo.c", "100 + VALUE", "200 + VALUE");
    let after = d.same("after editing foo.c", &test, &[]);
    assert_ne!(before, after, "plain cargo saw no change (a test bug)");
    d.same_restored("after editing foo.c", &test, &[]);
}

/// 1b: only CFLAGS changes (read by the build script,
/// `rerun-if-env-changed=CFLAGS`).
#[test]
fn link_inputs_static_lib_of_a_dependency_cflags() {
    link_case("app", &[], |_| {}, &[("CFLAGS", "-DVALUE=2")]);
}

/// 1c: the static library is named only by `#[link(kind = "static")]`.
#[test]
fn link_inputs_link_attribute_only() {
    link_case(
        "attrsys",
        &[],
        |d| d.edit("attrsys/attr.c", "300", "301"),
        &[],
    );
}

/// 1d: `cargo:rustc-link-lib=nkfoo` without a kind.
#[test]
fn link_inputs_link_lib_without_kind() {
    link_case("nokind", &[], |d| d.edit("nokind/nk.c", "400", "401"), &[]);
}

/// 1e: an object file passed with `cargo:rustc-link-arg=/abs/obj.o`.
#[test]
fn link_inputs_object_in_link_arg() {
    link_case("objapp", &[], |d| d.edit("objapp/obj.c", "500", "501"), &[]);
}

// ---------------------------------------------------------------------
// 2. Paths baked into outputs
// ---------------------------------------------------------------------

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
// 3. Inputs cargo tracks that rustc's dep-info does not list
// ---------------------------------------------------------------------

/// A proc macro lists `migrations/`; the user's build script declares
/// `rerun-if-changed=migrations`. Edit a file, then add one.
#[test]
fn declared_inputs_rerun_if_changed_dir() {
    let r = root();
    let d = Diff::new(r.path(), "a", "inputs");
    let run = ["run", "-q", "-p", "miguser"];
    d.same("cold build", &run, &[]);
    d.take_events();
    d.same_restored("unchanged", &run, &[]);
    d.assert_hit("restore of the unchanged workspace");
    d.edit("miguser/migrations/001_init.sql", "x int", "x bigint");
    d.same("after editing migrations/001_init.sql", &run, &[]);
    d.same_restored("after editing migrations/001_init.sql", &run, &[]);
    d.write(
        "miguser/migrations/002_more.sql",
        "create table b (y int);\n",
    );
    d.same("after adding migrations/002_more.sql", &run, &[]);
    d.same_restored("after adding migrations/002_more.sql", &run, &[]);
}

/// The proc macro reads `DIFF_SOME_VAR` with `std::env::var`; the user's
/// build script declares `rerun-if-env-changed=DIFF_SOME_VAR`.
#[test]
fn declared_inputs_rerun_if_env_changed() {
    let r = root();
    let d = Diff::new(r.path(), "a", "inputs");
    let run = ["run", "-q", "-p", "miguser"];
    let one = [("DIFF_SOME_VAR", "one")];
    let two = [("DIFF_SOME_VAR", "two")];
    d.same("DIFF_SOME_VAR=one", &run, &one);
    d.take_events();
    d.same_restored("DIFF_SOME_VAR=one", &run, &one);
    d.assert_hit("restore with DIFF_SOME_VAR=one");
    d.same("DIFF_SOME_VAR=two", &run, &two);
    d.same_restored("DIFF_SOME_VAR=two", &run, &two);
    d.same("DIFF_SOME_VAR unset", &run, &[]);
    d.same("DIFF_SOME_VAR empty", &run, &[("DIFF_SOME_VAR", "")]);
}

/// A proc macro reads `data/` with no build script: cargo cannot see it
/// (both sides are made to recompile with `cargo clean -p`); with
/// `KACHE_INPUTS="datauser:files=data/**"` kache must not serve the old
/// entry.
#[test]
fn declared_inputs_user_setting_files() {
    let r = root();
    let d = Diff::new(r.path(), "a", "inputs");
    let env = [("KACHE_INPUTS", "datauser:files=data/**")];
    let run = ["run", "-q", "-p", "datauser"];
    d.same("cold build", &run, &env);
    d.take_events();
    d.same_restored("unchanged", &run, &env);
    d.assert_hit("restore of the unchanged workspace");
    d.edit("datauser/data/a.txt", "alpha", "beta");
    d.clean_p("datauser");
    d.same("after editing data/a.txt", &run, &env);
    d.write("datauser/data/b.txt", "gamma\n");
    d.clean_p("datauser");
    d.same("after adding data/b.txt", &run, &env);
    d.same_restored("after adding data/b.txt", &run, &env);
}

/// The same proc macro reads `DIFF_DATA_VAR`; declared with
/// `KACHE_INPUTS="datauser:env=DIFF_DATA_VAR"`.
#[test]
fn declared_inputs_user_setting_env() {
    let r = root();
    let d = Diff::new(r.path(), "a", "inputs");
    let decl = (
        "KACHE_INPUTS",
        "datauser:env=DIFF_DATA_VAR;pm:env=DIFF_UNUSED",
    );
    let run = ["run", "-q", "-p", "datauser"];
    let one = [decl, ("DIFF_DATA_VAR", "one")];
    let two = [decl, ("DIFF_DATA_VAR", "two")];
    d.same("DIFF_DATA_VAR=one", &run, &one);
    d.take_events();
    d.same_restored("DIFF_DATA_VAR=one", &run, &one);
    d.assert_hit("restore with DIFF_DATA_VAR=one");
    d.clean_p("datauser");
    d.same("DIFF_DATA_VAR=two", &run, &two);
    d.same_restored("DIFF_DATA_VAR=two", &run, &two);
}

/// `KACHE_NEVER_CACHE=datauser`: the crate is never stored nor served.
#[test]
fn declared_inputs_never_cache() {
    let r = root();
    let d = Diff::new(r.path(), "a", "inputs");
    let env = [("KACHE_NEVER_CACHE", "datauser,unrelated")];
    let run = ["run", "-q", "-p", "datauser"];
    d.same("cold build", &run, &env);
    d.same_restored("unchanged", &run, &env);
    let ev = d.take_events();
    assert!(
        ev.iter().any(|(c, r)| c == "pm" && r == "local_hit"),
        "other crates are still cached: {ev:?}"
    );
    assert!(
        !ev.iter()
            .any(|(c, r)| c == "datauser" && (r == "local_hit" || r == "miss")),
        "a never-cached crate went through the cache: {ev:?}"
    );
    assert!(
        !d.cache.join("entries/datauser").exists(),
        "a never-cached crate was stored"
    );
    d.edit("datauser/data/a.txt", "alpha", "beta");
    d.clean_p("datauser");
    d.same("after editing data/a.txt", &run, &env);
    d.same_restored("after editing data/a.txt", &run, &env);
}

/// A proc macro that writes a file while expanding produces nothing on a
/// hit; `KACHE_NEVER_CACHE` is the remedy: with it, a build after
/// `rm -rf target` writes the file as plain cargo does.
#[test]
fn declared_inputs_never_cache_side_effects() {
    let r = root();
    let d = Diff::new(r.path(), "a", "inputs");
    let env = [("KACHE_NEVER_CACHE", "emituser")];
    let build = ["build", "-p", "emituser"];
    let generated = d.path("emituser/generated.txt");
    d.kache_ok(&build, &env);
    assert!(
        generated.exists(),
        "the cold build wrote nothing (a test bug)"
    );
    fs::remove_file(&generated).unwrap();
    d.wipe_kache_target();
    d.kache_ok(&build, &env);
    assert!(
        generated.exists(),
        "with KACHE_NEVER_CACHE=emituser, a build after rm -rf target did not \
         run the proc macro's side effect (emituser/generated.txt missing): {:?}",
        d.take_events()
    );
    fs::remove_file(&generated).unwrap();
    let p = d.plain(&build, &[]);
    assert!(
        p.status.success() && generated.exists(),
        "plain: {}",
        show(&p)
    );
}

// ---------------------------------------------------------------------
// 4. Edits judged by mtime
// ---------------------------------------------------------------------

fn mtime(p: &Path) -> std::time::SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

/// `cp -p`: new content, old mtime.
fn replace_keeping_mtime(p: &Path, text: &str) {
    let old = mtime(p);
    fs::write(p, text).unwrap();
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(mtime(p), old);
}

/// A source edit whose mtime is set back: cargo (both sides) cannot see
/// it, but once forced to recompile, the store must never give the old
/// artifact for the new content.
#[test]
fn mtime_edit_with_old_mtime() {
    let r = root();
    let d = Diff::new(r.path(), "a", "mtime");
    let run = ["run", "-q", "-p", "prog"];
    d.same("cold build", &run, &[]);
    d.take_events();
    d.same_restored("unchanged", &run, &[]);
    d.assert_hit("restore of the unchanged workspace");
    replace_keeping_mtime(&d.path("prog/src/value.rs"), "pub const V: u32 = 2;\n");
    // cargo judges by mtime: both print the old value here.
    d.same("edited with the old mtime", &run, &[]);
    d.clean_p("prog");
    let out = d.same("edited with the old mtime, cargo clean -p prog", &run, &[]);
    assert_eq!(out, "v=2");
    d.same_restored("edited with the old mtime", &run, &[]);
}

/// The source is replaced (old mtime kept, as `cp -p` / `rsync -a` /
/// `tar x` do) while rustc compiles the old one: kache must not store the
/// old artifact under the new content. After `rm -rf target` the build
/// must print what the new source says.
#[test]
fn mtime_source_replaced_during_compile() {
    let r = root();
    let d = Diff::new(r.path(), "a", "mtime");
    let sync = r.path().join("sync");
    fs::create_dir_all(&sync).unwrap();
    d.kache_ok(&["build", "-p", "pause"], &[]);
    let mut cmd = cargo_through_kache(&d.cwd, &d.kt, &d.cache, &["build", "-p", "prog"]);
    cmd.env("DIFF_SYNC", &sync)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_mins(3);
    while !sync.join("started").exists() {
        assert!(Instant::now() < deadline, "the compile never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // rustc has read value.rs (V = 1); the file now says V = 2, old mtime.
    replace_keeping_mtime(&d.path("prog/src/value.rs"), "pub const V: u32 = 2;\n");
    fs::write(sync.join("go"), b"").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    // Plain cargo builds the new source from scratch; kache from its store.
    let out = d.same_restored(
        "source replaced during the compile",
        &["run", "-q", "-p", "prog"],
        &[],
    );
    assert_eq!(out, "v=2");
}

// ---------------------------------------------------------------------
// 5. -C target-cpu=native
// ---------------------------------------------------------------------

/// One machine cannot show another CPU's features; this checks that
/// `native`, a named CPU and `native` minus a feature never share an
/// entry wrongly (each compared with plain cargo, also from the store).
#[test]
fn target_cpu_native() {
    let r = root();
    let d = Diff::new(r.path(), "a", "native");
    let run = ["run", "-q"];
    let mut flags = vec!["-C target-cpu=native"];
    if cfg!(target_arch = "x86_64") {
        flags.push("-C target-cpu=x86-64");
        flags.push("-C target-cpu=native -C target-feature=-avx2");
        flags.push("-C target-cpu=native -C target-feature=-sse4.2");
    }
    for f in &flags {
        let env = [("RUSTFLAGS", *f)];
        d.same(&format!("RUSTFLAGS={f}"), &run, &env);
        d.same_restored(&format!("RUSTFLAGS={f}"), &run, &env);
    }
    for f in &flags {
        d.same_restored(&format!("RUSTFLAGS={f}, again"), &run, &[("RUSTFLAGS", *f)]);
    }
}

// ---------------------------------------------------------------------
// 6. Restored files and later compiles
// ---------------------------------------------------------------------

/// `cargo check` under kache, `rm -rf target`, `cargo check` again (from
/// the store); then `FIX_ARGS` (with `env`) must succeed and fix the
/// sources as it does on a plain checkout.
fn fix_after_restore(fix_args: &[&str], env: Env<'_>) {
    let r = root();
    let k = Diff::new(r.path(), "k", "fixme");
    let p = Diff::new(r.path(), "p", "fixme");
    k.kache_ok(&["check"], &[]);
    k.take_events();
    k.wipe_kache_target();
    k.kache_ok(&["check"], &[]);
    k.assert_hit("cargo check after rm -rf target");
    let o = k.kache(fix_args, env);
    assert!(
        o.status.success(),
        "`cargo {}` after kache restored `cargo check` outputs failed\n{}",
        fix_args.join(" "),
        show(&o)
    );
    let po = p.plain(fix_args, &[]);
    assert!(po.status.success(), "plain: {}", show(&po));
    assert_eq!(
        k.read("src/lib.rs"),
        p.read("src/lib.rs"),
        "`cargo {}` fixed differently after a kache restore",
        fix_args.join(" ")
    );
    assert_ne!(
        k.read("src/lib.rs"),
        fs::read_to_string(fixture("fixme/src/lib.rs")).unwrap()
    );
    k.same("after the fix", &["run", "-q"], &[]);
}

#[test]
fn restored_then_cargo_fix() {
    fix_after_restore(&["fix", "--allow-no-vcs"], &[]);
}

#[test]
fn restored_then_cargo_fix_disabled() {
    fix_after_restore(&["fix", "--allow-no-vcs"], &[("KACHE_DISABLED", "1")]);
}

#[test]
fn restored_then_clippy_fix() {
    fix_after_restore(&["clippy", "--fix", "--allow-no-vcs"], &[]);
}

#[test]
fn restored_then_clippy_fix_disabled() {
    fix_after_restore(
        &["clippy", "--fix", "--allow-no-vcs"],
        &[("KACHE_DISABLED", "1")],
    );
}

/// kache restores `cargo check` and `cargo build` outputs; then kache is
/// removed from `RUSTC_WRAPPER` and the next build (after an edit) must
/// succeed on the same target dir, without `cargo clean`.
#[test]
fn restored_then_wrapper_removed() {
    let r = root();
    let d = Diff::new(r.path(), "a", "fixme");
    for (i, cmd) in ["check", "build"].into_iter().enumerate() {
        d.wipe_kache_target();
        d.kache_ok(&[cmd], &[]);
        d.take_events();
        d.wipe_kache_target();
        d.kache_ok(&[cmd], &[]);
        d.assert_hit(&format!("cargo {cmd} after rm -rf target"));
        d.edit(
            "src/lib.rs",
            &format!("return {};", 2 + i),
            &format!("return {};", 3 + i),
        );
        let o = d.plain_on_kache_target(&[cmd], &[]);
        assert!(
            o.status.success(),
            "`cargo {cmd}` without kache, on a target dir kache restored, failed\n{}",
            show(&o)
        );
    }
    let o = d.plain_on_kache_target(&["run", "-q"], &[]);
    let p = d.plain(&["run", "-q"], &[]);
    assert!(
        o.status.success() && p.status.success(),
        "{}\n{}",
        show(&o),
        show(&p)
    );
    assert_eq!(norm(&o.stdout), norm(&p.stdout));
}

/// Every blob in the store still has the content its name says.
fn assert_blobs_intact(cache: &Path) {
    let mut n = 0;
    for sub in fs::read_dir(cache.join("blobs")).unwrap() {
        for b in fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = b.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let data = fs::read(&p).unwrap();
            assert_eq!(
                blake3::hash(&data).to_hex().as_str(),
                name,
                "a write into target/ changed the store's blob {}",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n > 0, "no blobs in the store");
}

/// As root, writing in place (`O_TRUNC`) into a restored rlib in target/
/// must not change the store: a second project on the same cache then
/// builds and runs right.
#[test]
fn restored_rlib_written_in_place_leaves_the_store_intact() {
    let r = root();
    let a = Diff::new(r.path(), "a", "fixme");
    a.kache_ok(&["build"], &[]);
    a.take_events();
    a.wipe_kache_target();
    a.kache_ok(&["build"], &[]);
    a.assert_hit("cargo build after rm -rf target");
    let deps = a.kt.join("debug/deps");
    let mut written = Vec::new();
    for e in fs::read_dir(&deps).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("libfixme") && (name.ends_with(".rlib") || name.ends_with(".rmeta")) {
            // What `cp` over an existing file does: open O_TRUNC, write.
            match fs::OpenOptions::new().write(true).truncate(true).open(&p) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(b"not an rlib any more").unwrap();
                    written.push(name);
                }
                Err(e) => assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied,
                    "{}",
                    p.display()
                ),
            }
        }
    }
    let root_user = is_root();
    assert!(
        !root_user || !written.is_empty(),
        "as root, no restored rlib could be written (a test bug)"
    );
    assert_blobs_intact(&a.cache);
    // A second project on the same cache: its lib comes from the store,
    // its bin is recompiled against it.
    let b = Diff::new(r.path(), "b", "fixme");
    b.edit("src/main.rs", "fixme = ", "fixme (b) = ");
    b.same("second project on the same cache", &["run", "-q"], &[]);
}

/// Whether the tests run as root (the `id -u` command; no unsafe code).
fn is_root() -> bool {
    let o = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

// ---------------------------------------------------------------------
// 7. Paths with a space, the user's --remap-path-prefix
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

// ---------------------------------------------------------------------
// Regression guards: classes that already pass
// ---------------------------------------------------------------------

/// The `guards` fixture, with its symlinked source made.
fn guards(root: &Path) -> Diff {
    let d = Diff::new(root, "a", "guards");
    std::os::unix::fs::symlink("../real/linked.rs", d.path("src/linked.rs")).unwrap();
    d
}

fn guard_case(env0: Env<'_>, change: impl FnOnce(&Diff), env1: Env<'_>) {
    let r = root();
    let d = guards(r.path());
    let run = ["run", "-q"];
    let before = d.same("cold build", &run, env0);
    d.take_events();
    d.same_restored("unchanged", &run, env0);
    d.assert_hit("restore of the unchanged workspace");
    change(&d);
    let after = d.same("after the change", &run, env1);
    assert_ne!(before, after, "plain cargo saw no change (a test bug)");
    d.same_restored("after the change", &run, env1);
}

#[test]
fn guard_include_bytes() {
    guard_case(&[], |d| d.write("data.bin", "bytes-two\n"), &[]);
}

#[test]
fn guard_path_module() {
    guard_case(
        &[],
        |d| d.edit("shared/pathmod.rs", "path-one", "path-two"),
        &[],
    );
}

#[test]
fn guard_symlinked_source() {
    guard_case(
        &[],
        |d| d.edit("real/linked.rs", "linked-one", "linked-two"),
        &[],
    );
}

#[test]
fn guard_symlink_retargeted() {
    guard_case(
        &[],
        |d| {
            let l = d.path("src/linked.rs");
            fs::remove_file(&l).unwrap();
            std::os::unix::fs::symlink("../real/other.rs", &l).unwrap();
            // cargo 1.95 does not notice a retargeted link: make both
            // sides recompile; kache's key must see the new content.
            d.clean_p("guards");
        },
        &[],
    );
}

#[test]
fn guard_out_dir_generated_code() {
    guard_case(&[], |d| d.write("gen.txt", "gen-two\n"), &[]);
}

#[test]
fn guard_config_env() {
    guard_case(
        &[],
        |d| d.edit(".cargo/config.toml", "\"one\"", "\"two\""),
        &[],
    );
}

#[test]
fn guard_rustflags() {
    guard_case(&[], |_| {}, &[("RUSTFLAGS", "--cfg diff_flag")]);
}

#[test]
fn guard_config_rustflags() {
    guard_case(
        &[],
        |d| d.edit(".cargo/config.toml", "\"diff_cfg\"", "\"diff_flag\""),
        &[],
    );
}

// ---------------------------------------------------------------------
// Found while writing this suite
// ---------------------------------------------------------------------

/// A target dir named `kache-target` (the spelling of one of kache's own
/// path sentinels): after an edit, kache mangles paths
/// (`/x/a/x/a/kache-target/...`) and falls back to plain rustc with
/// warnings. Output must match plain cargo and kache must not fall back.
#[test]
fn target_dir_spelled_like_a_key_sentinel() {
    let r = root();
    let mut d = Diff::new(r.path(), "a", "space");
    d.kt = d.base.join("kache-target");
    let run = ["run", "-q", "-p", "spapp"];
    d.same("cold build", &run, &[]);
    d.take_events();
    d.same_restored("unchanged", &run, &[]);
    d.assert_hit("restore of the unchanged workspace");
    d.edit("splib/src/lib.rs", "11 +", "12 +");
    let (k, _) = d.both("after editing splib", &run, &[]);
    let ev = d.take_events();
    assert!(
        !String::from_utf8_lossy(&k.stderr).contains("warning: kache")
            && !ev.iter().any(|(_, r)| r == "error"),
        "kache fell back to plain rustc with a target dir named kache-target: {ev:?}\n{}",
        show(&k)
    );
}

/// Two toolchains (`cargo +stable`, `cargo +nightly`) on one target dir
/// and cache: a library with the same source, arguments and env must not
/// be served across toolchains (the binary would fail with E0514 or run
/// the other compiler's code).
#[test]
#[ignore = "needs a nightly toolchain besides stable; .ci/run runs it when `rustup toolchain list` has one"]
fn guard_two_toolchains() {
    let tcs = std::process::Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .expect("this test needs rustup");
    assert!(
        String::from_utf8_lossy(&tcs.stdout).contains("nightly"),
        "this test needs a second toolchain: rustup toolchain install nightly"
    );
    let r = root();
    let d = Diff::new(r.path(), "a", "toolchains");
    let mut seen = Vec::new();
    for tc in ["+stable", "+nightly", "+stable"] {
        let run = [tc, "run", "-q", "-p", "tcapp"];
        let out = d.same(&format!("cargo {tc}"), &run, &[]);
        d.same_restored(&format!("cargo {tc}"), &run, &[]);
        seen.push(out);
    }
    assert_ne!(seen[0], seen[1], "the toolchains are the same (a test bug)");
}

// ---------------------------------------------------------------------
// Attack repros (/tmp/attack/repro_*.sh): cases where kache served a
// wrong artifact. Fixtures under tests/fixtures/diff/attack/.
// ---------------------------------------------------------------------

impl Diff {
    fn wipe_plain_target(&self) {
        let _ = fs::remove_dir_all(&self.pt);
    }

    /// `rm -rf` both target dirs, then `same`: for changes plain cargo
    /// does not track itself (a linker's content, a file the linker
    /// reads, PATH), so neither side can reuse what it built before.
    fn same_fresh(&self, what: &str, args: &[&str], env: Env<'_>) -> String {
        self.wipe_kache_target();
        self.wipe_plain_target();
        self.same(&format!("{what} (both targets wiped)"), args, env)
    }

    /// Writes an executable script.
    fn write_exec(&self, rel: &str, text: &str) {
        write_exec(&self.path(rel), text);
    }
}

fn write_exec(p: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The host's target triple (`rustc -vV`).
fn host_triple() -> String {
    let o = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// F1: `linker = "tools/ccwrap"` in each checkout, the wrappers differing
/// only in content (the same `--version`); then another `cc` first on
/// PATH with no `-C linker` at all.
#[test]
fn attack_linker_wrapper() {
    let r = root();
    let run = ["run", "-q"];
    let config = format!("[target.{}]\nlinker = \"tools/ccwrap\"\n", host_triple());
    let wrapper = |sym: &str| format!("#!/bin/sh\nexec cc \"$@\" -Wl,--defsym=answer={sym}\n");
    let a = Diff::new(r.path(), "a", "attack/answer");
    let b = Diff::new(r.path(), "b", "attack/answer");
    a.write(".cargo/config.toml", &config);
    b.write(".cargo/config.toml", &config);
    a.write_exec("tools/ccwrap", &wrapper("answer_one"));
    b.write_exec("tools/ccwrap", &wrapper("answer_two"));
    assert_eq!(a.same("checkout a", &run, &[]), "answer=1");
    assert_eq!(
        b.same("checkout b, another linker wrapper", &run, &[]),
        "answer=2"
    );
    // One checkout: edit the wrapper, build again from nothing.
    a.write_exec("tools/ccwrap", &wrapper("answer_two"));
    assert_eq!(
        a.same_fresh("checkout a after editing its linker wrapper", &run, &[]),
        "answer=2"
    );

    // No -C linker: the default `cc` comes from PATH.
    let c = Diff::new(r.path(), "c", "attack/answer");
    for (bin, sym) in [("bin1", "answer_one"), ("bin2", "answer_two")] {
        write_exec(
            &r.path().join(bin).join("cc"),
            &format!("#!/bin/sh\nexec /usr/bin/cc \"$@\" -Wl,--defsym=answer={sym}\n"),
        );
    }
    let p1 = path_with(&r.path().join("bin1"));
    let p2 = path_with(&r.path().join("bin2"));
    assert_eq!(
        c.same_fresh("cc from bin1 first on PATH", &run, &[("PATH", &p1)]),
        "answer=1"
    );
    assert_eq!(
        c.same_fresh(
            "cc from bin2 first on PATH (same --version)",
            &run,
            &[("PATH", &p2)]
        ),
        "answer=2"
    );
}

/// F2: `build.rustc = "tools/rustc"`, a script that adds `--cfg` to
/// compiles: a checkout whose script adds `--cfg flavor_b` must not get
/// the other checkout's binary.
#[test]
fn attack_rustc_script() {
    let r = root();
    let run = ["run", "-q"];
    let script = |extra: &str| {
        format!(
            "#!/bin/sh\n# flavor{extra}\ncase \" $* \" in *\" --crate-name \"*) exec rustc \"$@\"{extra} ;; *) exec rustc \"$@\" ;; esac\n"
        )
    };
    let a = Diff::new(r.path(), "a", "attack/flavor");
    let b = Diff::new(r.path(), "b", "attack/flavor");
    for d in [&a, &b] {
        d.write(".cargo/config.toml", "[build]\nrustc = \"tools/rustc\"\n");
    }
    a.write_exec("tools/rustc", &script(""));
    b.write_exec("tools/rustc", &script(" --cfg flavor_b"));
    assert_eq!(a.same("checkout a", &run, &[]), "flavor=a");
    assert_eq!(
        b.same("checkout b, a RUSTC script adding --cfg", &run, &[]),
        "flavor=b"
    );
}

/// F3: `rustflags` (a TOML array body) in `.cargo/config.toml`; `setup`
/// writes the files the linker reads for "one", then for "two": after
/// the change, a build from nothing must link the new files.
fn link_file_case(rustflags: &str, setup: impl Fn(&Diff, &str)) {
    let r = root();
    let d = Diff::new(r.path(), "a", "attack/answer");
    d.write(
        ".cargo/config.toml",
        &format!("[build]\nrustflags = [{rustflags}]\n"),
    );
    let run = ["run", "-q"];
    setup(&d, "one");
    let before = d.same("step one", &run, &[]);
    setup(&d, "two");
    let after = d.same_fresh(
        "step two, after changing a file the linker reads",
        &run,
        &[],
    );
    assert_ne!(before, after, "plain cargo saw no change (a test bug)");
}

/// `libanswer.a` in `ws/dir`, its `answer()` returning `value`.
fn static_answer_lib(d: &Diff, dir: &str, value: i32) {
    let dir = d.path(dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("a.c"),
        format!("int answer(void) {{ return {value}; }}\n"),
    )
    .unwrap();
    let ok = |c: &mut std::process::Command| {
        let o = c.current_dir(&dir).output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
    };
    ok(std::process::Command::new("cc").args(["-c", "-fPIC", "-o", "a.o", "a.c"]));
    let _ = fs::remove_file(dir.join("libanswer.a"));
    ok(std::process::Command::new("ar").args(["rcs", "libanswer.a", "a.o"]));
    fs::remove_file(dir.join("a.o")).unwrap();
}

/// A response file: `-Wl,@link.rsp`.
#[test]
fn attack_link_files_response_file() {
    link_file_case(r#""-C", "link-arg=-Wl,@link.rsp""#, |d, n| {
        d.write("link.rsp", &format!("--defsym=answer=answer_{n}\n"));
    });
}

/// A linker script pulled in by `INCLUDE` from the script named on the
/// command line.
#[test]
fn attack_link_files_script_include() {
    link_file_case(r#""-C", "link-arg=extra.ld""#, |d, n| {
        d.write("extra.ld", "INCLUDE defs.ld\n");
        d.write("defs.ld", &format!("answer = answer_{n};\n"));
    });
}

/// `-Wl,--script=defs.lds` (no `/`, not `.ld`).
#[test]
fn attack_link_files_script_option() {
    link_file_case(r#""-C", "link-arg=-Wl,--script=defs.lds""#, |d, n| {
        d.write("defs.lds", &format!("answer = answer_{n};\n"));
    });
}

/// `-l` and `-L` inside one `-Wl,`.
#[test]
fn attack_link_files_wl_search_dir_and_lib() {
    link_file_case(
        r#""-C", "link-arg=-Wl,-Llibs,--whole-archive,-lanswer,--no-whole-archive""#,
        |d, n| static_answer_lib(d, "libs", if n == "one" { 11 } else { 12 }),
    );
}

/// A library that appears in a directory searched before the one the
/// first link found it in.
#[test]
fn attack_link_files_earlier_on_search_path() {
    link_file_case(
        r#""-C", "link-arg=-Lfirst", "-C", "link-arg=-Lsecond", "-C", "link-arg=-lanswer""#,
        |d, n| {
            if n == "one" {
                static_answer_lib(d, "second", 11);
            } else {
                static_answer_lib(d, "first", 12);
            }
        },
    );
}

/// The `answer` fixture linking `-lanswer` with no `-L` of its own.
fn answer_by_name(root: &Path) -> Diff {
    let d = Diff::new(root, "a", "attack/answer");
    d.write(
        ".cargo/config.toml",
        "[build]\nrustflags = [\"-C\", \"link-arg=-lanswer\"]\n",
    );
    d
}

/// `-lanswer` with no `-L`: the linker finds it on its own path, here
/// through `LIBRARY_PATH`; then the library there changes.
#[test]
fn attack_link_files_on_the_linkers_default_path() {
    let r = root();
    let d = answer_by_name(r.path());
    let sys = d.path("sys").display().to_string();
    let env: Env<'_> = &[("LIBRARY_PATH", &sys)];
    static_answer_lib(&d, "sys", 11);
    let before = d.same("library on the default path", &["run", "-q"], env);
    static_answer_lib(&d, "sys", 12);
    let after = d.same_fresh(
        "after the library on the default path changed",
        &["run", "-q"],
        env,
    );
    assert_ne!(before, after, "plain cargo saw no change (a test bug)");
}

/// `LIBRARY_PATH` names another directory with another `libanswer.a`.
#[test]
fn attack_link_env_library_path() {
    let r = root();
    let d = answer_by_name(r.path());
    static_answer_lib(&d, "one", 11);
    static_answer_lib(&d, "two", 12);
    let (one, two) = (d.path("one"), d.path("two"));
    let one = one.display().to_string();
    let two = two.display().to_string();
    let before = d.same(
        "LIBRARY_PATH=one",
        &["run", "-q"],
        &[("LIBRARY_PATH", &one)],
    );
    let after = d.same_fresh(
        "LIBRARY_PATH=two",
        &["run", "-q"],
        &[("LIBRARY_PATH", &two)],
    );
    assert_ne!(before, after, "plain cargo saw no change (a test bug)");
}

/// `-Tdefs.x` found through `-L native=scripts` (cortex-m-rt style).
#[test]
fn attack_link_files_t_script_on_rustc_search_path() {
    link_file_case(
        r#""-C", "link-arg=-Tdefs.x", "-L", "native=scripts""#,
        |d, n| d.write("scripts/defs.x", &format!("answer = answer_{n};\n")),
    );
}

/// F4: `-Wl,-Map=app.map` writes a file beside the workspace; a build in
/// a fresh checkout (and after deleting the map) must write it.
#[test]
fn attack_linker_side_output_map_file() {
    let r = root();
    let config = "[build]\nrustflags = [\"-C\", \"link-arg=-Wl,-Map=app.map\"]\n";
    let a = Diff::new(r.path(), "a", "attack/plain");
    let b = Diff::new(r.path(), "b", "attack/plain");
    a.write(".cargo/config.toml", config);
    b.write(".cargo/config.toml", config);
    let map_len = |d: &Diff| fs::metadata(d.path("app.map")).map_or(0, |m| m.len());
    a.kache_ok(&["build"], &[]);
    assert!(map_len(&a) > 0, "the first build wrote no app.map");
    b.kache_ok(&["build"], &[]);
    assert!(
        map_len(&b) > 0,
        "a build in a second checkout did not write app.map: {:?}",
        b.take_events()
    );
    fs::remove_file(a.path("app.map")).unwrap();
    a.wipe_kache_target();
    a.kache_ok(&["build"], &[]);
    assert!(
        map_len(&a) > 0,
        "a build after rm app.map and rm -rf target did not write app.map: {:?}",
        a.take_events()
    );
    // The oracle: plain cargo writes it too.
    fs::remove_file(b.path("app.map")).unwrap();
    let p = b.plain(&["build"], &[]);
    assert!(p.status.success(), "{}", show(&p));
    assert!(map_len(&b) > 0, "plain cargo wrote no app.map (a test bug)");
    b.same("checkout b", &["run", "-q"], &[]);
}

/// F5: a proc macro calling into a shared library its build script
/// builds: editing the C code relinks the proc macro to identical bytes.
#[test]
fn attack_proc_macro_loading_a_shared_lib() {
    let r = root();
    let d = Diff::new(r.path(), "a", "attack/pmdylib");
    let run = ["run", "-q"];
    assert_eq!(d.same("cold build", &run, &[]), "val=1");
    d.edit("pm/val.c", "return 1", "return 2");
    assert_eq!(d.same("after editing pm/val.c", &run, &[]), "val=2");
    d.same_restored("after editing pm/val.c", &run, &[]);
}

/// F6: `extern crate helper;` loaded from an rlib in `OUT_DIR` found
/// through `cargo:rustc-link-search`, not `--extern`.
#[test]
fn attack_extern_crate_from_link_search_dir() {
    let r = root();
    let d = Diff::new(r.path(), "a", "attack/externl");
    let run = ["run", "-q"];
    assert_eq!(d.same("cold build", &run, &[]), "V=1");
    d.edit("mid/helper.rs", "V: i32 = 1", "V: i32 = 2");
    assert_eq!(d.same("after editing mid/helper.rs", &run, &[]), "V=2");
    d.same_restored("after editing mid/helper.rs", &run, &[]);
}

/// F7: both checkouts `include_str!` an absolute path into checkout a;
/// a's file then changes: checkout b must read a's file, not its own.
#[test]
fn attack_absolute_path_into_another_checkout() {
    let r = root();
    let a = Diff::new(r.path(), "a", "attack/plain");
    let b = Diff::new(r.path(), "b", "attack/plain");
    let main = format!(
        "const V: &str = include_str!({:?});\nfn main() {{ println!(\"{{}}\", V.trim()); }}\n",
        a.path("x.txt").to_str().unwrap()
    );
    for d in [&a, &b] {
        d.write("src/main.rs", &main);
        d.write("x.txt", "one\n");
    }
    let run = ["run", "-q"];
    assert_eq!(a.same("checkout a", &run, &[]), "one");
    a.write("x.txt", "two\n");
    assert_eq!(
        b.same("checkout b after a's x.txt changed", &run, &[]),
        "two"
    );
}

/// F9: an env value that is not UTF-8 and the literal U+FFFD are not
/// the same value: `option_env!` compiles with one and fails with the
/// other.
#[test]
fn attack_env_value_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let r = root();
    let d = Diff::new(r.path(), "a", "attack/envlossy");
    let run = ["run", "-q"];
    let with = |t: &Path, kache: bool, v: &[u8]| -> Output {
        let mut c = if kache {
            cargo_through_kache(&d.cwd, t, &d.cache, &run)
        } else {
            cargo_plain(&d.cwd, t, &run)
        };
        c.env("ATTACK_V", std::ffi::OsStr::from_bytes(v));
        c.output().unwrap()
    };
    let o = with(&d.kt, true, "\u{fffd}".as_bytes());
    assert!(o.status.success(), "ATTACK_V=U+FFFD: {}", show(&o));
    d.wipe_kache_target();
    let k = with(&d.kt, true, b"\xff");
    let p = with(&d.pt, false, b"\xff");
    assert!(
        k.status.code() == p.status.code() && norm(&k.stdout) == norm(&p.stdout),
        "ATTACK_V=0xFF: kache differs from plain cargo\n=== kache\n{}\n=== plain\n{}",
        show(&k),
        show(&p)
    );
}

/// F10: a hand-written input list in the store's index/ naming
/// /dev/zero: the build must finish (and be right), not hang.
#[test]
fn attack_index_list_naming_dev_zero() {
    use std::os::unix::process::CommandExt;
    let r = root();
    let d = Diff::new(r.path(), "a", "attack/plain");
    d.kache_ok(&["build"], &[]);
    let mut poisoned = 0;
    for e in fs::read_dir(d.cache.join("index")).unwrap() {
        let dir = e.unwrap().path();
        let real = fs::read_dir(&dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .expect("an input list");
        let mut list: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&real).unwrap()).unwrap();
        list["files"] = serde_json::json!(["/dev/zero"]);
        fs::write(dir.join("zz-poison.json"), list.to_string()).unwrap();
        poisoned += 1;
    }
    assert!(poisoned > 0, "no input lists in the store (a test bug)");
    d.edit("src/main.rs", "v=1", "v=2");
    let mut c = cargo_through_kache(&d.cwd, &d.kt, &d.cache, &["build"]);
    c.process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let o = child.wait_with_output().unwrap();
            panic!(
                "the build hung for 120 s on an input list naming /dev/zero\n{}",
                show(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        d.same("after the poisoned lookup", &["run", "-q"], &[]),
        "v=2"
    );
}

/// `cmd` run by `sh` under `umask 077`.
fn under_umask_077(cmd: &std::process::Command) -> std::process::Command {
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg("umask 077 && exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Modes of the files in `target/debug/deps`, by name with the hash
/// left out (`um-0123abcd` -> `um`, `libl-0123abcd.rlib` -> `libl.rlib`).
fn deps_modes(target: &Path) -> std::collections::BTreeMap<String, u32> {
    use std::os::unix::fs::PermissionsExt;
    let mut m = std::collections::BTreeMap::new();
    for e in fs::read_dir(target.join("debug/deps")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let (stem, ext) = name.split_once('.').unwrap_or((&name, ""));
        let short = match stem.rsplit_once('-') {
            Some((s, _)) => s.to_string(),
            None => stem.to_string(),
        };
        let short = if ext.is_empty() {
            short
        } else {
            format!("{short}.{ext}")
        };
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        m.insert(short, mode);
    }
    m
}

/// F11: under umask 077, files kache restores get the modes rustc's own
/// outputs get (0700/0600), not fixed 0755/0644.
#[test]
fn attack_restored_files_honour_umask() {
    let r = root();
    let d = Diff::new(r.path(), "a", "attack/umask");
    let build = ["build"];
    let run = |c: std::process::Command| {
        let o = under_umask_077(&c).output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
    };
    run(cargo_through_kache(&d.cwd, &d.kt, &d.cache, &build));
    d.take_events();
    d.wipe_kache_target();
    run(cargo_through_kache(&d.cwd, &d.kt, &d.cache, &build));
    d.assert_hit("build under umask 077 after rm -rf target");
    run(cargo_plain(&d.cwd, &d.pt, &build));
    let (k, p) = (deps_modes(&d.kt), deps_modes(&d.pt));
    let pick = |m: &std::collections::BTreeMap<String, u32>| -> Vec<(String, String)> {
        ["um", "libl.rlib", "libl.rmeta"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    format!("{:o}", m.get(*n).copied().unwrap_or(0)),
                )
            })
            .collect()
    };
    assert_eq!(
        pick(&k),
        pick(&p),
        "under umask 077, the modes of restored files (left) differ from plain cargo's (right)\n\
         all kache: {k:?}\nall plain: {p:?}"
    );
}
