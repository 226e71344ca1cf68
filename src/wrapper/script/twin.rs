/*!
A build-script miss traced behind the build (`cache.trace_behind`).

Tracing costs every file call of the script and its children a round
trip through kache (see `trace`): a third more time for a
`configure`-and-`make` script such as jemalloc's, and that script is the
build's critical path. So where kache can isolate a second run, a miss
runs the script twice at once:

- the build's run, untraced, exactly as plain cargo runs it (output
  straight to cargo, `OUT_DIR` as cargo left it): everything cargo reads
  comes from it, at full speed;
- a twin, forked before it, in its own session at idle CPU and disk
  priority, that waits until the build is over (the cargo that ran the
  launcher has exited: even at idle priority a second `configure` beside
  the first slows it by a tenth, through the shared caches), then runs
  the script traced as an inline miss is, into an empty `OUT_DIR`, and
  records the entry.

The twin runs in a private mount namespace in which it can change
nothing the build sees. Every mount is read-only there but kache's store;
the temp dirs show the host's files under a private writable layer (an
overlay; the checkout, the target dir, `CARGO_HOME` and the store, where
they lie in one, are mounted into it, read-only but the store, through
handles taken before); an empty
directory of the store is mounted over the real `OUT_DIR` path, so the
twin sees the same paths and environment and writes what a run into a
fresh target dir writes. A write anywhere else fails in the twin, and
its trace is refused as an inline one would be. A run that fails in the
twin alone (it talked to a daemon the build's run reached, say) is
remembered: the key's next miss is traced inline. Cargo's jobserver is not passed on: the twin never
takes a token the build could use, and kache's compiles inside it take
no compile lock: the build never waits on a process at idle priority.

The twin takes the store's writer lock only to record, as an inline
miss does (`kache sync --push` and `kache daemon stop` wait for live
twins by their scratch directories, `Store::twins_running`), and takes the key's compile lock for its run, marked as a twin's
(`locks/KEY.twin`): a run of the same key does not wait for it (behind a
busy build a process at idle priority could take longer than the run)
but runs the script itself, and its own twin then finds the entry.
While it waits for the build, the key's lock is free (cargo may run
what it built for hours).

Where the namespace cannot be made (not root and no user namespaces, a
container's seccomp profile), or the wrapper has threads, the miss is
traced inline.
*/
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Job, mark_uncacheable};
use crate::store::CacheKey;
use crate::wrapper::action::Action;
use crate::wrapper::background::{self, Side};
use crate::wrapper::explain::Explain;

/// Set in the twin's script: kache's compiles under it take no compile
/// lock (the build would wait on a process at idle priority) and a
/// build script under it runs as is.
pub(crate) const VAR: &str = "KACHE_TWIN_RUN";

/// The build's side of a running twin: tells it how the build's run
/// ended (the twin runs only after a run that succeeded).
pub(super) struct Twin {
    go: fs::File,
}

impl Twin {
    /// The build's run ended with `code`.
    pub(super) fn ran(mut self, code: i32) {
        let _ = self.go.write_all(if code == 0 { b"g" } else { b"s" });
    }
}

