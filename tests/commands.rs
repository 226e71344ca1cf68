//! The small commands and settings: config precedence, invalid values,
//! masking; list, stats, gc, purge on a real store.

use std::fs;

use crate::common::{kache, put_entry, show};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn config_precedence_env_over_file_over_default() {
    let d = tmp();
    let cfgfile = d.path().join("config.toml");
    fs::write(
        &cfgfile,
        "[cache]\ns3_concurrency = 8\nlocal_max_size = \"10GB\"\n[cache.remote]\nbucket = \"from-file\"\nregion = \"eu-west-1\"\n",
    )
    .unwrap();
    let o = kache(&d.path().join("c"))
        .env("KACHE_CONFIG", &cfgfile)
        .env("KACHE_S3_CONCURRENCY", "4")
        .args(["config", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["settings"];
    assert_eq!(s["cache.s3_concurrency"]["value"], "4");
    assert_eq!(
        s["cache.s3_concurrency"]["source"],
        "env KACHE_S3_CONCURRENCY"
    );
    assert_eq!(s["cache.remote.bucket"]["value"], "from-file");
    assert!(
        s["cache.remote.bucket"]["source"]
            .as_str()
            .unwrap()
            .starts_with("file ")
    );
    assert_eq!(s["cache.remote.region"]["value"], "eu-west-1");
    assert_eq!(s["cache.local_max_size"]["value"], "9.3 GiB");
    assert_eq!(s["cache.remote.prefix"]["value"], "artifacts");
    assert_eq!(s["cache.remote.prefix"]["source"], "default");
    assert_eq!(s["cache.compression_level"]["value"], "3");
}

#[test]
fn invalid_values_name_the_setting_and_the_form() {
    let d = tmp();
    for (var, val, want) in [
        ("KACHE_S3_CONCURRENCY", "0", "KACHE_S3_CONCURRENCY"),
        ("KACHE_S3_CONCURRENCY", "abc", "a whole number"),
        ("KACHE_MAX_SIZE", "12XB", "KACHE_MAX_SIZE"),
        ("KACHE_COMPRESSION_LEVEL", "23", "1 to 22"),
        ("KACHE_CACHE_EXECUTABLES", "maybe", "true or false"),
        ("KACHE_CACHE_C", "maybe", "true or false"),
        ("KACHE_S3_ENDPOINT", "localhost:9000", "http://"),
        ("KACHE_LOG", "loud", "one of off, error"),
        ("KACHE_S3_ENDPOINT", "localhost:9000", "localhost:9000"),
        ("KACHE_S3_TIMEOUT", "0s", "KACHE_S3_TIMEOUT"),
        ("KACHE_S3_TIMEOUT", "soon", "a duration of at least 1s"),
    ] {
        let o = kache(d.path())
            .env(var, val)
            .arg("config")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{var}={val}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(want), "{var}={val}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn s3_timeout_from_env_file_and_default() {
    let d = tmp();
    let get = |c: &mut std::process::Command| {
        let o = c.args(["config", "--json"]).output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            j["settings"]["cache.remote.timeout"]["value"]
                .as_str()
                .unwrap()
                .to_string(),
            j["settings"]["cache.remote.timeout"]["source"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    assert_eq!(get(&mut kache(d.path())).0, "60s");
    let f = d.path().join("t.toml");
    fs::write(&f, "[cache.remote]\ntimeout = \"2m\"\n").unwrap();
    let (v, src) = get(kache(d.path()).env("KACHE_CONFIG", &f));
    assert_eq!(v, "120s");
    assert!(src.contains("t.toml"), "{src}");
    let (v, src) = get(kache(d.path())
        .env("KACHE_CONFIG", &f)
        .env("KACHE_S3_TIMEOUT", "1s"));
    assert_eq!((v.as_str(), src.as_str()), ("1s", "env KACHE_S3_TIMEOUT"));
}

#[test]
fn malformed_config_file_names_file_line_and_key() {
    let d = tmp();
    let f = d.path().join("bad.toml");
    fs::write(&f, "[cache]\nlocal_store = \"/x\"\ns3_concurrency = = 3\n").unwrap();
    let o = kache(d.path())
        .env("KACHE_CONFIG", &f)
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml") && err.contains("line 3"), "{err}");

    fs::write(&f, "[cache]\ns3_concurency = 3\n").unwrap();
    let o = kache(d.path())
        .env("KACHE_CONFIG", &f)
        .arg("config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 2") && err.contains("s3_concurency"),
        "{err}"
    );

    fs::write(&f, "[cache]\ns3_concurrency = 0\n").unwrap();
    let o = kache(d.path())
        .env("KACHE_CONFIG", &f)
        .arg("config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cache.s3_concurrency") && err.contains("bad.toml"),
        "{err}"
    );
}

#[test]
fn secrets_are_masked_and_half_pairs_rejected() {
    let d = tmp();
    let o = kache(d.path())
        .env("KACHE_S3_ACCESS_KEY", "AKIAVERYSECRETID")
        .env("KACHE_S3_SECRET_KEY", "wJalrXUtnFEMIsecretvalue")
        .arg("config")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!all.contains("wJalrXUtnFEMIsecretvalue"), "{all}");
    assert!(!all.contains("AKIAVERYSECRETID"), "{all}");
    assert!(all.contains("AKIA****"), "{all}");

    let o = kache(d.path())
        .env("AWS_ACCESS_KEY_ID", "AKIAONLYHALF")
        .arg("config")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("AWS_SECRET_ACCESS_KEY is not"), "{out}");
}

#[test]
fn credentials_from_profile_file() {
    let d = tmp();
    let f = d.path().join("credentials");
    fs::write(&f, "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n[ci]\naws_access_key_id = AKIACIPROFILE\naws_secret_access_key = s2\n").unwrap();
    let o = kache(d.path())
        .env("AWS_SHARED_CREDENTIALS_FILE", &f)
        .env("KACHE_S3_PROFILE", "ci")
        .args(["config", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &v["settings"]["credentials"];
    assert!(c["value"].as_str().unwrap().starts_with("AKIA****"), "{c}");
    assert!(c["source"].as_str().unwrap().contains("profile ci"), "{c}");
}

#[test]
fn list_stats_gc_purge() {
    let d = tmp();
    let cache = d.path().join("cache");
    let shared = vec![7u8; 4000];
    put_entry(
        &cache,
        "serde",
        "a",
        &[("libserde-1.rlib", &shared), ("libserde-1.rmeta", b"m1")],
    );
    put_entry(&cache, "serde", "b", &[("libserde-2.rlib", &shared)]);
    put_entry(
        &cache,
        "anyhow",
        "a",
        &[("libanyhow-1.rlib", &vec![1u8; 3000])],
    );

    let o = kache(&cache).args(["list", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    let o = kache(&cache)
        .args(["list", "Serde", "--sort", "size"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("2 entries"), "{out}");
    assert!(!out.contains("anyhow"), "{out}");

    let o = kache(&cache).args(["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["entries"], 3);
    assert_eq!(v["logical_bytes"], 4000 + 2 + 4000 + 3000);
    assert_eq!(v["stored_bytes"], 4000 + 2 + 3000);
    assert_eq!(v["dedup_saved_bytes"], 4000);

    // Size-limited gc evicts down to the limit.
    let o = kache(&cache)
        .env("KACHE_MAX_SIZE", "5000")
        .args(["gc", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["bytes_kept"].as_u64().unwrap() <= 5000, "{v}");
    assert!(v["entries_removed"].as_u64().unwrap() >= 1, "{v}");

    // Purge one crate, then all.
    let o = kache(&cache)
        .args(["purge", "--crate-name", "anyhow", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let o = kache(&cache).args(["purge"]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let o = kache(&cache).args(["stats", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["entries"], 0);
    assert_eq!(v["stored_bytes"], 0);
}

#[test]
fn gc_verify_drops_corrupt_entries() {
    let d = tmp();
    let cache = d.path().join("cache");
    put_entry(&cache, "good", "a", &[("libgood.rlib", b"good bytes")]);
    put_entry(&cache, "bad", "a", &[("libbad.rlib", b"bad bytes")]);
    let h = blake3::hash(b"bad bytes").to_hex().to_string();
    let p = cache.join("blobs").join(&h[..2]).join(&h);
    fs::write(&p, b"flipped!!").unwrap();
    let o = kache(&cache)
        .args(["gc", "--verify", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["corrupt_blobs"], 1, "{v}");
    assert_eq!(v["entries_kept"], 1, "{v}");
    let o = kache(&cache).args(["list", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["crate"], "good");
}

#[test]
fn status_and_usage_errors() {
    let d = tmp();
    let o = kache(d.path()).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("entries: 0"));
    let o = kache(d.path()).arg("--bogus").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = kache(d.path())
        .args(["gc", "--max-age", "7x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-age"));
}

#[test]
fn gc_removes_leftovers_of_dead_writers_only() {
    let d = tmp();
    let cache = d.path().join("cache");
    put_entry(&cache, "good", "a", &[("libgood.rlib", b"good bytes")]);
    let tmpdir = cache.join("tmp");
    fs::create_dir_all(&tmpdir).unwrap();
    // A crashed writer (pid that cannot exist) and a live one (ours).
    fs::write(tmpdir.join("blob.4194303.0.1"), b"half a blob").unwrap();
    fs::create_dir_all(tmpdir.join("pull.4194303.1.2")).unwrap();
    let live = format!("blob.{}.0.3", std::process::id());
    fs::write(tmpdir.join(&live), b"in progress").unwrap();
    // An orphan blob no manifest references (a crash between blob and
    // manifest).
    let h = blake3::hash(b"orphan").to_hex().to_string();
    let orphan = cache.join("blobs").join(&h[..2]).join(&h);
    fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    fs::write(&orphan, b"orphan").unwrap();

    let o = kache(&cache).args(["gc", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tmp_removed"], 2, "{v}");
    assert_eq!(v["blobs_removed"], 1, "{v}");
    assert_eq!(v["entries_kept"], 1, "{v}");
    assert!(tmpdir.join(&live).exists());
    assert!(!orphan.exists());
}

/// cc-rs runs `$RUSTC_WRAPPER cc ARGS` when the wrapper is named kache
/// (as for sccache): a link passes through as is, exit code included,
/// and a failing compile keeps its exit code and message and stores
/// nothing (issue 16 caches successful compiles: see tests/cc.rs).
#[test]
fn c_compiler_calls_from_cc_rs_pass_through() {
    let d = tmp();
    let src = d.path().join("t.c");
    fs::write(&src, "int main(void) { return 3; }\n").unwrap();
    let exe = d.path().join("t");
    let o = kache(&d.path().join("cache"))
        .arg("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let st = std::process::Command::new(&exe).status().unwrap();
    assert_eq!(st.code(), Some(3));
    // A failing C compile keeps its exit code and message.
    fs::write(&src, "int main(void) { return }\n").unwrap();
    let o = kache(&d.path().join("cache"))
        .args(["cc", "-c", "-o"])
        .arg(d.path().join("t.o"))
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("error"),
        "{}",
        show(&o)
    );
    let entries =
        fs::read_dir(d.path().join("cache/entries")).map_or(0, std::iter::Iterator::count);
    assert_eq!(entries, 0, "a failing compile was stored");
}

/// Issue 7: `kache stat` (a typo of `stats`) ran coreutils `stat`, since
/// any word naming a program on PATH was taken for a wrapper call. Only
/// the argv shapes cargo and cc-rs produce are.
#[test]
fn a_typo_is_a_usage_error_not_a_program_run() {
    let d = tmp();
    for argv in [&["stat"][..], &["stat", "/"], &["sh", "-c", "exit 7"]] {
        let o = kache(&d.path().join("cache")).args(argv).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{argv:?}: {}", show(&o));
        assert!(o.stdout.is_empty(), "{argv:?}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("unrecognized subcommand"), "{err}");
    }
    let o = kache(&d.path().join("cache")).arg("stat").output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stats"),
        "no suggestion: {}",
        show(&o)
    );
    // The workspace-wrapper shape still runs its wrapper.
    let script = d.path().join("ws-wrapper");
    fs::write(&script, "#!/bin/sh\nexit 7\n").unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = kache(&d.path().join("cache"))
        .arg(&script)
        .args(["rustc", "-vV"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", show(&o));
}

/// Issue 7: per-crate declared inputs and a never-cache list, from the
/// file and the environment, shown by `kache config` with their source.
#[test]
fn never_cache_and_declared_inputs_from_file_and_env() {
    let d = tmp();
    let cfgfile = d.path().join("config.toml");
    fs::write(
        &cfgfile,
        "[cache]\nnever_cache = [\"Napi-Gen\", \"other\"]\n\
         [cache.inputs.my-crate]\nenv = [\"DATABASE_URL\"]\nfiles = [\"migrations\", \"templates/**/*.html\"]\n",
    )
    .unwrap();
    let get = |env: &[(&str, &str)]| {
        let mut c = kache(&d.path().join("c"));
        c.env("KACHE_CONFIG", &cfgfile).args(["config", "--json"]);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", show(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["settings"].clone()
    };
    let s = get(&[]);
    assert_eq!(s["cache.never_cache"]["value"], "napi_gen,other");
    assert!(
        s["cache.never_cache"]["source"]
            .as_str()
            .unwrap()
            .starts_with("file ")
    );
    assert_eq!(
        s["cache.inputs"]["value"],
        "my_crate:env=DATABASE_URL;my_crate:files=migrations;my_crate:files=templates/**/*.html"
    );
    assert_eq!(s["cache.inputs"]["env"], "KACHE_INPUTS");
    // The environment replaces the file's list and table.
    let s = get(&[
        ("KACHE_NEVER_CACHE", "a-b, c"),
        (
            "KACHE_INPUTS",
            "x:env=FOO; x:files=sql/**;Y-z:files=schema.graphql;",
        ),
    ]);
    assert_eq!(s["cache.never_cache"]["value"], "a_b,c");
    assert_eq!(s["cache.never_cache"]["source"], "env KACHE_NEVER_CACHE");
    assert_eq!(
        s["cache.inputs"]["value"],
        "x:env=FOO;x:files=sql/**;y_z:files=schema.graphql"
    );
    assert_eq!(s["cache.inputs"]["source"], "env KACHE_INPUTS");
    // Defaults.
    let o = kache(d.path()).args(["config", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["settings"]["cache.never_cache"]["value"], "(none)");
    assert_eq!(v["settings"]["cache.inputs"]["source"], "default");
}

#[test]
fn invalid_never_cache_and_inputs_are_one_line_errors() {
    let d = tmp();
    for (var, val, want) in [
        ("KACHE_NEVER_CACHE", "ok,bad name", "bad name"),
        ("KACHE_NEVER_CACHE", "a,,b", "invalid crate name ``"),
        ("KACHE_INPUTS", "x:env", "crate:env=VAR"),
        ("KACHE_INPUTS", "x:dirs=a", "crate:files=GLOB"),
        ("KACHE_INPUTS", "x:env=", "invalid env var name"),
        (
            "KACHE_INPUTS",
            "x:files=/etc/passwd",
            "relative to the crate",
        ),
        ("KACHE_INPUTS", "b@d:env=X", "invalid crate name `b@d`"),
    ] {
        let o = kache(d.path())
            .env(var, val)
            .arg("config")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{var}={val}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(want), "{var}={val}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    for (text, want) in [
        ("[cache]\nnever_cache = \"x\"\n", "never_cache"),
        (
            "[cache.inputs.x]\nenv = [\"A\"]\nglobs = [\"b\"]\n",
            "globs",
        ),
        ("[cache.inputs.x]\n", "declares nothing"),
    ] {
        let f = d.path().join("bad.toml");
        fs::write(&f, text).unwrap();
        let o = kache(d.path())
            .env("KACHE_CONFIG", &f)
            .arg("config")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{text}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{text}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

/// Issue 7: a relative `KACHE_CACHE_DIR` made a store in each crate's
/// directory. Every command rejects it with one line.
#[test]
fn a_relative_cache_dir_is_rejected_by_every_command() {
    let d = tmp();
    for argv in [
        &[][..],
        &["list"],
        &["stats"],
        &["gc"],
        &["purge"],
        &["config"],
        &["sync", "--push"],
    ] {
        let o = kache(d.path())
            .env("KACHE_CACHE_DIR", "rel/cache")
            .current_dir(d.path())
            .args(argv)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{argv:?}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("error: KACHE_CACHE_DIR `rel/cache` must be an absolute path"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    let f = d.path().join("config.toml");
    fs::write(&f, "[cache]\nlocal_store = \"cache\"\n").unwrap();
    let o = kache(d.path())
        .env_remove("KACHE_CACHE_DIR")
        .env("KACHE_CONFIG", &f)
        .current_dir(d.path())
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cache.local_store in ") && err.contains("must be an absolute path"),
        "{err}"
    );
    assert!(!d.path().join("rel").exists() && !d.path().join("cache").exists());
}

/// Issue 7: `locks/` and `events.jsonl` grew forever; `kache gc` keeps
/// them bounded (stale unheld locks removed, the log cut to its newest
/// lines).
#[test]
fn gc_bounds_locks_and_the_event_log() {
    let d = tmp();
    let cache = d.path().join("cache");
    put_entry(&cache, "good", "a", &[("libgood.rlib", b"good bytes")]);
    let locks = cache.join("locks");
    fs::create_dir_all(&locks).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_hours(1);
    for i in 0..50 {
        let p = locks.join(format!("{i:064x}.lock"));
        fs::write(&p, b"").unwrap();
        fs::File::options()
            .append(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let fresh = locks.join("fresh.lock");
    fs::write(&fresh, b"").unwrap();
    // A lock a running compile holds, however old.
    let held_p = locks.join("held.lock");
    fs::write(&held_p, b"").unwrap();
    let held = fs::File::options().write(true).open(&held_p).unwrap();
    held.set_modified(old).unwrap();
    held.lock().unwrap();
    // About 20 MiB of events.
    let line = format!(
        "{{\"ts\":1,\"crate\":\"x\",\"result\":\"miss\",\"pad\":\"{}\"}}\n",
        "p".repeat(200)
    );
    let n = (20 << 20) / line.len();
    let mut log = line.repeat(n);
    log.push_str("{\"ts\":2,\"crate\":\"last\",\"result\":\"local_hit\"}\n");
    fs::write(cache.join("events.jsonl"), &log).unwrap();

    let o = kache(&cache).args(["gc", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["locks_removed"], 50, "{v}");
    assert!(fresh.exists() && held_p.exists());
    let left = fs::read_to_string(cache.join("events.jsonl")).unwrap();
    assert!(left.len() <= 16 << 20, "{}", left.len());
    assert!(left.len() >= 4 << 20, "{}", left.len());
    assert!(left.ends_with("\"last\",\"result\":\"local_hit\"}\n"));
    assert!(left.starts_with("{\"ts\":1,"), "a partial first line");
    assert_eq!(
        v["events_bytes_trimmed"].as_u64().unwrap() as usize + left.len(),
        log.len()
    );
    // stats still reads it.
    let o = kache(&cache).args(["stats", "--json"]).output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["hits"], 1, "{s}");
    drop(held);
    // A small log is left alone.
    let o = kache(&cache).args(["gc", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["events_bytes_trimmed"], 0, "{v}");
}

/// Issue 7: a hand-edited manifest with a 1-char hash panicked
/// (`&hash[..2]`). `list` and `gc --verify` report it and carry on; gc
/// removes it, and keeps the good entry.
#[test]
fn a_manifest_with_a_short_hash_is_reported_as_corrupt() {
    let d = tmp();
    let cache = d.path().join("cache");
    put_entry(&cache, "good", "a", &[("libgood.rlib", b"good bytes")]);
    let bad = put_entry(&cache, "bad", "b", &[("libbad.rlib", b"bad bytes")]);
    let mp = cache.join("entries/bad").join(format!("{bad}.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&mp).unwrap()).unwrap();
    m["files"][0]["hash"] = "a".into();
    fs::write(&mp, serde_json::to_vec(&m).unwrap()).unwrap();

    for argv in [
        &["list"][..],
        &["list", "--json"],
        &["stats"],
        &["list", "bad"],
    ] {
        let o = kache(&cache).args(argv).output().unwrap();
        assert!(o.status.success(), "{argv:?}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("corrupt entry manifest") && err.contains("bad blob hash `a`"),
            "{argv:?}: {err}"
        );
    }
    let o = kache(&cache)
        .args(["gc", "--verify", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("corrupt entry manifest"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["corrupt_manifests"], 1, "{v}");
    assert_eq!(v["entries_kept"], 1, "{v}");
    assert!(!mp.exists());
    let o = kache(&cache).args(["list", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["crate"], "good");
}
