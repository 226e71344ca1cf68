/*!
Which C, C++ and assembler compiler calls are cached, read from argv.

Only a one-source `-c` compile to an object (named by `-o`, or the
source's name with `.o` in the working directory), with flags kache
understands, is cached: with or without a dependency file (`-MD`,
`-MMD`, `-MF`, `-MT`, `-MQ`, `-MP`). Everything else (a link, `-E`, `-S`,
`-M`/`-MM` alone, several sources, precompiled headers, profile data,
`-save-temps`, a response file that cannot be read, any flag not in the
lists below) is a [`Verdict::Pass`] with the reason, and runs unchanged.

Pure: no I/O beyond reading response files, which the caller does.
*/

/// The language of the source, as the compiler driver picks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lang {
    C,
    Cxx,
    /// `.S`: assembler run through the preprocessor.
    AsmCpp,
    /// `.s`: plain assembler, no preprocessor.
    Asm,
}

impl Lang {
    /// The driver's `-x` name.
    pub(crate) fn x_name(self) -> &'static str {
        match self {
            Lang::C => "c",
            Lang::Cxx => "c++",
            Lang::AsmCpp => "assembler-with-cpp",
            Lang::Asm => "assembler",
        }
    }

    fn from_x(x: &str) -> Option<Lang> {
        Some(match x {
            "c" => Lang::C,
            "c++" => Lang::Cxx,
            "assembler-with-cpp" => Lang::AsmCpp,
            "assembler" => Lang::Asm,
            _ => return None,
        })
    }

    fn from_ext(path: &str) -> Option<Lang> {
        let ext = path.rsplit_once('.').map(|(_, e)| e)?;
        Some(match ext {
            "c" => Lang::C,
            "cc" | "cpp" | "cxx" | "C" | "c++" | "cp" | "CPP" => Lang::Cxx,
            "S" | "sx" => Lang::AsmCpp,
            "s" => Lang::Asm,
            _ => return None,
        })
    }
}

/// A cacheable compile.
#[derive(Clone, Debug, Default)]
pub(crate) struct CcCompile {
    /// The arguments as given (response files expanded).
    pub(crate) args: Vec<String>,
    pub(crate) source: String,
    pub(crate) lang: Option<Lang>,
    /// The object (`-o`), as given.
    pub(crate) output: String,
    /// The dependency file the caller asked for (`-MD`/`-MMD` [`-MF
    /// path`]).
    pub(crate) dep_file: Option<String>,
    /// `-MMD`: the caller's dependency file leaves out system headers,
    /// and the compiler writes one file only. These are the arguments of
    /// a preprocessor run that lists every header (the caller's without
    /// `-c`, `-o` and the dependency flags; kache adds `-M -MF FILE`).
    pub(crate) list_headers: Option<Vec<String>>,
    /// The caller gave its own `-f*-prefix-map`: kache adds none.
    pub(crate) own_prefix_map: bool,
    /// Search directories, in the driver's order, by kind.
    pub(crate) iquote: Vec<String>,
    pub(crate) include: Vec<String>,
    pub(crate) isystem: Vec<String>,
    pub(crate) idirafter: Vec<String>,
    /// `-include` / `-imacros` files (looked up from the working
    /// directory first).
    pub(crate) forced: Vec<String>,
    /// The flags that change the compiler's built-in search directories
    /// (`--sysroot`, `-nostdinc`, `-m32`, `--target`, ...).
    pub(crate) search_flags: Vec<String>,
}

impl CcCompile {
    pub(crate) fn lang(&self) -> Lang {
        self.lang.unwrap_or(Lang::C)
    }
}

/// Whether a compile is cached, and why not.
#[derive(Debug)]
pub(crate) enum Verdict {
    Cache(Box<CcCompile>),
    Pass(String),
}

/// Flags that take their value as the next argument (or glued on).
const WITH_VALUE: [&str; 15] = [
    "-o",
    "-I",
    "-isystem",
    "-iquote",
    "-idirafter",
    "-include",
    "-imacros",
    "-MF",
    "-MT",
    "-MQ",
    "-x",
    "-D",
    "-U",
    "-isysroot",
    "-target",
];

