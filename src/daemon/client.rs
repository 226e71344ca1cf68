/*!
Talking to the daemon: the wrapper's two hooks and the `kache daemon
start | stop | status` commands.

The hooks never fail a build and cost nothing measurable without a
daemon: no remote configured means no system call at all. Otherwise they
run on a local miss only (a compile follows, tens of milliseconds at
least): one `stat` of the unresponsive stamp, one empty marker file
(about 0.1 ms), and at most one `connect` per wrapper process, which
fails at once (ENOENT or ECONNREFUSED) when no daemon runs (about 6 µs).
The upload marker is written first, so the upload survives whatever
happens to the daemon.
*/

use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

use super::protocol::{self, FetchReply, Request, Status, StopReply};
use super::{paths, private_dir};
use crate::config::{Config, WrapperConfig};
use crate::store::pending::{pending_dir, pending_markers};
use crate::store::{CacheKey, CrateName, Store};
use crate::units::parse_duration;

/// Autostart is tried at most this often per store.
const AUTOSTART_EVERY: Duration = Duration::from_secs(10);
/// After a fetch found the daemon unresponsive, compiles skip asking for
/// this long (the daemon's own breaker covers a slow remote; this covers
/// a daemon that accepts but does not answer: stopped, overloaded).
const UNRESPONSIVE_FOR: Duration = Duration::from_secs(30);
/// A detached daemon's log is rotated (once) past this size.
const LOG_MAX: u64 = 4 << 20;

/// Set once a connect failed: a wrapper process pays one failed connect
/// at most.
static ABSENT: AtomicBool = AtomicBool::new(false);

/// After a miss's entry is published: records the upload under
/// `pending/` and tells the daemon, without waiting for it.
pub(crate) fn after_store(
    cfg: &WrapperConfig,
    store: &Store,
    crate_name: &CrateName,
    key: &CacheKey,
) {
    let Some(remote) = &cfg.remote else {
        return;
    };
    // A read-only runner never uploads: nothing to record.
    if cfg.read_only {
        return;
    }
    let dir = pending_dir(store.root(), remote).join(crate_name);
    if fs::create_dir_all(&dir).is_err() || File::create(dir.join(key)).is_err() {
        return;
    }
    let Some(mut s) = connect(cfg, store) else {
        return;
    };
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let req = Request::Upload {
        remote: remote.clone(),
        crate_name: crate_name.clone(),
        key: key.clone(),
    };
    let _ = send(&mut s, &req);
}

/// On a local miss: asks the daemon to bring the crate's entries in from
/// the remote, waiting at most `cache.daemon_wait`. True if the store may
/// now hold a matching entry (the caller looks up again).
pub(crate) fn remote_fetch(
    cfg: &WrapperConfig,
    store: &Store,
    crate_name: &CrateName,
    toolchain: Option<String>,
) -> bool {
    let Some(remote) = &cfg.remote else {
        return false;
    };
    if cfg.daemon_wait.is_zero() {
        return false;
    }
    let deadline = Instant::now() + cfg.daemon_wait;
    let p = paths(store.root());
    if fresh(&p.unresponsive, UNRESPONSIVE_FOR) {
        return false;
    }
    let Some(mut s) = connect(cfg, store) else {
        return false;
    };
    let workspace = build_dir();
    let req = Request::Fetch {
        remote: remote.clone(),
        crate_name: crate_name.clone(),
        workspace,
        version: std::env::var("CARGO_PKG_VERSION")
            .ok()
            .filter(|v| crate::store::entry::valid_component(v)),
        toolchain,
        wait_ms: crate::units::millis(cfg.daemon_wait),
        trusted: cfg.trusted.iter().map(ToString::to_string).collect(),
    };
    let _ = s.set_write_timeout(Some(cfg.daemon_wait));
    if send(&mut s, &req).is_err() {
        return false;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
        return false;
    }
    match protocol::read_line(BufReader::new(&s)) {
        Ok(l) => serde_json::from_str::<FetchReply>(&l).is_ok_and(|r| r.entries > 0),
        Err(e) => {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                stamp(&p.unresponsive);
            }
            false
        }
    }
}

