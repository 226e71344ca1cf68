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

/// The input files of a link, as paths that exist (relative ones joined
/// to `cwd`), in order and without duplicates. `outputs` (the `-o` target
/// and the compile's own outputs) are left out, and so are temporaries
/// that rustc removed after linking (they no longer exist) and the
/// toolchain's own libraries (`.../lib/rustlib/...`, covered by the
/// toolchain identity).
pub(crate) fn link_inputs(text: &str, cwd: &Path, is_file: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let ws = words(text.trim());
    let args: Vec<&str> = ws
        .iter()
        .map(String::as_str)
        .skip_while(|w| is_assignment(w))
        .skip(1)
        .collect();
    let abs = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    let mut search: Vec<PathBuf> = Vec::new();
    let mut libs: Vec<String> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut output: Option<PathBuf> = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        i += 1;
        if a == "-o" || a == "-L" || a == "-l" || a == "-T" {
            let Some(v) = args.get(i) else { break };
            i += 1;
            match a {
                "-o" => output = Some(abs(v)),
                "-L" => search.push(abs(v)),
                "-l" => libs.push((*v).to_string()),
                _ => files.push(abs(v)),
            }
        } else if let Some(d) = a.strip_prefix("-L") {
            search.push(abs(d));
        } else if let Some(n) = a.strip_prefix("-l") {
            libs.push(n.to_string());
        } else if let Some(s) = a.strip_prefix("-T") {
            files.push(abs(s));
        } else if let Some(parts) = a.strip_prefix("-Wl,") {
            // Paths inside linker options: `-Wl,-T,script.ld`,
            // `-Wl,--version-script=x`, `-Wl,/abs/obj.o`.
            for p in parts.split(',') {
                let p = p.split_once('=').map_or(p, |(_, v)| v);
                if p.contains('/') || p.ends_with(".ld") || p.ends_with(".o") || p.ends_with(".a") {
                    files.push(abs(p));
                }
            }
        } else if let Some(p) = a.strip_prefix('@') {
            files.push(abs(p));
        } else if !a.starts_with('-') {
            files.push(abs(a));
        }
    }
    for l in libs {
        let names = match l.strip_prefix(':') {
            Some(f) => vec![f.to_string()],
            None => vec![format!("lib{l}.so"), format!("lib{l}.a")],
        };
        for d in &search {
            let found: Vec<PathBuf> = names
                .iter()
                .map(|n| d.join(n))
                .filter(|p| is_file(p))
                .collect();
            if !found.is_empty() {
                files.extend(found);
                break;
            }
        }
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for f in files {
        let toolchain = f.to_string_lossy().contains("/lib/rustlib/");
        if toolchain || Some(&f) == output.as_ref() || !is_file(&f) || out.contains(&f) {
            continue;
        }
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let got = link_inputs(text, Path::new("/w"), &exists);
        let want: Vec<PathBuf> = [
            "/w/t/deps/libmid-2.rlib",
            "/w/t/deps/libcsys-3.rlib",
            "/w/link.ld",
            "/w/obj\"q.o",
            "/w/t/build/csys/out/libfoo.a",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
    }
}
