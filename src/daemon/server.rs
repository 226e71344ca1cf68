/*!
The daemon process itself: it takes the store's lock, binds the socket,
starts the jobs (`upload`, `fetch`, `watch`) and serves connections
until a stop request.

Each connection gets a short-lived thread (at most `MAX_CONNS` at once)
and carries one JSON line each way (`protocol`); it is refused unless
the peer's uid is ours. State is owned by `Daemon`, behind an `Arc`
shared by every thread; each job's part of it is its own.
*/

use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::fetch::{Ask, Fetches};
use super::protocol::{self, Request, Status};
use super::shared::{Live, Shared, get};
use super::upload::Uploads;
use super::{Paths, log, paths, peer, private_dir, watch};
use crate::config::Config;
use crate::store::Store;

/// Connections handled at once; more are closed unanswered.
const MAX_CONNS: usize = 256;

struct Daemon {
    shared: Arc<Shared>,
    uploads: Arc<Uploads>,
    fetches: Arc<Fetches>,
    paths: Paths,
    uid: u32,
    started: Instant,
    /// Connections being served.
    conns: AtomicUsize,
}

/// Runs the daemon in the foreground until `kache daemon stop`.
pub(crate) fn serve(cfg: Config) -> Result<ExitCode> {
    let store = Store::open(&cfg.cache_dir.value)?;
    let live = Live::new(&cfg, store.root())?;
    let p = paths(store.root());
    private_dir(&p.dir)?;
    let lock_file = lock_store(&p, &store)?;
    let listener = listen(&p)?;
    let conc = cfg.s3_concurrency.value;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(conc)
        .thread_name(|i| format!("kache-fetch-{i}"))
        .build()
        .context("cannot start the fetch threads")?;
    log(&format!(
        "pid {} serving store {} for {} (s3_concurrency {conc}; {})",
        std::process::id(),
        store.root().display(),
        live.shown,
        live.trust_line()
    ));
    if !live.trust.trusted.is_empty() && store.has_unverified() {
        log(
            "this store holds entries pulled without verification (before trusted keys were set); `kache gc --verify` removes them",
        );
    }
    let d = Arc::new(Daemon {
        shared: Arc::new(Shared::new(store, live, pool, conc)),
        uploads: Arc::default(),
        fetches: Arc::default(),
        paths: p,
        uid: crate::store::euid(),
        started: Instant::now(),
        conns: AtomicUsize::new(0),
    });
    start_workers(&d)?;
    d.uploads.replay(&d.shared.live());
    accept(&d, &listener);
    let code = if d.uploads.left() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    let _ = fs::remove_file(&d.paths.sock);
    let _ = fs::remove_file(&d.paths.pid);
    log("stopped");
    drop(lock_file);
    Ok(code)
}

/// Takes the store's daemon lock, held for as long as the returned file
/// is open; fails when another daemon holds it.
fn lock_store(p: &Paths, store: &Store) -> Result<File> {
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p.lock)
        .with_context(|| format!("cannot open {}", p.lock.display()))?;
    match lock_file.try_lock() {
        Ok(()) => Ok(lock_file),
        Err(fs::TryLockError::WouldBlock) => {
            let pid = fs::read_to_string(&p.pid).unwrap_or_default();
            bail!(
                "a daemon already runs for the store {} (pid {})",
                store.root().display(),
                pid.trim()
            );
        }
        Err(fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", p.lock.display()))
        }
    }
}

