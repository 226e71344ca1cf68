//! The system calls std does not offer the daemon: the uid of the
//! process at the other end of a Unix socket (`SO_PEERCRED`; our own is
//! `store::euid`), and a thread's CPU priority.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The effective uid of the process that connected `s` (as it was at
/// `connect` time; the kernel records it, the peer cannot forge it).
pub(crate) fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid, writable `ucred` that outlives the call,
    // `len` holds its exact size, and the fd is open for the lifetime of
    // `s`. The kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("short SO_PEERCRED answer"));
    }
    Ok(cred.uid)
}

/// Lowers the calling thread's CPU priority to `nice` (on Linux the nice
/// value is per thread). Best effort: a failure leaves it as it was.
pub(crate) fn lower_priority(nice: libc::c_int) {
    // SAFETY: gettid and setpriority take plain integers and touch no
    // memory of ours.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowers_only_the_calling_thread() {
        // SAFETY (getpriority): plain integers in and out.
        #[allow(unsafe_code)]
        let nice =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let before = nice();
        let in_thread = std::thread::spawn(move || {
            super::lower_priority(before + 3);
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(in_thread, (before + 3).min(19));
        assert_eq!(nice(), before, "the caller's other threads keep theirs");
    }
}
