/*!
S3 credentials: where they come from, and the AWS shared credentials file.

First match wins: the `KACHE_S3_*` pair, the `AWS_*` pair (with its
session token), then a profile in the shared credentials file. Half a pair
is an error, never a silent fallback. They are resolved lazily (only a run
that talks to the bucket needs them) and never printed: `Debug` and
`kache config` mask them.
*/

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::config::{Config, env_nonempty, home};

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

    /// The credentials as `kache config` shows them, masked, and where
    /// they came from: (value, source).
    pub(crate) fn shown(cfg: &Config) -> (String, String) {
        match Credentials::resolve(cfg) {
            Ok(Some(c)) => (
                format!("{} / {}", mask(&c.access_key), "****"),
                c.source.clone(),
            ),
            Ok(None) => ("(none)".to_string(), "-".to_string()),
            Err(e) => (format!("error: {e:#}"), "-".to_string()),
        }
    }
}

/// The first four characters, then `****`.
fn mask(s: &str) -> String {
    let keep: String = s.chars().take(4).collect();
    format!("{keep}****")
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

/// The sections of an AWS ini file (`[name]` or `[profile name]`), each
/// a map of lower-cased keys to values.
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
    fn ini_profiles() {
        let m =
            parse_ini("[default]\naws_access_key_id = A\n[profile ci]\naws_secret_access_key=S\n");
        assert_eq!(m["default"]["aws_access_key_id"], "A");
        assert_eq!(m["ci"]["aws_secret_access_key"], "S");
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
