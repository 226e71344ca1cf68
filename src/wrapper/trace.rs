/*!
Which files a process tree opens, executes and writes: a seccomp
user-notification filter (Linux 5.5 and later, no privileges needed).

A build script's output can depend on anything it or its children read:
a data file in the package, a system header the C compiler includes, a
`.pc` file, a program on `PATH`. Cargo never reuses a run across target
dirs, so it does not need to know; kache does, so it must. The child
installs a filter before it executes the program; every `open`,
`openat`, `openat2`, `creat`, `execve`, `execveat`, every call that
creates, renames or removes a path and every `stat` and `access` of one, in it and in every process it
starts, stops until a thread of ours has read the path from the
process's memory and let the call go on unchanged
(`SECCOMP_USER_NOTIF_FLAG_CONTINUE`). The program sees no difference
beyond a few microseconds per such call.

What it cannot see, and where a run is then not cached: a kernel or an
architecture without the filter (the spawn reports it; the caller runs
the program untraced and stores nothing), and a system call of another
ABI (x32, 32-bit compat) or a file opened by handle
(`open_by_handle_at`), either of which marks the trace incomplete. Reads through
`io_uring`, and `readlink` alone (glibc's `realpath` calls it for every
component of every path, a million times in a `configure` run: too
costly to watch) are not seen: documented in the README.

Process helpers outliving the program keep the filter; their watched
calls are answered for a short grace after the program exited, then we
stop listening and they fail (`ENOSYS`): a helper never keeps the build
waiting.
*/

#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Component, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the traced processes did to paths (absolute, lexically clean).
#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// Opened for reading, or executed.
    pub(crate) read: BTreeSet<PathBuf>,
    /// Opened for writing, created, renamed, linked or removed.
    pub(crate) written: BTreeSet<PathBuf>,
    /// Looked at without being opened (`stat`, `access`): whether it
    /// exists, and as what, matters.
    pub(crate) probed: BTreeSet<PathBuf>,
    /// Why the trace cannot be trusted to be complete, if it cannot.
    pub(crate) incomplete: Option<String>,
}

/// A trace being taken: join it once the program exited.
pub(crate) struct Tracer {
    thread: Option<JoinHandle<Trace>>,
    stop: Arc<AtomicBool>,
    /// The child's end of the socket that carries the listener back;
    /// closed once the child is spawned.
    child_end: Option<OwnedFd>,
}

#[cfg(target_arch = "x86_64")]
mod arch {
    pub(super) const AUDIT_ARCH: u32 = 0xC000_003E;
    /// Syscalls of another ABI (x32) carry this bit.
    pub(super) const FOREIGN_BIT: u32 = 0x4000_0000;
}
#[cfg(target_arch = "aarch64")]
mod arch {
    pub(super) const AUDIT_ARCH: u32 = 0xC000_00B7;
    pub(super) const FOREIGN_BIT: u32 = 0;
}

/// What a watched call does to a path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Read,
    Write,
    /// A `mkdir`: a write unless the directory is there already (then
    /// the call fails and changes nothing: `mkdir -p` of `/tmp`).
    Mkdir,
    Probe,
}

const R: Use = Use::Read;
const W: Use = Use::Write;
const P: Use = Use::Probe;
const M: Use = Use::Mkdir;

/// How a watched call names its paths: (syscall, [(path arg, dirfd arg,
/// what it does)], where an open's flags are).
struct Watched {
    nr: i64,
    paths: &'static [(usize, Option<usize>, Use)],
    /// Where the open flags are: `Some(i)` an argument, for `openat2`
    /// the `open_how` the argument points to.
    flags: Flags,
}

#[derive(Clone, Copy)]
enum Flags {
    None,
    Arg(usize),
    How(usize),
    /// A call whose effect the trace cannot follow (see [`opaque`]).
    Opaque,
}

const fn w(nr: i64, paths: &'static [(usize, Option<usize>, Use)], flags: Flags) -> Watched {
    Watched { nr, paths, flags }
}

