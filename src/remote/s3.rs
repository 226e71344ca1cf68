/*!
The S3 remote: presigned rusty-s3 requests sent with one blocking ureq
agent.

Every request is signed fresh for each attempt, sent with the shared
agent (cloned into workers, so its connection pool is shared), and its
response mapped to a typed outcome. Transient failures are retried here
(see `Retry` for the policy: up to 10 attempts within a bounded time,
exponential backoff with equal jitter, `Retry-After` honoured up to
30 s), drawing on a retry budget shared by the whole run (so a server
failing everything sees a hundred retries in all, not ten for every
request); each retry re-sends the whole body (an upload is re-opened
from its spooled file).

An endpoint that has not answered a single request of this run and
refuses connections (or has no address, or drops them) is not a flaky
server but an absent one: its connection failures are retried only for
`Retry::first_contact`, after which every further request of the run
fails at once with the same error (a run against an unreachable cache
costs seconds, not a timeout per crate). Once the server has answered,
a connection failure is an ordinary transient one.

Nothing printed or returned ever holds a secret or the query string of
a presigned URL.
*/

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, S3Action, UrlStyle};
use ureq::Body;
use ureq::http::Response;

use super::{ErrorKind, Listed, Remote, RemoteError};
use crate::config::Config;
use crate::remote::credentials::Credentials;

/// How long a presigned URL is valid. Each attempt signs anew.
const SIGN_EXPIRY: Duration = Duration::from_hours(1);
/// Largest error or listing body we read.
const MAX_ERROR_BODY: u64 = 1 << 20;
const MAX_LIST_BODY: u64 = 64 << 20;

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
pub(crate) struct Retry {
    pub(crate) attempts: u32,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
    /// The longest server-requested wait honoured.
    pub(crate) retry_after_max: Duration,
    /// No retry starts later than this after the first attempt.
    pub(crate) window: Duration,
    /// The same bound for connection failures while the server has not
    /// answered any request of the run yet (see the module doc).
    pub(crate) first_contact: Duration,
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
pub(crate) struct RetryBudget {
    tokens: std::sync::atomic::AtomicI64,
}

impl RetryBudget {
    pub(crate) const MAX: i64 = 500;
    pub(crate) const COST: i64 = 5;

    pub(crate) fn new() -> RetryBudget {
        RetryBudget {
            tokens: std::sync::atomic::AtomicI64::new(Self::MAX),
        }
    }

    /// Takes the tokens for one retry, if there are enough.
    pub(crate) fn take(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.tokens
            .fetch_update(SeqCst, SeqCst, |t| {
                (t >= Self::COST).then(|| t - Self::COST)
            })
            .is_ok()
    }

    pub(crate) fn success(&self, retried: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let back = if retried { Self::COST } else { 1 };
        let _ = self
            .tokens
            .fetch_update(SeqCst, SeqCst, |t| Some((t + back).min(Self::MAX)));
    }
}

/// An S3 bucket reached through presigned URLs.
pub(crate) struct S3Remote {
    bucket: Bucket,
    creds: rusty_s3::Credentials,
    agent: ureq::Agent,
    bucket_name: String,
    endpoint: String,
    region: String,
    creds_source: String,
    access_key_masked: String,
    retry: Retry,
    budget: RetryBudget,
    /// The server has answered at least one request of this run.
    answered: AtomicBool,
    /// Set when a request gave up because no connection could be made
    /// before the server ever answered: the error every further request
    /// fails with at once.
    down: Mutex<Option<RemoteError>>,
    /// Strings that must never appear in a message.
    secrets: Vec<String>,
    /// The server's clock less ours, in seconds, from the `Date` header
    /// of the last answer (for `kache doctor`).
    skew: Mutex<Option<i64>>,
}

impl S3Remote {
    /// The remote of the settings, for every command that uses it
    /// (sync, gc --remote, the daemon, doctor): a bucket must be set and
    /// credentials found, each failure named with its fix.
    pub(crate) fn from_config(cfg: &Config) -> Result<S3Remote> {
        if cfg.bucket.value.is_none() {
            let file = crate::config::config_path().map_or_else(
                || "the config file".to_string(),
                |p| p.display().to_string(),
            );
            anyhow::bail!(
                "no remote configured: no S3 bucket is set (set KACHE_S3_BUCKET, or cache.remote.bucket in {file})"
            );
        }
        let creds = Credentials::resolve(cfg)
            .context("cannot load S3 credentials")?
            .ok_or_else(|| {
                anyhow!(
                    "no S3 credentials found (set KACHE_S3_ACCESS_KEY and KACHE_S3_SECRET_KEY, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials)"
                )
            })?;
        S3Remote::new(cfg, &creds)
    }

