/*!
Running the real program: plainly (inherited stdio, for pass-throughs
and fallbacks), or pumped (stdout and stderr piped, passed through live
line by line with sentinels expanded back to this checkout, and kept for
the entry).
*/

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;

use anyhow::{Context, Result};

use super::paths::Paths;

/// Whether an environment variable is set to a true value (not empty,
/// `0`, `false`, `no` or `off`).
pub(crate) fn truthy(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        !v.is_empty() && v != "0" && v != "false" && v != "no" && v != "off"
    })
}

/// Runs a program with inherited stdio; its exit code.
pub(crate) fn run_plain(program: &OsString, rest: &[OsString]) -> i32 {
    match Command::new(program).args(rest).status() {
        Ok(s) => exit_code(s),
        Err(e) => {
            eprintln!(
                "error: kache: cannot run {}: {e}",
                program.to_string_lossy()
            );
            1
        }
    }
}

pub(crate) fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code()
        .unwrap_or_else(|| s.signal().map_or(1, |sig| 128 + sig))
}

/// One warning line: the cause, and what kache does instead.
pub(crate) fn warn(e: &anyhow::Error, what: &str) {
    let cause = format!("{e:#}").replace('\n', " ");
    eprintln!("warning: kache: {cause}; {what}");
}

/// Runs `cmd`, its stdout and stderr piped, passing them through live
/// (see `pump`); returns how it exited and what it printed on each.
/// `program` is its path, `waiting_for` how a wait error names it.
pub(crate) fn run_pumped(
    cmd: &mut Command,
    paths: &Paths,
    program: &str,
    waiting_for: &str,
) -> Result<(std::process::ExitStatus, Vec<u8>, Vec<u8>)> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let child_out = child.stdout.take().expect("piped stdout");
    let child_err = child.stderr.take().expect("piped stderr");
    let p2 = paths.clone();
    let out_thread = std::thread::spawn(move || pump(child_out, &p2, false));
    let err_raw = pump(child_err, paths, true);
    let out_raw = out_thread.join().unwrap_or_default();
    let status = child
        .wait()
        .with_context(|| format!("waiting for {waiting_for}"))?;
    Ok((status, out_raw, err_raw))
}

/// Copies a child's output to ours line by line (sentinels from the
/// path remapping expanded back to this checkout; byte for byte when
/// `paths` has no rules), returning the raw bytes.
fn pump(r: impl Read, paths: &Paths, stderr: bool) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        raw.extend_from_slice(&line);
        let expanded;
        let shown: &[u8] = if paths.rules().is_empty() {
            &line
        } else {
            expanded = paths.expand(&String::from_utf8_lossy(&line));
            expanded.as_bytes()
        };
        if stderr {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(shown);
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(shown);
            let _ = o.flush();
        }
    }
    raw
}
