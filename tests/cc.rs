//! C, C++ and assembler compiles cached (issue 16): real cargo builds
//! through the `cc` crate (which runs the compiler through
//! `RUSTC_WRAPPER=kache`), real gcc. Plain cargo is the oracle: what the
//! program prints under kache must equal what it prints under plain
//! cargo, after every change. A hit is asserted only to show that a test
//! really exercised the cache.
//!
//! The fixture `tests/fixtures/cc/app` compiles `csrc/values.c`,
//! `csrc/asm.S` and `csrc/tmpl.cpp` with `-I include -I include2 -I
//! $OUT_DIR`; optional sources are switched on by variables.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{cargo_plain, cargo_through_kache, clean_env, copy_tree, kache_bin, show};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cc/app")
}

type Env<'a> = &'a [(&'a str, &'a str)];

/// One checkout of the fixture, with a kache target dir, a plain target
/// dir and a cache dir (shared by checkouts under the same root).
struct App {
    ws: PathBuf,
    kt: PathBuf,
    pt: PathBuf,
    cache: PathBuf,
    /// Whether kache caches the build script's run too. Off by default
    /// here: a cached run makes no C compile, and these tests judge the
    /// C layer (`build_scripts_cached_over_the_c_layer` turns it on).
    scripts: bool,
}

impl App {
    fn new(root: &Path, name: &str) -> App {
        let base = root.join(name);
        let ws = base.join("ws");
        copy_tree(&fixture(), &ws);
        App {
            ws,
            kt: base.join("kt"),
            pt: base.join("pt"),
            cache: root.join("cache"),
            scripts: false,
        }
    }

    fn kache(&self, env: Env<'_>) -> Output {
        self.kache_args(&["run", "-q"], env)
    }

    fn plain(&self, env: Env<'_>) -> Output {
        self.plain_args(&["run", "-q"], env)
    }

    fn kache_args(&self, args: &[&str], env: Env<'_>) -> Output {
        let mut c = cargo_through_kache(&self.ws, &self.kt, &self.cache, args);
        if !self.scripts {
            c.env("KACHE_CACHE_BUILD_SCRIPTS", "0");
        }
        c.envs(env.iter().copied());
        c.output().unwrap()
    }

    fn plain_args(&self, args: &[&str], env: Env<'_>) -> Output {
        let mut c = cargo_plain(&self.ws, &self.pt, args);
        c.envs(env.iter().copied());
        c.output().unwrap()
    }

    /// `cargo run` under kache and plain: the same stdout and status, and
    /// no fallback warning from kache. Returns the kache output.
    fn same(&self, what: &str, env: Env<'_>) -> Output {
        let k = self.kache(env);
        let p = self.plain(env);
        assert!(
            p.status.success(),
            "{what}: plain cargo failed (a test bug)\n{}",
            show(&p)
        );
        let (ks, ps) = (
            String::from_utf8_lossy(&k.stdout),
            String::from_utf8_lossy(&p.stdout),
        );
        assert!(
            ks == ps && k.status.code() == p.status.code(),
            "{what}: kache differs from plain cargo\n--- kache ({})\n{ks}\n--- plain ({})\n{ps}\n=== kache stderr\n{}",
            k.status,
            p.status,
            String::from_utf8_lossy(&k.stderr)
        );
        let warned: Vec<String> = String::from_utf8_lossy(&k.stderr)
            .lines()
            .filter(|l| l.contains("warning: kache:"))
            .map(String::from)
            .collect();
        assert!(warned.is_empty(), "{what}: kache fell back: {warned:?}");
        k
    }

    /// `rm -rf` both target dirs, then `same`: every C compile is looked
    /// up again (cargo would not rerun the build script otherwise).
    /// (Once the store has settled: a build-script miss is stored by its
    /// twin after the build, `cache.trace_behind`.)
    fn same_fresh(&self, what: &str, env: Env<'_>) -> Output {
        crate::common::settle(&self.cache);
        let _ = fs::remove_dir_all(&self.kt);
        let _ = fs::remove_dir_all(&self.pt);
        self.same(what, env)
    }

    /// The C events logged since the last call: (result, reason).
    fn take_c_events(&self) -> Vec<(String, String)> {
        take_c_events(&self.cache)
    }

    fn c_hits(&self) -> usize {
        self.take_c_events()
            .iter()
            .filter(|(r, _)| r == "local_hit")
            .count()
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.ws.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let p = self.ws.join(rel);
        let s = fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "{rel} has no {from:?}");
        fs::write(&p, s.replace(from, to)).unwrap();
    }
}

