/*!
Which argv shapes are wrapper calls.

Only the shapes cargo and the `cc` crate really produce are taken for a
wrapper call; every other argv goes to clap, so a typo such as
`kache stat` is a usage error with a suggestion, never a program run.

- cargo's `RUSTC_WRAPPER`: `kache /path/to/rustc ARGS` (also
  clippy-driver), recognised by the program's file stem;
- with `RUSTC_WORKSPACE_WRAPPER` too: `kache WRAPPER rustc ARGS`, and
  `kache clippy-driver rustc ARGS` (`argv[2]` names rustc);
- the `cc` crate (1.x, `rustc_wrapper_fallback`) runs C/C++ compilers
  through `RUSTC_WRAPPER` when its file stem is `kache` (as for sccache):
  `kache COMPILER ARGS`, where COMPILER is `$CC`/`$CXX` (a path to an
  existing file, or the first word of it: `zig` of `CC="zig cc"`) or a
  default it picks: `cc`, `c++`, `gcc`, `g++`, `clang`, `clang++`,
  `cl.exe`, `clang-cl.exe`, `nvcc`, `emcc`, `em++`, `qcc`, `q++`,
  `wr-cc`, or a cross prefix such as `aarch64-linux-gnu-gcc` or
  `aarch64-linux-android21-clang`.
*/

use std::ffi::OsString;
use std::path::Path;

/// Whether a program path names rustc or clippy-driver.
pub(crate) fn is_rustc_like(p: &std::ffi::OsStr) -> bool {
    let stem = Path::new(p)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    stem == "rustc" || stem == "clippy-driver"
}

/// kache's own subcommands (and clap's `help`): never a wrapper call.
/// Kept equal to clap's list by a test.
pub(crate) const SUBCOMMANDS: [&str; 13] = [
    "sync",
    "list",
    "stats",
    "gc",
    "purge",
    "config",
    "why-miss",
    "daemon",
    "debug-map",
    "key",
    "init",
    "doctor",
    "help",
];

/// C/C++ compiler names, as a file stem or the last `-` part of one
/// (after any version suffix such as `-12`).
const COMPILERS: [&str; 16] = [
    "cc", "c++", "gcc", "g++", "clang", "clang++", "cl", "nvcc", "emcc", "em++", "qcc", "q++",
    "icc", "icx", "icpx", "zig",
];

/// Whether argv is a wrapper call (see the module doc).
pub(crate) fn is_wrapper_call(args: &[OsString]) -> bool {
    let Some(a1) = args.get(1) else {
        return false;
    };
    if is_rustc_like(a1) || a1 == super::script::RUN_ARG {
        return true;
    }
    let s = a1.to_string_lossy();
    if s.is_empty() || s.starts_with('-') || SUBCOMMANDS.contains(&s.as_ref()) {
        return false;
    }
    if args.get(2).is_some_and(|a2| is_rustc_like(a2)) {
        return true;
    }
    is_c_compiler(a1)
}

/// A C/C++ compiler the `cc` crate would run through the wrapper: a
/// compiler name, or a path (with a `/`) to an existing file (`$CC` given
/// as a path is run as is).
pub(crate) fn is_c_compiler(p: &std::ffi::OsStr) -> bool {
    let path = Path::new(p);
    if path.components().count() > 1 {
        return path.is_file();
    }
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        return false;
    };
    let stem = stem.to_ascii_lowercase();
    // `gcc-12`, `clang-18`, `x86_64-linux-gnu-gcc-12`: drop the version.
    let base = match stem.rsplit_once('-') {
        Some((head, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            head
        }
        _ => stem.as_str(),
    };
    let last = base.rsplit('-').next().unwrap_or(base);
    COMPILERS.contains(&last) || COMPILERS.contains(&base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn wrapper_call_shapes() {
        // cargo: RUSTC_WRAPPER, with and without a workspace wrapper.
        assert!(is_wrapper_call(&v(&["kache", "rustc", "-vV"])));
        assert!(is_wrapper_call(&v(&["kache", "/x/bin/rustc", "-"])));
        assert!(is_wrapper_call(&v(&[
            "kache",
            "/x/bin/clippy-driver",
            "rustc"
        ])));
        assert!(is_wrapper_call(&v(&["kache", "/bin/sh", "rustc", "-vV"])));
        assert!(is_wrapper_call(&v(&[
            "kache",
            "/no/such/wrapper",
            "/x/rustc",
            "-vV"
        ])));
        // cc-rs: C/C++ compilers by name or by path.
        for cc in [
            "cc",
            "c++",
            "gcc",
            "g++-12",
            "clang",
            "clang++-18",
            "cl.exe",
            "clang-cl.exe",
            "aarch64-linux-gnu-gcc",
            "armv7a-linux-androideabi21-clang++",
            "x86_64-w64-mingw32-gcc",
            "nvcc",
            "emcc",
            "wr-cc",
            "zig",
        ] {
            assert!(is_wrapper_call(&v(&["kache", cc, "-c", "x.c"])), "{cc}");
        }
        assert!(is_wrapper_call(&v(&["kache", "/bin/sh", "-c", "true"])));
        // Everything else goes to clap.
        assert!(!is_wrapper_call(&v(&["kache"])));
        assert!(!is_wrapper_call(&v(&["kache", "list", "rustc"])));
        assert!(!is_wrapper_call(&v(&["kache", "help", "rustc"])));
        assert!(!is_wrapper_call(&v(&["kache", "sync", "--pull"])));
        assert!(!is_wrapper_call(&v(&["kache", "--json"])));
        assert!(!is_wrapper_call(&v(&["kache", "no-such-program-kache"])));
        // A program on PATH is not a wrapper call by itself.
        assert!(!is_wrapper_call(&v(&["kache", "stat"])));
        assert!(!is_wrapper_call(&v(&["kache", "stat", "x"])));
        assert!(!is_wrapper_call(&v(&["kache", "sh", "-c", "true"])));
        assert!(!is_wrapper_call(&v(&["kache", "/no/such/cc-like", "-c"])));
    }

    #[test]
    fn subcommands_match_clap() {
        use clap::CommandFactory;
        let cmd = crate::cli::Cli::command();
        let mut names: Vec<&str> = cmd.get_subcommands().map(clap::Command::get_name).collect();
        names.push("help");
        names.sort_unstable();
        let mut ours = SUBCOMMANDS.to_vec();
        ours.sort_unstable();
        assert_eq!(names, ours);
    }
}
