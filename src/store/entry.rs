//! The entry manifest: what one cached compile produced.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::ids::{BlobHash, CacheKey, CrateName, Salt};
use super::{ENTRY_VERSION, valid_file_name};

/// One output file of an entry. `name` is a plain file name (no `/`),
/// relative to the compile's output directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    pub(crate) name: String,
    pub(crate) hash: BlobHash,
    pub(crate) size: u64,
    pub(crate) executable: bool,
}

/// The dep-info file of a compile, stored as text with machine-local
/// paths replaced by sentinels, and written fresh on every restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DepInfo {
    pub(crate) name: String,
    pub(crate) text: String,
}

/// What the wrapper needs to find this entry again without running
/// rustc: the base key (everything known before the compile) and what
/// the compile read beyond it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Inputs {
    pub(crate) base: CacheKey,
    pub(crate) files: Vec<String>,
    pub(crate) env: Vec<String>,
    /// Every file the link read (rlibs of the whole crate graph, native
    /// libraries, objects, linker scripts), for linked outputs.
    #[serde(default)]
    pub(crate) link: Vec<String>,
    /// Files the link relied on not existing (a library searched for in
    /// a directory before the one it was found in).
    #[serde(default)]
    pub(crate) absent: Vec<String>,
    /// Sentinels of the machine-local roots whose real path the outputs
    /// contain: the entry is keyed by their real value.
    #[serde(default)]
    pub(crate) roots: Vec<String>,
    /// Directories whose listing a build script read: keyed by the
    /// names (and kinds) of their entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) dirs: Vec<String>,
    /// A C compile's shadow set (the headers that must stay absent), kept
    /// as what computes it from `files`: a few hundred headers make
    /// thousands of names, which listed out made every lookup slow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) shadows: Option<Shadows>,
}

/// What a C compile's shadow set is computed from, with the headers it
/// read (see `cc::key::shadow_names`), every path normalised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Shadows {
    pub(crate) source: String,
    /// The directories searched for `#include <...>`, in order.
    pub(crate) search: Vec<String>,
    /// Whether a file was included from the command line (`-include`).
    pub(crate) forced: bool,
    /// The names `__has_include` asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) probed: Vec<String>,
}

/// An entry manifest. Serialised as JSON in the store and as
/// `manifest.json` in a remote archive. Decoding checks every identifier
/// (crate name, key, blob hashes, the base key): a manifest with a bad
/// one does not decode, so no `Entry` holds one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) version: u32,
    pub(crate) crate_name: CrateName,
    pub(crate) key: CacheKey,
    pub(crate) files: Vec<FileRecord>,
    #[serde(default)]
    pub(crate) stdout: String,
    #[serde(default)]
    pub(crate) stderr: String,
    #[serde(default)]
    pub(crate) dep_info: Option<DepInfo>,
    #[serde(default)]
    pub(crate) inputs: Option<Inputs>,
    /// How long the original compile took, for "time saved".
    #[serde(default)]
    pub(crate) compile_ms: u64,
    /// Seconds since the epoch when the entry was made.
    #[serde(default)]
    pub(crate) created: u64,
    /// What went into the key, by name (see `wrapper::explain::Explain`), for
    /// `kache why-miss`; the values are keyed digests once `salt` is set.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub(crate) explain: std::collections::BTreeMap<String, String>,
    /// Who can use the entry (crate version, target, toolchain), so a
    /// pull can skip what this build cannot use before downloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) origin: Option<Origin>,
    /// Local only (never packed into an archive): the entry came from
    /// the remote, and which trusted key signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pulled: Option<Pulled>,
    /// The language compiled: `None` for Rust (every entry kache made
    /// before C caching), `Some("c")` for a C, C++ or assembler object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lang: Option<String>,
    /// Set once the manifest is fit to leave the machine (see
    /// [`Entry::salt_values`]): the values of `explain`, and of the
    /// dep-info's `# env-dep:` lines but cargo's own, are keyed digests
    /// under this salt. Public, like a password hash's salt: it defeats
    /// tables computed in advance, and lets a reader that holds a value
    /// compare it (`kache why-miss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) salt: Option<Salt>,
}

