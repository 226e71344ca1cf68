/*!
Every setting, defined once.

A `Def` is one setting as one unit: its key in the config file, its
environment variable, the form its value takes in the file, how it is
read and checked (`load`: the environment over the file over the
default), its default and its help line as the README's settings table
gives them, and how `kache config` shows it (`show`, secrets masked).
`Config::load` runs every definition in `DEFS`, `WrapperConfig::load`
only those the wrapper reads, `kache config` shows them in this order,
and the keys each table of the file takes are theirs. Adding a setting is
adding a definition here (and its field in `Config`). Each definition is
followed by its test.
*/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::file::Input;
use super::{
    Config, CrateInputs, KeySource, Row, Setting, Source, default_cache_dir, env_nonempty,
    expand_tilde, invalid,
};
use crate::units::{format_size, parse_duration, parse_size};

/// Who reads a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readers {
    /// The commands only; the wrapper never looks at it.
    Commands,
    /// The wrapper too: an invalid value fails it as it fails a command.
    Wrapper,
    /// The wrapper too, as part of the remote's identity; there a value
    /// of the wrong type in the file counts as absent.
    Identity,
}

/// One setting.
pub(crate) struct Def {
    /// Its key in the file (`cache.local_store`); for a setting only the
    /// environment holds, the name `kache config` shows.
    pub(crate) name: &'static str,
    /// Its environment variable.
    pub(crate) var: &'static str,
    /// Whether the file can hold it.
    pub(crate) file: bool,
    /// What its value in the file must be, for errors.
    pub(crate) form: &'static str,
    /// Its default, as the README's settings table says it (the test
    /// of the table holds the README to these).
    #[cfg_attr(not(test), expect(dead_code, reason = "documentation"))]
    pub(crate) default: &'static str,
    /// What it does: the README's help line.
    #[cfg_attr(not(test), expect(dead_code, reason = "documentation"))]
    pub(crate) help: &'static str,
    pub(crate) readers: Readers,
    /// Reads it (the environment, else the file, else the default),
    /// checks it and stores it in the `Config`.
    pub(super) load: fn(&Def, &mut Input<'_>, &mut Config) -> Result<()>,
    /// Its row in `kache config`, given the credentials' (value, source)
    /// (the remote resolves them).
    pub(super) show: fn(&Def, &Config, &(String, String)) -> Row,
}

impl Def {
    /// Its row, showing `value` and the source of `s`.
    fn row<T>(&self, value: String, s: &Setting<T>) -> Row {
        (self.name, self.var, value, s.source.to_string())
    }

    /// Its row, showing the value as it displays.
    fn shown<T: std::fmt::Display>(&self, s: &Setting<T>) -> Row {
        self.row(s.value.to_string(), s)
    }

