/*!
The settings of the `[cache]` table: the local store, what the wrapper
caches and declares, the daemon, and the transfer tuning of `kache sync`.
Each definition is followed by its test.
*/

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use super::super::{CrateInputs, Setting, Source, default_cache_dir, expand_tilde, invalid};
use super::{Def, Readers, TF_FORM};
#[cfg(test)]
use super::{error, load, shown, wrapper};
use crate::units::{format_size, parse_duration, parse_size};

/// `cache.local_store`: must be absolute, or every crate's compile (each
/// run in its own directory) would get its own store.
pub(crate) const LOCAL_STORE: Def = Def {
    name: "cache.local_store",
    var: "KACHE_CACHE_DIR",
    file: true,
    form: "an absolute path as a string",
    default: "`$XDG_CACHE_HOME/kache`, else `~/.cache/kache`, else (no `HOME`) `$TMPDIR/kache-UID`",
    help: "the local store; must be an absolute path (`~/` is expanded in the file); created mode 0700, and refused (the wrapper then compiles uncached) if another user owns it or its group or others may write to it",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        let file = i.typed::<String>(d)?;
        let file = file.map(|s| PathBuf::from(expand_tilde(&s)));
        c.cache_dir = i.pick(d, file, default_cache_dir(), |s| Ok(PathBuf::from(s)))?;
        absolute(&c.cache_dir)
    },
    show: |d, c, _| d.row(c.cache_dir.value.display().to_string(), &c.cache_dir),
};

#[cfg(test)]
#[test]
fn local_store() {
    let c = load("[cache]\nlocal_store = \"/f\"\n", &[]).unwrap();
    assert_eq!(c.cache_dir.value, Path::new("/f"));
    assert_eq!(
        shown(&LOCAL_STORE, &c),
        ("KACHE_CACHE_DIR", "/f".into(), "file /c.toml".into())
    );
    let c = load(
        "[cache]\nlocal_store = \"/f\"\n",
        &[("KACHE_CACHE_DIR", "/e")],
    )
    .unwrap();
    assert_eq!(c.cache_dir.source, Source::Env("KACHE_CACHE_DIR"));
    let e = error("", &[("KACHE_CACHE_DIR", "rel")]);
    assert!(
        e.starts_with("KACHE_CACHE_DIR `rel` must be an absolute path"),
        "{e}"
    );
    let e = error("[cache]\nlocal_store = \"rel\"\n", &[]);
    assert!(
        e.starts_with("cache.local_store in /c.toml `rel` must be"),
        "{e}"
    );
    let e = error("[cache]\nlocal_store = 1\n", &[("KACHE_CACHE_DIR", "/e")]);
    assert_eq!(
        e,
        "invalid value `1` for cache.local_store in /c.toml: expected an absolute path as a string"
    );
    assert_eq!(
        wrapper("", &[("KACHE_CACHE_DIR", "/e")]).unwrap().cache_dir,
        Path::new("/e")
    );
}

fn absolute(dir: &Setting<PathBuf>) -> Result<()> {
    if dir.value.is_absolute() {
        return Ok(());
    }
    let name = match &dir.source {
        Source::Env(v) => (*v).to_string(),
        Source::File(p) => format!("cache.local_store in {}", p.display()),
        Source::Default => "the default cache dir".to_string(),
    };
    bail!(
        "{name} `{}` must be an absolute path: cargo runs each compile in its crate's directory, so a relative one would make a store in each; use a full path such as /var/cache/kache or ~/.cache/kache (in the file)",
        dir.value.display()
    )
}

pub(crate) const LOCAL_MAX_SIZE: Def = Def {
    name: "cache.local_max_size",
    var: "KACHE_MAX_SIZE",
    file: true,
    form: "a size such as 512MiB, 10GB or 50GiB",
    default: "`50GiB`",
    help: "the store's size limit: past it, the build that crosses it evicts least recently used entries down to 90% of it (`kache gc` down to all of it)",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        c.max_size = match i.text(d, 50 << 30, parse_size) {
            Ok(s) => s,
            // The wrapper only evicts by it: an invalid value must not
            // change how a compile runs. It then evicts nothing; the
            // commands report the value.
            Err(_) if i.is_wrapper() => Setting::default_of(0),
            Err(e) => return Err(e),
        };
        Ok(())
    },
    show: |d, c, _| d.row(format_size(c.max_size.value), &c.max_size),
};

