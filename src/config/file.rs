/*!
The config file and the environment, as the settings read them.

The file is found, read and parsed once. Parsing checks only its shape
(`[cache]` and `[cache.remote]` are tables); a key's value is converted
when its setting reads it, so reading a setting (not reading the file) is
what fails: the wrapper reads only its own keys, and an invalid value of
another must not change how a compile runs. Unknown keys are ignored
here; the commands reject them (`deny_unknown`), the wrapper does not
look.

`Input` is what a setting's definition reads from: the environment first,
then the file, then its default (see `defs`).
*/

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::defs::{BOOL_FORM, DEFS, Def, Readers};
use super::{Setting, Source, config_path, invalid};

/// The document: only its shape is typed, each key stays as written.
#[derive(Default, serde::Deserialize)]
struct FileDoc {
    #[serde(default)]
    cache: FileCache,
}

/// The `[cache]` table: `remote`, and every other key as written.
#[derive(Default)]
struct FileCache {
    remote: FileRemote,
    keys: toml::Table,
}

/// The `[cache.remote]` table, every key as written.
#[derive(Default)]
struct FileRemote {
    keys: toml::Table,
}

// By hand, not `#[serde(flatten)]`: flatten buffers the whole table once
// more, on every compile. The errors are those of a derived struct.
impl<'de> serde::Deserialize<'de> for FileCache {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(TableVisitor("struct FileCache", true))
            .map(|(keys, remote)| FileCache { remote, keys })
    }
}

impl<'de> serde::Deserialize<'de> for FileRemote {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(TableVisitor("struct FileRemote", false))
            .map(|(keys, _)| FileRemote { keys })
    }
}

/// Reads a table's keys as written; with `.1`, its `remote` is a
/// `FileRemote`.
struct TableVisitor(&'static str, bool);

impl<'de> serde::de::Visitor<'de> for TableVisitor {
    type Value = (toml::Table, FileRemote);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut keys = toml::Table::new();
        let mut remote = FileRemote::default();
        while let Some(k) = map.next_key::<String>()? {
            if self.1 && k == "remote" {
                remote = map.next_value()?;
            } else {
                keys.insert(k, map.next_value()?);
            }
        }
        Ok((keys, remote))
    }
}

/// The config file (if any): where it is, its text, and its keys.
pub(super) struct ConfigFile {
    pub(super) path: Option<PathBuf>,
    /// The file's text (empty without a file), for `deny_unknown`.
    text: String,
    /// `[cache]`, without `remote`.
    cache: toml::Table,
    /// `[cache.remote]`.
    remote: toml::Table,
}

impl ConfigFile {
    /// Reads the file at `config_path()`; a missing file is an empty one,
    /// a file that is not TOML is an error.
    pub(super) fn read() -> Result<ConfigFile> {
        let path = config_path();
        let text = match &path {
            Some(p) => read_text(p)?.unwrap_or_default(),
            None => String::new(),
        };
        ConfigFile::parse(path, text)
    }