/// The C events logged in `cache` since the last call: (result, reason).
fn take_c_events(cache: &Path) -> Vec<(String, String)> {
    let p = cache.join("events.jsonl");
    let text = fs::read_to_string(&p).unwrap_or_default();
    let _ = fs::remove_file(&p);
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["lang"] == "c")
        .map(|e| {
            (
                e["result"].as_str().unwrap_or("").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The lines of `o`'s stderr that mention `needle`.
fn lines_with(o: &Output, needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| l.trim().to_string())
        .collect()
}

/// The common case, then a change, each checked against plain cargo both
/// right after the change and from the store (after `rm -rf target`).
fn change_case(change: impl FnOnce(&App), env: Env<'_>, want: &str) {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    let before = stdout(&a.same("cold build", &[]));
    a.take_c_events();
    a.same_fresh("unchanged, from the store", &[]);
    assert_eq!(a.c_hits(), 3, "the three C compiles are hits");
    change(&a);
    let after = stdout(&a.same("after the change", env));
    assert!(after.contains(want), "plain cargo: {after}");
    assert_ne!(before, after, "plain cargo saw no change (a test bug)");
    a.same_fresh("after the change, from the store", env);
}

/// With the build script's run cached too (the default): every change
/// the C tests make, checked against plain cargo right after it and from
/// the store; an unchanged build from the store runs no build script.
#[test]
fn build_scripts_cached_over_the_c_layer() {
    let r = tempfile::tempdir().unwrap();
    let mut a = App::new(r.path(), "a");
    a.scripts = true;
    a.same("cold build", &[]);
    a.same_fresh("unchanged, from the store", &[]);
    let ev = fs::read_to_string(a.cache.join("events.jsonl")).unwrap();
    assert!(
        ev.lines()
            .any(|l| l.contains("\"build-script\"") && l.contains("\"local_hit\"")),
        "the build script's run was a hit: {ev}"
    );
    type Change<'a> = (&'a dyn Fn(&App), Env<'a>, &'a str);
    let changes: [Change<'_>; 5] = [
        (
            &|a| a.edit("include/config.h", "VALUE 1", "VALUE 2"),
            &[],
            "config=2",
        ),
        (
            &|a| a.write("include/shadow.h", "#define SHADOW_VALUE 200\n"),
            &[],
            "shadow=200",
        ),
        (
            &|a| a.write("csrc/shadow.h", "#define SHADOW_VALUE 300\n"),
            &[],
            "shadow=300",
        ),
        (&|_| {}, &[("CFLAGS", "-DAPP_FLAG")], "define=1"),
        (&|_| {}, &[("GEN_VALUE", "9")], "gen=9"),
    ];
    for (change, env, want) in changes {
        change(&a);
        let after = stdout(&a.same(want, env));
        assert!(after.contains(want), "plain cargo: {after}");
        a.same_fresh(&format!("{want}, from the store"), env);
    }
}

/// A C entry keys the headers that would shadow those it read (a few
/// system headers make hundreds of such names) by what computes them, not
/// by listing them: its input list and manifest name the search path and
/// the names present, so a lookup reads kilobytes, not megabytes (a
/// libgit2 object's manifest was 1.5 MB).
#[test]
fn the_shadow_set_is_computed_not_listed() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    a.same("cold build", &[]);
    let jsons = |dir: &str| -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for sub in fs::read_dir(a.cache.join(dir)).unwrap() {
            for f in fs::read_dir(sub.unwrap().path()).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "json") {
                    out.push(serde_json::from_slice(&fs::read(&f).unwrap()).unwrap());
                }
            }
        }
        out
    };
    let c_entries: Vec<serde_json::Value> = jsons("entries")
        .into_iter()
        .filter(|e| e["lang"].is_string())
        .collect();
    assert!(c_entries.len() >= 3, "{c_entries:?}");
    for e in &c_entries {
        let inputs = &e["inputs"];
        assert!(inputs["shadows"]["search"].is_array(), "{inputs}");
        assert!(
            inputs["absent"].as_array().is_none_or(Vec::is_empty),
            "{inputs}"
        );
        let explain = e["explain"].as_object().unwrap();
        assert!(
            !explain.keys().any(|k| k.starts_with("absent ")),
            "{explain:?}"
        );
        // Only names that are there (a system header beside another may
        // share a fixture header's name).
        let shown = explain["shadowing headers"].as_str().unwrap();
        assert!(
            shown == "none present" || shown.starts_with("present: /usr/"),
            "{shown}"
        );
    }
    // The index's lists of C compiles likewise (a link's list names the
    // libraries it did not find).
    let c_bases: Vec<&serde_json::Value> = c_entries.iter().map(|e| &e["inputs"]["base"]).collect();
    let c_lists: Vec<serde_json::Value> = jsons("index")
        .into_iter()
        .filter(|l| c_bases.contains(&&l["base"]))
        .collect();
    assert!(c_lists.len() >= c_entries.len(), "{c_lists:?}");
    for list in c_lists {
        assert!(list["shadows"].is_object(), "{list}");
        assert!(
            list["absent"].as_array().is_none_or(Vec::is_empty),
            "{list}"
        );
    }
    a.write("include/shadow.h", "#define SHADOW_VALUE 200\n");
    let after = stdout(&a.same("shadowing header", &[]));
    assert!(after.contains("shadow=200"), "{after}");
}

#[test]
fn header_edit() {
    change_case(
        |a| a.edit("include/config.h", "VALUE 1", "VALUE 2"),
        &[],
        "config=2",
    );
}

/// A header created earlier on the include path (`-I include` comes
/// before `-I include2`) than the one the last compile read.
#[test]
fn shadowing_header_earlier_on_the_include_path() {
    change_case(
        |a| a.write("include/shadow.h", "#define SHADOW_VALUE 200\n"),
        &[],
        "shadow=200",
    );
}

/// The same, beside the source (searched first for `#include "..."`).
#[test]
fn shadowing_header_beside_the_source() {
    change_case(
        |a| a.write("csrc/shadow.h", "#define SHADOW_VALUE 300\n"),
        &[],
        "shadow=300",
    );
}

/// A header that only `__has_include` asked for, and did not find,
/// appears.
#[test]
fn has_include_header_appears() {
    change_case(
        |a| a.write("include/optional.h", "#define OPTIONAL_VALUE 5\n"),
        &[],
        "optional=5",
    );
}

/// A header the build script generates in `OUT_DIR`.
#[test]
fn generated_header_in_out_dir() {
    change_case(|_| {}, &[("GEN_VALUE", "9")], "gen=9");
}

