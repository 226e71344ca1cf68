/*!
Settings: environment over the config file over defaults.

Every setting remembers where its value came from so `kache config` can
say so. Values are validated here, once; an invalid value is an error that
names the variable or key and the accepted form. Credentials are resolved
lazily (only `kache sync` needs them) and never printed: their `Debug`
masks the secret.
*/

use std::collections::BTreeMap;
use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::units::{format_size, parse_duration, parse_size};

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
        }
    }
}

/// A value and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) source: Source,
}

/// The validated settings of one kache run.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) file: Option<PathBuf>,
    pub(crate) cache_dir: Setting<PathBuf>,
    pub(crate) max_size: Setting<u64>,
    pub(crate) bucket: Setting<Option<String>>,
    pub(crate) endpoint: Setting<Option<String>>,
    pub(crate) region: Setting<String>,
    pub(crate) prefix: Setting<String>,
    pub(crate) profile: Setting<Option<String>>,
    /// How long one S3 request may wait on the network (connect, send,
    /// each read or write of the body, the response head) before it
    /// counts as a transient failure.
    pub(crate) timeout: Setting<Duration>,
    pub(crate) s3_concurrency: Setting<usize>,
    pub(crate) compression_level: Setting<i32>,
    pub(crate) cache_executables: Setting<bool>,
    /// C, C++ and assembler compiles are cached.
    pub(crate) cache_c: Setting<bool>,
    /// Build-script runs are cached.
    pub(crate) cache_build_scripts: Setting<bool>,
    /// The first wrapper call of a build starts `kache daemon`.
    pub(crate) daemon_autostart: Setting<bool>,
    /// How long a wrapper waits for the daemon to fetch a remote hit.
    pub(crate) daemon_wait: Setting<Duration>,
    /// Crates never cached (normalised names).
    pub(crate) never_cache: Setting<Vec<String>>,
    /// Inputs the user declares per crate (normalised names).
    pub(crate) inputs: Setting<BTreeMap<String, CrateInputs>>,
    /// Where the key that signs uploads comes from (read when needed).
    pub(crate) signing_key: Setting<Option<KeySource>>,
    /// Pulls and remote hits import only entries signed by one of these.
    pub(crate) trusted_keys: Setting<Vec<crate::trust::TrustedKey>>,
    /// Never write to the bucket (pull-request jobs).
    pub(crate) read_only: Setting<bool>,
}

/// Where the signing key is: a file, or the file's text in
/// `KACHE_SIGNING_KEY` (a CI secret). `Debug` never shows the text.
#[derive(Clone)]
pub(crate) enum KeySource {
    File(PathBuf),
    Env(String),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "File({})", p.display()),
            KeySource::Env(_) => f.write_str("Env(****)"),
        }
    }
}

/// Inputs a user declares for one crate, beyond what rustc reports: env
/// vars, and files, directories or globs relative to the crate's
/// `CARGO_MANIFEST_DIR` (a directory means everything under it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CrateInputs {
    pub(crate) env: Vec<String>,
    pub(crate) files: Vec<String>,
}

/// The config file: one typed model, read once, for every command and
/// for the wrapper. Each key holds its value, or the value as written when
/// it has the wrong type, so that reading a setting (not reading the
/// file) is what fails: the wrapper reads only its own settings, and an
/// invalid value of another must not change how a compile runs. Unknown
/// keys are ignored here; the commands reject them (`deny_unknown`), the
/// wrapper does not look.
#[derive(Default, serde::Deserialize)]
struct FileDoc {
    #[serde(default)]
    cache: FileCache,
}

/// The `[cache]` table.
#[derive(Default, serde::Deserialize)]
struct FileCache {
    #[serde(default)]
    local_store: Key<String>,
    local_max_size: Option<toml::Value>,
    s3_concurrency: Option<toml::Value>,
    compression_level: Option<toml::Value>,
    #[serde(default)]
    cache_executables: Key<bool>,
    #[serde(default)]
    cache_c: Key<bool>,
    #[serde(default)]
    cache_build_scripts: Key<bool>,
    #[serde(default)]
    daemon_autostart: Key<bool>,
    daemon_wait: Option<toml::Value>,
    #[serde(default)]
    never_cache: Key<Vec<String>>,
    #[serde(default)]
    inputs: Key<BTreeMap<String, FileInputs>>,
    #[serde(default)]
    remote: FileRemote,
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

/// The `[cache.remote]` table.
#[derive(Default, serde::Deserialize)]
struct FileRemote {
    #[serde(default)]
    bucket: Key<String>,
    #[serde(default)]
    endpoint: Key<String>,
    #[serde(default)]
    region: Key<String>,
    #[serde(default)]
    prefix: Key<String>,
    #[serde(default)]
    profile: Key<String>,
    timeout: Option<toml::Value>,
    #[serde(default)]
    signing_key_file: Key<String>,
    #[serde(default)]
    trusted_keys: Key<Vec<String>>,
    #[serde(default)]
    read_only: Key<bool>,
}

/// The keys of each table, for the error a typo gets.
const CACHE_KEYS: [&str; 12] = [
    "local_store",
    "local_max_size",
    "s3_concurrency",
    "compression_level",
    "cache_executables",
    "cache_c",
    "cache_build_scripts",
    "daemon_autostart",
    "daemon_wait",
    "never_cache",
    "inputs",
    "remote",
];
const REMOTE_KEYS: [&str; 9] = [
    "bucket",
    "endpoint",
    "region",
    "prefix",
    "profile",
    "timeout",
    "signing_key_file",
    "trusted_keys",
    "read_only",
];

/// One key of the file: absent, given with the key's type, or given with
/// another type (kept as written, with the reason it does not fit).
#[derive(Default)]
enum Key<T> {
    #[default]
    Absent,
    Given(T),
    Wrong(toml::Value, String),
}

impl<'de, T: serde::de::DeserializeOwned> serde::Deserialize<'de> for Key<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = <toml::Value as serde::Deserialize>::deserialize(d)?;
        Ok(match v.clone().try_into::<T>() {
            Ok(t) => Key::Given(t),
            Err(e) => Key::Wrong(v, e.message().trim().replace('\n', " ")),
        })
    }
}

impl<T> Key<T> {
    /// The value, `None` if absent; a wrong type is an error that names
    /// the key (`cache.x in FILE`) and the accepted form.
    fn get(self, key: &str, form: &str) -> Result<Option<T>> {
        match self {
            Key::Absent => Ok(None),
            Key::Given(t) => Ok(Some(t)),
            Key::Wrong(v, _) => Err(invalid(key, &v.to_string(), form)),
        }
    }

