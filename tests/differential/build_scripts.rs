//! Build-script runs cached (issue 21), judged against plain cargo.
//!
//! Fixture `bscripts`: `decl`'s build script declares a data file and a
//! variable and reports cargo's unit environment (profile, features,
//! flags); `nodecl`'s declares nothing and reads a data file in the
//! package, a variable and a file outside the package, and builds a
//! native library into `OUT_DIR` with `cc` and `ar`. Where cargo itself
//! would not run a script again, both target dirs are wiped: the oracle
//! is a build into a fresh target dir, which is what kache answers for.

use std::fs;

use super::{Diff, Env, root, show};
use crate::common::{kache, ok};

/// (crate, result, reason) of the build-script runs kache logged since
/// the last call (the event log is emptied).
fn script_events(d: &Diff) -> Vec<(String, String, String)> {
    // A miss's twin records after the build (cache.trace_behind).
    crate::common::settle(&d.cache);
    let p = d.cache.join("events.jsonl");
    let text = fs::read_to_string(&p).unwrap_or_default();
    let _ = fs::remove_file(&p);
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("event is JSON"))
        .filter(|e| e["lang"] == "build-script")
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("crate"), s("result"), s("reason"))
        })
        .collect()
}

fn wipe_both(d: &Diff) {
    let _ = fs::remove_dir_all(&d.kt);
    let _ = fs::remove_dir_all(&d.pt);
}

/// Runs `nodecl` into fresh target dirs under kache and plain cargo: the
/// same output.
fn fresh_nodecl(d: &Diff, what: &str, env: Env<'_>) -> String {
    wipe_both(d);
    d.same(what, &["run", "-q", "-p", "nodecl"], env)
}

#[test]
fn unchanged_script_is_not_run_again_and_its_outputs_match() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let first = fresh_nodecl(&d, "cold", &[]);
    assert!(first.contains("native=42"), "{first}");
    let ev = script_events(&d);
    assert!(
        ev.iter().any(|(c, r, _)| c == "nodecl" && r == "miss"),
        "the cold run was recorded: {ev:?}"
    );
    let out_lib = |d: &Diff| {
        let mut libs = Vec::new();
        for e in fs::read_dir(d.kt.join("debug/build")).unwrap() {
            let p = e.unwrap().path().join("out/libbsnative.a");
            if p.is_file() {
                libs.push(fs::read(p).unwrap());
            }
        }
        libs
    };
    let cold_lib = out_lib(&d);
    assert_eq!(cold_lib.len(), 1);
    d.wipe_kache_target();
    let warm = d.same("warm", &["run", "-q", "-p", "nodecl"], &[]);
    assert_eq!(warm, first);
    let ev = script_events(&d);
    assert!(
        ev.iter().any(|(c, r, _)| c == "nodecl" && r == "local_hit")
            && !ev.iter().any(|(_, r, _)| r == "miss"),
        "the warm build ran no build script: {ev:?}"
    );
    assert_eq!(
        out_lib(&d),
        cold_lib,
        "the native library comes back byte-identical"
    );
}

/// Two CI jobs (GitHub's, GitLab's) each have their own identity
/// variables: a build-script run stored by one is a hit in the next.
#[test]
fn a_ci_jobs_identity_does_not_split_the_key() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let job = |n: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            ("CI", "true"),
            ("GITHUB_RUN_ID", n),
            ("CI_JOB_ID", n),
            ("CI_PIPELINE_ID", n),
        ]
    };
    let first = fresh_nodecl(&d, "job 1", &job("1"));
    assert!(
        script_events(&d)
            .iter()
            .any(|(c, r, _)| c == "nodecl" && r == "miss"),
        "job 1 recorded the run"
    );
    let second = fresh_nodecl(&d, "job 2", &job("2"));
    assert_eq!(second, first);
    let ev = script_events(&d);
    assert!(
        ev.iter().any(|(c, r, _)| c == "nodecl" && r == "local_hit")
            && !ev.iter().any(|(_, r, _)| r == "miss"),
        "job 2 ran no build script: {ev:?}"
    );
}