/// Forks the twin for `job`'s miss. In the build's process: the twin,
/// if one now waits (the caller runs the script untraced, stores nothing
/// and reports the exit status), or `None` (the caller traces inline).
/// The twin itself never returns.
pub(super) fn start(job: &Job, base: &CacheKey, why: &Explain) -> Option<Twin> {
    if !job.ctx.cfg.trace_behind || !single_threaded() || unfit(job.ctx.store, base).exists() {
        return None;
    }
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // The process that runs the build (cargo, which ran the launcher).
    // SAFETY: plain system calls; the fd returned is ours.
    let build = unsafe {
        let ppid = libc::getppid();
        let fd = if ppid > 1 {
            libc::syscall(libc::SYS_pidfd_open, ppid, 0)
        } else {
            -1
        };
        (fd >= 0 && libc::getppid() == ppid).then(|| OwnedFd::from_raw_fd(fd as i32))
    };
    // Without it the twin could not wait for the build to end.
    let build = build?;
    match background::fork(job.ctx.store)? {
        Side::Parent => {
            drop((ready_w, go_r));
            let mut b = [0u8; 1];
            // The twin says whether it is isolated; a twin that died
            // says nothing (end of file).
            let ok = matches!(fs::File::from(ready_r).read(&mut b), Ok(1) if b[0] == b'y');
            ok.then(|| Twin {
                go: fs::File::from(go_w),
            })
        }
        Side::Child(lock) => {
            // The store's writer lock is for recording, which takes it
            // itself: held while the twin waits and runs, it would keep
            // `kache stats` and gc waiting for minutes. `kache sync
            // --push` and `kache daemon stop` wait for twins by their
            // scratch dirs (`Store::twins_running`).
            drop(lock);
            drop((ready_r, go_w));
            let scratch = job.ctx.store.tmp_path("twin");
            let isolated = fs::create_dir(&scratch).and_then(|()| isolate(job, &scratch));
            let mut w = fs::File::from(ready_w);
            let _ = w.write_all(if isolated.is_ok() { b"y" } else { b"n" });
            drop(w);
            // Behind the build from now on (the build's run waited for
            // the answer above).
            idle_priority();
            let mut b = [0u8; 1];
            let succeeded = matches!(fs::File::from(go_r).read(&mut b), Ok(1) if b[0] == b'g');
            if isolated.is_ok() && succeeded {
                // Not while the build runs: even at idle priority a second
                // configure-and-make slows the first by a tenth (the
                // caches and the memory bus are shared). The key's lock
                // is let go meanwhile (cargo may run the program it built
                // for hours); `kache sync --push` waits for this run.
                let_go_of(&job.ctx.store.compile_lock_path(base));
                wait_for(Some(&build));
                let marker = job.ctx.store.compile_lock_path(base).with_extension("twin");
                // Said beside the lock, before it is taken: a run of the
                // key goes ahead rather than wait behind a busy build for
                // this one. One twin per key at a time.
                if claim(&marker) {
                    // A script that hangs here must not hold the key's
                    // lock (and `kache sync --push`) for ever: the twin ends after an hour
                    // (its children, left without their tracer, fail
                    // their next watched call).
                    // SAFETY: this process's own signal disposition and
                    // alarm clock.
                    unsafe {
                        libc::signal(libc::SIGALRM, libc::SIG_DFL);
                        libc::alarm(TIME_LIMIT_S);
                    }
                    let _guard = job.ctx.store.compile_lock(base);
                    // A run of the same key elsewhere may have stored it.
                    if crate::wrapper::action::lookup(job, base).is_none() {
                        run(job, base.clone(), why.clone(), &scratch);
                    }
                    let _ = fs::remove_file(&marker);
                }
            }
            let _ = fs::remove_dir_all(&scratch);
            crate::store::gc::auto(
                job.ctx.store,
                job.ctx.cfg.max_size,
                std::time::Duration::from_secs(5),
            );
            background::exit();
        }
    }
}

/// Creates the twin marker `marker` with this process's pid; one left by
/// a twin that died is taken over. `false` if a live twin holds it.
fn claim(marker: &Path) -> bool {
    for _ in 0..2 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
        {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(marker).unwrap_or_default();
                let alive = owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    return false;
                }
                let _ = fs::remove_file(marker);
            }
            Err(_) => return false,
        }
    }
    false
}

/// Where the store remembers that a key's script fails in a twin.
fn unfit(store: &crate::store::Store, base: &CacheKey) -> PathBuf {
    store.root().join("twin-unfit").join(base.as_str())
}