    /// The value if it has the key's type (the wrapper's view of keys it
    /// only passes on: the daemon's remote identity).
    fn lenient(self) -> Option<T> {
        match self {
            Key::Given(t) => Some(t),
            Key::Absent | Key::Wrong(..) => None,
        }
    }
}

/// Where the config file is (if anywhere), for sources and errors.
struct ConfigFile {
    path: Option<PathBuf>,
    /// The file's text (empty without a file), for `deny_unknown`.
    text: String,
}

impl ConfigFile {
    /// Reads the file at `config_path()`; a missing file is an empty one,
    /// a file that is not TOML is an error.
    fn read() -> Result<(ConfigFile, FileDoc)> {
        let path = config_path();
        let text = match &path {
            Some(p) => read_text(p)?.unwrap_or_default(),
            None => String::new(),
        };
        ConfigFile::parse(path, text)
    }

    fn parse(path: Option<PathBuf>, text: String) -> Result<(ConfigFile, FileDoc)> {
        let doc = toml::from_str::<FileDoc>(&text)
            .map_err(|e| malformed(path.as_deref().unwrap_or(Path::new("")), &text, &e))?;
        Ok((ConfigFile { path, text }, doc))
    }

    fn source(&self) -> Source {
        Source::File(self.path.clone().unwrap_or_default())
    }

    fn name(&self) -> String {
        self.path
            .as_deref()
            .unwrap_or(Path::new(""))
            .display()
            .to_string()
    }

    /// `cache.<k> in FILE`, as errors name a key.
    fn key(&self, k: &str) -> String {
        format!("cache.{k} in {}", self.name())
    }

    /// `cache.remote.<k> in FILE`.
    fn remote_key(&self, k: &str) -> String {
        format!("cache.remote.{k} in {}", self.name())
    }

    /// Unknown keys (a typo) are an error for the commands. The
    /// wrapper never calls this: it reads the file once, without them.
    fn deny_unknown(&self) -> Result<()> {
        let Ok(top) = self.text.parse::<toml::Table>() else {
            return Ok(()); // read() already parsed it
        };
        let table = |v: Option<&toml::Value>| v.and_then(toml::Value::as_table).cloned();
        let cache = table(top.get("cache")).unwrap_or_default();
        let remote = table(cache.get("remote")).unwrap_or_default();
        let unknown = |t: &toml::Table, known: &[&str]| {
            t.keys().find(|k| !known.contains(&k.as_str())).cloned()
        };
        let found = unknown(&top, &["cache"])
            .map(|k| (k, "[cache] (every setting is in it)".to_string()))
            .or_else(|| {
                unknown(&cache, &CACHE_KEYS).map(|k| (format!("cache.{k}"), CACHE_KEYS.join(", ")))
            })
            .or_else(|| {
                unknown(&remote, &REMOTE_KEYS)
                    .map(|k| (format!("cache.remote.{k}"), REMOTE_KEYS.join(", ")))
            });
        match found {
            Some((key, expected)) => bail!(
                "unknown key `{key}` in config file {}{}: expected one of {expected}",
                self.name(),
                self.line_of(key.rsplit('.').next().unwrap_or(&key))
                    .map(|n| format!(", line {n}"))
                    .unwrap_or_default()
            ),
            None => Ok(()),
        }
    }

    /// The line (from 1) where `key` is set, for an error to point at.
    fn line_of(&self, key: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(['=', '.']))
                    || l.trim() == format!("[{key}]")
            })
            .map(|i| i + 1)
    }
}

/// The config file path: `$KACHE_CONFIG`, else
/// `$XDG_CONFIG_HOME/kache/config.toml`, else `~/.config/kache/config.toml`.
pub(crate) fn config_path() -> Option<PathBuf> {
    if let Some(p) = env_nonempty("KACHE_CONFIG") {
        return Some(PathBuf::from(p));
    }
    if let Some(x) = env_nonempty("XDG_CONFIG_HOME") {
        return Some(Path::new(&x).join("kache/config.toml"));
    }
    home().map(|h| h.join(".config/kache/config.toml"))
}

fn home() -> Option<PathBuf> {
    env_nonempty("HOME").map(PathBuf::from)
}

