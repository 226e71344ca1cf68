/*!
The settings of the `[cache.remote]` table: which bucket, how to reach it,
and trust (the signing key, the trusted keys, read-only runners). Bucket,
endpoint, region and prefix make the remote's identity, which the wrapper
reads too. Each definition is followed by its test.
*/

#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::super::file::Input;
use super::super::{KeySource, Setting, Source, expand_tilde};
use super::{Def, Readers, STRING_FORM, TF_FORM};
#[cfg(test)]
use super::{error, load, shown, wrapper};
use crate::units::parse_duration;

/// A string that may be absent (bucket, endpoint, profile).
fn optional(d: &Def, i: &mut Input<'_>) -> Result<Setting<Option<String>>> {
    let file = i.typed::<String>(d)?;
    i.pick(d, file.map(Some), None, |s| Ok(Some(s.to_string())))
}

pub(crate) const BUCKET: Def = Def {
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
pub(crate) const ENDPOINT: Def = Def {
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

pub(crate) const REGION: Def = Def {
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
pub(crate) const PREFIX: Def = Def {
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

pub(crate) const PROFILE: Def = Def {
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
pub(crate) const TIMEOUT: Def = Def {
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

/// `KACHE_SIGNING_KEY` (the key's text), `KACHE_SIGNING_KEY_FILE`, or
/// `cache.remote.signing_key_file`. Both variables at once is an error:
/// which key signs must never be a guess.
pub(crate) const SIGNING_KEY_FILE: Def = Def {
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
pub(crate) const TRUSTED_KEYS: Def = Def {
    name: "cache.remote.trusted_keys",
    var: "KACHE_TRUSTED_KEYS",
    file: true,
    form: "a list of keys such as [\"ci:BASE64\"]",
    default: "none (entries not verified)",
    help: "public keys `name:base64`, comma-separated (a list in the file): pulls and remote hits import only entries one of them signed, and a build restores only those and its own",
    readers: Readers::Wrapper,
    load: |d, i, c| {
        let file = i.typed::<Vec<String>>(d)?;
        // Set, it must name a key: an empty value (a secret missing on a
        // fork, a typo) would otherwise switch verification off unseen.
        c.trusted_keys = match (i.env_set(d.var), file) {
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
    // Set to no key at all: an error, never verification silently off.
    for v in ["", " , "] {
        let e = error("", &[("KACHE_TRUSTED_KEYS", v)]);
        assert_eq!(
            e,
            "KACHE_TRUSTED_KEYS names no key, so nothing pulled could be verified; give at least one `name:base64` key, or unset it to pull unverified"
        );
    }
    let e = error("[cache.remote]\ntrusted_keys = []\n", &[]);
    assert!(
        e.starts_with("cache.remote.trusted_keys in /c.toml names no key"),
        "{e}"
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
    if out.is_empty() {
        bail!(
            "{whence} names no key, so nothing pulled could be verified; give at least one `name:base64` key, or unset it to pull unverified"
        );
    }
    Ok(out)
}

/// `cache.remote.read_only`: a read-only runner never writes to the
/// bucket, and its wrapper records no uploads for the daemon.
pub(crate) const READ_ONLY: Def = Def {
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
