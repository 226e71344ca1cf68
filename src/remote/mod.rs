/*!
The remote store: one trait, implemented by S3.

`Remote` is the only way `kache sync` touches the bucket. Its errors are
typed where the caller branches on them: a missing object, a credential
or permission problem (stop the whole sync at once), a missing bucket, a
skewed clock, or a transient failure (already retried by the time it
reaches the caller).
*/

pub(crate) mod credentials;
pub(crate) mod layout;
mod retry;
pub(crate) mod s3;

use std::fmt;
use std::path::Path;
use std::time::Duration;

/// What went wrong with one remote request, after retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// 404 / `NoSuchKey`.
    NotFound,
    /// The access key id is unknown to the server.
    UnknownKey,
    /// The secret does not match the access key id.
    BadSignature,
    /// 403 `AccessDenied` and other permission failures.
    AccessDenied,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The request was signed for another region than the server's.
    WrongRegion,
    /// The local clock is too far from the server's.
    ClockSkew,
    /// 5xx, 429, throttling, timeouts, connection failures: retried, and
    /// still failing.
    Transient,
    /// Writing the download to the local disk failed (full, read-only):
    /// every further transfer would fail the same way.
    Local,
    /// 412: a conditional write found the object already there.
    Precondition,
    /// 501: the service does not implement the request (`DeleteObjects`
    /// on some stores).
    Unsupported,
    /// Anything else (a 4xx we do not know, an unreadable listing).
    Other,
}

impl ErrorKind {
    /// Errors that make every further request pointless: stop the sync.
    pub(crate) fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorKind::UnknownKey
                | ErrorKind::BadSignature
                | ErrorKind::AccessDenied
                | ErrorKind::NoSuchBucket
                | ErrorKind::WrongRegion
                | ErrorKind::ClockSkew
                | ErrorKind::Local
        )
    }
}

/// A failed remote request. The message never holds a secret or a
/// presigned query string.
#[derive(Clone, Debug)]
pub(crate) struct RemoteError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    /// The server asked us to wait this long before retrying.
    pub(crate) retry_after: Option<Duration>,
    /// No connection could be made at all (refused, no such host,
    /// connect timeout): the server may be down or the endpoint wrong,
    /// as opposed to a server that answered and failed.
    pub(crate) unreachable: bool,
}

impl RemoteError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: message.into(),
            retry_after: None,
            unreachable: false,
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {}

/// The message for an object larger than it was listed (replaced since,
/// or a hostile server): nothing past the listed size is read.
pub(crate) fn larger(got: u64, listed: u64) -> String {
    format!(
        "the object is larger than the {listed} bytes it was listed at ({got}); not read further"
    )
}

/// One listed object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) name: String,
    pub(crate) size: u64,
    /// Last modified (written), seconds since the epoch, if the server
    /// said.
    pub(crate) modified: Option<u64>,
}

/// An object store holding entry archives.
pub(crate) trait Remote: Send + Sync {
    /// Every object whose name starts with `prefix` (all pages).
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError>;
    /// Downloads object `name` into a new file at `dest`; returns its size.
    /// No more than `max` bytes (the size it was listed at) are read: a
    /// larger object is an error. On error `dest` may hold a partial
    /// download; the caller removes it.
    fn get(&self, name: &str, dest: &Path, max: u64) -> Result<u64, RemoteError>;
    /// Uploads the file at `src` (of `len` bytes) as object `name`.
    fn put(&self, name: &str, src: &Path, len: u64) -> Result<(), RemoteError>;
    /// `s3://bucket/...` style description of an object, for messages.
    fn describe(&self, name: &str) -> String;
    /// A small object's bytes (at most `limit`).
    fn get_bytes(&self, name: &str, limit: u64) -> Result<Vec<u8>, RemoteError> {
        let _ = (name, limit);
        Err(RemoteError::new(ErrorKind::Unsupported, "not supported"))
    }
    /// The first `n` bytes (at most) of an object (a ranged GET).
    fn get_head(&self, name: &str, n: u64) -> Result<Vec<u8>, RemoteError> {
        let _ = (name, n);
        Err(RemoteError::new(ErrorKind::Unsupported, "not supported"))
    }
    /// Writes a small object; with `if_absent`, only if no object of that
    /// name exists (`Precondition` otherwise, where the service checks).
    fn put_bytes(&self, name: &str, bytes: &[u8], if_absent: bool) -> Result<(), RemoteError> {
        let _ = (name, bytes, if_absent);
        Err(RemoteError::new(ErrorKind::Unsupported, "not supported"))
    }
    /// Deletes objects (a missing one is not an error): one batched
    /// request where the service has `DeleteObjects`, else one each.
    /// Returns the names that could not be deleted, with the reason.
    fn delete(&self, names: &[String]) -> Result<Vec<(String, String)>, RemoteError> {
        let _ = names;
        Err(RemoteError::new(ErrorKind::Unsupported, "not supported"))
    }
}