/// `-f` flags that write more than the object, or need files kache does
/// not key: never cached.
const F_REFUSED: [&str; 16] = [
    "-fprofile-",
    "-fauto-profile",
    "-fdump-",
    "-fstack-usage",
    "-fcallgraph-info",
    "-fsyntax-only",
    "-fpch-",
    "-fplugin",
    "-fcreate-profile",
    "-ftest-coverage",
    "-fsave-optimization-record",
    "-fopt-info",
    "-fmodules",
    "-fcoverage",
    "-fsanitize-coverage-",
    "-fbranch-probabilities",
];

/// Exact flags without a value that are understood.
const PLAIN: [&str; 15] = [
    "-c",
    "-w",
    "-pipe",
    "-pedantic",
    "-pedantic-errors",
    "-ansi",
    "-pthread",
    "-MD",
    "-MMD",
    "-MP",
    "-nostdinc",
    "-nostdinc++",
    "-nostdlibinc",
    "-no-canonical-prefixes",
    "-static",
];

/// Splits a gcc response file: whitespace separates, `'`, `"` and `\`
/// quote. `None` if a nested `@file` appears.
pub(crate) fn split_response(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    have = true;
                }
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                have = true;
            }
            (None, c) if c.is_whitespace() => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            (None, c) => {
                cur.push(c);
                have = true;
            }
        }
    }
    if have {
        out.push(cur);
    }
    if out.iter().any(|a| a.starts_with('@')) {
        return None;
    }
    Some(out)
}

/// Classifies a compiler call's arguments (response files already
/// expanded).
pub(crate) fn classify(args: &[String]) -> Verdict {
    match parse(args) {
        Ok(c) => Verdict::Cache(Box::new(c)),
        Err(why) => Verdict::Pass(why),
    }
}

fn parse(args: &[String]) -> Result<CcCompile, String> {
    let mut p = Parser::new(args);
    while let Some(a) = p.next_arg() {
        p.arg(a)?;
    }
    p.finish()
}

/// The walk over a compiler call's arguments: what [`parse`] has read so
/// far.
struct Parser<'a> {
    args: &'a [String],
    /// The next argument to read.
    i: usize,
    c: CcCompile,
    compile_only: bool,
    /// `-MD` or `-MMD`.
    md: bool,
    /// `-MMD` (whatever its place beside `-MD`: gcc lets `-MMD` win,
    /// clang the last; either way the caller's file may omit headers).
    mmd: bool,
    /// The arguments (as index ranges) naming the object or the
    /// dependency file: left out of the [`CcCompile::list_headers`] run.
    dep_args: Vec<std::ops::Range<usize>>,
    /// The inputs, each with the `-x` language in force before it.
    sources: Vec<(String, Option<Lang>)>,
    x_lang: Option<Lang>,
}

impl<'a> Parser<'a> {
    fn new(args: &'a [String]) -> Self {
        Parser {
            args,
            i: 0,
            c: CcCompile {
                args: args.to_vec(),
                ..CcCompile::default()
            },
            compile_only: false,
            md: false,
            mmd: false,
            dep_args: Vec::new(),
            sources: Vec::new(),
            x_lang: None,
        }
    }

