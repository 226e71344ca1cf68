/*!
`kache init`: switches kache on for cargo, and the one question `kache
doctor` asks first: which wrapper will cargo run here?

Cargo takes `RUSTC_WRAPPER` from the environment (an empty value means
none), then `CARGO_BUILD_RUSTC_WRAPPER`, then `build.rustc-wrapper` from
the nearest `.cargo/config.toml` (or `.cargo/config`) walking up from the
current directory, then from `$CARGO_HOME/config.toml`. `init` writes
that key into `$CARGO_HOME/config.toml`, or the project's with
`--project`, editing the file line by line so comments and layout stay.
*/

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::InitCmd;

/// Where the wrapper cargo will use comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WrapperSource {
    Env(&'static str),
    File(PathBuf),
}

impl std::fmt::Display for WrapperSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WrapperSource::Env(v) => write!(f, "${v}"),
            WrapperSource::File(p) => write!(f, "build.rustc-wrapper in {}", p.display()),
        }
    }
}

/// The wrapper cargo will run in `cwd`, and where that comes from;
/// `None` when no wrapper is set (or `RUSTC_WRAPPER` is set empty).
pub(crate) fn effective_wrapper(cwd: &Path) -> Option<(String, WrapperSource)> {
    for var in ["RUSTC_WRAPPER", "CARGO_BUILD_RUSTC_WRAPPER"] {
        if let Some(v) = std::env::var_os(var) {
            let v = v.to_string_lossy().into_owned();
            return (!v.is_empty()).then_some((v, WrapperSource::Env(var)));
        }
    }
    let mut files: Vec<PathBuf> = cwd
        .ancestors()
        .flat_map(|d| [d.join(".cargo/config.toml"), d.join(".cargo/config")])
        .collect();
    files.extend(cargo_home().map(|h| h.join("config.toml")));
    files.dedup();
    files
        .into_iter()
        .filter(|f| f.is_file())
        .find_map(|f| wrapper_in(&f).map(|w| (w, WrapperSource::File(f))))
}

/// `build.rustc-wrapper` of a cargo config file, if it sets one.
fn wrapper_in(file: &Path) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    let v: toml::Table = text.parse().ok()?;
    v.get("build")?
        .get("rustc-wrapper")?
        .as_str()
        .map(str::to_string)
}

/// Whether a wrapper value names kache.
pub(crate) fn is_kache(wrapper: &str) -> bool {
    Path::new(wrapper).file_stem().is_some_and(|s| s == "kache")
}

pub(crate) fn cargo_home() -> Option<PathBuf> {
    crate::config::env_nonempty("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| crate::config::env_nonempty("HOME").map(|h| Path::new(&h).join(".cargo")))
}

/// The value to write: `kache` when that name on PATH is this program,
/// else this program's absolute path.
fn wrapper_value() -> String {
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("kache"))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
    });
    match me {
        Some(me) if on_path.as_ref() != Some(&me) => me.display().to_string(),
        _ => "kache".to_string(),
    }
}

/// The config file `init` edits.
fn target_file(project: bool, cwd: &Path) -> Result<PathBuf> {
    if !project {
        return cargo_home()
            .map(|h| h.join("config.toml"))
            .context("neither CARGO_HOME nor HOME is set; hint: set CARGO_HOME, or use --project");
    }
    let root = crate::lockfile::find_from(cwd)
        .and_then(|l| l.parent().map(Path::to_path_buf))
        .or_else(|| {
            cwd.ancestors()
                .find(|d| d.join("Cargo.toml").is_file())
                .map(Path::to_path_buf)
        })
        .with_context(|| {
            format!(
                "no Cargo.toml in {} or above; hint: run kache init --project inside a cargo project",
                cwd.display()
            )
        })?;
    Ok(root.join(".cargo/config.toml"))
}

/// What `init` does to a config file's text: the new text, or `None`
/// when kache is already the wrapper there.
fn edit(text: &str, value: &str, force: bool, file: &Path) -> Result<Option<String>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        anyhow::anyhow!("{} is not valid TOML: {}", file.display(), e.message())
    })?;
    let line = format!("rustc-wrapper = {}", toml::Value::String(value.to_string()));
    let current = table
        .get("build")
        .and_then(|b| b.get("rustc-wrapper"))
        .and_then(|w| w.as_str());
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let is_key = |l: &str, k: &str| {
        l.trim_start()
            .strip_prefix(k)
            .is_some_and(|r| r.trim_start().starts_with('='))
    };
    let header = |l: &str| l.trim_start().starts_with('[');
    let build_at = lines.iter().position(|l| {
        let t = l.trim();
        t == "[build]" || (t.starts_with("[build]") && t[7..].trim_start().starts_with('#'))
    });
    match current {
        Some(w) if is_kache(w) => return Ok(None),
        Some(w) if !force => bail!(
            "{} already sets build.rustc-wrapper = {w:?}; hint: remove that line, or run kache init --force to replace it",
            file.display()
        ),
        Some(_) => {
            // Replace the line that sets it, in `[build]` or dotted.
            let mut in_build = false;
            let mut done = false;
            for l in &mut lines {
                if header(l) {
                    in_build = l.trim().starts_with("[build]");
                    continue;
                }
                let top = !in_build && is_key(l, "build.rustc-wrapper");
                if (in_build && is_key(l, "rustc-wrapper")) || top {
                    *l = if top {
                        format!("build.{line}")
                    } else {
                        line.clone()
                    };
                    done = true;
                    break;
                }
            }
            if !done {
                bail!(
                    "cannot find the line of build.rustc-wrapper in {}; hint: edit it by hand",
                    file.display()
                );
            }
        }
        None => match build_at {
            Some(i) => lines.insert(i + 1, line),
            None if table.contains_key("build") => {
                // `build.jobs = 4` at the top: a dotted key there too.
                lines.insert(0, format!("build.{line}"));
            }
            None => {
                if lines.last().is_some_and(|l| !l.trim().is_empty()) {
                    lines.push(String::new());
                }
                lines.push("[build]".to_string());
                lines.push(line);
            }
        },
    }
    let mut out = lines.join("\n");
    out.push('\n');
    // Never write a file cargo could not read.
    let check: toml::Table = out
        .parse()
        .map_err(|_| anyhow::anyhow!("cannot add build.rustc-wrapper to {} without breaking it; hint: add `rustc-wrapper = \"kache\"` under [build] by hand", file.display()))?;
    let got = check
        .get("build")
        .and_then(|b| b.get("rustc-wrapper"))
        .and_then(|w| w.as_str());
    if got != Some(value) {
        bail!(
            "cannot add build.rustc-wrapper to {}; hint: add `rustc-wrapper = \"kache\"` under [build] by hand",
            file.display()
        );
    }
    Ok(Some(out))
}