/// Provenance of an entry imported from the remote (a pull or a daemon
/// remote hit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pulled {
    /// Seconds since the epoch when it was imported.
    pub(crate) at: u64,
    /// The trusted key that signed it (`NAME:BASE64` public key), `None`
    /// when it was imported without verification (no trusted keys set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) signed_by: Option<String>,
}

impl Pulled {
    /// The signer's key name, if verified.
    pub(crate) fn signer_name(&self) -> Option<&str> {
        self.signed_by.as_deref().and_then(|s| s.split(':').next())
    }
}

/// What an entry was built for. Each field is one safe path component
/// (it becomes part of the remote object name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Origin {
    /// The package version (`CARGO_PKG_VERSION`), `_` outside cargo.
    pub(crate) version: String,
    /// The target triple (`--target`, else the host).
    pub(crate) target: String,
    /// A short digest of the compiler's `-vV` output.
    pub(crate) toolchain: String,
    /// `name@version` of the crates it was compiled against (its
    /// `--extern`s whose origin this store knew), so a pull can leave out
    /// an entry built against a version Cargo.lock does not name. Not
    /// part of the object name (it is read from the manifest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) deps: Vec<String>,
}

/// A value usable as one path component of an object name.
pub(crate) fn valid_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

impl Origin {
    pub(crate) fn is_valid(&self) -> bool {
        valid_component(&self.version)
            && valid_component(&self.target)
            && valid_component(&self.toolchain)
    }
}

impl Entry {
    pub(crate) fn new(crate_name: CrateName, key: CacheKey, files: Vec<FileRecord>) -> Entry {
        Entry {
            version: ENTRY_VERSION,
            crate_name,
            key,
            files,
            stdout: String::new(),
            stderr: String::new(),
            dep_info: None,
            inputs: None,
            compile_ms: 0,
            created: super::now_secs(),
            explain: std::collections::BTreeMap::new(),
            origin: None,
            pulled: None,
            lang: None,
            salt: None,
        }
    }

    /// Makes the manifest fit to leave the machine (an upload): every
    /// value of `explain`, and the value of every dep-info `# env-dep:`
    /// line but those of the variables cargo sets for a compile, becomes
    /// its keyed digest under a new random salt, recorded in `salt`.
    /// Names stay in clear, so `why-miss` still names what differs. An
    /// entry that has a salt already (pulled) is left as it is: never
    /// keyed twice.
    pub(crate) fn salt_values(&mut self) -> Result<()> {
        if self.salt.is_some() {
            return Ok(());
        }
        let salt = Salt::random()?;
        for v in self.explain.values_mut() {
            *v = salt.digest(v);
        }
        if let Some(d) = &mut self.dep_info {
            d.text = crate::wrapper::depinfo::salt_env_values(&d.text, &salt);
        }
        self.salt = Some(salt);
        Ok(())
    }

    /// Checks what a hand-edited or corrupt manifest could get wrong
    /// beyond its identifiers (which decoding checked): it names
    /// `crate_name/key` (the place it was found under), its files are
    /// plain names listed once, its dep-info name is a plain name. Every
    /// manifest read from disk or from an archive passes here before
    /// anything uses its names.
    pub(crate) fn validate(&self, crate_name: &str, key: &str) -> Result<()> {
        if self.crate_name != crate_name || self.key != key {
            bail!(
                "it names {}/{} but is stored as {crate_name}/{key}",
                self.crate_name,
                self.key
            );
        }
        if self.origin.as_ref().is_some_and(|o| !o.is_valid()) {
            bail!("it has an invalid origin (version, target or toolchain)");
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            if !valid_file_name(&f.name) {
                bail!("it names a bad file `{}`", f.name.escape_debug());
            }
            if !seen.insert(f.name.as_str()) {
                bail!("it lists `{}` twice", f.name);
            }
        }
        if let Some(d) = &self.dep_info
            && !valid_file_name(&d.name)
        {
            bail!("it names a bad dep-info file `{}`", d.name.escape_debug());
        }
        Ok(())
    }

