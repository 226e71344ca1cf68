//! The files a link reads, from the linker command line that rustc writes
//! with `--print link-args=PATH`: every rlib of the crate graph (not only
//! the direct `--extern`s), native libraries named by `-l` and found on
//! the line's `-L` paths, objects and linker scripts.
//!
//! The line is rustc's `Debug` rendering of the linker command: optional
//! `NAME="value"` environment assignments, then the program and its
//! arguments, each in double quotes with `\"` and `\\` escapes.

use std::path::{Path, PathBuf};

/// Splits the printed command into words, unquoting them.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Whether a word is an environment assignment (`LC_ALL=C`) before the
/// program.
fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// What a link read: the files, and the files whose absence it relied
/// on (a library searched for in a directory before the one it was
/// found in: one appearing there later would be linked instead).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LinkInputs {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) absent: Vec<PathBuf>,
}

/// Linker scripts are read for `INCLUDE`s up to this size.
const MAX_SCRIPT: u64 = 1 << 20;

/// The files a linker script includes (`INCLUDE name`); nothing for a
/// file that is not a small text file (an object, an archive).
fn scripts_of(p: &Path) -> Vec<String> {
    let Ok(m) = std::fs::metadata(p) else {
        return Vec::new();
    };
    if !m.is_file() || m.len() > MAX_SCRIPT {
        return Vec::new();
    }
    // Objects and archives show a NUL in their first bytes: read no more.
    let mut head = [0u8; 512];
    let n = std::fs::File::open(p)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    if n == 0 || head[..n].contains(&0) || head[..n].starts_with(b"!<arch>") {
        return Vec::new();
    }
    let Ok(bytes) = std::fs::read(p) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut out = Vec::new();
    let mut toks = text.split_whitespace();
    while let Some(t) = toks.next() {
        if t == "INCLUDE"
            && let Some(n) = toks.next()
        {
            out.push(n.trim_matches(|c| c == '"' || c == ';').to_string());
        }
    }
    out
}

/// The input files of a link, as paths that exist (relative ones joined
/// to `cwd`), in order and without duplicates. `outputs` (the `-o` target
/// and the compile's own outputs) are left out, and so are temporaries
/// that rustc removed after linking (they no longer exist) and the
/// toolchain's own libraries (`.../lib/rustlib/...`, covered by the
/// toolchain identity). Options inside `-Wl,` are read like the
/// driver's own: `-L`, `-l`, `-T`, `--script=`, `@file`, and any value
/// naming an existing file; linker scripts are followed into their
/// `INCLUDE`s.
///
/// A library that no `-L` dir holds is looked for on the linker's own
/// path, `default_dirs` (called at most once; see [`default_lib_dirs`]).
pub(crate) fn link_inputs(
    text: &str,
    cwd: &Path,
    is_file: &dyn Fn(&Path) -> bool,
    default_dirs: &dyn Fn() -> Vec<PathBuf>,
) -> LinkInputs {
    let mut line = LinkLine::parse(text, cwd, is_file);
    let finder = Finder {
        cwd,
        search: &line.search,
        is_file,
    };
    let mut absent: Vec<PathBuf> = Vec::new();
    let libs = finder.libraries(&line.libs, default_dirs, &mut absent);
    line.files.extend(libs);
    // Any small text input is a linker script to ld (named by -T, or
    // given as a plain input): follow its INCLUDEs, searched like -T.
    for f in &line.files {
        line.scripts.extend(scripts_of(f));
    }
    let scripts = finder.scripts(std::mem::take(&mut line.scripts), &mut absent);
    line.files.extend(scripts);
    line.finish(absent, is_file)
}

/// What one link line names: the search dirs, libraries, linker
/// scripts and input files, and the output.
struct LinkLine {
    search: Vec<PathBuf>,
    libs: Vec<String>,
    scripts: Vec<String>,
    files: Vec<PathBuf>,
    output: Option<PathBuf>,
}

