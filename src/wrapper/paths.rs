/*!
Machine-local paths and the sentinels that stand for them.

The workspace root, the target dir, `CARGO_HOME` and `HOME` differ
between checkouts and machines; keys, stored output and dep-info name
them through sentinels (`/kache-ws`, `/kache-target`, ...), so
checkouts at different paths meet on the same keys. [`Paths`] maps
both ways: `normalize` (real to sentinel, most specific root first)
and `expand` (back to this checkout).
*/

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::depinfo::rule_split;

/// Machine-local path prefixes and the sentinel each one becomes. The
/// sentinels are absolute paths so they also serve as
/// `--remap-path-prefix` targets.
#[derive(Clone, Debug, Default)]
pub(crate) struct Paths {
    /// (real, sentinel), most specific (longest real) first.
    rules: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
}

impl Paths {
    pub(crate) fn detect(out_dir: &Path) -> Result<Paths> {
        let cwd = std::env::current_dir().context("no current directory")?;
        Ok(Paths::detect_rooted(out_dir, cwd.clone(), cwd))
    }

    /// Like [`Paths::detect`] for a compile that runs in `cwd` inside
    /// the workspace `ws` (a build script's C compile runs in its
    /// package's directory): `ws` is the `/kache-ws` root.
    pub(crate) fn detect_rooted(out_dir: &Path, cwd: PathBuf, ws: PathBuf) -> Paths {
        let out_abs = if out_dir.is_absolute() {
            out_dir.to_path_buf()
        } else {
            cwd.join(out_dir)
        };
        let target = out_abs
            .ancestors()
            .find(|d| d.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from));
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".cargo")));
        let mut rules = Vec::new();
        let mut add = |p: Option<PathBuf>, s: &str| {
            if let Some(p) = p.and_then(|p| p.to_str().map(|s| s.trim_end_matches('/').to_string()))
                && p.len() > 1
                && !rules.iter().any(|(r, _): &(String, String)| *r == p)
            {
                rules.push((p, s.to_string()));
            }
        };
        add(target, "/kache-target");
        // cargo compiles a registry or git dependency in its own folder
        // under CARGO_HOME: that folder is named through CARGO_HOME, so a
        // debugger maps every dependency with the one CARGO_HOME rule
        // (`kache debug-map`) and `/kache-ws` always means the workspace.
        let under_cargo_home = cargo_home.as_ref().is_some_and(|h| ws.starts_with(h));
        if !under_cargo_home {
            add(Some(ws), "/kache-ws");
        }
        add(cargo_home, "/kache-cargo-home");
        add(home, "/kache-home");
        rules.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Paths { rules, cwd }
    }

    #[cfg(test)]
    pub(crate) fn from_rules(rules: &[(&str, &str)], cwd: &str) -> Paths {
        let mut rules: Vec<(String, String)> = rules
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Paths {
            rules,
            cwd: PathBuf::from(cwd),
        }
    }

    /// Real paths -> sentinels.
    pub(crate) fn normalize(&self, s: &str) -> String {
        let pairs: Vec<(&str, &str)> = self
            .rules
            .iter()
            .map(|(r, t)| (r.as_str(), t.as_str()))
            .collect();
        replace_paths(s, &pairs)
    }

    /// Sentinels -> real paths of this checkout.
    pub(crate) fn expand(&self, s: &str) -> String {
        // Most paths a lookup resolves name no sentinel (a system header).
        if !s.contains("/kache-") && self.rules.iter().all(|(_, t)| t.starts_with("/kache-")) {
            return s.to_string();
        }
        let pairs: Vec<(&str, &str)> = self
            .rules
            .iter()
            .map(|(r, t)| (t.as_str(), r.as_str()))
            .collect();
        replace_paths(s, &pairs)
    }

    /// A path the compile read, for an input list: a relative path (rustc
    /// resolved it from the workspace) and an absolute one under the
    /// target dir or `CARGO_HOME` (cargo made it from those, the same way
    /// in every checkout) are normalised; any other absolute path is kept
    /// as it is, since the source or a build script named it literally
    /// and another checkout reads that same file.
    pub(crate) fn normalize_input(&self, p: &str) -> String {
        if !p.starts_with('/') {
            return self.normalize(p);
        }
        let pairs: Vec<(&str, &str)> = self
            .rules
            .iter()
            .filter(|(_, t)| t == "/kache-target" || t == "/kache-cargo-home")
            .map(|(r, t)| (r.as_str(), t.as_str()))
            .collect();
        replace_paths(p, &pairs)
    }

    /// A path as rustc got it (an argument), made absolute for this
    /// checkout; unlike [`Paths::resolve`], nothing is expanded.
    pub(crate) fn absolute(&self, real: &str) -> PathBuf {
        let p = PathBuf::from(real);
        if p.is_absolute() { p } else { self.cwd.join(p) }
    }

    /// Real paths -> sentinels in a dep-info file, whose rules write a
    /// space in a path as `\ ` (env-dep lines carry values as they are).
    pub(crate) fn normalize_dep_info(&self, text: &str) -> String {
        self.map_dep_info(text, true)
    }

    /// Sentinels -> real paths of this checkout in a dep-info file.
    pub(crate) fn expand_dep_info(&self, text: &str) -> String {
        self.map_dep_info(text, false)
    }

    /// rustc writes the targets of a rule with prerequisites (its outputs)
    /// as they are, and escapes spaces in prerequisites and in the phony
    /// rules it adds for them; env-dep lines carry values as they are.
    fn map_dep_info(&self, text: &str, normalize: bool) -> String {
        let esc: Vec<(String, String)> = self
            .rules
            .iter()
            .map(|(r, t)| {
                let e = r.replace(' ', "\\ ");
                if normalize {
                    (e, t.clone())
                } else {
                    (t.clone(), e)
                }
            })
            .collect();
        let pairs: Vec<(&str, &str)> = esc.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let plain = |l: &str| {
            if normalize {
                self.normalize(l)
            } else {
                self.expand(l)
            }
        };
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            if line.starts_with('#') {
                out.push_str(&plain(line));
            } else if normalize {
                out.push_str(&plain(&replace_paths(line, &pairs)));
            } else {
                match rule_split(line) {
                    Some((targets, deps)) if !deps.trim().is_empty() => {
                        out.push_str(&plain(targets));
                        out.push(':');
                        out.push_str(&replace_paths(deps, &pairs));
                    }
                    _ => out.push_str(&replace_paths(line, &pairs)),
                }
            }
        }
        out
    }

    /// (real path, sentinel) pairs, most specific first.
    pub(crate) fn rules(&self) -> &[(String, String)] {
        &self.rules
    }

    /// `--remap-path-prefix` flags, least specific first (rustc's last
    /// matching rule wins).
    pub(crate) fn remap_args(&self) -> Vec<String> {
        self.rules
            .iter()
            .rev()
            .map(|(real, sent)| format!("--remap-path-prefix={real}={sent}"))
            .collect()
    }

    /// A path from the dep-info or the index, made absolute for this
    /// checkout.
    pub(crate) fn resolve(&self, normalized: &str) -> PathBuf {
        let p = PathBuf::from(self.expand(normalized));
        if p.is_absolute() { p } else { self.cwd.join(p) }
    }
}