    /// The row of a setting only the environment holds.
    fn env_row(&self, default: &str) -> Row {
        let (v, s) = match env_nonempty(self.var) {
            Some(v) => (v, format!("env {}", self.var)),
            None => (default.to_string(), "default".to_string()),
        };
        (self.name, self.var, v, s)
    }
}

/// Every setting, in the order `kache config` shows them.
pub(crate) const DEFS: [&Def; 23] = [
    &LOCAL_STORE,
    &LOCAL_MAX_SIZE,
    &BUCKET,
    &ENDPOINT,
    &REGION,
    &PREFIX,
    &PROFILE,
    &TIMEOUT,
    &S3_CONCURRENCY,
    &COMPRESSION_LEVEL,
    &CACHE_EXECUTABLES,
    &CACHE_C,
    &DAEMON_AUTOSTART,
    &DAEMON_WAIT,
    &NEVER_CACHE,
    &INPUTS,
    &CREDENTIALS,
    &SIGNING_KEY_FILE,
    &TRUSTED_KEYS,
    &READ_ONLY,
    &DISABLED,
    &PROGRESS,
    &LOG,
];

/// The settings the commands load from this file text and environment.
#[cfg(test)]
fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config> {
    let f = super::file::ConfigFile::parse(Some("/c.toml".into()), text.to_string())?;
    Config::from_input(Input::commands(f).with_vars(vars))
}

/// The same, as the wrapper loads them.
#[cfg(test)]
fn wrapper(text: &str, vars: &[(&str, &str)]) -> Result<super::WrapperConfig> {
    let f = super::file::ConfigFile::parse(Some("/c.toml".into()), text.to_string())?;
    super::WrapperConfig::from_input(Input::wrapper(f).with_vars(vars))
}

/// The error loading gives, as one line.
#[cfg(test)]
fn error(text: &str, vars: &[(&str, &str)]) -> String {
    format!("{:#}", load(text, vars).unwrap_err())
}

/// `d`'s row in `kache config`: (env var, value, source).
#[cfg(test)]
fn shown(d: &Def, c: &Config) -> (&'static str, String, String) {
    let (name, var, value, source) = (d.show)(d, c, &("AKIA****".into(), "env X".into()));
    assert_eq!(name, d.name);
    (var, value, source)
}

#[cfg(test)]
#[test]
fn the_readme_lists_every_setting_as_defined() {
    let readme = include_str!("../../README.md");
    for d in DEFS {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}`", d.var)))
            .unwrap_or_else(|| panic!("README has no row for {}", d.var));
        let key = if d.file { d.name } else { "(env only)" };
        let default = if d.default.is_empty() {
            "|".to_string()
        } else {
            format!("| {} |", d.default)
        };
        let tail = format!("{default} {} |", d.help);
        assert!(
            row.contains(key) && row.ends_with(&tail),
            "{row}\n{key} {tail}"
        );
    }
}

#[cfg(test)]
#[test]
fn names_and_variables_are_unique() {
    for (n, d) in DEFS.iter().enumerate() {
        assert!(
            DEFS[..n].iter().all(|e| e.name != d.name && e.var != d.var),
            "{}",
            d.name
        );
        assert_eq!(d.file, d.name.starts_with("cache."), "{}", d.name);
    }
}

pub(super) const BOOL_FORM: &str = "true or false (also 1/0, yes/no, on/off)";
const TF_FORM: &str = "true or false";
const STRING_FORM: &str = "a string in quotes";

/// A string that may be absent (bucket, endpoint, profile).
fn optional(d: &Def, i: &mut Input<'_>) -> Result<Setting<Option<String>>> {
    let file = i.typed::<String>(d)?;
    i.pick(d, file.map(Some), None, |s| Ok(Some(s.to_string())))
}

/// `cache.local_store`: must be absolute, or every crate's compile (each
/// run in its own directory) would get its own store.
pub(super) const LOCAL_STORE: Def = Def {
    name: "cache.local_store",
    var: "KACHE_CACHE_DIR",
    file: true,
    form: "an absolute path as a string",
    default: "`$XDG_CACHE_HOME/kache`, else `~/.cache/kache`",
    help: "the local store; must be an absolute path (`~/` is expanded in the file)",
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

const LOCAL_MAX_SIZE: Def = Def {
    name: "cache.local_max_size",
    var: "KACHE_MAX_SIZE",
    file: true,
    form: "a size such as 512MiB, 10GB or 50GiB",
    default: "`50GiB`",
    help: "size `kache gc` evicts down to",
    readers: Readers::Commands,
    load: |d, i, c| {
        c.max_size = i.text(d, 50 << 30, parse_size)?;
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
    // The wrapper never reads it.
    wrapper(
        "[cache]\nlocal_max_size = \"12XB\"\n",
        &[("KACHE_MAX_SIZE", "x")],
    )
    .unwrap();
}

pub(super) const BUCKET: Def = Def {
    name: "cache.remote.bucket",
    var: "KACHE_S3_BUCKET",
    file: true,
    form: STRING_FORM,
    default: "none (no remote)",
    help: "bucket for `kache sync`",
    readers: Readers::Identity,
    load: |d, i, c| {
        c.bucket = optional(d, i)?;
        Ok(())
    },
    show: |d, c, _| d.row(or_none(c.bucket.value.as_ref()), &c.bucket),
};

#[cfg(test)]
#[test]
fn bucket() {
    let c = load("", &[]).unwrap();
    assert_eq!(shown(&BUCKET, &c).1, "(none)");
    let c = load(
        "[cache.remote]\nbucket = \"f\"\n",
        &[("KACHE_S3_BUCKET", "e")],
    )
    .unwrap();
    assert_eq!(c.bucket.value.as_deref(), Some("e"));
    let e = error("[cache.remote]\nbucket = 7\n", &[]);
    assert_eq!(
        e,
        "invalid value `7` for cache.remote.bucket in /c.toml: expected a string in quotes"
    );
    // For the wrapper a bucket of the wrong type is no bucket.
    assert_eq!(
        wrapper("[cache.remote]\nbucket = 7\n", &[]).unwrap().remote,
        None
    );
}

fn or_none(v: Option<&String>) -> String {
    v.map_or_else(|| "(none)".into(), Clone::clone)
}

/// `cache.remote.endpoint`: the commands check it is a URL; the wrapper
/// only compares it.
const ENDPOINT: Def = Def {
    name: "cache.remote.endpoint",
    var: "KACHE_S3_ENDPOINT",
    file: true,
    form: STRING_FORM,
    default: "AWS regional endpoint",
    help: "`https://...` of any S3 service",
    readers: Readers::Identity,
    load: |d, i, c| {
        c.endpoint = optional(d, i)?;
        if let Some(e) = &c.endpoint.value
            && !i.is_wrapper()
        {
            validate_endpoint(e).with_context(|| {
                format!("invalid S3 endpoint `{e}` (from {})", c.endpoint.source)
            })?;
        }
        Ok(())
    },
    show: |d, c, _| {
        let endpoint = c
            .endpoint
            .value
            .clone()
            .unwrap_or_else(|| format!("(AWS: https://s3.{}.amazonaws.com)", c.region.value));
        d.row(endpoint, &c.endpoint)
    },
};

#[cfg(test)]
#[test]
fn endpoint() {
    let c = load("[cache.remote]\nregion = \"r\"\n", &[]).unwrap();
    assert_eq!(shown(&ENDPOINT, &c).1, "(AWS: https://s3.r.amazonaws.com)");
    let e = error("", &[("KACHE_S3_ENDPOINT", "localhost:9000")]);
    assert_eq!(
        e,
        "invalid S3 endpoint `localhost:9000` (from env KACHE_S3_ENDPOINT): it must start with http:// or https://"
    );
    let e = error("[cache.remote]\nendpoint = \"http:// x\"\n", &[]);
    assert!(e.contains("(from file /c.toml): it has no host"), "{e}");
    // The wrapper only compares it.
    let w = wrapper("[cache.remote]\nbucket = \"b\"\nendpoint = \"nope\"\n", &[]).unwrap();
    assert_eq!(w.remote.as_deref(), Some("nope|us-east-1|b|artifacts"));
}

fn validate_endpoint(e: &str) -> Result<()> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| anyhow!("it must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(' ') {
        bail!("it has no host; expected a URL such as https://s3.example.com");
    }
    Ok(())
}

