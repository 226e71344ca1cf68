//! Trust (issue 14): signed entries, trusted keys, read-only runners,
//! against the in-process S3 server (its bucket files are read and
//! tampered with, as an attacker with the bucket's write credentials
//! would) and real cargo builds of `tests/fixtures/trust` (`app` prints
//! `dep::answer()`, 42).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{
    World, assert_no_secrets, cargo_plain, cargo_through_kache, kache, ok, put_entry, run_checked,
    secrets_of, show, stderr, stdout,
};
use crate::s3server::{Proxy, S3};

/// A generated key pair: the secret key file and the public key line.
struct Key {
    file: PathBuf,
    public: String,
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(o)))
}

/// (crate, key) of every entry in a cache dir.
fn entries(cache: &Path) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for c in fs::read_dir(cache.join("entries"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in fs::read_dir(c.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(k) = name.strip_suffix(".json") {
                out.insert((c.file_name().to_string_lossy().to_string(), k.to_string()));
            }
        }
    }
    out
}

/// Files under `dir` (recursively; 0 if it does not exist).
fn files_under(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

fn crates(cache: &Path) -> BTreeSet<String> {
    entries(cache).into_iter().map(|(c, _)| c).collect()
}

impl World {
    /// `kache key generate NAME --out FILE`.
    fn key(&self, name: &str) -> Key {
        let file = self.path(&format!("{name}.key"));
        let mut c = kache(&self.path("unused-cache"));
        let o = run_checked(c.args(["key", "generate", name, "--out"]).arg(&file));
        ok(&o);
        let public = stdout(&o).trim().to_string();
        assert!(public.starts_with(&format!("{name}:")), "{}", show(&o));
        assert_eq!(stdout(&o).lines().count(), 1, "{}", show(&o));
        Key { file, public }
    }

    /// `kache ARGS` on `cache` with the remote under `prefix` (None: the
    /// test's own) and `env`, checked for secrets.
    fn kache_trusting(
        &self,
        cache: &Path,
        prefix: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut c = kache(cache);
        self.s3.configure(&mut c);
        if let Some(p) = prefix {
            c.env("KACHE_S3_PREFIX", p);
        }
        c.env("KACHE_PROGRESS", "0").current_dir(self.tmp.path());
        for (k, v) in env {
            c.env(k, v);
        }
        run_checked(c.args(args))
    }

    /// Every object file under `prefix` with its bytes.
    fn bucket(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let dir = self.s3.bucket_dir.as_ref().unwrap();
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.join(prefix)];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let name = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
                    if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                        out.insert(name, fs::read(&p).unwrap());
                    }
                }
            }
        }
        out
    }

    /// The object file of the one entry of `crate_name` under `prefix`.
    fn object_of(&self, prefix: &str, crate_name: &str) -> PathBuf {
        let names: Vec<String> = self
            .bucket(prefix)
            .into_keys()
            .filter(|n| {
                n.ends_with(".tar.zst")
                    && n.strip_prefix(&format!("{prefix}/"))
                        .is_some_and(|r| r.starts_with(&format!("{crate_name}/")))
            })
            .collect();
        assert_eq!(names.len(), 1, "{crate_name}: {names:?}");
        self.s3.object_file(&names[0]).unwrap()
    }
}

/// `cargo build` of `ws` through kache on `cache` (no remote), then
/// what the program prints.
fn build_and_run(ws: &Path, cache: &Path) -> String {
    let target = ws.with_file_name("target");
    let o = cargo_through_kache(ws, &target, cache, &["build"])
        .output()
        .unwrap();
    ok(&o);
    run(&target)
}

fn run(target: &Path) -> String {
    let o = Command::new(target.join("debug/app")).output().unwrap();
    ok(&o);
    stdout(&o).trim().to_string()
}

/// What plain cargo (no kache) makes the program print: the oracle.
fn plain(w: &World) -> String {
    let ws = w.fixture("trust", "plain");
    let target = ws.with_file_name("target");
    ok(&cargo_plain(&ws, &target, &["build"]).output().unwrap());
    run(&target)
}

/// The archive's bytes with `dep`'s library files replaced by `with`'s
/// (by extension) and the manifest's blake3 and size fixed to match:
/// what an attacker holding only the bucket's write credentials does.
/// The signature frame in front (if any) is kept as it was.
fn tamper(archive: &[u8], with: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    // A zstd skippable frame: magic 0x184D2A5? then a 32-bit length.
    let frame_len = if archive[1..4] == [0x2A, 0x4D, 0x18] && archive[0] & 0xF0 == 0x50 {
        8 + u32::from_le_bytes(archive[4..8].try_into().unwrap()) as usize
    } else {
        0
    };
    let tar_bytes = zstd::decode_all(&archive[frame_len..]).unwrap();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for m in ar.entries().unwrap() {
        let mut m = m.unwrap();
        let name = m.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        m.read_to_end(&mut data).unwrap();
        members.push((name, data));
    }
    let mut manifest: serde_json::Value = serde_json::from_slice(&members[0].1).unwrap();
    let mut swapped = 0;
    for (name, data) in &mut members[1..] {
        let ext = name.rsplit('.').next().unwrap().to_string();
        if let Some(new) = with.get(&ext) {
            data.clone_from(new);
            swapped += 1;
            let file = name.strip_prefix("files/").unwrap();
            for f in manifest["files"].as_array_mut().unwrap() {
                if f["name"] == file {
                    f["hash"] = blake3::hash(new).to_hex().to_string().into();
                    f["size"] = new.len().into();
                }
            }
        }
    }
    assert!(swapped > 0, "nothing swapped");
    members[0].1 = serde_json::to_vec(&manifest).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in &members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let mut out = archive[..frame_len].to_vec();
    out.extend(zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap());
    out
}

/// The library files (by extension) of the `dep` entry in `cache`.
fn dep_files(cache: &Path) -> BTreeMap<String, Vec<u8>> {
    let dir = cache.join("entries/dep");
    let e = fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&fs::read(e.path()).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for f in m["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let h = f["hash"].as_str().unwrap();
        let ext = name.rsplit('.').next().unwrap().to_string();
        if ext == "rlib" || ext == "rmeta" {
            out.insert(
                ext,
                fs::read(cache.join("blobs").join(&h[..2]).join(h)).unwrap(),
            );
        }
    }
    assert!(!out.is_empty(), "{m}");
    out
}

fn refused_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.contains(": refused: not signed by a trusted key"))
        .map(str::to_string)
        .collect()
}

