/*!
The launcher kache puts where cargo expects a build script's executable.

When kache compiles a build script, the executable rustc wrote is kept
beside its name as `NAME.kache-real`, and `NAME` becomes a short `sh`
script that runs `kache --kache-run-build-script NAME.kache-real`. Cargo
hard-links `NAME` to `build-script-build` and runs it, so every run of
the script goes through kache.

A target dir holding launchers still builds without kache: the launcher
runs the real script itself when the kache binary it names is gone, and
kache runs it as is under `KACHE_DISABLED=1` or when cargo's
`RUSTC_WRAPPER` is not kache (a plain `cargo build`). A plain rustc
compile of the script writes a real executable over the launcher.
*/

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, anyhow};

/// The argument that makes kache run a build script (see `script::main`).
pub(crate) const RUN_ARG: &str = "--kache-run-build-script";

/// The suffix of the real executable beside the launcher.
const REAL_SUFFIX: &str = ".kache-real";

/// A path inside single quotes for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The launcher's text, for the executable `name` in its directory.
fn text(kache: &str, name: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # Written by kache, the build cache: cargo runs this in place of the build\n\
         # script beside it ({name}{REAL_SUFFIX}); kache answers the run from its cache\n\
         # or runs the script. Without kache the script runs as is.\n\
         k={k}\n\
         case $0 in */*) d=${{0%/*}} ;; *) d=. ;; esac\n\
         r=\"$d\"/{real}\n\
         if [ -x \"$k\" ]; then exec \"$k\" {RUN_ARG} \"$r\" \"$@\"; fi\n\
         exec \"$r\" \"$@\"\n",
        k = sh_quote(kache),
        real = sh_quote(&format!("{name}{REAL_SUFFIX}")),
    )
}

/// Moves the build script `exe` (just compiled or restored) aside and
/// writes the launcher in its place. On failure the executable is left
/// as it was.
pub(crate) fn install(exe: &Path) -> Result<()> {
    let kache = std::env::current_exe().context("cannot find the kache binary")?;
    let kache = kache
        .to_str()
        .ok_or_else(|| anyhow!("the kache binary's path is not UTF-8"))?;
    let name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no UTF-8 file name", exe.display()))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let real = dir.join(format!("{name}{REAL_SUFFIX}"));
    let tmp = dir.join(format!(".{name}.kache-launcher.{}", std::process::id()));
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text(kache, name).as_bytes())?;
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        drop(f);
        fs::rename(exe, &real).with_context(|| format!("cannot move {}", exe.display()))?;
        if let Err(e) = fs::rename(&tmp, exe) {
            let _ = fs::rename(&real, exe);
            return Err(e).with_context(|| format!("cannot write {}", exe.display()));
        }
        Ok(())
    })();
    let _ = fs::remove_file(&tmp);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_runs_the_real_script_when_kache_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("build_script_build-abc");
        fs::write(&exe, "#!/bin/sh\necho real \"$@\"\n").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(
            &exe,
            text("/nonexistent/it's/kache", "build_script_build-abc"),
        )
        .unwrap();
        fs::write(
            d.path().join("build_script_build-abc.kache-real"),
            "#!/bin/sh\necho real \"$@\"\n",
        )
        .unwrap();
        fs::set_permissions(
            d.path().join("build_script_build-abc.kache-real"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // cargo runs it through its hard link.
        let link = d.path().join("build-script-build");
        fs::hard_link(&exe, &link).unwrap();
        let out = std::process::Command::new(&link)
            .arg("a b")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "real a b\n");
    }
}