/// Where the daemon looks for this build's Cargo.lock (to prefetch its
/// crates): a workspace member's manifest dir, else the directory cargo
/// runs in, when the wrapper's parent is the cargo that set `$CARGO`.
/// Members compile last, so the prefetch must start at the first
/// dependency; a dependency's own manifest dir will not do, as it may
/// hold a Cargo.lock of its own, which is not this build's.
fn build_dir() -> Option<String> {
    let member = std::env::var_os("CARGO_PRIMARY_PACKAGE")
        .and(std::env::var("CARGO_MANIFEST_DIR").ok())
        .filter(|d| d.starts_with('/'));
    if member.is_some() {
        return member;
    }
    let cargo = fs::canonicalize(std::env::var_os("CARGO")?).ok()?;
    let parent = std::os::unix::process::parent_id();
    let exe = fs::read_link(format!("/proc/{parent}/exe")).ok()?;
    if exe != cargo {
        return None;
    }
    let cwd = fs::read_link(format!("/proc/{parent}/cwd")).ok()?;
    cwd.to_str()
        .filter(|d| d.starts_with('/'))
        .map(str::to_string)
}

/// Whether the file at `p` was stamped less than `d` ago.
fn fresh(p: &Path, d: Duration) -> bool {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .is_ok_and(|t| SystemTime::now().duration_since(t).is_ok_and(|age| age < d))
}

/// Creates `p` if needed and sets its mtime to now.
fn stamp(p: &Path) -> bool {
    File::create(p)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .is_ok()
}

fn send(s: &mut UnixStream, req: &Request) -> std::io::Result<()> {
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    s.write_all(line.as_bytes())
}

/// Connects to the store's daemon; without one, starts it if
/// `cache.daemon_autostart` says so (at most every `AUTOSTART_EVERY`),
/// and returns `None` (this compile does not wait for it).
fn connect(cfg: &WrapperConfig, store: &Store) -> Option<UnixStream> {
    if ABSENT.load(Ordering::Relaxed) {
        return None;
    }
    let p = paths(store.root());
    if let Ok(s) = dial(&p.sock) {
        Some(s)
    } else {
        ABSENT.store(true, Ordering::Relaxed);
        if cfg.daemon_autostart {
            autostart(store);
        }
        None
    }
}

fn autostart(store: &Store) {
    let p = paths(store.root());
    if private_dir(&p.dir).is_err() {
        return;
    }
    if fresh(&p.autostart, AUTOSTART_EVERY) || !stamp(&p.autostart) {
        return;
    }
    // The daemon itself refuses to run twice (it holds a lock).
    let _ = spawn_detached(store.root());
}

/// Starts `kache daemon` in its own process group, stdio away from the
/// caller's (cargo reads a wrapper's pipes until EOF), stderr to the log.
fn spawn_detached(root: &Path) -> Result<std::process::Child> {
    // It runs from `/`, holding no directory busy: paths it is given
    // must not be relative.
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let p = paths(&root);
    if fs::metadata(&p.log).is_ok_and(|m| m.len() > LOG_MAX) {
        let _ = fs::rename(&p.log, p.log.with_extension("old"));
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .with_context(|| format!("cannot open {}", p.log.display()))?;
    let exe = std::env::current_exe().context("cannot find the kache binary")?;
    let mut cmd = Command::new(exe);
    for var in ["KACHE_CONFIG", "AWS_SHARED_CREDENTIALS_FILE"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            cmd.env(
                var,
                std::path::absolute(PathBuf::from(&v)).unwrap_or(v.into()),
            );
        }
    }
    cmd.arg("daemon")
        .current_dir("/")
        .env("KACHE_CACHE_DIR", &root)
        .env_remove("KACHE_ACTIVE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot open the daemon log")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start kache daemon")
}