#[cfg(test)]
#[test]
fn local_max_size() {
    let c = load("", &[]).unwrap();
    assert_eq!(
        (c.max_size.value, c.max_size.source),
        (50 << 30, Source::Default)
    );
    let c = load("[cache]\nlocal_max_size = \"10GB\"\n", &[]).unwrap();
    assert_eq!(shown(&LOCAL_MAX_SIZE, &c).1, "9.3 GiB");
    let e = error("[cache]\nlocal_max_size = \"12XB\"\n", &[]);
    assert_eq!(
        e,
        "invalid value `12XB` for cache.local_max_size in /c.toml: expected a size such as 512MiB, 10GB or 50GiB"
    );
    let e = error("", &[("KACHE_MAX_SIZE", "12XB")]);
    assert!(
        e.starts_with("invalid value `12XB` for KACHE_MAX_SIZE: expected a size"),
        "{e}"
    );
    // The wrapper reads it (a build that crosses it evicts).
    assert_eq!(
        wrapper("", &[("KACHE_MAX_SIZE", "1GiB")]).unwrap().max_size,
        1 << 30
    );
    // An invalid value: the wrapper compiles as ever and evicts nothing.
    assert_eq!(
        wrapper(
            "[cache]\nlocal_max_size = \"12XB\"\n",
            &[("KACHE_MAX_SIZE", "x")]
        )
        .unwrap()
        .max_size,
        0
    );
}

/// A whole number in `range`.
fn number<T: std::str::FromStr + PartialOrd>(s: &str, range: RangeInclusive<T>) -> Option<T> {
    s.trim().parse::<T>().ok().filter(|n| range.contains(n))
}

pub(crate) const S3_CONCURRENCY: Def = Def {
    name: "cache.s3_concurrency",
    var: "KACHE_S3_CONCURRENCY",
    file: true,
    form: "a whole number from 1 to 1024",
    default: "`16`",
    help: "requests in flight during sync (1..=1024)",
    readers: Readers::Commands,
    load: |d, i, c| {
        c.s3_concurrency = i.text(d, 16, |s| number(s, 1..=1024))?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.s3_concurrency),
};

#[cfg(test)]
#[test]
fn s3_concurrency() {
    assert_eq!(load("", &[]).unwrap().s3_concurrency.value, 16);
    let c = load(
        "[cache]\ns3_concurrency = 8\n",
        &[("KACHE_S3_CONCURRENCY", "4")],
    )
    .unwrap();
    assert_eq!(
        shown(&S3_CONCURRENCY, &c),
        (
            "KACHE_S3_CONCURRENCY",
            "4".into(),
            "env KACHE_S3_CONCURRENCY".into()
        )
    );
    assert_eq!(
        load("[cache]\ns3_concurrency = \"8\"\n", &[])
            .unwrap()
            .s3_concurrency
            .value,
        8
    );
    let e = error("[cache]\ns3_concurrency = 0\n", &[]);
    assert_eq!(
        e,
        "invalid value `0` for cache.s3_concurrency in /c.toml: expected a whole number from 1 to 1024"
    );
    assert!(error("", &[("KACHE_S3_CONCURRENCY", "1025")]).contains("KACHE_S3_CONCURRENCY"));
}

pub(crate) const COMPRESSION_LEVEL: Def = Def {
    name: "cache.compression_level",
    var: "KACHE_COMPRESSION_LEVEL",
    file: true,
    form: "a zstd level from 1 to 22",
    default: "`3`",
    help: "zstd level of uploaded archives (1..=22)",
    readers: Readers::Commands,
    load: |d, i, c| {
        c.compression_level = i.text(d, 3, |s| number(s, 1..=22))?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.compression_level),
};

#[cfg(test)]
#[test]
fn compression_level() {
    assert_eq!(load("", &[]).unwrap().compression_level.value, 3);
    assert_eq!(
        load("[cache]\ncompression_level = 19\n", &[])
            .unwrap()
            .compression_level
            .value,
        19
    );
    let e = error("", &[("KACHE_COMPRESSION_LEVEL", "23")]);
    assert_eq!(
        e,
        "invalid value `23` for KACHE_COMPRESSION_LEVEL: expected a zstd level from 1 to 22"
    );
}

