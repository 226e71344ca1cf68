//! `kache daemon` with real cargo builds of the fixture workspace and a
//! real S3 server (s3s-fs in-process, or the external one named by
//! `KACHE_TEST_S3`_*), through a fault-injecting proxy where needed.
//!
//! Every daemon a test starts is stopped by its pid (a drop guard kills
//! it if the test fails half way); nothing is left running.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{
    World, assert_no_secrets, cargo_through_kache, copy_tree, kache, kache_bin, ok, show,
};
use crate::s3server::Proxy;

/// A started daemon, killed by pid on drop unless stopped.
struct Daemon {
    pid: u32,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if alive(self.pid) {
            kill9(self.pid);
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (killed, not yet reaped by its parent) is not alive.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

fn kill9(pid: u32) {
    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl World {
    fn secrets(&self) -> Vec<String> {
        vec![self.s3.secret_key.clone()]
    }

    /// `kache ARGS` for `cache`, remote through `endpoint`.
    fn kache_at(&self, cache: &Path, endpoint: &str, args: &[&str]) -> Output {
        let mut c = kache(cache);
        self.s3.configure_at(&mut c, endpoint);
        let o = c.args(args).output().unwrap();
        assert_no_secrets(&o, &self.secrets());
        o
    }

    fn start(&self, cache: &Path, endpoint: &str) -> Daemon {
        let o = self.kache_at(cache, endpoint, &["daemon", "start"]);
        ok(&o);
        let st = self.status(cache, endpoint);
        assert_eq!(st["running"], true, "{st}");
        Daemon {
            pid: st["pid"].as_u64().unwrap() as u32,
        }
    }

    fn status(&self, cache: &Path, endpoint: &str) -> serde_json::Value {
        let o = self.kache_at(cache, endpoint, &["daemon", "status", "--json"]);
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&o)))
    }

