//! Adoption (issue 15): `kache init`, `kache doctor` against a real S3
//! server, `kache stats --markdown`, and the GitHub Action's script run
//! locally with GitHub's environment files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{cargo_plain, copy_tree, kache, kache_bin, ok, run_checked, show, stdout};
use crate::s3server::{Fault, Proxy, S3};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diff")
        .join(name)
}

// ---------------------------------------------------------------------
// kache init
// ---------------------------------------------------------------------

/// `kache init` with its own HOME and `CARGO_HOME`.
fn init(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    let mut c = kache(&home.join("store"));
    c.arg("init")
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env("CARGO_HOME", home.join(".cargo"))
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_RUSTC_WRAPPER");
    c.output().unwrap()
}

#[test]
fn init_switches_kache_on_idempotently_and_check_tells() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let o = init(&home, t.path(), &["--check"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "--check before init: {}",
        show(&o)
    );
    let o = init(&home, t.path(), &[]);
    ok(&o);
    let file = home.join(".cargo/config.toml");
    assert!(
        stdout(&o).contains(&file.display().to_string()),
        "{}",
        show(&o)
    );
    assert!(stdout(&o).contains("to undo"), "{}", show(&o));
    let first = fs::read_to_string(&file).unwrap();
    assert!(first.contains("rustc-wrapper"), "{first}");
    let o = init(&home, t.path(), &[]);
    ok(&o);
    assert!(stdout(&o).contains("already on"), "{}", show(&o));
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        first,
        "a second init changed the file"
    );
    ok(&init(&home, t.path(), &["--check"]));

    // Another wrapper in the file: refused, unless --force.
    fs::write(
        &file,
        "# mine\n[build]\nrustc-wrapper = \"sccache\"\njobs = 2\n",
    )
    .unwrap();
    let o = init(&home, t.path(), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("sccache"),
        "{}",
        show(&o)
    );
    assert_eq!(init(&home, t.path(), &["--check"]).status.code(), Some(1));
    ok(&init(&home, t.path(), &["--force"]));
    let forced = fs::read_to_string(&file).unwrap();
    assert!(
        forced.contains("# mine") && forced.contains("jobs = 2") && !forced.contains("sccache"),
        "{forced}"
    );
}

/// `kache init --project`, then a plain `cargo build` in that project
/// (no `RUSTC_WRAPPER` in the environment) goes through kache.
#[test]
fn init_project_makes_cargo_use_kache() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ws = t.path().join("ws");
    copy_tree(&fixture("fixme"), &ws);
    fs::create_dir_all(ws.join("src/sub")).unwrap();
    let o = init(&home, &ws.join("src/sub"), &["--project"]);
    ok(&o);
    assert!(ws.join(".cargo/config.toml").is_file(), "{}", show(&o));
    let store = t.path().join("store");
    let mut c = cargo_plain(&ws, &t.path().join("target"), &["build"]);
    c.env("KACHE_CACHE_DIR", &store);
    ok(&c.output().unwrap());
    let events = fs::read_to_string(store.join("events.jsonl")).unwrap_or_default();
    assert!(
        events.contains("\"fixme\""),
        "cargo build after kache init --project did not run kache: {events}"
    );
}

// ---------------------------------------------------------------------
// kache doctor
// ---------------------------------------------------------------------

/// `kache doctor` in an empty dir (no Cargo.lock: the cc check does not
/// apply), with kache as the wrapper and the given remote.
fn doctor(t: &Path, s3: &S3, endpoint: &str, env: &[(&str, &str)]) -> Output {
    let mut c = kache(&t.join("store"));
    s3.configure_at(&mut c, endpoint);
    c.arg("doctor")
        .current_dir(t)
        .env("RUSTC_WRAPPER", kache_bin())
        .env("HOME", t)
        .env("CARGO_HOME", t.join(".cargo"))
        .envs(env.iter().copied());
    run_checked(&mut c)
}