/// `cpathval.h` is found only through CPATH: pointing it elsewhere must
/// recompile (cargo reruns nothing, so both target dirs are wiped).
#[test]
fn cpath_change() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    let dir = |d: &str| a.ws.join(d).to_string_lossy().into_owned();
    let (ca, cb) = (dir("cpath_a"), dir("cpath_b"));
    let one = stdout(&a.same_fresh("CPATH=a", &[("CPATH_TEST", "1"), ("CPATH", &ca)]));
    assert!(one.contains("cpath=1"), "{one}");
    a.take_c_events();
    let two = stdout(&a.same_fresh("CPATH=b", &[("CPATH_TEST", "1"), ("CPATH", &cb)]));
    assert!(two.contains("cpath=2"), "{two}");
    a.take_c_events();
    a.same_fresh("CPATH=a again", &[("CPATH_TEST", "1"), ("CPATH", &ca)]);
    assert_eq!(a.c_hits(), 4, "every compile of the first build hits");
}

#[test]
fn define_change() {
    change_case(|_| {}, &[("APP_DEFINE", "APP_FLAG")], "define=1");
}

#[test]
fn cflags_change() {
    change_case(|_| {}, &[("CFLAGS", "-DAPP_FLAG")], "define=1");
}

#[test]
fn cpp_template_header() {
    change_case(
        |a| a.edit("include/tmpl.hpp", "N * 2", "N * 3"),
        &[],
        "tmpl=63",
    );
}

#[test]
fn assembler_include() {
    change_case(
        |a| a.edit("include/asmconst.h", "ASM_VALUE 5", "ASM_VALUE 6"),
        &[],
        "asm=6",
    );
}

/// The compiler replaced at the same name and path: a `cc` script that
/// adds `-DAPP_FLAG`, then the same script without it. `--version`
/// answers the same each time; only the program's content differs.
#[test]
fn compiler_replaced() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    let bin = r.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let cc = bin.join("cc");
    let script = |extra: &str| {
        fs::write(&cc, format!("#!/bin/sh\nexec /usr/bin/cc {extra} \"$@\"\n")).unwrap();
        Command::new("chmod").arg("755").arg(&cc).status().unwrap();
    };
    let ccs = cc.to_string_lossy().into_owned();
    script("-DAPP_FLAG");
    let one = stdout(&a.same_fresh("cc adds -DAPP_FLAG", &[("CC", &ccs)]));
    assert!(one.contains("define=1"), "{one}");
    script("");
    let two = stdout(&a.same_fresh("cc adds nothing", &[("CC", &ccs)]));
    assert!(two.contains("define=0"), "{two}");
}

/// A source that expands `__DATE__`/`__TIME__` is compiled every time:
/// two builds a second apart print different times.
#[test]
fn date_never_stale() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    let env: Env<'_> = &[("CLOCK_TEST", "1")];
    let clock = |o: &Output| {
        assert!(o.status.success(), "{}", show(o));
        stdout(o)
            .lines()
            .find(|l| l.starts_with("clock="))
            .unwrap()
            .to_string()
    };
    let one = clock(&a.kache(env));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let _ = fs::remove_dir_all(&a.kt);
    let two = clock(&a.kache(env));
    assert_ne!(one, two, "a stale __TIME__ was served");
    let ev = a.take_c_events();
    assert!(
        ev.iter().any(|(_, why)| why.contains("__DATE__")),
        "the clock compile is named as not stored: {ev:?}"
    );
    // With SOURCE_DATE_EPOCH the clock is pinned, and the object cached.
    let env: Env<'_> = &[("CLOCK_TEST", "1"), ("SOURCE_DATE_EPOCH", "1700000000")];
    let p = a.same_fresh("SOURCE_DATE_EPOCH", env);
    a.take_c_events();
    assert_eq!(clock(&p), "clock=Nov 14 2023 22:13:20");
    a.same_fresh("SOURCE_DATE_EPOCH, from the store", env);
    assert_eq!(a.c_hits(), 4);
}

/// A failing compile: the same error as plain cargo, every time, and
/// nothing stored.
#[test]
fn failing_compile_not_stored_and_its_error_replayed() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    let env: Env<'_> = &[("FAIL_TEST", "1")];
    let p = a.plain(env);
    assert!(!p.status.success());
    let want = lines_with(&p, "broken.c:");
    assert!(
        want.iter().any(|l| l.contains("error")),
        "plain cargo: {}",
        show(&p)
    );
    for round in ["first", "second"] {
        let k = a.kache(env);
        assert_eq!(k.status.code(), p.status.code(), "{round}: {}", show(&k));
        assert_eq!(lines_with(&k, "broken.c:"), want, "{round}");
    }
    let ev = a.take_c_events();
    let failed = ev
        .iter()
        .filter(|(r, why)| r == "miss" && why == "the compile failed")
        .count();
    assert_eq!(failed, 2, "both failing compiles ran: {ev:?}");
}

/// A warning (cc-rs forwards it as `cargo:warning`) is shown on a hit
/// exactly as plain cargo shows it.
#[test]
fn warnings_replayed_on_a_hit() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    let env: Env<'_> = &[("WARN_TEST", "1")];
    // `cargo build` shows a build script's warnings (`run -q` hides them).
    let p = a.plain_args(&["build"], env);
    assert!(p.status.success(), "{}", show(&p));
    let want = lines_with(&p, "warn.c");
    assert!(
        want.iter().any(|l| l.contains("unused_here")),
        "plain cargo: {}",
        show(&p)
    );
    let k = a.kache_args(&["build"], env);
    assert!(k.status.success(), "{}", show(&k));
    assert_eq!(lines_with(&k, "warn.c"), want, "on the miss");
    a.take_c_events();
    let _ = fs::remove_dir_all(&a.kt);
    let k = a.kache_args(&["build"], env);
    assert!(k.status.success(), "{}", show(&k));
    assert_eq!(a.c_hits(), 4);
    assert_eq!(lines_with(&k, "warn.c"), want, "on the hit");
    a.same("the program", env);
}

