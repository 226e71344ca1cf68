//! Putting a stored entry's files back into an out dir.
//!
//! Every file is a private, writable copy: a reflink (copy-on-write
//! clone) where the filesystem has it, else a plain copy. Never a hard
//! link: a restored file shares no inode with the store, so a tool that
//! writes into `target/` in place (`cp` over it, any `O_TRUNC` writer,
//! root ignoring modes) cannot change a blob, and rustc, `cargo fix` or a
//! build without kache can overwrite it like any file it wrote itself.
//! Each file lands under a temp name in the out dir, is checked against
//! the recorded size, stamped with the filesystem's own clock and renamed
//! over the destination.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::paths::Paths;
use super::stamp::{reflink, touch_now};
use crate::store::{Entry, Store, valid_file_name};

fn tmp_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.kache-{}.tmp", std::process::id()))
}

/// Copies `src` to a new file `dst` (reflink when possible), created with
/// `mode` less the umask, as rustc's own output would be; returns the
/// bytes in `dst`.
fn clone_file(src: &Path, dst: &Path, mode: u32) -> io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from = File::open(src)?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dst)?;
    if reflink(&from, &to).is_err() {
        io::copy(&mut from, &mut to)?;
    }
    Ok(to.metadata()?.len())
}

/// Whether files in `dir` can be reflinked (a hit then restores by
/// copy-on-write clones, else by copies). For `kache doctor`.
pub(crate) fn reflinks_in(dir: &Path) -> io::Result<bool> {
    let a = dir.join(format!(".kache-reflink-probe-{}", std::process::id()));
    let b = a.with_extension("clone");
    let result = (|| {
        fs::write(&a, b"probe")?;
        let from = File::open(&a)?;
        let to = File::create(&b)?;
        Ok(reflink(&from, &to).is_ok())
    })();
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    result
}

/// Restores every file of `entry` into `out_dir`, then writes its dep-info.
/// Returns the bytes restored.
pub(crate) fn restore(store: &Store, entry: &Entry, out_dir: &Path, paths: &Paths) -> Result<u64> {
    let mut total = 0;
    for f in &entry.files {
        if !valid_file_name(&f.name) {
            bail!("bad file {} in entry", f.name);
        }
        let blob = store.blob_path(&f.hash);
        let dst = out_dir.join(&f.name);
        let tmp = tmp_in(out_dir, &f.name);
        let _ = fs::remove_file(&tmp);
        let res = (|| -> Result<()> {
            let mode = if f.executable { 0o777 } else { 0o666 };
            let n = clone_file(&blob, &tmp, mode)
                .with_context(|| format!("cannot copy blob {} to {}", f.hash, tmp.display()))?;
            if n != f.size {
                bail!(
                    "blob {} holds {n} bytes, the entry says {}; run `kache gc --verify`",
                    f.hash,
                    f.size
                );
            }
            let file =
                File::open(&tmp).with_context(|| format!("cannot open {}", tmp.display()))?;
            touch_now(&file).with_context(|| format!("cannot stamp {}", tmp.display()))?;
            fs::rename(&tmp, &dst).with_context(|| format!("cannot restore {}", dst.display()))?;
            Ok(())
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res?;
        total += f.size;
    }
    if let Some(d) = &entry.dep_info {
        if !valid_file_name(&d.name) {
            bail!("bad dep-info name {} in entry", d.name);
        }
        let mut text = paths.expand_dep_info(&d.text);
        if entry.salt.is_some() {
            // Pulled: its env values are keyed digests.
            text = super::depinfo::env_values_back(&text, |name| {
                std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
            });
        }
        write_fresh(&out_dir.join(&d.name), text.as_bytes())?;
    }
    Ok(total)
}

/// Writes a new file (temp + rename): a fresh inode stamped by the write.
pub(crate) fn write_fresh(dst: &Path, bytes: &[u8]) -> Result<()> {
    let name = dst
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = dst.parent().unwrap_or(Path::new("."));
    let tmp = tmp_in(dir, &name);
    let res = (|| -> Result<()> {
        fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, dst).with_context(|| format!("cannot write {}", dst.display()))?;
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Removes existing outputs that are read-only (hard links to blobs left
/// by a restore of kache 0.1): rustc cannot overwrite them in place.
pub(crate) fn unlink_readonly(out_dir: &Path, names: &[String]) {
    for n in names {
        let p = out_dir.join(n);
        if let Ok(m) = fs::symlink_metadata(&p)
            && m.is_file()
            && m.permissions().readonly()
        {
            let _ = fs::remove_file(&p);
        }
    }
}