/// A remote in a local directory, for unit tests of the planning and
/// scheduling around `Remote` (S3 behaviour is tested against real
/// servers). It counts requests in flight and can fail chosen objects.
#[cfg(test)]
pub(crate) mod dir {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::{ErrorKind, Listed, Remote, RemoteError};

    pub(crate) struct DirRemote {
        pub(crate) root: PathBuf,
        pub(crate) inflight: AtomicUsize,
        pub(crate) max_inflight: AtomicUsize,
        pub(crate) requests: AtomicUsize,
        pub(crate) fail: Mutex<HashMap<String, ErrorKind>>,
        pub(crate) delay: Duration,
    }

    impl DirRemote {
        pub(crate) fn new(root: &Path) -> DirRemote {
            DirRemote {
                root: root.to_path_buf(),
                inflight: AtomicUsize::new(0),
                max_inflight: AtomicUsize::new(0),
                requests: AtomicUsize::new(0),
                fail: Mutex::default(),
                delay: Duration::from_millis(20),
            }
        }

        fn enter(&self, name: &str) -> Result<(), RemoteError> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let n = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_inflight.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            let fail = self.fail.lock().unwrap().get(name).copied();
            match fail {
                Some(kind) => {
                    self.inflight.fetch_sub(1, Ordering::SeqCst);
                    Err(RemoteError::new(kind, format!("injected {kind:?}")))
                }
                None => Ok(()),
            }
        }

        fn leave(&self) {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Remote for DirRemote {
        fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError> {
            self.enter(prefix)?;
            let mut out = Vec::new();
            let mut stack = vec![self.root.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        let name = p
                            .strip_prefix(&self.root)
                            .unwrap()
                            .to_string_lossy()
                            .to_string();
                        if name.starts_with(prefix) {
                            let size = e.metadata().map_or(0, |m| m.len());
                            out.push(Listed {
                                name,
                                size,
                                modified: None,
                            });
                        }
                    }
                }
            }
            self.leave();
            Ok(out)
        }

        fn get(&self, name: &str, dest: &Path, max: u64) -> Result<u64, RemoteError> {
            self.enter(name)?;
            let r = std::fs::copy(self.root.join(name), dest)
                .map_err(|e| RemoteError::new(ErrorKind::NotFound, e.to_string()))
                .and_then(|n| {
                    if n > max {
                        Err(RemoteError::new(ErrorKind::Other, super::larger(n, max)))
                    } else {
                        Ok(n)
                    }
                });
            self.leave();
            r
        }
        fn get_head(&self, name: &str, n: u64) -> Result<Vec<u8>, RemoteError> {
            self.enter(name)?;
            let r = std::fs::read(self.root.join(name))
                .map(|mut b| {
                    b.truncate(usize::try_from(n).unwrap_or(usize::MAX));
                    b
                })
                .map_err(|e| RemoteError::new(ErrorKind::NotFound, e.to_string()));
            self.leave();
            r
        }

        fn put(&self, name: &str, src: &Path, len: u64) -> Result<(), RemoteError> {
            self.enter(name)?;
            let dst = self.root.join(name);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            let n = std::fs::copy(src, &dst).unwrap();
            assert_eq!(n, len, "the announced length is the file's");
            self.leave();
            Ok(())
        }

        fn describe(&self, name: &str) -> String {
            format!("dir://{name}")
        }

        fn put_bytes(&self, name: &str, bytes: &[u8], if_absent: bool) -> Result<(), RemoteError> {
            self.enter(name)?;
            let dst = self.root.join(name);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            let r = if if_absent && dst.exists() {
                Err(RemoteError::new(ErrorKind::Precondition, name))
            } else {
                std::fs::write(&dst, bytes).unwrap();
                Ok(())
            };
            self.leave();
            r
        }
    }
}
