/*!
How long a compile waits for a remote hit: never longer than compiling
would take.

The daemon learns the remote's pace and the build's: how long a crate's
fetch takes (its list and downloads, from the fetches it finished, and
never less than the oldest fetch still under way), how often a fetch
finds the crate in the bucket, and how long compiles take (each crate's
longest, from its entries in the store and from the uploads builds ask
for). A crate never compiled here is thought to take as long per byte
of its largest entry in the bucket as the crates known take per byte of
theirs (the median), or, with no listing to go by, as long as the median
crate known: a fresh runner's biggest crate is waited for, not guessed
to be typical. A
compile waits only when the fetch is expected to end sooner than the
compile would, by enough to pay for the times it finds nothing, and then
at most as long as the compile would take, within `cache.daemon_wait`.

A remote two seconds late on every request thus costs a build the first
few waits (before the first fetch has run longer than a compile), then
none; a remote 50 ms away is waited for by every crate that takes longer
to compile than to download. Everything here takes the time as an
argument, so the policy is tested on simulated time.
*/

use std::collections::HashMap;
use std::time::Duration;

use crate::store::CrateName;

/// The compile time assumed before any is known.
pub(super) const PRIOR_COMPILE: Duration = Duration::from_secs(1);

/// The weight of the newest fetch in the learned fetch time.
const NEWEST: f64 = 0.3;

/// Crates whose compile time is remembered (then forgotten all at once).
const MAX_CRATES: usize = 100_000;

/// What the daemon has learned.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// A crate's fetch, start to end (moving average).
    fetch: Option<Duration>,
    /// Fetches finished, and those that found the crate in the bucket.
    fetches: u32,
    found: u32,
    /// Each crate's longest compile seen.
    compiles: HashMap<CrateName, Duration>,
    /// Each crate's largest entry object listed in the bucket, in bytes.
    sizes: HashMap<CrateName, u64>,
}

/// What a wait is decided from, at the moment a compile asks.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Now {
    /// This crate's fetch has been under way this long.
    pub(super) running: Option<Duration>,
    /// The oldest fetch under way has run this long.
    pub(super) oldest: Option<Duration>,
}

impl Pace {
    /// A fetch ended after `took`; `found`: the bucket held the crate.
    pub(super) fn fetched(&mut self, took: Duration, found: bool) {
        self.fetch = Some(match self.fetch {
            None => took,
            Some(f) => f.mul_f64(1.0 - NEWEST) + took.mul_f64(NEWEST),
        });
        self.fetches = self.fetches.saturating_add(1);
        if found {
            self.found = self.found.saturating_add(1);
        }
    }

    /// A compile of `crate_name` took `took`.
    pub(super) fn compiled(&mut self, crate_name: &CrateName, took: Duration) {
        if self.compiles.len() >= MAX_CRATES {
            self.compiles.clear();
        }
        let c = self.compiles.entry(crate_name.clone()).or_default();
        *c = (*c).max(took);
    }

    /// The bucket lists an entry of `crate_name` of `size` bytes.
    pub(super) fn listed(&mut self, crate_name: &CrateName, size: u64) {
        if self.sizes.len() >= MAX_CRATES {
            self.sizes.clear();
        }
        let s = self.sizes.entry(crate_name.clone()).or_default();
        *s = (*s).max(size);
    }

    /// Whether a compile time of `crate_name` is known.
    pub(super) fn knows(&self, crate_name: &CrateName) -> bool {
        self.compiles.contains_key(crate_name)
    }

    /// The learned fetch time, if any fetch ended.
    pub(super) fn fetch_time(&self) -> Option<Duration> {
        self.fetch
    }

    /// How long `crate_name` is expected to take to compile.
    fn compile_of(&self, crate_name: &CrateName) -> Duration {
        if let Some(c) = self.compiles.get(crate_name) {
            return *c;
        }
        if let Some(&size) = self.sizes.get(crate_name).filter(|s| **s > 0) {
            let mut per_byte: Vec<f64> = self
                .compiles
                .iter()
                .filter_map(|(c, t)| {
                    let s = *self.sizes.get(c).filter(|s| **s > 0)?;
                    Some(t.as_secs_f64() / s as f64)
                })
                .collect();
            if let Some(rate) = median(&mut per_byte, f64::total_cmp) {
                return Duration::from_secs_f64((rate * size as f64).min(3600.0));
            }
        }
        let mut all: Vec<Duration> = self.compiles.values().copied().collect();
        median(&mut all, Ord::cmp).unwrap_or(PRIOR_COMPILE)
    }