    /// Where the credentials came from (`KACHE_S3_ACCESS_KEY`, a
    /// profile, ...), never the credentials themselves.
    pub(crate) fn credentials_source(&self) -> &str {
        &self.creds_source
    }

    /// Builds the remote from the settings. Fails if no bucket is
    /// configured or the endpoint is unusable.
    pub(crate) fn new(cfg: &Config, creds: &Credentials) -> Result<S3Remote> {
        let bucket_name = cfg.bucket.value.clone().ok_or_else(|| {
            anyhow!("no S3 bucket configured (set KACHE_S3_BUCKET or cache.remote.bucket)")
        })?;
        let region = cfg.region.value.clone();
        let endpoint = cfg
            .endpoint
            .value
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let bucket = Bucket::new(
            endpoint
                .parse()
                .with_context(|| format!("invalid S3 endpoint `{endpoint}`"))?,
            UrlStyle::Path,
            bucket_name.clone(),
            region.clone(),
        )
        .map_err(|e| anyhow!("invalid S3 endpoint `{endpoint}` or bucket `{bucket_name}`: {e}"))?;
        let s3creds = match &creds.session_token {
            Some(t) => rusty_s3::Credentials::new_with_token(
                creds.access_key.clone(),
                creds.secret_key.clone(),
                t.clone(),
            ),
            None => rusty_s3::Credentials::new(creds.access_key.clone(), creds.secret_key.clone()),
        };
        let conc = cfg.s3_concurrency.value;
        // `cache.remote.timeout`: the longest silence on one request.
        let t = cfg.timeout.value;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(conc.max(10) + 4)
            .max_idle_connections_per_host(conc + 4)
            .max_redirects(0)
            .timeout_connect(Some(t.min(Duration::from_secs(10))))
            .timeout_send_request(Some(t))
            .timeout_recv_response(Some(t))
            .timeout_per_read(Some(t))
            .timeout_per_write(Some(t))
            .timeout_per_call(Some(Duration::from_mins(30)))
            .user_agent(concat!("kache/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let mut secrets = vec![creds.secret_key.clone()];
        secrets.extend(creds.session_token.clone());
        let access_key_masked: String = creds.access_key.chars().take(4).collect();
        Ok(S3Remote {
            bucket,
            creds: s3creds,
            agent,
            bucket_name,
            endpoint,
            region,
            creds_source: creds.source.clone(),
            access_key_masked: format!("{access_key_masked}****"),
            retry: Retry::default(),
            budget: RetryBudget::new(),
            answered: AtomicBool::new(false),
            down: Mutex::new(None),
            secrets,
            skew: Mutex::new(None),
        })
    }

    fn retrying<T>(
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
                e.message = scrub(&e.message, &self.secrets);
                return Err(e);
            }
            let absent = e.unreachable && !self.answered.load(Ordering::SeqCst);
            let next = next_retry(
                self.retry,
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
            e.message = scrub(&e.message, &self.secrets);
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

    /// Maps a transport-level failure. Never includes the URL.
    fn transport(&self, e: &ureq::Error) -> RemoteError {
        use ureq::Error as E;
        // ureq hands on std's name lookup failure as a plain io::Error
        // (of an unstable kind), known only by its text.
        let lookup_failed = |io: &io::Error| {
            io.to_string()
                .starts_with("failed to lookup address information")
        };
        let (kind, msg) = match e {
            E::Timeout(t) => (ErrorKind::Transient, format!("timed out ({t})")),
            E::Io(io) if lookup_failed(io) => (
                ErrorKind::Transient,
                format!("cannot resolve the host of {}", self.endpoint),
            ),
            E::Io(io) => (
                ErrorKind::Transient,
                format!("connection error with {}: {}", self.endpoint, io.kind()),
            ),
            E::ConnectionFailed => (
                ErrorKind::Transient,
                format!("cannot connect to {}", self.endpoint),
            ),
            E::HostNotFound => (
                ErrorKind::Transient,
                format!("cannot resolve the host of {}", self.endpoint),
            ),
            E::Protocol(p) => (ErrorKind::Transient, format!("HTTP protocol error: {p}")),
            E::BadUri(_) => (
                ErrorKind::Other,
                format!("invalid request URL (check the endpoint {})", self.endpoint),
            ),
            E::Tls(t) => (ErrorKind::Other, format!("TLS error: {t}")),
            other => (ErrorKind::Other, other.to_string()),
        };
        let unreachable = match e {
            E::ConnectionFailed | E::HostNotFound => true,
            E::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
            E::Io(io) => {
                lookup_failed(io)
                    || matches!(
                        io.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::HostUnreachable
                            | io::ErrorKind::NetworkUnreachable
                            | io::ErrorKind::AddrNotAvailable
                    )
            }
            _ => false,
        };
        let mut err = RemoteError::new(kind, scrub(&msg, &self.secrets));
        err.unreachable = unreachable;
        err
    }

    /// Passes a 2xx response; turns anything else into a typed error
    /// (reading the S3 error XML, never echoing its `<Resource>`).
    fn check_status(&self, mut resp: Response<Body>) -> Result<Response<Body>, RemoteError> {
        self.answered.store(true, Ordering::SeqCst);
        if let Some(server) = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
        {
            let ours = i64::try_from(crate::store::now_secs()).unwrap_or(i64::MAX);
            let server = i64::try_from(server).unwrap_or(i64::MAX);
            *self
                .skew
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(server - ours);
        }
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let retry_after = retry_after(&resp);
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_ERROR_BODY)
            .lossy_utf8(true)
            .read_to_string()
            .unwrap_or_default();
        let code = xml_field(&text, "Code").unwrap_or_default();
        let server_msg = xml_field(&text, "Message").unwrap_or_default();
        let kind = classify(status, &code, &server_msg);
        let code_or_status = if code.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status} {code}")
        };
        let message = match kind {
            ErrorKind::NotFound => "no such object".to_string(),
            ErrorKind::UnknownKey => format!(
                "{code_or_status}: the access key id `{}` is unknown to the server (check the credentials from {})",
                self.access_key_masked, self.creds_source
            ),
            ErrorKind::BadSignature => format!(
                "{code_or_status}: signature mismatch: the secret key does not match the access key id (check the credentials from {}, and that the region `{}` is the server's)",
                self.creds_source, self.region
            ),
            ErrorKind::AccessDenied => format!(
                "{code_or_status}: access denied{} (check that the key from {} may read and write bucket `{}`)",
                if server_msg.is_empty() {
                    String::new()
                } else {
                    format!(": {server_msg}")
                },
                self.creds_source,
                self.bucket_name
            ),
            ErrorKind::NoSuchBucket => format!(
                "bucket `{}` does not exist at {} (create it, or fix KACHE_S3_BUCKET)",
                self.bucket_name, self.endpoint
            ),
            ErrorKind::WrongRegion => format!(
                "{code_or_status}: the server expects another region or endpoint than `{}` at {} (set KACHE_S3_REGION to the server's region)",
                self.region, self.endpoint
            ),
            ErrorKind::ClockSkew => format!(
                "{code_or_status}: the local clock differs too much from the server's (check the clock)"
            ),
            ErrorKind::Transient
            | ErrorKind::Other
            | ErrorKind::Local
            | ErrorKind::Precondition
            | ErrorKind::Unsupported => {
                if server_msg.is_empty() {
                    code_or_status
                } else {
                    format!("{code_or_status}: {server_msg}")
                }
            }
        };
        Err(RemoteError {
            kind,
            message: scrub(&message, &self.secrets),
            retry_after,
            unreachable: false,
        })
    }

