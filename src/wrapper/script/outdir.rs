/*!
`OUT_DIR` as one stored file: a tar of its tree, written the same way
for the same content (entries sorted by name, fixed owner and times), so
equal outputs give equal blobs and `KACHE_VERIFY` can compare. Regular
files, directories and symbolic links are kept, with their executable
bit; a restore sets every time to now, as a fresh run would.
*/

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::store::BlobHash;
use crate::wrapper::action::Ctx;

/// Removes everything inside `dir` (creating it if missing).
pub(super) fn clear(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                let p = e.path();
                let res = if e.file_type()?.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                res.with_context(|| format!("cannot remove {}", p.display()))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Every path under `dir`, relative, sorted, directories before what
/// they hold.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir.join(rel))
        .with_context(|| format!("cannot read {}", dir.join(rel).display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for n in names {
        let r = rel.join(n);
        let meta = fs::symlink_metadata(dir.join(&r))?;
        out.push(r.clone());
        if meta.is_dir() {
            walk(dir, &r, out)?;
        }
    }
    Ok(())
}

/// Packs `dir` into a tar in the store, scanned for machine-local roots
/// on the way (added to `roots`): its blob hash and size.
pub(super) fn pack(ctx: &Ctx<'_>, dir: &Path, roots: &mut Vec<String>) -> Result<(BlobHash, u64)> {
    let mut paths = Vec::new();
    walk(dir, Path::new(""), &mut paths)?;
    let tmp = ctx.store.tmp_path("out-dir.tar");
    let res = (|| {
        let f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut b = tar::Builder::new(BufWriter::new(f));
        b.mode(tar::HeaderMode::Deterministic);
        b.follow_symlinks(false);
        for r in &paths {
            let p = dir.join(r);
            let meta = fs::symlink_metadata(&p)?;
            if !(meta.is_file() || meta.is_dir() || meta.is_symlink()) {
                bail!(
                    "OUT_DIR holds {}, neither a file, a directory nor a link",
                    p.display()
                );
            }
            b.append_path_with_name(&p, r)
                .with_context(|| format!("cannot pack {}", p.display()))?;
        }
        b.into_inner()?.flush()?;
        ctx.store_output(&tmp, roots)
    })();
    let _ = fs::remove_file(&tmp);
    res
}

/// Unpacks a tar made by [`pack`] into `dir`.
pub(super) fn unpack(tar_path: &Path, dir: &Path) -> Result<()> {
    let f = File::open(tar_path).with_context(|| format!("cannot read {}", tar_path.display()))?;
    let mut a = tar::Archive::new(BufReader::new(f));
    a.set_preserve_mtime(false);
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    a.unpack(dir)
        .with_context(|| format!("cannot restore OUT_DIR {}", dir.display()))
}