/// Builds `nodecl` under kache with `env` (which sets `BS_MID_SLEEP`),
/// running `change` while its script sleeps after its looks.
fn change_while_it_runs(d: &Diff, env: Env<'_>, change: impl FnOnce()) {
    std::thread::scope(|s| {
        let build = s.spawn(|| d.kache_ok(&["build", "-q", "-p", "nodecl"], env));
        let t0 = std::time::Instant::now();
        while !script_running(d, "BS_MID_SLEEP") {
            assert!(
                t0.elapsed() < std::time::Duration::from_mins(2),
                "the script never ran"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Past its looks, in its sleep.
        std::thread::sleep(std::time::Duration::from_millis(800));
        change();
        build.join().unwrap();
    });
}

/// A path the script looked for and a directory it listed change while
/// it still runs (a configure goes on after its checks): what it made is
/// not stored under the key of what is there after the run, so the next
/// build runs it again and prints what plain cargo prints.
#[test]
fn what_changes_while_the_script_runs_is_not_stored_stale() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let listed = r.path().join("listed");
    fs::create_dir(&listed).unwrap();
    fs::write(listed.join("a.txt"), "a").unwrap();
    let probe = r.path().join("probe-me");
    let (l, p) = (listed.to_str().unwrap(), probe.to_str().unwrap());
    let env: Env<'_> = &[("BS_LIST", l), ("BS_PROBE", p), ("BS_MID_SLEEP", "3000")];
    change_while_it_runs(&d, env, || {
        fs::write(&probe, "here").unwrap();
        fs::write(listed.join("b.txt"), "b").unwrap();
    });
    let ev = script_events(&d);
    assert!(
        ev.iter()
            .any(|(c, _, why)| c == "nodecl" && why.contains("changed while it ran")),
        "the run was not stored: {ev:?}"
    );
    let out = fresh_nodecl(&d, "after the change", env);
    assert!(out.contains("looked=true/a.txt,b.txt"), "{out}");
    let again = fresh_nodecl(&d, "unchanged since", env);
    assert_eq!(again, out);
    assert!(
        script_events(&d)
            .iter()
            .any(|(c, r, _)| c == "nodecl" && r == "local_hit"),
        "an unchanged run hits"
    );
}

/// A link on the way to what the script read, looked for and listed is
/// swapped to another tree while it runs (an SDK's `current` link): the
/// paths themselves did not change, what they lead to did. Not stored.
#[test]
fn a_link_swapped_while_the_script_runs_is_not_stored_stale() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let sdk = r.path().join("sdk");
    for (v, ver) in [("v1", "one"), ("v2", "two")] {
        fs::create_dir_all(sdk.join(v).join("include")).unwrap();
        fs::write(sdk.join(v).join("include/ver.txt"), ver).unwrap();
    }
    fs::write(sdk.join("v2/include/marker.h"), "").unwrap();
    std::os::unix::fs::symlink("v1", sdk.join("cur")).unwrap();
    let cur = sdk.join("cur/include");
    let (outside, probe) = (cur.join("ver.txt"), cur.join("marker.h"));
    let env: Env<'_> = &[
        ("BS_OUTSIDE", outside.to_str().unwrap()),
        ("BS_PROBE", probe.to_str().unwrap()),
        ("BS_LIST", cur.to_str().unwrap()),
        ("BS_MID_SLEEP", "3000"),
    ];
    change_while_it_runs(&d, env, || {
        std::os::unix::fs::symlink("v2", sdk.join("cur.new")).unwrap();
        fs::rename(sdk.join("cur.new"), sdk.join("cur")).unwrap();
    });
    let ev = script_events(&d);
    assert!(
        ev.iter()
            .any(|(c, _, why)| c == "nodecl" && why.contains("changed while it ran")),
        "the run was not stored: {ev:?}"
    );
    let out = fresh_nodecl(&d, "after the swap", env);
    assert!(
        out.contains("outside=two ") && out.contains("looked=true/marker.h,ver.txt"),
        "{out}"
    );
}

/// Cargo fills the target dir while a script runs (the other crates'
/// compiles), and the dynamic loader of the script's programs looks
/// there first: that is no change of what the script looked at, and the
/// run is stored.
#[test]
fn a_run_is_stored_while_cargo_fills_the_target_dir() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let env: Env<'_> = &[("BS_MID_SLEEP", "3000")];
    d.kache_ok(&["build", "-q"], env);
    let ev = script_events(&d);
    assert!(
        ev.iter()
            .any(|(c, r, why)| c == "nodecl" && r == "miss" && why.is_empty()),
        "{ev:?}"
    );
}

