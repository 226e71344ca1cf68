/*!
The retry policy of the S3 remote: which failures are retried, how long
to wait between attempts, and when to give up.

Transient failures (5xx, 429 and throttling, timeouts, connection
failures) are retried: up to 10 attempts within a bounded time,
exponential backoff with equal jitter, the server's `Retry-After`
honoured up to 30 s (see `Retry`). Retries draw on a budget shared by
the whole run (`RetryBudget`), so a server failing everything sees a
hundred retries in all, not ten for every request.

An endpoint that has not answered a single request of this run and
refuses connections (or has no address, or drops them) is not a flaky
server but an absent one: its connection failures are retried only for
`Retry::first_contact`, after which every further request of the run
fails at once with the same error (a run against an unreachable cache
costs seconds, not a timeout per crate). Once the server has answered,
a connection failure is an ordinary transient one.

No I/O here but the sleeps between attempts: the request is the
caller's closure, and messages are scrubbed by the caller.
*/

use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ureq::http::Response;

use super::{ErrorKind, RemoteError};

/// Retry policy for one request: at most `attempts` tries (rclone's 10
/// low-level retries; s5cmd's 10); the n-th retry waits a random time in
/// `[e/2, e]` with `e = min(cap, base * 2^(n-1))` ("equal jitter":
/// spread out, yet never an immediate retry, so a struggling server sees
/// the pressure fall; the 2 s cap is rclone's usual pacer bound), or the
/// server's `Retry-After` if longer, up to `retry_after_max`. No retry
/// starts later than `window` after the first attempt, which bounds the
/// time one request can take: the nine waits add up to 5.5 to 11.1 s; a
/// server asking for 30 s between attempts gets four.
#[derive(Clone, Copy, Debug)]
struct Retry {
    attempts: u32,
    base: Duration,
    cap: Duration,
    /// The longest server-requested wait honoured.
    retry_after_max: Duration,
    /// No retry starts later than this after the first attempt.
    window: Duration,
    /// The same bound for connection failures while the server has not
    /// answered any request of the run yet (see the module doc).
    first_contact: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            retry_after_max: Duration::from_secs(30),
            window: Duration::from_mins(2),
            first_contact: Duration::from_secs(3),
        }
    }
}

/// A retry quota shared by every request of a run (the AWS SDKs'
/// "standard" mode): a retry costs `COST` tokens, a success gives one
/// back (a success after retries gives back `COST`). Once the tokens run
/// out, failures are no longer retried until successes refill them.
struct RetryBudget {
    tokens: std::sync::atomic::AtomicI64,
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget::new()
    }
}

impl RetryBudget {
    const MAX: i64 = 500;
    const COST: i64 = 5;

    fn new() -> RetryBudget {
        RetryBudget {
            tokens: std::sync::atomic::AtomicI64::new(Self::MAX),
        }
    }

    /// Takes the tokens for one retry, if there are enough.
    fn take(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.tokens
            .fetch_update(SeqCst, SeqCst, |t| {
                (t >= Self::COST).then(|| t - Self::COST)
            })
            .is_ok()
    }

    fn success(&self, retried: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let back = if retried { Self::COST } else { 1 };
        let _ = self
            .tokens
            .fetch_update(SeqCst, SeqCst, |t| Some((t + back).min(Self::MAX)));
    }
}

/// The retries of one remote for one run: the policy, the shared
/// budget, and whether the server has answered or is taken for absent.
#[derive(Default)]
pub(crate) struct Retrier {
    policy: Retry,
    budget: RetryBudget,
    /// The server has answered at least one request of this run.
    answered: AtomicBool,
    /// Set when a request gave up because no connection could be made
    /// before the server ever answered: the error every further request
    /// fails with at once.
    down: Mutex<Option<RemoteError>>,
}

impl Retrier {
    /// The server answered a request (whatever its status).
    pub(crate) fn answered(&self) {
        self.answered.store(true, Ordering::SeqCst);
    }