pub(crate) const CACHE_EXECUTABLES: Def = Def {
    name: "cache.cache_executables",
    var: "KACHE_CACHE_EXECUTABLES",
    file: true,
    form: TF_FORM,
    default: "`true` on Linux",
    help: "also cache bins, tests, build scripts, proc-macros, dylibs",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        c.cache_executables = i.flag(d, cfg!(target_os = "linux"))?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.cache_executables),
};

#[cfg(test)]
#[test]
fn cache_executables() {
    assert_eq!(
        load("", &[]).unwrap().cache_executables.value,
        cfg!(target_os = "linux")
    );
    let c = load(
        "[cache]\ncache_executables = false\n",
        &[("KACHE_CACHE_EXECUTABLES", "yes")],
    )
    .unwrap();
    assert!(c.cache_executables.value);
    let e = error("", &[("KACHE_CACHE_EXECUTABLES", "maybe")]);
    assert_eq!(
        e,
        "invalid value `maybe` for KACHE_CACHE_EXECUTABLES: expected true or false (also 1/0, yes/no, on/off)"
    );
}

/// `cache.cache_c`: cache C, C++ and assembler compiles.
pub(crate) const CACHE_C: Def = Def {
    name: "cache.cache_c",
    var: "KACHE_CACHE_C",
    file: true,
    form: TF_FORM,
    default: "`true`",
    help: "cache C, C++ and assembler compiles (see *C, C++ and assembler*); `false` runs every compiler call as without kache",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        c.cache_c = i.flag(d, true)?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.cache_c),
};

#[cfg(test)]
#[test]
fn cache_c() {
    assert!(load("", &[]).unwrap().cache_c.value);
    assert!(!wrapper("[cache]\ncache_c = false\n", &[]).unwrap().cache_c);
    assert!(!wrapper("", &[("KACHE_CACHE_C", "off")]).unwrap().cache_c);
    let e = format!(
        "{:#}",
        wrapper("[cache]\ncache_c = \"yes\"\n", &[]).unwrap_err()
    );
    assert_eq!(
        e,
        "invalid value `\"yes\"` for cache.cache_c in /c.toml: expected true or false"
    );
}

/// `cache.cache_build_scripts`: cache build-script runs.
pub(crate) const CACHE_BUILD_SCRIPTS: Def = Def {
    name: "cache.cache_build_scripts",
    var: "KACHE_CACHE_BUILD_SCRIPTS",
    file: true,
    form: TF_FORM,
    default: "`true`",
    help: "cache build-script runs (see *Build scripts*); `false` compiles build scripts as any binary and cargo runs them as without kache",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        c.cache_build_scripts = i.flag(d, true)?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.cache_build_scripts),
};

#[cfg(test)]
#[test]
fn cache_build_scripts() {
    assert!(load("", &[]).unwrap().cache_build_scripts.value);
    assert!(wrapper("", &[]).unwrap().cache_build_scripts);
    assert!(
        !wrapper("[cache]\ncache_build_scripts = false\n", &[])
            .unwrap()
            .cache_build_scripts
    );
    assert!(
        !wrapper("", &[("KACHE_CACHE_BUILD_SCRIPTS", "0")])
            .unwrap()
            .cache_build_scripts
    );
}

/// `cache.trace_behind`: a build-script miss is traced by a twin run.
/// On by default on a desk, where the build is what someone waits for;
/// off where `CI` is set (every major CI service sets it), where a job
/// that pushes right after its build would wait for the twins, and a
/// run traced inline ends sooner than a run plus its twin.
pub(crate) const TRACE_BEHIND: Def = Def {
    name: "cache.trace_behind",
    var: "KACHE_TRACE_BEHIND",
    file: true,
    form: TF_FORM,
    default: "`true`; `false` where `CI` is set",
    help: "a build-script miss runs untraced for the build while an isolated twin, at idle priority, runs it traced once the build is over and stores it (see *Build scripts*); `false` traces the build's own run",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        let ci = i
            .env("CI")
            .is_some_and(|v| super::super::parse_bool(&v) != Some(false));
        c.trace_behind = i.flag(d, !ci)?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.trace_behind),
};