#[test]
fn undeclared_reads_inside_and_outside_the_package_are_keyed() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let outside = r.path().join("outside.txt");
    fs::write(&outside, "out-1").unwrap();
    let o = outside.to_str().unwrap();
    let base = fresh_nodecl(&d, "start", &[("BS_OUTSIDE", o), ("BS_UNDECL", "u1")]);
    assert!(
        base.contains("outside=out-1 ") && base.contains("undecl=u1"),
        "{base}"
    );
    let again = fresh_nodecl(&d, "same inputs", &[("BS_OUTSIDE", o), ("BS_UNDECL", "u1")]);
    assert_eq!(again, base);
    assert!(
        script_events(&d)
            .iter()
            .any(|(c, r, _)| c == "nodecl" && r == "local_hit"),
        "unchanged inputs hit"
    );
    // An undeclared variable and a file outside the package, both
    // changed between two builds into fresh target dirs.
    fs::write(&outside, "out-2").unwrap();
    let changed = fresh_nodecl(
        &d,
        "outside file and variable changed",
        &[("BS_OUTSIDE", o), ("BS_UNDECL", "u2")],
    );
    assert!(
        changed.contains("outside=out-2 ") && changed.contains("undecl=u2"),
        "{changed}"
    );
    // The outside file gone: read as absent.
    fs::remove_file(&outside).unwrap();
    let gone = fresh_nodecl(
        &d,
        "outside file removed",
        &[("BS_OUTSIDE", o), ("BS_UNDECL", "u2")],
    );
    assert!(gone.contains("outside=absent"), "{gone}");
    // A data file in the package and the C source the script compiles.
    d.write("nodecl/data/value.txt", "two\n");
    d.edit("nodecl/csrc/lib.c", "40 + 2", "40 + 3");
    let edited = fresh_nodecl(&d, "package files edited", &[]);
    assert!(
        edited.contains("data=two") && edited.contains("native=43"),
        "{edited}"
    );
}

#[test]
fn declared_inputs_profile_features_and_flags() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let run: &[&str] = &["run", "-q", "-p", "decl"];
    d.same("start", run, &[]);
    d.write("decl/data.txt", "second\n");
    assert!(
        d.same("declared file edited", run, &[])
            .contains("data=second")
    );
    assert!(
        d.same("declared variable set", run, &[("BS_DECL", "v")])
            .contains("decl=v")
    );
    assert!(
        d.same("release", &["run", "-q", "--release", "-p", "decl"], &[])
            .contains("profile=release")
    );
    assert!(
        d.same(
            "feature",
            &["run", "-q", "-p", "decl", "--features", "extra"],
            &[]
        )
        .contains("extra=true")
    );
    assert!(
        d.same("rustflags", run, &[("RUSTFLAGS", "--cfg bs_flag")])
            .contains("flags=--cfg bs_flag")
    );
    // Each of these again from the store, into a fresh target dir.
    for (what, args, env) in [
        ("declared", run, &[("BS_DECL", "v")][..]),
        (
            "release",
            &["run", "-q", "--release", "-p", "decl"][..],
            &[][..],
        ),
        ("rustflags", run, &[("RUSTFLAGS", "--cfg bs_flag")][..]),
    ] {
        d.same_restored(what, args, env);
    }
    assert!(
        script_events(&d)
            .iter()
            .any(|(c, r, _)| c == "decl" && r == "local_hit"),
        "the restored builds hit"
    );
}

#[test]
fn two_checkouts_at_different_paths() {
    let r = root();
    let a = Diff::new(r.path(), "a", "bscripts");
    let b = Diff::new(r.path(), "checkout-b", "bscripts");
    let pa = fresh_nodecl(&a, "checkout a", &[]);
    script_events(&a);
    let pb = fresh_nodecl(&b, "checkout b", &[]);
    assert_eq!(pa, pb);
    let ev = script_events(&b);
    assert!(
        ev.iter().any(|(c, r, _)| c == "nodecl" && r == "local_hit"),
        "checkout b's build script run came from checkout a's entry: {ev:?}"
    );
    // The directives name checkout b's OUT_DIR: cargo links its library.
    b.edit("nodecl/csrc/lib.c", "40 + 2", "40 + 5");
    assert!(fresh_nodecl(&b, "b edited", &[]).contains("native=45"));
}