const REGION: Def = Def {
    name: "cache.remote.region",
    var: "KACHE_S3_REGION",
    file: true,
    form: STRING_FORM,
    default: "`us-east-1`",
    help: "signing region",
    readers: Readers::Identity,
    load: |d, i, c| {
        c.region = i.setting(d, "us-east-1".to_string(), |s| Ok(s.to_string()))?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.region),
};

#[cfg(test)]
#[test]
fn region() {
    let c = load("", &[]).unwrap();
    assert_eq!(
        shown(&REGION, &c),
        ("KACHE_S3_REGION", "us-east-1".into(), "default".into())
    );
    let c = load(
        "[cache.remote]\nregion = \"f\"\n",
        &[("KACHE_S3_REGION", "e")],
    )
    .unwrap();
    assert_eq!(
        shown(&REGION, &c),
        ("KACHE_S3_REGION", "e".into(), "env KACHE_S3_REGION".into())
    );
}

/// `cache.remote.prefix`, without leading or trailing `/`.
const PREFIX: Def = Def {
    name: "cache.remote.prefix",
    var: "KACHE_S3_PREFIX",
    file: true,
    form: STRING_FORM,
    default: "`artifacts`",
    help: "key prefix in the bucket",
    readers: Readers::Identity,
    load: |d, i, c| {
        let p = i.setting(d, "artifacts".to_string(), |s| Ok(s.to_string()))?;
        c.prefix = Setting {
            value: p.value.trim_matches('/').to_string(),
            source: p.source,
        };
        Ok(())
    },
    show: |d, c, _| d.shown(&c.prefix),
};