#[cfg(test)]
#[test]
fn trace_behind() {
    assert!(wrapper("", &[]).unwrap().trace_behind);
    assert!(!wrapper("", &[("CI", "true")]).unwrap().trace_behind);
    assert!(wrapper("", &[("CI", "false")]).unwrap().trace_behind);
    assert!(
        wrapper("[cache]\ntrace_behind = true\n", &[("CI", "1")])
            .unwrap()
            .trace_behind
    );
    assert!(
        !wrapper("[cache]\ntrace_behind = false\n", &[])
            .unwrap()
            .trace_behind
    );
    assert!(
        wrapper("", &[("KACHE_TRACE_BEHIND", "1"), ("CI", "true")])
            .unwrap()
            .trace_behind
    );
}

pub(crate) const BACKGROUND_STORE: Def = Def {
    name: "cache.background_store",
    var: "KACHE_BACKGROUND_STORE",
    file: true,
    form: TF_FORM,
    default: "`true`",
    help: "a compile cargo makes incremental (the crates you edit) is stored by a background process once rustc is done, so the edit loop does not wait for the hashing and copying; `false` stores before the wrapper returns, as for every other compile",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        c.background_store = i.flag(d, true)?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.background_store),
};

#[cfg(test)]
#[test]
fn background_store() {
    assert!(wrapper("", &[]).unwrap().background_store);
    assert!(
        !wrapper("[cache]\nbackground_store = false\n", &[])
            .unwrap()
            .background_store
    );
    assert!(
        !wrapper("", &[("KACHE_BACKGROUND_STORE", "0")])
            .unwrap()
            .background_store
    );
}

pub(crate) const DAEMON_AUTOSTART: Def = Def {
    name: "cache.daemon_autostart",
    var: "KACHE_DAEMON_AUTOSTART",
    file: true,
    form: TF_FORM,
    default: "`false`",
    help: "the first wrapper call that finds no daemon starts one (for this store and remote)",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        c.daemon_autostart = i.flag(d, false)?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.daemon_autostart),
};

#[cfg(test)]
#[test]
fn daemon_autostart() {
    assert!(!wrapper("", &[]).unwrap().daemon_autostart);
    assert!(
        wrapper("[cache]\ndaemon_autostart = true\n", &[])
            .unwrap()
            .daemon_autostart
    );
    assert!(
        !wrapper(
            "[cache]\ndaemon_autostart = true\n",
            &[("KACHE_DAEMON_AUTOSTART", "0")]
        )
        .unwrap()
        .daemon_autostart
    );
}

/// The default `cache.daemon_wait`.
const DEFAULT_DAEMON_WAIT: Duration = Duration::from_secs(2);

pub(crate) const DAEMON_WAIT: Def = Def {
    name: "cache.daemon_wait",
    var: "KACHE_DAEMON_WAIT",
    file: true,
    form: "a duration up to 1m, such as 500ms or 2s (0s: never wait)",
    default: "`2s`",
    help: "longest wait of a compile for a remote hit through the daemon (`500ms`, `2s`, at most `1m`; `0s`: never ask)",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        c.daemon_wait = i.text(d, DEFAULT_DAEMON_WAIT, parse_wait)?;
        Ok(())
    },
    show: |d, c, _| {
        let wait = format!("{}ms", c.daemon_wait.value.as_millis());
        d.row(wait, &c.daemon_wait)
    },
};

#[cfg(test)]
#[test]
fn daemon_wait() {
    assert_eq!(wrapper("", &[]).unwrap().daemon_wait, DEFAULT_DAEMON_WAIT);
    let w = wrapper("[cache]\ndaemon_wait = \"500ms\"\n", &[]).unwrap();
    assert_eq!(w.daemon_wait, Duration::from_millis(500));
    assert_eq!(shown(&DAEMON_WAIT, &load("", &[]).unwrap()).1, "2000ms");
    assert_eq!(parse_wait("1m"), Some(Duration::from_mins(1)));
    let e = error("", &[("KACHE_DAEMON_WAIT", "2m")]);
    assert_eq!(
        e,
        "invalid value `2m` for KACHE_DAEMON_WAIT: expected a duration up to 1m, such as 500ms or 2s (0s: never wait)"
    );
}

/// Parses a wait: `500ms`, `2s`, `1m`; at most a minute.
pub(crate) fn parse_wait(s: &str) -> Option<Duration> {
    let s = s.trim();
    let d = match s.strip_suffix("ms") {
        Some(ms) => Duration::from_millis(ms.parse().ok()?),
        None => Duration::from_secs(parse_duration(s)?),
    };
    (d <= Duration::from_mins(1)).then_some(d)
}

