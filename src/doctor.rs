/*!
`kache doctor [--json]`: is kache set up right here, and if not, what to
do. One line per check, each failure with its fix. A check that does not
apply (no remote configured, no C dependency, no daemon wanted) says so
and does not fail. Exit 0 when nothing failed, 1 otherwise.

The remote checks cost four small requests: a listing of kache's own
meta prefix (reachable, bucket, credentials, read), and unless the runner
is read-only, a probe object written, read back and deleted. The server's
`Date` header tells the clock skew (S3 refuses requests more than 15
minutes off; doctor warns past 5).
*/

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use crate::cli::DoctorCmd;
use crate::config::Config;
use crate::init::{effective_wrapper, is_kache};
use crate::remote::Remote;
use crate::remote::s3::S3Remote;
use crate::store::Store;
use crate::units::format_size;

/// The cc crate release from which `RUSTC_WRAPPER=kache` reaches the C
/// compiler (its known-wrapper list names kache).
const CC_KNOWS_KACHE: (u64, u64, u64) = (1, 2, 66);

/// The clock skew past which doctor fails.
const MAX_SKEW_SECS: i64 = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One check's outcome.
struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn skip(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Skip,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Which wrapper cargo runs here.
fn check_wrapper(cwd: &Path) -> Check {
    match effective_wrapper(cwd) {
        Some((w, src)) if is_kache(&w) => ok("wrapper", format!("cargo runs {w} here ({src})")),
        Some((w, src)) => fail(
            "wrapper",
            format!("cargo runs {w}, not kache, here ({src})"),
            format!("remove {w} from {src}, then run `kache init`"),
        ),
        None => fail(
            "wrapper",
            "cargo runs no wrapper here",
            "run `kache init` (or export RUSTC_WRAPPER=kache)",
        ),
    }
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|x| x.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// Whether the `cc` crate in Cargo.lock hands C compiles to kache.
fn check_cc(cwd: &Path) -> Check {
    let Some(lock) = crate::lockfile::find_from(cwd) else {
        return skip("cc", "no Cargo.lock here: no C dependency to check");
    };
    let versions = match crate::lockfile::versions(&lock) {
        Ok(v) => v,
        Err(e) => return fail("cc", format!("{e:#}"), "fix or regenerate Cargo.lock"),
    };
    let Some(ccs) = versions.get("cc") else {
        return skip("cc", "no C dependency (no cc crate in Cargo.lock)");
    };
    let old: Vec<&String> = ccs
        .iter()
        .filter(|v| parse_version(v).is_none_or(|p| p < CC_KNOWS_KACHE))
        .collect();
    let all = ccs.iter().cloned().collect::<Vec<_>>().join(", ");
    if old.is_empty() {
        ok("cc", format!("cc {all} hands C/C++ compiles to kache"))
    } else {
        fail(
            "cc",
            format!(
                "cc {} in Cargo.lock runs the C compiler without kache (kache needs cc >= 1.2.66)",
                old.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "`cargo update -p cc`, or set CC=\"kache cc\" CXX=\"kache c++\" CC_KNOWN_WRAPPER_CUSTOM=kache",
        )
    }
}

/// The store: writable, reflinks or copies, size against its limit.
fn check_store(cfg: &Config) -> Check {
    let root = &cfg.cache_dir.value;
    let store = match Store::open(root) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                "store",
                format!("{} is not usable: {e:#}", root.display()),
                "make it writable, or point KACHE_CACHE_DIR at a writable directory",
            );
        }
    };
    let how = match crate::wrapper::restore::reflinks_in(root) {
        Ok(true) => "reflinks (copy-on-write)",
        Ok(false) => "copies (no reflinks on this filesystem)",
        Err(e) => {
            return fail(
                "store",
                format!("cannot write in {}: {e}", root.display()),
                "make it writable, or point KACHE_CACHE_DIR at a writable directory",
            );
        }
    };
    let (bytes, _) = crate::commands::blob_usage(&store);
    let limit = cfg.max_size.value;
    let detail = format!(
        "{} is writable; hits restore by {how}; {} of {}",
        root.display(),
        format_size(bytes),
        format_size(limit)
    );
    if bytes > limit {
        fail("store", detail, "run `kache gc`")
    } else {
        ok("store", detail)
    }
}