/// A signed push, then a pull that trusts the key, imports everything
/// (provenance recorded); the attack of issue 14 (a file swapped for a
/// patched build's, the manifest's blake3 and size fixed, the original
/// signature kept, re-uploaded under the same name) is refused before
/// anything reaches the store, and the program then prints what plain
/// cargo's prints. Without trusted keys the same pull imports the
/// forgery and the program prints 43: the attack is real.
#[test]
fn signed_push_trusted_pull_and_the_tampered_entry_is_refused() {
    let w = World::local();
    let k = w.key("ci");
    let key_file = k.file.to_str().unwrap();
    let want = plain(&w);
    assert_eq!(want, "answer=42");

    // Runner A (the main-branch job) builds and pushes, signing.
    let ws_a = w.fixture("trust", "a");
    let cache_a = w.path("cache-a");
    assert_eq!(build_and_run(&ws_a, &cache_a), want);
    let o = w.kache_trusting(
        &cache_a,
        None,
        &["sync", "--push", "--json"],
        &[("KACHE_SIGNING_KEY_FILE", key_file)],
    );
    ok(&o);
    let made = entries(&cache_a);
    assert_eq!(
        json(&o)["pushed"]["entries"],
        made.len() as u64,
        "{}",
        show(&o)
    );

    // Runner B trusts the key: everything comes in, signed by `ci`.
    let cache_b = w.path("cache-b");
    let trusted = [("KACHE_TRUSTED_KEYS", k.public.as_str())];
    let o = w.kache_trusting(
        &cache_b,
        None,
        &["sync", "--pull", "--all", "--json"],
        &trusted,
    );
    ok(&o);
    let j = json(&o);
    assert_eq!(j["pulled"]["entries"], made.len() as u64, "{}", show(&o));
    assert_eq!(j["refused"]["entries"], 0, "{}", show(&o));
    assert_eq!(entries(&cache_b), made);
    let o = w.kache_trusting(&cache_b, None, &["list", "--json"], &trusted);
    ok(&o);
    for e in json(&o).as_array().unwrap() {
        assert_eq!(e["source"], "remote", "{e}");
        assert_eq!(e["signed_by"], k.public.as_str(), "{e}");
    }
    let o = w.kache_trusting(&cache_b, None, &["stats"], &trusted);
    ok(&o);
    assert!(
        stdout(&o).contains(&format!(
            "0 built here, {} pulled signed by `ci`",
            made.len()
        )),
        "{}",
        show(&o)
    );
    assert_eq!(build_and_run(&w.fixture("trust", "b"), &cache_b), want);

    // The attacker builds a patched dep (answers 43) and swaps its
    // library files into A's dep archive, under the same object name.
    let ws_x = w.fixture("trust", "x");
    let lib = ws_x.join("dep/src/lib.rs");
    fs::write(&lib, fs::read_to_string(&lib).unwrap().replace("42", "43")).unwrap();
    let cache_x = w.path("cache-x");
    assert_eq!(build_and_run(&ws_x, &cache_x), "answer=43");
    let obj = w.object_of(&w.s3.prefix, "dep");
    let forged = tamper(&fs::read(&obj).unwrap(), &dep_files(&cache_x));
    fs::write(&obj, &forged).unwrap();

    // Runner C trusts the key: dep is refused, one line, counted, exit 1.
    let cache_c = w.path("cache-c");
    let o = w.kache_trusting(
        &cache_c,
        None,
        &["sync", "--pull", "--all", "--json"],
        &trusted,
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let lines = refused_lines(&o);
    assert_eq!(lines.len(), 1, "{}", show(&o));
    assert!(lines[0].starts_with("error: pull dep/"), "{}", show(&o));
    assert!(
        lines[0].contains("does not match this entry"),
        "{}",
        show(&o)
    );
    let j = json(&o);
    assert_eq!(j["refused"]["entries"], 1, "{}", show(&o));
    assert_eq!(j["failed"]["entries"], 0, "{}", show(&o));
    assert_eq!(
        j["pulled"]["entries"],
        made.len() as u64 - 1,
        "{}",
        show(&o)
    );
    assert!(!crates(&cache_c).contains("dep"), "refused but imported");
    assert_eq!(fs::read_dir(cache_c.join("tmp")).unwrap().count(), 0);
    // Text summary, and --allow-partial exits 0.
    let cache_c2 = w.path("cache-c2");
    let o = w.kache_trusting(
        &cache_c2,
        None,
        &["sync", "--pull", "--all", "--allow-partial"],
        &trusted,
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("refused       1 entry"), "{}", show(&o));
    // The build compiles what was refused: the right answer.
    assert_eq!(build_and_run(&w.fixture("trust", "c"), &cache_c), want);

    // Without trusted keys the forgery is imported and runs: what the
    // checks above prevent. `kache config` says entries are unverified.
    let cache_d = w.path("cache-d");
    let o = w.kache_trusting(&cache_d, None, &["config"], &[]);
    assert!(
        stdout(&o).contains("(none: pulled entries are not verified)"),
        "{}",
        show(&o)
    );
    ok(&w.kache_trusting(&cache_d, None, &["sync", "--pull", "--all"], &[]));
    assert_eq!(
        build_and_run(&w.fixture("trust", "d"), &cache_d),
        "answer=43"
    );
    // Switching trusted keys on says how to drop what came in unverified
    // (sync and doctor), and `kache gc --verify` drops exactly the
    // pulled entries.
    let o = w.kache_trusting(&cache_d, None, &["sync", "--pull", "--all"], &trusted);
    assert!(stderr(&o).contains("kache gc --verify"), "{}", show(&o));
    let o = w.kache_trusting(&cache_d, None, &["doctor"], &trusted);
    let l = doctor_line(&o, "trust");
    assert!(
        l.starts_with("FAIL") && l.contains("fix: run `kache gc --verify`"),
        "{l}"
    );
    let before = entries(&cache_d);
    let o = w.kache_trusting(&cache_d, None, &["gc", "--verify", "--json"], &trusted);
    ok(&o);
    assert_eq!(
        json(&o)["untrusted_removed"],
        made.len() as u64,
        "{}",
        show(&o)
    );
    let after = entries(&cache_d);
    // What the build on D compiled itself (dep's forged rlib made app
    // miss) stays: it is this runner's own work.
    assert!(after.iter().all(|e| !made.contains(e)), "{after:?}");
    assert!(after.len() < before.len());
    let o = w.kache_trusting(&cache_d, None, &["sync", "--pull", "--all"], &trusted);
    assert!(!stderr(&o).contains("kache gc --verify"), "{}", show(&o));
    let o = w.kache_trusting(&cache_d, None, &["doctor"], &trusted);
    assert!(doctor_line(&o, "trust").starts_with("ok"), "{}", show(&o));
}

/// The line of one `kache doctor` check.
fn doctor_line(o: &Output, name: &str) -> String {
    stdout(o)
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line: {}", show(o)))
        .to_string()
}

/// An unsigned push, a push signed by a key the reader does not trust,
/// and a signed archive copied under another entry's object name are
/// each refused; the build then prints what plain cargo's prints. Two
/// trusted keys at once accept the entries of both.
#[test]
fn unsigned_untrusted_and_moved_entries_are_refused_and_two_keys_are_trusted() {
    let w = World::local();
    let (ci, old, stranger) = (w.key("ci"), w.key("ci-2025"), w.key("stranger"));
    let want = plain(&w);
    let cache_a = w.path("cache-a");
    assert_eq!(build_and_run(&w.fixture("trust", "a"), &cache_a), want);
    let made = entries(&cache_a);
    let prefix = |s: &str| format!("{}/{s}", w.s3.prefix);
    let push = |p: &str, key: Option<&Key>| {
        let env: Vec<(&str, &str)> = key
            .map(|k| ("KACHE_SIGNING_KEY_FILE", k.file.to_str().unwrap()))
            .into_iter()
            .collect();
        ok(&w.kache_trusting(&cache_a, Some(&prefix(p)), &["sync", "--push"], &env));
    };
    push("unsigned", None);
    push("stranger", Some(&stranger));
    push("moved", Some(&ci));
    push("old", Some(&old));
    // Moved: app's signed archive copied under dep's object name.
    let app = fs::read(w.object_of(&prefix("moved"), "app")).unwrap();
    fs::write(w.object_of(&prefix("moved"), "dep"), app).unwrap();

    let trusted = format!("{},{}", ci.public, old.public);
    let env = [("KACHE_TRUSTED_KEYS", trusted.as_str())];
    for (p, refused, why) in [
        ("unsigned", made.len(), "(the object is unsigned)"),
        (
            "stranger",
            made.len(),
            "(signed by `stranger`, which is not a trusted key)",
        ),
        (
            "moved",
            1,
            "(the signature by `ci` does not match this entry",
        ),
    ] {
        let cache = w.path(&format!("cache-{p}"));
        let o = w.kache_trusting(
            &cache,
            Some(&prefix(p)),
            &["sync", "--pull", "--all", "--json"],
            &env,
        );
        assert_eq!(o.status.code(), Some(1), "{p}: {}", show(&o));
        assert_eq!(
            json(&o)["refused"]["entries"],
            refused as u64,
            "{p}: {}",
            show(&o)
        );
        let lines = refused_lines(&o);
        assert_eq!(lines.len(), refused, "{p}: {}", show(&o));
        assert!(lines.iter().all(|l| l.contains(why)), "{p}: {}", show(&o));
        assert_eq!(entries(&cache).len(), made.len() - refused, "{p}");
        if p == "moved" {
            assert!(!crates(&cache).contains("dep"), "moved archive imported");
        }
        assert_eq!(build_and_run(&w.fixture("trust", p), &cache), want, "{p}");
    }
    // Both trusted keys' entries come in (rotation: old and new at once).
    for p in ["old", "unsigned"] {
        let cache = w.path(&format!("cache-both-{p}"));
        let o = w.kache_trusting(&cache, Some(&prefix(p)), &["sync", "--pull", "--all"], &env);
        if p == "old" {
            ok(&o);
            assert_eq!(entries(&cache), made);
        } else {
            assert!(entries(&cache).is_empty());
        }
    }
    // Only the new key trusted: the old key's entries are refused.
    let cache = w.path("cache-new-only");
    let o = w.kache_trusting(
        &cache,
        Some(&prefix("old")),
        &["sync", "--pull", "--all"],
        &[("KACHE_TRUSTED_KEYS", ci.public.as_str())],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(refused_lines(&o).len(), made.len(), "{}", show(&o));
    assert!(
        stdout(&o).contains(&format!("refused  {:>6} entries", made.len())),
        "{}",
        show(&o)
    );
}

/// A read-only runner: `kache sync --push` uploads nothing and says so
/// in one line with exit 0; `kache sync` only pulls (and records no
/// use); `kache gc --remote` refuses; the daemon never uploads. No
/// object in the bucket changes.
#[test]
fn a_read_only_runner_changes_no_object_in_the_bucket() {
    let w = World::local();
    let writer = w.path("cache-writer");
    let nowhere = w.path("nowhere");
    fs::create_dir_all(&nowhere).unwrap();
    for i in 0..3 {
        put_entry(
            &writer,
            "foo",
            &format!("w{i}"),
            &[("libfoo.rlib", format!("w{i}").as_bytes())],
        );
    }
    ok(&w.kache_trusting(&writer, None, &["sync", "--push"], &[]));
    let before = w.bucket(&w.s3.prefix);
    assert_eq!(before.len(), 3);

    let ro = w.path("cache-ro");
    for i in 0..2 {
        put_entry(
            &ro,
            "bar",
            &format!("r{i}"),
            &[("libbar.rlib", format!("r{i}").as_bytes())],
        );
    }
    let env = [("KACHE_REMOTE_READ_ONLY", "1")];
    let o = w.kache_trusting(&ro, None, &["sync", "--push"], &env);
    ok(&o);
    assert_eq!(stdout(&o), "", "{}", show(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", show(&o));
    assert!(
        stderr(&o).contains("read-only runner (KACHE_REMOTE_READ_ONLY=1): nothing pushed"),
        "{}",
        show(&o)
    );
    let o = w.kache_trusting(&ro, None, &["sync", "--push", "--json"], &env);
    ok(&o);
    assert_eq!(json(&o)["read_only"], true);
    assert_eq!(json(&o)["pushed"]["entries"], 0);
    let o = w.kache_trusting(&ro, None, &["sync", "--all", "--json"], &env);
    ok(&o);
    assert_eq!(json(&o)["pulled"]["entries"], 3, "{}", show(&o));
    assert_eq!(json(&o)["pushed"]["entries"], 0, "{}", show(&o));
    assert_eq!(entries(&ro).len(), 5);
    let o = w.kache_trusting(&ro, None, &["doctor"], &env);
    assert!(
        doctor_line(&o, "read-write").starts_with("skip"),
        "{}",
        show(&o)
    );
    assert!(
        doctor_line(&o, "trust").contains("read-only: never uploads"),
        "{}",
        show(&o)
    );
    let o = w.kache_trusting(&ro, None, &["gc", "--remote", "--max-age", "1s"], &env);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stderr(&o).starts_with(
            "error: kache gc --remote deletes from the bucket, and this runner is read-only"
        ),
        "{}",
        show(&o)
    );
    // The file setting too.
    let cfg = w.path("ro.toml");
    fs::write(&cfg, "[cache.remote]\nread_only = true\n").unwrap();
    let o = w.kache_trusting(
        &ro,
        None,
        &["sync", "--push"],
        &[("KACHE_CONFIG", cfg.to_str().unwrap())],
    );
    ok(&o);
    assert!(stderr(&o).contains("nothing pushed"), "{}", show(&o));
    let o = w.kache_trusting(
        &ro,
        None,
        &["config"],
        &[("KACHE_CONFIG", cfg.to_str().unwrap())],
    );
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("cache.remote.read_only") && l.contains("true")),
        "{}",
        show(&o)
    );

    // The daemon of a read-only runner: a build's misses are never
    // recorded nor uploaded.
    let ws = w.fixture("trust", "ro");
    let dcache = w.path("cache-ro-daemon");
    let o = w.kache_trusting(&dcache, None, &["daemon", "start"], &env);
    ok(&o);
    let mut c = cargo_through_kache(&ws, &ws.with_file_name("target"), &dcache, &["build"]);
    w.s3.configure(&mut c);
    c.env("KACHE_REMOTE_READ_ONLY", "1");
    ok(&c.output().unwrap());
    assert!(!entries(&dcache).is_empty());
    let o = w.kache_trusting(&dcache, None, &["daemon", "stop", "--timeout", "30s"], &env);
    ok(&o);
    assert!(stdout(&o).contains("0 uploaded, 0 pending"), "{}", show(&o));
    // Nothing recorded for a later daemon to upload either.
    assert_eq!(files_under(&dcache.join("pending")), 0);
    assert_eq!(w.bucket(&w.s3.prefix), before, "the bucket changed");
}

/// The daemon signs what it uploads, and its remote hits import only
/// entries a key the asking build trusts signed, whoever started the
/// daemon (issue 23: a daemon started without trusted keys imported for
/// a build that set them): a tampered entry is refused (counted,
/// logged), the build compiles it and the program prints what plain
/// cargo's prints.
#[test]
fn daemon_signs_uploads_and_refuses_untrusted_remote_hits() {
    let w = World::local();
    let k = w.key("ci");
    let key_file = k.file.to_str().unwrap();
    let want = plain(&w);
    let daemon = |cache: &Path, args: &[&str], env: &[(&str, &str)]| {
        w.kache_trusting(cache, None, args, env)
    };

    // Runner A: the daemon uploads, signed.
    let ws_a = w.fixture("trust", "a");
    let cache_a = w.path("cache-a");
    let sign = [("KACHE_SIGNING_KEY_FILE", key_file)];
    ok(&daemon(&cache_a, &["daemon", "start"], &sign));
    let mut c = cargo_through_kache(&ws_a, &ws_a.with_file_name("target"), &cache_a, &["build"]);
    w.s3.configure(&mut c);
    ok(&c.output().unwrap());
    let o = daemon(&cache_a, &["daemon", "stop", "--timeout", "60s"], &sign);
    ok(&o);
    let made = entries(&cache_a);
    assert!(
        stdout(&o).contains(&format!("{} uploaded, 0 pending", made.len())),
        "{}",
        show(&o)
    );
    let log_a = fs::read_to_string(cache_a.join("daemon/log")).unwrap();
    assert!(log_a.contains("uploads signed by `ci`"), "{log_a}");
    // What it uploaded is signed by `ci`: a trusting pull takes it all.
    let trusted = [("KACHE_TRUSTED_KEYS", k.public.as_str())];
    let check = w.path("cache-check");
    ok(&w.kache_trusting(&check, None, &["sync", "--pull", "--all"], &trusted));
    assert_eq!(entries(&check), made);

    // The attacker swaps dep's library for a patched build's.
    let ws_x = w.fixture("trust", "x");
    let lib = ws_x.join("dep/src/lib.rs");
    fs::write(&lib, fs::read_to_string(&lib).unwrap().replace("42", "43")).unwrap();
    let cache_x = w.path("cache-x");
    assert_eq!(build_and_run(&ws_x, &cache_x), "answer=43");
    let obj = w.object_of(&w.s3.prefix, "dep");
    fs::write(&obj, tamper(&fs::read(&obj).unwrap(), &dep_files(&cache_x))).unwrap();

    // Runner B: its daemon was started trusting no key, but the build
    // trusts `ci`: the daemon verifies for the build that asks. The
    // build gets app's entry by a remote hit, dep's is refused and
    // compiled.
    let ws_b = w.fixture("trust", "b");
    let cache_b = w.path("cache-b");
    ok(&daemon(&cache_b, &["daemon", "start"], &[]));
    let mut c = cargo_through_kache(&ws_b, &ws_b.with_file_name("target"), &cache_b, &["build"]);
    w.s3.configure(&mut c);
    c.env("KACHE_DAEMON_WAIT", "10s")
        .env("KACHE_TRUSTED_KEYS", &k.public);
    let secrets = secrets_of(&c);
    let o = c.output().unwrap();
    ok(&o);
    assert_no_secrets(&o, &secrets);
    assert_eq!(run(&ws_b.with_file_name("target")), want);
    let st = json(&daemon(&cache_b, &["daemon", "status", "--json"], &trusted));
    assert!(st["refused"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(
        st["trust"], "uploads unsigned; remote hits verified against the keys each build trusts",
        "{st}"
    );
    let log_b = fs::read_to_string(cache_b.join("daemon/log")).unwrap();
    assert!(
        log_b.contains("refused: not signed by a trusted key"),
        "{log_b}"
    );
    let events = fs::read_to_string(cache_b.join("events.jsonl")).unwrap();
    let dep_result: Vec<String> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["crate"] == "dep")
        .map(|e| e["result"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dep_result, ["miss"], "{events}");
    let pulled_dep = fs::read_dir(cache_b.join("entries/dep"))
        .unwrap()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&fs::read(e.unwrap().path()).unwrap())
                .unwrap()
        })
        .filter(|m| m.get("pulled").is_some())
        .count();
    assert_eq!(pulled_dep, 0, "the refused dep entry reached the store");
    ok(&daemon(
        &cache_b,
        &["daemon", "stop", "--timeout", "60s"],
        &trusted,
    ));
    for log in [&log_a, &log_b] {
        for s in crate::common::signing_key_secrets(&fs::read_to_string(&k.file).unwrap()) {
            assert!(!log.contains(&s), "the signing key was logged");
        }
    }
}