    /// Runs `op` until it succeeds, fails for good, or the policy or the
    /// budget says to stop; a transient failure's message then says why
    /// it was not retried again. Messages are not scrubbed here.
    pub(crate) fn run<T>(
        &self,
        mut op: impl FnMut() -> Result<T, RemoteError>,
    ) -> Result<T, RemoteError> {
        if !self.answered.load(Ordering::SeqCst)
            && let Some(e) = self
                .down
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        {
            return Err(e);
        }
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let mut e = match op() {
                Ok(v) => {
                    self.budget.success(attempt > 1);
                    return Ok(v);
                }
                Err(e) => e,
            };
            if e.kind != ErrorKind::Transient {
                return Err(e);
            }
            let absent = e.unreachable && !self.answered.load(Ordering::SeqCst);
            let next = next_retry(
                self.policy,
                attempt,
                started.elapsed(),
                e.retry_after,
                absent,
            );
            let tries = if attempt == 1 {
                "1 attempt".to_string()
            } else {
                format!("{attempt} attempts")
            };
            e.message = match next {
                Ok(wait) if self.budget.take() => {
                    std::thread::sleep(wait);
                    attempt += 1;
                    continue;
                }
                Ok(_) => format!(
                    "{} (not retried: too many failures in this run, the server looks down)",
                    e.message
                ),
                Err(GiveUp::Window) => format!(
                    "{} (gave up after {tries} in {:.1}s)",
                    e.message,
                    started.elapsed().as_secs_f64()
                ),
                Err(GiveUp::Attempts) => format!("{} (gave up after {tries})", e.message),
            };
            if absent {
                let mut down = self
                    .down
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if down.is_none() {
                    *down = Some(e.clone());
                }
            }
            return Err(e);
        }
    }
}

/// The wait a response asks for: `x-amz-retry-after` (milliseconds),
/// else `Retry-After` (seconds).
pub(crate) fn retry_after<B>(resp: &Response<B>) -> Option<Duration> {
    let h = resp.headers();
    if let Some(ms) = h
        .get("x-amz-retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_millis(ms));
    }
    h.get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Why a request is not retried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GiveUp {
    /// `Retry::attempts` made.
    Attempts,
    /// The retry would start past the request's time window.
    Window,
}

/// After transient failure number `attempt` (1-based), `elapsed` after
/// the first attempt began: how long to wait before the next attempt, or
/// why not to make one. `absent`: no connection could be made and the
/// server has not answered in this run (the short `first_contact`
/// window applies). The shared retry budget is the caller's.
fn next_retry(
    r: Retry,
    attempt: u32,
    elapsed: Duration,
    retry_after: Option<Duration>,
    absent: bool,
) -> Result<Duration, GiveUp> {
    if attempt >= r.attempts {
        return Err(GiveUp::Attempts);
    }
    let window = if absent { r.first_contact } else { r.window };
    let wait = backoff(r, attempt, retry_after);
    if elapsed + wait > window {
        return Err(GiveUp::Window);
    }
    Ok(wait)
}

/// The wait before retry number `attempt` (1-based): equal jitter over
/// the capped exponential, or the server's Retry-After if longer (up to
/// `retry_after_max`).
fn backoff(r: Retry, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = r
        .base
        .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20))
        .min(r.cap);
    let jitter = exp / 2 + random_below(exp / 2);
    match retry_after {
        Some(ra) => ra.min(r.retry_after_max).max(jitter),
        None => jitter,
    }
}