/// `cache.never_cache`: comma-separated in the environment, which
/// replaces the file's list; names normalised, duplicates dropped.
pub(crate) const NEVER_CACHE: Def = Def {
    name: "cache.never_cache",
    var: "KACHE_NEVER_CACHE",
    file: true,
    form: "a list of crate names such as [\"my_crate\"]",
    default: "none",
    help: "crates always compiled, never cached: `a,b` in the environment, a list in the file (the environment replaces the file's list)",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        let mut set = i.setting(d, Vec::new(), |s| {
            Ok(s.split(',').map(str::to_string).collect())
        })?;
        let whence = match &set.source {
            Source::File(p) => format!("{} in {}", d.name, p.display()),
            other => other.to_string().replace("env ", ""),
        };
        let mut names = Vec::with_capacity(set.value.len());
        for n in &set.value {
            let n = crate_name(n, &whence)?;
            if !names.contains(&n) {
                names.push(n);
            }
        }
        set.value = names;
        c.never_cache = set;
        Ok(())
    },
    show: |d, c, _| {
        let never = if c.never_cache.value.is_empty() {
            "(none)".to_string()
        } else {
            c.never_cache.value.join(",")
        };
        d.row(never, &c.never_cache)
    },
};

#[cfg(test)]
#[test]
fn never_cache() {
    let c = load(
        "[cache]\nnever_cache = [\"Napi-Gen\", \"other\", \"napi_gen\"]\n",
        &[],
    )
    .unwrap();
    assert_eq!(shown(&NEVER_CACHE, &c).1, "napi_gen,other");
    let w = wrapper(
        "[cache]\nnever_cache = [\"x\"]\n",
        &[("KACHE_NEVER_CACHE", "a-b, c")],
    )
    .unwrap();
    assert_eq!(w.never_cache, ["a_b", "c"]);
    assert!(
        error("", &[("KACHE_NEVER_CACHE", "ok,bad name")])
            .starts_with("invalid crate name `bad name` in KACHE_NEVER_CACHE: ")
    );
    let e = error("[cache]\nnever_cache = \"x\"\n", &[]);
    assert_eq!(
        e,
        "invalid value `\"x\"` for cache.never_cache in /c.toml: expected a list of crate names such as [\"my_crate\"]"
    );
    assert_eq!(shown(&NEVER_CACHE, &load("", &[]).unwrap()).1, "(none)");
}

/// A crate name as the user wrote it, normalised and checked.
fn crate_name(name: &str, whence: &str) -> Result<String> {
    match crate::store::CrateName::normalize(name.trim()) {
        Some(n) => Ok(n.into()),
        None => bail!(
            "invalid crate name `{name}` in {whence}: expected a package name such as my_crate (letters, digits, `-`, `_`)"
        ),
    }
}

/// `[cache.inputs.<crate>]`, or `KACHE_INPUTS` (`crate:env=VAR` and
/// `crate:files=GLOB` items separated by `;`), which replaces the file's
/// tables.
pub(crate) const INPUTS: Def = Def {
    name: "cache.inputs",
    var: "KACHE_INPUTS",
    file: true,
    form: "[cache.inputs.<crate>] tables with env = [..] and files = [..]",
    default: "none",
    help: "inputs rustc cannot report, per crate: `env` vars and `files` (paths or globs relative to the crate's directory; a directory means everything under it; `*`, `?` within a path component, `**` across them). Environment: `crate:env=VAR` and `crate:files=GLOB` items separated by `;` (replaces the file's tables)",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        let file = i
            .typed_or_why::<BTreeMap<String, FileInputs>>(d)
            .map_err(|(_, why)| anyhow!("invalid {}: {why}; expected {}", i.key_in(d), d.form))?;
        c.inputs = match i.env(d.var) {
            Some(v) => Setting {
                value: env_inputs(&v)?,
                source: Source::Env(d.var),
            },
            None => match file {
                Some(file) => Setting {
                    value: file_inputs(file, &i.file_name())?,
                    source: i.file_source(),
                },
                None => Setting::default_of(BTreeMap::new()),
            },
        };
        Ok(())
    },
    show: |d, c, _| d.row(format_inputs(&c.inputs.value), &c.inputs),
};