/// The secret key is never printed: `kache key generate` writes it with
/// mode 0600 and never over a file; `kache config` masks it (from the
/// environment) and shows the public key; a broken key is an error that
/// does not quote it; a push with it prints none of it.
#[test]
fn the_signing_key_is_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::local();
    let k = w.key("ci");
    let text = fs::read_to_string(&k.file).unwrap();
    assert_eq!(
        fs::metadata(&k.file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never over an existing file.
    let o = w.kache_trusting(
        &w.path("c"),
        None,
        &["key", "generate", "ci", "--out", k.file.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr(&o).contains("already exists"), "{}", show(&o));
    assert_eq!(fs::read_to_string(&k.file).unwrap(), text);

    let cache = w.path("cache");
    put_entry(&cache, "foo", "s", &[("libfoo.rlib", b"signed bytes")]);
    for env in [
        vec![("KACHE_SIGNING_KEY", text.as_str())],
        vec![("KACHE_SIGNING_KEY_FILE", k.file.to_str().unwrap())],
    ] {
        for args in [&["config"][..], &["config", "--json"]] {
            let o = w.kache_trusting(&cache, None, args, &env);
            ok(&o);
            assert!(
                stdout(&o).contains(&format!("signs as {}", k.public)),
                "{}",
                show(&o)
            );
        }
        let o = w.kache_trusting(&cache, None, &["config"], &env);
        if env[0].0 == "KACHE_SIGNING_KEY" {
            assert!(stdout(&o).contains("**** (signs as"), "{}", show(&o));
        }
    }
    let o = w.kache_trusting(
        &cache,
        None,
        &["sync", "--push"],
        &[("KACHE_SIGNING_KEY", text.as_str())],
    );
    ok(&o);
    // A damaged key: one error line that names the variable, not the key.
    let broken = text.trim().replace('A', "B").replacen(':', ":x", 1);
    let o = w.kache_trusting(
        &cache,
        None,
        &["sync", "--push"],
        &[("KACHE_SIGNING_KEY", broken.as_str())],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stderr(&o).contains("KACHE_SIGNING_KEY does not hold a kache signing key"),
        "{}",
        show(&o)
    );
    let o = w.kache_trusting(
        &cache,
        None,
        &["config"],
        &[("KACHE_SIGNING_KEY", broken.as_str())],
    );
    let o2 = w.kache_trusting(
        &cache,
        None,
        &["doctor"],
        &[("KACHE_SIGNING_KEY", broken.as_str())],
    );
    assert!(
        doctor_line(&o2, "trust").starts_with("FAIL"),
        "{}",
        show(&o2)
    );
    assert!(
        stdout(&o).contains("(error: KACHE_SIGNING_KEY does not hold"),
        "{}",
        show(&o)
    );
    // Both at once is an error, not a guess.
    let o = w.kache_trusting(
        &cache,
        None,
        &["config"],
        &[
            ("KACHE_SIGNING_KEY", text.as_str()),
            ("KACHE_SIGNING_KEY_FILE", k.file.to_str().unwrap()),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    // A bad trusted key names the setting and the form.
    let o = w.kache_trusting(
        &cache,
        None,
        &["config"],
        &[("KACHE_TRUSTED_KEYS", "ci:AAAA")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stderr(&o).contains("invalid trusted key in KACHE_TRUSTED_KEYS"),
        "{}",
        show(&o)
    );
}

/// Figure: a signed push against an unsigned one and a verifying pull
/// against a plain one, alternated over 5 rounds on fresh prefixes,
/// medians compared. `KACHE_BENCH_ENTRIES` (default 300 entries of
/// 256 KiB over 20 crates), `KACHE_BENCH_BIN` (another kache binary,
/// e.g. a release build). Run with
/// `cargo test --test tests trust::bench_ -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_signed_push_and_verifying_pull() {
    let w = World {
        s3: S3::start(),
        tmp: tempfile::tempdir().unwrap(),
    };
    let k = w.key("bench");
    let n: usize = std::env::var("KACHE_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let store = w.path("store");
    for i in 0..n {
        let mut d = vec![0u8; 256 << 10];
        blake3::Hasher::new()
            .update(format!("e{i}").as_bytes())
            .finalize_xof()
            .fill(&mut d);
        put_entry(
            &store,
            &format!("c{}", i % 20),
            &format!("s{i}"),
            &[("lib.rlib", &d)],
        );
    }
    let exe =
        std::env::var("KACHE_BENCH_BIN").map_or_else(|_| crate::common::kache_bin(), PathBuf::from);
    let time = |cache: &Path, prefix: &str, args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(&exe);
        crate::common::clean_env(&mut c);
        w.s3.configure(&mut c);
        c.env("KACHE_CACHE_DIR", cache)
            .env("KACHE_S3_PREFIX", format!("{}/{prefix}", w.s3.prefix))
            .env("KACHE_PROGRESS", "0")
            .current_dir(w.tmp.path())
            .arg("sync")
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let t = std::time::Instant::now();
        ok(&run_checked(&mut c));
        t.elapsed().as_secs_f64()
    };
    let key = k.file.to_str().unwrap();
    let mut m: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in 0..5 {
        let (u, s) = (format!("u{r}"), format!("s{r}"));
        m.entry("push unsigned")
            .or_default()
            .push(time(&store, &u, &["--push"], &[]));
        m.entry("push signed").or_default().push(time(
            &store,
            &s,
            &["--push"],
            &[("KACHE_SIGNING_KEY_FILE", key)],
        ));
        let (pc, vc) = (
            w.path(&format!("plain{r}")),
            w.path(&format!("verified{r}")),
        );
        m.entry("pull plain")
            .or_default()
            .push(time(&pc, &s, &["--pull", "--all"], &[]));
        m.entry("pull verifying").or_default().push(time(
            &vc,
            &s,
            &["--pull", "--all"],
            &[("KACHE_TRUSTED_KEYS", &k.public)],
        ));
        assert_eq!(entries(&vc).len(), n);
    }
    let med = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!("{n} entries of 256 KiB; medians of 5 rounds:");
    for (label, v) in &m {
        eprintln!("  {label:<15} {:.3} s  {v:.3?}", med(v));
    }
    eprintln!(
        "signed push / unsigned push = {:.3}; verifying pull / plain pull = {:.3}",
        med(&m["push signed"]) / med(&m["push unsigned"]),
        med(&m["pull verifying"]) / med(&m["pull plain"])
    );
}

/// Issue 23: a signer vouches only for what its machine compiled. Runner
/// B pulls unsigned entries (no trusted keys), an attacker on B removes
/// each manifest's `pulled` field (as every earlier kache wrote pulled
/// entries), and B pushes with the signing key: nothing is signed or
/// uploaded, and a verifying reader imports nothing. Entries B pulled
/// signed by another key are not signed again either.
#[test]
fn a_signer_never_vouches_for_what_it_pulled() {
    let w = World::local();
    let (ci, b_key) = (w.key("ci"), w.key("runner-b"));
    let want = plain(&w);
    let cache_a = w.path("cache-a");
    assert_eq!(build_and_run(&w.fixture("trust", "a"), &cache_a), want);
    let made = entries(&cache_a);
    let prefix = |s: &str| format!("{}/{s}", w.s3.prefix);
    let sign = |k: &Key| {
        (
            "KACHE_SIGNING_KEY_FILE",
            k.file.to_str().unwrap().to_string(),
        )
    };
    let (kv, kf) = sign(&ci);
    ok(&w.kache_trusting(
        &cache_a,
        Some(&prefix("unsigned")),
        &["sync", "--push"],
        &[],
    ));
    ok(&w.kache_trusting(
        &cache_a,
        Some(&prefix("signed")),
        &["sync", "--push"],
        &[(kv, &kf)],
    ));

    // B pulls both, unverified and verified.
    let cache_b = w.path("cache-b");
    ok(&w.kache_trusting(
        &cache_b,
        Some(&prefix("unsigned")),
        &["sync", "--pull", "--all"],
        &[],
    ));
    assert_eq!(entries(&cache_b), made);
    for d in fs::read_dir(cache_b.join("entries")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            assert!(m.as_object_mut().unwrap().remove("pulled").is_some());
            fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
        }
    }
    let (bv, bf) = sign(&b_key);
    // A push signing with B's key: uploads nothing, skips everything.
    let push_skips_all = |cache: &Path, to: &str| {
        let o = w.kache_trusting(
            cache,
            Some(&prefix(to)),
            &["sync", "--push", "--json"],
            &[(bv, &bf)],
        );
        assert_eq!(json(&o)["pushed"]["entries"], 0, "{}", show(&o));
        assert_eq!(
            json(&o)["skipped"]["entries"],
            made.len() as u64,
            "{}",
            show(&o)
        );
    };
    push_skips_all(&cache_b, "laundered");
    let trusting_b = [("KACHE_TRUSTED_KEYS", b_key.public.as_str())];
    let cache_c = w.path("cache-c");
    let o = w.kache_trusting(
        &cache_c,
        Some(&prefix("laundered")),
        &["sync", "--pull", "--all", "--json"],
        &trusting_b,
    );
    assert_eq!(json(&o)["pulled"]["entries"], 0, "{}", show(&o));
    assert!(entries(&cache_c).is_empty());

    // Pulled signed by `ci`: B's key does not sign them again.
    let cache_d = w.path("cache-d");
    let trusting_ci = [("KACHE_TRUSTED_KEYS", ci.public.as_str())];
    ok(&w.kache_trusting(
        &cache_d,
        Some(&prefix("signed")),
        &["sync", "--pull", "--all"],
        &trusting_ci,
    ));
    assert_eq!(entries(&cache_d), made);
    push_skips_all(&cache_d, "resigned");
}

/// A zstd stream that decompresses to a tar header of `kind` claiming
/// 1 GiB, then `mib` MiB of `a`: concatenated frames, so only 1 MiB is
/// ever compressed.
fn claiming_gib(kind: u8, mib: usize) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(1 << 30);
    h.set_cksum();
    let mut out = zstd::encode_all(h.as_bytes().as_slice(), 3).unwrap();
    let chunk = zstd::encode_all(vec![b'a'; 1 << 20].as_slice(), 3).unwrap();
    for _ in 0..mib {
        out.extend_from_slice(&chunk);
    }
    out
}

/// Runs `c` with stdout and stderr to files; its output and its peak
/// resident memory in MiB: the high-water mark of its own address space
/// (`VmHWM`), read every 2 ms until it exits. (`wait4`'s `ru_maxrss`
/// would count this test process's memory too: the child shares or
/// copies it until it runs `exec`.)
fn peak_mib(mut c: Command, dir: &Path) -> (Output, u64) {
    let (out, err) = (dir.join("peak.out"), dir.join("peak.err"));
    c.stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    let mut child = c.spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let status = loop {
        if let Ok(s) = fs::read_to_string(&status_file)
            && let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let o = Output {
        status,
        stdout: fs::read(&out).unwrap(),
        stderr: fs::read(&err).unwrap(),
    };
    (o, peak_kb / 1024)
}

/// Issue 23, item 1: no byte of an unverified object is parsed beyond a
/// small bound. Three hostile objects in a bucket: two whose archives
/// open with a GNU long-name or PAX header claiming 1 GiB (followed by
/// 256 MiB of `a`, a few KiB compressed; `tar` read such a body into
/// memory at the size it claimed), and an unsigned 8 MiB entry. With
/// trusted keys every one is refused on its head: the proxy sees only
/// ranged GETs of them and the pull's peak memory stays far below what
/// the headers claim. Without trusted keys the hostile archives are
/// refused as corrupt within the same bound and nothing is imported.
#[test]
fn hostile_objects_are_refused_on_their_head_in_bounded_memory() {
    let w = World::local();
    let ci = w.key("ci");
    let src = w.path("src");
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    put_entry(&src, "longname", "1", &[("liba.rlib", b"a")]);
    put_entry(&src, "pax", "1", &[("libb.rlib", b"b")]);
    put_entry(&src, "large", "1", &[("libc.rlib", &big)]);
    ok(&w.kache_trusting(&src, None, &["sync", "--push"], &[]));
    let prefix = w.s3.prefix.clone();
    fs::write(w.object_of(&prefix, "longname"), claiming_gib(b'L', 256)).unwrap();
    fs::write(w.object_of(&prefix, "pax"), claiming_gib(b'x', 256)).unwrap();

    let proxy = Proxy::start(&w.s3.endpoint);
    let pull = |cache: &Path, trusted: Option<&str>| {
        let mut c = kache(cache);
        w.s3.configure_at(&mut c, &proxy.endpoint);
        c.env("KACHE_PROGRESS", "0")
            .current_dir(w.tmp.path())
            .args(["sync", "--pull", "--all"]);
        if let Some(k) = trusted {
            c.env("KACHE_TRUSTED_KEYS", k);
        }
        peak_mib(c, w.tmp.path())
    };

    let cache = w.path("trusting");
    let (o, peak) = pull(&cache, Some(&ci.public));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(refused_lines(&o).len(), 3, "{}", show(&o));
    assert!(entries(&cache).is_empty());
    eprintln!("peak {peak} MiB");
    assert!(peak < 100, "peak {peak} MiB: {}", show(&o));
    let gets: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(".tar.zst"))
        .collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
    // The hostile archives are whole in their heads (64 KiB); the large
    // entry is never read past its head.
    assert!(
        gets.iter().all(|s| s
            .range
            .as_deref()
            .is_some_and(|r| r == "bytes=0-65535" || !s.path.contains("/large/"))),
        "{gets:?}"
    );

    let cache = w.path("untrusting");
    let (o, peak) = pull(&cache, None);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    for what in ["longname", "pax"] {
        let line = stderr(&o)
            .lines()
            .find(|l| l.contains(&format!("/{what}/")))
            .unwrap_or_default()
            .to_string();
        assert!(line.contains("corrupt object"), "{what}: {}", show(&o));
    }
    assert!(
        stderr(&o).contains("claims 1073741824 bytes"),
        "{}",
        show(&o)
    );
    assert!(stderr(&o).contains("is not a regular file"), "{}", show(&o));
    assert_eq!(crates(&cache), BTreeSet::from(["large".to_string()]));
    eprintln!("peak {peak} MiB");
    assert!(peak < 100, "peak {peak} MiB: {}", show(&o));
}

/// The results (`local_hit`, `miss`, ...) of a build of `ws` through
/// kache on `cache`, trusting `trusted`, and what the program prints.
fn build_trusting(ws: &Path, cache: &Path, trusted: &str) -> (Vec<String>, String) {
    let before = fs::read_to_string(cache.join("events.jsonl")).map_or(0, |s| s.lines().count());
    let target = ws.with_file_name("target");
    let mut c = cargo_through_kache(ws, &target, cache, &["build"]);
    c.env("KACHE_TRUSTED_KEYS", trusted);
    ok(&c.output().unwrap());
    let results = fs::read_to_string(cache.join("events.jsonl"))
        .unwrap()
        .lines()
        .skip(before)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["result"].to_string())
        .collect();
    (results, run(&target))
}

/// Strips `pulled` from every manifest in `cache`, as every kache
/// before provenance wrote pulled entries (and as a planted manifest
/// would).
fn forget_provenance(cache: &Path) {
    for d in fs::read_dir(cache.join("entries")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            m.as_object_mut().unwrap().remove("pulled");
            fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
        }
    }
}

