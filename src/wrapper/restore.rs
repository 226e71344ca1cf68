//! Putting a stored entry's files back into an out dir.
//!
//! `.rlib`/`.rmeta` are hard-linked when no other tree shares the blob
//! (link count 1); everything else (and anything executable) is a private
//! copy. Each file lands under a temp name in the out dir and is renamed
//! over the destination, then stamped with the filesystem's own clock.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::key::Paths;
use super::stamp::touch_now;
use crate::store::{Entry, Store, valid_file_name, valid_key};

fn tmp_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.kache-{}.tmp", std::process::id()))
}

/// Restores every file of `entry` into `out_dir`, then writes its dep-info.
/// Returns the bytes restored.
pub(crate) fn restore(store: &Store, entry: &Entry, out_dir: &Path, paths: &Paths) -> Result<u64> {
    let mut total = 0;
    for f in &entry.files {
        if !valid_file_name(&f.name) || !valid_key(&f.hash) {
            bail!("bad file {} in entry", f.name);
        }
        let blob = store.blob_path(&f.hash);
        let dst = out_dir.join(&f.name);
        let tmp = tmp_in(out_dir, &f.name);
        let _ = fs::remove_file(&tmp);
        let linkable = !f.executable && (f.name.ends_with(".rlib") || f.name.ends_with(".rmeta"));
        let res = (|| -> Result<()> {
            let linked = linkable
                && fs::metadata(&blob).is_ok_and(|m| m.nlink() == 1)
                && fs::hard_link(&blob, &tmp).is_ok();
            if !linked {
                fs::copy(&blob, &tmp)
                    .with_context(|| format!("cannot copy blob {} to {}", f.hash, tmp.display()))?;
                let mode = if f.executable { 0o755 } else { 0o644 };
                fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                    .with_context(|| format!("cannot chmod {}", tmp.display()))?;
            }
            let file =
                File::open(&tmp).with_context(|| format!("cannot open {}", tmp.display()))?;
            touch_now(&file).with_context(|| format!("cannot stamp {}", tmp.display()))?;
            fs::rename(&tmp, &dst).with_context(|| format!("cannot restore {}", dst.display()))?;
            // rename() between two links of one inode leaves both.
            let _ = fs::remove_file(&tmp);
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
        write_fresh(&out_dir.join(&d.name), paths.expand(&d.text).as_bytes())?;
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

/// Removes existing outputs that are read-only (hard links to blobs from
/// an earlier restore): rustc cannot overwrite them in place.
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