/// Whether `a` and `b` are the same directory now (a mount over `a` that
/// the host's `rm -rf` detached would show `a` as another one).
fn same_dir(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The twin's run: traced, then recorded as an inline miss is.
fn run(job: &Job, base: CacheKey, why: Explain, scratch: &Path) {
    let ctx = &job.ctx;
    // The target dir removed since (cargo clean, rm -rf) detaches the
    // mount over OUT_DIR: the path would lead into the next build's.
    if !same_dir(&job.out_dir, scratch) {
        ctx.unstored(
            "the traced twin's OUT_DIR is gone (the target dir was removed)",
            0,
        );
        return;
    }
    let _ = job.pack_from.set(scratch.to_path_buf());
    let res = job.run_traced(true).and_then(|(ran, trace)| {
        if !same_dir(&job.out_dir, scratch) {
            anyhow::bail!("the target dir was removed while the twin ran");
        }
        if ran.code == 0 {
            return job.record(base.clone(), why, ran, trace).map(drop);
        }
        // A write outside OUT_DIR fails here and may be why the run
        // failed: the build's run, which may write there, is the one
        // that counts; runs under this key go untraced from now on.
        if let Some(p) = job.wrote_outside(&trace) {
            let why = format!("the build script wrote outside OUT_DIR: {}", p.display());
            mark_uncacheable(ctx.store, &base, &why);
            ctx.unstored(&why, ran.compile_ms);
            return Ok(());
        }
        // Failed here only (the build's run succeeded): something of the
        // twin's world differs for it (a file in the temp dir, a socket);
        // its next miss is traced inline.
        let p = unfit(ctx.store, &base);
        if let Some(dir) = p.parent()
            && fs::create_dir_all(dir).is_ok()
        {
            let _ = ctx.store.write_atomic("twin-unfit", &p, b"");
        }
        ctx.unstored(
            &format!(
                "the build script failed ({}) in its traced twin only: traced inline next time",
                ran.code
            ),
            ran.compile_ms,
        );
        Ok(())
    });
    if let Err(e) = res {
        ctx.unstored(&format!("not stored by the traced twin: {e:#}"), 0);
    }
}

/// The longest a twin's run may take.
const TIME_LIMIT_S: libc::c_uint = 60 * 60;

/// The longest a twin waits for the build before it runs.
const BUILD_WAIT_MS: i32 = 10 * 60 * 1000;

/// Waits until the process behind `build` has exited (at most
/// [`BUILD_WAIT_MS`]).
fn wait_for(build: Option<&OwnedFd>) {
    let Some(fd) = build else {
        return;
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let end = std::time::Instant::now() + std::time::Duration::from_millis(BUILD_WAIT_MS as u64);
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, left.as_millis() as i32) };
        let interrupted = rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted;
        if !interrupted || left.is_zero() {
            return;
        }
    }
}

/// Closes this process's copies of the lock file at `lock` (inherited
/// from the build's run, which lets go of its own when it exits).
fn let_go_of(lock: &Path) {
    let Ok(want) = lock.canonicalize() else {
        return;
    };
    for e in fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let fd = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
        if let Some(fd) = fd
            && fs::read_link(e.path()).is_ok_and(|p| p == want)
        {
            // SAFETY: the fd is one of this process's; the File that
            // owned it belongs to the build's run, whose frames this
            // process never returns to (it ends with `_exit`).
            unsafe { libc::close(fd) };
        }
    }
}

/// Whether this process has one thread (a fork copies only the caller).
fn single_threaded() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.strip_prefix("Threads:").is_some_and(|n| n.trim() == "1"))
    })
}