pub(crate) fn env_nonempty(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn default_cache_dir() -> PathBuf {
    // The XDG spec: a relative value is invalid and ignored.
    if let Some(x) = env_nonempty("XDG_CACHE_HOME").filter(|x| Path::new(x).is_absolute()) {
        return Path::new(&x).join("kache");
    }
    match home() {
        Some(h) => h.join(".cache/kache"),
        None => env::temp_dir().join("kache"),
    }
}

/// Only the settings the wrapper needs. The wrapper reads just these
/// keys from the file and ignores the rest (an invalid endpoint or
/// concurrency must not change how a compile runs); only a file that is
/// not TOML at all, or an invalid value of one of these, is an error.
#[derive(Clone, Debug)]
pub(crate) struct WrapperConfig {
    pub(crate) cache_dir: PathBuf,
    pub(crate) cache_executables: bool,
    /// C, C++ and assembler compiles are cached (`KACHE_CACHE_C`,
    /// `cache.cache_c`).
    pub(crate) cache_c: bool,
    /// Build-script runs are cached (`KACHE_CACHE_BUILD_SCRIPTS`,
    /// `cache.cache_build_scripts`).
    pub(crate) cache_build_scripts: bool,
    /// The remote identity (see `remote_identity`), `None` without a
    /// bucket: the daemon serves a wrapper of the same remote only.
    pub(crate) remote: Option<String>,
    pub(crate) daemon_autostart: bool,
    pub(crate) daemon_wait: Duration,
    /// Crates never cached (normalised names).
    pub(crate) never_cache: Vec<String>,
    /// Inputs the user declares per crate (normalised names).
    pub(crate) inputs: BTreeMap<String, CrateInputs>,
    /// A read-only runner records no uploads for the daemon.
    pub(crate) read_only: bool,
}

impl WrapperConfig {
    /// The wrapper's settings, from the same model and through the same
    /// setting functions as `Config::load`, but only these keys are read:
    /// an invalid value of any other (or an unknown key) changes nothing
    /// here.
    pub(crate) fn load() -> Result<WrapperConfig> {
        let (f, doc) = ConfigFile::read()?;
        let fsrc = || f.source();
        let c = doc.cache;
        let r = c.remote;
        let remote = RemoteId {
            bucket: r.bucket.lenient(),
            endpoint: r.endpoint.lenient(),
            region: r.region.lenient(),
            prefix: r.prefix.lenient(),
        }
        .resolve(&fsrc)?;
        let read_only = r.read_only.get(&f.remote_key("read_only"), TF_FORM)?;
        Ok(WrapperConfig {
            cache_dir: cache_dir_setting(
                c.local_store.get(&f.key("local_store"), PATH_FORM)?,
                &fsrc,
            )?
            .value,
            cache_executables: cache_executables_setting(
                c.cache_executables
                    .get(&f.key("cache_executables"), TF_FORM)?,
                &fsrc,
            )?
            .value,
            cache_c: cache_c_setting(c.cache_c.get(&f.key("cache_c"), TF_FORM)?, &fsrc)?.value,
            cache_build_scripts: cache_build_scripts_setting(
                c.cache_build_scripts
                    .get(&f.key("cache_build_scripts"), TF_FORM)?,
                &fsrc,
            )?
            .value,
            never_cache: never_cache_setting(
                c.never_cache.get(&f.key("never_cache"), NEVER_FORM)?,
                &fsrc,
            )?
            .value,
            inputs: inputs_setting(file_inputs(c.inputs, &f)?, &fsrc)?.value,
            remote: remote.identity(),
            daemon_autostart: daemon_autostart_setting(
                c.daemon_autostart
                    .get(&f.key("daemon_autostart"), TF_FORM)?,
                &fsrc,
            )?
            .value,
            daemon_wait: daemon_wait_setting(c.daemon_wait, &fsrc)?.value,
            read_only: read_only_setting(read_only, &fsrc)?.value,
        })
    }
}

/// `[cache.inputs]` from the file: its own error names what does not fit.
fn file_inputs(
    k: Key<BTreeMap<String, FileInputs>>,
    f: &ConfigFile,
) -> Result<Option<BTreeMap<String, FileInputs>>> {
    match k {
        Key::Wrong(_, why) => bail!(
            "invalid cache.inputs in {}: {why}; expected [cache.inputs.<crate>] tables with env = [..] and files = [..]",
            f.name()
        ),
        k => k.get("cache.inputs", ""),
    }
}

/// The settings that name the remote (bucket, endpoint, region, prefix),
/// as the file gives them.
struct RemoteId {
    bucket: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    prefix: Option<String>,
}

/// The same, resolved against the environment and the defaults.
struct RemoteSettings {
    bucket: Setting<Option<String>>,
    endpoint: Setting<Option<String>>,
    region: Setting<String>,
    prefix: Setting<String>,
}

impl RemoteId {
    fn resolve(self, fsrc: &dyn Fn() -> Source) -> Result<RemoteSettings> {
        let opt = |name: &'static str, v: Option<String>| {
            pick(name, v.map(Some), None, fsrc, |s| Ok(Some(s.to_string())))
        };
        let text = |name: &'static str, v: Option<String>, default: &str| {
            pick(name, v, default.to_string(), fsrc, |s| Ok(s.to_string()))
        };
        let prefix = text("KACHE_S3_PREFIX", self.prefix, "artifacts")?;
        Ok(RemoteSettings {
            bucket: opt("KACHE_S3_BUCKET", self.bucket)?,
            endpoint: opt("KACHE_S3_ENDPOINT", self.endpoint)?,
            region: text("KACHE_S3_REGION", self.region, "us-east-1")?,
            prefix: Setting {
                value: prefix.value.trim_matches('/').to_string(),
                source: prefix.source,
            },
        })
    }
}

impl RemoteSettings {
    /// See `remote_identity`; `None` without a bucket.
    fn identity(&self) -> Option<String> {
        let bucket = self.bucket.value.as_deref()?;
        Some(remote_identity(
            self.endpoint.value.as_deref(),
            &self.region.value,
            bucket,
            &self.prefix.value,
        ))
    }
}

