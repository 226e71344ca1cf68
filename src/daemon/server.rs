/*!
The daemon process: accept loop, upload workers, fetches, the config
watcher. See the module doc of `daemon` for the design.

Thread ownership: `Shared` is the only state, behind `Arc`. The upload
queue is one `Mutex<Queue>` with a `Condvar` (jobs carry a not-before
time for retries, which a plain channel cannot express); fetch
coalescing is one `Mutex<HashMap>` with its own `Condvar`. Remote
requests run on the upload workers (`s3_concurrency` threads) and on the
fetch pool (a rayon pool of the same size, as `kache sync` uses), and
every request holds one of the `s3_concurrency` permits while in flight.
*/

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;

use super::protocol::{self, FetchReply, Request, Status, StopReply};
use super::{Paths, paths, peer, private_dir};
use crate::config::{Config, config_path};
use crate::lockfile;
use crate::remote::s3::S3Remote;
use crate::remote::{Listed, Remote, RemoteError, layout};
use crate::store::pending::{pending_dir, pending_markers};
use crate::store::{CacheKey, CrateName, Store, now_secs};
use crate::transfer::exec::{self, Ctx};
use crate::transfer::plan::{self, Direction, Transfer};
use crate::transfer::report::Outcome;
use crate::trust::Policy;

/// Connections handled at once; more are closed unanswered.
const MAX_CONNS: usize = 256;
/// A crate fetched this recently is not listed again.
const FRESH: Duration = Duration::from_secs(30);
/// What the bucket holds for a crate is listed again after this long.
const KNOWN_TTL: Duration = Duration::from_mins(10);
/// Attempts per upload (each after the S3 layer's own retries).
const UPLOAD_ATTEMPTS: u32 = 4;
const PAUSE_MIN: Duration = Duration::from_secs(30);
const PAUSE_MAX: Duration = Duration::from_mins(5);
/// How often the config file is checked.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How often `pending/` is read again for uploads nobody announced.
const RESCAN_EVERY: Duration = Duration::from_secs(30);

fn log(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "[{}] kache daemon: {msg}", now_secs());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The remote as configured now; replaced when the config file changes.
struct Live {
    id: String,
    /// `s3://bucket/prefix at endpoint`, for messages.
    shown: String,
    remote: S3Remote,
    prefix: String,
    level: i32,
    pending: PathBuf,
    /// What the bucket holds, by crate (listed at most every `KNOWN_TTL`).
    known: Mutex<HashMap<CrateName, (Instant, HashSet<CacheKey>)>>,
    /// Entries brought in, by crate.
    fetched: Mutex<HashMap<CrateName, u64>>,
    /// Signing uploads, verifying remote hits.
    trust: Policy,
    /// Never upload (pull-request runners).
    read_only: bool,
}

impl Live {
    fn new(cfg: &Config, root: &Path) -> Result<Live> {
        let id = cfg.remote_identity().ok_or_else(|| {
            anyhow!("no remote configured: the daemon needs an S3 bucket (KACHE_S3_BUCKET or cache.remote.bucket)")
        })?;
        let remote = S3Remote::from_config(cfg)?;
        let trust = cfg.trust_policy(true)?;
        let endpoint = id.split('|').next().unwrap_or_default();
        let shown = format!(
            "{} at {endpoint}",
            remote.describe(&layout::root_prefix(&cfg.prefix.value))
        );
        Ok(Live {
            pending: pending_dir(root, &id),
            id,
            shown,
            remote,
            prefix: cfg.prefix.value.clone(),
            level: cfg.compression_level.value,
            known: Mutex::default(),
            fetched: Mutex::default(),
            trust,
            read_only: cfg.read_only.value,
        })
    }

    /// How it signs and verifies, for the log (never the key itself).
    fn trust_line(&self) -> String {
        let sign = match &self.trust.signer {
            _ if self.read_only => "read-only: never uploads".to_string(),
            Some(k) => format!("uploads signed by `{}`", k.name()),
            None => "uploads unsigned".to_string(),
        };
        let verify = if self.trust.trusted.is_empty() {
            "remote hits not verified".to_string()
        } else {
            format!(
                "remote hits verified against {} trusted key(s)",
                self.trust.trusted.len()
            )
        };
        format!("{sign}; {verify}")
    }
}

