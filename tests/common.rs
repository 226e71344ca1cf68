//! Helpers shared by every test module.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The kache binary under test.
pub(crate) fn kache_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kache"))
}

/// A `kache` command with a clean environment: no user config, no
/// credentials from the host, the given cache dir.
pub(crate) fn kache(cache_dir: &Path) -> Command {
    let mut c = Command::new(kache_bin());
    clean_env(&mut c);
    c.env("KACHE_CACHE_DIR", cache_dir);
    c
}

/// Waits until the build-script runs traced behind a build
/// (`cache.trace_behind`: each twin keeps a `tmp/twin.*` directory while
/// it lives; at most 10 minutes) and the entries a build stores in the
/// background (incremental compiles; nothing holds the store's gc lock
/// then) are in place and logged.
pub(crate) fn settle(cache: &Path) {
    let end = std::time::Instant::now() + std::time::Duration::from_mins(10);
    let twin_alive = || {
        std::fs::read_dir(cache.join("tmp")).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix("twin.").and_then(|r| r.split('.').next());
                pid.is_some_and(|p| Path::new("/proc").join(p).exists())
            })
        })
    };
    while twin_alive() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .open(cache.join("gc.lock"))
    {
        let _ = f.lock();
    }
}

/// Removes every KACHE_* and AWS_* variable and points config lookups
/// at nothing.
pub(crate) fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("KACHE_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("KACHE_CONFIG", "/nonexistent/kache-config.toml");
    // A test reads the store, the event log or the target dir right after
    // a build: incremental compiles are stored before the wrapper returns.
    // The desk tests (differential::desk) switch background stores on.
    c.env("KACHE_BACKGROUND_STORE", "0");
    // Likewise build-script misses are traced inline (the default under
    // `CI`); the twin tests (differential::build_scripts, daemon) switch
    // tracing behind the build on.
    c.env("KACHE_TRACE_BEHIND", "0");
    c.env(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/aws-credentials",
    );
}

