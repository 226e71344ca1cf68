/*!
Uploads in the background: the queue of entries to push and the workers
that push them, `s3_concurrency` threads at nice 19 (on a busy machine
the build's compiles get the CPU first; on an idle one, as while `kache
daemon stop` drains, they run at full speed).

The queue is one `Mutex<Queue>` with a `Condvar`, not a channel: a job
that failed carries a not-before time for its retry, which a plain
channel cannot express. The marker in `pending/` is the durable record
of an upload; the queue only schedules it. A marker goes once its entry
is in the bucket (or gone from the store); after `UPLOAD_ATTEMPTS`
failures the job leaves the queue but the marker stays, for the next
rescan, start or `kache sync --push`.
*/

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::protocol::StopReply;
use super::shared::{Live, Shared, add, get};
use super::{lock, log, peer};
use crate::remote::{Remote, RemoteError, layout};
use crate::store::pending::pending_markers;
use crate::store::{CacheKey, CrateName};
use crate::transfer::exec;
use crate::transfer::plan::{self, Direction, Transfer};
use crate::transfer::report::Outcome;

/// What the bucket holds for a crate is listed again after this long.
const KNOWN_TTL: Duration = Duration::from_mins(10);
/// Attempts per upload (each after the S3 layer's own retries).
const UPLOAD_ATTEMPTS: u32 = 4;
/// The nice value of the upload threads: background work that must not
/// take CPU from the build it follows.
const UPLOAD_NICE: libc::c_int = 19;

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

enum Up {
    Done,
    Skipped,
    Retry(String),
}

/// The upload queue and what became of its jobs.
#[derive(Default)]
pub(super) struct Uploads {
    queue: Mutex<Queue>,
    cv: Condvar,
    pub(super) done: AtomicU64,
    pub(super) skipped: AtomicU64,
    /// Given up on (the marker stays).
    pub(super) failed: AtomicU64,
    /// Failed attempts, retried or not.
    pub(super) errors: AtomicU64,
}

impl Uploads {
    /// Queues the upload of an entry to `live`'s remote, unless it is
    /// queued or running already or the runner is read-only.
    pub(super) fn enqueue(&self, live: &Live, crate_name: CrateName, key: CacheKey) {
        if live.read_only {
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
            self.cv.notify_one();
        }
    }

    /// Queues every upload recorded for `live`'s remote, saying how many
    /// it found.
    pub(super) fn replay(&self, live: &Live) {
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
            self.enqueue(live, c, k);
        }
    }

    /// Queues recorded uploads that are not queued yet, quietly.
    pub(super) fn rescan(&self, live: &Live) {
        for (c, k) in pending_markers(&live.pending) {
            self.enqueue(live, c, k);
        }
    }

    /// Uploads still queued or running.
    pub(super) fn left(&self) -> bool {
        let q = lock(&self.queue);
        !q.jobs.is_empty() || q.running > 0
    }

    /// (queued, running).
    pub(super) fn counts(&self) -> (u64, u64) {
        let q = lock(&self.queue);
        (q.jobs.len() as u64, q.running as u64)
    }

    /// Drops every queued job (the remote changed: their markers stay
    /// under the old remote's `pending/`).
    pub(super) fn forget(&self) {
        let mut q = lock(&self.queue);
        q.jobs.clear();
        q.known.clear();
    }

    /// Wakes every worker (to see `quit`).
    pub(super) fn wake(&self) {
        self.cv.notify_all();
    }

    /// Waits until no upload is queued or running, or `timeout`; retries
    /// waiting for their backoff go now.
    pub(super) fn drain(&self, sh: &Shared, timeout: Duration) -> StopReply {
        let deadline = Instant::now() + timeout;
        // Markers whose notice never came (written while no daemon
        // answered, e.g. by the compile that autostarted this one).
        self.rescan(&sh.live());
        let mut q = lock(&self.queue);
        let now = Instant::now();
        for j in &mut q.jobs {
            j.not_before = now;
        }
        self.cv.notify_all();
        while !(q.jobs.is_empty() && q.running == 0) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = self
                .cv
                .wait_timeout(q, left.min(Duration::from_millis(200)))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        let drained = q.jobs.is_empty() && q.running == 0;
        drop(q);
        StopReply {
            uploads_done: get(&self.done),
            pending: pending_markers(&sh.live().pending).len() as u64,
            drained,
        }
    }

    /// One upload thread: takes the next job that is due (none while the
    /// breaker is open) until `quit`.
    pub(super) fn work(&self, sh: &Shared) {
        peer::lower_priority(UPLOAD_NICE);
        while let Some(job) = self.next(sh) {
            let live = sh.live();
            let res = upload(sh, &live, &job);
            self.finish(job, res);
        }
    }

    /// Waits for a job that is due; `None` once `quit` is set.
    fn next(&self, sh: &Shared) -> Option<Job> {
        let mut q = lock(&self.queue);
        loop {
            if sh.quitting() {
                return None;
            }
            let now = Instant::now();
            let paused = sh.breaker.paused();
            let ready = if paused.is_none() {
                q.jobs.iter().position(|j| j.not_before <= now)
            } else {
                None
            };
            if let Some(i) = ready {
                let j = q.jobs.remove(i).expect("index in range");
                q.running += 1;
                return Some(j);
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
            q = self
                .cv
                .wait_timeout(q, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Counts a job's result; a failed one goes back in the queue, with
    /// a backoff, until `UPLOAD_ATTEMPTS`.
    fn finish(&self, job: Job, res: Up) {
        let mut q = lock(&self.queue);
        q.running -= 1;
        match res {
            Up::Done => {
                add(&self.done, 1);
                q.known.remove(&(job.crate_name, job.key));
            }
            Up::Skipped => {
                add(&self.skipped, 1);
                q.known.remove(&(job.crate_name, job.key));
            }
            Up::Retry(msg) => {
                add(&self.errors, 1);
                let attempts = job.attempts + 1;
                if attempts >= UPLOAD_ATTEMPTS {
                    add(&self.failed, 1);
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
        self.cv.notify_all();
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

fn upload(sh: &Shared, live: &Live, job: &Job) -> Up {
    let (c, k) = (&job.crate_name, &job.key);
    if live.read_only {
        return Up::Skipped;
    }
    if !sh.store.contains(c, k) {
        remove_marker(live, c, k);
        return Up::Skipped;
    }
    let remote = sh.remote(live, false);
    match remote_keys(live, &remote, c) {
        Ok(keys) if keys.contains(k) => {
            remove_marker(live, c, k);
            return Up::Skipped;
        }
        Ok(_) => {}
        Err(e) => {
            sh.breaker.trip(&e.message);
            return Up::Retry(format!("cannot list {}: {e}", remote.describe(c)));
        }
    }
    // Named as `kache sync --push` names it: with the entry's origin.
    let object = match sh.store.get(c, k) {
        Ok(Some(e)) => layout::entry_object(&live.prefix, c, k, e.origin.as_ref()),
        Ok(None) => {
            remove_marker(live, c, k);
            return Up::Skipped;
        }
        // Unreadable: the push reports it.
        Err(_) => layout::object_name(&live.prefix, c, k),
    };
    let t = Transfer {
        dir: Direction::Push,
        crate_name: c.clone(),
        key: k.clone(),
        size: 0,
        object,
    };
    match exec::push_one(&live.ctx(&sh.store, &remote), t) {
        Outcome::Done(..) => {
            sh.breaker.ok();
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
            sh.breaker.trip(&m);
            Up::Retry(m)
        }
    }
}
