//! The two system calls std does not offer: stamping a file with the
//! filesystem's own clock (`futimens` with `UTIME_NOW`) and cloning a
//! file's extents (`ioctl(FICLONE)`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Sets the file's access and modification times to "now" as the kernel
/// stamps writes, never ahead of it.
pub(crate) fn touch_now(f: &File) -> io::Result<()> {
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    };
    let times = [now, now];
    // SAFETY: `times` is a valid array of two timespecs that outlives the
    // call, and the fd is open for the lifetime of `f`.
    let rc = unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `dst` a copy-on-write clone of `src` (`ioctl(FICLONE)`): instant
/// and sharing no inode, on filesystems that support it (btrfs, xfs);
/// elsewhere an error (EOPNOTSUPP, EXDEV, EINVAL) and the caller copies.
#[cfg(target_os = "linux")]
pub(crate) fn reflink(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: both fds are open for the duration of the call; FICLONE
    // takes the source fd as its integer argument and touches no memory.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn reflink(_src: &File, _dst: &File) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