/// `rm -rf target`, then a rebuild: the real compiler runs zero times
/// (counted by a `cc` script that logs each compile). The `cc` crate's
/// own flag probes (`flag_check.c`) run the compiler directly, never
/// through the wrapper, and are not counted.
#[test]
fn rebuild_after_rm_rf_target_runs_no_compiler() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    let bin = r.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let log = r.path().join("cc.log");
    for (name, real) in [("cc", "/usr/bin/cc"), ("c++", "/usr/bin/c++")] {
        let p = bin.join(name);
        fs::write(
            &p,
            format!(
                "#!/bin/sh\ncase \" $* \" in *flag_check*) ;; *\" -c \"*) echo \"$*\" >> {} ;; esac\nexec {real} \"$@\"\n",
                log.display()
            ),
        )
        .unwrap();
        Command::new("chmod").arg("755").arg(&p).status().unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let env: Env<'_> = &[("PATH", &path)];
    let compiles = || fs::read_to_string(&log).unwrap_or_default().lines().count();
    // The plain builds use the same script: count around kache's only.
    let kache_run = |what: &str, env: Env<'_>| {
        let n = compiles();
        let o = a.kache(env);
        assert!(o.status.success(), "{what}: {}", show(&o));
        compiles() - n
    };
    let cold = kache_run("cold", env);
    assert!(cold >= 3, "the script saw the compiles: {cold}");
    a.same("cold, against plain cargo", env);
    let _ = fs::remove_dir_all(&a.kt);
    assert_eq!(kache_run("after rm -rf target", env), 0, "the compiler ran");
    a.same("after rm -rf target, against plain cargo", env);
    // The control: with C caching off, the same rebuild compiles.
    let off: Env<'_> = &[("PATH", &path), ("KACHE_CACHE_C", "0")];
    a.take_c_events();
    let _ = fs::remove_dir_all(&a.kt);
    assert_eq!(
        kache_run("KACHE_CACHE_C=0", off),
        3,
        "KACHE_CACHE_C=0 passes through"
    );
    a.same("KACHE_CACHE_C=0, against plain cargo", off);
    let ev = a.take_c_events();
    assert!(
        ev.iter()
            .filter(|(r, _)| r == "passthrough")
            .all(|(_, why)| why == "C caching is off"
                || why.contains("no object")
                || why.contains("-c compile")),
        "{ev:?}"
    );
    assert!(!ev.iter().any(|(r, _)| r.contains("hit")), "{ev:?}");
}

/// Two checkouts at different paths: the second's C compiles are hits,
/// and its objects hold nothing of the first checkout's path.
#[test]
fn two_checkouts_share_objects() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "first");
    let b = App::new(r.path(), "second-at-another-path");
    a.same("checkout A", &[]);
    a.take_c_events();
    b.same("checkout B", &[]);
    // `kache stats` tells the languages apart.
    let o = crate::common::kache(&b.cache)
        .args(["stats", "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["by_language"]["c"]["hits"], 3, "{st}");
    assert_eq!(st["c_entries"], 3, "{st}");
    assert!(st["by_language"]["rust"]["hits"].as_u64() > Some(0), "{st}");
    let o = crate::common::kache(&b.cache)
        .args(["list", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c_listed = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["lang"] == "c" && e["crate"] == "ccapp")
        .count();
    assert_eq!(c_listed, 3, "{list}");
    assert_eq!(b.c_hits(), 3, "B's C compiles hit A's entries");
    let a_root = r.path().join("first");
    let a_root = a_root.to_string_lossy();
    let mut objects = 0;
    for f in walk(&b.kt) {
        let name = f.to_string_lossy();
        if name.ends_with(".o") || name.ends_with(".a") {
            objects += 1;
            let bytes = fs::read(&f).unwrap();
            assert!(
                memmem(&bytes, a_root.as_bytes()).is_none(),
                "{} holds checkout A's path {a_root}",
                f.display()
            );
        }
    }
    assert!(objects >= 5, "B's objects were looked at: {objects}");
}

/// An object that holds a real path (`__FILE__` of a header found
/// through an absolute `-I`) is keyed by it: the second checkout compiles
/// its own, and prints its own path as plain cargo does.
#[test]
fn object_holding_its_path_is_not_shared() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "first");
    let b = App::new(r.path(), "second");
    let env: Env<'_> = &[("FILE_TEST", "1")];
    // The path names the target dir, which differs between the kache
    // and the plain build of one checkout: compared with it blanked.
    let same = |x: &App, what: &str| {
        let k = x.kache(env);
        let p = x.plain(env);
        assert!(
            k.status.success() && p.status.success(),
            "{what}: {}",
            show(&k)
        );
        let ks = stdout(&k);
        assert!(ks.contains(&*x.kt.to_string_lossy()), "{what}: {ks}");
        assert_eq!(
            ks.replace(&*x.kt.to_string_lossy(), "TARGET"),
            stdout(&p).replace(&*x.pt.to_string_lossy(), "TARGET"),
            "{what}"
        );
    };
    same(&a, "checkout A");
    a.take_c_events();
    same(&b, "checkout B");
    // The objects that hold no path are still shared.
    assert_eq!(b.c_hits(), 3);
}

