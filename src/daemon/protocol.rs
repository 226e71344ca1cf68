/*!
What wrappers and `kache daemon` commands say to the daemon: one JSON
line each way over the Unix socket, then the connection closes.

Every request is read with a hard size bound (`MAX_LINE`) and validated
before anything acts on it: crate names and keys are the store's own
types (`CrateName`, `CacheKey`), checked as the line is decoded, so no
request can name a path outside the store; the remote identity is
compared, not used.
*/

use std::io::{self, BufRead};

use serde::{Deserialize, Serialize};

use crate::store::{CacheKey, CrateName};

/// The longest request or reply line, in bytes.
pub(crate) const MAX_LINE: u64 = 16 * 1024;

/// Most trusted keys a fetch may name.
const MAX_TRUSTED: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// An entry was stored and recorded under `pending/`: upload it.
    /// Sent without waiting for a reply.
    Upload {
        remote: String,
        #[serde(rename = "crate")]
        crate_name: CrateName,
        key: CacheKey,
    },
    /// A local miss: bring the crate's entries in from the remote. The
    /// wrapper waits at most `wait_ms` for the reply. `workspace` (the
    /// package's manifest dir) lets the daemon prefetch the crates of
    /// its Cargo.lock.
    Fetch {
        remote: String,
        #[serde(rename = "crate")]
        crate_name: CrateName,
        #[serde(default)]
        workspace: Option<String>,
        /// The package version (`CARGO_PKG_VERSION`): entries named for
        /// another version are not pulled.
        #[serde(default)]
        version: Option<String>,
        /// The toolchain id of the asking compiler (`store::toolchain_id`):
        /// entries of another toolchain are not pulled.
        #[serde(default)]
        toolchain: Option<String>,
        wait_ms: u64,
        /// The asking build's trusted keys (`NAME:BASE64`): what the
        /// daemon imports for it is verified against these, whoever
        /// started the daemon.
        #[serde(default)]
        trusted: Vec<String>,
    },
    Status,
    /// Upload what is pending (at most `timeout_ms`), reply, exit.
    Stop {
        timeout_ms: u64,
    },
}

impl Request {
    /// Refuses anything that could name a path or is out of bounds.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let entry = |remote: &str| {
            if remote.is_empty() || remote.len() > 2048 {
                return Err("bad remote identity".to_string());
            }
            Ok(())
        };
        match self {
            Request::Upload { remote, .. } => entry(remote),
            Request::Fetch {
                remote,
                workspace,
                version,
                toolchain,
                trusted,
                ..
            } => {
                entry(remote)?;
                if trusted.len() > MAX_TRUSTED
                    || trusted
                        .iter()
                        .any(|k| crate::trust::parse_trusted(k).is_err())
                {
                    return Err("bad trusted keys".to_string());
                }
                for (what, v) in [("version", version), ("toolchain", toolchain)] {
                    if v.as_deref()
                        .is_some_and(|v| !crate::store::entry::valid_component(v))
                    {
                        return Err(format!("bad {what}"));
                    }
                }
                if let Some(w) = workspace
                    && (!w.starts_with('/') || w.len() > 4096 || w.contains('\0'))
                {
                    return Err("bad workspace path".to_string());
                }
                Ok(())
            }
            Request::Status | Request::Stop { .. } => Ok(()),
        }
    }
}

/// The reply to `Fetch`: how many entries of the crate the daemon has
/// brought into the store since it started (this request or an earlier
/// one), or why it did not ask the remote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct FetchReply {
    pub(crate) ok: bool,
    #[serde(default)]
    pub(crate) entries: u64,
    #[serde(default)]
    pub(crate) error: Option<String>,
}

/// The reply to `Stop`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct StopReply {
    pub(crate) uploads_done: u64,
    /// Uploads still recorded under `pending/` (they go at the next start
    /// or with `kache sync --push`).
    pub(crate) pending: u64,
    pub(crate) drained: bool,
}

/// What `kache daemon status` shows. No secret: the remote is named by
/// endpoint, region, bucket and prefix only.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) pid: u32,
    pub(crate) store: String,
    pub(crate) remote: String,
    /// How uploads are signed and remote hits verified (never a key).
    #[serde(default)]
    pub(crate) trust: String,
    pub(crate) uptime_secs: u64,
    pub(crate) s3_concurrency: usize,
    /// Uploads waiting or running.
    pub(crate) queue: u64,
    pub(crate) uploading: u64,
    pub(crate) uploads_done: u64,
    /// Already in the bucket, or gone from the store.
    pub(crate) uploads_skipped: u64,
    /// Given up after retries (still recorded under `pending/`).
    pub(crate) uploads_failed: u64,
    /// Failed attempts (retried later).
    pub(crate) upload_errors: u64,
    /// Fetch requests answered with entries of the crate.
    pub(crate) remote_hits: u64,
    /// Fetch requests answered without (none in the bucket, remote paused,
    /// or failed).
    pub(crate) remote_misses: u64,
    /// Remote entries refused: not signed by a trusted key.
    #[serde(default)]
    pub(crate) refused: u64,
    pub(crate) entries_fetched: u64,
    /// Seconds until remote requests resume after a failure (the
    /// circuit breaker); 0 when closed.
    pub(crate) paused_secs: u64,
    /// How long a crate's fetch takes, as learned (none finished: none).
    #[serde(default)]
    pub(crate) fetch_ms: Option<u64>,
    /// Fetch requests answered at once: compiling was expected to be
    /// faster than the fetch.
    #[serde(default)]
    pub(crate) not_waited: u64,
    pub(crate) config_reloads: u64,
}

/// Reads one line of at most `MAX_LINE` bytes (without its newline).
pub(crate) fn read_line(r: impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    r.take(MAX_LINE + 1).read_until(b'\n', &mut buf)?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() as u64 > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request too long",
        ));
    } else if buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    String::from_utf8(buf).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Reads and validates one request.
pub(crate) fn read_request(r: impl BufRead) -> Result<Request, String> {
    let line = read_line(r).map_err(|e| e.to_string())?;
    let req: Request = serde_json::from_str(&line).map_err(|_| "malformed request".to_string())?;
    req.validate()?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        "0a".repeat(32)
    }

    #[test]
    fn round_trip_and_validation() {
        let r = Request::Upload {
            remote: "e|r|b|p".into(),
            crate_name: crate::store::ids::test::krate("serde_json"),
            key: crate::store::ids::test::key(&key()),
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""op":"upload""#) && line.contains(r#""crate":"serde_json""#));
        assert_eq!(read_request(format!("{line}\n").as_bytes()), Ok(r));
        for bad in [
            format!(
                r#"{{"op":"upload","remote":"x","crate":"../etc","key":"{}"}}"#,
                key()
            ),
            r#"{"op":"upload","remote":"x","crate":"foo","key":"../../x"}"#.to_string(),
            format!(
                r#"{{"op":"upload","remote":"","crate":"foo","key":"{}"}}"#,
                key()
            ),
            r#"{"op":"fetch","remote":"x","crate":"foo","workspace":"rel/dir","wait_ms":1}"#
                .to_string(),
            r#"{"op":"rm","path":"/"}"#.to_string(),
            "not json".to_string(),
        ] {
            assert!(
                read_request(format!("{bad}\n").as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn lines_are_bounded() {
        let long = "x".repeat(MAX_LINE as usize + 10);
        assert!(read_line(long.as_bytes()).is_err());
        assert!(read_line(&b""[..]).is_err());
        assert_eq!(read_line(&b"{}\nrest"[..]).unwrap(), "{}");
    }
}