    /// Sum of the file sizes (before dedup).
    pub(crate) fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

impl Origin {
    /// The entry's identity as a signature binds it (its long object
    /// name's parts, when the origin is valid).
    pub(crate) fn identity<'a>(
        origin: Option<&'a Origin>,
        crate_name: &'a str,
        key: &'a str,
    ) -> crate::trust::Identity<'a> {
        crate::trust::Identity {
            crate_name,
            key,
            origin: origin
                .filter(|o| o.is_valid())
                .map(|o| (o.version.as_str(), o.target.as_str(), o.toolchain.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::archive::{self, Check, Packed, Unpacked};
    use crate::store::ids::test::{key, krate};

    /// Issue 23: an uploaded manifest names every input in clear, but
    /// holds no flag or env value as text (only keyed digests under the
    /// salt it records); the local manifest stays as it was, the
    /// signature covers what is uploaded, and a pulled entry is uploaded
    /// again as it came (never keyed twice).
    #[test]
    fn an_uploaded_manifest_holds_keyed_values_only() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("a")).unwrap();
        let (hash, size) = s.put_blob_reader(&b"rlib bytes"[..], None).unwrap();
        let mut e = Entry::new(
            krate("foo"),
            key(&"1".repeat(64)),
            vec![FileRecord {
                name: "libfoo.rlib".into(),
                hash,
                size,
                executable: false,
            }],
        );
        for (k, v) in [
            ("arg -C opt-level", "3"),
            ("arg --cfg", "token=\"hunter2a\""),
            ("arg -D SECRET_TOKEN", "hunter2b"),
            ("env:CARGO_PKG_NAME", "foo"),
            ("toolchain", "rustc 1.95.0"),
        ] {
            e.explain.insert(k.to_string(), v.to_string());
        }
        e.dep_info = Some(DepInfo {
            name: "foo-1.d".into(),
            text: "foo-1.d: src/lib.rs\n\nsrc/lib.rs:\n\n# env-dep:API_TOKEN=hunter2c\n".into(),
        });
        s.publish(&e).unwrap();
        s.mark_built(&e);
        let (secret, public) = crate::trust::generate("ci").unwrap();
        let signer = crate::trust::SigningKey::parse(&secret, "test").unwrap();
        let mut up = Vec::new();
        let packed = archive::pack(&s, &e.crate_name, &e.key, &mut up, 3, Some(&signer));
        assert!(matches!(packed.unwrap(), Packed::Done(_)));

        let tar = zstd::decode_all(crate::trust::skip_frame(&up)).unwrap();
        assert!(memchr::memmem::find(&tar, b"hunter2").is_none());
        let m = archive::peek_manifest(&up).unwrap();
        let salt = m.salt.clone().expect("the salt is uploaded");
        assert_eq!(
            m.explain.keys().collect::<Vec<_>>(),
            e.explain.keys().collect::<Vec<_>>()
        );
        for (k, v) in &e.explain {
            assert_eq!(m.explain[k], salt.digest(v), "{k}");
        }
        assert!(m.dep_info.unwrap().text.ends_with(&format!(
            "# env-dep:API_TOKEN={}\n",
            salt.digest("hunter2c")
        )));
        // The local manifest keeps its values.
        let local = s.get(&e.crate_name, &e.key).unwrap().unwrap();
        assert_eq!(local.explain, e.explain);
        assert!(local.salt.is_none());

        // A reader that trusts the key imports it: the signature is over
        // the manifest as uploaded.
        let trusted = vec![crate::trust::parse_trusted(&public).unwrap()];
        let check = Check {
            trusted: &trusted,
            origin: None,
        };
        let s2 = Store::open(&d.path().join("b")).unwrap();
        let got = archive::unpack(&s2, &e.crate_name, &e.key, &up[..], &check).unwrap();
        assert_eq!(got, Unpacked::Imported(e.size()));
        // Pulled and pushed again (to another bucket): as it came.
        let mut again = Vec::new();
        archive::pack(&s2, &e.crate_name, &e.key, &mut again, 3, None).unwrap();
        let m2 = archive::peek_manifest(&again).unwrap();
        assert_eq!(m2.salt, Some(salt));
        assert_eq!(m2.explain, m.explain);
    }
}
