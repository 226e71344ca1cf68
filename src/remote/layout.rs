/*!
Object names in the bucket. Pure: strings in, strings out.

One object per entry, with `{crate}` normalised (lowercase, `-` written
as `_`):

```text
{prefix}/{crate}/{version}/{target}/{toolchain}/{cache_key}.tar.zst
{prefix}/{crate}/{cache_key}.tar.zst          (kache 0.1; still read)
```

The version, target triple and toolchain id of an entry are in its name
so a pull can skip, from the listing alone, what the build cannot use.
Entries that do not know their origin (made by kache 0.1) keep the
short name. An empty prefix means objects sit at the bucket root.
*/

use crate::store::entry::{Origin, valid_component};
use crate::store::{CacheKey, CrateName, normalize_crate};

/// The suffix of every entry object.
pub(crate) const SUFFIX: &str = ".tar.zst";

/// The object name of an entry.
pub(crate) fn object_name(prefix: &str, crate_name: &str, key: &str) -> String {
    format!("{}{key}{SUFFIX}", crate_prefix(prefix, crate_name))
}

/// The object name of an entry that knows its origin (the long name), or
/// the short name.
pub(crate) fn entry_object(
    prefix: &str,
    crate_name: &str,
    key: &str,
    origin: Option<&Origin>,
) -> String {
    match origin.filter(|o| o.is_valid()) {
        Some(o) => format!(
            "{}{}/{}/{}/{key}{SUFFIX}",
            crate_prefix(prefix, crate_name),
            o.version,
            o.target,
            o.toolchain
        ),
        None => object_name(prefix, crate_name, key),
    }
}

/// The listing prefix of one crate's objects, ending in `/`.
pub(crate) fn crate_prefix(prefix: &str, crate_name: &str) -> String {
    format!("{}{}/", root_prefix(prefix), normalize_crate(crate_name))
}

/// The listing prefix of every kache object under `prefix` (`""` when the
/// prefix is empty, otherwise ending in `/`).
pub(crate) fn root_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// The prefix of kache's own objects (use records, the gc lock, doctor
/// probes), beside the crates: `{prefix}/.kache/`.
pub(crate) fn meta_prefix(prefix: &str) -> String {
    format!("{}.kache/", root_prefix(prefix))
}

/// The listing prefix of the use records (`kache gc --remote`).
pub(crate) fn uses_prefix(prefix: &str) -> String {
    format!("{}uses/", meta_prefix(prefix))
}

/// One use record: its time (seconds, zero-padded so names sort by
/// time), an optional tag (`compact`), and a nonce.
pub(crate) fn use_record(prefix: &str, ts: u64, tag: Option<&str>, nonce: &str) -> String {
    match tag {
        Some(t) => format!("{}{ts:012}-{t}-{nonce}.json", uses_prefix(prefix)),
        None => format!("{}{ts:012}-{nonce}.json", uses_prefix(prefix)),
    }
}

/// The lock `kache gc --remote` holds while it works.
pub(crate) fn gc_lock(prefix: &str) -> String {
    format!("{}gc.lock", meta_prefix(prefix))
}

/// The small object `kache doctor` writes, reads back and deletes.
pub(crate) fn doctor_probe(prefix: &str, tag: &str) -> String {
    format!("{}doctor/{tag}", meta_prefix(prefix))
}

/// The crate a listing prefix stands for (`None` for the root prefix,
/// which holds every crate).
pub(crate) fn prefix_crate(prefix: &str, listing: &str) -> Option<String> {
    let c = listing
        .strip_prefix(&root_prefix(prefix))?
        .trim_end_matches('/');
    (!c.is_empty()).then(|| c.to_string())
}

/// A listed entry object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) crate_name: CrateName,
    pub(crate) key: CacheKey,
    /// `None` for a short (kache 0.1) name.
    pub(crate) origin: Option<Origin>,
}