/// Whether a twin can be isolated here (`kache doctor`): the namespace
/// is made in a forked child, with directories under `base` standing
/// for the store, a checkout and its `OUT_DIR`. Why not, if not.
pub(crate) fn can_isolate(base: &Path) -> Result<(), String> {
    if !single_threaded() {
        return Err("kache has threads at this point".into());
    }
    let root = base.join(format!("kache-twin-check.{}", std::process::id()));
    let out = root.join("checkout/target/out");
    let scratch = root.join("store/tmp/twin.check");
    // Under `base` as it is: a missing one is not made.
    let made = fs::create_dir(&root)
        .and_then(|()| fs::create_dir_all(&out))
        .and_then(|()| fs::create_dir_all(&scratch))
        .map_err(|e| format!("cannot make {}: {e}", root.display()));
    let res = made.and_then(|()| {
        let (r, w) = pipe().ok_or("no pipe")?;
        // SAFETY: the child runs the namespace code (one thread, checked
        // above) and ends with `_exit`.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error().to_string()),
            0 => {
                drop(r);
                let store = crate::store::Store::at(&root.join("store"));
                let roots = [root.join("checkout")];
                let code = match isolate_at(&store, &out, &roots, &scratch, super::temp_dirs()) {
                    Ok(()) => 0,
                    Err(e) => {
                        let _ = fs::File::from(w).write_all(e.to_string().as_bytes());
                        1
                    }
                };
                // SAFETY: ends the child without running destructors
                // that belong to the parent.
                unsafe { libc::_exit(code) }
            }
            pid => {
                drop(w);
                let mut why = String::new();
                let _ = fs::File::from(r).read_to_string(&mut why);
                let mut status = 0;
                // SAFETY: our own child.
                unsafe { libc::waitpid(pid, &raw mut status, 0) };
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    Ok(())
                } else if why.is_empty() {
                    Err("the check's process died".into())
                } else {
                    Err(why)
                }
            }
        }
    });
    let _ = fs::remove_dir_all(&root);
    res
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Option<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: pipe2 just returned these two fds, owned by us.
    Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Behind everything else in the CPU and disk queues: the twin uses only
/// what the build leaves idle (its children inherit it).
fn idle_priority() {
    background::autogroup_nice(19);
    let param = libc::sched_param { sched_priority: 0 };
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3 << 13;
    // SAFETY: plain system calls about this process's own scheduling.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE,
        );
    }
}

/// One mount: where, and its per-mount flags.
struct Mount {
    at: PathBuf,
    flags: libc::c_ulong,
}

/// Makes this process's mount namespace the twin's (see the module
/// text). Any step failing leaves the twin unused.
fn isolate(job: &Job, scratch: &Path) -> io::Result<()> {
    let temps = super::temp_dirs();
    isolate_at(
        job.ctx.store,
        &job.out_dir,
        &job.project_roots(),
        scratch,
        temps,
    )
}

