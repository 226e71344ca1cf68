//! Differential class 1, link inputs: a static library built by a `-sys`
//! crate's build script two levels down (C edited, or only `CFLAGS`
//! changed, also in a test harness), a library named only by `#[link]`,
//! `rustc-link-lib` without a kind, an object passed by `rustc-link-arg`.

use super::{Diff, Env, root};

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