#[cfg(test)]
#[test]
fn prefix() {
    let c = load("[cache.remote]\nprefix = \"/ci/\"\n", &[]).unwrap();
    assert_eq!(c.prefix.value, "ci");
    let c = load("", &[("KACHE_S3_PREFIX", "a/b/")]).unwrap();
    assert_eq!(c.prefix.value, "a/b");
    assert_eq!(load("", &[]).unwrap().prefix.value, "artifacts");
}

const PROFILE: Def = Def {
    name: "cache.remote.profile",
    var: "KACHE_S3_PROFILE",
    file: true,
    form: STRING_FORM,
    default: "see credentials",
    help: "profile in the AWS credentials file",
    readers: Readers::Commands,
    load: |d, i, c| {
        c.profile = optional(d, i)?;
        Ok(())
    },
    show: |d, c, _| d.row(or_none(c.profile.value.as_ref()), &c.profile),
};

#[cfg(test)]
#[test]
fn profile() {
    let c = load("[cache.remote]\nprofile = \"ci\"\n", &[]).unwrap();
    assert_eq!(shown(&PROFILE, &c).1, "ci");
    assert_eq!(shown(&PROFILE, &load("", &[]).unwrap()).1, "(none)");
    let c = load("", &[("KACHE_S3_PROFILE", "p")]).unwrap();
    assert_eq!(c.profile.value.as_deref(), Some("p"));
}

/// The default `cache.remote.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_mins(1);

/// `cache.remote.timeout`: how long one S3 request may wait on the
/// network before it counts as a transient failure.
const TIMEOUT: Def = Def {
    name: "cache.remote.timeout",
    var: "KACHE_S3_TIMEOUT",
    file: true,
    form: "a duration of at least 1s, such as 30s or 2m",
    default: "`60s`",
    help: "a request that makes no progress this long is retried",
    readers: Readers::Commands,
    load: |d, i, c| {
        c.timeout = i.text(d, DEFAULT_TIMEOUT, |s| {
            parse_duration(s)
                .filter(|&n| n >= 1)
                .map(Duration::from_secs)
        })?;
        Ok(())
    },
    show: |d, c, _| d.row(format!("{}s", c.timeout.value.as_secs()), &c.timeout),
};

#[cfg(test)]
#[test]
fn timeout() {
    assert_eq!(shown(&TIMEOUT, &load("", &[]).unwrap()).1, "60s");
    let c = load("[cache.remote]\ntimeout = \"2m\"\n", &[]).unwrap();
    assert_eq!(shown(&TIMEOUT, &c).1, "120s");
    let e = error("", &[("KACHE_S3_TIMEOUT", "0s")]);
    assert_eq!(
        e,
        "invalid value `0s` for KACHE_S3_TIMEOUT: expected a duration of at least 1s, such as 30s or 2m"
    );
}