/// Binds the socket, open to this user only, and writes the pid file.
/// Called with the lock held: a socket file left behind is stale.
fn listen(p: &Paths) -> Result<UnixListener> {
    let _ = fs::remove_file(&p.sock);
    let listener = UnixListener::bind(&p.sock)
        .with_context(|| format!("cannot listen on {}", p.sock.display()))?;
    fs::set_permissions(&p.sock, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", p.sock.display()))?;
    fs::write(&p.pid, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", p.pid.display()))?;
    Ok(listener)
}

/// Starts the upload threads, one a unit of `s3_concurrency`, and the
/// config watcher.
fn start_workers(d: &Daemon) -> Result<()> {
    for i in 0..d.shared.conc {
        let (sh, ups) = (Arc::clone(&d.shared), Arc::clone(&d.uploads));
        std::thread::Builder::new()
            .name(format!("kache-upload-{i}"))
            .spawn(move || ups.work(&sh))
            .context("cannot start the upload threads")?;
    }
    let (sh, ups, fetches) = (
        Arc::clone(&d.shared),
        Arc::clone(&d.uploads),
        Arc::clone(&d.fetches),
    );
    std::thread::Builder::new()
        .name("kache-watch".into())
        .spawn(move || watch::watch(&sh, &ups, &fetches))
        .context("cannot start the config watcher")?;
    Ok(())
}

/// Serves each connection on a thread of its own, up to `MAX_CONNS` at
/// once, until a stop request sets `quit`.
fn accept(d: &Arc<Daemon>, listener: &UnixListener) {
    for conn in listener.incoming() {
        if d.shared.quitting() {
            break;
        }
        let s = match conn {
            Ok(s) => s,
            Err(e) => {
                log(&format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if d.conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
            d.conns.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let daemon = Arc::clone(d);
        let spawned = std::thread::Builder::new()
            .name("kache-conn".into())
            .spawn(move || {
                handle(&daemon, s);
                daemon.conns.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            d.conns.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn reply(s: &mut UnixStream, v: &impl serde::Serialize) {
    if let Ok(mut line) = serde_json::to_string(v) {
        line.push('\n');
        let _ = s.write_all(line.as_bytes());
    }
}

fn handle(d: &Daemon, mut s: UnixStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    match peer::peer_uid(&s) {
        Ok(uid) if uid == d.uid => {}
        Ok(uid) => {
            log(&format!("refused a connection from uid {uid}"));
            return;
        }
        Err(e) => {
            log(&format!("refused a connection: cannot read its uid: {e}"));
            return;
        }
    }
    let req = match protocol::read_request(BufReader::new(&s)) {
        Ok(r) => r,
        Err(e) => {
            reply(&mut s, &serde_json::json!({ "ok": false, "error": e }));
            return;
        }
    };
    match req {
        Request::Upload {
            remote,
            crate_name,
            key,
        } => {
            let live = d.shared.live();
            if remote == live.id {
                d.fetches.uploaded(&d.shared, &crate_name, &key);
                d.uploads.enqueue(&live, crate_name, key);
            }
        }
        Request::Fetch {
            remote,
            crate_name,
            workspace,
            version,
            toolchain,
            wait_ms,
            trusted,
        } => {
            d.fetches.set_toolchain(toolchain);
            // Checked by `validate`.
            let trusted = trusted
                .iter()
                .filter_map(|k| crate::trust::parse_trusted(k).ok())
                .collect();
            let r = d.fetches.request(
                &d.shared,
                Ask {
                    remote: &remote,
                    crate_name: &crate_name,
                    workspace,
                    version: version.as_deref(),
                    wait_ms,
                    trust: Arc::new(trusted),
                },
            );
            reply(&mut s, &r);
        }
        Request::Status => reply(&mut s, &status(d)),
        Request::Stop { timeout_ms } => {
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let r = d
                .uploads
                .drain(&d.shared, Duration::from_millis(timeout_ms));
            reply(&mut s, &r);
            drop(s);
            d.shared.quit.store(true, Ordering::SeqCst);
            d.uploads.wake();
            // Wake the accept loop.
            let _ = UnixStream::connect(&d.paths.sock);
        }
    }
}

fn status(d: &Daemon) -> Status {
    let live = d.shared.live();
    let (queued, running) = d.uploads.counts();
    let (u, f) = (&d.uploads, &d.fetches);
    Status {
        pid: std::process::id(),
        store: d.shared.store.root().display().to_string(),
        remote: live.shown.clone(),
        trust: live.trust_line(),
        uptime_secs: d.started.elapsed().as_secs(),
        s3_concurrency: d.shared.conc,
        queue: queued + running,
        uploading: running,
        uploads_done: get(&u.done),
        uploads_skipped: get(&u.skipped),
        uploads_failed: get(&u.failed),
        upload_errors: get(&u.errors),
        remote_hits: get(&f.hits),
        remote_misses: get(&f.misses),
        refused: get(&f.refused),
        entries_fetched: get(&f.entries_fetched),
        paused_secs: d.shared.breaker.paused().map_or(0, |p| p.as_secs().max(1)),
        fetch_ms: f.fetch_time().map(crate::units::millis),
        not_waited: get(&f.not_waited),
        config_reloads: get(&d.shared.config_reloads),
    }
}