#[cfg(target_arch = "x86_64")]
const WATCHED: &[Watched] = &[
    w(libc::SYS_open, &[(0, None, R)], Flags::Arg(1)),
    w(libc::SYS_creat, &[(0, None, W)], Flags::None),
    w(libc::SYS_openat, &[(1, Some(0), R)], Flags::Arg(2)),
    w(libc::SYS_openat2, &[(1, Some(0), R)], Flags::How(2)),
    w(libc::SYS_execve, &[(0, None, R)], Flags::None),
    w(libc::SYS_execveat, &[(1, Some(0), R)], Flags::None),
    w(libc::SYS_mkdir, &[(0, None, M)], Flags::None),
    w(libc::SYS_mkdirat, &[(1, Some(0), M)], Flags::None),
    w(libc::SYS_rename, &[(0, None, W), (1, None, W)], Flags::None),
    w(
        libc::SYS_renameat,
        &[(1, Some(0), W), (3, Some(2), W)],
        Flags::None,
    ),
    w(
        libc::SYS_renameat2,
        &[(1, Some(0), W), (3, Some(2), W)],
        Flags::None,
    ),
    w(libc::SYS_unlink, &[(0, None, W)], Flags::None),
    w(libc::SYS_unlinkat, &[(1, Some(0), W)], Flags::None),
    w(libc::SYS_rmdir, &[(0, None, W)], Flags::None),
    w(libc::SYS_link, &[(1, None, W)], Flags::None),
    w(libc::SYS_linkat, &[(3, Some(2), W)], Flags::None),
    w(libc::SYS_symlink, &[(1, None, W)], Flags::None),
    w(libc::SYS_symlinkat, &[(2, Some(1), W)], Flags::None),
    w(libc::SYS_truncate, &[(0, None, W)], Flags::None),
    w(libc::SYS_stat, &[(0, None, P)], Flags::None),
    w(libc::SYS_lstat, &[(0, None, P)], Flags::None),
    w(libc::SYS_newfstatat, &[(1, Some(0), P)], Flags::None),
    w(libc::SYS_statx, &[(1, Some(0), P)], Flags::None),
    w(libc::SYS_access, &[(0, None, P)], Flags::None),
    w(libc::SYS_faccessat, &[(1, Some(0), P)], Flags::None),
    w(libc::SYS_faccessat2, &[(1, Some(0), P)], Flags::None),
    w(libc::SYS_open_by_handle_at, &[], Flags::Opaque),
];

#[cfg(target_arch = "aarch64")]
const WATCHED: &[Watched] = &[
    w(libc::SYS_openat, &[(1, Some(0), R)], Flags::Arg(2)),
    w(libc::SYS_openat2, &[(1, Some(0), R)], Flags::How(2)),
    w(libc::SYS_execve, &[(0, None, R)], Flags::None),
    w(libc::SYS_execveat, &[(1, Some(0), R)], Flags::None),
    w(libc::SYS_mkdirat, &[(1, Some(0), M)], Flags::None),
    w(
        libc::SYS_renameat,
        &[(1, Some(0), W), (3, Some(2), W)],
        Flags::None,
    ),
    w(
        libc::SYS_renameat2,
        &[(1, Some(0), W), (3, Some(2), W)],
        Flags::None,
    ),
    w(libc::SYS_unlinkat, &[(1, Some(0), W)], Flags::None),
    w(libc::SYS_linkat, &[(3, Some(2), W)], Flags::None),
    w(libc::SYS_symlinkat, &[(2, Some(1), W)], Flags::None),
    w(libc::SYS_truncate, &[(0, None, W)], Flags::None),
    w(libc::SYS_newfstatat, &[(1, Some(0), P)], Flags::None),
    w(libc::SYS_statx, &[(1, Some(0), P)], Flags::None),
    w(libc::SYS_faccessat, &[(1, Some(0), P)], Flags::None),
    w(libc::SYS_faccessat2, &[(1, Some(0), P)], Flags::None),
    w(libc::SYS_open_by_handle_at, &[], Flags::Opaque),
];

/// The `stat` calls whose flags argument (by index) may hold
/// `AT_EMPTY_PATH`.
const EMPTY_PATH_FLAGS: &[(i64, usize)] = &[(libc::SYS_newfstatat, 3), (libc::SYS_statx, 2)];