/// A counting semaphore where high-priority takers go first.
struct Permits {
    state: Mutex<(usize, usize)>,
    cv: Condvar,
}

struct Permit<'a>(&'a Permits);

impl Permits {
    fn new(n: usize) -> Permits {
        Permits {
            state: Mutex::new((n, 0)),
            cv: Condvar::new(),
        }
    }

    fn acquire(&self, high: bool) -> Permit<'_> {
        let mut s = lock(&self.state);
        if high {
            s.1 += 1;
        }
        while s.0 == 0 || (!high && s.1 > 0) {
            s = self
                .cv
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        s.0 -= 1;
        if high {
            s.1 -= 1;
        }
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).0 += 1;
        self.0.cv.notify_all();
    }
}

/// The shared S3 remote seen through the permits.
struct Bounded<'a> {
    inner: &'a S3Remote,
    permits: &'a Permits,
    high: bool,
}

impl Remote for Bounded<'_> {
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError> {
        let _p = self.permits.acquire(self.high);
        self.inner.list(prefix)
    }
    fn get(&self, name: &str, dest: &Path) -> Result<u64, RemoteError> {
        let _p = self.permits.acquire(self.high);
        self.inner.get(name, dest)
    }
    fn put(&self, name: &str, src: &Path, len: u64) -> Result<(), RemoteError> {
        let _p = self.permits.acquire(self.high);
        self.inner.put(name, src, len)
    }
    fn describe(&self, name: &str) -> String {
        self.inner.describe(name)
    }
    fn get_bytes(&self, name: &str, limit: u64) -> Result<Vec<u8>, RemoteError> {
        let _p = self.permits.acquire(self.high);
        self.inner.get_bytes(name, limit)
    }
    fn put_bytes(&self, name: &str, bytes: &[u8], if_absent: bool) -> Result<(), RemoteError> {
        let _p = self.permits.acquire(self.high);
        self.inner.put_bytes(name, bytes, if_absent)
    }
    fn delete(&self, names: &[String]) -> Result<Vec<(String, String)>, RemoteError> {
        let _p = self.permits.acquire(self.high);
        self.inner.delete(names)
    }
}

struct Job {
    crate_name: CrateName,
    key: CacheKey,
    attempts: u32,
    not_before: Instant,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Queued or running, so a repeated notice is not queued twice.
    known: HashSet<(CrateName, CacheKey)>,
    running: usize,
}

#[derive(Default)]
struct Breaker {
    until: Option<Instant>,
    failures: u32,
}

#[derive(Default)]
struct Slot {
    running: bool,
    /// When a running fetch outlives a waiting build (`None`: a prefetch,
    /// which no build waits on).
    deadline: Option<Instant>,
    at: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    uploads_done: AtomicU64,
    uploads_skipped: AtomicU64,
    uploads_failed: AtomicU64,
    upload_errors: AtomicU64,
    remote_hits: AtomicU64,
    remote_misses: AtomicU64,
    /// Remote entries refused: not signed by a trusted key.
    refused: AtomicU64,
    entries_fetched: AtomicU64,
    config_reloads: AtomicU64,
}

