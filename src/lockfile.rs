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
    let lock = load(path)?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in &lock.packages {
        out.entry(normalize_crate(p.name.as_str()))
            .or_default()
            .insert(p.version.to_string());
    }
    Ok(out)
}

/// Loads a Cargo.lock: each package as (normalised crate name, version),
/// those a build compiles last first. A package comes before every one
/// it depends on: it is ordered by the longest chain of dependencies
/// below it, longest first (then by name and version). A prefetch slower
/// than the build then works towards it from the far end: what it brings
/// is what the build has yet to reach.
pub(crate) fn build_order(path: &Path) -> Result<Vec<(String, String)>> {
    let lock = load(path)?;
    let pkgs = &lock.packages;
    // Each package's dependencies as indices (cargo writes a version
    // where a name is ambiguous; a missing one is skipped).
    let deps: Vec<Vec<usize>> = pkgs
        .iter()
        .map(|p| {
            p.dependencies
                .iter()
                .filter_map(|d| pkgs.iter().position(|q| d.matches(q)))
                .collect()
        })
        .collect();
    // Longest chain below each package; dev-dependencies may close a
    // cycle, which is cut where it is met again.
    let mut depth: Vec<Option<usize>> = vec![None; pkgs.len()];
    let mut on_path = vec![false; pkgs.len()];
    fn walk(
        i: usize,
        deps: &[Vec<usize>],
        depth: &mut [Option<usize>],
        on_path: &mut [bool],
    ) -> usize {
        if let Some(d) = depth[i] {
            return d;
        }
        if on_path[i] {
            return 0;
        }
        on_path[i] = true;
        let mut d = 0;
        for &j in &deps[i] {
            d = d.max(1 + walk(j, deps, depth, on_path));
        }
        on_path[i] = false;
        depth[i] = Some(d);
        d
    }
    let mut out: Vec<(usize, String, String)> = (0..pkgs.len())
        .map(|i| {
            let d = walk(i, &deps, &mut depth, &mut on_path);
            (
                d,
                normalize_crate(pkgs[i].name.as_str()),
                pkgs[i].version.to_string(),
            )
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (&a.1, &a.2).cmp(&(&b.1, &b.2))));
    out.dedup_by(|a, b| a.1 == b.1 && a.2 == b.2);
    Ok(out.into_iter().map(|(_, c, v)| (c, v)).collect())
}

fn load(path: &Path) -> Result<cargo_lock::Lockfile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    text.parse().map_err(|e: cargo_lock::Error| {
        anyhow!("malformed {}: {}", path.display(), one_line(&e.to_string()))
    })
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
    fn the_build_order_puts_what_is_compiled_last_first() {
        // app -> (mid -> leaf-a 2), leaf-a 1; a dev-dependency cycle
        // mid <-> cyc; two versions of leaf-a; an unrelated leaf.
        let lock = r#"
version = 3

[[package]]
name = "app"
version = "0.1.0"
dependencies = ["mid", "leaf-a 1.0.0"]

[[package]]
name = "mid"
version = "0.2.0"
dependencies = ["leaf-a 2.0.0", "cyc"]

[[package]]
name = "cyc"
version = "0.3.0"
dependencies = ["mid"]

[[package]]
name = "leaf-a"
version = "1.0.0"

[[package]]
name = "leaf-a"
version = "2.0.0"

[[package]]
name = "aaa"
version = "9.0.0"
"#;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("Cargo.lock");
        std::fs::write(&p, lock).unwrap();
        let order = build_order(&p).unwrap();
        let at = |n: &str, v: &str| {
            order
                .iter()
                .position(|(c, w)| c == n && w == v)
                .unwrap_or_else(|| panic!("{n} {v} missing from {order:?}"))
        };
        assert_eq!(order.len(), 6, "{order:?}");
        assert_eq!(at("app", "0.1.0"), 0, "{order:?}");
        assert!(at("mid", "0.2.0") < at("leaf_a", "2.0.0"), "{order:?}");
        assert!(at("app", "0.1.0") < at("leaf_a", "1.0.0"), "{order:?}");
        // Leaves last, by name: an unrelated leaf does not jump ahead.
        assert!(at("cyc", "0.3.0") < at("aaa", "9.0.0"), "{order:?}");
        assert_eq!(
            order[3..].to_vec(),
            [("aaa", "9.0.0"), ("leaf_a", "1.0.0"), ("leaf_a", "2.0.0")]
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .to_vec()
        );
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