fn check_config(loaded: &Result<Config>) -> Check {
    match loaded {
        Ok(c) => match &c.file {
            Some(f) if f.is_file() => ok("config", format!("{} parses", f.display())),
            _ => ok("config", "no config file: environment and defaults"),
        },
        Err(e) => fail(
            "config",
            format!("{e:#}"),
            "fix the file (or point KACHE_CONFIG elsewhere)",
        ),
    }
}

/// Reachable, credentials, read, write, clock.
fn check_remote(cfg: &Config) -> Vec<Check> {
    if cfg.bucket.value.is_none() {
        return vec![skip(
            "remote",
            "no remote configured (set KACHE_S3_BUCKET to share entries)",
        )];
    }
    let remote = match S3Remote::from_config(cfg) {
        Ok(r) => r,
        Err(e) => {
            let (detail, fix) = match format!("{e:#}").split_once(" (set ") {
                Some((what, how)) => (
                    what.to_string(),
                    format!("set {}", how.trim_end_matches(')')),
                ),
                None => (
                    format!("{e:#}"),
                    "fix the remote settings (`kache config`)".to_string(),
                ),
            };
            return vec![fail("remote", detail, fix)];
        }
    };
    let prefix = &cfg.prefix.value;
    let mut out = Vec::new();
    let meta = crate::remote::layout::meta_prefix(prefix);
    match remote.list(&format!("{meta}doctor/")) {
        Ok(_) => out.push(ok(
            "remote",
            format!(
                "{} is reachable; credentials from {} may list it",
                remote.describe(&crate::remote::layout::root_prefix(prefix)),
                remote.credentials_source()
            ),
        )),
        Err(e) => {
            out.push(fail(
                "remote",
                e.to_string(),
                "check the endpoint, bucket, region and credentials (`kache config`)",
            ));
            out.extend(clock(&remote));
            return out;
        }
    }
    if cfg.read_only.value {
        out.push(skip(
            "read-write",
            "read-only runner (cache.remote.read_only): nothing is written, no probe either",
        ));
        out.extend(clock(&remote));
        return out;
    }
    let probe = crate::remote::layout::doctor_probe(prefix, &probe_tag());
    let body = b"kache doctor probe: safe to delete\n";
    match remote.put_bytes(&probe, body, false) {
        Ok(()) => {
            let back = remote.get_bytes(&probe, 1024);
            let gone = remote.delete(std::slice::from_ref(&probe));
            match back {
                Ok(b) if b == body => out.push(ok(
                    "read-write",
                    "a probe object was written, read back and deleted",
                )),
                Ok(_) => out.push(fail(
                    "read-write",
                    "the probe object read back differs from what was written",
                    "check for a proxy or gateway rewriting objects",
                )),
                Err(e) => out.push(fail(
                    "read-write",
                    format!("writing works, reading does not: {e}"),
                    "allow s3:GetObject on the bucket for this key",
                )),
            }
            let left = match gone {
                Ok(v) => v,
                Err(e) => vec![(probe.clone(), e.to_string())],
            };
            if let Some((name, why)) = left.first() {
                out.push(fail(
                    "read-write",
                    format!("the probe object {name} could not be deleted: {why}"),
                    "allow s3:DeleteObject for `kache gc --remote`, and delete it by hand",
                ));
            }
        }
        Err(e) => out.push(fail(
            "read-write",
            format!("cannot write to the bucket: {e}"),
            "allow s3:PutObject for this key (runners that only read: pull without pushing)",
        )),
    }
    out.extend(clock(&remote));
    out
}

fn clock(remote: &S3Remote) -> Option<Check> {
    let skew = remote.clock_skew()?;
    let detail = match skew {
        0 => "the local clock agrees with the server's".to_string(),
        s if s > 0 => format!("the local clock is {s}s behind the server's"),
        s => format!("the local clock is {}s ahead of the server's", -s),
    };
    Some(if skew.abs() > MAX_SKEW_SECS {
        fail(
            "clock",
            detail,
            "synchronise the clock (NTP): S3 refuses requests more than 15 minutes off",
        )
    } else {
        ok("clock", detail)
    })
}

/// A probe name no other run uses.
fn probe_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{}", nanos, std::process::id())
}