/// [`isolate`] for a store, an `OUT_DIR`, the roots that stay read-only
/// (the checkout, the target dir, `CARGO_HOME`) and the scratch
/// directory mounted over `OUT_DIR`.
fn isolate_at(
    st: &crate::store::Store,
    out_dir: &Path,
    project_roots: &[PathBuf],
    scratch: &Path,
    temp_dirs: Vec<PathBuf>,
) -> io::Result<()> {
    let cwd = std::env::current_dir()?;
    let real = |p: &Path| p.canonicalize().ok();
    let under = |p: &Path, roots: &[PathBuf]| roots.iter().any(|r| p.starts_with(r));
    let gone = || io::Error::other("a directory the twin needs is missing");
    let store = real(st.root()).ok_or_else(gone)?;
    let out = real(out_dir).ok_or_else(gone)?;
    let scratch = real(scratch).ok_or_else(gone)?;
    // The checkout, the target dir and CARGO_HOME: read-only.
    let roots: Vec<PathBuf> = project_roots.iter().filter_map(|p| real(p)).collect();
    // The temp dirs become private ones; not one inside a root
    // (it stays read-only with it), nor `/`.
    let mut temps: Vec<PathBuf> = temp_dirs
        .into_iter()
        .filter(|t| t.parent().is_some() && !under(t, &roots) && t != &store)
        .collect();
    temps.sort();
    temps.dedup();
    // What must show through them:
    // the store (writable) and the roots (read-only), outer ones first.
    let mut keep: Vec<(PathBuf, bool)> = vec![(store.clone(), true)];
    keep.extend(roots.iter().map(|r| (r.clone(), false)));
    keep.sort();
    keep.dedup_by(|a, b| a.0 == b.0);
    new_namespace()?;
    mount(None, Path::new("/"), libc::MS_REC | libc::MS_PRIVATE)?;
    // Opened in the namespace (a bind's source must be one of its
    // mounts), before the temp dirs hide them.
    let held = keep
        .into_iter()
        .map(|(p, writable)| Ok((open_path(&p)?, p, writable)))
        .collect::<io::Result<Vec<_>>>()?;
    let mounts = mounts()?;
    // Each temp dir: what the host has there, read-only, under a
    // private writable layer (an overlay whose upper layers live on a
    // tmpfs of the twin's own), so a path the build's run found there is
    // found by the twin too, and nothing it writes there is seen outside.
    // (Reached through a handle: an overlay over a temp dir the layers'
    // path lies in would hide them.)
    let layers = st.tmp_path("twinlayers");
    let store_tmp = open_path(layers.parent().ok_or_else(gone)?)?;
    fs::create_dir(&layers)?;
    tmpfs(&layers)?;
    let held_layers = open_path(&layers)?;
    let layer = |n: usize, w: &str| {
        PathBuf::from(format!("/proc/self/fd/{}/{n}{w}", held_layers.as_raw_fd()))
    };
    for n in 0..temps.len() {
        fs::create_dir(layer(n, "u"))?;
        fs::create_dir(layer(n, "w"))?;
    }
    for (n, t) in temps.iter().enumerate() {
        overlay(t, &layer(n, "u"), &layer(n, "w"))?;
    }
    // The overlays hold the layers' tmpfs now: it leaves its mount
    // point, and the store (reached through a handle: the path may lie
    // under an overlay now) loses the directory.
    unmount_behind(&layers, &held_layers, &store_tmp);
    for (fd, p, writable) in &held {
        let in_temp = under(p, &temps);
        if !in_temp && !writable && !p.starts_with(&store) {
            // Read-only with the mount it lies in (below); one in the
            // store is mounted over its writable one (outer ones first).
            continue;
        }
        if in_temp {
            fs::create_dir_all(p)?;
        }
        let from = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        mount(Some(&from), p, libc::MS_BIND | libc::MS_REC)?;
        if !writable {
            read_only_tree(p, flags_at(&mounts, p))?;
        }
    }
    mount(Some(&scratch), &out, libc::MS_BIND)?;
    for m in &mounts {
        // `/dev` and `/sys` too (a root script could make files there, a
        // user one write its own cgroup's): devices stay writable on a
        // read-only mount (`/dev/null`). `/proc` is left as it is.
        let pseudo = m.at.starts_with("/proc");
        if pseudo || under(&m.at, &temps) || m.at.starts_with(&store) || m.at == out {
            continue;
        }
        match read_only(&m.at, m.flags) {
            // A mount this namespace cannot reach (gone since, or hidden).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            r => r?,
        }
    }
    // The working directory was taken before the mounts above: taken
    // again, it is the namespace's view of the same path.
    std::env::set_current_dir(cwd)
}

/// Detaches the mount `held` is the root of (mounted at `at`) and
/// removes `at` from the directory `parent` is a handle on; a failure
/// leaves the empty directory to gc (its owner dead).
fn unmount_behind(at: &Path, held: &OwnedFd, parent: &OwnedFd) {
    let (Ok(via), Some(Ok(name))) = (
        cpath(Path::new(&format!("/proc/self/fd/{}", held.as_raw_fd()))),
        at.file_name().map(|n| CString::new(n.as_bytes())),
    ) else {
        return;
    };
    // SAFETY: valid C strings and an fd we own.
    unsafe {
        if libc::umount2(via.as_ptr(), libc::MNT_DETACH) == 0 {
            libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR);
        }
    }
}

/// An `O_PATH` handle on directory `p`.
fn open_path(p: &Path) -> io::Result<OwnedFd> {
    let c = cpath(p)?;
    // SAFETY: a valid C string; the fd returned is ours.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An overlay at `at`: the directory there now, read-only, under the
/// writable `upper` (`work` is overlayfs's own).
fn overlay(at: &Path, upper: &Path, work: &Path) -> io::Result<()> {
    let plain = |p: &Path| {
        let s = p.to_str().filter(|s| !s.contains([',', ':', '\\']));
        s.map(str::to_string)
            .ok_or_else(|| io::Error::other("a path overlayfs cannot name"))
    };
    let opts = CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        plain(at)?,
        plain(upper)?,
        plain(work)?
    ))
    .map_err(io::Error::other)?;
    let dst = cpath(at)?;
    // SAFETY: the strings live across the call.
    check(unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            dst.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    })
}