impl LinkLine {
    fn parse(text: &str, cwd: &Path, is_file: &dyn Fn(&Path) -> bool) -> LinkLine {
        let ws = words(text.trim());
        let mut args: Vec<String> = Vec::new();
        for w in ws.iter().skip_while(|w| is_assignment(w)).skip(1) {
            match w.strip_prefix("-Wl,") {
                // The linker's own options, one by one.
                Some(parts) => args.extend(parts.split(',').map(|p| format!("\u{0}{p}"))),
                None => args.push(w.clone()),
            }
        }
        let abs = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            }
        };
        let mut l = LinkLine {
            search: Vec::new(),
            libs: Vec::new(),
            scripts: Vec::new(),
            files: Vec::new(),
            output: None,
        };
        let mut i = 0;
        while i < args.len() {
            // `\0` marks a word that came from inside `-Wl,`.
            let (wl, a) = match args[i].strip_prefix('\u{0}') {
                Some(a) => (true, a.to_string()),
                None => (false, args[i].clone()),
            };
            i += 1;
            let next = |i: &mut usize| -> Option<String> {
                let v = args.get(*i)?.trim_start_matches('\u{0}').to_string();
                *i += 1;
                Some(v)
            };
            match a.as_str() {
                "-o" => l.output = next(&mut i).map(|v| abs(&v)),
                "-L" => l.search.extend(next(&mut i).map(|v| abs(&v))),
                "-l" => l.libs.extend(next(&mut i)),
                "-T" | "--script" => l.scripts.extend(next(&mut i)),
                _ if a.starts_with("-L") => l.search.push(abs(&a[2..])),
                _ if a.starts_with("-l") => l.libs.push(a[2..].to_string()),
                _ if a.starts_with("-T") => l.scripts.push(a[2..].to_string()),
                _ if a.starts_with("--script=") => {
                    l.scripts.push(a["--script=".len()..].to_string());
                }
                _ if a.starts_with('@') => l.files.push(abs(&a[1..])),
                _ if !a.starts_with('-') => l.files.push(abs(&a)),
                _ if wl => {
                    // `--version-script=x`, `--dynamic-list=x`, ...: a
                    // value that names a file is an input.
                    if let Some((_, v)) = a.split_once('=')
                        && is_file(&abs(v))
                    {
                        l.files.push(abs(v));
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// The inputs that exist (less the output and the toolchain's own
    /// files), and the absent paths that would have been taken instead.
    fn finish(self, absent: Vec<PathBuf>, is_file: &dyn Fn(&Path) -> bool) -> LinkInputs {
        let mut out = LinkInputs::default();
        for f in self.files {
            let toolchain = f.to_string_lossy().contains("/lib/rustlib/");
            if toolchain
                || Some(&f) == self.output.as_ref()
                || !is_file(&f)
                || out.files.contains(&f)
            {
                continue;
            }
            out.files.push(f);
        }
        // rustc's own temporary dir beside the output (`rustcXXXXXX`,
        // gone after the link, never the same name twice) can hold
        // nothing later.
        let temp = |a: &Path| {
            let dir = self.output.as_ref().and_then(|o| o.parent());
            dir.and_then(|d| a.strip_prefix(d).ok())
                .and_then(|rest| rest.components().next())
                .is_some_and(|c| {
                    let c = c.as_os_str().to_string_lossy();
                    c.len() == 11
                        && c.starts_with("rustc")
                        && c[5..].bytes().all(|b| b.is_ascii_alphanumeric())
                })
        };
        for a in absent {
            if !is_file(&a)
                && !temp(&a)
                && !out.absent.contains(&a)
                && !a.to_string_lossy().contains("/lib/rustlib/")
            {
                out.absent.push(a);
            }
        }
        out
    }
}

/// Finds files the way the linker does: in the search dirs in order.
struct Finder<'a> {
    cwd: &'a Path,
    search: &'a [PathBuf],
    is_file: &'a dyn Fn(&Path) -> bool,
}

impl Finder<'_> {
    /// The first dir holding any of `names`: what it holds of them. The
    /// names not found in the dirs searched up to it go to `absent` (the
    /// other spelling in the same dir would be taken too).
    fn find_in(
        &self,
        dirs: &[PathBuf],
        names: &[String],
        absent: &mut Vec<PathBuf>,
    ) -> Vec<PathBuf> {
        for d in dirs {
            let found: Vec<PathBuf> = names
                .iter()
                .map(|n| d.join(n))
                .filter(|p| (self.is_file)(p))
                .collect();
            if !found.is_empty() {
                absent.extend(
                    names
                        .iter()
                        .map(|n| d.join(n))
                        .filter(|p| !found.contains(p)),
                );
                return found;
            }
            absent.extend(names.iter().map(|n| d.join(n)));
        }
        Vec::new()
    }

    /// `find_in` the `-L` dirs (after the working dir, for scripts).
    fn find(&self, names: &[String], also_cwd: bool, absent: &mut Vec<PathBuf>) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if also_cwd {
            dirs.push(self.cwd.to_path_buf());
        }
        dirs.extend(self.search.iter().cloned());
        self.find_in(&dirs, names, absent)
    }

    /// The files of `-l` libraries: on the `-L` dirs, else on the
    /// linker's own path (libc, or a library found through
    /// `LIBRARY_PATH`). One the driver does not report (ld's built-in
    /// dirs) is keyed by the linker's identity.
    fn libraries(
        &self,
        libs: &[String],
        default_dirs: &dyn Fn() -> Vec<PathBuf>,
        absent: &mut Vec<PathBuf>,
    ) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut defaults: Option<Vec<PathBuf>> = None;
        for l in libs {
            let names = match l.strip_prefix(':') {
                Some(f) => vec![f.to_string()],
                None => vec![format!("lib{l}.so"), format!("lib{l}.a")],
            };
            let mut a = Vec::new();
            let mut found = self.find(&names, false, &mut a);
            if found.is_empty() {
                let d = defaults.get_or_insert_with(default_dirs);
                found = self.find_in(d, &names, &mut a);
            }
            if !found.is_empty() {
                absent.extend(a);
                files.extend(found);
            }
        }
        files
    }

    /// Linker scripts and everything they INCLUDE, each once.
    fn scripts(&self, mut pending: Vec<String>, absent: &mut Vec<PathBuf>) -> Vec<PathBuf> {
        let mut seen: Vec<PathBuf> = Vec::new();
        while let Some(sc) = pending.pop() {
            let found = if Path::new(&sc).is_absolute() {
                vec![PathBuf::from(&sc)]
            } else {
                self.find(std::slice::from_ref(&sc), true, absent)
            };
            for p in found {
                if seen.contains(&p) {
                    continue;
                }
                pending.extend(scripts_of(&p));
                seen.push(p);
            }
        }
        seen
    }
}