/// Whether this build of kache can trace at all.
pub(crate) const SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter: the watched calls (and any call of another ABI or
/// architecture) notify; everything else runs.
fn program() -> Vec<libc::sock_filter> {
    const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let listed: Vec<&Watched> = WATCHED
        .iter()
        .filter(|c| !EMPTY_PATH_FLAGS.iter().any(|(nr, _)| *nr == c.nr))
        .collect();
    let n = listed.len();
    let mut p = vec![
        // arch at offset 4, nr at offset 0 of seccomp_data.
        stmt(LD_ABS_W, 4),
        jump(JEQ_K, arch::AUDIT_ARCH, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF),
        stmt(LD_ABS_W, 0),
    ];
    if arch::FOREIGN_BIT != 0 {
        p.push(jump(JSET_K, arch::FOREIGN_BIT, 0, 1));
        p.push(stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF));
    }
    // `fstat` is `newfstatat(fd, "", AT_EMPTY_PATH)` in glibc: about an
    // open fd, no path, and very frequent. Let it run unseen.
    for &(nr, arg) in EMPTY_PATH_FLAGS {
        p.push(jump(JEQ_K, nr as u32, 0, 4));
        // The low half of the flags argument (args start at 16).
        p.push(stmt(LD_ABS_W, (16 + 8 * arg) as u32));
        p.push(jump(JSET_K, libc::AT_EMPTY_PATH as u32, 0, 1));
        p.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
        p.push(stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF));
    }
    for (i, c) in listed.iter().enumerate() {
        // Equal: skip the rest of the list and the allow.
        p.push(jump(JEQ_K, c.nr as u32, (n - i) as u8, 0));
    }
    p.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF));
    p
}

impl Tracer {
    /// Arranges for `cmd`'s process tree to be traced once spawned.
    /// After spawning (whether it worked or not) call [`Tracer::spawned`];
    /// after the program exited, [`Tracer::finish`].
    pub(crate) fn attach(cmd: &mut Command) -> io::Result<Tracer> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds is a valid array of two ints.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socketpair just returned these two fds, owned by us.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let child_fd = theirs.as_raw_fd();
        let filter = program();
        // SAFETY: the closure runs in the forked child before exec and
        // makes only async-signal-safe system calls on memory allocated
        // before the fork (the filter) or on its own stack.
        unsafe {
            cmd.pre_exec(move || install_in_child(&filter, child_fd));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || listen(&ours, &stop2));
        Ok(Tracer {
            thread: Some(thread),
            stop,
            child_end: Some(theirs),
        })
    }

    /// The child was spawned (or failed to be): our copy of its end of
    /// the socket goes, so a child that never sent the listener ends the
    /// wait for it.
    pub(crate) fn spawned(&mut self) {
        self.child_end = None;
    }

    /// The program exited: stops listening once no watched call is
    /// pending; what the process tree did.
    pub(crate) fn finish(mut self) -> Trace {
        self.child_end = None;
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| {
                // Wakes its wait until it ended: once no process is
                // traced it ends on its own; a helper the program left
                // running keeps the filter, and its calls wait.
                let sig = wake_signal();
                while !t.is_finished() {
                    // SAFETY: the thread is not joined yet, so its
                    // pthread_t is valid.
                    unsafe { libc::pthread_kill(t.as_pthread_t(), sig) };
                    std::thread::sleep(Duration::from_millis(5));
                }
                t.join().ok()
            })
            .unwrap_or_else(|| Trace {
                incomplete: Some("the tracer thread failed".into()),
                ..Trace::default()
            })
    }
}

/// In the child: no new privileges, the filter with a listener, the
/// listener sent to the parent.
fn install_in_child(filter: &[libc::sock_filter], sock: RawFd) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain system calls with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &raw const prog,
        );
        if listener < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = listener as RawFd;
        send_fd(sock, listener)?;
        libc::close(listener);
        libc::close(sock);
    }
    Ok(())
}