    /// One GET of an object (its first `head` bytes only, if given): the
    /// response once its status is a success.
    fn get_response(&self, name: &str, head: Option<u64>) -> Result<Response<Body>, RemoteError> {
        let url = self
            .bucket
            .get_object(Some(&self.creds), name)
            .sign(SIGN_EXPIRY);
        let mut req = self
            .agent
            .get(url.as_str())
            .header("accept-encoding", "identity");
        if let Some(n) = head {
            req = req.header("range", &format!("bytes=0-{}", n.saturating_sub(1)));
        }
        let resp = req.call().map_err(|e| self.transport(&e))?;
        self.check_status(resp)
    }

    fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        max_keys: Option<usize>,
    ) -> Result<rusty_s3::actions::ListObjectsV2Response, RemoteError> {
        self.retrying(|| {
            let mut a = self.bucket.list_objects_v2(Some(&self.creds));
            a.with_prefix(prefix);
            if let Some(t) = token {
                a.with_continuation_token(t);
            }
            if let Some(m) = max_keys {
                a.with_max_keys(m);
            }
            let url = a.sign(SIGN_EXPIRY);
            let resp = self
                .agent
                .get(url.as_str())
                .call()
                .map_err(|e| self.transport(&e))?;
            // A listing has no object to miss: a plain 404 means the
            // endpoint is not the S3 service it should be.
            let mut resp = self.check_status(resp).map_err(|mut e| {
                if e.kind == ErrorKind::NotFound {
                    e.kind = ErrorKind::Other;
                    e.message = format!(
                        "HTTP 404 for the listing of bucket `{}` (check that {} is the S3 endpoint)",
                        self.bucket_name, self.endpoint
                    );
                }
                e
            })?;
            let text = resp
                .body_mut()
                .with_config()
                .limit(MAX_LIST_BODY)
                .read_to_string()
                .map_err(|e| self.transport(&e))?;
            ListObjectsV2::parse_response(&text).map_err(|e| {
                RemoteError::new(ErrorKind::Transient, format!("unreadable listing: {e}"))
            })
        })
    }
}

