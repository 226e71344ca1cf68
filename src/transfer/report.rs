/*!
The only writer to the terminal during a sync.

Workers send one `Outcome` per transfer over a channel; this module turns
them into progress on stderr (one updating line on a terminal, a line
every few seconds otherwise, nothing with `KACHE_PROGRESS=0`), error
lines for failed transfers, and the final summary (or the dry-run plan)
on stdout.
*/

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::Serialize;

use super::plan::{Direction, Filtered, Transfer, totals};
use crate::config::env_nonempty;
use crate::store::{CacheKey, CrateName};
use crate::units::format_size;

/// What happened to one transfer.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Moved; bytes sent or received.
    Done(Transfer, u64),
    /// Nothing to do after all (appeared locally, vanished).
    Skipped(Transfer, &'static str),
    /// Failed; the sync goes on with the others.
    Failed(Transfer, String),
    /// Downloaded but not imported: no trusted key signed it.
    Refused(Transfer, String),
    /// Failed in a way that dooms every other request (credentials,
    /// permissions, missing bucket, clock): the sync stops.
    Fatal(Transfer, String),
}

impl Outcome {
    /// The planned size of its transfer.
    pub(crate) fn size(&self) -> u64 {
        match self {
            Outcome::Done(t, _)
            | Outcome::Skipped(t, _)
            | Outcome::Failed(t, _)
            | Outcome::Refused(t, _)
            | Outcome::Fatal(t, _) => t.size,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Count {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.entries += 1;
        self.bytes += bytes;
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Failure {
    pub(crate) direction: Direction,
    #[serde(rename = "crate")]
    pub(crate) crate_name: CrateName,
    pub(crate) key: CacheKey,
    pub(crate) error: String,
}

/// A listing that failed after retries: nothing under its prefix was
/// pulled (the entries there are unknown), or, for a push, none of the
/// crate's local entries was pushed (what the bucket has is unknown, and
/// objects are never uploaded twice).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ListingFailure {
    pub(crate) direction: Direction,
    /// The crate whose prefix it was; `null` for the whole prefix (a pull
    /// without Cargo.lock, or `--all`).
    #[serde(rename = "crate")]
    pub(crate) crate_name: Option<String>,
    /// The listed prefix, e.g. `artifacts/serde/`.
    pub(crate) prefix: String,
    /// Local entries left unpushed because of it (push only).
    pub(crate) entries: Option<u64>,
    pub(crate) error: String,
    /// Credentials, permissions, a missing bucket: the sync stopped.
    #[serde(skip)]
    pub(crate) fatal: bool,
}

impl ListingFailure {
    /// `foo`, or `every crate` for the whole prefix.
    pub(crate) fn what(&self) -> &str {
        self.crate_name.as_deref().unwrap_or("every crate")
    }
}

/// Totals of a sync.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) pulled: Count,
    pub(crate) pushed: Count,
    pub(crate) skipped: Count,
    pub(crate) failed: Count,
    /// Pulls refused: not signed by a trusted key (also in `failures`).
    pub(crate) refused: Count,
    /// Transfers never started because a fatal error stopped the sync.
    pub(crate) not_started: Count,
    pub(crate) failures: Vec<Failure>,
    /// Prefixes listed, whether the listing succeeded or not.
    pub(crate) listings: u64,
    /// Listings that failed after retries (each fails only its crate).
    pub(crate) failed_listings: Vec<ListingFailure>,
    /// The error that stopped the sync, if any (also: every listing failed).
    pub(crate) fatal: Option<String>,
    pub(crate) seconds: f64,
    /// Remote entries a pull left out because this build cannot use them
    /// (another toolchain, a version Cargo.lock does not name), by reason.
    pub(crate) filtered: BTreeMap<&'static str, Count>,
    /// A read-only runner: nothing was (or would be) pushed.
    pub(crate) read_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    Off,
    /// One line rewritten in place (stderr is a terminal).
    Line,
    /// A line every few seconds (CI logs).
    Periodic,
}

impl Progress {
    /// From `KACHE_PROGRESS` (0 off, 1 on) and whether stderr is a terminal.
    pub(crate) fn from_env() -> Progress {
        let tty = std::io::stderr().is_terminal();
        match env_nonempty("KACHE_PROGRESS").as_deref() {
            Some("0" | "false" | "off" | "no") => Progress::Off,
            _ if tty => Progress::Line,
            _ => Progress::Periodic,
        }
    }
}

const PERIOD: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(200);

/// Prints a note on stderr (outside of transfers).
pub(crate) fn note(msg: &str) {
    eprintln!("note: {msg}");
}

/// Prints a warning on stderr (outside of transfers).
pub(crate) fn warning(msg: &str) {
    eprintln!("warning: {msg}");
}

/// Collects outcomes, draws progress, keeps the summary.
pub(crate) struct Reporter {
    progress: Progress,
    pub(crate) summary: Summary,
    drawn: bool,
    /// Failed listings not yet printed: held back while no listing of
    /// the run has succeeded, since a cache that cannot be reached at all
    /// is reported as one line, not one per crate.
    unprinted: usize,
    /// Some listing of the run succeeded.
    listed_any: bool,
}

impl Reporter {
    pub(crate) fn new(progress: Progress) -> Reporter {
        Reporter {
            progress,
            summary: Summary::default(),
            drawn: false,
            unprinted: 0,
            listed_any: false,
        }
    }

    /// Records one batch of listings: `ok` succeeded, `failed` did not.
    /// Failures are printed (one line each) once some listing of the run
    /// has succeeded; fatal ones are left to the final error line.
    pub(crate) fn listings(&mut self, ok: u64, failed: Vec<ListingFailure>) {
        self.summary.listings += ok + failed.len() as u64;
        self.listed_any |= ok > 0;
        self.unprinted += failed.len();
        self.summary.failed_listings.extend(failed);
        if self.listed_any {
            self.flush_listings();
        }
    }

    /// True if listings were made and every one of them failed: the
    /// cache could not be used at all.
    /// Records the entries a pull leaves out.
    pub(crate) fn filtered(&mut self, left: Vec<Filtered>) {
        for f in left {
            self.summary
                .filtered
                .entry(f.reason)
                .or_default()
                .add(f.size);
        }
    }

    pub(crate) fn nothing_listed(&self) -> bool {
        !self.listed_any && !self.summary.failed_listings.is_empty()
    }

    /// Prints the failed listings not printed yet.
    pub(crate) fn flush_listings(&mut self) {
        let all = &self.summary.failed_listings;
        for f in &all[all.len() - self.unprinted..] {
            if f.fatal {
                continue;
            }
            let unpushed = match f.entries {
                Some(n) => format!(" ({n} {} not pushed)", entries(n)),
                None => String::new(),
            };
            eprintln!(
                "error: {} {}: {}{unpushed}",
                f.direction.as_str(),
                f.what(),
                f.error
            );
        }
        self.unprinted = 0;
    }

    /// Consumes outcomes until every sender is gone. `total` is the
    /// phase's (entries, bytes).
    pub(crate) fn phase(&mut self, label: &str, total: (u64, u64), rx: &Receiver<Outcome>) {
        let start = Instant::now();
        let mut last = Instant::now();
        let (mut done, mut bytes, mut planned) = (0u64, 0u64, 0u64);
        loop {
            match rx.recv_timeout(TICK) {
                Ok(o) => {
                    done += 1;
                    planned += o.size();
                    bytes += self.record(o);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let due = match self.progress {
                Progress::Off => false,
                Progress::Line => last.elapsed() >= TICK,
                Progress::Periodic => last.elapsed() >= PERIOD,
            };
            if due {
                self.draw(label, done, total, bytes, start.elapsed());
                last = Instant::now();
            }
        }
        self.clear();
        if done < total.0 {
            self.summary.not_started.entries += total.0 - done;
            self.summary.not_started.bytes += total.1.saturating_sub(planned);
        }
        if self.progress == Progress::Periodic && total.0 > 0 && start.elapsed() >= PERIOD {
            self.draw(label, done, total, bytes, start.elapsed());
        }
    }

    /// Adds one outcome to the summary; prints failures. Returns the
    /// bytes it moved.
    fn record(&mut self, o: Outcome) -> u64 {
        let s = &mut self.summary;
        match o {
            Outcome::Done(t, n) => {
                match t.dir {
                    Direction::Pull => s.pulled.add(n),
                    Direction::Push => s.pushed.add(n),
                }
                n
            }
            Outcome::Skipped(t, _why) => {
                s.skipped.add(t.size);
                0
            }
            Outcome::Failed(t, error) => {
                s.failed.add(t.size);
                self.failure(t, error);
                0
            }
            Outcome::Refused(t, error) => {
                s.refused.add(t.size);
                self.failure(t, error);
                0
            }
            Outcome::Fatal(t, error) => {
                s.failed.add(t.size);
                if s.fatal.is_none() {
                    s.fatal = Some(error.clone());
                }
                s.failures.push(Failure {
                    direction: t.dir,
                    crate_name: t.crate_name,
                    key: t.key,
                    error,
                });
                0
            }
        }
    }

    /// Prints one failed transfer's line and records it.
    fn failure(&mut self, t: Transfer, error: String) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            self.drawn = false;
        }
        eprintln!(
            "error: {} {}/{}: {error}",
            t.dir.as_str(),
            t.crate_name,
            short(&t.key)
        );
        self.summary.failures.push(Failure {
            direction: t.dir,
            crate_name: t.crate_name,
            key: t.key,
            error,
        });
    }

    fn draw(&mut self, label: &str, done: u64, total: (u64, u64), bytes: u64, el: Duration) {
        let rate = if el.as_secs_f64() > 0.0 {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let r = (bytes as f64 / el.as_secs_f64()) as u64;
            r
        } else {
            0
        };
        let line = format!(
            "[kache] {label}: {done}/{} entries, {} of {}, {}/s",
            total.0,
            format_size(bytes),
            format_size(total.1),
            format_size(rate)
        );
        let mut err = std::io::stderr().lock();
        match self.progress {
            Progress::Off => {}
            Progress::Line => {
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
                self.drawn = true;
            }
            Progress::Periodic => {
                let _ = writeln!(err, "{line}");
            }
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// The first 12 hex digits of a key.
pub(crate) fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// Prints the dry-run plan: one line per transfer and the totals (and
/// the listings that failed, whose crates the plan cannot cover).
pub(crate) fn print_plan(
    plan: &[Transfer],
    failed_listings: &[ListingFailure],
    filtered: &BTreeMap<&'static str, Count>,
    json: bool,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let (pn, pb) = totals(plan, Direction::Pull);
    let (un, ub) = totals(plan, Direction::Push);
    if json {
        let v = serde_json::json!({
            "dry_run": true,
            "transfers": plan,
            "pull": { "entries": pn, "bytes": pb },
            "push": { "entries": un, "bytes": ub },
            "failed_listings": failed_listings,
            "filtered": filtered,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return out.flush();
    }
    let width = plan
        .iter()
        .map(|t| t.crate_name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    for t in plan {
        writeln!(
            out,
            "{:<4}  {:<width$}  {}  {:>10}",
            t.dir.as_str(),
            t.crate_name,
            short(&t.key),
            format_size(t.size)
        )?;
    }
    writeln!(
        out,
        "would pull {pn} {} ({}), push {un} {} ({})",
        entries(pn),
        format_size(pb),
        entries(un),
        format_size(ub)
    )?;
    not_listed(&mut out, failed_listings)?;
    filtered_lines(&mut out, filtered)?;
    out.flush()
}

/// The `not listed` line: how many crates could not be listed, and
/// which (a crate whose listing failed both ways counts once).
fn not_listed(out: &mut impl Write, failed: &[ListingFailure]) -> std::io::Result<()> {
    if failed.iter().any(|f| f.crate_name.is_none()) {
        // The whole prefix (a pull without Cargo.lock, or --all).
        return writeln!(out, "not listed    every crate");
    }
    let mut names: Vec<&str> = failed.iter().map(ListingFailure::what).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Ok(());
    }
    let n = names.len();
    let shown = if n > 6 {
        format!("{}, ... ({} more)", names[..5].join(", "), n - 5)
    } else {
        names.join(", ")
    };
    let word = if n == 1 { "crate" } else { "crates" };
    writeln!(out, "not listed {n:>4} {word:<8} {shown}")
}

fn entries(n: u64) -> &'static str {
    if n == 1 { "entry" } else { "entries" }
}

/// Prints the final summary on stdout.
pub(crate) fn print_summary(s: &Summary, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(s)?)?;
        return out.flush();
    }
    for (label, c) in [
        ("pulled", s.pulled),
        ("pushed", s.pushed),
        ("skipped", s.skipped),
        ("failed", s.failed),
    ] {
        writeln!(
            out,
            "{label:<8} {:>6} {:<8} {:>10}",
            c.entries,
            entries(c.entries),
            format_size(c.bytes)
        )?;
    }
    if s.refused.entries > 0 {
        writeln!(
            out,
            "refused  {:>6} {:<8} {:>10}",
            s.refused.entries,
            entries(s.refused.entries),
            format_size(s.refused.bytes)
        )?;
    }
    if s.not_started.entries > 0 {
        writeln!(
            out,
            "not started {:>3} {:<8} {:>10}",
            s.not_started.entries,
            entries(s.not_started.entries),
            format_size(s.not_started.bytes)
        )?;
    }
    not_listed(&mut out, &s.failed_listings)?;
    filtered_lines(&mut out, &s.filtered)?;
    writeln!(out, "time     {:.2}s", s.seconds)?;
    out.flush()
}

/// One `left out` line per reason a pull skipped entries.
fn filtered_lines(out: &mut impl Write, f: &BTreeMap<&'static str, Count>) -> std::io::Result<()> {
    for (reason, c) in f {
        writeln!(
            out,
            "left out {:>6} {:<8} {:>10}  ({reason})",
            c.entries,
            entries(c.entries),
            format_size(c.bytes)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(dir: Direction, c: Option<&str>) -> ListingFailure {
        ListingFailure {
            direction: dir,
            crate_name: c.map(ToString::to_string),
            prefix: format!("p/{}/", c.unwrap_or_default()),
            entries: None,
            error: "cannot list".into(),
            fatal: false,
        }
    }

    fn line(f: &[ListingFailure]) -> String {
        let mut out = Vec::new();
        not_listed(&mut out, f).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn not_listed_names_each_crate_once() {
        assert_eq!(line(&[]), "");
        let both = [
            failed(Direction::Pull, Some("serde")),
            failed(Direction::Push, Some("serde")),
            failed(Direction::Pull, Some("anyhow")),
        ];
        assert_eq!(line(&both), "not listed    2 crates   anyhow, serde\n");
        assert_eq!(
            line(&both[..1]),
            "not listed    1 crate    serde\n",
            "aligned with `failed        1 entry`"
        );
        let many: Vec<_> = ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .map(|c| failed(Direction::Pull, Some(c)))
            .collect();
        assert_eq!(
            line(&many),
            "not listed    7 crates   a, b, c, d, e, ... (2 more)\n"
        );
        assert_eq!(
            line(&[failed(Direction::Pull, None)]),
            "not listed    every crate\n"
        );
    }
}
