//! Parsing a rustc command line: is it a cacheable primary compile, and
//! what does it produce? Pure functions, no I/O except `@argfile`
//! expansion.

use std::ffi::OsString;
use std::path::PathBuf;

/// What one rustc command line asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Compile {
    pub(crate) crate_name: String,
    pub(crate) input: String,
    pub(crate) out_dir: PathBuf,
    /// Emit kinds, in the order given (`link`, `metadata`, `dep-info`).
    pub(crate) emit: Vec<String>,
    /// Crate types, in the order given; `--test` counts as `bin`.
    pub(crate) crate_types: Vec<String>,
    pub(crate) test: bool,
    pub(crate) extra_filename: String,
    /// `--extern name=path` (path-less externs are kept with `None`).
    pub(crate) externs: Vec<(String, Option<String>)>,
    /// `-L [kind=]path` as (kind, path).
    pub(crate) lib_paths: Vec<(String, String)>,
    /// `-l [kind[:mods]=]name[:rename]` as (kind, name).
    pub(crate) libs: Vec<(String, String)>,
    pub(crate) target: Option<String>,
    pub(crate) linker: Option<String>,
    /// `-C instrument-coverage` is on: the coverage map must name the
    /// real source paths, so kache adds no path remapping.
    pub(crate) coverage: bool,
    /// `-C incremental=DIR` is given (cargo's dev profile, for the
    /// workspace's own crates).
    pub(crate) incremental: bool,
    /// The argv to actually run, without the rustc path itself.
    pub(crate) run_args: Vec<String>,
}

/// The verdict on a command line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Cache it.
    Cache(Box<Compile>),
    /// Run rustc untouched; the reason is for logs and tests.
    Pass(&'static str),
}

/// Expands `@file` arguments (one argument per line). `None` if a file
/// cannot be read or is not UTF-8.
pub(crate) fn expand_argfiles(args: &[OsString]) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        let s = a.to_str()?;
        if let Some(p) = s.strip_prefix('@') {
            let text = std::fs::read_to_string(p).ok()?;
            for line in text.lines() {
                out.push(line.to_string());
            }
        } else {
            out.push(s.to_string());
        }
    }
    Some(out)
}

const LINKED_TYPES: [&str; 4] = ["bin", "proc-macro", "dylib", "cdylib"];

/// One rustc argument as (flag, value): `--flag value`, `--flag=value`,
/// `-Cvalue` and `-C value` all become `("-C", "value")` (long flags keep
/// their `--` name); a flag without a value has an empty value; a lone
/// value (the input file) has an empty flag. `raw` is the argv span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Arg {
    pub(crate) flag: String,
    pub(crate) value: String,
    pub(crate) raw: std::ops::Range<usize>,
}

/// Long flags that take a value (as the next argument or after `=`).
const LONG_WITH_VALUE: [&str; 25] = [
    "--crate-name",
    "--out-dir",
    "--emit",
    "--crate-type",
    "--extern",
    "--target",
    "--cfg",
    "--check-cfg",
    "--cap-lints",
    "--error-format",
    "--json",
    "--color",
    "--edition",
    "--force-warn",
    "--remap-path-prefix",
    "--remap-path-scope",
    "--diagnostic-width",
    "--env-set",
    "--codegen",
    "--print",
    "--explain",
    "--sysroot",
    "--unpretty",
    "--extern-location",
    "--crate-attr",
];

/// Short flags that take a value (`-Cv` or `-C v`).
const SHORT_WITH_VALUE: [&str; 9] = ["-C", "-L", "-l", "-A", "-W", "-D", "-F", "-Z", "-o"];

/// Linker options that write a file of their own.
fn writes_file(arg: &str) -> bool {
    const WRITERS: [&str; 4] = ["-Map", "--Map", "--out-implib", "--dependency-file"];
    arg.split([',', ' ', '=']).any(|p| {
        WRITERS
            .iter()
            .any(|w| p == *w || (p.starts_with("-Map") && p.len() > 4))
    })
}

/// A `-C` switch's value: on unless it says no (a bare switch is on;
/// `instrument-coverage=except-unused-generics` is on).
fn switch_on(val: &str) -> bool {
    !matches!(val, "n" | "no" | "off" | "false")
}