/// The one data byte that carries a control message.
fn one_byte(byte: &mut [u8; 1]) -> libc::iovec {
    libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }
}

/// A message of `iov` with room in `cbuf` for one cmsghdr carrying one
/// int (aligned); the caller keeps both alive while it is used.
fn message(iov: &mut libc::iovec, cbuf: &mut [u64; 4]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(cbuf);
    msg
}

/// Sends one fd over a unix socket (`SCM_RIGHTS`), allocating nothing.
fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut cbuf = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = one_byte(&mut byte);
    // SAFETY: the pointers in msg outlive the sendmsg call; CMSG_*
    // compute within cbuf, sized for one int.
    unsafe {
        let mut msg = message(&mut iov, &mut cbuf);
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        if libc::sendmsg(sock, &raw const msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one fd sent by [`send_fd`]; `None` once the other end closed
/// without sending.
fn recv_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    let mut cbuf = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = one_byte(&mut byte);
    // SAFETY: as in send_fd; the fd read out of the control message is
    // new in this process and owned by the returned OwnedFd.
    unsafe {
        let mut msg = message(&mut iov, &mut cbuf);
        let n = libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC);
        if n <= 0 {
            return None;
        }
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
        Some(OwnedFd::from_raw_fd(fd))
    }
}

/// The tracer thread: waits for the listener, then answers every
/// notification until no traced process is left (or the program exited,
/// [`Tracer::finish`] interrupted the wait, and nothing is pending).
///
/// It waits in the receiving call itself, not in `poll` first: one
/// system call fewer per watched call, on the path every one of them
/// waits on. Recent kernels (about 6.11 on) end that wait once every
/// traced process is gone; on older ones `finish`'s signal does.
fn listen(sock: &OwnedFd, stop: &AtomicBool) -> Trace {
    // The wake-up must reach this thread even if whoever started kache
    // blocked the signal (the mask is inherited).
    mask_wake_signal(libc::SIG_UNBLOCK);
    let mut trace = Trace::default();
    let Some(listener) = recv_fd(sock) else {
        trace.incomplete = Some("the program was not traced".into());
        return trace;
    };
    sync_wake_up(&listener);
    let mut stopped: Option<Instant> = None;
    loop {
        // The program exited: what comes within a short grace is still
        // answered (a process of the tree on its way out), and nothing
        // after it: a helper the program left running (a server, a
        // watcher) must not keep the build waiting.
        if stop.load(Ordering::SeqCst) {
            let end = *stopped.get_or_insert_with(|| Instant::now() + GRACE);
            if !pending_until(&listener, end) {
                break;
            }
        }
        // SAFETY: a zeroed notification struct is valid; the ioctl
        // fills it.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &raw mut req,
            )
        };
        if rc == 0 {
            answer_one(&listener, &req, &mut trace);
            continue;
        }
        match io::Error::last_os_error().raw_os_error() {
            // `finish` woke us: the loop's head decides.
            Some(libc::EINTR) => {}
            // The call's process died before we took it, or every
            // traced process is gone (the listener hung up).
            Some(libc::ENOENT) if !hung_up(&listener) => {}
            _ => break,
        }
    }
    trace
}

/// Polls the listener for up to `ms` milliseconds: its events (none
/// when the wait ran out or was interrupted).
fn poll_for(listener: &OwnedFd, ms: i32) -> i16 {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    if rc < 0 {
        if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            0
        } else {
            libc::POLLHUP
        }
    } else {
        pfd.revents
    }
}

/// How long after the program exited watched calls are still answered.
const GRACE: Duration = Duration::from_millis(100);

/// Whether a watched call waits for an answer now, or does before `end`
/// (a wait interrupted by `finish`'s signal goes on to the end); never
/// once `end` has passed.
fn pending_until(listener: &OwnedFd, end: Instant) -> bool {
    if Instant::now() >= end {
        return false;
    }
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let ev = poll_for(
            listener,
            i32::try_from(left.as_millis()).unwrap_or(i32::MAX),
        );
        if ev & libc::POLLIN != 0 {
            return true;
        }
        // `POLLERR` alone: the kernel's lock wait was interrupted by
        // `finish`'s signal; poll again.
        if ev & (libc::POLLHUP | libc::POLLNVAL) != 0 || left.is_zero() {
            return false;
        }
    }
}

