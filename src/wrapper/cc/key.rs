/*!
The key of a C, C++ or assembler compile, in the two levels of the Rust
side (see `wrapper::rustc::key`), so a hit runs neither the compiler nor the
preprocessor.

- The *base key*: the compiler's identity (its content and `--version`),
  the language, the working directory, every argument (machine-local
  paths as sentinels; the object and dependency-file paths left out
  unless the caller's dependency file names them), the source's path and
  content, and every environment variable that changes a compile.
- The *full key* (an `Inputs` list recorded under the base key): every
  header the compile read, by path and content (from the compiler's own
  dependency output), the *absence* of every file that would have
  shadowed one of them (the same name in each directory searched before
  the one it was found in), and the real value of any machine-local root
  the object contains.

The header search order (gcc and clang): the including file's directory
(for `"x.h"`), `-iquote`, `-I`, `CPATH`, `-isystem`, `C_INCLUDE_PATH`
(or the C++ one), the compiler's built-in directories, `-idirafter`.
The compiler writes each header's path as `DIR/NAME` with DIR spelled as
given, so the directory a header was found in, and its name there, are
read straight off its path.
*/

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};

use super::args::{CcCompile, Lang};
use crate::wrapper::explain::Explain;
use crate::wrapper::explain::UNSET;
use crate::wrapper::hasher::KeyHasher;
use crate::wrapper::paths::Paths;
use crate::wrapper::probe::Probe;

/// Bumped whenever the key scheme changes.
const KEY_VERSION: &str = "kache-cc-key-1";

/// Environment variables that change what a compile produces or prints
/// (gcc's and clang's manuals).
pub(crate) const KEYED_ENV: [&str; 15] = [
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "SOURCE_DATE_EPOCH",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "DEPENDENCIES_OUTPUT",
    "SUNPRO_DEPENDENCIES",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "GCC_COLORS",
    "CCC_OVERRIDE_OPTIONS",
];

/// Flags whose value is a path to a file or directory.
fn path_flag(flag: &str) -> bool {
    matches!(
        flag,
        "-I" | "-isystem"
            | "-iquote"
            | "-idirafter"
            | "-include"
            | "-imacros"
            | "-o"
            | "-MT"
            | "-MQ"
            | "-isysroot"
    )
}

/// The base key of a compile and an account of its inputs.
pub(crate) fn base_key(
    compiler: &str,
    c: &CcCompile,
    paths: &Paths,
    probe: &dyn Probe,
) -> Result<(crate::store::CacheKey, Explain)> {
    let mut h = KeyHasher::new(KEY_VERSION);
    let name = Path::new(compiler)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    h.field("compiler-name", &name);
    h.field(
        "compiler-version",
        &probe.identity(compiler, &["--version"])?,
    );
    // A wrapper script that adds flags answers `--version` like the
    // compiler it runs.
    h.field(
        "compiler-content",
        &probe
            .program_hash(compiler)
            .with_context(|| format!("cannot read the compiler {compiler}"))?,
    );
    h.field("lang", c.lang().x_name());
    h.field("cwd", &paths.normalize(&paths.cwd.to_string_lossy()));
    let mut i = 0;
    let args = &c.args;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        // The object's and the dependency file's paths: the object does
        // not depend on them; the dependency file names the object.
        let value_flag = ["-o", "-MF", "-MT", "-MQ", "-I", "-isystem", "-iquote"]
            .iter()
            .chain(&["-idirafter", "-include", "-imacros", "-x", "-D", "-U"])
            .chain(&["-isysroot", "-target", "--sysroot"])
            .find(|f| *a == **f || ((f.len() == 2 || f.starts_with("-M")) && a.starts_with(**f)));
        if let Some(flag) = value_flag {
            let value = if a == flag {
                i += 1;
                args.get(i - 1).cloned().unwrap_or_default()
            } else {
                a[flag.len()..].to_string()
            };
            match *flag {
                "-MF" => continue,
                "-o" if c.dep_file.is_none() => continue,
                f if path_flag(f) || f == "--sysroot" => h.field(f, &paths.normalize(&value)),
                // Named by the macro: `arg -D NAME`, its definition the value.
                "-D" => {
                    let (name, def) = value.split_once('=').unwrap_or((&value, ""));
                    h.field_shown("-D", &value, (format!("-D {name}"), def.to_string()));
                }
                f => h.field(f, &value),
            }
            continue;
        }
        if *a == c.source {
            let p = paths.absolute(a);
            let digest = probe
                .hash(&p)
                .with_context(|| format!("cannot read the source {}", p.display()))?;
            h.field("file", &paths.normalize(a));
            h.field("content", &digest);
            continue;
        }
        match a.split_once('=') {
            Some((f, v)) if f.starts_with('-') => {
                let v = paths.normalize(v);
                h.field_shown(f, &v, shown_arg(f, Some(&v)));
            }
            _ => h.field_shown(a, "", shown_arg(a, None)),
        }
    }
    // `-march=native` and the like mean this machine's CPU: another CPU
    // must never get this code.
    if args
        .iter()
        .any(|a| a.starts_with('-') && a.ends_with("=native"))
    {
        h.field("native-cpu", &native_cpu());
    }
    for v in KEYED_ENV {
        h.field("env", v);
        h.field(
            "value",
            &probe
                .var(v)
                .map_or_else(|| UNSET.to_string(), |x| paths.normalize(&x)),
        );
    }
    Ok(h.finish_explained())
}

