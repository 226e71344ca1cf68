/*!
The only writer to the terminal during a sync.

Workers send one `Outcome` per transfer over a channel; this module turns
them into progress on stderr (one updating line on a terminal, a line
every few seconds otherwise, nothing with `KACHE_PROGRESS=0`), error
lines for failed transfers, and the final summary (or the dry-run plan)
on stdout.
*/

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::Serialize;

use super::plan::{Direction, Transfer, totals};
use crate::config::{env_nonempty, format_size};

/// What happened to one transfer.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Moved; bytes sent or received.
    Done(Transfer, u64),
    /// Nothing to do after all (appeared locally, vanished).
    Skipped(Transfer, &'static str),
    /// Failed; the sync goes on with the others.
    Failed(Transfer, String),
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
    pub(crate) crate_name: String,
    pub(crate) key: String,
    pub(crate) error: String,
}

/// Totals of a sync.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) pulled: Count,
    pub(crate) pushed: Count,
    pub(crate) skipped: Count,
    pub(crate) failed: Count,
    /// Transfers never started because a fatal error stopped the sync.
    pub(crate) not_started: Count,
    pub(crate) failures: Vec<Failure>,
    /// The error that stopped the sync, if any.
    pub(crate) fatal: Option<String>,
    pub(crate) seconds: f64,
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

/// Collects outcomes, draws progress, keeps the summary.
pub(crate) struct Reporter {
    progress: Progress,
    pub(crate) summary: Summary,
    drawn: bool,
}

impl Reporter {
    pub(crate) fn new(progress: Progress) -> Reporter {
        Reporter {
            progress,
            summary: Summary::default(),
            drawn: false,
        }
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
                if self.drawn {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K");
                    self.drawn = false;
                }
                s.failed.add(t.size);
                eprintln!(
                    "error: {} {}/{}: {error}",
                    t.dir.as_str(),
                    t.crate_name,
                    short(&t.key)
                );
                s.failures.push(Failure {
                    direction: t.dir,
                    crate_name: t.crate_name,
                    key: t.key,
                    error,
                });
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

/// Prints the dry-run plan: one line per transfer and the totals.
pub(crate) fn print_plan(plan: &[Transfer], json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let (pn, pb) = totals(plan, Direction::Pull);
    let (un, ub) = totals(plan, Direction::Push);
    if json {
        let v = serde_json::json!({
            "dry_run": true,
            "transfers": plan,
            "pull": { "entries": pn, "bytes": pb },
            "push": { "entries": un, "bytes": ub },
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
    out.flush()
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
    if s.not_started.entries > 0 {
        writeln!(
            out,
            "not started {:>3} {:<8} {:>10}",
            s.not_started.entries,
            entries(s.not_started.entries),
            format_size(s.not_started.bytes)
        )?;
    }
    writeln!(out, "time     {:.2}s", s.seconds)?;
    out.flush()
}