/// Connects to the daemon's socket, if this user's process serves it:
/// a socket another user's process listens on (planted, or moved into
/// the store) is never told what is built or asked for an entry.
fn dial(sock: &Path) -> std::io::Result<UnixStream> {
    let s = UnixStream::connect(sock)?;
    let uid = super::peer::peer_uid(&s)?;
    if uid != crate::store::euid() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is served by uid {uid}, not by this user",
                sock.display()
            ),
        ));
    }
    Ok(s)
}

/// One request, one reply line, within `timeout`.
fn ask(root: &Path, req: &Request, timeout: Duration) -> Result<String> {
    let p = paths(root);
    let mut s =
        dial(&p.sock).with_context(|| format!("no daemon answers on {}", p.sock.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    send(&mut s, req)?;
    protocol::read_line(BufReader::new(&s)).context("the daemon did not answer")
}

/// Whether a daemon answers for the store at `root`.
pub(crate) fn running(root: &Path) -> bool {
    ask_status(root).is_ok()
}

fn ask_status(root: &Path) -> Result<Status> {
    let line = ask(root, &Request::Status, Duration::from_secs(5))?;
    serde_json::from_str(&line).map_err(|_| anyhow!("unexpected answer from the daemon"))
}

/// `kache daemon start`.
pub(crate) fn start(cfg: &Config) -> Result<ExitCode> {
    let root = &cfg.cache_dir.value;
    if cfg.remote_identity().is_none() {
        bail!(
            "no remote configured: the daemon needs an S3 bucket (KACHE_S3_BUCKET or cache.remote.bucket)"
        );
    }
    if let Ok(st) = ask_status(root) {
        println!("kache daemon already running (pid {})", st.pid);
        return Ok(ExitCode::SUCCESS);
    }
    Store::open(root)?;
    let p = paths(root);
    private_dir(&p.dir)?;
    let log_start = fs::metadata(&p.log).map_or(0, |m| m.len());
    let mut child = spawn_detached(root)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(st) = ask_status(root) {
            println!(
                "kache daemon started (pid {}) for {}; log: {}",
                st.pid,
                st.remote,
                p.log.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            // Another `start` may have won the race: its daemon answers.
            if let Ok(st) = ask_status(root) {
                println!("kache daemon already running (pid {})", st.pid);
                return Ok(ExitCode::SUCCESS);
            }
            let log = fs::read(&p.log).unwrap_or_default();
            let tail = String::from_utf8_lossy(log.get(log_start as usize..).unwrap_or_default());
            bail!("kache daemon exited at once ({status}): {}", tail.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "kache daemon did not answer within 15 s (pid {}); see {}",
        child.id(),
        p.log.display()
    )
}

/// `kache daemon stop`: drains, then waits for the process to go.
pub(crate) fn stop(cfg: &Config, timeout: &str) -> Result<ExitCode> {
    let root = &cfg.cache_dir.value;
    let t = parse_duration(timeout)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            anyhow!("invalid --timeout `{timeout}`: expected a duration such as 30s or 5m")
        })?;
    let p = paths(root);
    // What a build is still storing behind it (background stores, traced
    // build-script twins) is uploaded before the daemon goes.
    if dial(&p.sock).is_ok() {
        Store::at(root).settle_for_upload();
    }
    let line = match ask(
        root,
        &Request::Stop {
            timeout_ms: crate::units::millis(t),
        },
        t + Duration::from_secs(30),
    ) {
        Ok(l) => l,
        Err(_) if dial(&p.sock).is_err() => {
            let left = cfg
                .remote_identity()
                .map_or(0, |id| pending_markers(&pending_dir(root, &id)).len());
            println!("no kache daemon running");
            if left > 0 {
                eprintln!(
                    "warning: {left} upload(s) pending: run `kache daemon start` or `kache sync --push`"
                );
                return Ok(ExitCode::from(1));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    let r: StopReply =
        serde_json::from_str(&line).map_err(|_| anyhow!("unexpected answer from the daemon"))?;
    // The daemon holds its lock until it exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    if let Ok(f) = File::options().write(true).open(&p.lock) {
        while Instant::now() < deadline {
            if f.try_lock().is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "kache daemon stopped: {} uploaded, {} pending",
        r.uploads_done, r.pending
    );
    if r.pending > 0 || !r.drained {
        eprintln!(
            "error: {} upload(s) not done (kept in {}; they go at the next start or with `kache sync --push`)",
            r.pending,
            root.join("pending").display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kache daemon status [--json]`.
pub(crate) fn status(cfg: &Config, json: bool) -> Result<ExitCode> {
    let root = &cfg.cache_dir.value;
    let Ok(st) = ask_status(root) else {
        if json {
            println!("{}", serde_json::json!({ "running": false }));
        } else {
            println!("kache daemon: not running (store {})", root.display());
        }
        return Ok(ExitCode::from(1));
    };
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["running"] = serde_json::Value::Bool(true);
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "kache daemon: running (pid {}, up {}s)",
        st.pid, st.uptime_secs
    )?;
    writeln!(out, "store:     {}", st.store)?;
    writeln!(out, "remote:    {}", st.remote)?;
    if !st.trust.is_empty() {
        writeln!(out, "trust:     {}", st.trust)?;
    }
    writeln!(
        out,
        "uploads:   {} queued ({} running), {} done, {} skipped, {} failed ({} failed attempts)",
        st.queue,
        st.uploading,
        st.uploads_done,
        st.uploads_skipped,
        st.uploads_failed,
        st.upload_errors
    )?;
    writeln!(
        out,
        "fetches:   {} remote hits, {} misses, {} entries fetched{}",
        st.remote_hits,
        st.remote_misses,
        st.entries_fetched,
        if st.refused > 0 {
            format!(", {} refused (not signed by a trusted key)", st.refused)
        } else {
            String::new()
        }
    )?;
    if let Some(ms) = st.fetch_ms {
        writeln!(
            out,
            "pace:      a crate's fetch takes {ms} ms; {} requests answered at once (compiling was faster)",
            st.not_waited
        )?;
    }
    if st.paused_secs > 0 {
        writeln!(
            out,
            "remote:    paused for {}s after a failure",
            st.paused_secs
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures: what the hooks cost a wrapper when no daemon runs
    /// (`cargo test --release --bin kache bench_hooks -- --ignored
    /// --nocapture`).
    #[test]
    #[ignore = "benchmark"]
    fn bench_hooks_without_a_daemon() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let mut cfg = WrapperConfig {
            cache_dir: d.path().to_path_buf(),
            cache_executables: true,
            cache_c: true,
            cache_build_scripts: true,
            trace_behind: false,
            background_store: true,
            max_size: 50 << 30,
            remote: None,
            daemon_autostart: false,
            daemon_wait: Duration::from_secs(2),
            never_cache: Vec::new(),
            inputs: std::collections::BTreeMap::new(),
            read_only: false,
            trusted: Vec::new(),
        };
        let n = 2000u32;
        let key = |i: u32| CacheKey::of(&blake3::hash(&i.to_le_bytes()));
        let time = |f: &mut dyn FnMut(u32)| {
            let t0 = Instant::now();
            for i in 0..n {
                ABSENT.store(false, Ordering::Relaxed);
                f(i);
            }
            t0.elapsed() / n
        };
        let foo = CrateName::parse("foo").unwrap();
        let none_fetch = time(&mut |_| assert!(!remote_fetch(&cfg, &store, &foo, None)));
        let none_store = time(&mut |i| after_store(&cfg, &store, &foo, &key(i)));
        cfg.remote = Some("http://127.0.0.1:1|r|b|p".into());
        let fetch = time(&mut |_| assert!(!remote_fetch(&cfg, &store, &foo, None)));
        let store_ = time(&mut |i| after_store(&cfg, &store, &foo, &key(i)));
        eprintln!(
            "per call without a daemon: no remote: fetch {none_fetch:?}, store {none_store:?}; \
             remote configured: fetch {fetch:?} (one failed connect), store {store_:?} \
             (marker file + one failed connect)"
        );
    }
}
