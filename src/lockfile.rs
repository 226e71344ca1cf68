/*!
The workspace's Cargo.lock: which crates `kache sync --pull` fetches.

Found the way cargo finds it: from the directory of `--manifest-path`
(or the current directory), walking up to the first ancestor holding a
`Cargo.lock` (the workspace root). Package names are normalised like the
remote layout (`serde-json` -> `serde_json`). The wrapper stores build-script entries
under their package's name too, so the lockfile names are the whole
filter.
*/

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use crate::store::normalize_crate;

/// The Cargo.lock governing `start` (a directory), if any.
pub(crate) fn find_from(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
}

/// The directory to start from: that of `--manifest-path`, else `cwd`.
pub(crate) fn start_dir(manifest_path: Option<&Path>, cwd: &Path) -> Result<PathBuf> {
    let Some(m) = manifest_path else {
        return Ok(cwd.to_path_buf());
    };
    let m = if m.is_absolute() {
        m.to_path_buf()
    } else {
        cwd.join(m)
    };
    if m.is_dir() {
        return Ok(m);
    }
    if !m.is_file() {
        bail!("manifest path {} does not exist", m.display());
    }
    if m.file_name().and_then(|n| n.to_str()) != Some("Cargo.toml") {
        bail!(
            "the manifest path must be a path to a Cargo.toml file: {}",
            m.display()
        );
    }
    Ok(m.parent()
        .map_or_else(|| cwd.to_path_buf(), Path::to_path_buf))
}

/// Loads a Cargo.lock: each normalised crate name with the versions it
/// names.
pub(crate) fn versions(path: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let lock: cargo_lock::Lockfile = text.parse().map_err(|e: cargo_lock::Error| {
        anyhow!("malformed {}: {}", path.display(), one_line(&e.to_string()))
    })?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in &lock.packages {
        out.entry(normalize_crate(p.name.as_str()))
            .or_default()
            .insert(p.version.to_string());
    }
    Ok(out)
}

/// A multi-line parser message (TOML errors quote the source with
/// carets) as one line: the text lines, without the quoted source.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| {
            let quoted = l.starts_with('|')
                || l.split_once(" |")
                    .is_some_and(|(n, _)| n.trim().parse::<u32>().is_ok());
            !l.is_empty() && !quoted
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
version = 3

[[package]]
name = "serde-json"
version = "1.0.0"

[[package]]
name = "Foo_Bar"
version = "0.1.0"
"#;

    #[test]
    fn finds_upwards_and_normalises() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Cargo.lock"), LOCK).unwrap();
        let sub = d.path().join("crates/a/src");
        std::fs::create_dir_all(&sub).unwrap();
        let found = find_from(&sub).unwrap();
        assert_eq!(found, d.path().join("Cargo.lock"));
        let set = versions(&found).unwrap();
        assert!(set["serde_json"].contains("1.0.0"));
        assert!(set.contains_key("foo_bar"));
        assert!(
            !set.contains_key("build_script_build"),
            "a plain lockfile filter"
        );
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn malformed_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("Cargo.lock");
        std::fs::write(&p, "[[package]\nname = ").unwrap();
        let e = format!("{:#}", versions(&p).unwrap_err());
        assert!(e.contains("Cargo.lock") && e.contains("malformed"), "{e}");
        assert!(e.contains("line 1") && !e.contains('\n'), "one line: {e}");
        let e = format!(
            "{:#}",
            versions(&d.path().join("nope/Cargo.lock")).unwrap_err()
        );
        assert!(e.contains("nope/Cargo.lock"), "{e}");
    }

    #[test]
    fn manifest_path_dir() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("Cargo.toml");
        std::fs::write(&m, "").unwrap();
        assert_eq!(start_dir(Some(&m), Path::new("/")).unwrap(), d.path());
        assert!(start_dir(Some(&d.path().join("x/Cargo.toml")), Path::new("/")).is_err());
        assert_eq!(start_dir(None, d.path()).unwrap(), d.path());
    }
}