/// How an argument the key takes as it is (`flag`, or `flag=value`) is
/// named in the account of the key: by its flag alone (`-Wl` of
/// `-Wl,-rpath,DIR`), everything after it being the value; anything else
/// as `arg`. A name travels in clear in an uploaded manifest, a value
/// only as a keyed digest (see `Entry::salt_values`).
fn shown_arg(flag: &str, value: Option<&str>) -> (String, String) {
    if !flag.starts_with('-') {
        return ("arg".to_string(), flag.to_string());
    }
    let (name, rest) = match flag.split_once(',') {
        Some((name, rest)) => (name, Some(rest)),
        None => (flag, None),
    };
    let shown = match (rest, value) {
        (Some(r), Some(v)) => format!("{r}={v}"),
        (Some(r), None) => r.to_string(),
        (None, v) => v.unwrap_or_default().to_string(),
    };
    (name.to_string(), shown)
}

/// What `-march=native` resolves from: the CPU's model and flags.
pub(crate) fn native_cpu() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut lines: Vec<&str> = cpu
        .lines()
        .filter(|l| {
            [
                "vendor_id",
                "cpu family",
                "model",
                "model name",
                "flags",
                "Features",
            ]
            .iter()
            .any(|k| l.split(':').next().is_some_and(|n| n.trim() == *k))
        })
        .collect();
    lines.sort_unstable();
    lines.dedup();
    lines.join("\n")
}

