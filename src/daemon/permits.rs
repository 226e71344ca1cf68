/*!
The one bound on remote requests: `s3_concurrency` permits shared by
the upload workers and the fetches, every request holding one while in
flight. A fetch (a build waits on it) takes the next free permit before
any upload.

`Bounded` is the shared `S3Remote` seen through the permits: the
transfer code takes a `Remote` and never learns of them.
*/

use std::path::Path;
use std::sync::{Condvar, Mutex};

use super::lock;
use crate::remote::s3::S3Remote;
use crate::remote::{Listed, Remote, RemoteError};

/// A counting semaphore where high-priority takers go first.
pub(super) struct Permits {
    /// (free permits, high-priority takers waiting).
    state: Mutex<(usize, usize)>,
    cv: Condvar,
}

/// One permit, given back when dropped.
pub(super) struct Permit<'a>(&'a Permits);

impl Permits {
    pub(super) fn new(n: usize) -> Permits {
        Permits {
            state: Mutex::new((n, 0)),
            cv: Condvar::new(),
        }
    }

    pub(super) fn acquire(&self, high: bool) -> Permit<'_> {
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
pub(super) struct Bounded<'a> {
    pub(super) inner: &'a S3Remote,
    pub(super) permits: &'a Permits,
    /// Takes permits ahead of the uploads (a fetch).
    pub(super) high: bool,
}

impl Remote for Bounded<'_> {
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError> {
        let _p = self.permits.acquire(self.high);
        self.inner.list(prefix)
    }
    fn get(&self, name: &str, dest: &Path, max: u64) -> Result<u64, RemoteError> {
        let _p = self.permits.acquire(self.high);
        self.inner.get(name, dest, max)
    }
    fn get_head(&self, name: &str, n: u64) -> Result<Vec<u8>, RemoteError> {
        let _p = self.permits.acquire(self.high);
        self.inner.get_head(name, n)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

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
