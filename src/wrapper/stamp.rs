//! The one system call std does not offer: stamping a file with the
//! filesystem's own clock (`futimens` with `UTIME_NOW`).
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