/// Characters that continue a path component: a match must not start
/// right after one, nor end right before one, so `/w` never matches
/// inside `/work` and a sentinel never matches inside `/x/kache-ws`.
fn path_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'+' | b'~')
}

/// Replaces each `from` by its `to` in one left-to-right pass (replaced
/// text is never scanned again), only where `from` stands as whole path
/// components; the first pair that matches at a position wins, so pass
/// the most specific first.
fn replace_paths(s: &str, pairs: &[(&str, &str)]) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] == b'/' && (i == 0 || !path_char(b[i - 1])) {
            let hit = pairs.iter().find(|(from, _)| {
                !from.is_empty()
                    && b[i..].starts_with(from.as_bytes())
                    && b.get(i + from.len()).is_none_or(|&c| !path_char(c))
            });
            if let Some((from, to)) = hit {
                out.push_str(&s[copied..i]);
                out.push_str(to);
                i += from.len();
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    out
}

/// The workspace a compile belongs to: the nearest directory with a
/// Cargo.lock above the package (`CARGO_MANIFEST_DIR`), when the compile
/// runs inside that package (the package itself under `CARGO_HOME`);
/// outside cargo, the base directory (see [`base_dir`]); else the working
/// directory.
pub(crate) fn workspace_root(cwd: &Path) -> PathBuf {
    let Some(pkg) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        return base_dir(cwd, std::env::var_os("KACHE_BASE_DIR").as_deref());
    };
    if !cwd.starts_with(&pkg) {
        return cwd.to_path_buf();
    }
    // A registry or git dependency: its own folder (named through
    // CARGO_HOME, like its Rust compiles).
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if cargo_home.is_some_and(|h| pkg.starts_with(h)) {
        return pkg;
    }
    pkg.ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .map_or(pkg.clone(), Path::to_path_buf)
}