/// Whether every traced process is gone (`POLLERR` alone says only that
/// the poll was interrupted).
fn hung_up(listener: &OwnedFd) -> bool {
    poll_for(listener, 0) & (libc::POLLHUP | libc::POLLNVAL) != 0
}

/// Blocks or unblocks (`how`) the wake-up signal for this thread.
fn mask_wake_signal(how: libc::c_int) {
    // SAFETY: a sigset built by sigemptyset/sigaddset; this thread's
    // own mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, wake_signal());
        libc::pthread_sigmask(how, &raw const set, std::ptr::null_mut());
    }
}

/// The signal [`Tracer::finish`] wakes the tracer thread with: a
/// handler that does nothing, installed without `SA_RESTART`, so the
/// thread's wait ends with `EINTR`.
fn wake_signal() -> libc::c_int {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let sig = libc::SIGRTMIN() + 4;
    extern "C" fn nothing(_: libc::c_int) {}
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler and an empty mask is
        // valid; the handler is async-signal-safe (it does nothing).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&raw mut sa.sa_mask);
            libc::sigaction(sig, &raw const sa, std::ptr::null_mut());
        }
    });
    sig
}

/// Asks the kernel (6.6 and later) to hand the CPU straight over between
/// a traced process stopping at a watched call and this thread, and back
/// once it is answered, rather than waking each other through the
/// scheduler: a `configure` run makes hundreds of thousands of such
/// calls, one after another. Older kernels refuse the flag: nothing
/// changes then.
fn sync_wake_up(listener: &OwnedFd) {
    const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;
    // SAFETY: the ioctl takes its flags by value.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
        );
    }
}

/// Reads what a received notification names, lets it go on, and
/// records it once the kernel took the answer: an answer it refuses
/// (other than for an interrupted wait for its lock, retried) is to a
/// call that no longer waits, never made as notified (its process died,
/// and its pid may already be another process's, whose memory was read;
/// or a signal interrupted it, and a restarted call notifies again). So
/// no separate check that the call is still waiting is needed after the
/// read.
fn answer_one(listener: &OwnedFd, req: &libc::seccomp_notif, trace: &mut Trace) {
    let seen = read_call(req);
    let mut resp = libc::seccomp_notif_resp {
        id: req.id,
        val: 0,
        error: 0,
        flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
    };
    let sent = loop {
        // SAFETY: the ioctl reads the response struct.
        let rc = unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &raw mut resp,
            )
        };
        if rc == 0 {
            break true;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break false;
        }
    };
    match seen {
        Err(Foreign) => {
            trace.incomplete = Some("a process made system calls of another ABI".into());
        }
        Ok(_) if !sent => {}
        Ok(Seen::Unread(why)) => trace.incomplete = Some(why),
        Ok(Seen::Paths(paths)) => {
            for (path, set) in paths {
                match set {
                    Set::Read => trace.read.insert(path),
                    Set::Written => trace.written.insert(path),
                    Set::Probed => trace.probed.insert(path),
                };
            }
        }
    }
}

/// A call of another ABI or architecture.
struct Foreign;

/// What a watched call names, read while it waits.
enum Seen {
    /// Each path, with the set it goes in (at most two paths).
    Paths(Vec<(PathBuf, Set)>),
    /// A path could not be read or resolved, or the call blinds the
    /// trace ([`opaque`]): why.
    Unread(String),
}

#[derive(Clone, Copy)]
enum Set {
    Read,
    Written,
    Probed,
}