/// Issue 23, item 2: trust is enforced where the artifact is used. A
/// build that trusts keys restores only what this machine compiled or
/// what a key it trusts now signed: entries signed by a key dropped
/// since, and pulled entries whose provenance was edited away, are
/// compiled again (the program prints what plain cargo's prints) and
/// replaced by what was compiled, which then serves hits.
#[test]
fn a_build_restores_only_its_own_or_what_a_key_it_trusts_now_signed() {
    let w = World::local();
    let (ci, old) = (w.key("ci"), w.key("ci-2025"));
    let want = plain(&w);
    let cache_a = w.path("cache-a");
    assert_eq!(build_and_run(&w.fixture("trust", "a"), &cache_a), want);
    let made = entries(&cache_a).len();
    let prefix = |s: &str| format!("{}/{s}", w.s3.prefix);
    let old_file = old.file.to_str().unwrap();
    ok(&w.kache_trusting(
        &cache_a,
        Some(&prefix("old")),
        &["sync", "--push"],
        &[("KACHE_SIGNING_KEY_FILE", old_file)],
    ));
    ok(&w.kache_trusting(
        &cache_a,
        Some(&prefix("unsigned")),
        &["sync", "--push"],
        &[],
    ));
    let hits = |r: &[String]| r.iter().filter(|r| *r == "\"local_hit\"").count();

    // Pulled signed by the old key, while it is trusted: hits.
    let cache_b = w.path("cache-b");
    let trusting_old = [("KACHE_TRUSTED_KEYS", old.public.as_str())];
    ok(&w.kache_trusting(
        &cache_b,
        Some(&prefix("old")),
        &["sync", "--pull", "--all"],
        &trusting_old,
    ));
    let (r, out) = build_trusting(&w.fixture("trust", "b1"), &cache_b, &old.public);
    assert_eq!((hits(&r), out.as_str()), (made, want.as_str()), "{r:?}");
    // The old key dropped: nothing it signed is restored.
    let (r, out) = build_trusting(&w.fixture("trust", "b2"), &cache_b, &ci.public);
    assert_eq!((hits(&r), out.as_str()), (0, want.as_str()), "{r:?}");
    // What was compiled instead serves the next build.
    let (r, out) = build_trusting(&w.fixture("trust", "b3"), &cache_b, &ci.public);
    assert_eq!((hits(&r), out.as_str()), (made, want.as_str()), "{r:?}");

    // Pulled unverified, the provenance edited away: not restored.
    let cache_c = w.path("cache-c");
    ok(&w.kache_trusting(
        &cache_c,
        Some(&prefix("unsigned")),
        &["sync", "--pull", "--all"],
        &[],
    ));
    forget_provenance(&cache_c);
    let (r, out) = build_trusting(&w.fixture("trust", "c1"), &cache_c, &ci.public);
    assert_eq!((hits(&r), out.as_str()), (0, want.as_str()), "{r:?}");
    // Without trusted keys the same store serves them.
    let cache_d = w.path("cache-d");
    ok(&w.kache_trusting(
        &cache_d,
        Some(&prefix("unsigned")),
        &["sync", "--pull", "--all"],
        &[],
    ));
    assert_eq!(build_and_run(&w.fixture("trust", "d1"), &cache_d), want);
    let ev = fs::read_to_string(cache_d.join("events.jsonl")).unwrap();
    assert_eq!(ev.matches("\"local_hit\"").count(), made, "{ev}");
}

