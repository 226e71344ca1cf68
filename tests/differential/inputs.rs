//! Differential classes 3 to 5, what decides a rebuild beyond rustc's
//! dep-info: inputs declared by build scripts (`rerun-if-changed` on a
//! directory, `rerun-if-env-changed`) and by the user's settings (files,
//! env, never-cache); edits judged by mtime; `-C target-cpu=native`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Diff, root};
use crate::common::{cargo_through_kache, show};

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
// Edits judged by mtime
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
// -C target-cpu=native
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