    fn next_arg(&mut self) -> Option<&'a str> {
        let a = self.args.get(self.i)?;
        self.i += 1;
        Some(a.as_str())
    }

    /// One argument: an input, or a flag with the value it takes.
    fn arg(&mut self, a: &'a str) -> Result<(), String> {
        if a == "-" {
            return Err("reads the source from stdin".into());
        }
        if !a.starts_with('-') || a.len() == 1 {
            if a.starts_with('@') {
                return Err("a response file that cannot be read".into());
            }
            self.sources.push((a.to_string(), self.x_lang));
            return Ok(());
        }
        // A flag with a value: `-I dir`, `-Idir`, `-I=dir` is `-I` `=dir`.
        let start = self.i - 1;
        if let Some(flag) = WITH_VALUE
            .iter()
            .find(|f| a == **f || ((f.len() == 2 || f.starts_with("-M")) && a.starts_with(**f)))
        {
            self.with_value(flag, a)?;
            if ["-o", "-MF", "-MT", "-MQ"].contains(flag) {
                self.dep_args.push(start..self.i);
            }
            return Ok(());
        }
        if PLAIN.contains(&a) {
            self.plain(a);
            if ["-c", "-MD", "-MMD", "-MP"].contains(&a) {
                self.dep_args.push(start..self.i);
            }
            return Ok(());
        }
        self.other(a)
    }

    /// A flag of [`WITH_VALUE`], its value joined to it or the next
    /// argument.
    fn with_value(&mut self, flag: &str, a: &str) -> Result<(), String> {
        let value = if a == flag {
            let Some(v) = self.next_arg() else {
                return Err(format!("{flag} without a value"));
            };
            v.to_string()
        } else {
            a[flag.len()..].to_string()
        };
        let c = &mut self.c;
        match flag {
            "-o" => {
                if value == "-" {
                    return Err("writes the object to stdout".into());
                }
                c.output = value;
            }
            "-I" => {
                if value == "-" {
                    return Err("-I- not understood".into());
                }
                c.include.push(value);
            }
            "-isystem" => c.isystem.push(value),
            "-iquote" => c.iquote.push(value),
            "-idirafter" => c.idirafter.push(value),
            "-include" | "-imacros" => c.forced.push(value),
            "-MF" => c.dep_file = Some(value),
            "-x" => {
                self.x_lang =
                    Some(Lang::from_x(&value).ok_or_else(|| format!("language -x {value}"))?);
            }
            "-isysroot" | "-target" => {
                c.search_flags.push(flag.to_string());
                c.search_flags.push(value);
            }
            _ => {}
        }
        Ok(())
    }

    /// A flag of [`PLAIN`]: no value.
    fn plain(&mut self, a: &str) {
        match a {
            "-c" => self.compile_only = true,
            "-MD" => self.md = true,
            "-MMD" => {
                self.md = true;
                self.mmd = true;
            }
            "-nostdinc" | "-nostdinc++" | "-nostdlibinc" | "-no-canonical-prefixes" => {
                self.c.search_flags.push(a.to_string());
            }
            _ => {}
        }
    }

    /// Any other flag: refused, kept for the search directories, or known
    /// not to matter.
    fn other(&mut self, a: &str) -> Result<(), String> {
        match a {
            "-E" | "-S" | "-M" | "-MM" => return Err(format!("{a}: no object")),
            "-v" | "-###" => return Err(format!("{a}: prints the driver's commands")),
            _ => {}
        }
        if a.starts_with("-save-temps") || a == "--coverage" {
            return Err(format!("{a} writes more than the object"));
        }
        if let Some(f) = a.strip_prefix("-f") {
            if F_REFUSED.iter().any(|r| a.starts_with(r)) {
                return Err(format!("{a} is not cached"));
            }
            if f.starts_with("debug-prefix-map=")
                || f.starts_with("file-prefix-map=")
                || f.starts_with("macro-prefix-map=")
            {
                self.c.own_prefix_map = true;
            }
            return Ok(());
        }
        if a.starts_with("-g") {
            if a.contains("split-dwarf") {
                return Err(format!("{a} writes a .dwo beside the object"));
            }
            return Ok(());
        }
        if a.starts_with("-m") || a.starts_with("--target=") || a.starts_with("-stdlib=") {
            // Also changes the built-in search directories (multilib).
            self.c.search_flags.push(a.to_string());
            return Ok(());
        }
        if a.starts_with("--sysroot=") {
            self.c.search_flags.push(a.to_string());
            return Ok(());
        }
        if a == "--sysroot" {
            let Some(v) = self.next_arg() else {
                return Err("--sysroot without a value".into());
            };
            self.c.search_flags.push(format!("--sysroot={v}"));
            return Ok(());
        }
        if a.starts_with("-O") || a.starts_with("-std=") {
            return Ok(());
        }
        if let Some(w) = a.strip_prefix("-W") {
            if w.starts_with("p,") {
                return Err(format!("{a}: preprocessor options not understood"));
            }
            if w.starts_with("a,") && w.contains("-a") {
                return Err(format!("{a}: an assembler listing"));
            }
            return Ok(());
        }
        Err(format!("flag {a} not understood"))
    }

    /// After the last argument: one source, an object, and the
    /// dependency file `-MD`/`-MMD` writes.
    fn finish(self) -> Result<CcCompile, String> {
        let mut c = self.c;
        if !self.compile_only {
            return Err("not a -c compile (a link, or no object)".into());
        }
        let [(source, x)] = self.sources.as_slice() else {
            return Err(if self.sources.is_empty() {
                "no source file".into()
            } else {
                "several inputs".into()
            });
        };
        c.lang = Some(
            x.or_else(|| Lang::from_ext(source))
                .ok_or_else(|| format!("source {source} of an unknown language"))?,
        );
        c.source.clone_from(source);
        if c.output.is_empty() {
            c.output = default_object(source)
                .ok_or_else(|| format!("no -o, and source {source} names no object"))?;
        }
        if c.output.ends_with(".gch") || c.output.ends_with(".pch") {
            return Err("a precompiled header".into());
        }
        if self.md {
            if c.lang() == Lang::Asm {
                return Err(format!(
                    "{} on a plain assembler source (no preprocessor, no dependency file)",
                    if self.mmd { "-MMD" } else { "-MD" }
                ));
            }
            if c.dep_file.is_none() {
                c.dep_file = Some(default_dep_file(&c.output).ok_or_else(|| {
                    format!("no -MF, and object {} names no dependency file", c.output)
                })?);
            }
        } else if c.dep_file.is_some() {
            return Err("-MF without -MD or -MMD".into());
        }
        // A hit writes its files by renaming over them: never over a device.
        for out in std::iter::once(&c.output).chain(&c.dep_file) {
            if out.starts_with("/dev/") {
                return Err(format!("writes to {out}"));
            }
        }
        if self.mmd {
            let dropped = |i: usize| self.dep_args.iter().any(|r| r.contains(&i));
            c.list_headers = Some(
                (0..self.args.len())
                    .filter(|&i| !dropped(i))
                    .map(|i| self.args[i].clone())
                    .collect(),
            );
        }
        Ok(c)
    }
}