/// `kache init [--project] [--check] [--force]`.
pub(crate) fn init(c: &InitCmd) -> Result<ExitCode> {
    let cwd = std::env::current_dir().context("no current directory")?;
    let mut out = std::io::stdout().lock();
    if c.check {
        return Ok(match effective_wrapper(&cwd) {
            Some((w, src)) if is_kache(&w) => {
                writeln!(out, "kache is on: cargo runs {w} here ({src})")?;
                ExitCode::SUCCESS
            }
            Some((w, src)) => {
                writeln!(
                    out,
                    "kache is not on: cargo runs {w} here ({src}); run kache init"
                )?;
                ExitCode::from(1)
            }
            None => {
                writeln!(
                    out,
                    "kache is not on: cargo runs no wrapper here; run kache init"
                )?;
                ExitCode::from(1)
            }
        });
    }
    let file = target_file(c.project, &cwd)?;
    let text = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => bail!("cannot read {}: {e}", file.display()),
    };
    let value = wrapper_value();
    match edit(&text, &value, c.force, &file)? {
        None => writeln!(
            out,
            "kache is already on: {} sets build.rustc-wrapper to kache; nothing changed",
            file.display()
        )?,
        Some(new) => {
            if let Some(dir) = file.parent() {
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let tmp = file.with_extension(format!("toml.kache-{}", std::process::id()));
            fs::write(&tmp, new).with_context(|| format!("cannot write {}", tmp.display()))?;
            fs::rename(&tmp, &file)
                .with_context(|| format!("cannot replace {}", file.display()))?;
            writeln!(
                out,
                "kache is on: set build.rustc-wrapper = {value:?} in {}",
                file.display()
            )?;
            writeln!(
                out,
                "to undo: delete that line from {} (or run one build with KACHE_DISABLED=1)",
                file.display()
            )?;
        }
    }
    // The environment wins over every config file.
    if let Some((w, src @ WrapperSource::Env(_))) = effective_wrapper(&cwd)
        && !is_kache(&w)
    {
        writeln!(
            out,
            "note: {src} = {w} overrides the config file in this shell; unset it to use kache"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed(text: &str, force: bool) -> Result<Option<String>> {
        edit(text, "kache", force, Path::new("config.toml"))
    }

    #[test]
    fn adds_the_key_where_it_belongs() {
        assert_eq!(
            ed("", false).unwrap().unwrap(),
            "[build]\nrustc-wrapper = \"kache\"\n"
        );
        let t = "# mine\n[build]\njobs = 4\n\n[net]\noffline = true\n";
        assert_eq!(
            ed(t, false).unwrap().unwrap(),
            "# mine\n[build]\nrustc-wrapper = \"kache\"\njobs = 4\n\n[net]\noffline = true\n"
        );
        let t = "build.jobs = 4\n[net]\noffline = true\n";
        assert_eq!(
            ed(t, false).unwrap().unwrap(),
            "build.rustc-wrapper = \"kache\"\nbuild.jobs = 4\n[net]\noffline = true\n"
        );
        let t = "[net]\noffline = true\n";
        assert_eq!(
            ed(t, false).unwrap().unwrap(),
            "[net]\noffline = true\n\n[build]\nrustc-wrapper = \"kache\"\n"
        );
    }

    #[test]
    fn idempotent_and_careful_with_another_wrapper() {
        assert!(
            ed("[build]\nrustc-wrapper = \"/x/kache\"\n", false)
                .unwrap()
                .is_none()
        );
        let t = "[build]\nrustc-wrapper = \"sccache\" # old\njobs = 2\n";
        let e = ed(t, false).unwrap_err().to_string();
        assert!(e.contains("sccache") && e.contains("--force"), "{e}");
        assert_eq!(
            ed(t, true).unwrap().unwrap(),
            "[build]\nrustc-wrapper = \"kache\"\njobs = 2\n"
        );
        assert!(ed("build = { jobs = 4 }\n", false).is_err());
        assert!(ed("[build\n", false).is_err());
    }
}
