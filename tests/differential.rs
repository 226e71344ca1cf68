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
//!
//! This file holds what the tests share (`Diff`, the fixture copies, the
//! output normalisation); the tests are in `differential/`, by topic:
//!
//! - `link`: link inputs (class 1);
//! - `paths`: paths baked into outputs, paths with a space, the user's
//!   `--remap-path-prefix` (classes 2 and 7);
//! - `inputs`: declared inputs, edits judged by mtime,
//!   `target-cpu=native` (classes 3 to 5);
//! - `restored`: restored files and later compiles (class 6);
//! - `guards`: regression guards, and cases found while writing the suite;
//! - `attack`: attack repros, each a wrong artifact kache once served;
//! - `everyday`: everyday commands (issue 12);
//! - `build_scripts`: build-script runs cached (issue 21);
//! - `desk`: the edit loop with incremental compilation, background
//!   stores and the store's size limit (issue 22).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{cargo_plain, cargo_through_kache, copy_tree, show};

mod attack;
mod build_scripts;
mod desk;
mod everyday;
mod guards;
mod inputs;
mod link;
mod paths;
mod restored;

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
    /// Incremental compiles are stored in the background (kache's
    /// default; the other tests store before the wrapper returns).
    background: bool,
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
            background: false,
        }
    }

    /// Background stores on, as kache's default is.
    fn background(mut self) -> Diff {
        self.background = true;
        self
    }

    /// Runs cargo in `ws/sub` (a workspace root below the copy).
    fn in_dir(mut self, sub: &str) -> Diff {
        self.cwd = self.ws.join(sub);
        self
    }

    fn kache(&self, args: &[&str], env: Env<'_>) -> Output {
        let mut c = cargo_through_kache(&self.cwd, &self.kt, &self.cache, args);
        if self.background {
            c.env("KACHE_BACKGROUND_STORE", "1");
        }
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

    /// (Once the store has settled: a background store still reading
    /// the target dir would lose its entry.)
    fn wipe_kache_target(&self) {
        crate::common::settle(&self.cache);
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
        crate::common::settle(&self.cache);
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
