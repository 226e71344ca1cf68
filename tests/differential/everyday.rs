//! Everyday commands under kache (issue 12): clippy on a fresh crate and
//! on a workspace, a custom workspace wrapper, debuggers and coverage
//! finding the sources, and proc macros that write files while expanding.
//! Plain cargo is the oracle throughout.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use super::{Diff, Env, root, show};
use crate::common::kache;

/// What cargo printed on stderr, less its progress lines (which carry
/// timings and differ between a hit and a compile).
fn diagnostics(o: &Output) -> String {
    const PROGRESS: [&str; 8] = [
        "Compiling ",
        "Checking ",
        "Finished ",
        "Running ",
        "Blocking ",
        "Locking ",
        "Adding ",
        "Fresh ",
    ];
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !PROGRESS.iter().any(|p| l.trim_start().starts_with(p)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `cargo ARGS` under kache and under plain cargo: the same exit status
/// and the same diagnostics. Returns kache's output.
fn same_diagnostics(d: &Diff, what: &str, args: &[&str], env: Env<'_>) -> Output {
    let k = d.kache(args, env);
    let p = d.plain(args, env);
    let (kd, pd) = (diagnostics(&k), diagnostics(&p));
    assert!(
        k.status.code() == p.status.code() && kd == pd,
        "{what}: `cargo {}` under kache differs from plain cargo\n\
         --- kache ({})\n{kd}\n--- plain cargo ({})\n{pd}",
        args.join(" "),
        k.status,
        p.status,
    );
    assert!(
        !kd.contains("warning: kache:"),
        "{what}: kache fell back to plain rustc: {kd}"
    );
    k
}

/// Clippy's warnings, then `-D warnings` errors, on a miss and on a hit,
/// as plain cargo prints them.
fn clippy_case(d: &Diff, expect: &[&str]) {
    let k = same_diagnostics(d, "clippy (miss)", &["clippy"], &[]);
    assert!(k.status.success(), "{}", show(&k));
    let text = diagnostics(&k);
    for lint in expect {
        assert!(text.contains(lint), "clippy did not report {lint}: {text}");
    }
    d.take_events();
    d.wipe_kache_target();
    let k = same_diagnostics(d, "clippy (after rm -rf target)", &["clippy"], &[]);
    assert!(k.status.success(), "{}", show(&k));
    d.assert_hit("clippy after rm -rf target");
    let deny = ["clippy", "--", "-D", "warnings"];
    for round in ["miss", "again"] {
        let k = same_diagnostics(d, &format!("clippy -D warnings ({round})"), &deny, &[]);
        assert!(
            !k.status.success() && diagnostics(&k).contains("error: "),
            "clippy -D warnings did not fail: {}",
            show(&k)
        );
    }
    // And plain `cargo build` after clippy, on the same target dir.
    d.same("build after clippy", &["run", "-q"], &[]);
}

#[test]
fn clippy_fresh_crate() {
    let r = root();
    let base = r.path().join("fresh");
    fs::create_dir_all(&base).unwrap();
    let o = Command::new("cargo")
        .args(["new", "-q", "--lib", "--vcs", "none", "ws"])
        .current_dir(&base)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo new: {}", show(&o));
    let ws = base.join("ws");
    fs::write(
        ws.join("src/lib.rs"),
        "pub fn f() -> u32 {\n    return 1;\n}\n",
    )
    .unwrap();
    fs::create_dir_all(ws.join("src/bin")).unwrap();
    fs::write(
        ws.join("src/bin/main.rs"),
        "fn main() {\n    println!(\"{}\", ws::f());\n}\n",
    )
    .unwrap();
    let d = Diff {
        cwd: ws.clone(),
        ws,
        kt: base.join("kt"),
        pt: base.join("pt"),
        cache: r.path().join("cache"),
        base,
        background: false,
    };
    clippy_case(&d, &["needless_return"]);
}

#[test]
fn clippy_workspace() {
    let r = root();
    let d = Diff::new(r.path(), "a", "lint");
    clippy_case(&d, &["needless_return", "len_zero"]);
}

/// A `RUSTC_WORKSPACE_WRAPPER` script that insists on the rustc path
/// first (as clippy-driver does) and adds a flag: the programs print what
/// plain cargo's print, on a miss and from the store.
#[test]
fn custom_workspace_wrapper() {
    let r = root();
    let d = Diff::new(r.path(), "a", "lint");
    let script = r.path().join("ww.sh");
    fs::write(
        &script,
        "#!/bin/sh\n\
         case \"$1\" in */rustc|rustc) ;; *) echo \"ww: rustc must come first, got $1\" >&2; exit 3;; esac\n\
         exec \"$@\" --cfg kache_ww\n",
    )
    .unwrap();
    make_executable(&script);
    let s = script.to_str().unwrap();
    let env = [("RUSTC_WORKSPACE_WRAPPER", s)];
    let run = ["run", "-q", "-p", "lintapp"];
    let out = d.same("workspace wrapper (cold)", &run, &env);
    assert!(
        out.contains("wrapped by the workspace wrapper"),
        "the wrapper did not run: {out}"
    );
    d.same_restored("workspace wrapper", &run, &env);
    same_diagnostics(&d, "clippy with a workspace wrapper", &["clippy"], &env);
}

fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `kache debug-map ARG` in a checkout: the mapping text.
fn debug_map(d: &Diff, arg: &str) -> String {
    let o = kache(&d.cache)
        .arg("debug-map")
        .arg(arg)
        .current_dir(&d.cwd)
        .env("CARGO_TARGET_DIR", &d.kt)
        .output()
        .unwrap();
    assert!(o.status.success(), "kache debug-map: {}", show(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// Builds the debug fixture in checkout A (a miss), then in checkout B at
/// another path from the store. Returns B.
fn debug_checkouts(r: &Path, rustflags: &str) -> (Diff, Diff) {
    let a = Diff::new(r, "a", "debug");
    let b = Diff::new(r, "b", "debug");
    let env = [("RUSTFLAGS", rustflags)];
    a.same("checkout A", &["run", "-q"], &env);
    b.take_events();
    b.same("checkout B", &["run", "-q"], &env);
    b.assert_hit("checkout B from checkout A's entries");
    (a, b)
}

const WS_LINE: &str = "workspace-function-body-marker";
const REGISTRY_LINE: &str = "pub fn memchr(needle: u8, haystack: &[u8]) -> Option<usize>";

/// gdb started in `/` lists a workspace function and a registry function
/// of checkout B's binary (restored from A's entries) with the mapping
/// `kache debug-map --gdb` prints, as it does for plain cargo's binary
/// with none.
#[test]
fn gdb_from_root_finds_workspace_and_registry_sources() {
    if !have("gdb") {
        eprintln!("skipped: gdb is not installed");
        return;
    }
    let r = root();
    let (_a, b) = debug_checkouts(r.path(), "");
    let map = r.path().join("map.gdb");
    fs::write(&map, debug_map(&b, "--gdb")).unwrap();
    let gdb = |bin: &Path, init: Option<&Path>| -> String {
        let mut c = Command::new("gdb");
        c.current_dir("/").args(["-nx", "-batch"]);
        if let Some(i) = init {
            c.arg("-x").arg(i);
        }
        let o = c
            .args(["-ex", "list dbgapp::find_zed"])
            .args(["-ex", "list memchr::memchr::memchr"])
            .arg(bin)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let plain = gdb(&b.pt.join("debug/dbgapp"), None);
    assert!(
        plain.contains(WS_LINE) && plain.contains(REGISTRY_LINE),
        "gdb cannot list the sources of plain cargo's binary (a test bug): {plain}"
    );
    let ours = gdb(&b.kt.join("debug/dbgapp"), Some(&map));
    assert!(
        ours.contains(WS_LINE),
        "gdb from / with `kache debug-map --gdb` cannot list a workspace function: {ours}"
    );
    assert!(
        ours.contains(REGISTRY_LINE),
        "gdb from / with `kache debug-map --gdb` cannot list a registry function: {ours}"
    );
}

/// The same with lldb, where it is installed.
#[test]
fn lldb_from_root_finds_workspace_and_registry_sources() {
    if !have("lldb") {
        eprintln!("skipped: lldb is not installed");
        return;
    }
    let r = root();
    let (_a, b) = debug_checkouts(r.path(), "");
    let map = debug_map(&b, "--lldb");
    let lldb = |bin: &Path, init: Option<&str>| -> String {
        let mut c = Command::new("lldb");
        c.current_dir("/").args(["--no-lldbinit", "-b"]);
        if let Some(i) = init {
            c.args(["-o", i.trim()]);
        }
        let o = c
            .args(["-o", "source list -n find_zed"])
            .args(["-o", "source list -n memchr::memchr::memchr"])
            .arg(bin)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let plain = lldb(&b.pt.join("debug/dbgapp"), None);
    if !(plain.contains(WS_LINE) && plain.contains(REGISTRY_LINE)) {
        eprintln!("skipped: this lldb cannot list plain cargo's sources either: {plain}");
        return;
    }
    let ours = lldb(&b.kt.join("debug/dbgapp"), Some(&map));
    assert!(
        ours.contains(WS_LINE) && ours.contains(REGISTRY_LINE),
        "lldb from / with `kache debug-map --lldb` cannot list the sources: {ours}"
    );
}

/// The file names of a binary's LLVM coverage map (`__llvm_covmap`),
/// sorted (the records' order follows codegen units), without repeats.
fn coverage_files(bin: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let sec = dir.path().join("covmap");
    let o = Command::new("objcopy")
        .arg(format!("--dump-section=__llvm_covmap={}", sec.display()))
        .arg(bin)
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "objcopy: {}", show(&o));
    let data = fs::read(&sec).unwrap();
    let mut files = Vec::new();
    let mut at = 0;
    while at + 16 <= data.len() {
        let word = |i: usize| u32::from_le_bytes(data[at + i..at + i + 4].try_into().unwrap());
        let size = word(4) as usize;
        let blob = &data[at + 16..at + 16 + size];
        files.extend(coverage_filenames(blob));
        at += (16 + size).div_ceil(8) * 8;
    }
    files.sort();
    files.dedup();
    files
}

/// One coverage-map filenames blob: a count, the uncompressed and
/// compressed lengths, then the names (zlib-compressed when the
/// compressed length is not zero), each as a length and its bytes.
fn coverage_filenames(blob: &[u8]) -> Vec<String> {
    fn leb(b: &[u8], at: &mut usize) -> usize {
        let (mut v, mut shift) = (0usize, 0);
        loop {
            let x = b[*at];
            *at += 1;
            v |= usize::from(x & 0x7f) << shift;
            shift += 7;
            if x & 0x80 == 0 {
                return v;
            }
        }
    }
    let mut at = 0;
    let n = leb(blob, &mut at);
    let raw_len = leb(blob, &mut at);
    let zlen = leb(blob, &mut at);
    let names: Vec<u8> = if zlen == 0 {
        blob[at - 1..].to_vec()
    } else {
        use std::io::Read;
        let mut out = Vec::with_capacity(raw_len);
        flate2::read::ZlibDecoder::new(&blob[at..at + zlen])
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let mut at = 0;
    (0..n)
        .map(|_| {
            let len = leb(&names, &mut at);
            let s = String::from_utf8_lossy(&names[at..at + len]).into_owned();
            at += len;
            s
        })
        .collect()
}

/// A `-C instrument-coverage` build names this checkout's real paths in
/// its coverage map, as plain cargo's does, and is still cached (per
/// checkout path): checkout B never gets checkout A's paths.
#[test]
fn coverage_map_names_the_checkout() {
    let r = root();
    let flags = "-C instrument-coverage";
    let env = [("RUSTFLAGS", flags), ("LLVM_PROFILE_FILE", "/dev/null")];
    let a = Diff::new(r.path(), "a", "debug");
    let b = Diff::new(r.path(), "b", "debug");
    a.same("coverage build in A", &["run", "-q"], &env);
    b.same("coverage build in B", &["run", "-q"], &env);
    let ws_of = |d: &Diff| d.ws.to_string_lossy().into_owned();
    for (d, other) in [(&a, &b), (&b, &a)] {
        let ours = coverage_files(&d.kt.join("debug/dbgapp"));
        let plain = coverage_files(&d.pt.join("debug/dbgapp"));
        assert!(
            plain.iter().any(|f| f.contains(&ws_of(d))),
            "plain cargo's coverage map names no checkout path (a test bug): {plain:?}"
        );
        assert_eq!(
            ours, plain,
            "the coverage map under kache differs from plain cargo's"
        );
        assert!(
            !ours
                .iter()
                .any(|f| f.contains("/kache-") || f.contains(&ws_of(other))),
            "the coverage map of {} names a sentinel or the other checkout: {ours:?}",
            ws_of(d)
        );
    }
    // Still cached: from the store after rm -rf target.
    a.take_events();
    a.same_restored("coverage build in A", &["run", "-q"], &env);
    a.assert_hit("coverage build after rm -rf target");
    assert_eq!(
        coverage_files(&a.kt.join("debug/dbgapp")),
        coverage_files(&a.pt.join("debug/dbgapp"))
    );
}

/// A proc macro that writes a file while expanding (napi-derive's type
/// definitions, through `NAPI_TYPE_DEF_TMP_FOLDER`): after `cargo clean`
/// a build under kache writes the file as plain cargo does, with no
/// setting; `kache why-miss` and `kache stats` say why it was not cached.
/// Without the variable the crate is cached as usual.
#[test]
fn napi_style_side_effect_macro_after_cargo_clean() {
    let r = root();
    let d = Diff::new(r.path(), "a", "inputs");
    let defs = r.path().join("type-defs");
    fs::create_dir_all(&defs).unwrap();
    let folder = defs.to_str().unwrap();
    let env = [("NAPI_TYPE_DEF_TMP_FOLDER", folder)];
    let build = ["build", "-p", "napiuser"];
    let written = defs.join("napiuser");
    let p = d.plain(&build, &env);
    assert!(p.status.success(), "plain: {}", show(&p));
    let expected = fs::read_to_string(&written).expect("plain cargo's macro wrote nothing");
    fs::remove_file(&written).unwrap();
    d.kache_ok(&build, &env);
    assert_eq!(
        fs::read_to_string(&written).ok().as_deref(),
        Some(&*expected)
    );
    fs::remove_file(&written).unwrap();
    let c = d.kache(&["clean"], &[]);
    assert!(c.status.success(), "{}", show(&c));
    d.kache_ok(&build, &env);
    assert_eq!(
        fs::read_to_string(&written).ok().as_deref(),
        Some(&*expected),
        "after cargo clean, a build under kache did not write the type definitions"
    );
    let why = kache(&d.cache)
        .args(["why-miss", "napiuser"])
        .output()
        .unwrap();
    let why_text = String::from_utf8_lossy(&why.stdout);
    assert!(
        why.status.success() && why_text.contains("NAPI_TYPE_DEF_TMP_FOLDER"),
        "why-miss does not say why napiuser was not cached: {}",
        show(&why)
    );
    let stats = kache(&d.cache).arg("stats").output().unwrap();
    assert!(
        String::from_utf8_lossy(&stats.stdout).contains("NAPI_TYPE_DEF_TMP_FOLDER is set"),
        "stats does not count the pass-through: {}",
        show(&stats)
    );
    // Without the variable: cached as usual.
    d.kache_ok(&build, &[]);
    d.take_events();
    d.wipe_kache_target();
    d.same(
        "napiuser without the variable",
        &["run", "-q", "-p", "napiuser"],
        &[],
    );
    d.assert_hit("napiuser without NAPI_TYPE_DEF_TMP_FOLDER");
}
