/*!
Settings: environment over the config file over defaults.

Every setting is defined once, in `defs`: its key, its variable, its form,
how it is read and checked, its default and how `kache config` shows it.
`Config::load` (the commands) runs every definition; `WrapperConfig::load`
(once per compile) runs only the wrapper's, so an invalid value of any
other setting, or an unknown key, never changes how a compile runs.

Every setting remembers where its value came from so `kache config` can
say so. Values are validated here, once; an invalid value is an error that
names the variable or key and the accepted form. Secrets are never shown:
the signing key's `Debug` masks it, and credentials live with the remote
(`remote::credentials`).
*/

mod defs;
mod file;

use std::collections::BTreeMap;
use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};

use defs::{DEFS, Readers};
use file::{ConfigFile, Input};

/// Where a setting's value came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Source {
    #[default]
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
#[derive(Clone, Debug, Default)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) source: Source,
}

impl<T> Setting<T> {
    /// A default value.
    pub(super) fn default_of(value: T) -> Setting<T> {
        Setting {
            value,
            source: Source::Default,
        }
    }
}

/// The validated settings of one kache run. (`Default` is only where
/// loading starts: every definition in `defs` overwrites its field.)
#[derive(Clone, Debug, Default)]
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
    /// A build-script miss is traced by a twin run behind the build.
    pub(crate) trace_behind: Setting<bool>,
    /// Incremental compiles are stored in the background.
    pub(crate) background_store: Setting<bool>,
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

pub(crate) fn home() -> Option<PathBuf> {
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
        // One per user, never a path shared by everyone (and the store
        // refuses a directory another user made first).
        None => env::temp_dir().join(format!("kache-{}", crate::store::euid())),
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
    /// A build-script miss runs untraced for the build and is traced by
    /// an isolated twin behind it (`KACHE_TRACE_BEHIND`,
    /// `cache.trace_behind`).
    pub(crate) trace_behind: bool,
    /// Incremental compiles are stored in the background
    /// (`KACHE_BACKGROUND_STORE`, `cache.background_store`).
    pub(crate) background_store: bool,
    /// The store's size limit (`KACHE_MAX_SIZE`,
    /// `cache.local_max_size`): a wrapper that takes the store past it
    /// evicts (see `store::gc::auto`).
    pub(crate) max_size: u64,
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
    /// Restore only entries compiled here or signed by one of these (see
    /// `trust::usable`); the daemon fetches for this build with them.
    pub(crate) trusted: Vec<crate::trust::TrustedKey>,
}

impl WrapperConfig {
    /// The wrapper's settings, through the same definitions as
    /// `Config::load`, but only the wrapper's keys are read: an invalid
    /// value of any other (or an unknown key) changes nothing here.
    pub(crate) fn load() -> Result<WrapperConfig> {
        WrapperConfig::from_input(Input::wrapper(ConfigFile::read()?))
    }

    fn from_input(mut i: Input<'_>) -> Result<WrapperConfig> {
        let mut c = Config::default();
        for d in DEFS.iter().filter(|d| d.readers != Readers::Commands) {
            (d.load)(d, &mut i, &mut c)?;
        }
        Ok(WrapperConfig {
            remote: c.remote_identity(),
            cache_dir: c.cache_dir.value,
            cache_executables: c.cache_executables.value,
            cache_c: c.cache_c.value,
            cache_build_scripts: c.cache_build_scripts.value,
            trace_behind: c.trace_behind.value,
            background_store: c.background_store.value,
            max_size: c.max_size.value,
            daemon_autostart: c.daemon_autostart.value,
            daemon_wait: c.daemon_wait.value,
            never_cache: c.never_cache.value,
            inputs: c.inputs.value,
            read_only: c.read_only.value,
            trusted: c.trusted_keys.value,
        })
    }
}

impl Config {
    /// Loads the file (if any) and the environment and validates both:
    /// every key, unknown keys included.
    pub(crate) fn load() -> Result<Config> {
        Config::from_input(Input::commands(ConfigFile::read()?))
    }

    fn from_input(mut i: Input<'_>) -> Result<Config> {
        i.file.deny_unknown()?;
        let mut c = Config {
            file: i.file.path.clone().filter(|p| p.exists()),
            ..Config::default()
        };
        for d in DEFS {
            (d.load)(d, &mut i, &mut c)?;
        }
        Ok(c)
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

    /// Every setting as (name, env var, value, source), secrets masked;
    /// `credentials` is the credentials' (value, source), masked.
    pub(crate) fn rows(&self, credentials: &(String, String)) -> Vec<Row> {
        DEFS.iter()
            .map(|d| (d.show)(d, self, credentials))
            .collect()
    }
}

/// A row of `kache config`: (name, env var, value, source).
pub(crate) type Row = (&'static str, &'static str, String, String);

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

fn expand_tilde(s: &str) -> String {
    match (s.strip_prefix("~/"), home()) {
        (Some(rest), Some(h)) => h.join(rest).display().to_string(),
        _ => s.to_string(),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn invalid(name: &str, value: &str, form: &str) -> anyhow::Error {
    anyhow!("invalid value `{value}` for {name}: expected {form}")
}

#[cfg(test)]
mod tests {
    use super::defs::cache::{CACHE_C, CACHE_EXECUTABLES, LOCAL_STORE, parse_wait};
    use super::defs::remote::BUCKET;
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

    fn parsed(text: &str) -> ConfigFile {
        ConfigFile::parse(Some(PathBuf::from("/c.toml")), text.to_string()).unwrap()
    }

    #[test]
    fn a_wrong_type_fails_only_the_setting_that_reads_it() {
        let text = "[cache]\ncache_c = \"yes\"\nlocal_store = \"/s\"\n[cache.remote]\nbucket = 7\n";
        let mut i = Input::commands(parsed(text));
        assert_eq!(
            i.typed::<String>(&LOCAL_STORE).unwrap(),
            Some("/s".to_string())
        );
        let e = i.typed::<bool>(&CACHE_C).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value `\"yes\"` for cache.cache_c in /c.toml: expected true or false"
        );
        assert!(
            Input::wrapper(parsed(text))
                .typed::<String>(&BUCKET)
                .unwrap()
                .is_none()
        );
        assert!(i.typed::<bool>(&CACHE_EXECUTABLES).unwrap().is_none());
        i.file.deny_unknown().unwrap();
    }

    #[test]
    fn unknown_keys_are_named_with_the_keys_expected() {
        for (text, key) in [
            ("[cache]\nlocal_stor = \"/s\"\n", "`cache.local_stor`"),
            ("[cache.remote]\nbuckit = \"b\"\n", "`cache.remote.buckit`"),
            ("[cahce]\nlocal_store = \"/s\"\n", "`cahce`"),
        ] {
            let f = parsed(text);
            let e = f.deny_unknown().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("unknown key {key} in config file /c.toml, line ")),
                "{e}"
            );
        }
        let f = parsed("[cache]\ncache_c = true\n  local_stor = 1\n");
        let e = f.deny_unknown().unwrap_err().to_string();
        assert!(
            e.contains(", line 3: expected one of local_store, local_max_size"),
            "{e}"
        );
        assert!(ConfigFile::parse(None, "[cache\n".into()).is_err());
        let f = parsed("");
        f.deny_unknown().unwrap();
        assert!(
            Input::commands(f)
                .typed::<String>(&LOCAL_STORE)
                .unwrap()
                .is_none()
        );
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