/// The one tokenizer of rustc's argv, shared by classification and the
/// cache key.
pub(crate) fn tokenize(args: &[String]) -> Vec<Arg> {
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let start = i;
        let (flag, value) =
            if LONG_WITH_VALUE.contains(&a.as_str()) || SHORT_WITH_VALUE.contains(&a.as_str()) {
                i += 1;
                (a.clone(), args.get(i).cloned().unwrap_or_default())
            } else if let Some((f, v)) = a.split_once('=').filter(|(f, _)| f.starts_with("--")) {
                let f = if f == "--codegen" { "-C" } else { f };
                (f.to_string(), v.to_string())
            } else if let Some(f) = SHORT_WITH_VALUE
                .iter()
                .find(|f| a.starts_with(**f) && a.len() > f.len())
            {
                (f.to_string(), a[f.len()..].to_string())
            } else if a.starts_with('-') && a != "-" {
                (a.clone(), String::new())
            } else {
                (String::new(), a.clone())
            };
        let flag = if flag == "--codegen" {
            "-C".to_string()
        } else {
            flag
        };
        out.push(Arg {
            flag,
            value,
            raw: start..(i + 1).min(args.len()),
        });
        i += 1;
    }
    out
}

/// Classifies rustc arguments (argv after the rustc path). `out_dir_env`
/// is the `OUT_DIR` of the calling process, if any (build-script probes
/// compile into it).
pub(crate) fn classify(
    args: &[String],
    cache_executables: bool,
    out_dir_env: Option<&str>,
) -> Verdict {
    match parse(args).and_then(|(c, inputs)| complete(c, inputs, cache_executables, out_dir_env)) {
        Ok(c) => Verdict::Cache(Box::new(c)),
        Err(reason) => Verdict::Pass(reason),
    }
}

/// Reads the arguments into a `Compile` and its inputs, or the reason a
/// flag makes the call uncacheable.
fn parse(args: &[String]) -> Result<(Compile, Vec<String>), &'static str> {
    let mut c = Compile::default();
    let mut inputs: Vec<String> = Vec::new();
    let mut emit_seen = false;
    let mut run_args: Vec<String> = Vec::with_capacity(args.len());
    for t in tokenize(args) {
        let v = t.value.clone();
        match t.flag.as_str() {
            "-vV" | "-V" | "--version" | "--help" | "-h" => return Err("not a compile"),
            "-o" => return Err("-o"),
            "--print" => return Err("--print"),
            "--explain" | "--pretty" | "--unpretty" => return Err("not a compile"),
            "-Z" if v.starts_with("unpretty") => return Err("not a compile"),
            "--sysroot" => return Err("--sysroot"),
            "--test" => c.test = true,
            "--crate-name" => c.crate_name = v,
            "--out-dir" => c.out_dir = PathBuf::from(v),
            "--emit" => {
                if emit_seen {
                    return Err("--emit twice");
                }
                emit_seen = true;
                c.emit = emit_kinds(&v)?;
            }
            "--crate-type" => c.crate_types.extend(v.split(',').map(String::from)),
            "--extern" => match v.split_once('=') {
                Some((n, p)) => c.externs.push((n.to_string(), Some(p.to_string()))),
                None => c.externs.push((v, None)),
            },
            "--target" => c.target = Some(v),
            "-L" => {
                let (k, p) = match v.split_once('=') {
                    Some((k, p)) => (k.to_string(), p.to_string()),
                    None => ("all".to_string(), v),
                };
                c.lib_paths.push((k, p));
            }
            "-l" => {
                let (k, n) = match v.split_once('=') {
                    Some((k, n)) => (k.split(':').next().unwrap_or("").to_string(), n.to_string()),
                    None => (String::new(), v),
                };
                let n = n.split(':').next().unwrap_or("").to_string();
                c.libs.push((k, n));
            }
            // Kept in the argv we run: cargo asks for it for the crates
            // being edited; the key notes it (see `key::hash_args`).
            "-C" if v.split('=').next() == Some("incremental") => c.incremental = true,
            "-C" => codegen_option(&mut c, &v)?,
            "-Z" if v.starts_with("instrument-coverage") => {
                c.coverage = switch_on(v.split_once('=').map_or("", |(_, x)| x));
            }
            "" if v == "-" => return Err("stdin input"),
            "" => inputs.push(v),
            _ => {}
        }
        run_args.extend(args[t.raw].iter().cloned());
    }
    c.run_args = run_args;
    Ok((c, inputs))
}

/// The kinds of one `--emit`: `link`, `metadata` and `dep-info` only,
/// each to its default path.
fn emit_kinds(v: &str) -> Result<Vec<String>, &'static str> {
    v.split(',')
        .map(|k| {
            if k.contains('=') {
                return Err("--emit with a path");
            }
            match k {
                "link" | "metadata" | "dep-info" => Ok(k.to_string()),
                _ => Err("unsupported emit kind"),
            }
        })
        .collect()
}

