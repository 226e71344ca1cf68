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
    /// The framed fields, hashed at the end in one pass (thousands of
    /// short fields hash far faster so).
    framed: Vec<u8>,
    fields: Vec<(String, String)>,
}

impl KeyHasher {
    pub(crate) fn new(domain: &str) -> KeyHasher {
        let mut h = KeyHasher {
            framed: Vec::new(),
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

    /// Hashes a field as [`KeyHasher::field`] does, leaving it out of
    /// the account: for fields too many to show one by one, accounted
    /// for together with [`KeyHasher::account`].
    pub(crate) fn hidden(&mut self, label: &str, value: &str) {
        self.hash(label, value);
    }

    /// Adds to the account without hashing: a summary of hidden fields.
    pub(crate) fn account(&mut self, label: &str, value: String) {
        self.fields.push((label.to_string(), value));
    }

    fn hash(&mut self, label: &str, value: &str) {
        for part in [label, value] {
            self.framed
                .extend_from_slice(&(part.len() as u64).to_le_bytes());
            self.framed.extend_from_slice(part.as_bytes());
        }
    }

    pub(crate) fn finish(self) -> CacheKey {
        CacheKey::of(&blake3::hash(&self.framed))
    }

    /// The hash and a readable account of what went into it.
    pub(crate) fn finish_explained(self) -> (CacheKey, Explain) {
        let e = explain(&self.fields);
        (self.finish(), e)
    }
}