fn read_call(req: &libc::seccomp_notif) -> Result<Seen, Foreign> {
    let d = &req.data;
    if d.arch != arch::AUDIT_ARCH
        || (arch::FOREIGN_BIT != 0 && d.nr as u32 & arch::FOREIGN_BIT != 0)
    {
        return Err(Foreign);
    }
    let mut out = Vec::new();
    let Some(c) = WATCHED.iter().find(|c| c.nr == i64::from(d.nr)) else {
        return Ok(Seen::Paths(out));
    };
    let pid = req.pid;
    let write_flags = match c.flags {
        Flags::Opaque => {
            return Ok(match opaque(c.nr) {
                Some(why) => Seen::Unread(why.into()),
                None => Seen::Paths(out),
            });
        }
        Flags::None => false,
        Flags::Arg(i) => open_writes(d.args[i]),
        Flags::How(i) => read_u64(pid, d.args[i]).is_some_and(open_writes),
    };
    for &(arg, dirfd, what) in c.paths {
        if d.args[arg] == 0 {
            // No path: the call fails (EFAULT) or names its fd alone.
            continue;
        }
        let Some(raw) = read_cstr(pid, d.args[arg]) else {
            return Ok(Seen::Unread(format!(
                "cannot read a path process {pid} named"
            )));
        };
        if raw.is_empty() {
            // `AT_EMPTY_PATH`: the call is about the fd itself.
            continue;
        }
        let Some(path) = resolve(pid, dirfd.map(|i| d.args[i] as i32), raw) else {
            return Ok(Seen::Unread(format!(
                "cannot resolve a path process {pid} named"
            )));
        };
        let set = match what {
            Use::Write => Set::Written,
            Use::Mkdir if path.is_dir() => continue,
            Use::Mkdir => Set::Written,
            Use::Read if write_flags => Set::Written,
            Use::Read => Set::Read,
            Use::Probe => Set::Probed,
        };
        out.push((path, set));
    }
    Ok(Seen::Paths(out))
}

/// Why a call of a process in the tree blinds the trace, if it does: a
/// file opened by handle names no path (it takes privileges: kache may
/// run as root). (A seccomp listener of the process's own, which would
/// be asked before ours, the kernel refuses: one per process tree.)
fn opaque(nr: i64) -> Option<&'static str> {
    (nr == libc::SYS_open_by_handle_at).then_some("a process opened a file by handle")
}

fn open_writes(flags: u64) -> bool {
    let f = flags as i32;
    f & (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) != 0
}

/// Reads from another process's memory, at most to the end of the page
/// `addr` is in (a read across into an unmapped page would fail whole).
fn read_mem(pid: u32, addr: u64, buf: &mut [u8]) -> Option<usize> {
    let page = 4096u64;
    let room = (page - addr % page) as usize;
    let len = buf.len().min(room);
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: local points into buf (len bytes); the kernel checks remote.
    let n = unsafe {
        libc::process_vm_readv(
            pid as libc::pid_t,
            &raw const local,
            1,
            &raw const remote,
            1,
            0,
        )
    };
    (n > 0).then_some(n as usize)
}

fn read_u64(pid: u32, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        got += read_mem(pid, addr + got as u64, &mut b[got..])?;
    }
    Some(u64::from_ne_bytes(b))
}