    /// How long the fetch a compile asks for at `now` is expected to go
    /// on: the learned time of a fetch (no less than the oldest one
    /// under way) less what this one has run; as long again as it has
    /// run when it has outrun that, or when nothing ended yet (zero when
    /// nothing is known at all: the fetch may be quick).
    fn left(&self, now: Now) -> Duration {
        let total = self
            .fetch
            .unwrap_or_default()
            .max(now.oldest.unwrap_or_default());
        let ran = now.running.unwrap_or_default();
        let learned = total.saturating_sub(ran);
        match self.fetch {
            Some(f) if ran < f => learned,
            _ => learned.max(ran),
        }
    }

    /// How long a compile of `crate_name` that asks at `now` waits, at
    /// most `max` (the compile's own limit, `cache.daemon_wait`); zero:
    /// compiling is faster, answer at once.
    pub(super) fn wait(&self, crate_name: &CrateName, now: Now, max: Duration) -> Duration {
        let compile = self.compile_of(crate_name);
        let left = self.left(now);
        // A fetch finds the crate this often (none finished: even odds
        // either way, leaning to waiting).
        let p = f64::from(self.found + 1) / f64::from(self.fetches + 2);
        if left >= compile || compile.mul_f64(p) <= left {
            return Duration::ZERO;
        }
        // The reply must reach the compile before its own limit.
        compile.min(max.mul_f64(0.9))
    }
}