struct Shared {
    store: Store,
    paths: Paths,
    uid: u32,
    started: Instant,
    conc: usize,
    live: Mutex<Arc<Live>>,
    permits: Permits,
    pool: rayon::ThreadPool,
    queue: Mutex<Queue>,
    queue_cv: Condvar,
    breaker: Mutex<Breaker>,
    slots: Mutex<HashMap<String, Slot>>,
    slots_cv: Condvar,
    prefetched: Mutex<HashSet<(PathBuf, u64)>>,
    /// The toolchain id the last build asked with: what a pull keeps.
    toolchain: Mutex<Option<String>>,
    conns: AtomicUsize,
    counters: Counters,
    quit: AtomicBool,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Shared {
    fn new(store: Store, paths: Paths, live: Live, pool: rayon::ThreadPool, conc: usize) -> Self {
        Self {
            store,
            paths,
            uid: peer::euid(),
            started: Instant::now(),
            conc,
            live: Mutex::new(Arc::new(live)),
            permits: Permits::new(conc),
            pool,
            queue: Mutex::default(),
            queue_cv: Condvar::new(),
            breaker: Mutex::default(),
            slots: Mutex::default(),
            slots_cv: Condvar::new(),
            prefetched: Mutex::default(),
            toolchain: Mutex::default(),
            conns: AtomicUsize::new(0),
            counters: Counters::default(),
            quit: AtomicBool::new(false),
        }
    }

    /// Uploads still queued or running.
    fn uploads_left(&self) -> bool {
        let q = lock(&self.queue);
        !q.jobs.is_empty() || q.running > 0
    }

    fn live(&self) -> Arc<Live> {
        Arc::clone(&lock(&self.live))
    }

    fn paused(&self) -> Option<Duration> {
        let b = lock(&self.breaker);
        b.until
            .and_then(|u| u.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    fn trip(&self, why: &str) {
        let mut b = lock(&self.breaker);
        if b.until.is_some_and(|u| u > Instant::now()) {
            return;
        }
        let d = PAUSE_MIN
            .saturating_mul(1 << b.failures.min(4))
            .min(PAUSE_MAX);
        b.failures += 1;
        b.until = Some(Instant::now() + d);
        log(&format!(
            "pausing remote requests for {}s: {why}",
            d.as_secs()
        ));
    }

    /// A request succeeded. Requests that were in flight when the
    /// breaker opened do not close it; it closes when its time is up.
    fn remote_ok(&self) {
        let mut b = lock(&self.breaker);
        if b.until.is_some_and(|u| u > Instant::now()) {
            return;
        }
        b.failures = 0;
        b.until = None;
    }

    fn reset_breaker(&self) {
        *lock(&self.breaker) = Breaker::default();
    }

    fn enqueue(&self, crate_name: CrateName, key: CacheKey) {
        if self.live().read_only {
            return;
        }
        let mut q = lock(&self.queue);
        if q.known.insert((crate_name.clone(), key.clone())) {
            q.jobs.push_back(Job {
                crate_name,
                key,
                attempts: 0,
                not_before: Instant::now(),
            });
            self.queue_cv.notify_one();
        }
    }

    /// Queues every upload recorded for `live`'s remote.
    fn replay(&self, live: &Live) {
        if live.read_only {
            return;
        }
        let found = pending_markers(&live.pending);
        if !found.is_empty() {
            log(&format!(
                "{} pending upload(s) found for {}",
                found.len(),
                live.shown
            ));
        }
        for (c, k) in found {
            self.enqueue(c, k);
        }
    }
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
    let shared = Arc::new(Shared::new(store, p, live, pool, conc));
    start_workers(&shared)?;
    shared.replay(&shared.live());
    accept(&shared, &listener);
    let code = if shared.uploads_left() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    let _ = fs::remove_file(&shared.paths.sock);
    let _ = fs::remove_file(&shared.paths.pid);
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
fn start_workers(shared: &Arc<Shared>) -> Result<()> {
    for i in 0..shared.conc {
        let s = Arc::clone(shared);
        std::thread::Builder::new()
            .name(format!("kache-upload-{i}"))
            .spawn(move || upload_worker(&s))
            .context("cannot start the upload threads")?;
    }
    let s = Arc::clone(shared);
    std::thread::Builder::new()
        .name("kache-watch".into())
        .spawn(move || watch_config(&s))
        .context("cannot start the config watcher")?;
    Ok(())
}

/// Serves each connection on a thread of its own, up to `MAX_CONNS` at
/// once, until a stop request sets `quit`.
fn accept(shared: &Arc<Shared>, listener: &UnixListener) {
    for conn in listener.incoming() {
        if shared.quit.load(Ordering::SeqCst) {
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
        if shared.conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
            shared.conns.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let sh = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("kache-conn".into())
            .spawn(move || {
                handle(&sh, s);
                sh.conns.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.conns.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn reply(s: &mut UnixStream, v: &impl serde::Serialize) {
    if let Ok(mut line) = serde_json::to_string(v) {
        line.push('\n');
        let _ = s.write_all(line.as_bytes());
    }
}

fn handle(shared: &Arc<Shared>, mut s: UnixStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    match peer::peer_uid(&s) {
        Ok(uid) if uid == shared.uid => {}
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
            if remote == shared.live().id {
                shared.enqueue(crate_name, key);
            }
        }
        Request::Fetch {
            remote,
            crate_name,
            workspace,
            version,
            toolchain,
            wait_ms,
        } => {
            if toolchain.is_some() {
                *lock(&shared.toolchain) = toolchain;
            }
            let r = fetch_request(
                shared,
                &remote,
                &crate_name,
                workspace,
                version.as_deref(),
                wait_ms,
            );
            if r.entries > 0 {
                add(&shared.counters.remote_hits, 1);
            } else {
                add(&shared.counters.remote_misses, 1);
            }
            reply(&mut s, &r);
        }
        Request::Status => reply(&mut s, &status(shared)),
        Request::Stop { timeout_ms } => {
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let r = drain(shared, Duration::from_millis(timeout_ms));
            reply(&mut s, &r);
            drop(s);
            shared.quit.store(true, Ordering::SeqCst);
            shared.queue_cv.notify_all();
            // Wake the accept loop.
            let _ = UnixStream::connect(&shared.paths.sock);
        }
    }
}

fn status(shared: &Shared) -> Status {
    let live = shared.live();
    let (queued, running) = {
        let q = lock(&shared.queue);
        (q.jobs.len() as u64, q.running as u64)
    };
    let c = &shared.counters;
    Status {
        pid: std::process::id(),
        store: shared.store.root().display().to_string(),
        remote: live.shown.clone(),
        trust: live.trust_line(),
        uptime_secs: shared.started.elapsed().as_secs(),
        s3_concurrency: shared.conc,
        queue: queued + running,
        uploading: running,
        uploads_done: get(&c.uploads_done),
        uploads_skipped: get(&c.uploads_skipped),
        uploads_failed: get(&c.uploads_failed),
        upload_errors: get(&c.upload_errors),
        remote_hits: get(&c.remote_hits),
        remote_misses: get(&c.remote_misses),
        refused: get(&c.refused),
        entries_fetched: get(&c.entries_fetched),
        paused_secs: shared.paused().map_or(0, |d| d.as_secs().max(1)),
        config_reloads: get(&c.config_reloads),
    }
}

/// Waits until no upload is queued or running, or `timeout`; retries
/// waiting for their backoff go now.
fn drain(shared: &Shared, timeout: Duration) -> StopReply {
    let deadline = Instant::now() + timeout;
    // Markers whose notice never came (written while no daemon
    // answered, e.g. by the compile that autostarted this one).
    rescan(shared);
    let mut q = lock(&shared.queue);
    let now = Instant::now();
    for j in &mut q.jobs {
        j.not_before = now;
    }
    shared.queue_cv.notify_all();
    while !(q.jobs.is_empty() && q.running == 0) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        q = shared
            .queue_cv
            .wait_timeout(q, left.min(Duration::from_millis(200)))
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
    let drained = q.jobs.is_empty() && q.running == 0;
    drop(q);
    StopReply {
        uploads_done: get(&shared.counters.uploads_done),
        pending: pending_markers(&shared.live().pending).len() as u64,
        drained,
    }
}

enum Up {
    Done,
    Skipped,
    Retry(String),
}

/// The nice value of the upload threads: background work that must not
/// take CPU from the build it follows (they still run at full speed on
/// an idle machine, as when `kache daemon stop` drains the queue).
const UPLOAD_NICE: libc::c_int = 19;

fn upload_worker(shared: &Shared) {
    peer::lower_priority(UPLOAD_NICE);
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if shared.quit.load(Ordering::SeqCst) {
                    return;
                }
                let now = Instant::now();
                let paused = shared.paused();
                let ready = if paused.is_none() {
                    q.jobs.iter().position(|j| j.not_before <= now)
                } else {
                    None
                };
                if let Some(i) = ready {
                    let j = q.jobs.remove(i).expect("index in range");
                    q.running += 1;
                    break j;
                }
                let next = q
                    .jobs
                    .iter()
                    .map(|j| j.not_before.saturating_duration_since(now))
                    .min()
                    .unwrap_or(Duration::from_secs(1));
                let wait = paused
                    .unwrap_or(next)
                    .clamp(Duration::from_millis(10), Duration::from_secs(1));
                q = shared
                    .queue_cv
                    .wait_timeout(q, wait)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
        };
        let live = shared.live();
        let res = upload(shared, &live, &job);
        let c = &shared.counters;
        let mut q = lock(&shared.queue);
        q.running -= 1;
        match res {
            Up::Done => {
                add(&c.uploads_done, 1);
                q.known.remove(&(job.crate_name, job.key));
            }
            Up::Skipped => {
                add(&c.uploads_skipped, 1);
                q.known.remove(&(job.crate_name, job.key));
            }
            Up::Retry(msg) => {
                add(&c.upload_errors, 1);
                let attempts = job.attempts + 1;
                if attempts >= UPLOAD_ATTEMPTS {
                    add(&c.uploads_failed, 1);
                    log(&format!(
                        "giving up on {}/{} for now (kept in pending/): {msg}",
                        job.crate_name, job.key
                    ));
                    q.known.remove(&(job.crate_name, job.key));
                } else {
                    log(&format!(
                        "upload of {}/{} failed, will retry: {msg}",
                        job.crate_name, job.key
                    ));
                    q.jobs.push_back(Job {
                        attempts,
                        not_before: Instant::now() + Duration::from_secs(2 << attempts),
                        ..job
                    });
                }
            }
        }
        drop(q);
        shared.queue_cv.notify_all();
    }
}

fn remove_marker(live: &Live, crate_name: &str, key: &str) {
    let _ = fs::remove_file(live.pending.join(crate_name).join(key));
}

/// What the bucket holds for `crate_name` (listed at most every
/// `KNOWN_TTL`).
fn remote_keys(
    live: &Live,
    remote: &dyn Remote,
    crate_name: &CrateName,
) -> Result<HashSet<CacheKey>, RemoteError> {
    if let Some((t, keys)) = lock(&live.known).get(crate_name)
        && t.elapsed() < KNOWN_TTL
    {
        return Ok(keys.clone());
    }
    let listed = remote.list(&layout::crate_prefix(&live.prefix, crate_name))?;
    let keys: HashSet<CacheKey> = plan::index(&live.prefix, listed)
        .remove(crate_name)
        .map(|m| m.into_keys().collect())
        .unwrap_or_default();
    lock(&live.known).insert(crate_name.clone(), (Instant::now(), keys.clone()));
    Ok(keys)
}

fn upload(shared: &Shared, live: &Live, job: &Job) -> Up {
    let (c, k) = (&job.crate_name, &job.key);
    if live.read_only {
        return Up::Skipped;
    }
    if !shared.store.contains(c, k) {
        remove_marker(live, c, k);
        return Up::Skipped;
    }
    let remote = Bounded {
        inner: &live.remote,
        permits: &shared.permits,
        high: false,
    };
    match remote_keys(live, &remote, c) {
        Ok(keys) if keys.contains(k) => {
            remove_marker(live, c, k);
            return Up::Skipped;
        }
        Ok(_) => {}
        Err(e) => {
            shared.trip(&e.message);
            return Up::Retry(format!("cannot list {}: {e}", remote.describe(c)));
        }
    }
    // Named as `kache sync --push` names it: with the entry's origin.
    let object = match shared.store.get(c, k) {
        Ok(Some(e)) => layout::entry_object(&live.prefix, c, k, e.origin.as_ref()),
        Ok(None) => {
            remove_marker(live, c, k);
            return Up::Skipped;
        }
        // Unreadable: the push reports it.
        Err(_) => layout::object_name(&live.prefix, c, k),
    };
    let ctx = Ctx {
        store: &shared.store,
        remote: &remote,
        prefix: &live.prefix,
        level: live.level,
        trust: &live.trust,
        stop: AtomicBool::new(false),
    };
    let t = Transfer {
        dir: Direction::Push,
        crate_name: c.clone(),
        key: k.clone(),
        size: 0,
        object,
    };
    match exec::push_one(&ctx, t) {
        Outcome::Done(..) => {
            shared.remote_ok();
            if let Some((_, keys)) = lock(&live.known).get_mut(c) {
                keys.insert(k.clone());
            }
            remove_marker(live, c, k);
            Up::Done
        }
        Outcome::Skipped(..) => {
            remove_marker(live, c, k);
            Up::Skipped
        }
        Outcome::Failed(_, m) | Outcome::Refused(_, m) | Outcome::Fatal(_, m) => {
            shared.trip(&m);
            Up::Retry(m)
        }
    }
}

fn fetch_request(
    shared: &Arc<Shared>,
    remote: &str,
    crate_name: &CrateName,
    workspace: Option<String>,
    version: Option<&str>,
    wait_ms: u64,
) -> FetchReply {
    let live = shared.live();
    if remote != live.id {
        return FetchReply {
            ok: false,
            entries: 0,
            error: Some("this daemon serves another remote".into()),
        };
    }
    if let Some(w) = workspace {
        prefetch(shared, &live, Path::new(&w));
    }
    let wait = Duration::from_millis(wait_ms);
    match fetch_crate(shared, &live, crate_name, version, wait) {
        Ok(()) => FetchReply {
            ok: true,
            entries: lock(&live.fetched).get(crate_name).copied().unwrap_or(0),
            error: None,
        },
        Err(e) => FetchReply {
            ok: false,
            entries: lock(&live.fetched).get(crate_name).copied().unwrap_or(0),
            error: Some(e),
        },
    }
}

/// The first request from a workspace pulls the crates of its
/// Cargo.lock in the background (once per Cargo.lock version).
fn prefetch(shared: &Arc<Shared>, live: &Arc<Live>, dir: &Path) {
    let Some(lock_path) = lockfile::find_from(dir) else {
        return;
    };
    let stamp = fs::metadata(&lock_path).map_or(0, |m| m.mtime() as u64);
    if !lock(&shared.prefetched).insert((lock_path.clone(), stamp)) {
        return;
    }
    let (sh, lv) = (Arc::clone(shared), Arc::clone(live));
    let _ = std::thread::Builder::new()
        .name("kache-prefetch".into())
        .spawn(move || {
            let crates: Vec<(CrateName, String)> = match lockfile::versions(&lock_path) {
                Ok(m) => m
                    .into_iter()
                    .filter_map(|(c, vs)| Some((CrateName::parse(&c)?, vs)))
                    .flat_map(|(c, vs)| vs.into_iter().map(move |v| (c.clone(), v)))
                    .collect(),
                Err(e) => {
                    log(&format!("cannot prefetch: {e:#}"));
                    return;
                }
            };
            let t0 = Instant::now();
            sh.pool.install(|| {
                crates.par_iter().with_max_len(1).for_each(|(c, v)| {
                    let _ = fetch_crate(&sh, &lv, c, Some(v), Duration::MAX);
                });
            });
            log(&format!(
                "prefetched {} crate(s) of {} in {} ms",
                crates.len(),
                lock_path.display(),
                t0.elapsed().as_millis()
            ));
        });
}

/// Brings the crate's remote entries into the store, unless it was done
/// within `FRESH` or the remote is paused. Concurrent callers for one
/// crate share one fetch. `wait` is how long the asking build waits
/// (`Duration::MAX`: a prefetch, which nobody waits on).
fn fetch_crate(
    shared: &Shared,
    live: &Live,
    crate_name: &CrateName,
    version: Option<&str>,
    wait: Duration,
) -> Result<(), String> {
    let slot_key = match version {
        Some(v) => format!("{crate_name}@{v}"),
        None => crate_name.to_string(),
    };
    let asked = Instant::now();
    let mine = asked.checked_add(wait);
    {
        let mut slots = lock(&shared.slots);
        loop {
            let now = Instant::now();
            if shared.paused().is_some() {
                return Err("remote paused after a failure or a slow answer".into());
            }
            // A fetch a build is still waiting for past its deadline:
            // the remote is slow; say so once instead of making every
            // compile wait.
            if slots
                .values()
                .any(|s| s.running && s.deadline.is_some_and(|d| d < now))
            {
                drop(slots);
                shared.trip("a fetch is taking longer than builds wait");
                return Err("remote slow".into());
            }
            let slot = slots.entry(slot_key.clone()).or_default();
            if !slot.running {
                if slot.at.is_some_and(|t| t.elapsed() < FRESH) {
                    return Ok(());
                }
                slot.running = true;
                slot.deadline = mine;
                break;
            }
            // A prefetch (on a fetch-pool thread) never waits for another
            // fetch: that one may need the pool's threads to finish.
            if mine.is_none() {
                return Ok(());
            }
            if mine.is_some_and(|d| d < now) || asked.elapsed() > Duration::from_mins(10) {
                return Err("timed out waiting for the fetch under way".into());
            }
            let left = mine.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
            slots = shared
                .slots_cv
                .wait_timeout(
                    slots,
                    left.clamp(Duration::from_millis(5), Duration::from_secs(1)),
                )
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
    let t0 = Instant::now();
    let res = fetch_now(shared, live, crate_name, version);
    {
        let mut slots = lock(&shared.slots);
        let slot = slots.entry(slot_key).or_default();
        slot.running = false;
        slot.deadline = None;
        slot.at = Some(Instant::now());
    }
    shared.slots_cv.notify_all();
    match &res {
        Err(e) => shared.trip(e),
        Ok(()) if t0.elapsed() > wait => shared.trip(&format!(
            "fetching {crate_name} took {} ms, more than the {} ms a build waits",
            t0.elapsed().as_millis(),
            wait.as_millis()
        )),
        Ok(()) => shared.remote_ok(),
    }
    res
}

fn fetch_now(
    shared: &Shared,
    live: &Live,
    crate_name: &CrateName,
    version: Option<&str>,
) -> Result<(), String> {
    let remote = Bounded {
        inner: &live.remote,
        permits: &shared.permits,
        high: true,
    };
    let prefix = layout::crate_prefix(&live.prefix, crate_name);
    let listed = remote
        .list(&prefix)
        .map_err(|e| format!("cannot list {}: {e}", remote.describe(&prefix)))?;
    let idx = plan::index(&live.prefix, listed);
    if let Some(keys) = idx.get(crate_name) {
        lock(&live.known).insert(
            crate_name.clone(),
            (Instant::now(), keys.keys().cloned().collect()),
        );
    }
    let local: HashSet<plan::EntryId> = shared
        .store
        .list_crate(crate_name)
        .map_err(|e| format!("{e:#}"))?
        .into_iter()
        .map(|e| (e.crate_name, e.key))
        .collect();
    // What `kache sync --pull` would keep for this crate and version.
    let filter = plan::PullFilter {
        crates: Some(std::iter::once(crate_name.to_string()).collect()),
        versions: version.map(|v| {
            std::iter::once((
                crate_name.to_string(),
                std::iter::once(v.to_string()).collect(),
            ))
            .collect()
        }),
        toolchain: lock(&shared.toolchain).clone(),
    };
    let (pulls, _left) = plan::plan_pull(&local, &idx, &filter);
    if pulls.is_empty() {
        return Ok(());
    }
    // Recorded before fetching (as `kache sync --pull` does), so a
    // `kache gc --remote` running now spares them.
    let used: Vec<plan::EntryId> = pulls
        .iter()
        .map(|t| (t.crate_name.clone(), t.key.clone()))
        .collect();
    if !live.read_only {
        crate::transfer::uses::record_use(&remote, &live.prefix, &used);
    }
    let ctx = Ctx {
        store: &shared.store,
        remote: &remote,
        prefix: &live.prefix,
        level: live.level,
        trust: &live.trust,
        stop: AtomicBool::new(false),
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    exec::run(&shared.pool, &ctx, pulls, tx);
    let mut imported = 0;
    let mut failed = None;
    for o in &rx {
        match o {
            Outcome::Done(..) => imported += 1,
            Outcome::Skipped(..) => {}
            // Not a failure of the remote (no pause): the build compiles
            // what was refused.
            Outcome::Refused(t, m) => {
                add(&shared.counters.refused, 1);
                log(&format!(
                    "remote hit {}/{} {m}",
                    t.crate_name,
                    crate::transfer::report::short(&t.key)
                ));
            }
            Outcome::Failed(_, m) | Outcome::Fatal(_, m) => failed = Some(m),
        }
    }
    if imported > 0 {
        add(&shared.counters.entries_fetched, imported);
        *lock(&live.fetched).entry(crate_name.clone()).or_default() += imported;
    }
    match failed {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

/// Queues recorded uploads that are not queued yet, quietly.
fn rescan(shared: &Shared) {
    for (c, k) in pending_markers(&shared.live().pending) {
        shared.enqueue(c, k);
    }
}

/// (mtime, size, inode) of the config file, `None` if absent.
fn config_stamp(p: Option<&Path>) -> Option<(SystemTime, u64, u64)> {
    let m = fs::metadata(p?).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Reloads the settings when the config file changes. The environment
/// is the daemon's own and does not change.
fn watch_config(shared: &Shared) {
    let path = config_path();
    let mut last = config_stamp(path.as_deref());
    let mut scanned = Instant::now();
    while !shared.quit.load(Ordering::SeqCst) {
        std::thread::sleep(WATCH_EVERY);
        if scanned.elapsed() >= RESCAN_EVERY {
            rescan(shared);
            scanned = Instant::now();
        }
        let now = config_stamp(path.as_deref());
        if now == last {
            continue;
        }
        last = now;
        let live = Config::load().and_then(|c| {
            if c.s3_concurrency.value != shared.conc {
                log("s3_concurrency changed: it takes effect at the next start");
            }
            Live::new(&c, shared.store.root())
        });
        match live {
            Ok(l) => {
                let l = Arc::new(l);
                log(&format!(
                    "config file changed: now serving {} ({})",
                    l.shown,
                    l.trust_line()
                ));
                let old = std::mem::replace(&mut *lock(&shared.live), Arc::clone(&l));
                if old.id != l.id {
                    // Their markers stay under the old remote's pending/.
                    let mut q = lock(&shared.queue);
                    q.jobs.clear();
                    q.known.clear();
                }
                add(&shared.counters.config_reloads, 1);
                lock(&shared.slots).clear();
                shared.reset_breaker();
                shared.replay(&l);
            }
            Err(e) => log(&format!(
                "config file changed but cannot be used, keeping the old settings: {e:#}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_bound_and_put_fetches_first() {
        let p = Arc::new(Permits::new(2));
        let inflight = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let order = Arc::new(Mutex::new(Vec::new()));
        // Hold both permits, queue low then high takers, release.
        let a = p.acquire(false);
        let b = p.acquire(true);
        let mut hs = Vec::new();
        for (i, high) in [(0, false), (1, false), (2, true), (3, true)] {
            let (p, inflight, max, order) = (
                Arc::clone(&p),
                Arc::clone(&inflight),
                Arc::clone(&max),
                Arc::clone(&order),
            );
            hs.push(std::thread::spawn(move || {
                let _g = p.acquire(high);
                let n = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                lock(&order).push(i);
                std::thread::sleep(Duration::from_millis(30));
                inflight.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        // Both high-priority takers are queued: from here on, whenever a
        // low-priority taker arrives, they go first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&p.state).1 < 2 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        drop((a, b));
        for h in hs {
            h.join().unwrap();
        }
        assert!(max.load(Ordering::SeqCst) <= 2);
        let order = lock(&order).clone();
        assert_eq!(order.len(), 4);
        let mut first: Vec<i32> = order[..2].to_vec();
        first.sort_unstable();
        assert_eq!(first, vec![2, 3], "high-priority takers first: {order:?}");
    }
}