impl Remote for S3Remote {
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(prefix, token.as_deref(), None)?;
            out.extend(page.contents.into_iter().map(|c| Listed {
                name: c.key,
                size: c.size.unwrap_or(0),
                modified: c.last_modified.as_deref().and_then(parse_http_time),
            }));
            match page.next_continuation_token {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                Some(_) => {
                    return Err(RemoteError::new(
                        ErrorKind::Other,
                        "the server repeated a continuation token",
                    ));
                }
                None => return Ok(out),
            }
        }
    }

    fn get(&self, name: &str, dest: &Path) -> Result<u64, RemoteError> {
        self.retrying(|| {
            let mut resp = self.get_response(name, None)?;
            let expected = resp.body().content_length();
            let mut f = File::create(dest).map_err(|e| local_error(dest, &e))?;
            let mut r = resp.body_mut().as_reader();
            // Not io::copy: a failed read (the network) is retried, a
            // failed write (the local disk) is not.
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                let got = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(RemoteError::new(
                            ErrorKind::Transient,
                            format!("download interrupted: {}", e.kind()),
                        ));
                    }
                };
                f.write_all(&buf[..got])
                    .map_err(|e| local_error(dest, &e))?;
                n += got as u64;
            }
            f.flush().map_err(|e| local_error(dest, &e))?;
            if let Some(exp) = expected
                && n != exp
            {
                return Err(RemoteError::new(
                    ErrorKind::Transient,
                    format!("download truncated ({n} of {exp} bytes)"),
                ));
            }
            Ok(n)
        })
    }

    fn put(&self, name: &str, src: &Path, len: u64) -> Result<(), RemoteError> {
        self.retrying(|| {
            let file = File::open(src).map_err(|e| {
                RemoteError::new(
                    ErrorKind::Other,
                    format!("cannot read {}: {e}", src.display()),
                )
            })?;
            let actual = file.metadata().map_or(u64::MAX, |m| m.len());
            if actual != len {
                return Err(RemoteError::new(
                    ErrorKind::Other,
                    format!("{} is {actual} bytes, expected {len}", src.display()),
                ));
            }
            let url = self
                .bucket
                .put_object(Some(&self.creds), name)
                .sign(SIGN_EXPIRY);
            // A File body is sent with its length as Content-Length.
            let resp = self
                .agent
                .put(url.as_str())
                .send(file)
                .map_err(|e| self.transport(&e))?;
            let mut resp = self.check_status(resp)?;
            // Drain the (empty) body so the connection returns to the pool.
            let _ = resp
                .body_mut()
                .with_config()
                .limit(MAX_ERROR_BODY)
                .read_to_vec();
            Ok(())
        })
    }

    fn describe(&self, name: &str) -> String {
        format!("s3://{}/{name}", self.bucket_name)
    }

    fn get_bytes(&self, name: &str, limit: u64) -> Result<Vec<u8>, RemoteError> {
        self.retrying(|| {
            let mut resp = self.get_response(name, None)?;
            resp.body_mut()
                .with_config()
                .limit(limit)
                .read_to_vec()
                .map_err(|e| self.transport(&e))
        })
    }

    fn get_head(&self, name: &str, n: u64) -> Result<Vec<u8>, RemoteError> {
        self.retrying(|| {
            let mut resp = self.get_response(name, Some(n))?;
            // A server that ignores Range sends it all: read no more.
            let mut out = Vec::new();
            resp.body_mut()
                .as_reader()
                .take(n)
                .read_to_end(&mut out)
                .map_err(|e| {
                    RemoteError::new(
                        ErrorKind::Transient,
                        format!("download interrupted: {}", e.kind()),
                    )
                })?;
            Ok(out)
        })
    }

    fn put_bytes(&self, name: &str, bytes: &[u8], if_absent: bool) -> Result<(), RemoteError> {
        self.retrying(|| {
            let mut a = self.bucket.put_object(Some(&self.creds), name);
            if if_absent {
                a.headers_mut().insert("if-none-match", "*");
            }
            let url = a.sign(SIGN_EXPIRY);
            let mut req = self.agent.put(url.as_str());
            if if_absent {
                req = req.header("if-none-match", "*");
            }
            let resp = req.send(bytes).map_err(|e| self.transport(&e))?;
            let mut resp = self.check_status(resp)?;
            let _ = resp
                .body_mut()
                .with_config()
                .limit(MAX_ERROR_BODY)
                .read_to_vec();
            Ok(())
        })
    }

    fn delete(&self, names: &[String]) -> Result<Vec<(String, String)>, RemoteError> {
        use rusty_s3::actions::{DeleteObjectsResponse, ObjectIdentifier};
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let batched = self.retrying(|| {
            let ids: Vec<ObjectIdentifier> = names
                .iter()
                .map(|n| ObjectIdentifier::new(n.clone()))
                .collect();
            let mut a = self.bucket.delete_objects(Some(&self.creds), ids.iter());
            a.set_quiet(true);
            let url = a.sign(SIGN_EXPIRY);
            let (body, md5) = a.body_with_md5();
            let resp = self
                .agent
                .post(url.as_str())
                .header("content-md5", &md5)
                .send(body.as_bytes())
                .map_err(|e| self.transport(&e))?;
            let mut resp = self.check_status(resp)?;
            let text = resp
                .body_mut()
                .with_config()
                .limit(MAX_LIST_BODY)
                .read_to_string()
                .map_err(|e| self.transport(&e))?;
            Ok(text)
        });
        match batched {
            Ok(text) => Ok(DeleteObjectsResponse::parse(&text)
                .map(|r| {
                    r.errors
                        .into_iter()
                        .filter(|e| e.code != "NoSuchKey")
                        .map(|e| (e.key, format!("{}: {}", e.code, e.message)))
                        .collect()
                })
                .unwrap_or_default()),
            // No DeleteObjects here: one request per object.
            Err(e) if matches!(e.kind, ErrorKind::Unsupported | ErrorKind::Other) => {
                let mut failed = Vec::new();
                for n in names {
                    let r = self.retrying(|| {
                        let url = self
                            .bucket
                            .delete_object(Some(&self.creds), n)
                            .sign(SIGN_EXPIRY);
                        let resp = self
                            .agent
                            .delete(url.as_str())
                            .call()
                            .map_err(|e| self.transport(&e))?;
                        match self.check_status(resp) {
                            Ok(_) => Ok(()),
                            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
                            Err(e) => Err(e),
                        }
                    });
                    match r {
                        Ok(()) => {}
                        Err(e) if e.kind.is_fatal() => return Err(e),
                        Err(e) => failed.push((n.clone(), e.message)),
                    }
                }
                Ok(failed)
            }
            Err(e) => Err(e),
        }
    }
}