/// The prerequisites of the first rule of a make dependency file, as the
/// compiler wrote them (`\ `, `\#` and `$$` unescaped).
pub(crate) fn parse_make_deps(text: &str) -> Vec<String> {
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    let Some(line) = joined.lines().find(|l| !l.trim().is_empty()) else {
        return Vec::new();
    };
    // The target ends at the first `:` followed by white space or the end.
    let b = line.as_bytes();
    let Some(colon) = (0..b.len()).find(|&i| {
        b[i] == b':'
            && (i == 0 || b[i - 1] != b'\\')
            && b.get(i + 1).is_none_or(u8::is_ascii_whitespace)
    }) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line[colon + 1..].chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if matches!(chars.peek(), Some(' ' | '#' | '\\')) => {
                cur.push(chars.next().unwrap_or(' '));
            }
            '$' if chars.peek() == Some(&'$') => {
                chars.next();
                cur.push('$');
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The directories a compile searches for `#include <...>`, in order,
/// as spelled on the command line (trailing `/` removed). `builtin` are
/// the compiler's own; `var` reads the environment.
pub(crate) fn search_dirs(
    c: &CcCompile,
    builtin: &[String],
    var: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let env_dirs = |name: &str| -> Vec<String> {
        var(name)
            .map(|v| {
                v.split(':')
                    .map(|d| if d.is_empty() { "." } else { d }.to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let lang_var = match c.lang() {
        Lang::Cxx => "CPLUS_INCLUDE_PATH",
        _ => "C_INCLUDE_PATH",
    };
    let mut out: Vec<String> = Vec::new();
    out.extend(c.iquote.iter().cloned());
    out.extend(c.include.iter().cloned());
    out.extend(env_dirs("CPATH"));
    out.extend(c.isystem.iter().cloned());
    out.extend(env_dirs(lang_var));
    out.extend(builtin.iter().cloned());
    out.extend(c.idirafter.iter().cloned());
    for d in &mut out {
        while d.len() > 1 && d.ends_with('/') {
            d.pop();
        }
    }
    out
}

/// `rest` if `p` is `dir/rest` (any relative `p` is under the empty
/// directory, the working directory).
fn under<'a>(p: &'a str, dir: &str) -> Option<&'a str> {
    if dir.is_empty() {
        return (!p.starts_with('/')).then_some(p);
    }
    p.strip_prefix(dir)?.strip_prefix('/')
}

fn dir_of(p: &str) -> &str {
    p.rsplit_once('/')
        .map_or("", |(d, _)| if d.is_empty() { "/" } else { d })
}

fn join(dir: &str, name: &str) -> String {
    let mut s = String::with_capacity(dir.len() + 1 + name.len());
    s.push_str(dir);
    if !dir.is_empty() && !dir.ends_with('/') {
        s.push('/');
    }
    s.push_str(name);
    s
}

/// [`shadow_names`] sorted, each name once.
#[cfg(test)]
pub(crate) fn shadow_candidates(
    source: &str,
    headers: &[String],
    search: &[String],
    forced: bool,
    probed: &[String],
) -> Result<Vec<String>, String> {
    let mut out = shadow_names(source, headers, search, forced, probed)?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The files whose appearance would change which header a compile reads:
/// for every header, its name in each directory searched before the one
/// it was found in (and in the directory of every file that may have
/// included it), in no particular order, a name possibly twice. `Err`
/// names a header found in no directory kache knows of: then kache
/// cannot tell what could shadow it.
///
/// `probed` are the names `__has_include` asked for: the file by that
/// name in every directory is keyed too (present or absent).
pub(crate) fn shadow_names(
    source: &str,
    headers: &[String],
    search: &[String],
    forced: bool,
    probed: &[String],
) -> Result<Vec<String>, String> {
    // Every file may have included any header with `"..."`.
    let mut includer: BTreeSet<&str> = BTreeSet::new();
    includer.insert(dir_of(source));
    if forced {
        includer.insert("");
    }
    for h in headers {
        includer.insert(dir_of(h));
    }
    unplaced(source, headers, search, forced)?;
    let mut out = Vec::new();
    for name in probed {
        for e in includer
            .iter()
            .copied()
            .chain(search.iter().map(String::as_str))
        {
            out.push(join(e, name));
        }
    }
    for p in headers {
        for (j, d) in search.iter().enumerate() {
            let Some(name) = under(p, d) else { continue };
            for e in includer
                .iter()
                .copied()
                .chain(search[..j].iter().map(String::as_str))
            {
                let cand = join(e, name);
                if cand != *p {
                    out.push(cand);
                }
            }
        }
    }
    Ok(out)
}

/// `Err` naming a header found neither in a search directory nor beside
/// a file that includes it (the check of [`shadow_names`], without
/// listing a name).
pub(crate) fn unplaced(
    source: &str,
    headers: &[String],
    search: &[String],
    forced: bool,
) -> Result<(), String> {
    for p in headers {
        if search.iter().any(|d| under(p, d).is_some()) {
            continue;
        }
        // Found beside a file that includes it (the source, a forced
        // include from the working directory, another header): nothing
        // is searched before that directory. Its own directory does not
        // count: nothing says another file there included it.
        let beside = std::iter::once(source)
            .chain(headers.iter().map(String::as_str).filter(|h| *h != p))
            .map(dir_of)
            .chain(forced.then_some(""))
            .any(|d| under(p, d).is_some());
        // An absolute name in no search directory was named as such
        // (`#include "/abs/x.h"`): nothing shadows it.
        if !beside && !p.starts_with('/') {
            return Err(format!("header {p} found in no directory kache knows"));
        }
    }
    Ok(())
}

/// The names `__has_include(...)` and `__has_include_next(...)` ask for
/// in `text`; `Err` if one is not a literal `<name>` or `"name"` (a
/// macro), whose name kache cannot know without preprocessing.
pub(crate) fn has_include_names(text: &[u8]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for at in memchr::memmem::find_iter(text, b"__has_include") {
        let mut rest = &text[at + b"__has_include".len()..];
        if let Some(r) = rest.strip_prefix(b"_next") {
            rest = r;
        }
        let skip_ws =
            |r: &[u8]| -> usize { r.iter().take_while(|c| c.is_ascii_whitespace()).count() };
        rest = &rest[skip_ws(rest)..];
        // `defined(__has_include)`, `#ifdef __has_include`: no question.
        let Some(r) = rest.strip_prefix(b"(") else {
            continue;
        };
        let r = &r[skip_ws(r)..];
        let close = match r.first() {
            Some(b'<') => b'>',
            Some(b'"') => b'"',
            _ => return Err("a __has_include of a macro".into()),
        };
        let body = &r[1..];
        let Some(end) = body.iter().position(|&c| c == close || c == b'\n') else {
            return Err("an unterminated __has_include".into());
        };
        let name = String::from_utf8_lossy(&body[..end]).into_owned();
        if body[end] != close || name.is_empty() {
            return Err("an unterminated __has_include".into());
        }
        out.push(name);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The compiler's built-in search directories from `CC -E -v` output:
/// the listed ones and those it ignored as missing (which would be
/// searched once created), missing ones first.
pub(crate) fn parse_builtin_dirs(text: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut listed = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ignoring nonexistent directory \"") {
            missing.push(rest.trim_end_matches('"').to_string());
        } else if line.starts_with("#include ") && line.contains("search starts here") {
            inside = true;
        } else if line.starts_with("End of search list") {
            inside = false;
        } else if inside && line.starts_with(' ') {
            let d = line.trim().trim_end_matches(" (framework directory)");
            listed.push(d.to_string());
        }
    }
    missing.extend(listed);
    missing
}

/// A clock macro in `text` that makes the object depend on when it was
/// compiled, unless `SOURCE_DATE_EPOCH` pins `__DATE__` and `__TIME__`.
pub(crate) fn clock_macro(text: &[u8], epoch_set: bool) -> Option<&'static str> {
    let find = |m: &str| memchr::memmem::find(text, m.as_bytes()).is_some();
    if find("__TIMESTAMP__") {
        return Some("__TIMESTAMP__");
    }
    if !epoch_set {
        for m in ["__DATE__", "__TIME__"] {
            if find(m) {
                return Some(m);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(std::string::ToString::to_string).collect()
    }

    #[test]
    fn make_deps() {
        let text = "/t/a.o: src/a.c /usr/include/stdio.h \\\n inc/x\\ y.h gen/$$d.h \\\n /o/g.h\n\ninc/x\\ y.h:\n";
        assert_eq!(
            parse_make_deps(text),
            s(&[
                "src/a.c",
                "/usr/include/stdio.h",
                "inc/x y.h",
                "gen/$d.h",
                "/o/g.h"
            ])
        );
    }

    #[test]
    fn builtin_dirs() {
        let text = "ignoring nonexistent directory \"/usr/local/include/x86_64-linux-gnu\"\n\
            #include \"...\" search starts here:\n#include <...> search starts here:\n \
            /usr/lib/gcc/x86_64-linux-gnu/12/include\n /usr/include\nEnd of search list.\n";
        assert_eq!(
            parse_builtin_dirs(text),
            s(&[
                "/usr/local/include/x86_64-linux-gnu",
                "/usr/lib/gcc/x86_64-linux-gnu/12/include",
                "/usr/include"
            ])
        );
    }

    #[test]
    fn shadowing_candidates() {
        let search = s(&["include", "include2", "/out", "/usr/include"]);
        let headers = s(&["include2/shadow.h", "/out/gen.h", "/usr/include/stdio.h"]);
        let c = shadow_candidates("csrc/v.c", &headers, &search, false, &[]).unwrap();
        // The shadowing file that matters most: the same name earlier on
        // the include path, and beside the source.
        for want in [
            "include/shadow.h",
            "csrc/shadow.h",
            "include/gen.h",
            "include2/gen.h",
            "include/stdio.h",
            "/out/stdio.h",
            "csrc/stdio.h",
        ] {
            assert!(c.contains(&want.to_string()), "{want} in {c:?}");
        }
        assert!(!c.contains(&"include2/shadow.h".to_string()));
        // Beside the source: found first, nothing shadows it.
        let c = shadow_candidates("csrc/v.c", &s(&["csrc/local.h"]), &search, false, &[]).unwrap();
        assert!(c.is_empty(), "{c:?}");
        // A relative header in no known directory: cannot tell.
        assert!(shadow_candidates("csrc/v.c", &s(&["weird/x.h"]), &search, false, &[]).is_err());
        // An absolute include names its file; nothing shadows it.
        assert!(shadow_candidates("csrc/v.c", &s(&["/abs/x.h"]), &search, false, &[]).is_ok());
        // The miss path checks the placing alone, with the same answers.
        assert!(unplaced("csrc/v.c", &headers, &search, false).is_ok());
        assert!(unplaced("csrc/v.c", &s(&["csrc/local.h"]), &search, false).is_ok());
        assert!(unplaced("csrc/v.c", &s(&["weird/x.h"]), &search, false).is_err());
        assert!(unplaced("csrc/v.c", &s(&["/abs/x.h"]), &search, false).is_ok());
        // Beside another header that included it.
        let nested = s(&["include/sub/a.h", "include/sub/b.h"]);
        assert!(unplaced("csrc/v.c", &nested[1..], &search, false).is_ok());
        assert!(unplaced("csrc/v.c", &s(&["weird/a.h", "weird/b.h"]), &search, false).is_ok());
    }

    /// A probe with fixed answers: a file's "content" is its name.
    struct Fixed;

    impl Probe for Fixed {
        fn hash(&self, p: &Path) -> Option<String> {
            let name = p.file_name()?.to_string_lossy().into_owned();
            Some(blake3::hash(name.as_bytes()).to_hex().to_string())
        }
        fn identity(&self, program: &str, args: &[&str]) -> Result<String> {
            Ok(format!("{program} {}", args.join(" ")))
        }
        fn var(&self, _name: &str) -> Option<String> {
            None
        }
        fn vars(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn list_dir(&self, _dir: &Path) -> Vec<(String, bool)> {
            Vec::new()
        }
        fn read_text(&self, _p: &Path) -> Option<String> {
            None
        }
        fn program_hash(&self, program: &str) -> Option<String> {
            Some(program.to_string())
        }
        fn runtime_libs(&self, _so_hash: &str) -> Vec<String> {
            Vec::new()
        }
    }

    fn base(args: &str, ws: &str) -> (crate::store::CacheKey, Explain) {
        let args: Vec<String> = args
            .replace("WS", ws)
            .split_whitespace()
            .map(String::from)
            .collect();
        let super::super::args::Verdict::Cache(c) = super::super::args::classify(&args) else {
            panic!("not cached: {args:?}")
        };
        let t = format!("{ws}/target");
        let paths = Paths::from_rules(&[(ws, "/kache-ws"), (t.as_str(), "/kache-target")], ws);
        base_key("cc", &c, &paths, &Fixed).unwrap()
    }

    #[test]
    fn base_key_is_the_same_in_every_checkout() {
        let args = "-O2 -IWS/inc -I WS/target/out -o WS/target/out/1-a.o -c src/a.c";
        let (a, why) = base(args, "/a");
        assert_eq!(base(args, "/b/c").0, a);
        assert_eq!(why["arg -I"], "/kache-ws/inc; /kache-target/out");
        assert!(!why.contains_key("arg -o"), "{why:?}");
        // The object's name alone changes nothing; a flag does.
        assert_eq!(base(&args.replace("1-a.o", "2-a.o"), "/a").0, a);
        assert_ne!(base(&args.replace("-O2", "-O3"), "/a").0, a);
        // With a dependency file, the object it names is keyed.
        let dep = format!("{args} -MD -MF WS/target/out/a.d");
        let (d, why) = base(&dep, "/a");
        assert_ne!(d, a);
        assert_eq!(why["arg -o"], "/kache-target/out/1-a.o");
        assert_ne!(base(&dep.replace("1-a.o", "2-a.o"), "/a").0, d);
        assert_eq!(base(&dep.replace("a.d", "b.d"), "/a").0, d);
        // `-march=native` is keyed by this machine's CPU.
        let (_, why) = base(&format!("{args} -march=native"), "/a");
        assert!(why.contains_key("native-cpu"), "{why:?}");
        assert!(!base(args, "/a").1.contains_key("native-cpu"));
    }

    /// Every dependency flag that changes the dependency file's text is
    /// keyed; its path (`-MF`) is not.
    #[test]
    fn dependency_flags_are_keyed() {
        let args = "-O2 -o WS/o/a.o -c src/a.c -MD -MF WS/o/a.d";
        let (k, _) = base(args, "/a");
        for other in [
            args.replace("-MD", "-MMD"),
            format!("{args} -MP"),
            format!("{args} -MT WS/o/a.o"),
            format!("{args} -MQ WS/o/a.o"),
            format!("{args} -MT x"),
        ] {
            assert_ne!(base(&other, "/a").0, k, "{other}");
        }
        assert_eq!(base(&args.replace("a.d", "b.d"), "/a").0, k);
        let mmd = format!("{args} -MT x -MMD");
        assert_ne!(
            base(&mmd, "/a").0,
            base(&mmd.replace("-MT x", "-MT y"), "/a").0
        );
        assert_eq!(base(&mmd, "/a").0, base(&mmd, "/b/c").0);
    }

    #[test]
    fn has_include() {
        let t = b"#if defined(__has_include)\n#if __has_include (<sys/x.h>) && __has_include_next(\"y.h\")\n#endif\n#ifdef __has_include\n";
        assert_eq!(has_include_names(t).unwrap(), s(&["sys/x.h", "y.h"]));
        assert!(has_include_names(b"#define H(x) __has_include(x)").is_err());
        let c = shadow_candidates("a.c", &[], &s(&["inc"]), false, &s(&["y.h"])).unwrap();
        assert_eq!(c, s(&["inc/y.h", "y.h"]));
    }

    #[test]
    fn clock() {
        assert_eq!(clock_macro(b"x __DATE__ y", false), Some("__DATE__"));
        assert_eq!(clock_macro(b"x __DATE__ y", true), None);
        assert_eq!(clock_macro(b"__TIMESTAMP__", true), Some("__TIMESTAMP__"));
        assert_eq!(clock_macro(b"int x;", false), None);
    }

    /// What the account of a compile names (issue 23): flags and macro
    /// names, never an argument's value (the names of an uploaded
    /// manifest travel in clear). The key is what it always was.
    #[test]
    fn explain_names_hold_no_values() {
        let args = "-DSECRET_TOKEN=hunter2a -DPLAIN -Wa,--defsym,TOKEN=hunter2b \
            -Wl,-rpath,hunter2d -fdebug-prefix-map=hunter2e=/x -O2 -o WS/o/a.o -c src/a.c";
        let (k, why) = base(args, "/a");
        // The key of these arguments before names were split from values
        // (a change of the key scheme bumps KEY_VERSION, and this with it).
        assert_eq!(
            k.as_str(),
            "e539ff2592e077f68cb360824ad6bc4179fa778ea9416644d3b6125cae401471"
        );
        for name in why.keys() {
            assert!(!name.contains("hunter2"), "{name} in {why:?}");
        }
        assert_eq!(why["arg -D SECRET_TOKEN"], "hunter2a");
        assert_eq!(why["arg -D PLAIN"], "");
        assert_eq!(why["arg -Wa"], "--defsym,TOKEN=hunter2b");
        assert_eq!(why["arg -Wl"], "-rpath,hunter2d");
        assert_eq!(why["arg -fdebug-prefix-map"], "hunter2e=/x");
        assert_eq!(why["arg -O2"], "");
    }
}