/// One `-C` option: what kache needs to know of it, or why it makes the
/// compile uncacheable.
fn codegen_option(c: &mut Compile, v: &str) -> Result<(), &'static str> {
    let (k, val) = v.split_once('=').unwrap_or((v, ""));
    match k {
        "extra-filename" => c.extra_filename = val.to_string(),
        "linker" => c.linker = Some(val.to_string()),
        "instrument-coverage" => c.coverage = switch_on(val),
        "split-debuginfo" if val != "off" => return Err("split debuginfo"),
        "save-temps" => return Err("-C save-temps"),
        // The linker writes a file beside the output that a hit would
        // not produce (a map, an import library).
        "link-arg" | "link-args" if writes_file(val) => {
            return Err("link argument writes a file");
        }
        _ => {}
    }
    Ok(())
}

/// Checks a parsed compile is one kache caches: one input, an out dir,
/// link or metadata with dep-info, known crate types, not a build-script
/// probe, every `--extern` with a path.
fn complete(
    mut c: Compile,
    mut inputs: Vec<String>,
    cache_executables: bool,
    out_dir_env: Option<&str>,
) -> Result<Compile, &'static str> {
    if c.crate_name.is_empty() {
        return Err("no --crate-name");
    }
    match inputs.len() {
        0 => return Err("no input"),
        1 => c.input = inputs.remove(0),
        _ => return Err("several inputs"),
    }
    if c.out_dir.as_os_str().is_empty() {
        return Err("no --out-dir");
    }
    if !c.emits("link") && !c.emits("metadata") {
        return Err("no link or metadata emit");
    }
    if !c.emits("dep-info") {
        return Err("no dep-info emit");
    }
    if c.test {
        c.crate_types = vec!["bin".to_string()];
    }
    if c.crate_types.is_empty() {
        return Err("no --crate-type");
    }
    for t in &c.crate_types {
        if !matches!(
            t.as_str(),
            "lib" | "rlib" | "staticlib" | "bin" | "proc-macro" | "dylib" | "cdylib"
        ) {
            return Err("unknown crate type");
        }
    }
    if !cache_executables && c.links() {
        return Err("executables not cached");
    }
    if let Some(od) = out_dir_env
        && !c.emits("link")
        && !od.is_empty()
        && c.out_dir.starts_with(od)
    {
        return Err("build-script probe");
    }
    const SYSROOT: [&str; 5] = ["proc_macro", "std", "core", "alloc", "test"];
    if c.externs
        .iter()
        .any(|(n, p)| p.is_none() && !SYSROOT.contains(&n.as_str()))
    {
        return Err("--extern without a path");
    }
    Ok(c)
}

impl Compile {
    /// Whether the compile produces a linked artifact (an executable or a
    /// shared library), whose key must include the linker.
    pub(crate) fn links(&self) -> bool {
        self.test
            || self
                .crate_types
                .iter()
                .any(|t| LINKED_TYPES.contains(&t.as_str()))
    }

    fn emits(&self, k: &str) -> bool {
        self.emit.iter().any(|e| e == k)
    }

    /// The dep-info file rustc writes in the out dir.
    pub(crate) fn dep_info_name(&self) -> String {
        format!("{}{}.d", self.crate_name, self.extra_filename)
    }