/// An S3 timestamp (`2026-11-25T19:00:00.000Z`) as seconds since the
/// epoch.
pub(crate) fn parse_http_time(s: &str) -> Option<u64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

impl S3Remote {
    /// The server's clock less ours, in seconds, as of the last answer
    /// that carried a `Date` header.
    pub(crate) fn clock_skew(&self) -> Option<i64> {
        *self
            .skew
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An HTTP `Date` header (`Thu, 03 Dec 2026 22:27:15 GMT`) as seconds
/// since the epoch.
pub(crate) fn parse_http_date(s: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut f = s.split_whitespace().skip(1);
    let (day, mon, year, time) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let m = MONTHS.iter().position(|x| *x == mon)? + 1;
    parse_http_time(&format!("{year}-{m:02}-{day}T{time}Z"))
}

/// A failure to write a download to the local disk.
fn local_error(dest: &Path, e: &io::Error) -> RemoteError {
    RemoteError::new(
        ErrorKind::Local,
        format!("cannot write {}: {e}", dest.display()),
    )
}

/// Maps an HTTP status, S3 error code and message to what we do about
/// it. Garage answers `AccessDenied` with "No such key" or "Invalid
/// signature" where AWS has distinct codes.
pub(crate) fn classify(status: u16, code: &str, message: &str) -> ErrorKind {
    if status == 403 && (code == "AccessDenied" || code.is_empty()) {
        let m = message.to_ascii_lowercase();
        if m.contains("no such key") {
            return ErrorKind::UnknownKey;
        }
        if m.contains("invalid signature") {
            return ErrorKind::BadSignature;
        }
    }
    match code {
        "AuthorizationHeaderMalformed"
        | "AuthorizationQueryParametersError"
        | "PermanentRedirect" => {
            return ErrorKind::WrongRegion;
        }
        "NoSuchKey" => return ErrorKind::NotFound,
        "NoSuchBucket" => return ErrorKind::NoSuchBucket,
        "InvalidAccessKeyId" | "NotSignedUp" => return ErrorKind::UnknownKey,
        "SignatureDoesNotMatch" => return ErrorKind::BadSignature,
        "RequestTimeTooSkewed" => return ErrorKind::ClockSkew,
        // AWS: another conditional write to the same name is in flight.
        "ConditionalRequestConflict" | "PreconditionFailed" => return ErrorKind::Precondition,
        "AccessDenied"
        | "ExpiredToken"
        | "InvalidToken"
        | "TokenRefreshRequired"
        | "AllAccessDisabled"
        | "AccountProblem" => return ErrorKind::AccessDenied,
        "SlowDown"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "InternalError"
        | "ServiceUnavailable"
        | "Throttling"
        | "ThrottlingException"
        | "TooManyRequests"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "BandwidthLimitExceeded"
        | "PriorRequestNotComplete" => return ErrorKind::Transient,
        _ => {}
    }
    match status {
        404 => ErrorKind::NotFound,
        403 => ErrorKind::AccessDenied,
        412 => ErrorKind::Precondition,
        501 => ErrorKind::Unsupported,
        408 | 429 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

/// The text of `<tag>...</tag>` in a small XML document (S3 error bodies
/// are flat). Entities are unescaped for the few S3 uses.
pub(crate) fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let v = xml[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    Some(v.trim().to_string())
}

fn retry_after<B>(resp: &Response<B>) -> Option<Duration> {
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
pub(crate) enum GiveUp {
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
pub(crate) fn next_retry(
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
pub(crate) fn backoff(r: Retry, attempt: u32, retry_after: Option<Duration>) -> Duration {
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

/// Removes presigned query strings and known secrets from a message.
pub(crate) fn scrub(s: &str, secrets: &[String]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('?') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')'))
            .unwrap_or(tail.len());
        let seg = &tail[..end];
        if seg.contains('=') {
            out.push_str("?[redacted]");
        } else {
            out.push_str(seg);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    for secret in secrets {
        if secret.len() >= 4 {
            out = out.replace(secret.as_str(), "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let c = |s, code| classify(s, code, "");
        assert_eq!(c(404, "NoSuchKey"), ErrorKind::NotFound);
        assert_eq!(c(404, "NoSuchBucket"), ErrorKind::NoSuchBucket);
        assert_eq!(c(403, "InvalidAccessKeyId"), ErrorKind::UnknownKey);
        assert_eq!(c(403, "NotSignedUp"), ErrorKind::UnknownKey);
        assert_eq!(c(403, "SignatureDoesNotMatch"), ErrorKind::BadSignature);
        assert_eq!(c(403, "AccessDenied"), ErrorKind::AccessDenied);
        assert_eq!(c(403, "RequestTimeTooSkewed"), ErrorKind::ClockSkew);
        assert_eq!(
            c(400, "AuthorizationHeaderMalformed"),
            ErrorKind::WrongRegion
        );
        assert_eq!(c(503, "SlowDown"), ErrorKind::Transient);
        assert_eq!(c(400, "RequestTimeout"), ErrorKind::Transient);
        assert_eq!(c(429, ""), ErrorKind::Transient);
        assert_eq!(c(502, ""), ErrorKind::Transient);
        assert_eq!(c(400, "InvalidArgument"), ErrorKind::Other);
        assert_eq!(c(412, ""), ErrorKind::Precondition);
        assert_eq!(
            c(409, "ConditionalRequestConflict"),
            ErrorKind::Precondition
        );
        // Garage's wording.
        assert_eq!(
            classify(403, "AccessDenied", "Forbidden: No such key: GK123"),
            ErrorKind::UnknownKey
        );
        assert_eq!(
            classify(403, "AccessDenied", "Forbidden: Invalid signature"),
            ErrorKind::BadSignature
        );
        assert!(ErrorKind::BadSignature.is_fatal() && !ErrorKind::Transient.is_fatal());
    }

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:01:40 GMT"), Some(100));
        assert_eq!(
            parse_http_date("Thu, 03 Dec 2026 22:27:15 GMT"),
            parse_http_time("2026-12-03T22:27:15Z")
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn http_times() {
        assert_eq!(parse_http_time("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_http_time("2026-11-25T19:00:00.000Z"),
            Some(1_795_633_200)
        );
        assert_eq!(parse_http_time("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(parse_http_time("garbage"), None);
    }

    #[test]
    fn xml_fields() {
        let x = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please &amp; reduce</Message><Resource>/b/k?X-Amz-Signature=abc</Resource></Error>";
        assert_eq!(xml_field(x, "Code").as_deref(), Some("SlowDown"));
        assert_eq!(xml_field(x, "Message").as_deref(), Some("Please & reduce"));
        assert_eq!(xml_field(x, "Nope"), None);
    }

    #[test]
    fn scrubbing() {
        let s = "GET http://h/b/k?X-Amz-Credential=AK%2F&X-Amz-Signature=ff failed: topsecret (x)";
        let out = scrub(s, &["topsecret".to_string()]);
        assert_eq!(out, "GET http://h/b/k?[redacted] failed: [redacted] (x)");
        assert_eq!(scrub("what? nothing", &[]), "what? nothing");
    }

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
}
