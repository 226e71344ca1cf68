//! The system calls the store needs that std does not offer: starting
//! writeback of a file range early (`sync_file_range` with
//! `SYNC_FILE_RANGE_WRITE`), so the sync before a blob is published finds
//! most of its data already on its way to the disk; and who we are
//! (`geteuid`), to check that the store is ours.
#![allow(unsafe_code)]

use std::fs::File;

/// Starts writing `len` bytes at `off` of `f` back to the disk without
/// waiting for it. Best effort: an error only means the later sync does
/// all the work.
#[cfg(target_os = "linux")]
pub(crate) fn start_writeback(f: &File, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the fd is open for the lifetime of `f`; the call takes
    // plain integers and touches no memory of ours.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_f: &File, _off: u64, _len: u64) {}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}