/// A random duration in `[0, d]`, from std's randomly keyed hasher.
fn random_below(d: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos()),
    );
    h.write(format!("{:?}", std::thread::current().id()).as_bytes());
    let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(h.finish() % n.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_runs_out_and_refills() {
        let b = RetryBudget::new();
        let n = (0..1000).take_while(|_| b.take()).count();
        assert_eq!(n as i64, RetryBudget::MAX / RetryBudget::COST);
        assert!(!b.take());
        for _ in 0..RetryBudget::COST {
            b.success(false);
        }
        assert!(b.take() && !b.take());
        b.success(true);
        assert!(b.take());
    }

    #[test]
    fn backoff_is_bounded() {
        let r = Retry::default();
        for attempt in 1..10 {
            let d = backoff(r, attempt, None);
            assert!(d <= r.cap);
            let exp = (r.base * 2u32.pow(attempt - 1)).min(r.cap);
            assert!(d <= exp, "{d:?} > {exp:?}");
            assert!(d >= exp / 2, "never an immediate retry: {d:?} < {exp:?}/2");
        }
        // A longer Retry-After is honoured, up to its own bound (MinIO
        // sends 120 s).
        assert_eq!(
            backoff(r, 1, Some(Duration::from_secs(12))),
            Duration::from_secs(12)
        );
        assert_eq!(
            backoff(r, 1, Some(Duration::from_mins(2))),
            r.retry_after_max
        );
        assert_eq!(r.retry_after_max, Duration::from_secs(30));
    }

    /// The attempts one request makes when every attempt fails at once
    /// (taking `each`), with `retry_after` from the server.
    fn attempts(absent: bool, each: Duration, retry_after: Option<Duration>) -> (u32, GiveUp) {
        let r = Retry::default();
        let mut elapsed = each;
        let mut attempt = 1;
        loop {
            match next_retry(r, attempt, elapsed, retry_after, absent) {
                Ok(wait) => {
                    elapsed += wait + each;
                    attempt += 1;
                }
                Err(why) => return (attempt, why),
            }
        }
    }

    #[test]
    fn retries_stop_at_ten_attempts_or_the_window() {
        let ms = Duration::from_millis;
        // Fast failures: all ten attempts.
        assert_eq!(attempts(false, ms(5), None), (10, GiveUp::Attempts));
        // Retry-After: 30 s (MinIO's 120 s, capped): four attempts in
        // the two minutes (five only if each took no time at all).
        let (n, why) = attempts(false, ms(5), Some(Duration::from_mins(2)));
        assert_eq!(
            (n, why),
            (4, GiveUp::Window),
            "0, 30, 60, 90 s; 120 s is past"
        );
        assert_eq!(
            attempts(false, Duration::ZERO, Some(Duration::from_secs(30))).0,
            5,
            "0, 30, 60, 90, 120 s"
        );
        // Attempts that each time out after 60 s: two.
        assert_eq!(
            attempts(false, Duration::from_mins(1), None),
            (2, GiveUp::Window)
        );
        // Nobody listening, never answered: about 3 s of retries.
        let (n, why) = attempts(true, ms(1), None);
        assert_eq!(why, GiveUp::Window);
        assert!((5..=7).contains(&n), "{n}");
        // A connect timeout of 10 s on a host that drops packets: one.
        assert_eq!(
            attempts(true, Duration::from_secs(10), None),
            (1, GiveUp::Window)
        );
    }

    #[test]
    fn ten_attempts_within_a_bounded_time() {
        let r = Retry::default();
        assert_eq!(r.attempts, 10);
        let (mut lo, mut hi) = (Duration::ZERO, Duration::ZERO);
        for attempt in 1..r.attempts {
            let exp = (r.base * 2u32.pow(attempt - 1)).min(r.cap);
            lo += exp / 2;
            hi += exp;
            let d = backoff(r, attempt, None);
            assert!(d >= exp / 2 && d <= exp);
        }
        // Rides out a blip of several seconds, gives up within seconds.
        assert!(lo >= Duration::from_secs(5), "{lo:?}");
        assert!(hi <= Duration::from_secs(12), "{hi:?}");
        assert!(hi < r.window && r.first_contact < hi);
        assert!(backoff(r, 1, Some(Duration::from_millis(300))) >= Duration::from_millis(300));
    }

    /// A policy of milliseconds, for tests that run the loop.
    fn quick() -> Retrier {
        Retrier {
            policy: Retry {
                attempts: 10,
                base: Duration::from_millis(1),
                cap: Duration::from_millis(2),
                retry_after_max: Duration::from_millis(5),
                window: Duration::from_secs(10),
                first_contact: Duration::from_millis(5),
            },
            ..Retrier::default()
        }
    }

    /// Runs one request whose every attempt fails with `e`; returns the
    /// attempts made and the error.
    fn fail_with(r: &Retrier, e: &RemoteError) -> (u32, RemoteError) {
        let mut n = 0;
        let got = r.run(|| -> Result<(), RemoteError> {
            n += 1;
            Err(e.clone())
        });
        (n, got.unwrap_err())
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let r = quick();
        let (n, e) = fail_with(&r, &RemoteError::new(ErrorKind::AccessDenied, "denied"));
        assert_eq!((n, e.message.as_str()), (1, "denied"));
        let (n, e) = fail_with(&r, &RemoteError::new(ErrorKind::Transient, "503"));
        assert_eq!(n, 10);
        assert_eq!(e.message, "503 (gave up after 10 attempts)");
    }

    #[test]
    fn an_absent_server_fails_the_later_requests_at_once() {
        let r = quick();
        let refused = RemoteError {
            unreachable: true,
            ..RemoteError::new(ErrorKind::Transient, "connection refused")
        };
        let (n, first) = fail_with(&r, &refused);
        assert!(
            n >= 1
                && first
                    .message
                    .starts_with("connection refused (gave up after")
        );
        // Not tried again: the first request's error, at once.
        let (n, e) = fail_with(&r, &refused);
        assert_eq!((n, e.message), (0, first.message));
        // Once the server has answered, it is tried again.
        r.answered();
        let (n, _) = fail_with(&r, &refused);
        assert_eq!(n, 10);
    }

    #[test]
    fn retry_after_reads_the_amz_header_in_ms_else_the_standard_one_in_s() {
        let resp = |headers: &[(&str, &str)]| {
            let mut b = Response::builder();
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        assert_eq!(retry_after(&resp(&[])), None);
        assert_eq!(
            retry_after(&resp(&[("retry-after", " 3 ")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&resp(&[("retry-after", "3"), ("x-amz-retry-after", "250")])),
            Some(Duration::from_millis(250))
        );
        // An HTTP date is not a number of seconds: not honoured.
        assert_eq!(
            retry_after(&resp(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])),
            None
        );
    }
}
