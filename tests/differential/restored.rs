//! Differential class 6, restored files and later compiles: `cargo fix`
//! and `clippy --fix` (and with kache disabled) after a restore, the
//! wrapper removed, and an rlib written in place after a restore leaving
//! the store intact.

use std::fs;
use std::path::Path;

use super::{Diff, Env, fixture, norm, root};
use crate::common::show;

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
    let root_user = crate::common::is_root();
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