/// Every member of every entry object under `prefix` (the signature
/// frame skipped, the zstd stream decompressed), by object and member
/// name.
fn members(w: &World, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (name, bytes) in w.bucket(prefix) {
        if !name.ends_with(".tar.zst") {
            continue;
        }
        let frame_len = if bytes[1..4] == [0x2A, 0x4D, 0x18] && bytes[0] & 0xF0 == 0x50 {
            8 + u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize
        } else {
            0
        };
        let tar_bytes = zstd::decode_all(&bytes[frame_len..]).unwrap();
        for m in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
            let mut m = m.unwrap();
            let member = m.path().unwrap().to_string_lossy().to_string();
            let mut data = Vec::new();
            m.read_to_end(&mut data).unwrap();
            out.insert(format!("{name}:{member}"), data);
        }
    }
    out
}

/// Issue 23: nothing secret leaves the machine. A build with a secret in
/// a flag (`RUSTFLAGS=--cfg token="..."`) is pushed: no object in the
/// bucket holds it, raw or decompressed; each manifest names its inputs
/// and records the salt of their keyed values. A second runner pulls,
/// builds with the same flag (hits: keyed values change no key), then
/// with another value, and `kache why-miss` names the flag that differs
/// without showing a digest as the entry's value.
#[test]
fn flag_values_leave_the_machine_only_as_keyed_digests() {
    let w = World::local();
    let secret = "hunter2xyz";
    let build = |ws: &Path, cache: &Path, token: &str| {
        let target = ws.with_file_name("target");
        let o = cargo_through_kache(ws, &target, cache, &["build"])
            .env("RUSTFLAGS", format!("--cfg token=\"{token}\""))
            .output()
            .unwrap();
        ok(&o);
        assert_eq!(run(&target), "answer=42");
    };
    let ws_a = w.fixture("trust", "a");
    let cache_a = w.path("cache-a");
    build(&ws_a, &cache_a, secret);
    let made = entries(&cache_a);
    let o = w.kache_trusting(&cache_a, None, &["sync", "--push", "--json"], &[]);
    assert_eq!(
        json(&o)["pushed"]["entries"],
        made.len() as u64,
        "{}",
        show(&o)
    );

    // The local manifest keeps the value; no uploaded byte holds it.
    let local = fs::read_dir(cache_a.join("entries/dep")).unwrap();
    let local = fs::read(local.flatten().next().unwrap().path()).unwrap();
    assert!(String::from_utf8_lossy(&local).contains(secret));
    for (name, bytes) in w.bucket(&w.s3.prefix) {
        assert!(!String::from_utf8_lossy(&bytes).contains(secret), "{name}");
    }
    let members = members(&w, &w.s3.prefix);
    let mut manifests = 0;
    for (name, bytes) in &members {
        assert!(
            !String::from_utf8_lossy(bytes).contains(secret),
            "{name} holds the secret"
        );
        if name.ends_with(":manifest.json") {
            manifests += 1;
            let m: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            assert_eq!(m["salt"].as_str().map(str::len), Some(64), "{m}");
            assert!(m["explain"].get("arg --cfg").is_some(), "{m}");
        }
    }
    assert_eq!(manifests, made.len(), "{:?}", members.keys());

    // Runner B pulls; the same flag hits, another value misses.
    let ws_b = w.fixture("trust", "b");
    let cache_b = w.path("cache-b");
    ok(&w.kache_trusting(&cache_b, None, &["sync", "--pull", "--all"], &[]));
    assert_eq!(entries(&cache_b), made);
    build(&ws_b, &cache_b, secret);
    let events = fs::read_to_string(cache_b.join("events.jsonl")).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"crate\":\"dep\"") && l.contains("\"local_hit\"")),
        "{events}"
    );
    build(&ws_b, &cache_b, "other-value");
    let o = w.kache_trusting(&cache_b, None, &["why-miss", "dep", "--json"], &[]);
    ok(&o);
    // (cargo also gives the new flags' outputs another file name.)
    let j = json(&o);
    let d = j["nearest"]["differences"].as_array().unwrap();
    let cfg = d.iter().find(|x| x["input"] == "arg --cfg");
    let cfg = cfg.unwrap_or_else(|| panic!("{}", show(&o)));
    assert_eq!(cfg["miss"], "token=\"other-value\"");
    assert_eq!(cfg["entry"], serde_json::Value::Null);
    assert_eq!(cfg["entry_keyed"], true);
    let o = w.kache_trusting(&cache_b, None, &["why-miss", "dep"], &[]);
    ok(&o);
    let text = stdout(&o);
    assert!(text.contains("  arg --cfg\n"), "{text}");
    assert!(
        text.contains(
            "that entry: another value (an uploaded manifest holds only a keyed digest of it)"
        ),
        "{text}"
    );
}