const S3_CONCURRENCY: Def = Def {
    name: "cache.s3_concurrency",
    var: "KACHE_S3_CONCURRENCY",
    file: true,
    form: "a whole number from 1 to 1024",
    default: "`16`",
    help: "requests in flight during sync (1..=1024)",
    readers: Readers::Commands,
    load: |d, i, c| {
        c.s3_concurrency = i.text(d, 16, |s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1024).contains(n))
        })?;
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

const COMPRESSION_LEVEL: Def = Def {
    name: "cache.compression_level",
    var: "KACHE_COMPRESSION_LEVEL",
    file: true,
    form: "a zstd level from 1 to 22",
    default: "`3`",
    help: "zstd level of uploaded archives (1..=22)",
    readers: Readers::Commands,
    load: |d, i, c| {
        c.compression_level = i.text(d, 3, |s| {
            s.trim()
                .parse::<i32>()
                .ok()
                .filter(|n| (1..=22).contains(n))
        })?;
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

pub(super) const CACHE_EXECUTABLES: Def = Def {
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
pub(super) const CACHE_C: Def = Def {
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

const DAEMON_AUTOSTART: Def = Def {
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

const DAEMON_WAIT: Def = Def {
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
pub(super) fn parse_wait(s: &str) -> Option<Duration> {
    let s = s.trim();
    let d = match s.strip_suffix("ms") {
        Some(ms) => Duration::from_millis(ms.parse().ok()?),
        None => Duration::from_secs(parse_duration(s)?),
    };
    (d <= Duration::from_mins(1)).then_some(d)
}

/// `cache.never_cache`: comma-separated in the environment, which
/// replaces the file's list; names normalised, duplicates dropped.
const NEVER_CACHE: Def = Def {
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
const INPUTS: Def = Def {
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

/// S3 credentials: only the environment or the AWS credentials file
/// holds them, resolved when needed (`remote::credentials`).
const CREDENTIALS: Def = Def {
    name: "credentials",
    var: "KACHE_S3_ACCESS_KEY",
    file: false,
    form: "",
    default: "",
    help: "credentials",
    readers: Readers::Commands,
    load: |_, _, _| Ok(()),
    show: |d, _, (value, source)| (d.name, d.var, value.clone(), source.clone()),
};

#[cfg(test)]
#[test]
fn credentials() {
    let c = load("", &[]).unwrap();
    assert_eq!(
        shown(&CREDENTIALS, &c),
        ("KACHE_S3_ACCESS_KEY", "AKIA****".into(), "env X".into())
    );
}

/// `KACHE_SIGNING_KEY` (the key's text), `KACHE_SIGNING_KEY_FILE`, or
/// `cache.remote.signing_key_file`. Both variables at once is an error:
/// which key signs must never be a guess.
const SIGNING_KEY_FILE: Def = Def {
    name: "cache.remote.signing_key_file",
    var: "KACHE_SIGNING_KEY_FILE",
    file: true,
    form: STRING_FORM,
    default: "none (uploads unsigned)",
    help: "the secret key (`kache key generate`) that signs every entry `kache sync --push` and the daemon upload",
    readers: Readers::Commands,
    load: |d, i, c| {
        let file = i.typed::<String>(d)?;
        c.signing_key = match (i.env("KACHE_SIGNING_KEY"), i.env(d.var)) {
            (Some(_), Some(_)) => bail!(
                "both KACHE_SIGNING_KEY and KACHE_SIGNING_KEY_FILE are set: set one (the key's text, or the path of its file)"
            ),
            (Some(t), None) => Setting {
                value: Some(KeySource::Env(t)),
                source: Source::Env("KACHE_SIGNING_KEY"),
            },
            (None, Some(p)) => Setting {
                value: Some(KeySource::File(PathBuf::from(p))),
                source: Source::Env(d.var),
            },
            (None, None) => match file {
                Some(p) => Setting {
                    value: Some(KeySource::File(PathBuf::from(expand_tilde(&p)))),
                    source: i.file_source(),
                },
                None => Setting::default_of(None),
            },
        };
        Ok(())
    },
    show: |d, c, _| {
        let (var, key) = match &c.signing_key.value {
            None => (d.var, "(none: uploads are not signed)".to_string()),
            Some(ks) => {
                let (var, shown) = match ks {
                    KeySource::File(p) => (d.var, p.display().to_string()),
                    KeySource::Env(_) => ("KACHE_SIGNING_KEY", "****".to_string()),
                };
                match c.signer() {
                    Ok(Some(k)) => (var, format!("{shown} (signs as {})", k.public())),
                    Ok(None) => (var, shown),
                    Err(e) => (var, format!("{shown} (error: {e:#})")),
                }
            }
        };
        (d.name, var, key, c.signing_key.source.to_string())
    },
};

#[cfg(test)]
#[test]
fn signing_key_file() {
    let c = load("", &[]).unwrap();
    assert_eq!(
        shown(&SIGNING_KEY_FILE, &c).1,
        "(none: uploads are not signed)"
    );
    let c = load("", &[("KACHE_SIGNING_KEY", "secret text")]).unwrap();
    let (var, value, source) = shown(&SIGNING_KEY_FILE, &c);
    assert_eq!(
        (var, source.as_str()),
        ("KACHE_SIGNING_KEY", "env KACHE_SIGNING_KEY")
    );
    assert!(
        value.starts_with("**** (error: ") && !value.contains("secret text"),
        "{value}"
    );
    let c = load("[cache.remote]\nsigning_key_file = \"/k\"\n", &[]).unwrap();
    assert!(matches!(&c.signing_key.value, Some(KeySource::File(p)) if p == Path::new("/k")));
    let e = error(
        "",
        &[("KACHE_SIGNING_KEY", "t"), ("KACHE_SIGNING_KEY_FILE", "/k")],
    );
    assert!(
        e.starts_with("both KACHE_SIGNING_KEY and KACHE_SIGNING_KEY_FILE are set"),
        "{e}"
    );
}

/// `cache.remote.trusted_keys`, or `KACHE_TRUSTED_KEYS`
/// (`name:base64,...`); duplicates dropped.
const TRUSTED_KEYS: Def = Def {
    name: "cache.remote.trusted_keys",
    var: "KACHE_TRUSTED_KEYS",
    file: true,
    form: "a list of keys such as [\"ci:BASE64\"]",
    default: "none (entries not verified)",
    help: "public keys `name:base64`, comma-separated (a list in the file): pulls and remote hits import only entries one of them signed",
    readers: Readers::Commands,
    load: |d, i, c| {
        let file = i.typed::<Vec<String>>(d)?;
        c.trusted_keys = match (i.env(d.var), file) {
            (Some(v), _) => Setting {
                value: trusted(v.split(','), d.var)?,
                source: Source::Env(d.var),
            },
            (None, Some(items)) => Setting {
                value: trusted(items.iter().map(String::as_str), &i.key_in(d))?,
                source: i.file_source(),
            },
            (None, None) => Setting::default_of(Vec::new()),
        };
        Ok(())
    },
    show: |d, c, _| {
        let keys = &c.trusted_keys.value;
        let shown = if keys.is_empty() {
            "(none: pulled entries are not verified)".to_string()
        } else {
            let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
            keys.join(",")
        };
        d.row(shown, &c.trusted_keys)
    },
};

#[cfg(test)]
#[test]
fn trusted_keys() {
    let c = load("", &[]).unwrap();
    assert_eq!(
        shown(&TRUSTED_KEYS, &c).1,
        "(none: pulled entries are not verified)"
    );
    let e = error("", &[("KACHE_TRUSTED_KEYS", "nonsense")]);
    assert!(
        e.starts_with("invalid trusted key in KACHE_TRUSTED_KEYS: "),
        "{e}"
    );
    let e = error("[cache.remote]\ntrusted_keys = [\"nonsense\"]\n", &[]);
    assert!(
        e.starts_with("invalid trusted key in cache.remote.trusted_keys in /c.toml: "),
        "{e}"
    );
    assert!(
        load("", &[("KACHE_TRUSTED_KEYS", " , ")])
            .unwrap()
            .trusted_keys
            .value
            .is_empty()
    );
}

fn trusted<'a>(
    items: impl Iterator<Item = &'a str>,
    whence: &str,
) -> Result<Vec<crate::trust::TrustedKey>> {
    let mut out: Vec<crate::trust::TrustedKey> = Vec::new();
    for i in items.map(str::trim).filter(|i| !i.is_empty()) {
        let k = crate::trust::parse_trusted(i).map_err(|why| {
            anyhow!(
                "invalid trusted key in {whence}: {why}; expected {}",
                crate::trust::TRUSTED_FORM
            )
        })?;
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

/// `cache.remote.read_only`: a read-only runner never writes to the
/// bucket, and its wrapper records no uploads for the daemon.
const READ_ONLY: Def = Def {
    name: "cache.remote.read_only",
    var: "KACHE_REMOTE_READ_ONLY",
    file: true,
    form: TF_FORM,
    default: "`false`",
    help: "never write to the bucket: `kache sync` only pulls, `--push` uploads nothing (exit 0), the daemon never uploads, `kache gc --remote` refuses",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        c.read_only = i.flag(d, false)?;
        Ok(())
    },
    show: |d, c, _| d.shown(&c.read_only),
};

#[cfg(test)]
#[test]
fn read_only() {
    assert!(!wrapper("", &[]).unwrap().read_only);
    assert!(
        wrapper("[cache.remote]\nread_only = true\n", &[])
            .unwrap()
            .read_only
    );
    let c = load("", &[("KACHE_REMOTE_READ_ONLY", "1")]).unwrap();
    assert_eq!(c.read_only.source, Source::Env("KACHE_REMOTE_READ_ONLY"));
}

/// Read where it is used (`main`); shown here.
const DISABLED: Def = Def {
    name: "disabled",
    var: "KACHE_DISABLED",
    file: false,
    form: "",
    default: "off",
    help: "`1`: pure pass-through to rustc",
    readers: Readers::Commands,
    load: |_, _, _| Ok(()),
    show: |d, _, _| d.env_row("off"),
};

/// Read where it is used (the reporters); shown here.
const PROGRESS: Def = Def {
    name: "progress",
    var: "KACHE_PROGRESS",
    file: false,
    form: "",
    default: "sync: auto; wrapper: off",
    help: "`1` forces progress lines, `0` silences them",
    readers: Readers::Commands,
    load: |_, _, _| Ok(()),
    show: |d, _, _| d.env_row("auto"),
};

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Only its value is checked: kache prints warnings and errors only.
const LOG: Def = Def {
    name: "log",
    var: "KACHE_LOG",
    file: false,
    form: "one of off, error, warn, info, debug, trace",
    default: "`warn`",
    help: "log level (`off`, `error`, `warn`, `info`, `debug`, `trace`); kache prints only warnings and errors today, so only the value is checked",
    readers: Readers::Commands,
    load: |d, i, _| match i.env(d.var) {
        Some(v) if !LOG_LEVELS.contains(&v.trim().to_ascii_lowercase().as_str()) => {
            Err(invalid(d.var, &v, d.form))
        }
        _ => Ok(()),
    },
    show: |d, _, _| d.env_row("warn"),
};

#[cfg(test)]
#[test]
fn log() {
    load("", &[("KACHE_LOG", "DEBUG")]).unwrap();
    let e = error("", &[("KACHE_LOG", "loud")]);
    assert_eq!(
        e,
        "invalid value `loud` for KACHE_LOG: expected one of off, error, warn, info, debug, trace"
    );
    // The wrapper never reads it.
    wrapper("", &[("KACHE_LOG", "loud")]).unwrap();
}
