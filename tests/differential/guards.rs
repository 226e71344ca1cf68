//! Differential regression guards, classes that already pass
//! (`include_bytes!`, `#[path]`, symlinked sources, `OUT_DIR` code,
//! `[env]`, rustflags, two toolchains), and cases found while writing the
//! suite. `guard_two_toolchains` is ignored unless nightly is installed;
//! `.ci/run` runs it when it is.

use std::fs;
use std::path::Path;

use super::{Diff, Env, root};
use crate::common::show;

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