/// Signing and verification: the signing key loads, trusted keys are
/// set, and no unverified pulled entry is left once they are.
fn check_trust(cfg: &Config) -> Check {
    let signer = if cfg.read_only.value {
        Ok("read-only: never uploads".to_string())
    } else {
        match cfg.signer() {
            Ok(Some(k)) => Ok(format!("uploads signed as {}", k.public())),
            Ok(None) => Ok("uploads unsigned".to_string()),
            Err(e) => Err(format!("{e:#}")),
        }
    };
    let signer = match signer {
        Ok(s) => s,
        Err(e) => {
            return fail(
                "trust",
                e,
                "write the key with `kache key generate NAME --out FILE` and point KACHE_SIGNING_KEY_FILE at it",
            );
        }
    };
    let n = cfg.trusted_keys.value.len();
    if n == 0 {
        return ok(
            "trust",
            format!(
                "{signer}; pulled entries are not verified (set KACHE_TRUSTED_KEYS to import only signed entries)"
            ),
        );
    }
    let detail = format!("{signer}; pulls and remote hits verified against {n} trusted key(s)");
    if Store::at(&cfg.cache_dir.value).has_unverified() {
        fail(
            "trust",
            format!("{detail}, but the store holds entries pulled without verification"),
            "run `kache gc --verify`",
        )
    } else {
        ok("trust", detail)
    }
}

/// How a build-script miss is traced here (see `wrapper::how_traced`).
fn check_scripts(cfg: &Config) -> Check {
    const NAME: &str = "scripts";
    if !cfg.cache_build_scripts.value {
        return skip(
            NAME,
            "build-script runs are not cached (cache_build_scripts = false)",
        );
    }
    let tmp = cfg.cache_dir.value.join("tmp");
    let base = if tmp.is_dir() {
        tmp
    } else {
        std::env::temp_dir()
    };
    match crate::wrapper::how_traced(cfg.trace_behind.value, &base) {
        Ok(how) => ok(NAME, format!("build-script runs cached; {how}")),
        Err(why) => fail(
            NAME,
            format!("build-script runs cannot be cached here: {why}"),
            "run builds on Linux 5.5 or later, or set cache_build_scripts = false",
        ),
    }
}

fn check_daemon(cfg: &Config) -> Check {
    let running = crate::daemon::client::running(&cfg.cache_dir.value);
    match (
        running,
        cfg.daemon_autostart.value,
        cfg.bucket.value.is_some(),
    ) {
        (true, _, _) => ok("daemon", "running"),
        (false, true, true) => ok("daemon", "not running; the next build starts it"),
        (false, true, false) => fail(
            "daemon",
            "daemon_autostart is on but no remote is configured, so it cannot start",
            "set KACHE_S3_BUCKET, or switch daemon_autostart off",
        ),
        (false, false, _) => skip("daemon", "not wanted (daemon_autostart is off)"),
    }
}

/// `kache doctor`.
pub(crate) fn doctor(loaded: Result<Config>, c: &DoctorCmd) -> Result<ExitCode> {
    let cwd = std::env::current_dir()?;
    let mut checks = vec![check_wrapper(&cwd), check_cc(&cwd), check_config(&loaded)];
    if let Ok(cfg) = &loaded {
        // First: it forks, which wants a process with one thread.
        checks.push(check_scripts(cfg));
        checks.push(check_store(cfg));
        checks.extend(check_remote(cfg));
        checks.push(check_trust(cfg));
        checks.push(check_daemon(cfg));
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    let mut out = std::io::stdout().lock();
    if c.json {
        let v = json!({
            "ok": !failed,
            "checks": checks.iter().map(|c| json!({
                "name": c.name,
                "status": c.status.label().to_ascii_lowercase(),
                "detail": c.detail,
                "fix": c.fix,
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        for c in &checks {
            let line = format!("{:<4}  {:<10}  {}", c.status.label(), c.name, c.detail);
            match &c.fix {
                Some(f) => writeln!(out, "{line}; fix: {f}")?,
                None => writeln!(out, "{line}")?,
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cc_versions() {
        assert_eq!(parse_version("1.2.66"), Some((1, 2, 66)));
        assert_eq!(parse_version("1.11.3"), Some((1, 11, 3)));
        assert!(parse_version("1.2.65").unwrap() < CC_KNOWS_KACHE);
        assert!(parse_version("1.11.3").unwrap() >= CC_KNOWS_KACHE);
        assert_eq!(parse_version("1.2.3-rc.1"), Some((1, 2, 3)));
        assert_eq!(parse_version("x"), None);
    }
}
