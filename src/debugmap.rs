/*!
`kache debug-map`: the source-path mapping for a debugger.

Outputs of a cached compile name their sources through fixed sentinels
(`/kache-ws` for the workspace, `/kache-cargo-home` for registry and git
dependencies, `/kache-target` for generated code, `/kache-home`), so that
checkouts at different paths share entries. A debugger started anywhere
but the workspace root finds the sources once it maps those sentinels
back to this checkout's paths: this command prints that mapping in the
debugger's own syntax, for its init file or a launch configuration.
*/

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{DebugMapCmd, Debugger};

/// (sentinel, real path) pairs for the workspace of `start`, as the
/// wrapper's `Paths` rules name them.
fn mapping(start: &Path) -> Vec<(&'static str, PathBuf)> {
    let ws = crate::lockfile::find_from(start)
        .and_then(|l| l.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| start.to_path_buf());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cargo")));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| ws.join("target"), |t| ws.join(t));
    let mut out = vec![("/kache-ws", ws), ("/kache-target", target)];
    out.extend(cargo_home.map(|p| ("/kache-cargo-home", p)));
    out.extend(home.map(|p| ("/kache-home", p)));
    out
}

/// The mapping in one debugger's syntax.
fn render(style: Debugger, pairs: &[(&str, PathBuf)]) -> String {
    let q = |p: &Path| p.display().to_string();
    match style {
        Debugger::Gdb => pairs
            .iter()
            .map(|(s, p)| format!("set substitute-path {s} {}\n", q(p)))
            .collect::<Vec<_>>()
            .concat(),
        Debugger::Lldb => {
            let args: Vec<String> = pairs
                .iter()
                .map(|(s, p)| format!("{s} \"{}\"", q(p)))
                .collect();
            format!("settings set target.source-map {}\n", args.join(" "))
        }
        Debugger::Vscode => {
            let map: serde_json::Map<String, serde_json::Value> = pairs
                .iter()
                .map(|(s, p)| ((*s).to_string(), q(p).into()))
                .collect();
            let v = serde_json::json!({ "sourceMap": map });
            format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
        }
    }
}

/// `kache debug-map [--gdb | --lldb | --vscode] [--manifest-path P]`.
pub(crate) fn debug_map(c: &DebugMapCmd) -> Result<ExitCode> {
    let cwd = std::env::current_dir().context("no current directory")?;
    let start = crate::lockfile::start_dir(c.manifest_path.as_deref(), &cwd)?;
    let style = if c.lldb {
        Debugger::Lldb
    } else if c.vscode {
        Debugger::Vscode
    } else {
        Debugger::Gdb
    };
    let text = render(style, &mapping(&start));
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_debugger() {
        let pairs = vec![
            ("/kache-ws", PathBuf::from("/home/u/my ws")),
            ("/kache-cargo-home", PathBuf::from("/home/u/.cargo")),
        ];
        assert_eq!(
            render(Debugger::Gdb, &pairs),
            "set substitute-path /kache-ws /home/u/my ws\n\
             set substitute-path /kache-cargo-home /home/u/.cargo\n"
        );
        assert_eq!(
            render(Debugger::Lldb, &pairs),
            "settings set target.source-map /kache-ws \"/home/u/my ws\" \
             /kache-cargo-home \"/home/u/.cargo\"\n"
        );
        let v: serde_json::Value = serde_json::from_str(&render(Debugger::Vscode, &pairs)).unwrap();
        assert_eq!(v["sourceMap"]["/kache-ws"], "/home/u/my ws");
        assert_eq!(v["sourceMap"]["/kache-cargo-home"], "/home/u/.cargo");
    }

    #[test]
    fn workspace_is_where_cargo_lock_is() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Cargo.lock"), "").unwrap();
        let sub = d.path().join("crates/a");
        std::fs::create_dir_all(&sub).unwrap();
        let m = mapping(&sub);
        assert_eq!(m[0], ("/kache-ws", d.path().to_path_buf()));
    }
}