/// Parses a listed object name (either layout). Anything that is not an
/// entry object (foreign files, other prefixes, other nesting, bad keys
/// or components) is `None`.
pub(crate) fn parse(prefix: &str, name: &str) -> Option<Parsed> {
    let rest = name.strip_prefix(&root_prefix(prefix))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (crate_name, file, origin) = match parts.as_slice() {
        [c, f] => (*c, *f, None),
        [c, v, t, tc, f] => {
            let o = Origin {
                version: (*v).to_string(),
                target: (*t).to_string(),
                toolchain: (*tc).to_string(),
                deps: Vec::new(),
            };
            if ![v, t, tc].iter().all(|x| valid_component(x)) {
                return None;
            }
            (*c, *f, Some(o))
        }
        _ => return None,
    };
    Some(Parsed {
        crate_name: CrateName::parse(crate_name)?,
        key: CacheKey::parse(file.strip_suffix(SUFFIX)?)?,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_object(prefix: &str, name: &str) -> Option<(String, String)> {
        parse(prefix, name).map(|p| (p.crate_name.into(), p.key.into()))
    }

    fn key() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn names_round_trip() {
        let k = key();
        let n = object_name("artifacts", "serde-JSON", &k);
        let p = crate_prefix("artifacts", "serde-JSON");
        assert_eq!(prefix_crate("artifacts", &p).as_deref(), Some("serde_json"));
        assert_eq!(prefix_crate("artifacts", &root_prefix("artifacts")), None);
        assert_eq!(prefix_crate("", "foo/").as_deref(), Some("foo"));
        assert_eq!(n, format!("artifacts/serde_json/{k}.tar.zst"));
        assert_eq!(
            parse_object("artifacts", &n),
            Some(("serde_json".into(), k.clone()))
        );
        let n = object_name("", "foo", &k);
        assert_eq!(n, format!("foo/{k}.tar.zst"));
        assert_eq!(parse_object("", &n), Some(("foo".into(), k.clone())));
        let n = object_name("a/b/", "foo", &k);
        assert_eq!(n, format!("a/b/foo/{k}.tar.zst"));
        assert_eq!(parse_object("a/b", &n), Some(("foo".into(), k)));
    }

    #[test]
    fn long_names_carry_the_origin() {
        let k = key();
        let o = Origin {
            version: "1.2.3".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            toolchain: "0123456789abcdef".into(),
            deps: Vec::new(),
        };
        let n = entry_object("artifacts", "Serde-JSON", &k, Some(&o));
        assert_eq!(
            n,
            format!(
                "artifacts/serde_json/1.2.3/x86_64-unknown-linux-gnu/0123456789abcdef/{k}.tar.zst"
            )
        );
        let p = parse("artifacts", &n).unwrap();
        assert_eq!(p.origin, Some(o));
        assert_eq!(
            (p.crate_name.as_str(), p.key.as_str()),
            ("serde_json", k.as_str())
        );
        let short = entry_object("artifacts", "foo", &k, None);
        assert_eq!(parse("artifacts", &short).unwrap().origin, None);
    }

    #[test]
    fn prefixes() {
        assert_eq!(crate_prefix("artifacts", "Foo-Bar"), "artifacts/foo_bar/");
        assert_eq!(crate_prefix("", "foo"), "foo/");
        assert_eq!(root_prefix("/x/"), "x/");
        assert_eq!(root_prefix(""), "");
    }

    #[test]
    fn foreign_objects_ignored() {
        let k = key();
        for bad in [
            format!("other/foo/{k}.tar.zst"),
            format!("artifacts/foo/{k}.tar.gz"),
            format!("artifacts/foo/bar/{k}.tar.zst"),
            format!("artifacts/foo/1.0/x86_64-unknown-linux-gnu/{k}.tar.zst"),
            format!("artifacts/foo/1.0/../abcd/{k}.tar.zst"),
            format!("artifacts/foo/1.0/t/tc/x/{k}.tar.zst"),
            format!("artifacts/Foo/{k}.tar.zst"),
            "artifacts/foo/abc.tar.zst".to_string(),
            "artifacts/README".to_string(),
            format!("artifacts/{k}.tar.zst"),
            format!("artifactsx/foo/{k}.tar.zst"),
        ] {
            assert_eq!(parse_object("artifacts", &bad), None, "{bad}");
        }
    }
}