/// `cache.daemon_autostart` / `KACHE_DAEMON_AUTOSTART`.
fn daemon_autostart_setting(
    file: Option<bool>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<bool>> {
    flag_setting("KACHE_DAEMON_AUTOSTART", file, false, fsrc)
}

/// A true-or-false setting.
fn flag_setting(
    var: &'static str,
    file: Option<bool>,
    default: bool,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<bool>> {
    pick(var, file, default, fsrc, |s| {
        parse_bool(s).ok_or_else(|| invalid(var, s, BOOL_FORM))
    })
}

/// `cache.daemon_wait` / `KACHE_DAEMON_WAIT`.
fn daemon_wait_setting(
    file: Option<toml::Value>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<Duration>> {
    pick_value(
        "KACHE_DAEMON_WAIT",
        "cache.daemon_wait",
        file,
        DEFAULT_DAEMON_WAIT,
        fsrc,
        |s| parse_wait(s).ok_or_else(|| WAIT_FORM.to_string()),
    )
}

/// `cache.local_max_size` / `KACHE_MAX_SIZE`.
fn max_size_setting(file: Option<toml::Value>, fsrc: &dyn Fn() -> Source) -> Result<Setting<u64>> {
    pick_value(
        "KACHE_MAX_SIZE",
        "cache.local_max_size",
        file,
        50 << 30,
        fsrc,
        |s| parse_size(s).ok_or_else(|| SIZE_FORM.to_string()),
    )
}

/// `cache.s3_concurrency` / `KACHE_S3_CONCURRENCY`.
fn concurrency_setting(
    file: Option<toml::Value>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<usize>> {
    pick_value(
        "KACHE_S3_CONCURRENCY",
        "cache.s3_concurrency",
        file,
        16,
        fsrc,
        |s| match s.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(CONC_FORM.to_string()),
        },
    )
}

/// `cache.compression_level` / `KACHE_COMPRESSION_LEVEL`.
fn level_setting(file: Option<toml::Value>, fsrc: &dyn Fn() -> Source) -> Result<Setting<i32>> {
    pick_value(
        "KACHE_COMPRESSION_LEVEL",
        "cache.compression_level",
        file,
        3,
        fsrc,
        |s| match s.trim().parse::<i32>() {
            Ok(n) if (1..=22).contains(&n) => Ok(n),
            _ => Err(LEVEL_FORM.to_string()),
        },
    )
}

/// `cache.remote.timeout` / `KACHE_S3_TIMEOUT`.
fn timeout_setting(
    file: Option<toml::Value>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<Duration>> {
    pick_value(
        "KACHE_S3_TIMEOUT",
        "cache.remote.timeout",
        file,
        DEFAULT_TIMEOUT,
        fsrc,
        |s| match parse_duration(s) {
            Some(n) if n >= 1 => Ok(Duration::from_secs(n)),
            _ => Err(TIMEOUT_FORM.to_string()),
        },
    )
}

/// `cache.remote.read_only` / `KACHE_REMOTE_READ_ONLY`.
fn read_only_setting(file: Option<bool>, fsrc: &dyn Fn() -> Source) -> Result<Setting<bool>> {
    flag_setting("KACHE_REMOTE_READ_ONLY", file, false, fsrc)
}

/// `KACHE_SIGNING_KEY` (the key's text), `KACHE_SIGNING_KEY_FILE`, or
/// `cache.remote.signing_key_file`. Both variables at once is an error:
/// which key signs must never be a guess.
fn signing_key_setting(
    file: Option<String>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<Option<KeySource>>> {
    let text = env_nonempty("KACHE_SIGNING_KEY");
    let path = env_nonempty("KACHE_SIGNING_KEY_FILE");
    match (text, path) {
        (Some(_), Some(_)) => bail!(
            "both KACHE_SIGNING_KEY and KACHE_SIGNING_KEY_FILE are set: set one (the key's text, or the path of its file)"
        ),
        (Some(t), None) => Ok(Setting {
            value: Some(KeySource::Env(t)),
            source: Source::Env("KACHE_SIGNING_KEY"),
        }),
        (None, Some(p)) => Ok(Setting {
            value: Some(KeySource::File(PathBuf::from(p))),
            source: Source::Env("KACHE_SIGNING_KEY_FILE"),
        }),
        (None, None) => Ok(match file {
            Some(p) => Setting {
                value: Some(KeySource::File(PathBuf::from(expand_tilde(&p)))),
                source: fsrc(),
            },
            None => Setting {
                value: None,
                source: Source::Default,
            },
        }),
    }
}

/// `KACHE_TRUSTED_KEYS` (`name:base64,...`) or `cache.remote.trusted_keys`.
fn trusted_keys_setting(
    file: Option<Vec<String>>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<Vec<crate::trust::TrustedKey>>> {
    let parse_all = |items: Vec<String>, whence: &str| -> Result<Vec<crate::trust::TrustedKey>> {
        let mut out: Vec<crate::trust::TrustedKey> = Vec::new();
        for i in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
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
    };
    if let Some(v) = env_nonempty("KACHE_TRUSTED_KEYS") {
        let items = v.split(',').map(str::to_string).collect();
        return Ok(Setting {
            value: parse_all(items, "KACHE_TRUSTED_KEYS")?,
            source: Source::Env("KACHE_TRUSTED_KEYS"),
        });
    }
    match file {
        Some(items) => Ok(Setting {
            value: parse_all(
                items,
                &format!("cache.remote.trusted_keys in {}", fsrc_path(fsrc)),
            )?,
            source: fsrc(),
        }),
        None => Ok(Setting {
            value: Vec::new(),
            source: Source::Default,
        }),
    }
}

/// Which remote a daemon serves, as the wrapper and the daemon compare
/// it: endpoint, region, bucket and prefix (never a credential).
pub(crate) fn remote_identity(
    endpoint: Option<&str>,
    region: &str,
    bucket: &str,
    prefix: &str,
) -> String {
    let endpoint = endpoint.map_or_else(
        || format!("https://s3.{region}.amazonaws.com"),
        |e| e.trim_end_matches('/').to_string(),
    );
    format!("{endpoint}|{region}|{bucket}|{}", prefix.trim_matches('/'))
}

/// Parses a wait: `500ms`, `2s`, `1m`; at most a minute.
fn parse_wait(s: &str) -> Option<Duration> {
    let s = s.trim();
    let d = match s.strip_suffix("ms") {
        Some(ms) => Duration::from_millis(ms.parse().ok()?),
        None => Duration::from_secs(parse_duration(s)?),
    };
    (d <= Duration::from_mins(1)).then_some(d)
}

/// The default `cache.daemon_wait`.
pub(crate) const DEFAULT_DAEMON_WAIT: Duration = Duration::from_secs(2);
const WAIT_FORM: &str = "a duration up to 1m, such as 500ms or 2s (0s: never wait)";

fn fsrc_path(fsrc: &dyn Fn() -> Source) -> String {
    match fsrc() {
        Source::File(p) => p.display().to_string(),
        other => other.to_string(),
    }
}

/// `cache.local_store` / `KACHE_CACHE_DIR`: must be absolute, or every
/// crate's compile (each run in its own directory) would get its own store.
fn cache_dir_setting(file: Option<String>, fsrc: &dyn Fn() -> Source) -> Result<Setting<PathBuf>> {
    let dir = pick(
        "KACHE_CACHE_DIR",
        file.map(|s| PathBuf::from(expand_tilde(&s))),
        default_cache_dir(),
        fsrc,
        |s| Ok(PathBuf::from(s)),
    )?;
    if !dir.value.is_absolute() {
        let name = match &dir.source {
            Source::Env(v) => (*v).to_string(),
            Source::File(p) => format!("cache.local_store in {}", p.display()),
            Source::Default => "the default cache dir".to_string(),
        };
        bail!(
            "{name} `{}` must be an absolute path: cargo runs each compile in its crate's directory, so a relative one would make a store in each; use a full path such as /var/cache/kache or ~/.cache/kache (in the file)",
            dir.value.display()
        );
    }
    Ok(dir)
}

fn cache_executables_setting(
    file: Option<bool>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<bool>> {
    flag_setting(
        "KACHE_CACHE_EXECUTABLES",
        file,
        cfg!(target_os = "linux"),
        fsrc,
    )
}

/// `cache.cache_build_scripts` / `KACHE_CACHE_BUILD_SCRIPTS`: cache
/// build-script runs (on by default).
fn cache_build_scripts_setting(
    file: Option<bool>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<bool>> {
    flag_setting("KACHE_CACHE_BUILD_SCRIPTS", file, true, fsrc)
}

/// `cache.cache_c` / `KACHE_CACHE_C`: cache C, C++ and assembler
/// compiles (on by default).
fn cache_c_setting(file: Option<bool>, fsrc: &dyn Fn() -> Source) -> Result<Setting<bool>> {
    flag_setting("KACHE_CACHE_C", file, true, fsrc)
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

/// `cache.never_cache` / `KACHE_NEVER_CACHE` (comma-separated; replaces
/// the file's list).
fn never_cache_setting(
    file: Option<Vec<String>>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<Vec<String>>> {
    let whence = |src: &Source| match src {
        Source::File(p) => format!("cache.never_cache in {}", p.display()),
        other => other.to_string().replace("env ", ""),
    };
    let mut set = pick("KACHE_NEVER_CACHE", file, Vec::new(), fsrc, |s| {
        Ok(s.split(',').map(str::to_string).collect())
    })?;
    let w = whence(&set.source);
    let mut names = Vec::with_capacity(set.value.len());
    for n in &set.value {
        let n = crate_name(n, &w)?;
        if !names.contains(&n) {
            names.push(n);
        }
    }
    set.value = names;
    Ok(set)
}

/// `[cache.inputs.<crate>]` / `KACHE_INPUTS` (`crate:env=VAR` and
/// `crate:files=GLOB` items separated by `;`; replaces the file's table).
fn inputs_setting(
    file: Option<BTreeMap<String, FileInputs>>,
    fsrc: &dyn Fn() -> Source,
) -> Result<Setting<BTreeMap<String, CrateInputs>>> {
    if let Some(v) = env_nonempty("KACHE_INPUTS") {
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
        return Ok(Setting {
            value: out,
            source: Source::Env("KACHE_INPUTS"),
        });
    }
    let Some(file) = file else {
        return Ok(Setting {
            value: BTreeMap::new(),
            source: Source::Default,
        });
    };
    let w = format!("cache.inputs in {}", fsrc_path(fsrc));
    let mut out: BTreeMap<String, CrateInputs> = BTreeMap::new();
    for (krate, fi) in file {
        let name = crate_name(&krate, &w)?;
        if fi.env.is_empty() && fi.files.is_empty() {
            bail!(
                "cache.inputs.{krate} in {} declares nothing; give it env = [\"VAR\"] or files = [\"path\"]",
                fsrc_path(fsrc)
            );
        }
        let e = out.entry(name).or_default();
        for v in &fi.env {
            e.env.push(env_name(v, &w)?);
        }
        for f in &fi.files {
            e.files.push(file_pattern(f, &w)?);
        }
    }
    Ok(Setting {
        value: out,
        source: fsrc(),
    })
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

/// Whether `path` (relative, `/`-separated) matches `pattern`: `*` and
/// `?` match within one path component, `**` matches any number of whole
/// components (none included). Everything else matches itself.
pub(crate) fn glob_match(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    match_components(&pat, &comps)
}

fn match_components(pat: &[&str], comps: &[&str]) -> bool {
    match pat.split_first() {
        None => comps.is_empty(),
        Some((&"**", rest)) => (0..=comps.len()).any(|i| match_components(rest, &comps[i..])),
        Some((p, rest)) => match comps.split_first() {
            Some((c, crest)) => {
                match_one(p.as_bytes(), c.as_bytes()) && match_components(rest, crest)
            }
            None => false,
        },
    }
}

/// `*` and `?` within one component (bytes; `?` is one byte).
fn match_one(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with backtracking to the last `*`.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

const BOOL_FORM: &str = "true or false (also 1/0, yes/no, on/off)";
const SIZE_FORM: &str = "a size such as 512MiB, 10GB or 50GiB";
/// The default `cache.remote.timeout`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_mins(1);
const CONC_FORM: &str = "a whole number from 1 to 1024";
const TIMEOUT_FORM: &str = "a duration of at least 1s, such as 30s or 2m";
const LEVEL_FORM: &str = "a zstd level from 1 to 22";
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
const LOG_FORM: &str = "one of off, error, warn, info, debug, trace";
const PATH_FORM: &str = "an absolute path as a string";
const TF_FORM: &str = "true or false";
const STRING_FORM: &str = "a string in quotes";
const TRUSTED_LIST_FORM: &str = "a list of keys such as [\"ci:BASE64\"]";
const NEVER_FORM: &str = "a list of crate names such as [\"my_crate\"]";
const INPUTS_FORM: &str = "`crate:env=VAR` or `crate:files=GLOB` items separated by `;`";

fn invalid(name: &str, value: &str, form: &str) -> anyhow::Error {
    anyhow!("invalid value `{value}` for {name}: expected {form}")
}

impl Config {
    /// Loads the file (if any) and the environment and validates both:
    /// every key, unknown keys included.
    pub(crate) fn load() -> Result<Config> {
        let (f, doc) = ConfigFile::read()?;
        let fsrc = || f.source();
        f.deny_unknown()?;
        let c = doc.cache;
        let r = c.remote;
        if let Some(v) = env_nonempty("KACHE_LOG")
            && !LOG_LEVELS.contains(&v.trim().to_ascii_lowercase().as_str())
        {
            return Err(invalid("KACHE_LOG", &v, LOG_FORM));
        }
        let text = |k: Key<String>, name: &str| k.get(&f.remote_key(name), STRING_FORM);
        let remote = RemoteId {
            bucket: text(r.bucket, "bucket")?,
            endpoint: text(r.endpoint, "endpoint")?,
            region: text(r.region, "region")?,
            prefix: text(r.prefix, "prefix")?,
        }
        .resolve(&fsrc)?;
        if let Some(e) = &remote.endpoint.value {
            validate_endpoint(e).with_context(|| {
                format!(
                    "invalid S3 endpoint `{e}` (from {})",
                    remote.endpoint.source
                )
            })?;
        }
        let profile = text(r.profile, "profile")?;
        Ok(Config {
            file: f.path.clone().filter(|p| p.exists()),
            cache_dir: cache_dir_setting(
                c.local_store.get(&f.key("local_store"), PATH_FORM)?,
                &fsrc,
            )?,
            max_size: max_size_setting(c.local_max_size, &fsrc)?,
            bucket: remote.bucket,
            endpoint: remote.endpoint,
            region: remote.region,
            prefix: remote.prefix,
            profile: pick("KACHE_S3_PROFILE", profile.map(Some), None, &fsrc, |s| {
                Ok(Some(s.to_string()))
            })?,
            timeout: timeout_setting(r.timeout, &fsrc)?,
            s3_concurrency: concurrency_setting(c.s3_concurrency, &fsrc)?,
            compression_level: level_setting(c.compression_level, &fsrc)?,
            cache_executables: cache_executables_setting(
                c.cache_executables
                    .get(&f.key("cache_executables"), TF_FORM)?,
                &fsrc,
            )?,
            cache_c: cache_c_setting(c.cache_c.get(&f.key("cache_c"), TF_FORM)?, &fsrc)?,
            cache_build_scripts: cache_build_scripts_setting(
                c.cache_build_scripts
                    .get(&f.key("cache_build_scripts"), TF_FORM)?,
                &fsrc,
            )?,
            daemon_autostart: daemon_autostart_setting(
                c.daemon_autostart
                    .get(&f.key("daemon_autostart"), TF_FORM)?,
                &fsrc,
            )?,
            daemon_wait: daemon_wait_setting(c.daemon_wait, &fsrc)?,
            never_cache: never_cache_setting(
                c.never_cache.get(&f.key("never_cache"), NEVER_FORM)?,
                &fsrc,
            )?,
            inputs: inputs_setting(file_inputs(c.inputs, &f)?, &fsrc)?,
            signing_key: signing_key_setting(
                r.signing_key_file
                    .get(&f.remote_key("signing_key_file"), STRING_FORM)?,
                &fsrc,
            )?,
            trusted_keys: trusted_keys_setting(
                r.trusted_keys
                    .get(&f.remote_key("trusted_keys"), TRUSTED_LIST_FORM)?,
                &fsrc,
            )?,
            read_only: read_only_setting(
                r.read_only.get(&f.remote_key("read_only"), TF_FORM)?,
                &fsrc,
            )?,
        })
    }

    /// The signing key, read and checked; `None` if none is set. Only a
    /// run that uploads calls this.
    pub(crate) fn signer(&self) -> Result<Option<crate::trust::SigningKey>> {
        use crate::trust::SigningKey;
        match &self.signing_key.value {
            None => Ok(None),
            Some(KeySource::Env(text)) => SigningKey::parse(text, "KACHE_SIGNING_KEY").map(Some),
            Some(KeySource::File(p)) => {
                SigningKey::load_file(p, &self.signing_key.source.to_string()).map(Some)
            }
        }
    }

    /// What a sync or the daemon does about signatures: the signing key
    /// only where it uploads.
    pub(crate) fn trust_policy(&self, uploads: bool) -> Result<crate::trust::Policy> {
        Ok(crate::trust::Policy {
            signer: if uploads && !self.read_only.value {
                self.signer()?
            } else {
                None
            },
            trusted: self.trusted_keys.value.clone(),
        })
    }

    /// The remote identity (see `remote_identity`); `None` without a
    /// bucket.
    pub(crate) fn remote_identity(&self) -> Option<String> {
        let bucket = self.bucket.value.as_deref()?;
        Some(remote_identity(
            self.endpoint.value.as_deref(),
            &self.region.value,
            bucket,
            &self.prefix.value,
        ))
    }

    /// Every setting as (name, env var, value, source), secrets masked.
    pub(crate) fn rows(&self) -> Vec<Row> {
        fn o(v: Option<&String>) -> String {
            v.map_or_else(|| "(none)".into(), Clone::clone)
        }
        fn row<T>(name: &'static str, var: &'static str, value: String, s: &Setting<T>) -> Row {
            (name, var, value, s.source.to_string())
        }
        fn shown<T: fmt::Display>(name: &'static str, var: &'static str, s: &Setting<T>) -> Row {
            row(name, var, s.value.to_string(), s)
        }
        let dir = self.cache_dir.value.display().to_string();
        let size = format_size(self.max_size.value);
        let endpoint =
            self.endpoint.value.clone().unwrap_or_else(|| {
                format!("(AWS: https://s3.{}.amazonaws.com)", self.region.value)
            });
        let timeout = format!("{}s", self.timeout.value.as_secs());
        let wait = format!("{}ms", self.daemon_wait.value.as_millis());
        let never = if self.never_cache.value.is_empty() {
            "(none)".to_string()
        } else {
            self.never_cache.value.join(",")
        };
        let inputs = format_inputs(&self.inputs.value);
        let mut rows = vec![
            row("cache.local_store", "KACHE_CACHE_DIR", dir, &self.cache_dir),
            row(
                "cache.local_max_size",
                "KACHE_MAX_SIZE",
                size,
                &self.max_size,
            ),
            row(
                "cache.remote.bucket",
                "KACHE_S3_BUCKET",
                o(self.bucket.value.as_ref()),
                &self.bucket,
            ),
            row(
                "cache.remote.endpoint",
                "KACHE_S3_ENDPOINT",
                endpoint,
                &self.endpoint,
            ),
            shown("cache.remote.region", "KACHE_S3_REGION", &self.region),
            shown("cache.remote.prefix", "KACHE_S3_PREFIX", &self.prefix),
            row(
                "cache.remote.profile",
                "KACHE_S3_PROFILE",
                o(self.profile.value.as_ref()),
                &self.profile,
            ),
            row(
                "cache.remote.timeout",
                "KACHE_S3_TIMEOUT",
                timeout,
                &self.timeout,
            ),
            shown(
                "cache.s3_concurrency",
                "KACHE_S3_CONCURRENCY",
                &self.s3_concurrency,
            ),
            shown(
                "cache.compression_level",
                "KACHE_COMPRESSION_LEVEL",
                &self.compression_level,
            ),
            shown(
                "cache.cache_executables",
                "KACHE_CACHE_EXECUTABLES",
                &self.cache_executables,
            ),
            shown("cache.cache_c", "KACHE_CACHE_C", &self.cache_c),
            shown(
                "cache.cache_build_scripts",
                "KACHE_CACHE_BUILD_SCRIPTS",
                &self.cache_build_scripts,
            ),
            shown(
                "cache.daemon_autostart",
                "KACHE_DAEMON_AUTOSTART",
                &self.daemon_autostart,
            ),
            row(
                "cache.daemon_wait",
                "KACHE_DAEMON_WAIT",
                wait,
                &self.daemon_wait,
            ),
            row(
                "cache.never_cache",
                "KACHE_NEVER_CACHE",
                never,
                &self.never_cache,
            ),
            row("cache.inputs", "KACHE_INPUTS", inputs, &self.inputs),
        ];
        rows.extend(self.trust_rows());
        rows.extend(env_rows());
        rows
    }

    /// Credentials, the signing key and the trusted keys, masked.
    fn trust_rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let (cred, src) = match Credentials::resolve(self) {
            Ok(Some(c)) => (
                format!("{} / {}", mask(&c.access_key), "****"),
                c.source.clone(),
            ),
            Ok(None) => ("(none)".to_string(), "-".to_string()),
            Err(e) => (format!("error: {e:#}"), "-".to_string()),
        };
        rows.push(("credentials", "KACHE_S3_ACCESS_KEY", cred, src));
        let (var, key) = match &self.signing_key.value {
            None => (
                "KACHE_SIGNING_KEY_FILE",
                "(none: uploads are not signed)".to_string(),
            ),
            Some(ks) => {
                let shown = match ks {
                    KeySource::File(p) => p.display().to_string(),
                    KeySource::Env(_) => "****".to_string(),
                };
                let var = match ks {
                    KeySource::File(_) => "KACHE_SIGNING_KEY_FILE",
                    KeySource::Env(_) => "KACHE_SIGNING_KEY",
                };
                match self.signer() {
                    Ok(Some(k)) => (var, format!("{shown} (signs as {})", k.public())),
                    Ok(None) => (var, shown),
                    Err(e) => (var, format!("{shown} (error: {e:#})")),
                }
            }
        };
        rows.push((
            "cache.remote.signing_key_file",
            var,
            key,
            self.signing_key.source.to_string(),
        ));
        rows.push((
            "cache.remote.trusted_keys",
            "KACHE_TRUSTED_KEYS",
            if self.trusted_keys.value.is_empty() {
                "(none: pulled entries are not verified)".to_string()
            } else {
                self.trusted_keys
                    .value
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            self.trusted_keys.source.to_string(),
        ));
        rows.push((
            "cache.remote.read_only",
            "KACHE_REMOTE_READ_ONLY",
            self.read_only.value.to_string(),
            self.read_only.source.to_string(),
        ));
        rows
    }
}

/// A row of `kache config`: (name, env var, value, source).
pub(crate) type Row = (&'static str, &'static str, String, String);

/// The settings only the environment holds.
fn env_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for (name, var) in [
        ("disabled", "KACHE_DISABLED"),
        ("progress", "KACHE_PROGRESS"),
        ("log", "KACHE_LOG"),
    ] {
        let (v, s) = match env_nonempty(var) {
            Some(v) => (v, format!("env {var}")),
            None => (
                match name {
                    "disabled" => "off",
                    "progress" => "auto",
                    _ => "warn",
                }
                .to_string(),
                "default".to_string(),
            ),
        };
        rows.push((name, var, v, s));
    }
    rows
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

fn read_text(p: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read config file {}", p.display())),
    }
}

fn malformed(p: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e.message().trim().replace('\n', " ");
    // The line itself names the key (serde's type errors do not).
    let shown = line
        .and_then(|l| text.lines().nth(l - 1))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 80);
    match (line, shown) {
        (Some(l), Some(t)) => anyhow!(
            "malformed config file {}, line {l} (`{t}`): {msg}",
            p.display()
        ),
        (Some(l), None) => anyhow!("malformed config file {}, line {l}: {msg}", p.display()),
        (None, _) => anyhow!("malformed config file {}: {msg}", p.display()),
    }
}

fn expand_tilde(s: &str) -> String {
    match (s.strip_prefix("~/"), home()) {
        (Some(rest), Some(h)) => h.join(rest).display().to_string(),
        _ => s.to_string(),
    }
}

/// A setting given as a string in the environment or typed in the file.
fn pick<T>(
    var: &'static str,
    file: Option<T>,
    default: T,
    fsrc: &dyn Fn() -> Source,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<Setting<T>> {
    if let Ok(v) = env::var(var)
        && !v.is_empty()
    {
        return Ok(Setting {
            value: parse(&v)?,
            source: Source::Env(var),
        });
    }
    Ok(match file {
        Some(value) => Setting {
            value,
            source: fsrc(),
        },
        None => Setting {
            value: default,
            source: Source::Default,
        },
    })
}

/// A setting whose file value may be a TOML string or integer.
fn pick_value<T>(
    var: &'static str,
    key: &'static str,
    file: Option<toml::Value>,
    default: T,
    fsrc: &dyn Fn() -> Source,
    parse: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Setting<T>> {
    if let Ok(v) = env::var(var)
        && !v.is_empty()
    {
        let value = parse(&v).map_err(|form| invalid(var, &v, &form))?;
        return Ok(Setting {
            value,
            source: Source::Env(var),
        });
    }
    match file {
        Some(val) => {
            let s = match &val {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => other.to_string(),
            };
            let value = parse(&s).map_err(|form| {
                let p = match fsrc() {
                    Source::File(p) => p.display().to_string(),
                    _ => String::new(),
                };
                anyhow!("invalid value `{s}` for {key} in {p}: expected {form}")
            })?;
            Ok(Setting {
                value,
                source: fsrc(),
            })
        }
        None => Ok(Setting {
            value: default,
            source: Source::Default,
        }),
    }
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
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

fn mask(s: &str) -> String {
    let keep: String = s.chars().take(4).collect();
    format!("{keep}****")
}

/// S3 credentials. `Debug` never shows the secret or the token.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) access_key: String,
    pub(crate) secret_key: String,
    pub(crate) session_token: Option<String>,
    /// Where they came from, for `kache config` and error messages.
    pub(crate) source: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &mask(&self.access_key))
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// First match wins: `KACHE_S3`_* pair, AWS_* pair (+ session token),
    /// then a profile in the shared credentials file. Half a pair is an
    /// error.
    pub(crate) fn resolve(cfg: &Config) -> Result<Option<Credentials>> {
        if let Some(c) = pair("KACHE_S3_ACCESS_KEY", "KACHE_S3_SECRET_KEY", None)? {
            return Ok(Some(c));
        }
        if let Some(c) = pair(
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            Some("AWS_SESSION_TOKEN"),
        )? {
            return Ok(Some(c));
        }
        let explicit = cfg
            .profile
            .value
            .clone()
            .or_else(|| env_nonempty("AWS_PROFILE"));
        let profile = explicit.clone().unwrap_or_else(|| "default".to_string());
        let file = env_nonempty("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| home().map(|h| h.join(".aws/credentials")));
        let Some(file) = file else {
            return Ok(None);
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if explicit.is_some() {
                    bail!(
                        "profile `{profile}` was asked for but {} does not exist",
                        file.display()
                    );
                }
                return Ok(None);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", file.display()));
            }
        };
        let sections = parse_ini(&text);
        let Some(sec) = sections.get(&profile) else {
            if explicit.is_some() {
                bail!("profile `{profile}` not found in {}", file.display());
            }
            return Ok(None);
        };
        let ak = sec.get("aws_access_key_id");
        let sk = sec.get("aws_secret_access_key");
        match (ak, sk) {
            (Some(a), Some(s)) => Ok(Some(Credentials {
                access_key: a.clone(),
                secret_key: s.clone(),
                session_token: sec.get("aws_session_token").cloned(),
                source: format!("profile {profile} in {}", file.display()),
            })),
            (None, None) => Ok(None),
            _ => bail!(
                "profile `{profile}` in {} has only half a key pair: set both aws_access_key_id and aws_secret_access_key",
                file.display()
            ),
        }
    }
}

fn pair(ak: &'static str, sk: &'static str, tok: Option<&str>) -> Result<Option<Credentials>> {
    match (env_nonempty(ak), env_nonempty(sk)) {
        (Some(a), Some(s)) => Ok(Some(Credentials {
            access_key: a,
            secret_key: s,
            session_token: tok.and_then(env_nonempty),
            source: format!("env {ak}"),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => bail!("{ak} is set but {sk} is not: set both, or neither"),
        (None, Some(_)) => bail!("{sk} is set but {ak} is not: set both, or neither"),
    }
}

fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let name = name.strip_prefix("profile ").unwrap_or(name).trim();
            cur = Some(name.to_string());
            out.entry(name.to_string()).or_default();
        } else if let (Some(c), Some((k, v))) = (&cur, line.split_once('=')) {
            out.entry(c.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_and_identity() {
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_wait("0s"), Some(Duration::ZERO));
        assert_eq!(parse_wait("2m"), None);
        assert_eq!(parse_wait("fast"), None);
        assert_eq!(
            remote_identity(Some("http://h:9/"), "r", "b", "/p/"),
            "http://h:9|r|b|p"
        );
        assert_eq!(
            remote_identity(None, "eu-west-1", "b", "artifacts"),
            "https://s3.eu-west-1.amazonaws.com|eu-west-1|b|artifacts"
        );
    }

    fn parsed(text: &str) -> (ConfigFile, FileDoc) {
        ConfigFile::parse(Some(PathBuf::from("/c.toml")), text.to_string()).unwrap()
    }

    #[test]
    fn a_wrong_type_fails_only_the_setting_that_reads_it() {
        let (f, doc) = parsed(
            "[cache]\ncache_c = \"yes\"\nlocal_store = \"/s\"\n[cache.remote]\nbucket = 7\n",
        );
        let c = doc.cache;
        assert_eq!(
            c.local_store.get(&f.key("local_store"), PATH_FORM).unwrap(),
            Some("/s".to_string())
        );
        let e = c.cache_c.get(&f.key("cache_c"), TF_FORM).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value `\"yes\"` for cache.cache_c in /c.toml: expected true or false"
        );
        assert!(c.remote.bucket.lenient().is_none());
        assert!(c.cache_executables.get("x", TF_FORM).unwrap().is_none());
        f.deny_unknown().unwrap();
    }

    #[test]
    fn unknown_keys_are_named_with_the_keys_expected() {
        for (text, key) in [
            ("[cache]\nlocal_stor = \"/s\"\n", "`cache.local_stor`"),
            ("[cache.remote]\nbuckit = \"b\"\n", "`cache.remote.buckit`"),
            ("[cahce]\nlocal_store = \"/s\"\n", "`cahce`"),
        ] {
            let (f, _) = parsed(text);
            let e = f.deny_unknown().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("unknown key {key} in config file /c.toml, line ")),
                "{e}"
            );
        }
        let (f, _) = parsed("[cache]\ncache_c = true\n  local_stor = 1\n");
        let e = f.deny_unknown().unwrap_err().to_string();
        assert!(
            e.contains(", line 3: expected one of local_store, local_max_size"),
            "{e}"
        );
        assert!(ConfigFile::parse(None, "[cache\n".into()).is_err());
        let (f, doc) = parsed("");
        f.deny_unknown().unwrap();
        assert!(matches!(doc.cache.local_store, Key::Absent));
    }

    #[test]
    fn ini_profiles() {
        let m =
            parse_ini("[default]\naws_access_key_id = A\n[profile ci]\naws_secret_access_key=S\n");
        assert_eq!(m["default"]["aws_access_key_id"], "A");
        assert_eq!(m["ci"]["aws_secret_access_key"], "S");
    }

    #[test]
    fn globs() {
        assert!(glob_match("migrations/*.sql", "migrations/001_init.sql"));
        assert!(!glob_match("migrations/*.sql", "migrations/sub/001.sql"));
        assert!(!glob_match("migrations/*.sql", "migrations/001.sqlx"));
        assert!(glob_match("templates/**/*.html", "templates/a.html"));
        assert!(glob_match("templates/**/*.html", "templates/a/b/c.html"));
        assert!(!glob_match("templates/**/*.html", "templates/a/b/c.htm"));
        assert!(glob_match("**", "a/b/c"));
        assert!(glob_match("**", ""));
        assert!(glob_match("a/**", "a/b"));
        assert!(glob_match("a/**", "a"));
        assert!(glob_match("?.rs", "a.rs"));
        assert!(!glob_match("?.rs", "ab.rs"));
        assert!(!glob_match("?.rs", "/.rs"));
        assert!(glob_match("*", "build.rs"));
        assert!(!glob_match("*", "src/lib.rs"));
        assert!(glob_match("src/*b*.rs", "src/lib.rs"));
        assert!(glob_match("./src//lib.rs", "src/lib.rs"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("schema.graphql", "schema.graphql"));
        assert!(!glob_match("schema.graphql", "other.graphql"));
        assert!(glob_match("**/x/**/y", "x/y"));
        assert!(glob_match("**/x/**/y", "p/x/q/r/y"));
        assert!(!glob_match("**/x/**/y", "p/q/r/y"));
    }

    #[test]
    fn credentials_debug_masks_secret() {
        let c = Credentials {
            access_key: "AKIAEXAMPLE".into(),
            secret_key: "supersecret".into(),
            session_token: Some("tok3n".into()),
            source: "test".into(),
        };
        let d = format!("{c:?}");
        assert!(!d.contains("supersecret") && !d.contains("tok3n") && !d.contains("AKIAEXAMPLE"));
    }
}

/// What the wrapper pays for its settings on every compile: run by
/// `ci/bench-config.sh`, which writes the config file and points
/// `KACHE_CONFIG` at it.
#[cfg(test)]
mod bench {
    use super::*;

    #[test]
    #[ignore = "a timing, run by ci/bench-config.sh"]
    fn bench_wrapper_config_load() {
        let n = 20_000u32;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(WrapperConfig::load().unwrap());
        }
        let per = t.elapsed() / n;
        println!("wrapper config load: {} ns", per.as_nanos());
    }
}