/// A script that declares `rerun-if-env-changed=OUT_DIR` (as ring's
/// does): the package's compile is keyed by that value through the
/// sentinels, so a second checkout hits it too.
#[test]
fn a_declared_out_dir_is_the_same_in_every_checkout() {
    let r = root();
    let a = Diff::new(r.path(), "a", "bscripts");
    let b = Diff::new(r.path(), "checkout-b", "bscripts");
    let run: &[&str] = &["run", "-q", "-p", "decl"];
    assert_eq!(
        a.same("checkout a", run, &[]),
        b.same("checkout b", run, &[])
    );
    let text = fs::read_to_string(b.cache.join("events.jsonl")).unwrap();
    let decl: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("event is JSON"))
        .filter(|e| e["crate"] == "decl" && e["lang"].is_null())
        .map(|e| e["result"].as_str().unwrap_or_default().to_string())
        .collect();
    let hits = decl.iter().filter(|r| *r == "local_hit").count();
    assert_eq!(
        hits * 2,
        decl.len(),
        "a's then b's compiles of decl, b's all hits: {decl:?}"
    );
}

#[test]
fn a_failing_script_and_its_fix() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let args: &[&str] = &["build", "-p", "nodecl"];
    let env: Env<'_> = &[("BS_FAIL", "1")];
    for round in ["first", "second"] {
        let k = d.kache(args, env);
        let p = d.plain(args, env);
        assert!(!p.status.success());
        assert_eq!(k.status.code(), p.status.code(), "{round}: {}", show(&k));
        let says = |o: &std::process::Output| {
            String::from_utf8_lossy(&o.stderr).contains("bs: failing on purpose")
        };
        assert!(says(&k) && says(&p), "{round}: {}", show(&k));
    }
    let ev = script_events(&d);
    assert_eq!(
        ev.iter()
            .filter(|(_, r, why)| r == "miss" && why == "the compile failed")
            .count(),
        2,
        "both failing runs ran, nothing stored: {ev:?}"
    );
    assert!(
        d.same("fixed", &["run", "-q", "-p", "nodecl"], &[])
            .contains("native=42")
    );
}

#[test]
fn warnings_are_shown_on_a_hit_as_cargo_shows_them() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let env: Env<'_> = &[("BS_WARN", "1")];
    let warned = |o: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.contains("bs warns about"))
            .map(str::to_string)
            .collect()
    };
    let p = d.plain(&["build", "-p", "nodecl"], env);
    let want = warned(&p);
    assert_eq!(want.len(), 1, "{}", show(&p));
    for round in ["miss", "hit"] {
        d.wipe_kache_target();
        let k = d.kache_ok(&["build", "-p", "nodecl"], env);
        assert_eq!(warned(&k), want, "{round}");
    }
    assert!(script_events(&d).iter().any(|(_, r, _)| r == "local_hit"));
}

#[test]
fn a_script_writing_outside_out_dir_is_not_cached() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let env: Env<'_> = &[("BS_WRITE_OUTSIDE", "1")];
    let written = d.path("nodecl/written-by-build-script.txt");
    for round in ["first", "second"] {
        let _ = fs::remove_file(&written);
        d.wipe_kache_target();
        d.kache_ok(&["build", "-p", "nodecl"], env);
        assert!(
            written.is_file(),
            "{round}: the script ran and wrote its file"
        );
    }
    // The first run, traced, is refused; the second runs untraced,
    // passed through for the reason remembered.
    let ev = script_events(&d);
    let whys: Vec<(&str, &str)> = ev
        .iter()
        .map(|(_, r, w)| (r.as_str(), w.as_str()))
        .collect();
    assert_eq!(whys.len(), 2, "{ev:?}");
    assert!(
        whys[0].0 == "miss"
            && whys[0]
                .1
                .starts_with("the build script wrote outside OUT_DIR"),
        "{ev:?}"
    );
    assert!(
        whys[1].0 == "passthrough"
            && whys[1]
                .1
                .starts_with("not cacheable: the build script wrote outside OUT_DIR"),
        "{ev:?}"
    );
}

