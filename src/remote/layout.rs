/*!
Object names in the bucket. Pure: strings in, strings out.

One object per entry: `{prefix}/{crate}/{cache_key}.tar.zst`, with
`{crate}` normalised (lowercase, `-` written as `_`). An empty prefix
means objects sit at the bucket root: `{crate}/{cache_key}.tar.zst`.
*/

use crate::store::{normalize_crate, valid_crate, valid_key};

/// The suffix of every entry object.
pub(crate) const SUFFIX: &str = ".tar.zst";

/// The object name of an entry.
pub(crate) fn object_name(prefix: &str, crate_name: &str, key: &str) -> String {
    format!("{}{key}{SUFFIX}", crate_prefix(prefix, crate_name))
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

/// The crate a listing prefix stands for (`None` for the root prefix,
/// which holds every crate).
pub(crate) fn prefix_crate(prefix: &str, listing: &str) -> Option<String> {
    let c = listing
        .strip_prefix(&root_prefix(prefix))?
        .trim_end_matches('/');
    (!c.is_empty()).then(|| c.to_string())
}

/// Parses a listed object name back into (crate, key). Anything that is
/// not an entry object of this layout (foreign files, other prefixes,
/// nested paths, bad keys) is `None`.
pub(crate) fn parse_object(prefix: &str, name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix(&root_prefix(prefix))?;
    let (crate_name, file) = rest.split_once('/')?;
    let key = file.strip_suffix(SUFFIX)?;
    if !valid_crate(crate_name) || !valid_key(key) {
        return None;
    }
    Some((crate_name.to_string(), key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