/// Issue 23: the daemon remembers what it refused for a build's keys.
/// Two fetches of `dep` from builds trusting `ci` (one naming its
/// version, one not: two separate fetches) find one unsigned entry: the
/// first reads its head and refuses it, the second does not download it
/// again (before, a refused object was fetched again on every fetch).
#[test]
fn the_daemon_remembers_what_it_refused() {
    let w = World::local();
    let ci = w.key("ci");
    let cache_a = w.path("cache-a");
    assert_eq!(build_and_run(&w.fixture("trust", "a"), &cache_a), plain(&w));
    ok(&w.kache_trusting(&cache_a, None, &["sync", "--push"], &[]));

    let proxy = Proxy::start(&w.s3.endpoint);
    let cache = w.path("cache-b");
    let mut c = kache(&cache);
    w.s3.configure_at(&mut c, &proxy.endpoint);
    ok(&run_checked(c.args(["daemon", "start"])));
    let id = format!(
        "{}|{}|{}|{}",
        proxy.endpoint, w.s3.region, w.s3.bucket, w.s3.prefix
    );
    let fetch = |version: Option<&str>| ask_fetch(&cache, &id, "dep", version, &ci.public);
    let gets = || {
        proxy
            .seen()
            .iter()
            .filter(|s| {
                s.method == "GET" && s.path.contains("/dep/") && s.path.ends_with(".tar.zst")
            })
            .count()
    };
    let first = fetch(Some("0.1.0"));
    assert!(first.contains("\"entries\":0"), "{first}");
    assert_eq!(gets(), 1);
    let second = fetch(None);
    assert!(second.contains("\"entries\":0"), "{second}");
    let mut c = kache(&cache);
    w.s3.configure_at(&mut c, &proxy.endpoint);
    let st = json(&run_checked(c.args(["daemon", "status", "--json"])));
    let mut c = kache(&cache);
    w.s3.configure_at(&mut c, &proxy.endpoint);
    ok(&run_checked(c.args(["daemon", "stop", "--timeout", "10s"])));
    assert_eq!(st["refused"], 1, "{st}");
    assert_eq!(gets(), 1, "the refused object was downloaded again");
    assert!(entries(&cache).is_empty());
}