#[test]
fn launcher_left_in_target_works_under_plain_cargo_and_disabled() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let want = d.same("kache", &["run", "-q", "-p", "nodecl"], &[]);
    // Plain cargo on kache's target dir: a changed package file makes
    // cargo run the script (the launcher) again.
    d.write("nodecl/data/value.txt", "plain\n");
    let p = d.plain_on_kache_target(&["run", "-q", "-p", "nodecl"], &[]);
    assert!(p.status.success(), "{}", show(&p));
    assert!(
        String::from_utf8_lossy(&p.stdout).contains("data=plain"),
        "{}",
        show(&p)
    );
    assert_ne!(norm_out(&p), want);
    d.write("nodecl/data/value.txt", "disabled\n");
    let k = d.kache(&["run", "-q", "-p", "nodecl"], &[("KACHE_DISABLED", "1")]);
    assert!(k.status.success(), "{}", show(&k));
    assert!(
        String::from_utf8_lossy(&k.stdout).contains("data=disabled"),
        "{}",
        show(&k)
    );
    assert!(script_events(&d).iter().all(|(_, r, _)| r == "miss"));
}

fn norm_out(o: &std::process::Output) -> String {
    super::norm(&o.stdout)
}

/// A build-script run recorded on one runner is pushed, pulled by another
/// runner through its Cargo.lock into another store, and served there: no
/// build script runs, and the program is plain cargo's.
#[test]
fn build_script_runs_sync_through_s3() {
    let s3 = crate::s3server::S3::start();
    let r = root();
    let a = Diff::new(r.path(), "runner-a", "bscripts");
    let mut b = Diff::new(r.path(), "runner-b", "bscripts");
    b.cache = r.path().join("cache-b");
    let run: &[&str] = &["run", "-q", "-p", "nodecl"];
    let want = a.same("runner A", run, &[]);
    let sync = |d: &Diff, args: &[&str]| {
        let mut c = crate::common::kache(&d.cache);
        s3.configure(&mut c);
        c.env("KACHE_PROGRESS", "0")
            .current_dir(&d.ws)
            .arg("sync")
            .args(args);
        let o = c.output().unwrap();
        assert!(o.status.success(), "sync {args:?}: {}", show(&o));
    };
    sync(&a, &["--push"]);
    sync(&b, &["--pull"]);
    assert_eq!(b.same("runner B, from the pulled store", run, &[]), want);
    let ev = script_events(&b);
    assert!(
        ev.iter().any(|(c, r, _)| c == "nodecl" && r == "local_hit")
            && !ev.iter().any(|(_, r, _)| r == "miss"),
        "runner B ran no build script: {ev:?}"
    );
}

/// The ways an attack once made kache serve a stale run, each changed
/// between builds into fresh target dirs, each answered as plain cargo:
/// a package file read through a link in `OUT_DIR` (cxx-build's layout), a
/// directory appearing where none was and an empty one removed, a path
/// only tested for existence, `..` after a link. (A link only read with
/// `readlink` is not seen: see the README.)
#[test]
fn reads_the_trace_once_missed() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let ext = r.path().join("ext");
    fs::create_dir_all(ext.join("real/inc")).unwrap();
    fs::create_dir_all(ext.join("v1")).unwrap();
    fs::create_dir_all(ext.join("v2")).unwrap();
    fs::write(ext.join("real/cfg.txt"), "c1").unwrap();
    std::os::unix::fs::symlink("v1", ext.join("current")).unwrap();
    std::os::unix::fs::symlink(ext.join("real/inc"), d.path("probes/tp")).unwrap();
    let probe = ext.join("feature.h");
    let link = ext.join("current");
    let env: Env<'_> = &[
        ("BS_PROBE", probe.to_str().unwrap()),
        ("BS_LINK", link.to_str().unwrap()),
    ];
    let build = |what: &str| {
        wipe_both(&d);
        d.same(what, &["run", "-q", "-p", "probes"], env)
    };
    let first = build("start");
    assert!(
        first.contains("via_out=v1") && first.contains("dotdot=c1"),
        "{first}"
    );
    assert_eq!(build("unchanged"), first);
    assert!(
        script_events(&d)
            .iter()
            .any(|(c, r, _)| c == "probes" && r == "local_hit"),
        "an unchanged run hits"
    );
    d.write("probes/data/value.txt", "v2\n");
    assert!(build("read through OUT_DIR/crate").contains("via_out=v2"));
    fs::create_dir(d.path("probes/extra")).unwrap();
    assert!(build("directory appeared").contains("extra=[]"));
    fs::write(d.path("probes/extra/plugin.txt"), "").unwrap();
    assert!(build("file in it").contains("plugin.txt"));
    fs::remove_file(d.path("probes/extra/plugin.txt")).unwrap();
    fs::remove_dir(d.path("probes/extra")).unwrap();
    assert!(build("directory gone").contains("(none)"));
    fs::write(&probe, "").unwrap();
    assert!(build("probed path appeared").contains("probe=true"));
    fs::write(ext.join("real/cfg.txt"), "c2").unwrap();
    assert!(build("file behind ..").contains("dotdot=c2"));
}

