/*!
`kache daemon`: uploads in the background after each compile, remote hits
during the build.

Shape (the design card forbids an async runtime): one process per local
store, blocking threads throughout.

- The accept loop hands each connection to a short-lived thread (at most
  `MAX_CONNS` at once). A connection carries one JSON line each way
  (`protocol`) and is refused unless the peer's uid (`SO_PEERCRED`) is
  ours. The socket sits in `<store>/daemon/`, mode 0700, so no other user
  can even reach it; the uid check is the second lock on the same door.
- Uploads: the wrapper first records the upload durably as an empty file
  `<store>/pending/<remote id>/<crate>/<key>`, then sends one line
  without waiting. A crash, a `kill -9` or no daemon at all loses
  nothing: the daemon reads `pending/` when it starts, every 30 s and
  before it stops (a notice can be missed, the marker cannot), and
  `kache sync --push` uploads every local entry anyway. A marker goes
  only once its entry is in the bucket (or gone from the store).
- Remote hits: on a local miss the wrapper asks for the crate (within
  `cache.daemon_wait`, 2 s by default); the daemon lists
  `{prefix}/{crate}/` and pulls what the store lacks exactly as
  `kache sync --pull` does (`transfer::pull`: verified, imported atomically),
  and the wrapper looks up again. A fresh runner has no input lists, and
  the crate is what it knows before compiling, so the crate prefix is the
  unit; the layout is unchanged, old buckets stay readable. The first
  request from a workspace also prefetches the crates of its Cargo.lock.
  A crate fetched in the last `FRESH` is not listed again.
- One S3 layer, one bound: every request goes through the `S3Remote` of
  `kache sync` (its retry policy included) behind one semaphore of
  `s3_concurrency` permits shared by uploads and fetches; a fetch (a build
  waits on it) takes the next free permit before any upload.
- The upload threads run at nice 19: on a busy machine the build's
  compiles get the CPU first; on an idle one (as while `kache daemon
  stop` drains) they run at full speed. Fetches keep normal priority.
- Circuit breaker: a failed request, or a fetch slower than the wrapper's
  wait, pauses remote work (30 s, doubling to 5 min while it keeps
  failing); meanwhile fetches are answered at once with nothing and
  uploads wait. A slow or dead remote is paid for once, not per compile.
- The config file is watched; a change rebuilds the remote (and so the
  identity wrappers are compared with). `s3_concurrency` needs a restart.
- Nothing printed or logged holds a secret: messages come from the S3
  layer, which scrubs them, and the remote is named without credentials.
*/

pub(crate) mod client;
pub(crate) mod protocol;

// The daemon process, by job, each module above the ones it uses:
// `permits` and `breaker` (the bounds on remote work), `shared` (what
// every job reads), `upload` and `fetch` (the two kinds of remote work),
// `watch` (the config watcher), `server` (the socket and the dispatch).
mod breaker;
mod fetch;
mod pace;
mod peer;
mod permits;
mod server;
mod shared;
mod upload;
mod watch;

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result, bail};

use crate::cli::{DaemonAction, DaemonCmd};
use crate::config::{Config, env_nonempty};
use crate::store::now_secs;

/// Where one store's daemon keeps its files.
pub(crate) struct Paths {
    /// `<store>/daemon`, mode 0700.
    pub(crate) dir: PathBuf,
    pub(crate) sock: PathBuf,
    /// Held (flock) by the running daemon: one per store.
    pub(crate) lock: PathBuf,
    pub(crate) pid: PathBuf,
    /// stderr of a detached daemon.
    pub(crate) log: PathBuf,
    /// Its mtime throttles autostart attempts.
    pub(crate) autostart: PathBuf,
    /// Its mtime: when a wrapper last waited in vain for an answer.
    pub(crate) unresponsive: PathBuf,
}

/// The daemon's paths for the store at `root`. A socket path must fit
/// in `sockaddr_un` (108 bytes): a longer one moves to
/// `$XDG_RUNTIME_DIR` (private to the user by definition), named by a
/// hash of the store path.
pub(crate) fn paths(root: &Path) -> Paths {
    let dir = root.join("daemon");
    let mut sock = dir.join("sock");
    if sock.as_os_str().len() > 100
        && let Some(run) = env_nonempty("XDG_RUNTIME_DIR")
    {
        let h = blake3::hash(root.as_os_str().as_bytes()).to_hex();
        sock = Path::new(&run).join(format!("kache-{}.sock", &h[..16]));
    }
    Paths {
        sock,
        lock: dir.join("lock"),
        pid: dir.join("pid"),
        log: dir.join("log"),
        autostart: dir.join("autostart"),
        unresponsive: dir.join("unresponsive"),
        dir,
    }
}

/// Creates `d` (mode 0700) or checks that it is ours and tightens it.
pub(crate) fn private_dir(d: &Path) -> Result<()> {
    fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    let m = fs::metadata(d).with_context(|| format!("cannot read {}", d.display()))?;
    if m.uid() != crate::store::euid() {
        bail!(
            "{} belongs to uid {}, not to us (uid {}): refusing to put the daemon socket there",
            d.display(),
            m.uid(),
            crate::store::euid()
        );
    }
    if m.mode() & 0o077 != 0 {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", d.display()))?;
    }
    Ok(())
}

/// One line of the daemon's log (its stderr), stamped with the time.
fn log(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "[{}] kache daemon: {msg}", now_secs());
}

/// Locks `m`, ignoring poisoning: one thread's panic does not stop the
/// daemon's other threads.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn run(cfg: Config, cmd: &DaemonCmd) -> Result<ExitCode> {
    match &cmd.action {
        None => server::serve(cfg),
        Some(DaemonAction::Start) => client::start(&cfg),
        Some(DaemonAction::Stop { timeout }) => client::stop(&cfg, timeout),
        Some(DaemonAction::Status { json }) => client::status(&cfg, *json),
    }
}
