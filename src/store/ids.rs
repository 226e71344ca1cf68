/*!
Identifiers that can only hold a valid value.

Cache keys, blob hashes and crate names are parsed once, where they enter
(a manifest read from disk or an archive, a name in a remote listing, a
hash just computed), and carried as their own types from there to
storage, so one cannot be passed for another (a key and a blob hash look
alike: 64 hex digits) and nothing downstream checks them again. Each
reads as `&str` (`Deref`) for formatting paths and object names.
*/

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// 64 lowercase hex digits: the form of a blake3 hash.
fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The normalised form of a cargo package name: lowercase ASCII letters,
/// digits and `_`, at most 128 bytes.
fn is_crate_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $valid:path, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub(crate) struct $name(String);

        impl $name {
            /// The value, if `s` is one.
            // A salt is only decoded or made, never parsed from a name.
            #[allow(dead_code)]
            pub(crate) fn parse(s: &str) -> Option<$name> {
                $valid(s).then(|| $name(s.to_string()))
            }

            pub(crate) fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<$name, String> {
                if $valid(&s) {
                    Ok($name(s))
                } else {
                    Err(format!(concat!("bad ", $what, " `{}`"), s.escape_debug()))
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

identifier!(
    /// An entry's cache key: the blake3 of everything that decides a
    /// compile's outputs.
    CacheKey,
    is_hex64,
    "cache key"
);

identifier!(
    /// A blob's name in the store: the blake3 of its content.
    BlobHash,
    is_hex64,
    "blob hash"
);

identifier!(
    /// A crate's name as the store and the remote layout file it:
    /// normalised (`-` as `_`, lowercase).
    CrateName,
    is_crate_name,
    "crate name"
);

identifier!(
    /// The salt of an uploaded manifest's keyed digests (see
    /// `Entry::salt`): 32 random bytes, in hex.
    Salt,
    is_hex64,
    "salt"
);

impl Salt {
    /// A new salt from the system's random source.
    pub(crate) fn random() -> anyhow::Result<Salt> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
        Ok(Salt(blake3::Hash::from_bytes(bytes).to_hex().to_string()))
    }

    /// The keyed digest of `value` under this salt: 16 hex digits of
    /// blake3 keyed by it. Whoever holds a value can compare it with a
    /// digest; no table computed before the salt existed helps guess one.
    pub(crate) fn digest(&self, value: &str) -> String {
        let key = blake3::Hash::from_hex(self.as_str()).expect("a salt is 64 hex digits");
        blake3::keyed_hash(key.as_bytes(), value.as_bytes()).to_hex()[..16].to_string()
    }
}

impl CacheKey {
    /// The key a hash computed over a compile's inputs names.
    pub(crate) fn of(h: &blake3::Hash) -> CacheKey {
        CacheKey(h.to_hex().to_string())
    }
}

impl BlobHash {
    /// The name of the blob whose content hashed to `h`.
    pub(crate) fn of(h: &blake3::Hash) -> BlobHash {
        BlobHash(h.to_hex().to_string())
    }
}

impl CrateName {
    /// The folder of compiles that name no usable crate (rustc run by
    /// hand with a crate name the store cannot file).
    pub(crate) fn unnamed() -> CrateName {
        CrateName("_".to_string())
    }

    /// A package or crate name as cargo or the user writes it, normalised
    /// (`My-Crate` is `my_crate`); `None` if it cannot be one.
    pub(crate) fn normalize(name: &str) -> Option<CrateName> {
        CrateName::parse(&name.to_ascii_lowercase().replace('-', "_"))
    }
}

/// Whether `s` is a cache key or a blob hash in form (a file name in the
/// store's directories before it is parsed as one or the other).
pub(crate) fn is_hash_form(s: &str) -> bool {
    is_hex64(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_values_parse() {
        let hex = "ab".repeat(32);
        assert!(CacheKey::parse(&hex).is_some());
        assert!(BlobHash::parse(&hex).is_some());
        for bad in [
            "",
            "AB",
            &"AB".repeat(32),
            &"ab".repeat(31),
            &format!("{hex}0"),
            "../x",
        ] {
            assert!(CacheKey::parse(bad).is_none(), "{bad}");
            assert!(BlobHash::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(CrateName::normalize("My-Crate").unwrap(), "my_crate");
        for bad in ["", "a/b", "..", "a b", "é", &"a".repeat(129)] {
            assert!(CrateName::normalize(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn salts_are_random_and_key_their_digests() {
        let (a, b) = (Salt::random().unwrap(), Salt::random().unwrap());
        assert_ne!(a, b);
        assert!(Salt::parse(&a).is_some());
        assert_eq!(a.digest("hunter2"), a.digest("hunter2"));
        assert_eq!(a.digest("hunter2").len(), 16);
        assert_ne!(a.digest("hunter2"), b.digest("hunter2"));
        assert_ne!(a.digest("hunter2"), a.digest("hunter3"));
        // Not the unkeyed hash a table could be computed for in advance.
        let plain = blake3::hash(b"hunter2").to_hex();
        assert!(!plain.contains(&a.digest("hunter2")));
    }

    #[test]
    fn decoding_checks_and_encoding_is_the_plain_string() {
        let hex = "0f".repeat(32);
        let k: CacheKey = serde_json::from_str(&format!("\"{hex}\"")).unwrap();
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{hex}\""));
        let e = serde_json::from_str::<BlobHash>("\"../../etc/passwd\"").unwrap_err();
        assert!(
            e.to_string().contains("bad blob hash `../../etc/passwd`"),
            "{e}"
        );
        assert!(serde_json::from_str::<CrateName>("\"Bad\"").is_err());
        let h = blake3::hash(b"x");
        assert_eq!(CacheKey::of(&h).as_str(), h.to_hex().as_str());
    }
}

/// Test shorthands: the value, which the test knows is valid.
#[cfg(test)]
pub(crate) mod test {
    use super::{BlobHash, CacheKey, CrateName};

    pub(crate) fn krate(s: &str) -> CrateName {
        CrateName::parse(s).expect("a valid crate name")
    }

    pub(crate) fn key(s: &str) -> CacheKey {
        CacheKey::parse(s).expect("a valid key")
    }

    pub(crate) fn blob(s: &str) -> BlobHash {
        BlobHash::parse(s).expect("a valid blob hash")
    }
}
