/*!
The framed hasher every key is built with: each field is framed by its
length, so ("ab","c") and ("a","bc") differ, and remembered, so a miss
can be explained (`explain`).
*/

use super::explain::{Explain, explain};
use crate::store::CacheKey;

/// A hasher that frames every field, so ("ab","c") != ("a","bc"). It also
/// remembers the fields, so a miss can be explained (`kache why-miss`).
pub(crate) struct KeyHasher {
    h: blake3::Hasher,
    fields: Vec<(String, String)>,
}

impl KeyHasher {
    pub(crate) fn new(domain: &str) -> KeyHasher {
        let mut h = KeyHasher {
            h: blake3::Hasher::new(),
            fields: Vec::new(),
        };
        h.field("domain", domain);
        h
    }

    pub(crate) fn field(&mut self, label: &str, value: &str) {
        self.hash(label, value);
        self.fields.push((label.to_string(), value.to_string()));
    }

    /// Hashes `label` and `value` as [`KeyHasher::field`] does (the key
    /// is the same), but accounts for them as `shown` (label, value): for
    /// an argument whose own text carries a value (`-Wl,-rpath,DIR`), so
    /// that the account's names hold only names. An uploaded manifest
    /// carries the names in clear, the values only as keyed digests.
    pub(crate) fn field_shown(&mut self, label: &str, value: &str, shown: (String, String)) {
        self.hash(label, value);
        self.fields.push(shown);
    }

    fn hash(&mut self, label: &str, value: &str) {
        for part in [label, value] {
            self.h.update(&(part.len() as u64).to_le_bytes());
            self.h.update(part.as_bytes());
        }
    }

    pub(crate) fn finish(self) -> CacheKey {
        CacheKey::of(&self.h.finalize())
    }

    /// The hash and a readable account of what went into it.
    pub(crate) fn finish_explained(self) -> (CacheKey, Explain) {
        let e = explain(&self.fields);
        (self.finish(), e)
    }
}