    /// The output files rustc writes in the out dir (dep-info excluded),
    /// with whether each is an executable.
    pub(crate) fn outputs(&self) -> Vec<(String, bool)> {
        let stem = format!("{}{}", self.crate_name, self.extra_filename);
        let mut out: Vec<(String, bool)> = Vec::new();
        let mut push = |n: String, x: bool| {
            if !out.iter().any(|(m, _)| *m == n) {
                out.push((n, x));
            }
        };
        if self.emits("link") {
            for t in &self.crate_types {
                match t.as_str() {
                    "lib" | "rlib" => push(format!("lib{stem}.rlib"), false),
                    "staticlib" => push(format!("lib{stem}.a"), false),
                    "dylib" | "cdylib" | "proc-macro" => push(format!("lib{stem}.so"), true),
                    "bin" => push(stem.clone(), true),
                    _ => {}
                }
            }
        }
        if self.emits("metadata") {
            push(format!("lib{stem}.rmeta"), false);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    const LIB: &str = "--crate-name foo --edition=2021 src/lib.rs --error-format=json \
        --json=diagnostic-rendered-ansi,artifacts,future-incompat --crate-type lib \
        --emit=dep-info,metadata,link -C embed-bitcode=no -C debuginfo=2 \
        -C metadata=abc -C extra-filename=-0123 --out-dir /t/debug/deps \
        -C incremental=/t/debug/incremental -L dependency=/t/debug/deps \
        --extern bar=/t/debug/deps/libbar-1.rmeta --cfg feature=\"x\"";

    #[test]
    fn lib_is_cached_and_incremental_kept() {
        let Verdict::Cache(c) = classify(&v(LIB), true, None) else {
            panic!()
        };
        assert_eq!(c.crate_name, "foo");
        assert_eq!(c.input, "src/lib.rs");
        assert_eq!(c.out_dir, PathBuf::from("/t/debug/deps"));
        assert!(c.incremental);
        assert_eq!(c.run_args, v(LIB));
        assert_eq!(
            c.outputs(),
            vec![
                ("libfoo-0123.rlib".into(), false),
                ("libfoo-0123.rmeta".into(), false)
            ]
        );
        assert_eq!(c.dep_info_name(), "foo-0123.d");
        assert!(!c.links());
    }

    #[test]
    fn passthroughs() {
        let p = |s: &str| classify(&v(s), true, None);
        assert!(matches!(p("-vV"), Verdict::Pass(_)));
        assert!(matches!(
            p("- --crate-name ___ --print=file-names"),
            Verdict::Pass(_)
        ));
        assert!(matches!(p(&format!("{LIB} -o x")), Verdict::Pass(_)));
        assert!(matches!(p(&LIB.replace("dep-info,", "")), Verdict::Pass(_)));
        assert!(matches!(
            p(&LIB.replace("link", "llvm-ir")),
            Verdict::Pass(_)
        ));
        assert!(matches!(
            p(&LIB.replace("link", "link=/x/y")),
            Verdict::Pass(_)
        ));
        assert!(matches!(
            p(&format!("{LIB} -C split-debuginfo=packed")),
            Verdict::Pass(_)
        ));
        assert!(matches!(
            p(&format!("{LIB} -C split-debuginfo=off")),
            Verdict::Cache(_)
        ));
        assert!(matches!(
            p(&format!("{LIB} -C link-arg=-Wl,-Map=app.map")),
            Verdict::Pass(_)
        ));
        assert!(matches!(
            p(&format!("{LIB} -C link-arg=-Wl,--gc-sections")),
            Verdict::Cache(_)
        ));
        assert!(matches!(p(&format!("{LIB} other.rs")), Verdict::Pass(_)));
        let bin = LIB.replace("--crate-type lib", "--crate-type bin");
        assert!(matches!(classify(&v(&bin), false, None), Verdict::Pass(_)));
        for (extra, on) in [
            ("-C instrument-coverage", true),
            ("-Cinstrument-coverage=all", true),
            ("-C instrument-coverage=off", false),
            ("", false),
        ] {
            let Verdict::Cache(c) = classify(&v(&format!("{LIB} {extra}")), true, None) else {
                panic!("{extra}")
            };
            assert_eq!(c.coverage, on, "{extra}");
        }
        assert!(matches!(classify(&v(&bin), true, None), Verdict::Cache(_)));
        let probe = "--crate-name probe0 --crate-type lib --emit=dep-info,metadata --out-dir /o/out probe.rs";
        assert!(matches!(
            classify(&v(probe), true, Some("/o/out")),
            Verdict::Pass(_)
        ));
    }

    #[test]
    fn outputs_per_type() {
        let bin = LIB
            .replace("--crate-type lib", "--crate-type bin")
            .replace("metadata,", "");
        let Verdict::Cache(c) = classify(&v(&bin), true, None) else {
            panic!()
        };
        assert_eq!(c.outputs(), vec![("foo-0123".into(), true)]);
        let pm = LIB
            .replace("--crate-type lib", "--crate-type proc-macro")
            .replace("metadata,", "");
        let Verdict::Cache(c) = classify(&v(&pm), true, None) else {
            panic!()
        };
        assert_eq!(c.outputs(), vec![("libfoo-0123.so".into(), true)]);
        let check = LIB.replace(",link", "");
        let Verdict::Cache(c) = classify(&v(&check), true, None) else {
            panic!()
        };
        assert_eq!(c.outputs(), vec![("libfoo-0123.rmeta".into(), false)]);
    }
}
