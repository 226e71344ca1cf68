/*!
Storing a miss after the wrapper has returned (`cache.background_store`).

The crate being edited is compiled incrementally on every save; hashing,
scanning, copying and syncing its outputs (tens of MiB for a binary)
would add that much to every edit loop. For such a compile the wrapper
forks once rustc is done: the parent exits with rustc's status at once,
the child (in its own session, stdio on `/dev/null`) records the entry.

What keeps it exact:
- The outputs are opened by the parent before the fork ([`Pinned`]):
  the child reads the files rustc wrote even if the next compile has
  replaced them since (linkers and rustc write new files and rename).
  Their size and mtime are checked again after reading: a tool that
  wrote into one in place leaves the entry unstored.
- The dep-info text is read before the fork.
- The inputs are hashed by the child, and, as in the foreground, an input
  changed since the compile started (by its ctime) leaves the entry
  unstored: an edit saved meanwhile never gets the old outputs.
- The child holds the store's writer lock (taken before the fork, so it
  is never released in between) and the key's compile lock: `kache gc`
  and every command that settles the store wait for it; an identical
  compile waits for it and then finds the entry.
*/
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::store::Store;

/// The size and mtime of an open file: a write in place changes them.
type Stamp = (u64, i64, i64);

fn stamp(f: &File) -> Option<Stamp> {
    let m = f.metadata().ok()?;
    Some((m.size(), m.mtime(), m.mtime_nsec()))
}

/// Outputs opened (and the dep-info read) before the fork.
#[derive(Default)]
pub(crate) struct Pinned {
    files: HashMap<String, (File, Stamp)>,
    pub(crate) dep_text: Option<String>,
}

impl Pinned {
    /// Opens `dir/name` for each name; `None` if one cannot be opened.
    pub(crate) fn open(dir: &Path, names: &[String]) -> Option<Pinned> {
        let mut files = HashMap::new();
        for n in names {
            let f = File::open(dir.join(n)).ok()?;
            let s = stamp(&f)?;
            files.insert(n.clone(), (f, s));
        }
        Some(Pinned {
            files,
            dep_text: None,
        })
    }

    /// The open file of output `name`.
    pub(crate) fn file(&self, name: &str) -> Option<&File> {
        self.files.get(name).map(|(f, _)| f)
    }

    /// Whether every pinned file still has the size and mtime it had
    /// when it was opened.
    pub(crate) fn unchanged(&self) -> bool {
        self.files.values().all(|(f, s)| stamp(f) == Some(*s))
    }
}

/// Which side of the fork this is.
pub(crate) enum Side {
    /// The wrapper: return rustc's status now.
    Parent,
    /// The background recorder: record, then [`exit`]. Holds the store's
    /// writer lock.
    Child(File),
}

/// Forks a background recorder. `None` if it cannot (the caller then
/// records in the foreground). The process must be single-threaded here
/// (the wrapper is, once rustc's output pumps are joined).
pub(crate) fn fork(store: &Store) -> Option<Side> {
    let lock = store.writer_lock().ok()?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok()?;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: no other thread runs; the child only makes system calls
    // and runs the store's ordinary code before `_exit`.
    match unsafe { libc::fork() } {
        -1 => None,
        0 => {
            use std::os::fd::AsRawFd;
            // SAFETY: plain system calls on fds this process owns and
            // on its own scheduling; no memory of ours is touched.
            unsafe {
                libc::setsid();
                for fd in 0..=2 {
                    libc::dup2(null.as_raw_fd(), fd);
                }
                // Behind the build in the CPU and disk queues: the build
                // is what someone waits for.
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
                const IOPRIO_WHO_PROCESS: libc::c_long = 1;
                const IOPRIO_BEST_EFFORT_LOWEST: libc::c_long = (2 << 13) | 7;
                libc::syscall(
                    libc::SYS_ioprio_set,
                    IOPRIO_WHO_PROCESS,
                    0 as libc::c_long,
                    IOPRIO_BEST_EFFORT_LOWEST,
                );
            }
            close_inherited();
            // setsid made a new scheduling group (autogroup) whose share
            // equals the build's whatever the nice value inside it.
            autogroup_nice(10);
            Some(Side::Child(lock))
        }
        _ => Some(Side::Parent),
    }
}

/// Closes every fd above stderr that is not close-on-exec: those came
/// from whoever started kache (cargo's jobserver pipe, a lock a CI script
/// took with `flock ... cargo build`), never from kache (Rust opens its
/// files close-on-exec), and must not outlive the wrapper in a process of
/// its own.
fn close_inherited() {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl and close on fds of this process; an fd kache
        // owns has FD_CLOEXEC and is left alone.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::close(fd);
            }
        }
    }
}

/// Sets the nice value of this session's autogroup (where the kernel
/// has them): with autogroups, a process's nice value weighs only
/// against its own session.
pub(crate) fn autogroup_nice(n: i32) {
    let _ = std::fs::write("/proc/self/autogroup", n.to_string());
}

/// Ends the background recorder (no destructors, no atexit handlers of
/// the parent's).
pub(crate) fn exit() -> ! {
    // SAFETY: ends this process.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_output_written_in_place_is_seen_and_a_replaced_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"one").unwrap();
        std::fs::write(d.path().join("b"), b"two").unwrap();
        let p = Pinned::open(d.path(), &["a".into(), "b".into()]).unwrap();
        assert!(p.unchanged());
        // The next compile replaces `b` (a new file renamed over it): the
        // pinned file is still what this compile wrote.
        std::fs::write(d.path().join("b.new"), b"TWO!").unwrap();
        std::fs::rename(d.path().join("b.new"), d.path().join("b")).unwrap();
        assert!(p.unchanged());
        let mut s = String::new();
        use std::io::Read;
        p.file("b").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "two");
        // A tool writes into `a` in place: the store must not take it.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("a"))
            .unwrap()
            .write_all(b"ONE")
            .unwrap();
        assert!(!p.unchanged());
        assert!(Pinned::open(d.path(), &["missing".into()]).is_none());
    }
}