/// The middle value (the upper one of an even count), `None` if empty.
fn median<T: Copy>(v: &mut [T], cmp: impl FnMut(&T, &T) -> std::cmp::Ordering) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    Some(*v.select_nth_unstable_by(mid, cmp).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn krate(n: &str) -> CrateName {
        CrateName::parse(n).unwrap()
    }

    #[test]
    fn nothing_learned_waits_the_prior_within_the_limit() {
        let p = Pace::default();
        let c = krate("serde");
        assert_eq!(p.wait(&c, Now::default(), MS(2000)), PRIOR_COMPILE);
        assert_eq!(p.wait(&c, Now::default(), MS(500)), MS(450));
    }

    #[test]
    fn a_remote_two_seconds_late_is_not_waited_for() {
        let mut p = Pace::default();
        let (small, big) = (krate("itoa"), krate("syn"));
        // The first fetch has run longer than a compile is thought to
        // take: nobody waits any more, before it even ends.
        let first = Now {
            running: None,
            oldest: Some(MS(1000)),
        };
        assert_eq!(p.wait(&small, first, MS(2000)), Duration::ZERO);
        // Fetches take six seconds (list, manifest, blob: 2 s each).
        for _ in 0..3 {
            p.fetched(MS(6000), true);
        }
        p.compiled(&small, MS(300));
        p.compiled(&big, MS(9000));
        let asked = Now::default();
        assert_eq!(p.wait(&small, asked, MS(2000)), Duration::ZERO);
        // An unknown crate is thought typical (median: 300 ms or 9 s).
        p.compiled(&krate("a"), MS(400));
        assert_eq!(p.wait(&krate("new"), asked, MS(2000)), Duration::ZERO);
        // A crate that compiles longer than a fetch takes waits, within
        // the limit; its fetch under way for 5 s is nearly done.
        assert_eq!(p.wait(&big, asked, MS(20_000)), MS(9000));
        assert_eq!(p.wait(&big, asked, MS(2000)), MS(1800));
        let nearly = Now {
            running: Some(MS(5000)),
            oldest: Some(MS(5000)),
        };
        assert_eq!(p.wait(&big, nearly, MS(20_000)), MS(9000));
    }

    #[test]
    fn a_fetch_under_way_with_nothing_learned_is_thought_half_done() {
        let mut p = Pace::default();
        let c = krate("beta");
        p.compiled(&c, MS(500));
        // Its prefetch has run 900 ms: as long again is expected.
        let under_way = Now {
            running: Some(MS(900)),
            oldest: Some(MS(900)),
        };
        assert_eq!(p.wait(&c, under_way, MS(2000)), Duration::ZERO);
        let young = Now {
            running: Some(MS(100)),
            oldest: Some(MS(200)),
        };
        assert_eq!(p.wait(&c, young, MS(2000)), MS(500));
        // Learned: fetches take 1 s; one that has run 900 ms is nearly
        // done, one that has run 3 s is slow and may run as long again.
        p.fetched(MS(1000), true);
        assert_eq!(p.wait(&c, under_way, MS(2000)), MS(500));
        let slow = Now {
            running: Some(MS(3000)),
            oldest: Some(MS(3000)),
        };
        assert_eq!(p.wait(&c, slow, MS(2000)), Duration::ZERO);
    }

    #[test]
    fn a_near_remote_is_waited_for_where_it_beats_compiling() {
        let mut p = Pace::default();
        for _ in 0..5 {
            p.fetched(MS(150), true);
        }
        let (quick, slow) = (krate("cfg_if"), krate("regex"));
        p.compiled(&quick, MS(80));
        p.compiled(&slow, MS(4000));
        let asked = Now::default();
        assert_eq!(p.wait(&quick, asked, MS(2000)), Duration::ZERO);
        assert_eq!(p.wait(&slow, asked, MS(2000)), MS(1800));
        // The slowest crate's time is kept, not the last.
        p.compiled(&slow, MS(100));
        assert_eq!(p.wait(&slow, asked, MS(2000)), MS(1800));
    }

    #[test]
    fn a_bucket_that_never_has_the_crate_stops_the_waits() {
        let mut p = Pace::default();
        let c = krate("tokio");
        p.compiled(&c, MS(2000));
        p.fetched(MS(300), false);
        assert_eq!(p.wait(&c, Now::default(), MS(5000)), MS(2000));
        for _ in 0..20 {
            p.fetched(MS(300), false);
        }
        // Found 0 of 21: a 2 s compile is not worth 300 ms of waiting.
        assert_eq!(p.wait(&c, Now::default(), MS(5000)), Duration::ZERO);
    }

    #[test]
    fn the_learned_fetch_time_follows_the_remote() {
        let mut p = Pace::default();
        p.fetched(MS(6000), true);
        for _ in 0..20 {
            p.fetched(MS(100), true);
        }
        let f = p.fetch_time().unwrap();
        assert!(f < MS(110), "{f:?}");
        let c = krate("serde");
        p.compiled(&c, MS(700));
        assert_eq!(p.wait(&c, Now::default(), MS(2000)), MS(700));
    }

    #[test]
    fn an_unknown_crate_is_thought_as_slow_as_its_entry_is_large() {
        let mut p = Pace::default();
        for _ in 0..5 {
            p.fetched(MS(50), true);
        }
        // Known: about 1 ms per 10 KB of entry.
        for (c, ms, size) in [("itoa", 100, 1_000_000), ("serde", 400, 4_000_000)] {
            p.compiled(&krate(c), MS(ms));
            p.listed(&krate(c), size);
        }
        p.compiled(&krate("cfg_if"), MS(50));
        p.listed(&krate("cfg_if"), 500_000);
        // A 40 MB entry: about 4 s of compiling, so its fetch under way
        // for a second is waited for (within the limit).
        let (big, small) = (krate("big_app"), krate("tiny"));
        p.listed(&big, 40_000_000);
        p.listed(&small, 10_000);
        let under_way = Now {
            running: Some(MS(1000)),
            oldest: Some(MS(1000)),
        };
        assert_eq!(p.wait(&big, under_way, MS(2000)), MS(1800));
        assert_eq!(p.wait(&big, Now::default(), MS(60_000)), MS(4000));
        // A tiny one is not worth a wait; without a listing, an unknown
        // crate is the median known one.
        assert_eq!(p.wait(&small, under_way, MS(2000)), Duration::ZERO);
        assert_eq!(
            p.wait(&krate("unlisted"), Now::default(), MS(2000)),
            MS(100)
        );
        // The largest entry listed counts, and a known compile beats
        // any estimate.
        p.listed(&big, 1_000);
        assert_eq!(p.wait(&big, Now::default(), MS(60_000)), MS(4000));
        p.compiled(&big, MS(700));
        assert_eq!(p.wait(&big, Now::default(), MS(60_000)), MS(700));
    }
}