#[cfg(test)]
#[test]
fn inputs() {
    let text = "[cache.inputs.my-crate]\nenv = [\"DB\"]\nfiles = [\"sql/\", \"t/**/*.html\"]\n";
    let c = load(text, &[]).unwrap();
    assert_eq!(
        shown(&INPUTS, &c).1,
        "my_crate:env=DB;my_crate:files=sql;my_crate:files=t/**/*.html"
    );
    let w = wrapper(text, &[("KACHE_INPUTS", "x:env=FOO; Y-z:files=a;")]).unwrap();
    assert_eq!(w.inputs.keys().collect::<Vec<_>>(), ["x", "y_z"]);
    assert_eq!(w.inputs["y_z"].files, ["a"]);
    assert!(
        error("", &[("KACHE_INPUTS", "x:dirs=a")])
            .ends_with("expected `crate:env=VAR` or `crate:files=GLOB` items separated by `;`")
    );
    let e = error("[cache.inputs.x]\n", &[]);
    assert_eq!(
        e,
        "cache.inputs.x in /c.toml declares nothing; give it env = [\"VAR\"] or files = [\"path\"]"
    );
    let e = error("[cache.inputs.x]\nglobs = [\"b\"]\n", &[]);
    assert!(
        e.starts_with("invalid cache.inputs in /c.toml: unknown field `globs`"),
        "{e}"
    );
    assert!(
        e.ends_with("; expected [cache.inputs.<crate>] tables with env = [..] and files = [..]"),
        "{e}"
    );
    assert!(
        error("[cache.inputs.x]\nfiles = [\"/etc\"]\n", &[])
            .contains("relative to the crate's directory")
    );
}

/// One `[cache.inputs.<crate>]` table.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInputs {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    files: Vec<String>,
}

const INPUTS_FORM: &str = "`crate:env=VAR` or `crate:files=GLOB` items separated by `;`";

fn env_inputs(v: &str) -> Result<BTreeMap<String, CrateInputs>> {
    let mut out: BTreeMap<String, CrateInputs> = BTreeMap::new();
    for item in v.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || invalid("KACHE_INPUTS", item, INPUTS_FORM);
        let (krate, rest) = item.split_once(':').ok_or_else(bad)?;
        let (kind, value) = rest.split_once('=').ok_or_else(bad)?;
        let name = crate_name(krate, "KACHE_INPUTS")?;
        let e = out.entry(name).or_default();
        match kind.trim() {
            "env" => e.env.push(env_name(value, "KACHE_INPUTS")?),
            "files" => e.files.push(file_pattern(value, "KACHE_INPUTS")?),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// The tables of the config file at `path`.
fn file_inputs(
    file: BTreeMap<String, FileInputs>,
    path: &str,
) -> Result<BTreeMap<String, CrateInputs>> {
    let whence = format!("cache.inputs in {path}");
    let mut out: BTreeMap<String, CrateInputs> = BTreeMap::new();
    for (krate, fi) in file {
        let name = crate_name(&krate, &whence)?;
        if fi.env.is_empty() && fi.files.is_empty() {
            bail!(
                "cache.inputs.{krate} in {path} declares nothing; give it env = [\"VAR\"] or files = [\"path\"]"
            );
        }
        let e = out.entry(name).or_default();
        for v in &fi.env {
            e.env.push(env_name(v, &whence)?);
        }
        for f in &fi.files {
            e.files.push(file_pattern(f, &whence)?);
        }
    }
    Ok(out)
}

fn env_name(v: &str, whence: &str) -> Result<String> {
    let v = v.trim();
    if v.is_empty() || v.contains(['=', '\0']) || v.contains(char::is_whitespace) {
        bail!("invalid env var name `{v}` in {whence}: expected a name such as DATABASE_URL");
    }
    Ok(v.to_string())
}

fn file_pattern(v: &str, whence: &str) -> Result<String> {
    let v = v.trim();
    if v.is_empty() || v.contains('\0') || Path::new(v).is_absolute() {
        bail!(
            "invalid file pattern `{v}` in {whence}: expected a path or glob relative to the crate's directory, such as migrations or templates/**/*.html"
        );
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// The declared inputs in `KACHE_INPUTS` form, or `(none)`.
fn format_inputs(m: &BTreeMap<String, CrateInputs>) -> String {
    let items: Vec<String> = m
        .iter()
        .flat_map(|(c, i)| {
            i.env
                .iter()
                .map(move |e| format!("{c}:env={e}"))
                .chain(i.files.iter().map(move |f| format!("{c}:files={f}")))
        })
        .collect();
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(";")
    }
}