/// A signature frame as kache writes it, but forged: any key name, a
/// signature of 64 zero bytes.
fn forged_frame(key_name: &str) -> Vec<u8> {
    let payload = serde_json::json!({
        "v": 1,
        "key": key_name,
        "sig": "A".repeat(86) + "==",
    })
    .to_string();
    let mut out = vec![0x5B, 0x2A, 0x4D, 0x18];
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
    out.extend_from_slice(payload.as_bytes());
    out
}

/// `n` bytes that do not compress.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A forged frame naming `key`, then a zstd stream (with a window of
/// `2^window_log` bytes) whose first member is `manifest.json` claiming
/// 64 MiB (the most a manifest may be) of zeros: about 2 KiB in all.
fn forged_manifest_bomb(key: &str, window_log: u32) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"manifest.json");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    let mut enc = zstd::Encoder::new(forged_frame(key), 3).unwrap();
    enc.window_log(window_log).unwrap();
    std::io::Write::write_all(&mut enc, h.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    enc.finish().unwrap()
}

/// Found by attacking the pull (issue 23): a forged signature frame, the
/// trusted key's name or another's, in front of junk or of a manifest
/// that decompresses to 64 MiB. Each is refused on its head: junk after
/// a frame is not downloaded whole, a key not trusted is refused on the
/// frame alone, the manifest is hashed as it streams, never held in
/// memory, and no zstd window over 8 MiB is decoded, so twelve bombs at
/// once stay far below what they claim.
#[test]
fn forged_signature_frames_are_refused_on_their_head() {
    let w = World::local();
    let ci = w.key("ci");
    let src = w.path("src");
    let bombs = 12;
    put_entry(&src, "trustname", "1", &[("liba.rlib", b"a")]);
    put_entry(&src, "foreign", "1", &[("libb.rlib", b"b")]);
    for i in 0..bombs {
        put_entry(&src, &format!("bomb{i}"), "1", &[("libc.rlib", b"c")]);
    }
    ok(&w.kache_trusting(&src, None, &["sync", "--push"], &[]));
    let prefix = w.s3.prefix.clone();
    let junk = noise(16 << 20);
    for (c, key) in [("trustname", "ci"), ("foreign", "evil")] {
        let mut o = forged_frame(key);
        o.extend_from_slice(&junk);
        fs::write(w.object_of(&prefix, c), o).unwrap();
    }
    // Half of them ask for a 128 MiB window, which zstd allocates (and
    // fills) as it decodes.
    for i in 0..bombs {
        let bomb = forged_manifest_bomb("ci", if i % 2 == 0 { 21 } else { 27 });
        assert!(bomb.len() < 64 << 10, "all in the head");
        fs::write(w.object_of(&prefix, &format!("bomb{i}")), &bomb).unwrap();
    }

    let proxy = Proxy::start(&w.s3.endpoint);
    let cache = w.path("reader");
    let mut c = kache(&cache);
    w.s3.configure_at(&mut c, &proxy.endpoint);
    c.env("KACHE_PROGRESS", "0")
        .env("KACHE_TRUSTED_KEYS", &ci.public)
        .current_dir(w.tmp.path())
        .args(["sync", "--pull", "--all"]);
    let (o, peak) = peak_mib(c, w.tmp.path());
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert_eq!(refused_lines(&o).len(), bombs + 2, "{}", show(&o));
    assert!(!stderr(&o).contains("corrupt object"), "{}", show(&o));
    assert!(entries(&cache).is_empty());
    eprintln!("peak {peak} MiB");
    assert!(peak < 100, "peak {peak} MiB: {}", show(&o));
    let whole: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(".tar.zst") && s.range.is_none())
        .collect();
    assert!(whole.is_empty(), "downloaded whole: {whole:?}");
}