/// A NUL-terminated string of another process (at most `PATH_MAX`).
fn read_cstr(pid: u32, addr: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while out.len() < libc::PATH_MAX as usize {
        let n = read_mem(pid, addr + out.len() as u64, &mut buf)?;
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Some(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
    None
}

/// The absolute path a call names, as the kernel resolves it: relative
/// paths are taken from the process's working directory or the
/// directory fd. Without `..` the path is kept as named (so a link on
/// the way is followed again when it is keyed); with `..`, whose meaning
/// depends on the links before it, the directory part is resolved now,
/// while the call waits.
fn resolve(pid: u32, dirfd: Option<i32>, raw: Vec<u8>) -> Option<PathBuf> {
    let p = PathBuf::from(OsString::from_vec(raw));
    let abs = if p.is_absolute() {
        p
    } else {
        let base = match dirfd {
            Some(fd) if fd != libc::AT_FDCWD => format!("/proc/{pid}/fd/{fd}"),
            _ => format!("/proc/{pid}/cwd"),
        };
        std::fs::read_link(base).ok()?.join(p)
    };
    if !abs.components().any(|c| c == Component::ParentDir) {
        return Some(abs.components().collect());
    }
    let name = abs.file_name().filter(|_| !abs.ends_with(".."));
    match (abs.parent(), name) {
        (Some(dir), Some(name)) => match std::fs::canonicalize(dir) {
            Ok(d) => Some(d.join(name)),
            // The directory does not exist: neither does the path.
            Err(_) => Some(abs.components().collect()),
        },
        _ => std::fs::canonicalize(&abs).ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Runs `sh -c script` traced; what it did.
    fn traced(script: &str, cwd: &Path) -> Trace {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).current_dir(cwd);
        let mut t = Tracer::attach(&mut cmd).unwrap();
        let child = cmd.spawn();
        t.spawned();
        let status = child.unwrap().wait().unwrap();
        assert!(status.success());
        t.finish()
    }

    #[test]
    fn reads_writes_and_execs_of_a_process_tree_are_seen() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::write(root.join("in.txt"), "x").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        let t = traced(
            "cat in.txt > out.txt; (cd sub && cat ../in.txt missing 2>/dev/null); mkdir made; rm out.txt; test -e looked; true",
            &root,
        );
        assert!(t.probed.contains(&root.join("looked")), "{t:?}");
        // `mkdir` of a directory that is there changes nothing.
        let t2 = traced("mkdir -p sub/new", &root);
        assert!(!t2.written.contains(&root.join("sub")), "{t2:?}");
        assert!(t2.written.contains(&root.join("sub/new")), "{t2:?}");
        assert!(t.incomplete.is_none(), "{:?}", t.incomplete);
        assert!(t.read.contains(&root.join("in.txt")), "{t:?}");
        assert!(t.read.contains(&root.join("sub/missing")), "{t:?}");
        assert!(
            t.read.iter().any(|p| p.ends_with("cat")),
            "exec seen: {t:?}"
        );
        assert!(t.written.contains(&root.join("out.txt")), "{t:?}");
        assert!(t.written.contains(&root.join("made")), "{t:?}");
        assert!(!t.read.contains(&root.join("out.txt")), "{t:?}");
    }

    /// The tracer's cost per watched call, by hand (not in CI):
    /// `cargo test --release --bin kache trace_cost -- --ignored --nocapture`.
    /// Compiles one C file including system headers 40 times (or runs
    /// the shell script `KACHE_TRACE_SCRIPT`), with and without the
    /// trace, in one run, and prints the ratio.
    #[test]
    #[ignore = "a benchmark"]
    fn trace_cost() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::write(
            root.join("x.c"),
            "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <pthread.h>\nint main(void){puts(\"x\");return 0;}\n",
        )
        .unwrap();
        let script = std::env::var("KACHE_TRACE_SCRIPT")
            .unwrap_or_else(|_| "for i in $(seq 40); do gcc -O0 -o x x.c; done".into());
        let run = |traced: bool| {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(&script).current_dir(&root);
            let t0 = std::time::Instant::now();
            let trace = if traced {
                let mut t = Tracer::attach(&mut cmd).unwrap();
                let child = cmd.spawn();
                t.spawned();
                assert!(child.unwrap().wait().unwrap().success());
                Some(t.finish())
            } else {
                assert!(cmd.status().unwrap().success());
                None
            };
            (t0.elapsed(), trace)
        };
        for _ in 0..2 {
            let (plain, _) = run(false);
            let (traced, t) = run(true);
            let t = t.unwrap();
            println!(
                "plain {:.3} s, traced {:.3} s: {:.3}; paths read {} probed {} written {}",
                plain.as_secs_f64(),
                traced.as_secs_f64(),
                traced.as_secs_f64() / plain.as_secs_f64(),
                t.read.len(),
                t.probed.len(),
                t.written.len()
            );
        }
    }

    /// Runs `script` traced in a new directory, the script leaving a
    /// helper running that writes its pid to `helper.pid`; kills the
    /// helper. How long the trace took, and what it saw.
    fn traced_with_helper(script: &str) -> (Duration, Trace, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let t0 = Instant::now();
        let t = traced(script, &root);
        let took = t0.elapsed();
        let pid = std::fs::read_to_string(root.join("helper.pid")).unwrap();
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        (took, t, root)
    }

    /// A helper the program leaves running, still making watched calls,
    /// does not keep the trace (and so the build) waiting. (Its loop is
    /// bounded: traced to its end it takes far longer than the limit.)
    #[test]
    fn a_helper_left_running_does_not_hold_the_trace() {
        let (took, t, root) = traced_with_helper(
            "(i=0; while [ $i -lt 1000000 ]; do : > busy; i=$((i+1)); done) >/dev/null 2>&1 & echo $! > helper.pid",
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(t.written.contains(&root.join("helper.pid")), "{t:?}");
    }

    /// A quiet helper keeps the filter alive, so only `finish`'s signal
    /// ends the tracer thread's wait: it must get through even when the
    /// thread that started the trace blocked it (the tracer thread
    /// inherits this test thread's mask).
    #[test]
    fn the_wake_up_gets_through_a_blocked_signal() {
        mask_wake_signal(libc::SIG_BLOCK);
        // The helper is past its start (and its watched calls) before
        // the program exits.
        let (took, ..) =
            traced_with_helper("sleep 4 >/dev/null 2>&1 & echo $! > helper.pid; sleep 0.3");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    /// What the trace cannot follow: a file opened by handle makes it
    /// incomplete; a seccomp listener of the program's own (which would
    /// be asked before ours) the kernel refuses, while a filter without
    /// one (a sandbox) installs and changes nothing.
    #[test]
    fn what_the_trace_cannot_follow_is_refused_or_said() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::write(
            root.join("f.c"),
            "#define _GNU_SOURCE\n#include <fcntl.h>\n#include <linux/filter.h>\n#include <linux/seccomp.h>\n\
             #include <stdlib.h>\n#include <sys/syscall.h>\n#include <unistd.h>\n\
             int main(int c, char **v) {\n\
               int mode = atoi(v[1]);\n\
               if (mode == 2) {\n\
                 struct file_handle *h = malloc(sizeof *h + 128);\n\
                 int m;\n\
                 h->handle_bytes = 128;\n\
                 name_to_handle_at(AT_FDCWD, \"f.c\", h, &m, 0);\n\
                 open_by_handle_at(AT_FDCWD, h, O_RDONLY);\n\
                 return 0;\n\
               }\n\
               struct sock_filter f[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };\n\
               struct sock_fprog p = { 1, f };\n\
               unsigned flags = mode ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0;\n\
               return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p) < 0;\n\
             }\n",
        )
        .unwrap();
        let cc = Command::new("cc")
            .args(["-o", "f", "f.c"])
            .current_dir(&root)
            .status();
        if !cc.is_ok_and(|s| s.success()) {
            eprintln!("skipped: no C compiler");
            return;
        }
        let run = |mode: &str, trace: bool| {
            let mut cmd = Command::new(root.join("f"));
            cmd.arg(mode).current_dir(&root);
            if !trace {
                return (cmd.status().unwrap().success(), None);
            }
            let mut t = Tracer::attach(&mut cmd).unwrap();
            let child = cmd.spawn();
            t.spawned();
            let ok = child.unwrap().wait().unwrap().success();
            (ok, Some(t.finish()))
        };
        let (ok, t) = run("0", true);
        assert!(ok);
        assert!(t.unwrap().incomplete.is_none());
        // The program can install a listener untraced, not traced.
        assert!(run("1", false).0);
        assert!(!run("1", true).0);
        let (_, t) = run("2", true);
        let why = t.unwrap().incomplete;
        assert!(
            why.as_deref().is_some_and(|w| w.contains("handle")),
            "{why:?}"
        );
    }

    #[test]
    fn dot_dot_is_resolved_through_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("real/inc")).unwrap();
        std::fs::write(root.join("real/cfg.txt"), "x").unwrap();
        std::os::unix::fs::symlink(root.join("real/inc"), root.join("tp")).unwrap();
        let t = traced("cat tp/../cfg.txt; true", &root);
        assert!(t.read.contains(&root.join("real/cfg.txt")), "{t:?}");
        assert!(!t.read.contains(&root.join("cfg.txt")), "{t:?}");
    }
}