/// The root of a compile made outside cargo (`CMake`, make), which
/// becomes `/kache-ws` so checkouts at different paths share: `base`
/// (`KACHE_BASE_DIR`) when it is an absolute path; else the git work
/// tree around `cwd` (the nearest directory holding `.git`, a directory
/// or, in a linked worktree or submodule, a file); else `cwd`.
pub(crate) fn base_dir(cwd: &Path, base: Option<&std::ffi::OsStr>) -> PathBuf {
    if let Some(b) = base.map(Path::new).filter(|b| b.is_absolute()) {
        return b.components().collect();
    }
    cwd.ancestors()
        .find(|d| d.parent().is_some() && d.join(".git").symlink_metadata().is_ok())
        .unwrap_or(cwd)
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_dir_is_the_setting_else_the_git_work_tree() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("checkout");
        let build = tree.join("build/sub");
        std::fs::create_dir_all(&build).unwrap();
        // No work tree: the working directory.
        assert_eq!(base_dir(&build, None), build);
        std::fs::create_dir(tree.join(".git")).unwrap();
        assert_eq!(base_dir(&build, None), tree);
        // A linked worktree's `.git` is a file.
        let linked = t.path().join("linked");
        std::fs::create_dir_all(linked.join("b")).unwrap();
        std::fs::write(linked.join(".git"), "gitdir: /elsewhere\n").unwrap();
        assert_eq!(base_dir(&linked.join("b"), None), linked);
        // KACHE_BASE_DIR wins, normalised; a relative one is ignored.
        let set = std::ffi::OsString::from("/opt/src/");
        assert_eq!(base_dir(&build, Some(&set)), Path::new("/opt/src"));
        let rel = std::ffi::OsString::from("src");
        assert_eq!(base_dir(&build, Some(&rel)), tree);
    }

    #[test]
    fn normalize_most_specific_first() {
        let p = Paths::from_rules(
            &[
                ("/w", "/kache-ws"),
                ("/w/target", "/kache-target"),
                ("/root", "/kache-home"),
            ],
            "/w",
        );
        assert_eq!(
            p.normalize("/w/target/debug /w/src /root/x"),
            "/kache-target/debug /kache-ws/src /kache-home/x"
        );
        assert_eq!(
            p.expand("/kache-target/debug /kache-ws/src"),
            "/w/target/debug /w/src"
        );
        assert_eq!(p.remap_args()[0], "--remap-path-prefix=/w=/kache-ws");
        assert_eq!(
            p.remap_args()[2],
            "--remap-path-prefix=/w/target=/kache-target"
        );
        assert_eq!(p.resolve("src/lib.rs"), PathBuf::from("/w/src/lib.rs"));
    }

    #[test]
    fn paths_are_replaced_as_whole_components_once() {
        let p = Paths::from_rules(
            &[("/t/kache-target", "/kache-target"), ("/w", "/kache-ws")],
            "/w",
        );
        assert_eq!(
            p.normalize("/work /w/x =/w \"/w\""),
            "/work /kache-ws/x =/kache-ws \"/kache-ws\""
        );
        assert_eq!(p.normalize("/t/kache-target/debug"), "/kache-target/debug");
        assert_eq!(p.expand("/kache-target/debug"), "/t/kache-target/debug");
        assert_eq!(p.expand("/opt/kache-target/x"), "/opt/kache-target/x");
        assert_eq!(
            p.absolute("/t/kache-target/a"),
            PathBuf::from("/t/kache-target/a")
        );
    }

    #[test]
    fn dep_info_with_spaces_is_rewritten() {
        let p = Paths::from_rules(&[("/a b/ws", "/kache-ws")], "/a b/ws");
        let text = "/a b/ws/t/foo.d: /a\\ b/ws/src/lib.rs\n/a\\ b/ws/src/lib.rs:\n\n# env-dep:X=/a b/ws/y\n";
        let n = p.normalize_dep_info(text);
        assert_eq!(
            n,
            "/kache-ws/t/foo.d: /kache-ws/src/lib.rs\n/kache-ws/src/lib.rs:\n\n# env-dep:X=/kache-ws/y\n"
        );
        assert_eq!(p.expand_dep_info(&n), text);
    }
}
