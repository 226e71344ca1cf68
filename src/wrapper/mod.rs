//! RUSTC_WRAPPER mode (stub; being written).

use std::ffi::OsString;

/// Whether argv is a wrapper call: argv[1] is rustc or clippy-driver.
pub(crate) fn is_wrapper_call(args: &[OsString]) -> bool {
    args.get(1).is_some_and(|a| {
        let stem = std::path::Path::new(a)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("");
        stem == "rustc" || stem == "clippy-driver"
    })
}

/// Runs the wrapper; returns the exit code to exit with.
pub(crate) fn main(args: &[OsString]) -> i32 {
    let status = std::process::Command::new(&args[1])
        .args(&args[2..])
        .status();
    match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", args[1].to_string_lossy());
            1
        }
    }
}