/// A fresh private tmpfs at `at`.
fn tmpfs(at: &Path) -> io::Result<()> {
    let dst = cpath(at)?;
    // SAFETY: the strings live across the call.
    check(unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            dst.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=1777".as_ptr().cast(),
        )
    })
}

/// Makes the mount at `at` and every mount below it read-only
/// (`mount_setattr`, Linux 5.12; before it, the top one alone).
fn read_only_tree(at: &Path, flags: libc::c_ulong) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let c = cpath(at)?;
    // SAFETY: a valid C string and attribute struct of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSYS) => read_only(at, flags),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A mount namespace of its own: as root directly, otherwise inside a
/// user namespace that maps only this user (the script still runs as
/// the same user, without privileges).
fn new_namespace() -> io::Result<()> {
    // SAFETY: plain system calls about this process.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid == 0 {
        // SAFETY: as above.
        return check(unsafe { libc::unshare(libc::CLONE_NEWNS) });
    }
    // SAFETY: as above.
    check(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) })?;
    fs::write("/proc/self/setgroups", "deny")?;
    fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let src = source.map(cpath).transpose()?;
    let dst = cpath(target)?;
    // SAFETY: the strings live across the call; no data argument.
    check(unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            dst.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
}

/// Makes the mount at `at` read-only, keeping its other flags (a user
/// namespace may not clear them).
fn read_only(at: &Path, flags: libc::c_ulong) -> io::Result<()> {
    mount(
        None,
        at,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
    )
}

/// The flags of the mount `p` lies in.
fn flags_at(mounts: &[Mount], p: &Path) -> libc::c_ulong {
    mounts
        .iter()
        .filter(|m| p.starts_with(&m.at))
        .max_by_key(|m| m.at.as_os_str().len())
        .map_or(0, |m| m.flags)
}

/// This namespace's mounts, from `/proc/self/mountinfo`.
fn mounts() -> io::Result<Vec<Mount>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mount).collect())
}

fn parse_mount(line: &str) -> Option<Mount> {
    let mut f = line.split(' ');
    let at = unescape(f.nth(4)?);
    let mut flags = 0;
    for o in f.next()?.split(',') {
        flags |= match o {
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            _ => 0,
        };
    }
    Some(Mount { at, flags })
}