/// The library dirs the linking driver searches after the `-L` ones
/// (`LIBRARY_PATH`, then its own), as `cc -print-search-dirs` reports
/// them (gcc and clang), existing and without duplicates. The program
/// is the one the printed line runs, with the line's `PATH`. Empty for
/// a linker that does not answer (ld.lld, a custom script).
pub(crate) fn default_lib_dirs(text: &str) -> Vec<PathBuf> {
    let ws = words(text.trim());
    let env: Vec<(&str, &str)> = ws
        .iter()
        .take_while(|w| is_assignment(w))
        .filter_map(|w| w.split_once('='))
        .collect();
    let Some(program) = ws.iter().find(|w| !is_assignment(w)) else {
        return Vec::new();
    };
    let mut cmd = std::process::Command::new(program);
    cmd.arg("-print-search-dirs")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        if k == "PATH" {
            cmd.env(k, v);
        }
    }
    match cmd.output() {
        Ok(o) if o.status.success() => parse_search_dirs(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

/// The `libraries: =a:b:...` line of `-print-search-dirs`.
fn parse_search_dirs(out: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in out.lines() {
        let Some(list) = line.strip_prefix("libraries: ") else {
            continue;
        };
        for d in list.trim_start_matches('=').split(':') {
            let Ok(real) = std::fs::canonicalize(d) else {
                continue;
            };
            if real.is_dir() && !dirs.contains(&real) {
                dirs.push(real);
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linker_options_and_scripts() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path();
        for f in [
            "libs/libanswer.a",
            "scripts/defs.x",
            "inc.ld",
            "rsp",
            "vs.map",
            "x.o",
        ] {
            std::fs::create_dir_all(w.join(f).parent().unwrap()).unwrap();
            std::fs::write(w.join(f), "").unwrap();
        }
        std::fs::write(w.join("scripts/defs.x"), "INCLUDE inc.ld\nSECTIONS {}").unwrap();
        let text = r#""cc" "x.o" "-Wl,-Llibs,--whole-archive,-lanswer" "-L" "scripts" "-Tdefs.x" "-Wl,@rsp" "-Wl,--version-script=vs.map" "-Wl,-z,relro" "-o" "out""#;
        let got = link_inputs(text, w, &|p: &Path| p.is_file(), &Vec::new);
        let rel: Vec<String> = got
            .files
            .iter()
            .map(|p| p.strip_prefix(w).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            rel,
            vec![
                "x.o",
                "rsp",
                "vs.map",
                "libs/libanswer.a",
                "scripts/defs.x",
                "inc.ld"
            ]
        );
        // libanswer.so was looked for first; a later one would win.
        assert!(got.absent.contains(&w.join("libs/libanswer.so")));
        assert!(got.absent.contains(&w.join("defs.x")));
    }

    #[test]
    fn link_line_inputs() {
        let text = r#"LC_ALL="C" PATH="/a:/b" VSLANG="1033" "cc" "-m64" "/w/t/deps/rustcX/symbols.o" "/w/t/deps/app-1.app.0.rcgu.o" "-Wl,--as-needed" "-Wl,-Bstatic" "/w/t/deps/libmid-2.rlib" "/w/t/deps/libcsys-3.rlib" "/r/lib/rustlib/x86_64/lib/libstd-4.rlib" "-Wl,-Bdynamic" "-lfoo" "-lc" "-L" "/w/t/build/csys/out" "-L" "/r/lib/rustlib/x86_64/lib" "-o" "/w/t/deps/app-1" "-Wl,-T,/w/link.ld" "/w/obj\"q.o" "-nodefaultlibs""#;
        let exists = |p: &Path| {
            [
                "/w/t/deps/libmid-2.rlib",
                "/w/t/deps/libcsys-3.rlib",
                "/r/lib/rustlib/x86_64/lib/libstd-4.rlib",
                "/w/t/build/csys/out/libfoo.a",
                "/w/t/deps/app-1",
                "/w/link.ld",
                "/w/obj\"q.o",
            ]
            .iter()
            .any(|e| Path::new(e) == p)
        };
        let got = link_inputs(text, Path::new("/w"), &exists, &Vec::new).files;
        let want: Vec<PathBuf> = [
            "/w/t/deps/libmid-2.rlib",
            "/w/t/deps/libcsys-3.rlib",
            "/w/obj\"q.o",
            "/w/t/build/csys/out/libfoo.a",
            "/w/link.ld",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn libraries_on_the_linkers_own_path() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path();
        for f in ["first/x", "sys/libanswer.a", "sys/libc.so"] {
            std::fs::create_dir_all(w.join(f).parent().unwrap()).unwrap();
            std::fs::write(w.join(f), "").unwrap();
        }
        let out = format!(
            "install: /usr/lib/gcc/x/12/\nprograms: =/nope\nlibraries: ={}/nope/:{}/first/:{}/sys/:{}/sys/../sys\n",
            w.display(),
            w.display(),
            w.display(),
            w.display()
        );
        let dirs = parse_search_dirs(&out);
        let real = std::fs::canonicalize(w).unwrap();
        assert_eq!(dirs, vec![real.join("first"), real.join("sys")]);
        let calls = std::cell::Cell::new(0);
        let text = r#""cc" "-L" "rustcAb12Cd/raw-dylibs" "-lanswer" "-lc" "-o" "out""#;
        let got = link_inputs(text, w, &|p: &Path| p.is_file(), &|| {
            calls.set(calls.get() + 1);
            dirs.clone()
        });
        assert_eq!(calls.get(), 1, "the driver is asked once");
        assert_eq!(
            got.files,
            vec![real.join("sys/libanswer.a"), real.join("sys/libc.so")]
        );
        // Searched in `first` before `sys`: one appearing there wins.
        assert!(got.absent.contains(&real.join("first/libanswer.a")));
        assert!(got.absent.contains(&real.join("sys/libanswer.so")));
        // rustc's temporary dir is not recorded.
        assert!(
            !got.absent
                .iter()
                .any(|a| a.to_string_lossy().contains("rustcAb12Cd")),
            "{:?}",
            got.absent
        );
    }
}
