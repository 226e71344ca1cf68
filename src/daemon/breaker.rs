/*!
The circuit breaker: a failed request, or a fetch slower than the
wrapper waits, pauses remote work (30 s, doubling to 5 min while it keeps
failing). Meanwhile fetches are answered at once with nothing and
uploads wait: a slow or dead remote is paid for once, not per compile.

Requests that were in flight when the breaker opened do not close it; it
closes when its time is up and a request succeeds, or when the config
file changes (a new remote deserves a fresh start).
*/

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{lock, log};

const PAUSE_MIN: Duration = Duration::from_secs(30);
const PAUSE_MAX: Duration = Duration::from_mins(5);

#[derive(Default)]
pub(super) struct Breaker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Paused until then.
    until: Option<Instant>,
    /// Pauses since the last success: each doubles the next.
    failures: u32,
}

impl State {
    fn open(&self) -> bool {
        self.until.is_some_and(|u| u > Instant::now())
    }
}

impl Breaker {
    /// How long remote work stays paused, if it is.
    pub(super) fn paused(&self) -> Option<Duration> {
        let s = lock(&self.state);
        s.until
            .and_then(|u| u.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Pauses remote work for `why`, unless it is paused already.
    pub(super) fn trip(&self, why: &str) {
        let mut s = lock(&self.state);
        if s.open() {
            return;
        }
        let d = PAUSE_MIN
            .saturating_mul(1 << s.failures.min(4))
            .min(PAUSE_MAX);
        s.failures += 1;
        s.until = Some(Instant::now() + d);
        log(&format!(
            "pausing remote requests for {}s: {why}",
            d.as_secs()
        ));
    }

    /// A request succeeded: closes the breaker, unless it is open.
    pub(super) fn ok(&self) {
        let mut s = lock(&self.state);
        if s.open() {
            return;
        }
        *s = State::default();
    }

    /// Closes the breaker and forgets past failures.
    pub(super) fn reset(&self) {
        *lock(&self.state) = State::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As if the pause now running had ended.
    fn expire(b: &Breaker) {
        lock(&b.state).until = Some(Instant::now());
    }

    fn secs(b: &Breaker) -> u64 {
        b.paused().map_or(0, |d| d.as_secs_f64().round() as u64)
    }

    #[test]
    fn pauses_double_while_failing_up_to_the_most() {
        let b = Breaker::default();
        assert_eq!(b.paused(), None);
        let mut got = Vec::new();
        for _ in 0..7 {
            b.trip("test");
            got.push(secs(&b));
            expire(&b);
        }
        assert_eq!(got, [30, 60, 120, 240, 300, 300, 300]);
    }

    #[test]
    fn only_a_success_after_the_pause_closes_it() {
        let b = Breaker::default();
        b.trip("test");
        // In flight when it opened: the pause stands.
        b.ok();
        b.trip("again, while paused");
        assert_eq!(secs(&b), 30);
        expire(&b);
        b.ok();
        assert_eq!(b.paused(), None);
        // Failures forgotten: the next pause is the shortest again.
        b.trip("test");
        assert_eq!(secs(&b), 30);
        b.reset();
        assert_eq!(b.paused(), None);
    }
}