/// A mountinfo path: space, tab, newline and backslash are octal escapes.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child forked from the test (one thread: a user namespace
    /// takes that), as uid 65534: the twin's namespace, then writes.
    /// The exit code says which step failed (0: all as expected).
    fn isolated_as_nobody(root: &Path, scratch: &Path, in_tmp: &Path, temps: bool) -> i32 {
        // SAFETY: the child runs its own code until `_exit`; glibc's
        // allocator is usable after fork.
        unsafe {
            match libc::fork() {
                0 => {}
                -1 => return -1,
                pid => {
                    let mut status = 0;
                    libc::waitpid(pid, &raw mut status, 0);
                    return if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        -2
                    };
                }
            }
            let nobody = 65534;
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(nobody) != 0
                || libc::setuid(nobody) != 0
            {
                libc::_exit(10);
            }
            // Dropping root made it undumpable (its /proc files root's):
            // a user who never was root is not.
            libc::prctl(libc::PR_SET_DUMPABLE, 1);
        }
        let code = (|| {
            let store = crate::store::Store::at(&root.join("store"));
            let out = root.join("checkout/target/out");
            let roots = [root.join("checkout"), root.join("store/ws")];
            let temp_dirs = if temps {
                crate::wrapper::script::temp_dirs()
            } else {
                Vec::new()
            };
            if let Err(e) = isolate_at(&store, &out, &roots, scratch, temp_dirs) {
                let msg = format!("isolate: {e}\n");
                // SAFETY: writes a buffer we own to stderr.
                unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
                return 11;
            }
            // The checkout: read-only, though it lies in a temp dir.
            let e = fs::write(root.join("checkout/src.txt"), "changed");
            if e.map_err(|e| e.raw_os_error()) != Err(Some(libc::EROFS)) {
                return 12;
            }
            // A checkout in the store (which is writable) is read-only.
            let e = fs::write(root.join("store/ws/src.txt"), "changed");
            if e.map_err(|e| e.raw_os_error()) != Err(Some(libc::EROFS)) {
                return 15;
            }
            // The store is writable.
            if fs::write(root.join("store/written.txt"), "x").is_err() {
                return 16;
            }
            // OUT_DIR is the scratch directory.
            if fs::write(out.join("made.txt"), "in out").is_err() {
                return 13;
            }
            // The temp dir is writable, privately.
            if temps && fs::write(in_tmp, "private").is_err() {
                return 14;
            }
            0
        })();
        // SAFETY: ends the forked child without running the test's
        // destructors twice.
        unsafe { libc::_exit(code) }
    }

    /// What a desk gets: the twin's namespace made without privileges
    /// (a user namespace mapping only the user). Run as root, the test
    /// drops to uid 65534 in a child; skipped without root or where the
    /// kernel refuses unprivileged user namespaces (the twin then traces
    /// inline, see `start`).
    #[test]
    fn a_twin_is_isolated_without_root() {
        // SAFETY: plain system call.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to drop to another uid");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        fs::create_dir_all(root.join("store/tmp")).unwrap();
        fs::create_dir_all(root.join("checkout/target/out")).unwrap();
        fs::write(root.join("checkout/src.txt"), "orig").unwrap();
        fs::create_dir_all(root.join("store/ws")).unwrap();
        fs::write(root.join("store/ws/src.txt"), "orig").unwrap();
        let scratch = root.join("store/tmp/twin.1.scratch");
        fs::create_dir(&scratch).unwrap();
        let in_tmp = std::env::temp_dir().join(format!("kache-twin-test-{}", std::process::id()));
        let chown = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(chown.success());
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let code = isolated_as_nobody(&root, &scratch, &in_tmp, true);
        if code == 11 && !unprivileged_user_namespaces() {
            eprintln!("skipped: this kernel refuses unprivileged user namespaces");
            return;
        }
        assert_eq!(code, 0, "the step that failed (see isolated_as_nobody)");
        // Nothing the build sees changed; what went to OUT_DIR is in the
        // scratch directory.
        assert_eq!(
            fs::read_to_string(root.join("checkout/src.txt")).unwrap(),
            "orig"
        );
        assert!(!root.join("checkout/target/out/made.txt").exists());
        assert_eq!(
            fs::read_to_string(scratch.join("made.txt")).unwrap(),
            "in out"
        );
        assert!(!in_tmp.exists(), "the twin's temp dir write stayed its own");
        // The same tree outside any temp dir (none is taken for one): a
        // checkout in the store stays read-only all the same.
        assert_eq!(isolated_as_nobody(&root, &scratch, &in_tmp, false), 0);
        assert_eq!(
            fs::read_to_string(root.join("store/ws/src.txt")).unwrap(),
            "orig"
        );
    }

    /// Whether uid 65534 may make a user namespace here at all.
    fn unprivileged_user_namespaces() -> bool {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["unshare", "-U", "true"])
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn mountinfo_lines() {
        let m =
            parse_mount("36 35 98:0 /mnt1 /a\\040b rw,nosuid,noatime master:1 - ext3 /dev/root rw")
                .unwrap();
        assert_eq!(m.at, PathBuf::from("/a b"));
        assert_eq!(m.flags, libc::MS_NOSUID | libc::MS_NOATIME);
        let ms = [
            Mount {
                at: "/".into(),
                flags: 0,
            },
            Mount {
                at: "/home".into(),
                flags: libc::MS_NODEV,
            },
        ];
        assert_eq!(flags_at(&ms, Path::new("/home/u/src")), libc::MS_NODEV);
        assert_eq!(flags_at(&ms, Path::new("/homely")), 0);
    }
}