    /// `kache daemon stop`; the process is gone afterwards.
    fn stop(&self, d: &Daemon, cache: &Path, endpoint: &str, timeout: &str) -> Output {
        let o = self.kache_at(cache, endpoint, &["daemon", "stop", "--timeout", timeout]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(d.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !alive(d.pid),
            "daemon {} still running: {}",
            d.pid,
            show(&o)
        );
        o
    }

    /// `cargo build` of `ws` through kache, remote through `endpoint`.
    fn build(&self, ws: &Path, cache: &Path, endpoint: &str, extra: &[(&str, &str)]) -> Command {
        let mut c = cargo_through_kache(ws, &ws.with_file_name("target"), cache, &["build"]);
        self.s3.configure_at(&mut c, endpoint);
        for (k, v) in extra {
            c.env(k, v);
        }
        c
    }

    /// (crate, key) of every entry object under this test's prefix.
    fn bucket_entries(&self) -> BTreeSet<(String, String)> {
        self.s3
            .names()
            .iter()
            .filter_map(|o| {
                // `{crate}/{version}/{target}/{toolchain}/{key}.tar.zst`,
                // or kache 0.1's `{crate}/{key}.tar.zst`.
                let rest = o.strip_prefix(&format!("{}/", self.s3.prefix))?;
                let (c, _) = rest.split_once('/')?;
                let f = rest.rsplit('/').next()?;
                Some((c.to_string(), f.strip_suffix(".tar.zst")?.to_string()))
            })
            .collect()
    }
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

/// Upload markers left under `pending/`.
fn pending(cache: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![cache.join("pending")];
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

/// Every entry of `cache` is in the bucket, and no upload is pending.
fn all_uploaded(w: &World, cache: &Path) {
    assert_eq!(w.bucket_entries(), entries(cache), "{}", daemon_log(cache));
    assert_eq!(pending(cache), 0);
}

/// The wrapper outcomes logged since the last call (the log is cleared).
fn results(cache: &Path) -> Vec<String> {
    let text = fs::read_to_string(cache.join("events.jsonl")).unwrap_or_default();
    let _ = fs::remove_file(cache.join("events.jsonl"));
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["crate"] != "")
        .map(|e| e["result"].as_str().unwrap_or("").to_string())
        .collect()
}

fn runs_right(ws: &Path) {
    let run = Command::new(ws.with_file_name("target").join("debug/app"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", show(&run));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "hello total=52 label=built"
    );
}

fn daemon_log(cache: &Path) -> String {
    fs::read_to_string(cache.join("daemon/log")).unwrap_or_default()
}

/// Runner A builds with the daemon: after `kache daemon stop` every entry
/// is in the bucket, with no sync step. Runner B (another checkout path,
/// an empty store, its own daemon) then builds from remote hits alone,
/// compiling nothing, and the program runs right.
#[test]
fn uploads_without_sync_and_remote_hits_on_an_empty_runner() {
    let w = World::new();
    let ep = w.s3.endpoint.clone();
    let (ws_a, cache_a) = (w.fixture("ws", "a"), w.path("cache-a"));
    let d = w.start(&cache_a, &ep);
    let o = w.build(&ws_a, &cache_a, &ep, &[]).output().unwrap();
    ok(&o);
    let cold = results(&cache_a);
    assert!(
        !cold.is_empty() && cold.iter().all(|r| r == "miss"),
        "{cold:?}"
    );
    let stored = entries(&cache_a);
    assert_eq!(stored.len(), cold.len());
    let o = w.stop(&d, &cache_a, &ep, "60s");
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 pending"),
        "{}",
        show(&o)
    );
    assert_eq!(w.bucket_entries(), stored, "{}", daemon_log(&cache_a));
    assert_eq!(pending(&cache_a), 0);
    // A second stop finds nothing running and nothing pending.
    ok(&w.kache_at(&cache_a, &ep, &["daemon", "stop"]));

    let (ws_b, cache_b) = (w.fixture("ws", "b"), w.path("cache-b"));
    let d = w.start(&cache_b, &ep);
    let t0 = Instant::now();
    let o = w
        .build(&ws_b, &cache_b, &ep, &[("KACHE_DAEMON_WAIT", "10s")])
        .output()
        .unwrap();
    ok(&o);
    let took = t0.elapsed();
    let warm = results(&cache_b);
    assert_eq!(warm.len(), cold.len(), "{warm:?}");
    assert!(
        warm.iter().all(|r| r == "local_hit" || r == "remote_hit"),
        "{warm:?}\n{}",
        daemon_log(&cache_b)
    );
    runs_right(&ws_b);
    let st = w.status(&cache_b, &ep);
    assert!(st["remote_hits"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(
        st["entries_fetched"].as_u64().unwrap(),
        stored.len() as u64,
        "{st}"
    );
    eprintln!("runner B build from remote hits: {took:?}; status {st}");
    // Nothing was compiled on B, so nothing is uploaded.
    ok(&w.stop(&d, &cache_b, &ep, "30s"));
    for log in [daemon_log(&cache_a), daemon_log(&cache_b)] {
        assert!(!log.contains(&w.s3.secret_key), "{log}");
        assert!(
            !log.to_ascii_lowercase().contains("x-amz-signature"),
            "{log}"
        );
    }
}

/// The daemon is killed with `kill -9` while a build runs and uploads are
/// slow: the build succeeds, the uploads stay recorded under `pending/`,
/// and a restarted daemon uploads them all before `stop` returns 0.
#[test]
fn kill_9_mid_build_loses_no_upload() {
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    proxy.set_delay(Duration::from_millis(1500));
    let (ws, cache) = (w.fixture("ws", "a"), w.path("cache"));
    let d = w.start(&cache, &proxy.endpoint);
    let mut child = w
        .build(&ws, &cache, &proxy.endpoint, &[("KACHE_DAEMON_WAIT", "0s")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the first entry is stored.
    let deadline = Instant::now() + Duration::from_mins(2);
    while entries(&cache).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!entries(&cache).is_empty(), "no entry stored in time");
    kill9(d.pid);
    let status = child.wait().unwrap();
    assert!(status.success(), "build failed after the daemon died");
    runs_right(&ws);
    let stored = entries(&cache);
    assert!(pending(&cache) > 0, "every upload done before the kill?");
    assert!(w.bucket_entries().len() < stored.len());

    // Restart (a stale socket is left behind), at full speed.
    proxy.set_delay(Duration::ZERO);
    let d = w.start(&cache, &proxy.endpoint);
    let o = w.stop(&d, &cache, &proxy.endpoint, "60s");
    ok(&o);
    assert_eq!(w.bucket_entries(), stored, "{}", daemon_log(&cache));
    assert_eq!(pending(&cache), 0);
}

/// S3 down, then S3 answering slowly: builds succeed; a failing remote
/// is noticed once (the circuit breaker), a slow one is learned (the
/// pace) instead of making every compile wait. A stop that cannot upload
/// says so in its exit status, and keeps the uploads recorded.
#[test]
fn s3_down_or_slow_builds_succeed_within_the_deadlines() {
    let w = World::new();
    // Baseline: the same build without kache's remote.
    let ws0 = w.fixture("ws", "base");
    let t0 = Instant::now();
    let mut c = cargo_through_kache(
        &ws0,
        &ws0.with_file_name("target"),
        &w.path("cache0"),
        &["build"],
    );
    ok(&c.output().unwrap());
    let base = t0.elapsed();

    // Down: nothing listens on the endpoint.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (ws, cache) = (w.fixture("ws", "down"), w.path("cache-down"));
    let d = w.start(&cache, &dead);
    let t0 = Instant::now();
    let o = w
        .build(&ws, &cache, &dead, &[("KACHE_DAEMON_WAIT", "2s")])
        .output()
        .unwrap();
    ok(&o);
    let down = t0.elapsed();
    runs_right(&ws);
    let st = w.status(&cache, &dead);
    assert!(st["remote_misses"].as_u64().unwrap() > 0, "{st}");
    // The breaker opens once a failing fetch has spent its retries.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.status(&cache, &dead)["paused_secs"] == 0 {
        assert!(Instant::now() < deadline, "{}", daemon_log(&cache));
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = w.stop(&d, &cache, &dead, "2s");
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not done"),
        "{}",
        show(&o)
    );
    assert_eq!(pending(&cache), entries(&cache).len());

    // Slow: every request waits 3 s, longer than builds wait (1 s).
    let proxy = Proxy::start(&w.s3.endpoint);
    proxy.set_delay(Duration::from_secs(3));
    let (ws, cache) = (w.fixture("ws", "slow"), w.path("cache-slow"));
    let d = w.start(&cache, &proxy.endpoint);
    let t0 = Instant::now();
    let o = w
        .build(&ws, &cache, &proxy.endpoint, &[("KACHE_DAEMON_WAIT", "1s")])
        .output()
        .unwrap();
    ok(&o);
    let slow = t0.elapsed();
    runs_right(&ws);
    // The daemon answered every compile within its limit (none marked it
    // unresponsive): the first ones after at most the assumed compile
    // time, the later ones at once, since the fetch under way had by then
    // run longer than a compile takes. A slow remote is not a failing
    // one: nothing paused. The fetch time learned is the remote's.
    assert!(!cache.join("daemon/unresponsive").exists());
    let st = w.status(&cache, &proxy.endpoint);
    assert!(
        st["not_waited"].as_u64().unwrap() > 0,
        "{st} {}",
        daemon_log(&cache)
    );
    assert_eq!(st["paused_secs"], 0, "{st}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.status(&cache, &proxy.endpoint)["fetch_ms"]
        .as_u64()
        .is_none_or(|ms| ms < 3000)
    {
        assert!(Instant::now() < deadline, "{}", daemon_log(&cache));
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.set_delay(Duration::ZERO);
    let _ = w.stop(&d, &cache, &proxy.endpoint, "1s");
    eprintln!("build: {base:?} without a remote, {down:?} with S3 down, {slow:?} with S3 slow");
    // Each waiting compile pays at most the wait, and only until the
    // breaker opens or the pace is learned: with 2 jobs, a few waits.
    let slack = Duration::from_secs(8);
    assert!(down < base + slack, "{down:?} vs {base:?}");
    assert!(slow < base + slack, "{slow:?} vs {base:?}");
}

/// Another user cannot talk to the daemon: the socket's directory is
/// private, and even with it opened up the daemon refuses the peer's
/// uid. Malformed, oversized or path-like requests are refused and the
/// daemon keeps serving.
#[test]
fn another_uid_cannot_use_the_socket_and_bad_requests_are_refused() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    let w = World::new();
    let ep = w.s3.endpoint.clone();
    let cache = w.path("cache");
    let d = w.start(&cache, &ep);
    let mode = fs::metadata(cache.join("daemon"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    let as_nobody = || {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(kache_bin())
            .args(["daemon", "status", "--json"]);
        crate::common::clean_env(&mut c);
        c.env("KACHE_CACHE_DIR", &cache);
        w.s3.configure_at(&mut c, &ep);
        c.output().unwrap()
    };
    // Let nobody reach the store (not the daemon dir).
    fs::set_permissions(w.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let o = as_nobody();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(r#""running":false"#));
    // Open the store (created 0700), the directory and the socket up:
    // SO_PEERCRED still refuses.
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(cache.join("daemon"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(cache.join("daemon/sock"), fs::Permissions::from_mode(0o777)).unwrap();
    let o = as_nobody();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon_log(&cache).contains("refused a connection from uid 65534") {
        assert!(Instant::now() < deadline, "{}", daemon_log(&cache));
        std::thread::sleep(Duration::from_millis(20));
    }

    let ask = |line: &[u8]| -> String {
        let mut s = UnixStream::connect(cache.join("daemon/sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(line);
        let mut r = String::new();
        let _ = BufReader::new(&s).read_line(&mut r);
        r
    };
    let key = "ab".repeat(32);
    for bad in [
        format!(
            "{{\"op\":\"upload\",\"remote\":\"x\",\"crate\":\"../../etc\",\"key\":\"{key}\"}}\n"
        ),
        "{\"op\":\"fetch\",\"remote\":\"x\",\"crate\":\"a/b\",\"wait_ms\":1}\n".to_string(),
        "{\"op\":\"delete\",\"path\":\"/\"}\n".to_string(),
        format!("{}\n", "x".repeat(100_000)),
    ] {
        let r = ask(bad.as_bytes());
        assert!(r.contains(r#""ok":false"#), "{bad:.80}: {r}");
    }
    // A fetch for another remote is refused, not served.
    let r = ask(b"{\"op\":\"fetch\",\"remote\":\"http://elsewhere|r|b|p\",\"crate\":\"foo\",\"wait_ms\":100}\n");
    assert!(r.contains("another remote"), "{r}");
    let st = w.status(&cache, &ep);
    assert_eq!(st["running"], true);
    assert_eq!(st["queue"], 0);
    // A second daemon for the same store refuses to start.
    let o = w.kache_at(&cache, &ep, &["daemon"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already runs"),
        "{}",
        show(&o)
    );
    ok(&w.stop(&d, &cache, &ep, "10s"));
}

/// Two builds at once (two checkouts, one store) through one daemon that
/// the first wrapper call started (`KACHE_DAEMON_AUTOSTART=1`): both
/// succeed, every entry reaches the bucket, and the server never sees
/// more than `s3_concurrency` requests at once.
#[test]
fn autostart_two_builds_at_once_within_the_concurrency_bound() {
    let w = World::new();
    let proxy = Proxy::start(&w.s3.endpoint);
    proxy.set_delay(Duration::from_millis(150));
    let ep = proxy.endpoint.clone();
    let cache = w.path("cache");
    let env = [
        ("KACHE_DAEMON_AUTOSTART", "1"),
        ("KACHE_S3_CONCURRENCY", "2"),
        ("KACHE_DAEMON_WAIT", "1s"),
        ("KACHE_CACHE_EXECUTABLES", "true"),
    ];
    let (ws1, ws2) = (w.fixture("ws", "one"), w.fixture("ws", "two"));
    let mut b1 = w.build(&ws1, &cache, &ep, &env).spawn().unwrap();
    let mut b2 = w.build(&ws2, &cache, &ep, &env).spawn().unwrap();
    assert!(b1.wait().unwrap().success());
    assert!(b2.wait().unwrap().success());
    runs_right(&ws1);
    runs_right(&ws2);
    let st = w.status(&cache, &ep);
    assert_eq!(
        st["running"],
        true,
        "not autostarted: {}",
        daemon_log(&cache)
    );
    assert_eq!(st["s3_concurrency"], 2);
    let d = Daemon {
        pid: st["pid"].as_u64().unwrap() as u32,
    };
    let o = w.stop(&d, &cache, &ep, "60s");
    ok(&o);
    all_uploaded(&w, &cache);
    let max = proxy.max_inflight();
    assert!((1..=2).contains(&max), "{max} requests in flight");
}

/// The daemon notices a changed config file: it serves the new remote
/// (and wrappers compare with the new identity); a broken file is
/// reported and the old settings kept.
#[test]
fn a_changed_config_file_is_noticed() {
    let w = World::new();
    let cache = w.path("cache");
    let file = w.path("config.toml");
    let write = |prefix: &str| {
        fs::write(
            &file,
            format!(
                "[cache.remote]\nbucket = \"{}\"\nendpoint = \"{}\"\nregion = \"{}\"\nprefix = \"{prefix}\"\n",
                w.s3.bucket, w.s3.endpoint, w.s3.region
            ),
        )
        .unwrap();
    };
    let cmd = |args: &[&str]| {
        let mut c = kache(&cache);
        c.env("KACHE_CONFIG", &file)
            .env("KACHE_S3_ACCESS_KEY", &w.s3.access_key)
            .env("KACHE_S3_SECRET_KEY", &w.s3.secret_key)
            .args(args);
        let o = c.output().unwrap();
        assert_no_secrets(&o, &w.secrets());
        o
    };
    let status = || -> serde_json::Value {
        serde_json::from_slice(&cmd(&["daemon", "status", "--json"]).stdout).unwrap()
    };
    write("first");
    ok(&cmd(&["daemon", "start"]));
    let st = status();
    let d = Daemon {
        pid: st["pid"].as_u64().unwrap() as u32,
    };
    assert!(st["remote"].as_str().unwrap().contains("/first/"), "{st}");
    write("second");
    let deadline = Instant::now() + Duration::from_secs(15);
    while status()["config_reloads"] != 1 {
        assert!(Instant::now() < deadline, "{}", daemon_log(&cache));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(status()["remote"].as_str().unwrap().contains("/second/"));
    fs::write(&file, "[cache\nbroken").unwrap();
    while !daemon_log(&cache).contains("cannot be used") {
        assert!(Instant::now() < deadline, "{}", daemon_log(&cache));
        std::thread::sleep(Duration::from_millis(100));
    }
    // (`kache daemon status` itself refuses a broken file.)
    write("second");
    assert!(status()["remote"].as_str().unwrap().contains("/second/"));
    ok(&cmd(&["daemon", "stop"]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(d.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(d.pid));
}

/// Figures for the README: a real project (this repository by default,
/// ~90 crates from the local registry; `KACHE_BENCH_PROJECT` names
/// another) against s3s-fs on loopback (or the server named by
/// `KACHE_TEST_S3_ENDPOINT`), in one run:
/// `cargo test --release --test tests daemon::bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_daemon() {
    let w = World::new();
    let project = std::env::var("KACHE_BENCH_PROJECT")
        .map_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let ep = w.s3.endpoint.clone();
    let ws = |name: &str| {
        let d = w.path(name).join("ws");
        copy_tree(&project, &d);
        d
    };
    let timed = |c: &mut Command| {
        let t0 = Instant::now();
        let o = c.output().unwrap();
        ok(&o);
        t0.elapsed().as_secs_f64()
    };
    // Uncached: no wrapper at all.
    let ws0 = ws("none");
    let mut c = cargo_through_kache(
        &ws0,
        &ws0.with_file_name("target"),
        &w.path("c0"),
        &["build"],
    );
    c.env_remove("RUSTC_WRAPPER");
    let none = timed(&mut c);
    // Runner A: kache and a remote, no daemon; then with the daemon.
    let ws_a0 = ws("a0");
    let a0 = timed(&mut w.build(&ws_a0, &w.path("ca0"), &ep, &[]));
    let (ws_a, cache_a) = (ws("a"), w.path("ca"));
    let d = w.start(&cache_a, &ep);
    let a = timed(&mut w.build(&ws_a, &cache_a, &ep, &[]));
    let t0 = Instant::now();
    let o = w.stop(&d, &cache_a, &ep, "10m");
    assert!(o.status.success(), "{}\n{}", show(&o), daemon_log(&cache_a));
    let drain = t0.elapsed().as_secs_f64();
    assert_eq!(w.bucket_entries(), entries(&cache_a));
    // Runner B: empty store, daemon running, no sync.
    let (ws_b, cache_b) = (ws("b"), w.path("cb"));
    let d = w.start(&cache_b, &ep);
    let b = timed(&mut w.build(&ws_b, &cache_b, &ep, &[]));
    let st = w.status(&cache_b, &ep);
    ok(&w.stop(&d, &cache_b, &ep, "1m"));
    // By hand: KACHE_BENCH_KEEP=DIR keeps runner B's events and daemon log.
    if let Some(keep) = std::env::var_os("KACHE_BENCH_KEEP") {
        let keep = Path::new(&keep);
        let _ = fs::copy(cache_b.join("events.jsonl"), keep.join("b-events.jsonl"));
        let _ = fs::copy(cache_b.join("daemon/log"), keep.join("b-daemon.log"));
    }
    let b_results = results(&cache_b);
    // Runner B': sync --pull, then build.
    let (ws_p, cache_p) = (ws("p"), w.path("cp"));
    let mut c = kache(&cache_p);
    w.s3.configure(&mut c);
    let pull = timed(c.current_dir(&ws_p).args(["sync", "--pull"]));
    let pulled = timed(&mut w.build(&ws_p, &cache_p, &ep, &[]));
    // S3 2 s away on every request, empty store, daemon running.
    // A fresh runner with the daemon, S3 `late` away on every request:
    // its build time and outcomes.
    let late = |late: Duration, name: &str| {
        let proxy = Proxy::start(&ep);
        proxy.set_delay(late);
        let (ws_s, cache_s) = (ws(name), w.path(&format!("c{name}")));
        let d = w.start(&cache_s, &proxy.endpoint);
        let t = timed(&mut w.build(&ws_s, &cache_s, &proxy.endpoint, &[]));
        proxy.set_delay(Duration::ZERO);
        let _ = w.stop(&d, &cache_s, &proxy.endpoint, "5s");
        if let Some(keep) = std::env::var_os("KACHE_BENCH_KEEP") {
            let keep = Path::new(&keep);
            let _ = fs::copy(
                cache_s.join("events.jsonl"),
                keep.join(format!("{name}-events.jsonl")),
            );
            let _ = fs::copy(
                cache_s.join("daemon/log"),
                keep.join(format!("{name}-daemon.log")),
            );
        }
        (t, results(&cache_s))
    };
    let (near, near_results) = late(Duration::from_millis(100), "n");
    let (slow, slow_results) = late(Duration::from_secs(2), "s");

    let n = entries(&cache_a).len();
    let hits = b_results
        .iter()
        .filter(|r| *r == "local_hit" || *r == "remote_hit")
        .count();
    let server = if crate::s3server::external() {
        format!("{} (KACHE_TEST_S3_ENDPOINT)", w.s3.endpoint)
    } else {
        "s3s-fs".to_string()
    };
    eprintln!(
        "{n} entries; {server} on loopback; {} cores",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    eprintln!("| run | wall s | ratio |");
    eprintln!("|---|---:|---:|");
    eprintln!("| uncached (no kache) | {none:.2} | 1.000 of uncached |");
    eprintln!("| A: kache, no daemon | {a0:.2} | |");
    eprintln!(
        "| A: kache + daemon | {a:.2} | {:.3} of A without daemon |",
        a / a0
    );
    eprintln!("| A: `daemon stop` (uploads left) | {drain:.2} | |");
    eprintln!(
        "| B: empty store + daemon | {b:.2} | {:.3} of uncached ({hits}/{} hits) |",
        b / none,
        b_results.len()
    );
    eprintln!(
        "| B: `sync --pull` + build | {:.2} ({pull:.2} + {pulled:.2}) | {:.3} of uncached |",
        pull + pulled,
        (pull + pulled) / none
    );
    for (what, t, r) in [
        ("100 ms", near, &near_results),
        ("2 s", slow, &slow_results),
    ] {
        eprintln!(
            "| S3 {what} per request + daemon | {t:.2} | {:.3} of uncached ({}/{} hits) |",
            t / none,
            r.iter()
                .filter(|r| *r == "local_hit" || *r == "remote_hit")
                .count(),
            r.len()
        );
    }
    eprintln!("B daemon status: {st}");
}

/// A daemon that accepts but never answers (stopped with SIGSTOP): the
/// build succeeds, the first compile that asks pays the wait once and
/// later compiles do not ask; once resumed, every upload still happens.
#[test]
fn a_hung_daemon_costs_one_wait() {
    let w = World::new();
    let ep = w.s3.endpoint.clone();
    let ws0 = w.fixture("ws", "base");
    let t0 = Instant::now();
    ok(&w.build(&ws0, &w.path("cache0"), &ep, &[]).output().unwrap());
    let base = t0.elapsed();

    let (ws, cache) = (w.fixture("ws", "a"), w.path("cache"));
    let d = w.start(&cache, &ep);
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &d.pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    let t0 = Instant::now();
    let o = w
        .build(&ws, &cache, &ep, &[("KACHE_DAEMON_WAIT", "2s")])
        .output()
        .unwrap();
    let hung = t0.elapsed();
    signal("-CONT");
    ok(&o);
    runs_right(&ws);
    assert!(cache.join("daemon/unresponsive").exists());
    eprintln!("build: {base:?} without a daemon, {hung:?} with a hung one");
    // Two jobs: at most two compiles were waiting when the first gave up.
    assert!(hung < base + Duration::from_secs(6), "{hung:?} vs {base:?}");
    ok(&w.stop(&d, &cache, &ep, "60s"));
    all_uploaded(&w, &cache);
}

/// A build-script miss traced behind the build (`cache.trace_behind`,
/// the default on a desk) is recorded by its twin after cargo exits:
/// `kache daemon stop` right after the build waits for the twin, and
/// its entry is in the bucket with every other one.
#[test]
fn daemon_stop_waits_for_a_build_script_traced_behind_the_build() {
    let w = World::new();
    let ep = w.s3.endpoint.clone();
    let (ws, cache) = (w.fixture("ws", "a"), w.path("cache-a"));
    let d = w.start(&cache, &ep);
    let env = [
        ("KACHE_TRACE_BEHIND", "1"),
        ("KACHE_FIXTURE_TWIN_SLEEP", "4"),
    ];
    ok(&w.build(&ws, &cache, &ep, &env).output().unwrap());
    let genlib = |c: &Path| entries(c).iter().filter(|(c, _)| c == "genlib").count();
    // The twin still sleeps: genlib's compiles are stored, its build
    // script's run is not yet.
    let before = genlib(&cache);
    let o = w.stop(&d, &cache, &ep, "60s");
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("waiting for 1 build-script run(s) still being traced"),
        "{}",
        show(&o)
    );
    assert_eq!(genlib(&cache), before + 1, "{}", show(&o));
    all_uploaded(&w, &cache);
    runs_right(&ws);
}

/// With a remote configured and no daemon, the wrapper's upload markers
/// pile up in `pending/`; `kache sync --push` uploads the entries and
/// clears the markers of everything the bucket then holds.
#[test]
fn sync_push_clears_upload_markers() {
    let w = World::new();
    let ws = w.fixture("ws", "a");
    let cache = w.path("ca");
    let ep = w.s3.endpoint.clone();
    ok(&w.build(&ws, &cache, &ep, &[]).output().unwrap());
    let n = entries(&cache).len();
    assert!(n > 0);
    assert_eq!(pending(&cache), n);
    let mut c = kache(&cache);
    w.s3.configure_at(&mut c, &ep);
    let o = c
        .current_dir(&ws)
        .args(["sync", "--push"])
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(pending(&cache), 0);
    assert_eq!(w.bucket_entries().len(), n);
}

/// Issue 23: the wrapper talks only to a daemon of its own user. A
/// listener run as uid 65534 (a thread of this test that dropped to that
/// uid alone), its socket linked into the build's store as a neighbour
/// who could write there would plant it: the build tells it nothing
/// (without the check it was sent each crate's name and the remote) and
/// builds as without a daemon.
#[test]
fn the_wrapper_never_talks_to_a_daemon_of_another_uid() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let w = World::new();
    let ep = w.s3.endpoint.clone();
    fs::set_permissions(w.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = w.path("nobody");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let sock = home.join("sock");
    let (heard, stop) = (
        Arc::new(Mutex::new(Vec::<String>::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let (h, st, path) = (heard.clone(), stop.clone(), sock.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = std::thread::spawn(move || {
        // SAFETY: a raw setresuid changes this thread's credentials only
        // (the kernel's are per thread; glibc's wrapper would change
        // every thread's); it takes plain integers.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0);
        let l = UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !st.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut line = String::new();
                    // A connection is made (the peer is known only
                    // then) and closed without a word.
                    let _ = BufReader::new(&s).read_line(&mut line);
                    if !line.is_empty() {
                        h.lock().unwrap().push(line);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    ready_rx.recv().unwrap();

    let cache = w.path("cache");
    fs::create_dir_all(cache.join("daemon")).unwrap();
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(cache.join("daemon"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::hard_link(&sock, cache.join("daemon/sock")).unwrap();
    let ws = w.fixture("ws", "a");
    let o = w
        .build(
            &ws,
            &cache,
            &ep,
            &[("KACHE_DAEMON_AUTOSTART", "0"), ("KACHE_DAEMON_WAIT", "2s")],
        )
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    listener.join().unwrap();
    ok(&o);
    assert!(!results(&cache).is_empty());
    let heard = heard.lock().unwrap();
    assert!(heard.is_empty(), "told another uid's daemon: {heard:?}");
}

/// Runner A builds the fixture workspace and uploads every entry; the
/// bucket then holds them all. Returns A's workspace.
fn filled_bucket(w: &World) -> PathBuf {
    let ep = w.s3.endpoint.clone();
    let (ws_a, cache_a) = (w.fixture("ws", "a"), w.path("cache-a"));
    let d = w.start(&cache_a, &ep);
    ok(&w.build(&ws_a, &cache_a, &ep, &[]).output().unwrap());
    ok(&w.stop(&d, &cache_a, &ep, "60s"));
    assert_eq!(
        w.bucket_entries(),
        entries(&cache_a),
        "{}",
        daemon_log(&cache_a)
    );
    assert!(ws_a.join("Cargo.lock").is_file());
    ws_a
}

/// Starts a daemon for `cache` whose remote is behind `proxy`, with
/// `concurrency` S3 connections.
fn start_behind(w: &World, cache: &Path, proxy: &Proxy, concurrency: &str) -> Daemon {
    let mut c = kache(cache);
    w.s3.configure_at(&mut c, &proxy.endpoint);
    ok(&c
        .env("KACHE_S3_CONCURRENCY", concurrency)
        .args(["daemon", "start"])
        .output()
        .unwrap());
    let st = w.status(cache, &proxy.endpoint);
    Daemon {
        pid: st["pid"].as_u64().unwrap() as u32,
    }
}

/// Asks the daemon of `cache` for a crate of workspace `ws`'s Cargo.lock,
/// as the wrapper does on a local miss; its reply.
fn ask(w: &World, cache: &Path, proxy: &Proxy, ws: &Path, crate_name: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let remote = format!(
        "{}|{}|{}|{}",
        proxy.endpoint.trim_end_matches('/'),
        w.s3.region,
        w.s3.bucket,
        w.s3.prefix.trim_matches('/')
    );
    let req = serde_json::json!({
        "op": "fetch",
        "remote": remote,
        "crate": crate_name,
        "workspace": ws.to_str().unwrap(),
        "version": "0.1.0",
        "wait_ms": 10_000,
    });
    let mut s = UnixStream::connect(cache.join("daemon/sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

/// Waits (at most 30 s) until the daemon of `cache` logged the end of
/// the fixture's prefetch.
fn prefetched(cache: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon_log(cache).contains("prefetched 5 crate(s)") {
        assert!(Instant::now() < deadline, "{}", daemon_log(cache));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A build's request never queues behind the prefetch of its workspace's
/// Cargo.lock, which the first request starts. With two S3 connections
/// and every request 150 ms late, the prefetch of the other crates
/// outlasts the second a compile of an unknown crate is waited for; the
/// asked crate's own fetch (a listing, a download and its use record)
/// is answered within it.
#[test]
fn a_builds_fetch_never_queues_behind_the_prefetch() {
    let w = World::new();
    let ws_a = filled_bucket(&w);
    let proxy = Proxy::start(&w.s3.endpoint);
    proxy.set_delay(Duration::from_millis(150));
    let cache_b = w.path("cache-b");
    let d = start_behind(&w, &cache_b, &proxy, "2");
    // The last crate of the Cargo.lock: the prefetch reaches it last.
    let r = ask(&w, &cache_b, &proxy, &ws_a, "macros");
    assert!(
        r["ok"] == true && r["entries"].as_u64().unwrap_or(0) > 0,
        "{r}\n{}",
        daemon_log(&cache_b)
    );
    // The prefetch was under way and ends on its own.
    prefetched(&cache_b);
    ok(&w.stop(&d, &cache_b, &proxy.endpoint, "30s"));
}

/// The prefetch lists a Cargo.lock's crates in build order, those
/// compiled last first, so a prefetch slower than the build stays ahead
/// of it: in the fixture `app` depends on `beta`, which depends on
/// `alpha`; `alpha`, `genlib` and `macros` depend on nothing here. With
/// one prefetch connection the listings come one by one: `beta` before
/// the others (alphabetical order would start with `alpha`). `app` is
/// the build's own request.
#[test]
fn the_prefetch_takes_the_crates_compiled_last_first() {
    let w = World::new();
    let ws_a = filled_bucket(&w);
    let proxy = Proxy::start(&w.s3.endpoint);
    proxy.set_delay(Duration::from_millis(20));
    let cache_b = w.path("cache-b");
    let d = start_behind(&w, &cache_b, &proxy, "2");
    let r = ask(&w, &cache_b, &proxy, &ws_a, "app");
    assert!(r["ok"] == true, "{r}\n{}", daemon_log(&cache_b));
    prefetched(&cache_b);
    let listed: Vec<String> = proxy
        .seen()
        .iter()
        .filter_map(|s| s.list_prefix.as_deref())
        .filter_map(|p| p.trim_end_matches('/').rsplit('/').next())
        .filter(|c| ["alpha", "beta", "genlib", "macros"].contains(c))
        .map(str::to_string)
        .collect();
    assert_eq!(
        listed,
        ["beta", "alpha", "genlib", "macros"],
        "{}",
        daemon_log(&cache_b)
    );
    ok(&w.stop(&d, &cache_b, &proxy.endpoint, "30s"));
}

/// A dependency's compile starts the prefetch of the build's Cargo.lock
/// (found from the directory cargo runs in), not only a workspace
/// member's: members compile last, after every dependency. Runner B
/// holds `app`'s entry alone, so `app` hits locally and never asks the
/// daemon; the prefetch starts anyway, from `alpha`'s or `macros`'s
/// request.
#[test]
fn a_dependencys_compile_starts_the_prefetch() {
    let w = World::new();
    let ep = w.s3.endpoint.clone();
    let (ws_a, cache_a) = (w.fixture("ws", "a"), w.path("cache-a"));
    let d = w.start(&cache_a, &ep);
    ok(&w.build(&ws_a, &cache_a, &ep, &[]).output().unwrap());
    ok(&w.stop(&d, &cache_a, &ep, "1m"));

    let (ws_b, cache_b) = (w.fixture("ws", "b"), w.path("cache-b"));
    let build_app = |target: &str| {
        let mut c = cargo_through_kache(&ws_b, &w.path(target), &cache_b, &["build", "-p", "app"]);
        w.s3.configure_at(&mut c, &ep);
        c.output().unwrap()
    };
    // B's store gets app's entry (and its dependencies', purged again).
    let d = w.start(&cache_b, &ep);
    ok(&build_app("t1"));
    ok(&w.stop(&d, &cache_b, &ep, "1m"));
    for c in ["alpha", "beta", "genlib", "macros"] {
        ok(&w.kache_at(&cache_b, &ep, &["purge", "--crate-name", c]));
    }
    let kept = entries(&cache_b);
    assert!(
        !kept.is_empty() && kept.iter().all(|(c, _)| c == "app"),
        "{kept:?}"
    );
    let _ = results(&cache_b);
    let _ = fs::remove_file(cache_b.join("daemon/log"));

    let d = w.start(&cache_b, &ep);
    ok(&build_app("t2"));
    let ev = fs::read_to_string(cache_b.join("events.jsonl")).unwrap();
    let app: Vec<&str> = ev
        .lines()
        .filter(|l| l.contains("\"crate\":\"app\""))
        .collect();
    assert!(
        app.len() == 1 && app[0].contains("\"local_hit\""),
        "app must hit locally, never asking the daemon: {ev}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon_log(&cache_b).contains("prefetched 5 crate(s)") {
        assert!(
            Instant::now() < deadline,
            "no prefetch started: {}",
            daemon_log(&cache_b)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&w.stop(&d, &cache_b, &ep, "1m"));
}