/// Found by attacking the daemon (issue 23): one object replaced by a
/// forged frame and junk. A build trusting `ci` asks for it, then for
/// `app`: the forged object is refused on its head (counted as a
/// refusal, not a failure of the remote), and `app`'s signed entry still
/// comes in (before, the junk was downloaded whole, failed as corrupt
/// and paused every remote hit).
#[test]
fn a_forged_object_neither_downloads_nor_pauses_the_daemon() {
    let w = World::local();
    let ci = w.key("ci");
    let key_file = ci.file.to_str().unwrap();
    let cache_a = w.path("cache-a");
    assert_eq!(build_and_run(&w.fixture("trust", "a"), &cache_a), plain(&w));
    ok(&w.kache_trusting(
        &cache_a,
        None,
        &["sync", "--push"],
        &[("KACHE_SIGNING_KEY_FILE", key_file)],
    ));
    let mut junk = forged_frame("ci");
    junk.extend_from_slice(&noise(8 << 20));
    fs::write(w.object_of(&w.s3.prefix, "dep"), &junk).unwrap();

    let proxy = Proxy::start(&w.s3.endpoint);
    let id = format!(
        "{}|{}|{}|{}",
        proxy.endpoint, w.s3.region, w.s3.bucket, w.s3.prefix
    );
    let cache = w.path("victim");
    let daemon = |args: &[&str]| {
        let mut c = kache(&cache);
        w.s3.configure_at(&mut c, &proxy.endpoint);
        run_checked(c.args(args))
    };
    ok(&daemon(&["daemon", "start"]));
    let fetch = |krate: &str| ask_fetch(&cache, &id, krate, None, &ci.public);
    let d = fetch("dep");
    let a = fetch("app");
    let st = json(&daemon(&["daemon", "status", "--json"]));
    ok(&daemon(&["daemon", "stop", "--timeout", "10s"]));
    assert!(d.contains("\"entries\":0"), "{d}");
    assert!(a.contains("\"ok\":true"), "app: {a}");
    assert_eq!(crates(&cache), BTreeSet::from(["app".to_string()]));
    assert_eq!(st["refused"], 1, "{st}");
    let whole: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.contains("/dep/") && s.range.is_none())
        .collect();
    assert!(whole.is_empty(), "downloaded whole: {whole:?}");
}

/// Asks the daemon of `cache` for `krate`'s remote entries as a build
/// of remote `id` trusting `trusted` would: its one-line reply.
fn ask_fetch(cache: &Path, id: &str, krate: &str, version: Option<&str>, trusted: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let req = serde_json::json!({
        "op": "fetch", "remote": id, "crate": krate, "version": version,
        "wait_ms": 10_000, "trusted": [trusted],
    });
    let mut s = std::os::unix::net::UnixStream::connect(cache.join("daemon/sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut r = String::new();
    BufReader::new(&s).read_line(&mut r).unwrap();
    r
}
