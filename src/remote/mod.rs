/*!
The remote store: one trait, implemented by S3.

`Remote` is the only way `kache sync` touches the bucket. Its errors are
typed where the caller branches on them: a missing object, a credential
or permission problem (stop the whole sync at once), a missing bucket, a
skewed clock, or a transient failure (already retried by the time it
reaches the caller).
*/

pub(crate) mod layout;
pub(crate) mod s3;

use std::fmt;
use std::path::Path;
use std::time::Duration;

/// What went wrong with one remote request, after retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// 404 / NoSuchKey.
    NotFound,
    /// The access key id is unknown to the server.
    UnknownKey,
    /// The secret does not match the access key id.
    BadSignature,
    /// 403 AccessDenied and other permission failures.
    AccessDenied,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The local clock is too far from the server's.
    ClockSkew,
    /// 5xx, 429, throttling, timeouts, connection failures: retried, and
    /// still failing.
    Transient,
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
                | ErrorKind::ClockSkew
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
}

impl RemoteError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) name: String,
    pub(crate) size: u64,
}

/// An object store holding entry archives.
pub(crate) trait Remote: Send + Sync {
    /// Every object whose name starts with `prefix` (all pages).
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, RemoteError>;
    /// Downloads object `name` into a new file at `dest`; returns its size.
    /// On error `dest` may hold a partial download; the caller removes it.
    fn get(&self, name: &str, dest: &Path) -> Result<u64, RemoteError>;
    /// Uploads the file at `src` (of `len` bytes) as object `name`.
    fn put(&self, name: &str, src: &Path, len: u64) -> Result<(), RemoteError>;
    /// `s3://bucket/...` style description of an object, for messages.
    fn describe(&self, name: &str) -> String;
}
