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
adding a definition (in `cache` or `remote` by its table, here if only
the environment holds it) and its field in `Config`. Each definition is
followed by its test.
*/

pub(super) mod cache;
pub(super) mod remote;

use anyhow::Result;

use super::file::Input;
use super::{Config, Row, Setting, env_nonempty, invalid};

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

use cache::{
    BACKGROUND_STORE, CACHE_BUILD_SCRIPTS, CACHE_C, CACHE_EXECUTABLES, COMPRESSION_LEVEL,
    DAEMON_AUTOSTART, DAEMON_WAIT, INPUTS, LOCAL_MAX_SIZE, LOCAL_STORE, NEVER_CACHE,
    S3_CONCURRENCY, TRACE_BEHIND,
};
use remote::{
    BUCKET, ENDPOINT, PREFIX, PROFILE, READ_ONLY, REGION, SIGNING_KEY_FILE, TIMEOUT, TRUSTED_KEYS,
};

/// Every setting, in the order `kache config` shows them.
pub(crate) const DEFS: [&Def; 27] = [
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
    &CACHE_BUILD_SCRIPTS,
    &TRACE_BEHIND,
    &BACKGROUND_STORE,
    &DAEMON_AUTOSTART,
    &DAEMON_WAIT,
    &NEVER_CACHE,
    &INPUTS,
    &CREDENTIALS,
    &SIGNING_KEY_FILE,
    &TRUSTED_KEYS,
    &READ_ONLY,
    &BASE_DIR,
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
    let readme = include_str!("../../../README.md");
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
pub(super) const TF_FORM: &str = "true or false";
pub(super) const STRING_FORM: &str = "a string in quotes";

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

/// Read where it is used (`wrapper::paths::workspace_root`); shown here.
const BASE_DIR: Def = Def {
    name: "base_dir",
    var: "KACHE_BASE_DIR",
    file: false,
    form: "",
    default: "the git work tree",
    help: "compiles outside cargo (CMake, make): the directory named through `/kache-ws`, so checkouts at different paths share entries; an absolute path (else the enclosing git work tree, else the working directory)",
    readers: Readers::Commands,
    load: |_, _, _| Ok(()),
    show: |d, _, _| d.env_row("the git work tree"),
};

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