/// Whether the tests run as root (the `id -u` command; no unsafe code).
pub(crate) fn is_root() -> bool {
    let o = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

/// Output as text, for assertion messages.
pub(crate) fn show(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes an entry straight into a cache dir in the store layout (blobs
/// plus manifest), as a build would have. Returns the key.
pub(crate) fn put_entry(
    cache_dir: &Path,
    crate_name: &str,
    seed: &str,
    files: &[(&str, &[u8])],
) -> String {
    use std::fs;
    let key = blake3::hash(format!("{crate_name}/{seed}").as_bytes())
        .to_hex()
        .to_string();
    let mut recs = Vec::new();
    for (name, data) in files {
        let h = blake3::hash(data).to_hex().to_string();
        let p = cache_dir.join("blobs").join(&h[..2]).join(&h);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        if !p.exists() {
            fs::write(&p, data).unwrap();
        }
        recs.push(serde_json::json!({
            "name": name, "hash": h, "size": data.len(), "executable": false
        }));
    }
    let m = serde_json::json!({
        "version": 1, "crate_name": crate_name, "key": key, "files": recs,
        "stdout": "", "stderr": "", "dep_info": null, "inputs": null,
        "compile_ms": 1500, "created": 0
    });
    let dir = cache_dir.join("entries").join(crate_name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(format!("{key}.json")),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    key
}

/// Runs a kache command and checks that nothing it printed holds a
/// secret: the value of any SECRET/TOKEN variable it was given, the
/// signing key it was given (`KACHE_SIGNING_KEY`, or the text of the
/// file `KACHE_SIGNING_KEY_FILE` names), or the signature parts of a
/// presigned URL. Every sync test runs kache through this.
pub(crate) fn run_checked(c: &mut Command) -> Output {
    let secrets = secrets_of(c);
    let o = c.output().unwrap();
    assert_no_secrets(&o, &secrets);
    o
}

/// The secrets a command is given (see `run_checked`).
pub(crate) fn secrets_of(c: &Command) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in c.get_envs() {
        let k = k.to_string_lossy().to_ascii_uppercase();
        let Some(v) = v.map(|v| v.to_string_lossy().into_owned()) else {
            continue;
        };
        if (k.contains("SECRET") || k.contains("TOKEN")) && v.len() >= 4 {
            out.push(v);
        } else if k == "KACHE_SIGNING_KEY" {
            out.extend(signing_key_secrets(&v));
        } else if k == "KACHE_SIGNING_KEY_FILE"
            && let Ok(text) = std::fs::read_to_string(&v)
        {
            out.extend(signing_key_secrets(&text));
        }
    }
    out
}

/// A signing key's text, its base64 part (after the name), and every
/// 16-character piece of the base64 of its first 48 bytes, which hold
/// the secret seed (a partial leak is a leak; the rest of the PKCS#8
/// document is the public key, which is printed on purpose).
pub(crate) fn signing_key_secrets(text: &str) -> Vec<String> {
    let t = text.trim();
    let mut out = vec![t.to_string()];
    if let Some((_, b64)) = t.split_once(':') {
        out.push(b64.to_string());
        let secret_part = &b64[..b64.len().min(64)];
        for i in (0..secret_part.len().saturating_sub(16)).step_by(4) {
            out.push(secret_part[i..i + 16].to_string());
        }
    }
    out.retain(|s| s.len() >= 8);
    out
}

/// Fails if stdout or stderr holds one of `secrets`, or
/// `X-Amz-Signature` / `X-Amz-Credential` / `X-Amz-Security-Token`.
pub(crate) fn assert_no_secrets(o: &Output, secrets: &[String]) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for s in secrets {
        assert!(!all.contains(s.as_str()), "a secret was printed: {all}");
    }
    for marker in [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
    ] {
        assert!(
            !all.to_ascii_lowercase()
                .contains(&marker.to_ascii_lowercase()),
            "{marker} was printed: {all}"
        );
    }
}

/// Copies a directory tree (a fixture workspace), leaving out `target/`.
pub(crate) fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "target" {
                copy_tree(&e.path(), &to);
            }
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// `cargo ARGS --offline` in workspace `ws` through the kache wrapper, with
/// its own target and cache dirs and nothing inherited from the cargo
/// running the tests.
pub(crate) fn cargo_through_kache(
    ws: &Path,
    target: &Path,
    cache: &Path,
    args: &[&str],
) -> Command {
    let mut c = cargo_plain(ws, target, args);
    c.env("RUSTC_WRAPPER", kache_bin())
        .env("KACHE_CACHE_DIR", cache);
    c
}

/// `cargo ARGS --offline` in workspace `ws` with no wrapper at all (plain
/// cargo, the oracle of the differential tests): its own target dir, no
/// KACHE_*/CARGO_*/RUSTC_* variables or RUSTFLAGS inherited from the
/// cargo running the tests.
pub(crate) fn cargo_plain(ws: &Path, target: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    clean_env(&mut c);
    for (k, _) in std::env::vars() {
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC_")
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
            || k == "CARGO"
            || k == "CFLAGS"
        {
            c.env_remove(k);
        }
    }
    // `--offline` goes before a `--` (what follows is for the program).
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    c.current_dir(ws)
        .args(&args[..split])
        .arg("--offline")
        .args(&args[split..])
        .env("CARGO_TARGET_DIR", target)
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_BUILD_JOBS", "2");
    c
}

/// Asserts that a command succeeded, showing its output if not.
pub(crate) fn ok(o: &Output) {
    assert!(o.status.success(), "{}", show(o));
}

/// Stdout as text.
pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A test's world: a bucket and a temp dir for caches and workspaces.
/// Each test module adds the methods it needs in its own `impl World`.
pub(crate) struct World {
    pub(crate) s3: crate::s3server::S3,
    pub(crate) tmp: tempfile::TempDir,
}

impl World {
    /// An external server if configured, else a fresh s3s-fs.
    pub(crate) fn new() -> World {
        World {
            s3: crate::s3server::S3::start(),
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// Always the in-process s3s-fs, whatever `KACHE_TEST_S3_*` says:
    /// for tests that read or damage the bucket's files directly, or
    /// need session tokens.
    pub(crate) fn local() -> World {
        World {
            s3: crate::s3server::S3::start_local(),
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// A cache (store) dir of this world.
    pub(crate) fn cache(&self, name: &str) -> PathBuf {
        self.path(name)
    }

    /// A copy of `tests/fixtures/FIXTURE` at `NAME/ws`.
    pub(crate) fn fixture(&self, fixture: &str, name: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        let ws = self.path(name).join("ws");
        copy_tree(&src, &ws);
        ws
    }
}