    pub(super) fn parse(path: Option<PathBuf>, text: String) -> Result<ConfigFile> {
        let doc = toml::from_str::<FileDoc>(&text)
            .map_err(|e| malformed(path.as_deref().unwrap_or(Path::new("")), &text, &e))?;
        Ok(ConfigFile {
            path,
            text,
            cache: doc.cache.keys,
            remote: doc.cache.remote.keys,
        })
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

    /// The value of a setting's key, as written; `None` if absent. Each
    /// key is read once.
    fn take(&mut self, key: &str) -> Option<toml::Value> {
        match key.strip_prefix("cache.remote.") {
            Some(k) => self.remote.remove(k),
            None => self.cache.remove(key.strip_prefix("cache.")?),
        }
    }

    /// Unknown keys (a typo) are an error for the commands. The
    /// wrapper never calls this: it reads the file once, without them.
    pub(super) fn deny_unknown(&self) -> Result<()> {
        let Ok(top) = self.text.parse::<toml::Table>() else {
            return Ok(()); // read() already parsed it
        };
        let table = |v: Option<&toml::Value>| v.and_then(toml::Value::as_table).cloned();
        let cache = table(top.get("cache")).unwrap_or_default();
        let remote = table(cache.get("remote")).unwrap_or_default();
        let cache_keys = table_keys("cache.");
        let remote_keys = table_keys("cache.remote.");
        let unknown = |t: &toml::Table, known: &[&str]| {
            t.keys().find(|k| !known.contains(&k.as_str())).cloned()
        };
        let found = unknown(&top, &["cache"])
            .map(|k| (k, "[cache] (every setting is in it)".to_string()))
            .or_else(|| {
                unknown(&cache, &cache_keys).map(|k| (format!("cache.{k}"), cache_keys.join(", ")))
            })
            .or_else(|| {
                unknown(&remote, &remote_keys)
                    .map(|k| (format!("cache.remote.{k}"), remote_keys.join(", ")))
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

/// The keys a table of the file takes (`cache.` or `cache.remote.`), in
/// the order of the definitions; `[cache]` also holds `remote`.
fn table_keys(table: &str) -> Vec<&'static str> {
    let mut keys: Vec<&str> = DEFS
        .iter()
        .filter(|d| d.file)
        .filter_map(|d| d.name.strip_prefix(table))
        .filter(|k| !k.contains('.'))
        .collect();
    if table == "cache." {
        keys.push("remote");
    }
    keys
}

/// Where the settings' values come from: the environment (the process's,
/// or given, for tests), then the file. The wrapper's view differs in one
/// way: a remote identity key of the wrong type counts as absent.
pub(super) struct Input<'a> {
    pub(super) file: ConfigFile,
    vars: Option<&'a [(&'a str, &'a str)]>,
    wrapper: bool,
}

impl<'a> Input<'a> {
    /// The process's environment and `file`, as the commands read them.
    pub(super) fn commands(file: ConfigFile) -> Input<'a> {
        Input {
            file,
            vars: None,
            wrapper: false,
        }
    }

    /// The same, as the wrapper reads them.
    pub(super) fn wrapper(file: ConfigFile) -> Input<'a> {
        Input {
            wrapper: true,
            ..Input::commands(file)
        }
    }

    /// With this environment instead of the process's.
    #[cfg(test)]
    pub(super) fn with_vars(self, vars: &'a [(&'a str, &'a str)]) -> Input<'a> {
        Input {
            vars: Some(vars),
            ..self
        }
    }

    /// Whether the wrapper is reading.
    pub(super) fn is_wrapper(&self) -> bool {
        self.wrapper
    }

    /// An environment variable, if set and not empty.
    pub(super) fn env(&self, var: &str) -> Option<String> {
        match self.vars {
            None => super::env_nonempty(var),
            Some(vars) => vars
                .iter()
                .find(|(k, v)| *k == var && !v.is_empty())
                .map(|(_, v)| (*v).to_string()),
        }
    }

    /// An environment variable if set, even to nothing.
    pub(super) fn env_set(&self, var: &str) -> Option<String> {
        match self.vars {
            None => std::env::var_os(var).map(|v| v.to_string_lossy().into_owned()),
            Some(vars) => vars
                .iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| (*v).to_string()),
        }
    }

    /// The source of a value from the file.
    pub(super) fn file_source(&self) -> Source {
        self.file.source()
    }

    /// The config file's path, as errors name it.
    pub(super) fn file_name(&self) -> String {
        self.file.name()
    }

    /// `cache.x in FILE`, as errors name a key.
    pub(super) fn key_in(&self, d: &Def) -> String {
        format!("{} in {}", d.name, self.file.name())
    }

    /// The file's value of `d`, if it has type `T`: `None` if absent. A
    /// wrong type is an error that names the key and the form (for the
    /// wrapper, a remote identity key of the wrong type is absent).
    pub(super) fn typed<T: serde::de::DeserializeOwned>(&mut self, d: &Def) -> Result<Option<T>> {
        match self.typed_or_why(d) {
            Ok(t) => Ok(t),
            Err(_) if self.wrapper && d.readers == Readers::Identity => Ok(None),
            Err((v, _)) => Err(invalid(&self.key_in(d), &v.to_string(), d.form)),
        }
    }

    /// The same, a wrong type giving the value and why it does not fit.
    pub(super) fn typed_or_why<T: serde::de::DeserializeOwned>(
        &mut self,
        d: &Def,
    ) -> std::result::Result<Option<T>, (toml::Value, String)> {
        let Some(v) = self.file.take(d.name) else {
            return Ok(None);
        };
        match v.clone().try_into::<T>() {
            Ok(t) => Ok(Some(t)),
            Err(e) => Err((v, e.message().trim().replace('\n', " "))),
        }
    }

    /// A setting given as a string in the environment (read by `parse`)
    /// or with type `T` in the file (the file is read first: a wrong type
    /// there is an error even when the environment overrides it).
    pub(super) fn setting<T: serde::de::DeserializeOwned>(
        &mut self,
        d: &Def,
        default: T,
        parse: impl Fn(&str) -> Result<T>,
    ) -> Result<Setting<T>> {
        let file = self.typed(d)?;
        self.pick(d, file, default, parse)
    }

    /// The environment's value read by `parse`, else `file`, else
    /// `default`.
    pub(super) fn pick<T>(
        &self,
        d: &Def,
        file: Option<T>,
        default: T,
        parse: impl Fn(&str) -> Result<T>,
    ) -> Result<Setting<T>> {
        if let Some(v) = self.env(d.var) {
            return Ok(Setting {
                value: parse(&v)?,
                source: Source::Env(d.var),
            });
        }
        Ok(match file {
            Some(value) => Setting {
                value,
                source: self.file_source(),
            },
            None => Setting::default_of(default),
        })
    }

    /// A true-or-false setting.
    pub(super) fn flag(&mut self, d: &Def, default: bool) -> Result<Setting<bool>> {
        self.setting(d, default, |s| {
            super::parse_bool(s).ok_or_else(|| invalid(d.var, s, BOOL_FORM))
        })
    }

    /// A setting written the same way in the environment and the file (a
    /// TOML string or integer there), read by `parse`; the file is read
    /// only without the variable.
    pub(super) fn text<T>(
        &mut self,
        d: &Def,
        default: T,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Setting<T>> {
        if let Some(v) = self.env(d.var) {
            let value = parse(&v).ok_or_else(|| invalid(d.var, &v, d.form))?;
            return Ok(Setting {
                value,
                source: Source::Env(d.var),
            });
        }
        let Some(val) = self.file.take(d.name) else {
            return Ok(Setting::default_of(default));
        };
        let s = match &val {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            other => other.to_string(),
        };
        let value = parse(&s).ok_or_else(|| invalid(&self.key_in(d), &s, d.form))?;
        Ok(Setting {
            value,
            source: self.file_source(),
        })
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