/// The one build-script event is a miss refused for a write outside
/// `OUT_DIR`.
fn assert_refused_for_writing_outside(ev: &[(String, String, String)]) {
    assert!(
        ev.len() == 1
            && ev[0].1 == "miss"
            && ev[0]
                .2
                .starts_with("the build script wrote outside OUT_DIR"),
        "{ev:?}"
    );
}

/// Whether a miss's traced twin is at work now.
fn twin_at_work(d: &Diff) -> bool {
    !twins(d).is_empty()
}

#[test]
fn a_miss_is_traced_by_a_twin_the_build_does_not_wait_for() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    // The script sleeps only in kache's twin: the build's own run is
    // untraced and does not wait for it.
    let env: Env<'_> = &[("BS_TWIN_SLEEP", "15"), ("KACHE_TRACE_BEHIND", "1")];
    d.kache_ok(&["build", "-q", "-p", "nodecl"], env);
    assert!(
        twin_at_work(&d),
        "the build returned while the twin still traces the script"
    );
    // `kache stats` does not wait for it either (the twin holds the
    // store's writer lock only to record).
    let st = kache(&d.cache).arg("stats").output().unwrap();
    ok(&st);
    assert!(twin_at_work(&d), "stats returned while the twin still runs");
    let ev = script_events(&d);
    assert_eq!(
        ev,
        vec![("nodecl".to_string(), "miss".to_string(), String::new())],
        "the twin recorded the run once it was done"
    );
    let left: Vec<String> = fs::read_dir(d.cache.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("twin"))
        .collect();
    assert!(left.is_empty(), "the twin left {left:?} in the store");
    // What it recorded is what plain cargo makes in a fresh target dir.
    d.wipe_kache_target();
    let _ = fs::remove_dir_all(&d.pt);
    let warm = d.same("warm", &["run", "-q", "-p", "nodecl"], env);
    assert!(warm.contains("native=42"), "{warm}");
    let ev = script_events(&d);
    assert!(
        ev.iter().any(|(c, r, _)| c == "nodecl" && r == "local_hit")
            && !ev.iter().any(|(_, r, _)| r == "miss"),
        "the warm build ran no build script: {ev:?}"
    );
}

#[test]
fn the_twin_changes_nothing_outside_out_dir() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    // The checkout lies in the temp dir here, which the twin may write:
    // it must stay read-only all the same.
    let env: Env<'_> = &[
        ("BS_APPEND_OUTSIDE", "1"),
        ("BS_TWIN_SLEEP", "2"),
        ("KACHE_TRACE_BEHIND", "1"),
    ];
    let appended = d.path("nodecl/appended-by-build-script.txt");
    d.kache_ok(&["build", "-q", "-p", "nodecl"], env);
    assert!(twin_at_work(&d), "a twin traces the script");
    let ev = script_events(&d);
    // Once, as under plain cargo: the twin's append failed (read-only).
    assert_eq!(fs::read_to_string(&appended).unwrap(), "one\n");
    assert_refused_for_writing_outside(&ev);
    let plain = d.plain(&["build", "-q", "-p", "nodecl"], env);
    assert!(plain.status.success(), "{}", show(&plain));
    assert_eq!(fs::read_to_string(&appended).unwrap(), "one\none\n");
}

/// The marker a build script's twin keeps beside its key's lock while it
/// runs, if one does.
fn twin_marker(d: &Diff) -> Option<std::path::PathBuf> {
    fs::read_dir(d.cache.join("locks"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "twin"))
}

