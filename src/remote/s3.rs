/*!
The S3 remote: presigned rusty-s3 requests sent with one blocking ureq
agent.

Every request is signed fresh for each attempt, sent with the shared
agent (cloned into workers, so its connection pool is shared), and its
response mapped to a typed outcome. Transient failures are retried here,
by the policy of `retry`; each retry re-sends the whole body (an upload
is re-opened from its spooled file).

Nothing printed or returned ever holds a secret or the query string of
a presigned URL.
*/

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

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
    retry: super::retry::Retrier,
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
            retry: super::retry::Retrier::default(),
            secrets,
            skew: Mutex::new(None),
        })
    }

    /// Runs `op` with retries (see `retry`); every error it returns is
    /// scrubbed of secrets.
    fn retrying<T>(&self, op: impl FnMut() -> Result<T, RemoteError>) -> Result<T, RemoteError> {
        self.retry.run(op).map_err(|mut e| {
            e.message = scrub(&e.message, &self.secrets);
            e
        })
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
        self.retry.answered();
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
        let retry_after = super::retry::retry_after(&resp);
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
            // Keys come back as stored. With `encoding-type=url` (which
            // rusty-s3 asks for) the client decodes `+` as a space, so a
            // server that does not encode keys (s3s-fs) turns a version
            // such as `2.1.3+zstd.1.5.7` into one no entry can have.
            // kache's own names are plain ASCII, safe in XML as they are.
            a.query_mut().remove("encoding-type");
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

/// Most pages one listing reads (1000 keys each: a hundred million
/// objects), so a server that never stops paging cannot keep a sync
/// listing forever.
const MAX_LIST_PAGES: usize = 100_000;

/// Pages through a listing: `page(token)` gives a page's items and the
/// next continuation token. Ends at a page without one; a token seen
/// before (a server cycling through tokens) or more than
/// `MAX_LIST_PAGES` pages is an error.
fn paged<T>(
    mut page: impl FnMut(Option<&str>) -> Result<(Vec<T>, Option<String>), RemoteError>,
) -> Result<Vec<T>, RemoteError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_LIST_PAGES {
        let (items, next) = page(token.as_deref())?;
        out.extend(items);
        match next {
            None => return Ok(out),
            Some(t) if !seen.insert(t.clone()) => {
                return Err(RemoteError::new(
                    ErrorKind::Other,
                    "the server repeated a continuation token",
                ));
            }
            Some(t) => token = Some(t),
        }
    }
    Err(RemoteError::new(
        ErrorKind::Other,
        format!("the listing went on past {MAX_LIST_PAGES} pages"),
    ))
}

impl Remote for S3Remote {
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError> {
        paged(|token| {
            let page = self.list_page(prefix, token, None)?;
            let listed = page
                .contents
                .into_iter()
                .map(|c| Listed {
                    name: c.key,
                    size: c.size.unwrap_or(0),
                    modified: c.last_modified.as_deref().and_then(parse_http_time),
                })
                .collect();
            Ok((listed, page.next_continuation_token))
        })
    }

    fn get(&self, name: &str, dest: &Path, max: u64) -> Result<u64, RemoteError> {
        self.retrying(|| {
            let mut resp = self.get_response(name, None)?;
            let expected = resp.body().content_length();
            if let Some(exp) = expected
                && exp > max
            {
                return Err(RemoteError::new(ErrorKind::Other, super::larger(exp, max)));
            }
            let mut f = File::create(dest).map_err(|e| local_error(dest, &e))?;
            // One byte past the listed size tells a larger object.
            let mut r = resp.body_mut().as_reader().take(max.saturating_add(1));
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
                if n > max {
                    return Err(RemoteError::new(ErrorKind::Other, super::larger(n, max)));
                }
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

    /// A hostile endpoint cycling through continuation tokens (A, B, A,
    /// ...) ends the listing with an error, as one repeating a token and
    /// one paging forever do; an honest one is read to its last page.
    #[test]
    fn listings_are_bounded() {
        let honest = paged(|t| {
            Ok(match t {
                None => (vec![1, 2], Some("a".to_string())),
                Some("a") => (vec![3], Some("b".to_string())),
                _ => (vec![4], None),
            })
        });
        assert_eq!(honest.unwrap(), vec![1, 2, 3, 4]);
        let mut calls = 0;
        let cycling = paged(|t| {
            calls += 1;
            let next = if t == Some("a") { "b" } else { "a" };
            Ok((vec![0u8], Some(next.to_string())))
        });
        let e = cycling.unwrap_err();
        assert!(
            e.to_string().contains("repeated a continuation token"),
            "{e}"
        );
        assert_eq!(calls, 3);
        let mut n = 0u64;
        let endless = paged(|_| {
            n += 1;
            Ok((Vec::<u8>::new(), Some(n.to_string())))
        });
        assert!(
            endless
                .unwrap_err()
                .to_string()
                .contains("past 100000 pages")
        );
    }

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
}