/// The object of `-c SOURCE` without `-o`, as gcc and clang name it: the
/// source's file name, its suffix (from the last `.`, not a leading one)
/// replaced by `.o`, in the working directory. `None` for a name the two
/// drivers treat differently (a leading `.`).
fn default_object(source: &str) -> Option<String> {
    let name = source.rsplit('/').next().unwrap_or(source);
    if name.is_empty() || name.starts_with('.') {
        return None;
    }
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    Some(format!("{stem}.o"))
}

/// The dependency file of `-MD`/`-MMD` without `-MF`: the object's path
/// with the suffix of its file name (from its last `.`) replaced by
/// `.d`, or `.d` appended (gcc's `%.d` spec, clang's `replace_extension`).
/// `None` for a name the two drivers treat differently.
fn default_dep_file(object: &str) -> Option<String> {
    let (dir, name) = object
        .rsplit_once('/')
        .map_or(("", object), |(d, n)| (d, n));
    if name.is_empty() || name.starts_with('.') {
        return None;
    }
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    Some(if object.contains('/') {
        format!("{dir}/{stem}.d")
    } else {
        format!("{stem}.d")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn cached(s: &str) -> CcCompile {
        match classify(&v(s)) {
            Verdict::Cache(c) => *c,
            Verdict::Pass(why) => panic!("{s}: passed ({why})"),
        }
    }

    fn passed(s: &str) -> String {
        match classify(&v(s)) {
            Verdict::Cache(_) => panic!("{s}: cached"),
            Verdict::Pass(why) => why,
        }
    }

    #[test]
    fn cc_rs_compiles_are_cached() {
        let c = cached(
            "-O0 -ffunction-sections -fdata-sections -fPIC -g -gdwarf-4 -fno-omit-frame-pointer \
             -mno-omit-leaf-frame-pointer -m64 -march=x86-64 -I include -I/abs/inc \
             -isystem /sys -iquote q -Wall -Wextra -DFOO=1 -U BAR -o /t/out/1-values.o -c csrc/values.c",
        );
        assert_eq!(c.source, "csrc/values.c");
        assert_eq!(c.output, "/t/out/1-values.o");
        assert_eq!(c.lang(), Lang::C);
        assert_eq!(c.include, vec!["include", "/abs/inc"]);
        assert_eq!(c.isystem, vec!["/sys"]);
        assert_eq!(c.iquote, vec!["q"]);
        assert!(c.dep_file.is_none());
        assert_eq!(
            c.search_flags,
            vec!["-mno-omit-leaf-frame-pointer", "-m64", "-march=x86-64"]
        );
        assert_eq!(cached("-c x.cpp -o x.o").lang(), Lang::Cxx);
        assert_eq!(cached("-c x.S -o x.o").lang(), Lang::AsmCpp);
        assert_eq!(cached("-c x.s -o x.o").lang(), Lang::Asm);
        assert_eq!(cached("-x c++ -c x.h2 -o x.o").lang(), Lang::Cxx);
        // CMake's dependency files.
        let c = cached("-MD -MT a.o -MF a.o.d -o a.o -c a.c");
        assert_eq!(c.dep_file.as_deref(), Some("a.o.d"));
        assert_eq!(
            cached("-MD -o dir/a.o -c a.c").dep_file.as_deref(),
            Some("dir/a.d")
        );
        assert!(cached("-ffile-prefix-map=/a=/b -c a.c -o a.o").own_prefix_map);
    }

    #[test]
    fn everything_else_passes() {
        for s in [
            "-E detect_compiler_family.c",
            "-o app a.o b.o",
            "-c a.c b.c",
            "-M a.c",
            "-MM a.c",
            "-S a.c -o a.s",
            "-c - -o a.o",
            "-c a.h -o a.h.gch",
            "-fprofile-use -c a.c -o a.o",
            "-fprofile-generate -c a.c -o a.o",
            "-save-temps -c a.c -o a.o",
            "--coverage -c a.c -o a.o",
            "-gsplit-dwarf -c a.c -o a.o",
            "-Xclang -foo -c a.c -o a.o",
            "-Wp,-MD,x.d -c a.c -o a.o",
            "-c a.rs -o a.o",
            "-c @args -o a.o",
            "-B/x -c a.c -o a.o",
        ] {
            passed(s);
        }
        assert!(passed("--frobnicate -c a.c -o a.o").contains("--frobnicate"));
    }

    /// `-MD`/`-MMD`, with and without `-MF`, as OpenSSL, autotools and
    /// hand-written makefiles pass them.
    #[test]
    fn dependency_files() {
        // OpenSSL: `-MMD -MF x.d.tmp -MT x.o`.
        let c = cached("-O2 -Iinc -MMD -MF c/x.d.tmp -MT c/x.o -c -o c/x.o c/x.c");
        assert_eq!(c.dep_file.as_deref(), Some("c/x.d.tmp"));
        // The run that lists every header: no object, no dependency flag.
        assert_eq!(c.list_headers, Some(v("-O2 -Iinc c/x.c")));
        let c = cached("-MMD -MP -MQ$t -MTa.o -MFa.d -oa.o -c a.c -DX");
        assert_eq!(c.dep_file.as_deref(), Some("a.d"));
        assert_eq!(c.list_headers, Some(v("a.c -DX")));
        // Without -MF: beside the object, its suffix replaced by `.d`.
        for (args, dep) in [
            ("-MMD -c a.c -o obj/a.o", "obj/a.d"),
            ("-MMD -c a.c -o a.b.o", "a.b.d"),
            ("-MD -c a.c -o dir.x/obj", "dir.x/obj.d"),
            ("-MD -c a.c -o /t/a.o", "/t/a.d"),
            ("-MMD -c src/a.c", "a.d"),
        ] {
            assert_eq!(cached(args).dep_file.as_deref(), Some(dep), "{args}");
        }
        // autotools' depcomp: all headers already in the caller's file.
        let c = cached("-MT a.o -MD -MP -MF .deps/a.Tpo -c -o a.o a.c");
        assert_eq!(c.dep_file.as_deref(), Some(".deps/a.Tpo"));
        assert!(c.list_headers.is_none());
        // Both: whichever the compiler honours, kache lists every header.
        assert!(cached("-MD -MMD -c a.c -o a.o").list_headers.is_some());
        assert!(cached("-c a.c -o a.o").list_headers.is_none());
        // No `-o`: the source's name, in the working directory.
        let c = cached("-c src/a.b.c");
        assert_eq!((c.output.as_str(), c.dep_file), ("a.b.o", None));
        for (args, why) in [
            ("-MF a.d -c a.c -o a.o", "-MF without -MD or -MMD"),
            ("-MMD -c a.s -o a.o", "-MMD on a plain assembler source"),
            ("-MD -c a.s -o a.o", "-MD on a plain assembler source"),
            ("-MD -c a.c -o obj/.o", "names no dependency file"),
            ("-c src/.c", "names no object"),
            ("-MD -MG -c a.c -o a.o", "flag -MG not understood"),
            ("-c a.c -o /dev/null", "writes to /dev/null"),
            ("-MMD -MF /dev/null -c a.c -o a.o", "writes to /dev/null"),
        ] {
            assert!(passed(args).contains(why), "{args}: {}", passed(args));
        }
    }

    #[test]
    fn response_files() {
        assert_eq!(
            split_response("-c 'a b.c' \"-DX=\\\"y\\\"\"\n-o\tx.o").unwrap(),
            vec!["-c", "a b.c", "-DX=\"y\"", "-o", "x.o"]
        );
        assert!(split_response("-c @more").is_none());
    }
}
