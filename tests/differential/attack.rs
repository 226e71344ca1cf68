//! Differential attack repros (/tmp/attack/repro_*.sh): cases where kache
//! served a wrong artifact, through linker wrappers, rustc scripts, files
//! the linker reads, library search paths, proc macros loading shared
//! libraries, paths into another checkout, non-UTF-8 env values, index
//! lists naming `/dev/zero`, and the umask. Fixtures under
//! tests/fixtures/diff/attack/.

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use super::{Diff, Env, norm, root};
use crate::common::{cargo_plain, cargo_through_kache, show};

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