/// A dependency file the caller asks for (`-MD -MF`, as `CMake` and make
/// do) is written on a hit with this checkout's paths, exactly as the
/// compiler writes it there.
#[test]
fn dep_file_written_with_this_checkouts_paths() {
    let r = tempfile::tempdir().unwrap();
    let cache = r.path().join("cache");
    let make = |name: &str| {
        let ws = r.path().join(name);
        fs::create_dir_all(ws.join("src")).unwrap();
        fs::create_dir_all(ws.join("inc")).unwrap();
        fs::write(ws.join("inc/v.h"), "#define V 4\n").unwrap();
        fs::write(
            ws.join("src/a.c"),
            "#include <v.h>\n#include <stdio.h>\nint a(void) { return V; }\n",
        )
        .unwrap();
        ws
    };
    let compile = |ws: &Path, kache: bool, dep: &str| {
        let inc = format!("-I{}", ws.join("inc").display());
        let args = ["-g", &inc, "-MD", "-MF", dep, "-c", "src/a.c", "-o", "a.o"];
        let o = gcc(kache, ws, &cache).args(args).output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
        fs::read_to_string(ws.join(dep)).unwrap()
    };
    let a = make("a");
    let b = make("b-elsewhere");
    compile(&a, true, "a.d");
    let got = compile(&b, true, "a.d");
    let events = fs::read_to_string(cache.join("events.jsonl")).unwrap();
    assert!(events.contains("local_hit"), "B hit A's entry: {events}");
    let want = compile(&b, false, "plain.d");
    // gcc names the object, never the dependency file, in it; it wraps
    // long lines where the paths of this checkout make them long, which
    // make and ninja read the same.
    let rules = |t: &str| {
        t.replace("\\\n", " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(rules(&got), rules(&want));
    assert!(got.contains(&*b.join("inc/v.h").to_string_lossy()), "{got}");
    assert!(!got.contains(&*a.to_string_lossy()), "{got}");
}

/// `kache gcc` (with the cache `cache`) or plain `gcc`, run in `ws`
/// outside cargo.
fn gcc(kache: bool, ws: &Path, cache: &Path) -> Command {
    let mut c = if kache {
        let mut c = Command::new(kache_bin());
        c.arg("gcc");
        c
    } else {
        Command::new("gcc")
    };
    clean_env(&mut c);
    c.current_dir(ws)
        .env("KACHE_CACHE_DIR", cache)
        .env_remove("CARGO_MANIFEST_DIR");
    c
}

/// Configures (`-S src -B build`, with `flags`) and builds a `CMake`
/// project outside cargo with the cache `cache`, kache as the launcher
/// or not; runs the program `k` it builds and returns what it printed.
fn cmake_build(src: &Path, build: &Path, flags: &[&str], cache: &Path, kache: bool) -> String {
    let cmake = || {
        let mut c = Command::new("cmake");
        clean_env(&mut c);
        c.env("KACHE_CACHE_DIR", cache)
            .env_remove("CARGO_MANIFEST_DIR");
        c
    };
    let mut c = cmake();
    c.arg("-S").arg(src).arg("-B").arg(build).args(flags);
    if kache {
        c.env("CMAKE_C_COMPILER_LAUNCHER", kache_bin());
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let o = cmake().arg("--build").arg(build).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(!show(&o).contains("warning: kache"), "{}", show(&o));
    let o = Command::new(build.join("k")).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `CMake` through `CMAKE_C_COMPILER_LAUNCHER=kache`, if cmake is here.
#[test]
fn cmake_launcher() {
    if Command::new("cmake").arg("--version").output().is_err() {
        eprintln!("note: cmake is not installed; skipping the CMake launcher test");
        return;
    }
    let r = tempfile::tempdir().unwrap();
    let src = r.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(
        src.join("CMakeLists.txt"),
        "cmake_minimum_required(VERSION 3.17)\nproject(k C)\ninclude_directories(inc)\nadd_executable(k main.c)\n",
    )
    .unwrap();
    fs::create_dir_all(src.join("inc")).unwrap();
    fs::write(src.join("inc/v.h"), "#define V 5\n").unwrap();
    fs::write(
        src.join("main.c"),
        "#include <stdio.h>\n#include \"v.h\"\nint main(void) { printf(\"v=%d\\n\", V); return 0; }\n",
    )
    .unwrap();
    let cache = r.path().join("cache");
    let build = |dir: &str| cmake_build(&src, &r.path().join(dir), &[], &cache, true);
    assert_eq!(build("b1"), "v=5\n");
    let _ = fs::remove_file(cache.join("events.jsonl"));
    assert_eq!(build("b2"), "v=5\n");
    let ev = fs::read_to_string(cache.join("events.jsonl")).unwrap_or_default();
    assert!(ev.contains("local_hit"), "the second build hit: {ev}");
    fs::write(src.join("inc/v.h"), "#define V 6\n").unwrap();
    assert_eq!(build("b3"), "v=6\n");
}

/// A `CMake` project from two checkouts at different paths (each a git
/// work tree, its build directory inside it) sharing one store: the
/// second's compiles hit the first's entries, except the one whose
/// object holds its own source path (`__FILE__`), which is keyed by it;
/// every object there is plain gcc's (debug info aside, which names
/// the sentinels), and the programs print what plain builds print.
#[test]
fn cmake_checkouts_share_through_the_git_work_tree() {
    if Command::new("cmake").arg("--version").output().is_err() {
        eprintln!("note: cmake is not installed; skipping the CMake checkouts test");
        return;
    }
    let r = tempfile::tempdir().unwrap();
    let cache = r.path().join("cache");
    let checkout = |at: &str| {
        let src = r.path().join(at).join("proj");
        fs::create_dir_all(src.join("inc")).unwrap();
        fs::create_dir_all(src.join(".git")).unwrap();
        fs::write(
            src.join("CMakeLists.txt"),
            "cmake_minimum_required(VERSION 3.17)\nproject(k C)\ninclude_directories(inc)\nadd_executable(k main.c lib.c where.c)\n",
        )
        .unwrap();
        fs::write(src.join("inc/v.h"), "#define V 7\n").unwrap();
        fs::write(
            src.join("main.c"),
            "#include <stdio.h>\n#include \"v.h\"\nint lib(void);\nconst char *where(void);\nint main(void) { printf(\"%d %d %s\\n\", V, lib(), where()); return 0; }\n",
        )
        .unwrap();
        fs::write(
            src.join("lib.c"),
            "#include \"v.h\"\nint lib(void) { return V * 6; }\n",
        )
        .unwrap();
        fs::write(
            src.join("where.c"),
            "const char *where(void) { return __FILE__; }\n",
        )
        .unwrap();
        src
    };
    let build = |src: &Path, dir: &str, kache: bool| {
        let b = src.join(dir);
        let out = cmake_build(src, &b, &["-DCMAKE_C_FLAGS=-g -O1"], &cache, kache);
        (b, out)
    };
    let a = checkout("a");
    let b = checkout("b-somewhere-else");
    let (_, out_a) = build(&a, "build", true);
    assert_eq!(out_a, format!("7 42 {}\n", a.join("where.c").display()));
    let first = take_c_events(&cache);
    assert_eq!(
        first.iter().filter(|e| e.0 == "miss").count(),
        3,
        "{first:?}"
    );
    let (kb, out_b) = build(&b, "build", true);
    let events = take_c_events(&cache);
    let hits = events.iter().filter(|e| e.0 == "local_hit").count();
    let misses = events.iter().filter(|e| e.0 == "miss").count();
    assert_eq!((hits, misses), (2, 1), "{events:?}");
    let (pb, plain_b) = build(&b, "build-plain", false);
    assert_eq!(out_b, plain_b);
    assert!(out_b.contains(&*b.to_string_lossy()), "{out_b}");
    let a_root = a.to_string_lossy();
    for name in ["main.c.o", "lib.c.o", "where.c.o"] {
        let obj = |dir: &Path| dir.join("CMakeFiles/k.dir").join(name);
        let bytes = fs::read(obj(&kb)).unwrap();
        assert!(
            memmem(&bytes, a_root.as_bytes()).is_none(),
            "{name} of checkout B holds checkout A's path"
        );
        let strip = |o: PathBuf, to: &str| {
            let out = r.path().join(to);
            let s = Command::new("objcopy")
                .arg("--strip-debug")
                .arg(&o)
                .arg(&out)
                .status()
                .unwrap();
            assert!(s.success());
            fs::read(out).unwrap()
        };
        assert!(
            strip(obj(&kb), "k.o") == strip(obj(&pb), "p.o"),
            "{name}: kache's object differs from plain gcc's"
        );
    }
}

/// The header edit again with clang as CC, if clang is here.
#[test]
fn clang_header_edit() {
    if Command::new("clang").arg("--version").output().is_err() {
        eprintln!("note: clang is not installed; skipping the clang test");
        return;
    }
    let env: Env<'_> = &[("CC", "clang"), ("CXX", "clang++")];
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    a.same("cold build", env);
    a.take_c_events();
    a.same_fresh("from the store", env);
    assert_eq!(a.c_hits(), 3);
    a.edit("include/config.h", "VALUE 1", "VALUE 2");
    let o = a.same("after the edit", env);
    assert!(stdout(&o).contains("config=2"));
    a.same_fresh("after the edit, from the store", env);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn memmem(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `KACHE_VERIFY=1`: every C hit also compiles for real and matches the
/// stored object byte for byte.
#[test]
fn verify_compares_c_hits_with_a_real_compile() {
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    a.same("cold", &[]);
    a.take_c_events();
    let _ = fs::remove_dir_all(&a.kt);
    let o = a.kache(&[("KACHE_VERIFY", "1")]);
    assert!(o.status.success(), "{}", show(&o));
    let ev = a.take_c_events();
    let verified = ev.iter().filter(|(r, _)| r == "verified").count();
    assert_eq!(verified, 3, "{ev:?}");
    assert!(!ev.iter().any(|(r, _)| r == "verify_mismatch"), "{ev:?}");
}

/// C entries go through the remote like Rust ones: pushed from one
/// runner, pulled by another through its Cargo.lock (they are stored
/// under the package whose build script compiled them, with its version,
/// target and Rust toolchain), and served there as hits.
#[test]
fn c_entries_sync_through_s3() {
    let s3 = crate::s3server::S3::start();
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "runner-a");
    let mut b = App::new(r.path(), "runner-b");
    b.cache = r.path().join("cache-b");
    a.same("runner A, cold", &[]);
    let sync = |app: &App, args: &[&str]| {
        let mut c = crate::common::kache(&app.cache);
        s3.configure(&mut c);
        c.env("KACHE_PROGRESS", "0")
            .current_dir(&app.ws)
            .arg("sync")
            .args(args);
        let o = c.output().unwrap();
        assert!(o.status.success(), "sync {args:?}: {}", show(&o));
        o
    };
    sync(&a, &["--push"]);
    sync(&b, &["--pull"]);
    let o = crate::common::kache(&b.cache)
        .args(["stats", "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["c_entries"], 3, "the pull brought the C entries: {st}");
    b.same("runner B, from the pulled store", &[]);
    assert_eq!(b.c_hits(), 3);
}

/// A checkout for direct compiler calls, as make runs them (`kache gcc
/// ARGS` against plain `gcc ARGS`): `src/a.c` includes `"v.h"` (found
/// through `-I <checkout>/inc`), `<s.h>` (through `-isystem
/// <checkout>/sys`: a system header, which `-MMD` leaves out of the
/// dependency file) and `<stdio.h>`. No `-g`: kache maps debug paths, so
/// only objects without debug info are the same bytes as gcc's.
struct Direct {
    ws: PathBuf,
    cache: PathBuf,
}

impl Direct {
    fn new(root: &Path, name: &str) -> Direct {
        let ws = root.join(name);
        for d in ["src", "inc", "sys", "obj/.deps"] {
            fs::create_dir_all(ws.join(d)).unwrap();
        }
        fs::write(ws.join("inc/v.h"), "#define V 4\n").unwrap();
        fs::write(ws.join("sys/s.h"), "#define S 20\n").unwrap();
        fs::write(
            ws.join("src/a.c"),
            "#include <stdio.h>\n#include <s.h>\n#include \"v.h\"\nint a(void) { return V + S; }\n",
        )
        .unwrap();
        Direct {
            ws,
            cache: root.join("cache"),
        }
    }

    /// Compiles with `args` (after `-O2 -I<inc> -isystem <sys>`) through
    /// kache or plain gcc; returns the object's bytes and the dependency
    /// file's text, and removes both.
    fn compile(&self, kache: bool, args: &[&str], obj: &str, dep: &str) -> (Vec<u8>, String) {
        let o = gcc(kache, &self.ws, &self.cache)
            .arg("-O2")
            .arg(format!("-I{}", self.ws.join("inc").display()))
            .arg("-isystem")
            .arg(self.ws.join("sys"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", show(&o));
        assert!(!show(&o).contains("warning: kache"), "{}", show(&o));
        let (obj, dep) = (self.ws.join(obj), self.ws.join(dep));
        let got = (
            fs::read(&obj).unwrap(),
            fs::read_to_string(&dep).unwrap_or_else(|e| panic!("{}: {e}", dep.display())),
        );
        fs::remove_file(obj).unwrap();
        fs::remove_file(dep).unwrap();
        got
    }

    /// The results of the C events logged since the last call, each
    /// with its reason if it has one.
    fn results(&self) -> Vec<String> {
        take_c_events(&self.cache)
            .into_iter()
            .map(|(r, why)| {
                if why.is_empty() {
                    r
                } else {
                    format!("{r}: {why}")
                }
            })
            .collect()
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let p = self.ws.join(rel);
        let s = fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "{rel} has no {from:?}");
        fs::write(&p, s.replace(from, to)).unwrap();
    }
}

/// Plain gcc is the oracle: through kache, the object's bytes and the
/// dependency file's text are gcc's, on the miss, on the hit, and on a
/// hit from a second checkout at another path (of the same length: gcc
/// wraps the file's lines by their length, and a hit keeps the first
/// compile's wrapping). Then each header, the system one too, is edited
/// in turn: a miss, and gcc's bytes again. Returns the dependency text.
fn dep_differential(args: &[&str], obj: &str, dep: &str) -> String {
    let r = tempfile::tempdir().unwrap();
    let a = Direct::new(r.path(), "checkout-a");
    let b = Direct::new(r.path(), "checkout-b");
    let want = a.compile(false, args, obj, dep);
    assert_eq!(a.compile(true, args, obj, dep), want, "{args:?}: the miss");
    assert_eq!(a.results(), ["miss"], "{args:?}");
    assert_eq!(a.compile(true, args, obj, dep), want, "{args:?}: the hit");
    assert_eq!(a.results(), ["local_hit"], "{args:?}");
    let want_b = b.compile(false, args, obj, dep);
    assert_ne!(want_b.1, want.1, "the file names the checkout's headers");
    assert_eq!(
        b.compile(true, args, obj, dep),
        want_b,
        "{args:?}: checkout B"
    );
    assert_eq!(b.results(), ["local_hit"], "{args:?}: B hits A's entry");
    let mut last = want.0.clone();
    for (header, from, to) in [("sys/s.h", "S 20", "S 30"), ("inc/v.h", "V 4", "V 5")] {
        a.edit(header, from, to);
        let want = a.compile(false, args, obj, dep);
        assert_ne!(want.0, last, "{header}: gcc's object changed (a test bug)");
        assert_eq!(a.compile(true, args, obj, dep), want, "{args:?}: {header}");
        assert_eq!(a.results(), ["miss"], "{args:?}: {header} edited");
        assert_eq!(a.compile(true, args, obj, dep), want, "{args:?}: {header}");
        assert_eq!(a.results(), ["local_hit"], "{args:?}: {header}");
        last = want.0;
    }
    want.1
}

/// OpenSSL's makefile: `-MMD -MF x.d.tmp -MT x.o`. The file leaves the
/// system headers out; kache still keys them (the edit of `sys/s.h`).
#[test]
fn dep_mmd_mf_mt_as_openssl() {
    let text = dep_differential(
        &[
            "-MMD",
            "-MF",
            "obj/a.d.tmp",
            "-MT",
            "obj/a.o",
            "-c",
            "-o",
            "obj/a.o",
            "src/a.c",
        ],
        "obj/a.o",
        "obj/a.d.tmp",
    );
    assert!(text.starts_with("obj/a.o: src/a.c"), "{text}");
    assert!(!text.contains("s.h") && !text.contains("stdio.h"), "{text}");
}

/// `-MMD` without `-MF`: the file beside the object, `.d` for `.o`.
#[test]
fn dep_mmd_beside_the_object() {
    let text = dep_differential(
        &["-MMD", "-MP", "-c", "-o", "obj/a.o", "src/a.c"],
        "obj/a.o",
        "obj/a.d",
    );
    assert!(text.contains("/inc/v.h:\n"), "-MP's phony target: {text}");
}

/// `-MD` without `-MF` or `-o`: `a.o` and `a.d` in the working
/// directory, every header listed.
#[test]
fn dep_md_without_o() {
    let text = dep_differential(&["-MD", "-c", "src/a.c"], "a.o", "a.d");
    assert!(
        text.contains("/sys/s.h") && text.contains("stdio.h"),
        "{text}"
    );
}

/// autotools' depcomp and jemalloc: `-MT x.o -MD -MP -MF .deps/x.Tpo`;
/// and `-MQ` with a `$` gcc doubles.
#[test]
fn dep_md_mp_mf_as_autotools() {
    let text = dep_differential(
        &[
            "-MT",
            "obj/a.o",
            "-MD",
            "-MP",
            "-MF",
            "obj/.deps/a.Tpo",
            "-MQ",
            "$x",
            "-c",
            "-o",
            "obj/a.o",
            "src/a.c",
        ],
        "obj/a.o",
        "obj/.deps/a.Tpo",
    );
    assert!(text.starts_with("obj/a.o $$x: src/a.c"), "{text}");
    assert!(text.contains("/sys/s.h:\n"), "{text}");
}

/// make with `CC="kache gcc"` and `-MMD -MP` (the usual pattern rule,
/// the dependency files included back): the objects and dependency files
/// are plain make's; a second checkout's build is all hits; a header
/// edit rebuilds exactly what make rebuilds, and a make after it has
/// nothing to do.
#[test]
fn make_with_mmd() {
    if Command::new("make").arg("--version").output().is_err() {
        eprintln!("note: make is not installed; skipping the make test");
        return;
    }
    let r = tempfile::tempdir().unwrap();
    let checkout = |name: &str| {
        let d = Direct::new(r.path(), name);
        fs::remove_dir_all(d.ws.join("obj")).unwrap();
        fs::write(
            d.ws.join("src/b.c"),
            "#include <s.h>\nint b(void) { return S; }\n",
        )
        .unwrap();
        fs::write(
            d.ws.join("Makefile"),
            "CC = gcc\nCFLAGS = -O2 -Iinc -isystem sys\nOBJS = obj/a.o obj/b.o\n\
             all: $(OBJS)\nobj/%.o: src/%.c\n\t@mkdir -p obj\n\t$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<\n\
             -include $(OBJS:.o=.d)\n",
        )
        .unwrap();
        d
    };
    let make = |d: &Direct, kache: bool| -> String {
        let mut c = Command::new("make");
        clean_env(&mut c);
        if kache {
            c.arg(format!("CC={} gcc", kache_bin().display()));
        }
        c.current_dir(&d.ws)
            .env("KACHE_CACHE_DIR", &d.cache)
            .env_remove("CARGO_MANIFEST_DIR")
            .env_remove("MAKEFLAGS");
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
        assert!(!show(&o).contains("warning: kache"), "{}", show(&o));
        stdout(&o)
    };
    let outputs = |d: &Direct| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = walk(&d.ws.join("obj"))
            .into_iter()
            .map(|f| {
                (
                    f.file_name().unwrap().to_string_lossy().into_owned(),
                    fs::read(&f).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (p, k, k2) = (checkout("plain"), checkout("kache"), checkout("kache-two"));
    make(&p, false);
    let want = outputs(&p);
    assert_eq!(
        want.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(),
        ["a.d", "a.o", "b.d", "b.o"]
    );
    make(&k, true);
    assert_eq!(outputs(&k), want, "the cold build");
    assert_eq!(k.results(), ["miss", "miss"]);
    make(&k2, true);
    assert_eq!(outputs(&k2), want, "the second checkout");
    assert_eq!(k2.results(), ["local_hit", "local_hit"]);
    // make's timestamps are coarse: the edit must be newer than the objects.
    std::thread::sleep(std::time::Duration::from_millis(50));
    for d in [&p, &k2] {
        d.edit("inc/v.h", "V 4", "V 5");
    }
    let rebuilt = make(&p, false);
    assert!(
        rebuilt.contains("src/a.c") && !rebuilt.contains("src/b.c"),
        "{rebuilt}"
    );
    let through = format!("{} gcc ", kache_bin().display());
    assert_eq!(
        make(&k2, true).replace(&through, "gcc "),
        rebuilt,
        "make reran the same"
    );
    let want = outputs(&p);
    assert_eq!(outputs(&k2), want, "after the header edit");
    assert_eq!(k2.results(), ["miss"]);
    assert!(
        make(&k2, true).contains("Nothing to be done"),
        "an up-to-date tree"
    );
}

/// Issue 23, item 5: a secret in CFLAGS (`-DSECRET_TOKEN=...`, which gcc
/// does not record in the object) is in the local C entries' account of
/// their keys, and in no byte that `kache sync --push` uploads, raw or
/// decompressed.
#[test]
fn a_secret_in_cflags_never_reaches_the_bucket() {
    let s3 = crate::s3server::S3::start_local();
    let r = tempfile::tempdir().unwrap();
    let a = App::new(r.path(), "a");
    let secret = "hunter2cc";
    let cflags = format!("-DSECRET_TOKEN={secret}");
    a.same("a secret in CFLAGS", &[("CFLAGS", cflags.as_str())]);
    let holding = |dir: &Path| -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let raw = fs::read(&p).unwrap();
                let plain = zstd::decode_all(&raw[..]).unwrap_or_default();
                if [&raw, &plain]
                    .iter()
                    .any(|b| String::from_utf8_lossy(b).contains(secret))
                {
                    out.push(p.display().to_string());
                }
            }
        }
        out
    };
    let local = holding(&a.cache.join("entries"));
    assert!(!local.is_empty(), "the local account names the value");
    let mut c = crate::common::kache(&a.cache);
    s3.configure(&mut c);
    let o = c
        .env("KACHE_PROGRESS", "0")
        .current_dir(&a.ws)
        .args(["sync", "--push"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let bucket = s3.bucket_dir.as_ref().unwrap().join(&s3.prefix);
    assert!(fs::read_dir(&bucket).is_ok_and(|mut d| d.next().is_some()));
    assert_eq!(holding(&bucket), Vec::<String>::new());
}
