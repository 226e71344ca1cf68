//! Pending uploads: `<store>/pending/<remote id hash>/<crate>/<key>`,
//! one empty marker per entry the wrapper stored and the daemon (or
//! `kache sync --push`) is still to upload to that remote. The store owns
//! them; the daemon and sync read and clear them.

use std::fs;
use std::path::{Path, PathBuf};

use super::{CacheKey, CrateName};

/// `<store>/pending/<remote id hash>`: uploads recorded for that remote.
pub(crate) fn pending_dir(root: &Path, remote: &str) -> PathBuf {
    let h = blake3::hash(remote.as_bytes()).to_hex();
    root.join("pending").join(&h[..16])
}

/// The pending markers under `dir` (crate, key), valid names only.
pub(crate) fn pending_markers(dir: &Path) -> Vec<(CrateName, CacheKey)> {
    let mut out = Vec::new();
    for c in fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(crate_name) = c.file_name().to_str().and_then(CrateName::parse) else {
            continue;
        };
        for k in fs::read_dir(c.path()).into_iter().flatten().flatten() {
            if let Some(key) = k.file_name().to_str().and_then(CacheKey::parse) {
                out.push((crate_name.clone(), key));
            }
        }
    }
    out
}