fn line(o: &Output, name: &str) -> String {
    stdout(o)
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line: {}", show(o)))
        .to_string()
}

#[test]
fn doctor_passes_on_a_good_setup_and_names_each_failure() {
    let s3 = S3::start_local();
    let t = tempfile::tempdir().unwrap();
    let o = doctor(t.path(), &s3, &s3.endpoint, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    for name in [
        "wrapper",
        "remote",
        "read-write",
        "clock",
        "store",
        "config",
    ] {
        assert!(line(&o, name).starts_with("ok"), "{}", show(&o));
    }
    assert!(line(&o, "cc").starts_with("skip"), "{}", show(&o));
    assert!(line(&o, "daemon").starts_with("skip"), "{}", show(&o));
    // How a build-script miss is traced here (the tests pin it inline).
    let l = line(&o, "scripts");
    assert!(
        l.starts_with("ok") && l.contains("traced inline (trace_behind = false)"),
        "{l}"
    );
    let o = doctor(t.path(), &s3, &s3.endpoint, &[("KACHE_TRACE_BEHIND", "1")]);
    let l = line(&o, "scripts");
    assert!(
        l.starts_with("ok")
            && (l.contains("traced by a twin behind the build")
                || l.contains("traced inline: no private mount namespace here (")),
        "{l}"
    );
    // The probe object is gone.
    assert!(
        !s3.names().iter().any(|n| n.contains("doctor")),
        "the probe object was left: {:?}",
        s3.names()
    );

    // Wrong secret.
    let o = doctor(
        t.path(),
        &s3,
        &s3.endpoint,
        &[("KACHE_S3_SECRET_KEY", "wrong-secret-value")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let l = line(&o, "remote");
    assert!(l.starts_with("FAIL") && l.contains("fix:"), "{l}");

    // A key that may read but not write.
    let proxy = Proxy::start(&s3.endpoint);
    proxy.fail_matching(
        &format!("{}/{}/.kache/doctor/", s3.bucket, s3.prefix),
        Fault::Status(403, "AccessDenied"),
    );
    let o = doctor(t.path(), &s3, &proxy.endpoint, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(line(&o, "remote").starts_with("ok"), "{}", show(&o));
    let l = line(&o, "read-write");
    assert!(l.starts_with("FAIL") && l.contains("cannot write"), "{l}");

    // A server whose clock is two hours ahead of ours.
    let proxy = Proxy::start(&s3.endpoint);
    let ahead = std::time::SystemTime::now() + std::time::Duration::from_hours(2);
    proxy.set_date(&http_date(ahead));
    let o = doctor(t.path(), &s3, &proxy.endpoint, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let l = line(&o, "clock");
    assert!(l.starts_with("FAIL") && l.contains("behind"), "{l}");

    // An unusable store.
    fs::write(t.path().join("afile"), "x").unwrap();
    let bad = t.path().join("afile/store");
    let o = doctor(
        t.path(),
        &s3,
        &s3.endpoint,
        &[("KACHE_CACHE_DIR", bad.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(line(&o, "store").starts_with("FAIL"), "{}", show(&o));

    // Another wrapper in the way.
    let o = doctor(t.path(), &s3, &s3.endpoint, &[("RUSTC_WRAPPER", "sccache")]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let l = line(&o, "wrapper");
    assert!(l.starts_with("FAIL") && l.contains("sccache"), "{l}");

    // --json: the same verdicts.
    let mut c = kache(&t.path().join("store"));
    c.args(["doctor", "--json"])
        .current_dir(t.path())
        .env("RUSTC_WRAPPER", "sccache");
    let o = c.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "wrapper" && c["status"] == "fail")
    );
}

/// An HTTP `Date` value.
fn http_date(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let o = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{secs}"),
            "+%a, %d %b %Y %H:%M:%S GMT",
        ])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

// ---------------------------------------------------------------------
// The GitHub Action's script
// ---------------------------------------------------------------------

/// One simulated GitHub runner: its HOME (with kache "installed" where
/// the action installs it), a checkout, and GitHub's environment files.
struct Runner {
    home: PathBuf,
    ws: PathBuf,
    files: PathBuf,
}

impl Runner {
    fn new(root: &Path, name: &str) -> Runner {
        let home = root.join(name).join("home");
        let bin = home.join(".kache-bin/bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy(kache_bin(), bin.join("kache")).unwrap();
        let ws = root.join(name).join("ws");
        copy_tree(&fixture("fixme"), &ws);
        let files = root.join(name).join("github");
        fs::create_dir_all(&files).unwrap();
        Runner { home, ws, files }
    }

    fn file(&self, n: &str) -> PathBuf {
        self.files.join(n)
    }

    /// The variables the steps so far wrote to `$GITHUB_ENV` (plain and
    /// heredoc forms), and `$GITHUB_PATH` prepended to PATH.
    fn env(&self) -> Vec<(String, String)> {
        let text = fs::read_to_string(self.file("env")).unwrap_or_default();
        let mut out = Vec::new();
        let mut lines = text.lines();
        while let Some(l) = lines.next() {
            if let Some((k, delim)) = l.split_once("<<") {
                let mut v = Vec::new();
                for x in lines.by_ref() {
                    if x == delim {
                        break;
                    }
                    v.push(x);
                }
                out.push((k.to_string(), v.join("\n")));
            } else if let Some((k, v)) = l.split_once('=') {
                out.push((k.to_string(), v.to_string()));
            }
        }
        let path = fs::read_to_string(self.file("path")).unwrap_or_default();
        let mut dirs: Vec<String> = path.lines().map(str::to_string).collect();
        dirs.push(std::env::var("PATH").unwrap_or_default());
        out.push(("PATH".to_string(), dirs.join(":")));
        out
    }

    fn outputs(&self) -> String {
        fs::read_to_string(self.file("output")).unwrap_or_default()
    }

    /// Runs `kache-ci.sh STEP` as the action does, after the steps before.
    fn step(&self, step: &str, github: &[(&str, &str)], s3: Option<&S3>) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/github/kache-ci.sh");
        let mut c = Command::new("bash");
        crate::common::clean_env(&mut c);
        c.arg(script)
            .arg(step)
            .current_dir(&self.ws)
            .env("HOME", &self.home)
            .env_remove("KACHE_CACHE_DIR")
            .env_remove("RUSTC_WRAPPER")
            .env("GITHUB_ENV", self.file("env"))
            .env("GITHUB_PATH", self.file("path"))
            .env("GITHUB_OUTPUT", self.file("output"))
            .env("GITHUB_STEP_SUMMARY", self.file("summary"))
            .env("GITHUB_RUN_ID", "42")
            .envs(self.env())
            .envs(github.iter().copied());
        if let Some(s3) = s3 {
            c.env("INPUT_BUCKET", &s3.bucket)
                .env("INPUT_ENDPOINT", &s3.endpoint)
                .env("INPUT_REGION", &s3.region)
                .env("INPUT_PREFIX", &s3.prefix)
                .env("INPUT_ACCESS_KEY_ID", &s3.access_key)
                .env("INPUT_SECRET_ACCESS_KEY", &s3.secret_key);
        }
        run_checked(&mut c)
    }

    /// `cargo run` in the checkout with the environment the action set.
    fn build(&self) -> Output {
        let mut c = cargo_plain(&self.ws, &self.ws.join("target"), &["run", "-q"]);
        c.envs(self.env()).env("HOME", &self.home);
        c.output().unwrap()
    }

    fn kache_stats(&self, args: &[&str]) -> Output {
        let mut c = Command::new(kache_bin());
        crate::common::clean_env(&mut c);
        c.arg("stats")
            .args(args)
            .envs(self.env())
            .env("HOME", &self.home);
        c.output().unwrap()
    }
}

/// The event payload of a push to the default branch, or of a pull
/// request from a fork.
fn event(root: &Path, fork: bool) -> PathBuf {
    let p = root.join(if fork { "fork-pr.json" } else { "push.json" });
    let v = if fork {
        serde_json::json!({
            "pull_request": {"head": {"repo": {"full_name": "mallory/app", "fork": true}}},
            "repository": {"full_name": "owner/app", "default_branch": "main"},
        })
    } else {
        serde_json::json!({"repository": {"full_name": "owner/app", "default_branch": "main"}})
    };
    fs::write(&p, v.to_string()).unwrap();
    p
}

/// The signing key reaches `kache sync --push` on the default branch and
/// nothing else: never `$GITHUB_ENV` (the build would see it); what the
/// main branch pushed is signed (a runner trusting the key imports it);
/// a fork's pull request, and an event named read-only, write nothing.
#[test]
fn action_is_read_only_on_a_fork_pull_request_and_signs_only_on_the_default_branch() {
    let t = tempfile::tempdir().unwrap();
    let s3 = S3::start_local();
    let push = event(t.path(), false);
    let pr = event(t.path(), true);
    let keyfile = t.path().join("signing.key");
    let g = kache(&t.path().join("k"))
        .args(["key", "generate", "ci-main", "--out"])
        .arg(&keyfile)
        .output()
        .unwrap();
    ok(&g);
    let public = stdout(&g).trim().to_string();
    let secret = fs::read_to_string(&keyfile).unwrap();
    let get = |env: &[(String, String)], k: &str| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    let main_gh = [
        ("GITHUB_EVENT_NAME", "push"),
        ("GITHUB_EVENT_PATH", push.to_str().unwrap()),
        ("GITHUB_REF", "refs/heads/main"),
        ("INPUT_SIGNING_KEY", secret.as_str()),
    ];
    let main = Runner::new(t.path(), "main");
    for step in ["env", "pull"] {
        ok(&main.step(step, &main_gh, Some(&s3)));
    }
    let env = main.env();
    assert_eq!(
        get(&env, "KACHE_SIGNING_KEY"),
        None,
        "the key went to $GITHUB_ENV"
    );
    assert_eq!(get(&env, "KACHE_REMOTE_READ_ONLY"), None);
    assert_eq!(get(&env, "RUSTC_WRAPPER").as_deref(), Some("kache"));
    assert!(main.outputs().contains("read-only=false") && main.outputs().contains("mode=bucket"));
    ok(&main.build());
    ok(&main.step("finish", &main_gh, Some(&s3)));
    let pushed = s3.names();
    assert!(pushed.iter().any(|n| n.contains("/fixme/")), "{pushed:?}");

    // A runner that trusts only that key imports all of it.
    let trusting = Runner::new(t.path(), "trusting");
    let trust_gh = [
        ("GITHUB_EVENT_NAME", "push"),
        ("GITHUB_EVENT_PATH", push.to_str().unwrap()),
        ("GITHUB_REF", "refs/heads/other"),
        ("INPUT_TRUSTED_KEYS", public.as_str()),
    ];
    ok(&trusting.step("env", &trust_gh, Some(&s3)));
    let o = trusting.step("pull", &trust_gh, Some(&s3));
    ok(&o);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("refused"),
        "the main branch's push was not signed: {}",
        show(&o)
    );
    let st = trusting.kache_stats(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["entries"].as_u64().unwrap() > 0, "nothing imported: {v}");

    for (name, ev, path, extra) in [
        ("fork", "pull_request", &pr, ""),
        ("named", "workflow_dispatch", &push, "workflow_dispatch"),
    ] {
        let gh = [
            ("GITHUB_EVENT_NAME", ev),
            ("GITHUB_EVENT_PATH", path.to_str().unwrap()),
            ("GITHUB_REF", "refs/heads/main"),
            ("INPUT_SIGNING_KEY", secret.as_str()),
            ("INPUT_READ_ONLY_EVENTS", extra),
        ];
        let before = s3.names();
        let r = Runner::new(t.path(), name);
        for step in ["env", "pull"] {
            ok(&r.step(step, &gh, Some(&s3)));
        }
        let env = r.env();
        assert_eq!(
            get(&env, "KACHE_REMOTE_READ_ONLY").as_deref(),
            Some("1"),
            "{name}"
        );
        assert_eq!(get(&env, "KACHE_SIGNING_KEY"), None, "{name}");
        assert!(
            r.outputs().contains("read-only=true"),
            "{name}: {}",
            r.outputs()
        );
        // Its own change: a build with something new to push.
        fs::write(
            r.ws.join("src/lib.rs"),
            format!("pub fn f() -> i32 {{ 1 }}\npub fn g() -> i32 {{ 2 }} // {name}\n"),
        )
        .unwrap();
        ok(&r.build());
        ok(&r.step("finish", &gh, Some(&s3)));
        assert_eq!(
            s3.names(),
            before,
            "{name}: a read-only job wrote to the bucket"
        );
    }
}

/// Bucket mode: runner A builds and pushes through the action; runner B
/// (a fresh store) pulls and its build is all hits; each job's summary
/// gives the numbers `kache stats --json --since` gives.
#[test]
fn action_bucket_mode_shares_between_runners_with_a_true_summary() {
    let t = tempfile::tempdir().unwrap();
    let s3 = S3::start_local();
    let push = event(t.path(), false);
    let gh = [
        ("GITHUB_EVENT_NAME", "push"),
        ("GITHUB_EVENT_PATH", push.to_str().unwrap()),
        ("GITHUB_REF", "refs/heads/main"),
    ];
    let a = Runner::new(t.path(), "a");
    for step in ["key", "env", "pull"] {
        ok(&a.step(step, &gh, Some(&s3)));
    }
    assert!(
        a.outputs().contains("bin-key=kache-bin-"),
        "{}",
        a.outputs()
    );
    let built = a.build();
    ok(&built);
    ok(&a.step("finish", &gh, Some(&s3)));
    assert!(
        s3.names().iter().any(|n| n.contains("/fixme/")),
        "runner A pushed nothing: {:?}",
        s3.names()
    );
    summary_matches_json(&a, 0);

    let b = Runner::new(t.path(), "b");
    for step in ["env", "pull"] {
        ok(&b.step(step, &gh, Some(&s3)));
    }
    let o = b.build();
    ok(&o);
    assert_eq!(stdout(&o), stdout(&built));
    ok(&b.step("finish", &gh, Some(&s3)));
    let misses = summary_matches_json(&b, 0);
    assert_eq!(misses, 0, "runner B compiled something after pulling");
}

/// Asserts that the job summary's totals equal `kache stats --json`
/// over the job; returns the misses.
fn summary_matches_json(r: &Runner, _: u64) -> u64 {
    let summary = fs::read_to_string(r.file("summary")).unwrap();
    let start = r
        .env()
        .into_iter()
        .find(|(k, _)| k == "KACHE_CI_START")
        .unwrap()
        .1;
    let o = r.kache_stats(&["--json", "--since", &start]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let all = summary
        .lines()
        .find(|l| l.starts_with("| **all** |"))
        .unwrap_or_else(|| panic!("no totals row: {summary}"));
    let cells: Vec<u64> = all
        .split('|')
        .filter_map(|c| c.trim().trim_matches('*').parse().ok())
        .collect();
    assert_eq!(
        (cells[0], cells[1]),
        (v["hits"].as_u64().unwrap(), v["misses"].as_u64().unwrap()),
        "summary {summary} against {v}"
    );
    assert!(
        v["hits"].as_u64().unwrap() + v["misses"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(
        summary.contains(&format!("Pushed: {} entries", v["pushed"])),
        "{summary} against {v}"
    );
    v["misses"].as_u64().unwrap()
}

/// No-bucket mode: the store goes to the Actions cache, trimmed to what
/// this job used (an older entry no build uses is dropped), saved only
/// where `save-if` says; a build from that store is all hits.
#[test]
fn action_without_a_bucket_trims_the_store_to_what_the_job_used() {
    let t = tempfile::tempdir().unwrap();
    let push = event(t.path(), false);
    let gh = [
        ("GITHUB_EVENT_NAME", "push"),
        ("GITHUB_EVENT_PATH", push.to_str().unwrap()),
        ("GITHUB_REF", "refs/heads/main"),
    ];
    let r = Runner::new(t.path(), "a");
    ok(&r.step("env", &gh, None));
    assert!(
        r.outputs().contains("mode=actions-cache"),
        "{}",
        r.outputs()
    );
    let store = PathBuf::from(
        r.env()
            .into_iter()
            .find(|(k, _)| k == "KACHE_CACHE_DIR")
            .unwrap()
            .1,
    );
    // A stale entry from an earlier job, last used a week ago.
    let key = crate::common::put_entry(&store, "stale", "old", &[("libstale.rlib", b"old bytes")]);
    let manifest = store.join("entries/stale").join(format!("{key}.json"));
    let week_ago = std::time::SystemTime::now() - std::time::Duration::from_hours(168);
    fs::File::options()
        .append(true)
        .open(&manifest)
        .unwrap()
        .set_modified(week_ago)
        .unwrap();
    ok(&r.step("pull", &gh, None));
    let built = r.build();
    ok(&built);
    ok(&r.step("finish", &gh, None));
    let out = r.outputs();
    assert!(
        out.contains("save=true"),
        "the default branch did not save: {out}"
    );
    assert!(out.contains("store-key=kache-store-"), "{out}");
    assert!(
        !manifest.exists(),
        "the stale entry was saved with the job's store"
    );
    // The saved store serves the next job: all hits.
    fs::remove_dir_all(r.ws.join("target")).unwrap();
    let o = r.build();
    ok(&o);
    assert_eq!(stdout(&o), stdout(&built));
    let st = r.kache_stats(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["entries"].as_u64().unwrap() > 0, "{v}");

    // A pull request's job never saves.
    let pr = event(t.path(), true);
    let p = Runner::new(t.path(), "pr");
    ok(&p.step(
        "env",
        &[
            ("GITHUB_EVENT_NAME", "pull_request"),
            ("GITHUB_EVENT_PATH", pr.to_str().unwrap()),
        ],
        None,
    ));
    ok(&p.step("finish", &[], None));
    assert!(p.outputs().contains("save=false"), "{}", p.outputs());
}

/// `kache stats --markdown` gives the same hits and misses as `--json`,
/// per language and in total, and names the top misses with a reason.
#[test]
fn stats_markdown_agrees_with_json() {
    let t = tempfile::tempdir().unwrap();
    let ws = t.path().join("ws");
    copy_tree(&fixture("fixme"), &ws);
    let store = t.path().join("store");
    for _ in 0..2 {
        let mut c =
            crate::common::cargo_through_kache(&ws, &t.path().join("target"), &store, &["build"]);
        ok(&c.output().unwrap());
        let _ = fs::remove_dir_all(t.path().join("target"));
    }
    let md = kache(&store)
        .args(["stats", "--markdown"])
        .output()
        .unwrap();
    ok(&md);
    let js = kache(&store).args(["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&js.stdout).unwrap();
    let text = stdout(&md);
    let rust = text
        .lines()
        .find(|l| l.starts_with("| Rust |"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        rust.starts_with(&format!(
            "| Rust | {} | {} |",
            v["by_language"]["rust"]["hits"], v["by_language"]["rust"]["misses"]
        )),
        "{rust} against {v}"
    );
    assert!(
        v["hits"].as_u64().unwrap() >= 2 && v["misses"].as_u64().unwrap() >= 2,
        "{v}"
    );
    assert!(
        text.contains("| top misses |") && text.contains("first compile here"),
        "{text}"
    );
}