/// The scratch directories of the twins alive now (`tmp/twin.PID.*`).
fn twins(d: &Diff) -> Vec<String> {
    fs::read_dir(d.cache.join("tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("twin."))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the build script of `nodecl` in `d` runs now with variable
/// `var` set (a process with it and this checkout's manifest dir).
fn script_running(d: &Diff, var: &str) -> bool {
    let manifest = format!("CARGO_MANIFEST_DIR={}", d.path("nodecl").display());
    let var = format!("{var}=");
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let env = fs::read(e.path().join("environ")).unwrap_or_default();
            let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
            vars.iter().any(|v| v.starts_with(var.as_bytes()))
                && vars.contains(&manifest.as_bytes())
        })
}

/// Whether the build script of `nodecl` in `d` runs in a twin now.
fn twin_script_running(d: &Diff) -> bool {
    script_running(d, "KACHE_TWIN_RUN")
}

#[test]
fn a_build_does_not_wait_for_a_twin_of_the_same_run() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let env: Env<'_> = &[("BS_TWIN_SLEEP", "20"), ("KACHE_TRACE_BEHIND", "1")];
    d.kache_ok(&["build", "-q", "-p", "nodecl"], env);
    // The twin starts once that build is over. (Not before its script
    // runs: a target dir removed before that leaves it nothing to do.)
    let t0 = std::time::Instant::now();
    while twin_marker(&d).is_none() || !twin_script_running(&d) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "no twin started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let first = twins(&d);
    assert_eq!(first.len(), 1, "{first:?}");
    // A fresh target dir needs the same run while the twin sleeps in it:
    // the build runs the script itself instead of waiting at the lock.
    let _ = fs::remove_dir_all(&d.kt);
    d.kache_ok(&["build", "-q", "-p", "nodecl"], env);
    assert!(
        twins(&d).contains(&first[0]),
        "the second build returned while the first twin still runs"
    );
    crate::common::settle(&d.cache);
    assert!(twin_marker(&d).is_none(), "the twin took its marker away");
    wipe_both(&d);
    let out = d.same("after the twins", &["run", "-q", "-p", "nodecl"], env);
    assert!(out.contains("native=42"), "{out}");
}

#[test]
fn the_twins_temp_dir_is_its_own() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    // A file in the temp dir, as a script that keeps state there would.
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("appended.txt");
    let log_s = log.to_str().unwrap();
    let env: Env<'_> = &[("BS_APPEND_TMP", log_s), ("KACHE_TRACE_BEHIND", "1")];
    d.kache_ok(&["build", "-q", "-p", "nodecl"], env);
    let ev = script_events(&d);
    // Once, as under plain cargo: the twin sees the temp dir as the host
    // has it, but writes into a layer of its own.
    assert_eq!(fs::read_to_string(&log).unwrap(), "one\n");
    assert_refused_for_writing_outside(&ev);
}

/// `/dev` and `/sys` are read-only in the twin too: a script run as
/// root that makes a file in `/dev` makes it once, as under plain cargo
/// (devices such as `/dev/null` stay writable: the script's compiler
/// writes there). Root only (no one else may write `/dev`).
#[test]
fn the_twin_makes_no_file_in_dev() {
    if !crate::common::is_root() {
        eprintln!("skipped: only root may write /dev");
        return;
    }
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let log = std::path::PathBuf::from(format!("/dev/kache-twin-test-{}", std::process::id()));
    let log_s = log.to_str().unwrap();
    let env: Env<'_> = &[("BS_APPEND_TMP", log_s), ("KACHE_TRACE_BEHIND", "1")];
    d.kache_ok(&["build", "-q", "-p", "nodecl"], env);
    let ev = script_events(&d);
    let got = fs::read_to_string(&log);
    let _ = fs::remove_file(&log);
    assert_eq!(got.unwrap(), "one\n", "{ev:?}");
    // The twin's append failed: the script is traced inline next time.
    assert!(
        ev.len() == 1 && ev[0].2.contains("in its traced twin only"),
        "{ev:?}"
    );
}

#[test]
fn a_script_failing_in_its_twin_alone_is_traced_inline_next() {
    let r = root();
    let d = Diff::new(r.path(), "a", "bscripts");
    let env: Env<'_> = &[("BS_TWIN_FAIL", "1"), ("KACHE_TRACE_BEHIND", "1")];
    let first = d.same("cold", &["run", "-q", "-p", "nodecl"], env);
    let ev = script_events(&d);
    assert!(
        ev.len() == 1 && ev[0].1 == "miss" && ev[0].2.contains("in its traced twin only"),
        "{ev:?}"
    );
    wipe_both(&d);
    assert_eq!(d.same("inline", &["run", "-q", "-p", "nodecl"], env), first);
    let ev = script_events(&d);
    assert_eq!(
        ev,
        vec![("nodecl".to_string(), "miss".to_string(), String::new())],
        "traced inline and stored"
    );
    wipe_both(&d);
    assert_eq!(d.same("warm", &["run", "-q", "-p", "nodecl"], env), first);
    d.assert_hit("warm");
}
