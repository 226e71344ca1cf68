/*!
Remote archives: one self-contained `tar.zst` per entry.

An archive holds `manifest.json` (the entry manifest) first, then one
member `files/<name>` per file of the manifest, in manifest order. Packing
streams blobs from the store; unpacking streams members into a staging
directory under `tmp/` and checks everything before the store sees any of
it:

- only regular files with exactly the names the manifest lists (so `..`,
  absolute names, links and devices are refused by construction: archive
  names are matched, never used as paths), each at most once;
- each member's size equals the manifest's, and no more bytes than that
  are ever read (a decompression bomb stops at the manifest size);
- each file's blake3 equals the manifest's hash;
- the manifest's crate and key equal the object's name;
- with trusted keys, the signature frame in front of the zstd stream is
  a trusted key's signature over the object's identity and the manifest
  (see `trust`), checked before any file is staged.

Packing with a signing key writes that frame first.

Only then are the staged files moved into `blobs/` and the manifest
published, under the store's writer lock. A failure leaves nothing but
`tmp/` junk, which is removed on the way out.
*/

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

use super::entry::{Origin, Pulled};
use super::tarread::Reader;
use super::{CacheKey, CrateName, ENTRY_VERSION, Entry, Store, now_secs, write_hashed};
use crate::trust::{self, SigningKey, TrustedKey};

/// Largest manifest we accept (it holds captured compiler output).
const MAX_MANIFEST: u64 = 64 << 20;

/// The largest zstd window an archive may use (8 MiB, what level 19
/// uses): a frame asking for more is not decoded, so no object can make
/// a reader allocate more than that per transfer.
const WINDOW_LOG_MAX: u32 = 23;

/// A zstd decoder that refuses frames wanting more than
/// `WINDOW_LOG_MAX`.
fn decoder<R: Read>(r: R) -> Result<zstd::Decoder<'static, std::io::BufReader<R>>> {
    let mut d = zstd::Decoder::new(r)?;
    d.window_log_max(WINDOW_LOG_MAX)?;
    Ok(d)
}

/// Result of packing an entry.
#[derive(Debug)]
pub(crate) enum Packed {
    /// Bytes written (compressed).
    Done(u64),
    /// The entry (or one of its blobs) disappeared: gc or purge ran.
    Vanished,
    /// A signing key was given, but this machine did not compile the
    /// entry (it was pulled, or its manifest changed since it was built):
    /// a writer vouches only for its own.
    NotBuiltHere,
}

/// Result of unpacking an archive into the store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unpacked {
    /// Imported; uncompressed size of its files.
    Imported(u64),
    /// The entry appeared locally meanwhile; nothing was written.
    AlreadyPresent,
}

/// What `unpack` checks beyond the archive itself.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Check<'a> {
    /// Import only entries signed by one of these (none: no check).
    pub(crate) trusted: &'a [TrustedKey],
    /// The origin the object's (long) name gives, which the signature
    /// must be bound to.
    pub(crate) origin: Option<&'a Origin>,
}

/// Writes the entry `crate_name/key` as a zstd tar to `w`, signed with
/// `signer` if given (the signature frame first).
pub(crate) fn pack(
    store: &Store,
    crate_name: &CrateName,
    key: &CacheKey,
    w: impl Write,
    level: i32,
    signer: Option<&SigningKey>,
) -> Result<Packed> {
    let Some(mut entry) = store.get(crate_name, key)? else {
        return Ok(Packed::Vanished);
    };
    // A signer vouches only for what this machine compiled: never for a
    // pulled entry (verified or not, whoever signed it), and not for a
    // manifest changed since it was built (see `Store::mark_built`).
    if signer.is_some() {
        let on_disk = fs::read(store.entry_path(crate_name, key)).unwrap_or_default();
        if entry.pulled.is_some() || !store.built_here(crate_name, key, &on_disk) {
            return Ok(Packed::NotBuiltHere);
        }
    }
    // Provenance is this store's own record, not part of the entry.
    entry.pulled = None;
    // Flag and env values leave the machine only as keyed digests.
    entry.salt_values()?;
    let mut blobs = Vec::with_capacity(entry.files.len());
    for f in &entry.files {
        match fs::File::open(store.blob_path(&f.hash)) {
            Ok(file) => blobs.push(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Packed::Vanished),
            Err(e) => return Err(e).with_context(|| format!("cannot read blob {}", f.hash)),
        }
    }
    let manifest = serde_json::to_vec(&entry)?;
    let mut counter = CountingWriter { inner: w, count: 0 };
    if let Some(k) = signer {
        // The manifest names every file's blake3, and each blob is
        // checked against it below as it is streamed: what is signed is
        // what is uploaded.
        let id = Origin::identity(entry.origin.as_ref(), &entry.crate_name, &entry.key);
        let hash = blake3::hash(&manifest).to_hex();
        counter
            .write_all(&k.frame(&id, hash.as_str()))
            .context("cannot write archive")?;
    }
    let mut enc = zstd::Encoder::new(counter, level).context("zstd init failed")?;
    // Levels 20 to 22 would use windows of 32 to 128 MiB, which every
    // reader would have to allocate: held to what readers accept.
    // A checksum over the whole stream: a damaged object is reported
    // even where the damage falls outside every checked file (`unpack`
    // reads the stream to its end).
    enc.include_checksum(true).context("zstd init failed")?;
    if level >= 20 {
        enc.window_log(WINDOW_LOG_MAX).context("zstd init failed")?;
    }
    {
        let mut tar = tar::Builder::new(&mut enc);
        let mut h = header(manifest.len() as u64, 0o644, entry.created);
        tar.append_data(&mut h, "manifest.json", &manifest[..])
            .context("cannot write archive")?;
        for (f, file) in entry.files.iter().zip(blobs) {
            let mode = if f.executable { 0o755 } else { 0o644 };
            let mut h = header(f.size, mode, entry.created);
            let on_disk = file
                .metadata()
                .with_context(|| format!("cannot read blob {}", f.hash))?
                .len();
            if on_disk != f.size {
                return Err(CorruptBlob::new(
                    f,
                    format!("it is {on_disk} bytes, the manifest says {}", f.size),
                )
                .into());
            }
            // Read exactly the manifest size and hash what is streamed: a
            // blob changed under us must never reach the bucket, where an
            // object is never uploaded again.
            let mut r = HashingReader {
                inner: file.take(f.size),
                hasher: blake3::Hasher::new(),
                count: 0,
            };
            tar.append_data(&mut h, format!("files/{}", f.name), &mut r)
                .with_context(|| format!("cannot pack {}", f.name))?;
            if r.count != f.size {
                return Err(CorruptBlob::new(
                    f,
                    format!("only {} of its {} bytes could be read", r.count, f.size),
                )
                .into());
            }
            if f.hash != r.hasher.finalize().to_hex().as_str() {
                return Err(
                    CorruptBlob::new(f, "its content does not match its hash".into()).into(),
                );
            }
        }
        tar.finish().context("cannot finish archive")?;
    }
    let counter = enc.finish().context("zstd finish failed")?;
    Ok(Packed::Done(counter.count))
}

fn header(size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// A local blob whose size or content differs from its manifest: the
/// entry must not be uploaded (see `Store::drop_corrupt_entry`).
#[derive(Debug)]
pub(crate) struct CorruptBlob {
    pub(crate) hash: super::BlobHash,
    pub(crate) name: String,
    pub(crate) why: String,
}

impl CorruptBlob {
    fn new(f: &super::FileRecord, why: String) -> CorruptBlob {
        CorruptBlob {
            hash: f.hash.clone(),
            name: f.name.clone(),
            why,
        }
    }
}

impl std::fmt::Display for CorruptBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blob {} of `{}` is corrupt: {}",
            &self.hash[..self.hash.len().min(12)],
            self.name,
            self.why
        )
    }
}

impl std::error::Error for CorruptBlob {}

/// Hashes and counts what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The manifest of an archive from its first bytes (the manifest is its
/// first member); `None` if they do not hold all of it.
pub(crate) fn peek_manifest(head: &[u8]) -> Option<Entry> {
    let dec = decoder(trust::skip_frame(head)).ok()?;
    let json = read_manifest(&mut Reader::new(dec)).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The bytes of the manifest, the first member of an archive: at most
/// `MAX_MANIFEST` of them are read.
fn read_manifest(ar: &mut Reader<impl Read>) -> Result<Vec<u8>> {
    manifest_member(ar)?;
    let mut buf = Vec::new();
    ar.read_to_end(&mut buf).context("corrupt archive")?;
    Ok(buf)
}

/// Reads the header of the manifest, the first member of an archive.
fn manifest_member(ar: &mut Reader<impl Read>) -> Result<()> {
    let first = ar.next()?.ok_or_else(|| anyhow!("empty archive"))?;
    if first.name != b"manifest.json" {
        bail!("archive does not start with manifest.json");
    }
    if first.size > MAX_MANIFEST {
        bail!("manifest larger than {MAX_MANIFEST} bytes");
    }
    Ok(())
}

/// Streams the manifest (positioned by `manifest_member`) into `w`,
/// hashing it: its blake3, with no more than one buffer in memory.
fn hash_manifest(ar: &mut Reader<impl Read>, w: impl Write) -> Result<blake3::Hash> {
    struct Tee<W> {
        w: W,
        h: blake3::Hasher,
    }
    impl<W: Write> Write for Tee<W> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = self.w.write(b)?;
            self.h.update(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.w.flush()
        }
    }
    let mut t = Tee {
        w,
        h: blake3::Hasher::new(),
    };
    std::io::copy(ar, &mut t).context("corrupt archive")?;
    t.w.flush()?;
    Ok(t.h.finalize())
}

/// A reader of a slice that notes whether its end was reached: an error
/// after that is the slice being too short, not corrupt data.
struct Ends<'a> {
    rest: &'a [u8],
    ended: bool,
}

impl Read for Ends<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.rest.len().min(buf.len());
        if n == 0 && !buf.is_empty() {
            self.ended = true;
        }
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// With trusted keys, what the first bytes of an object (`head`; all of
/// it when `whole`) tell: `Err` if it is not signed by a trusted key for
/// this name, `Ok(true)` if it is, `Ok(false)` if they end before the
/// manifest does. Decided on the frame alone when it is missing or names
/// no trusted key; otherwise the manifest is hashed as it streams (never
/// held in memory) and the signature checked. Data that does not decode
/// is refused here, not downloaded further.
pub(crate) fn check_head(
    head: &[u8],
    whole: bool,
    crate_name: &CrateName,
    key: &CacheKey,
    check: &Check<'_>,
) -> std::result::Result<bool, trust::Refused> {
    let id = Origin::identity(check.origin, crate_name, key);
    let mut src = Ends {
        rest: head,
        ended: false,
    };
    let Ok((frame, rest)) = trust::read_frame(&mut src) else {
        return if whole {
            Err(trust::Refused(
                "not signed by a trusted key (its signature frame is cut short)".into(),
            ))
        } else {
            Ok(false)
        };
    };
    let named = match &frame {
        trust::Frame::Signed { key, .. } => check.trusted.iter().any(|t| &t.name == key),
        _ => false,
    };
    if !named {
        // Unsigned, malformed, or by a key not trusted: whatever follows.
        trust::verify(check.trusted, &frame, &id, "")?;
        return Ok(false);
    }
    let hashed = decoder(rest).and_then(|dec| {
        let mut ar = Reader::new(dec);
        manifest_member(&mut ar)?;
        hash_manifest(&mut ar, std::io::sink())
    });
    match hashed {
        Ok(h) => {
            trust::verify(check.trusted, &frame, &id, h.to_hex().as_str())?;
            Ok(true)
        }
        Err(_) if src.ended && !whole => Ok(false),
        Err(e) => Err(trust::Refused(format!(
            "not signed by a trusted key (its manifest cannot be read: {e:#})"
        ))),
    }
}

/// Checks the archive read from `r` and imports it as `crate_name/key`.
/// Nothing is visible in the store unless every check passes; an entry
/// no trusted key signed is refused with a `trust::Refused` error.
pub(crate) fn unpack(
    store: &Store,
    crate_name: &CrateName,
    key: &CacheKey,
    r: impl Read,
    check: &Check<'_>,
) -> Result<Unpacked> {
    if store.contains(crate_name, key) {
        return Ok(Unpacked::AlreadyPresent);
    }
    let staging = store.tmp_path("pull");
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let res = unpack_staged(store, crate_name, key, r, check, &staging);
    let _ = fs::remove_dir_all(&staging);
    res
}

fn unpack_staged(
    store: &Store,
    crate_name: &CrateName,
    key: &CacheKey,
    r: impl Read,
    check: &Check<'_>,
    staging: &std::path::Path,
) -> Result<Unpacked> {
    let (frame, r) = trust::read_frame(r).context("corrupt archive")?;
    let dec = decoder(r).context("not a zstd stream")?;
    let mut ar = Reader::new(dec);
    let (buf, signed_by) = if check.trusted.is_empty() {
        (read_manifest(&mut ar)?, None)
    } else {
        // Before the manifest is parsed or anything staged, and bound to
        // the name the object was found under, not to what its manifest
        // claims. Until then it is on disk, not in memory.
        let id = Origin::identity(check.origin, crate_name, key);
        manifest_member(&mut ar)?;
        let path = staging.join("manifest.json");
        let f =
            fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let hash = hash_manifest(&mut ar, std::io::BufWriter::new(f))?;
        let k = trust::verify(check.trusted, &frame, &id, hash.to_hex().as_str())?;
        let buf = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if blake3::hash(&buf) != hash {
            bail!("the staged manifest changed");
        }
        (buf, Some(k.to_string()))
    };
    let mut entry: Entry = serde_json::from_slice(&buf).context("corrupt manifest")?;
    check_manifest(&entry, crate_name, key)?;
    // The archive's own claim, if any, is replaced by what was checked.
    entry.pulled = Some(Pulled {
        at: now_secs(),
        signed_by,
    });

    let wanted: HashMap<&str, usize> = entry
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.as_str(), i))
        .collect();
    let mut staged: Vec<Option<PathBuf>> = vec![None; entry.files.len()];
    // Every member must be a file the manifest names, once, at the
    // manifest's size: what is read is bounded by the manifest.
    while let Some(m) = ar.next()? {
        let name = m
            .name
            .strip_prefix(b"files/")
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or_else(|| anyhow!("unexpected member `{}`", m.name_lossy()))?;
        let &i = wanted
            .get(name)
            .ok_or_else(|| anyhow!("member `{name}` is not in the manifest"))?;
        if staged[i].is_some() {
            bail!("member `{name}` appears twice");
        }
        let rec = &entry.files[i];
        if m.size != rec.size {
            bail!("member `{name}` size differs from the manifest");
        }
        let dst = staging.join(format!("{i}"));
        let (hash, size) = write_hashed(&mut ar, &dst, Some(rec.size))
            .with_context(|| format!("cannot extract `{name}`"))?;
        if size != rec.size {
            bail!(
                "member `{name}` is truncated ({size} of {} bytes)",
                rec.size
            );
        }
        if hash != rec.hash {
            bail!("member `{name}` does not match its blake3 hash");
        }
        staged[i] = Some(dst);
    }
    ar.finish()?;
    if let Some(i) = staged.iter().position(Option::is_none) {
        bail!("archive lacks `{}`", entry.files[i].name);
    }

    let _guard = store.writer_lock()?;
    if store.contains(crate_name, key) {
        return Ok(Unpacked::AlreadyPresent);
    }
    for (rec, tmp) in entry.files.iter().zip(&staged) {
        let tmp = tmp.as_ref().expect("checked above");
        store.adopt_blob(tmp, &rec.hash)?;
    }
    if store.publish(&entry)? {
        if entry.pulled.as_ref().is_some_and(|p| p.signed_by.is_none()) {
            store.mark_unverified();
        }
        Ok(Unpacked::Imported(entry.size()))
    } else {
        Ok(Unpacked::AlreadyPresent)
    }
}

fn check_manifest(e: &Entry, crate_name: &str, key: &str) -> Result<()> {
    if e.version != ENTRY_VERSION {
        bail!("manifest format {} is not {ENTRY_VERSION}", e.version);
    }
    e.validate(crate_name, key)
        .map_err(|why| anyhow!("bad manifest: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BlobHash, FileRecord, ids};

    fn store_with_entry() -> (tempfile::TempDir, Store, Entry) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("a")).unwrap();
        let (h, n) = s.put_blob_reader(&b"rlib bytes"[..], None).unwrap();
        let (h2, n2) = s.put_blob_reader(&b"#!bin"[..], None).unwrap();
        let mut e = Entry::new(
            crate::store::ids::test::krate("foo"),
            crate::store::ids::test::key(&"1".repeat(64)),
            vec![
                FileRecord {
                    name: "libfoo.rlib".into(),
                    hash: h,
                    size: n,
                    executable: false,
                },
                FileRecord {
                    name: "foo".into(),
                    hash: h2,
                    size: n2,
                    executable: true,
                },
            ],
        );
        e.stderr = "warning: x".into();
        s.publish(&e).unwrap();
        s.mark_built(&e);
        (d, s, e)
    }

    fn packed(s: &Store, e: &Entry) -> Vec<u8> {
        let mut out = Vec::new();
        match pack(s, &e.crate_name, &e.key, &mut out, 3, None).unwrap() {
            Packed::Done(n) => assert_eq!(n as usize, out.len()),
            Packed::Vanished | Packed::NotBuiltHere => panic!("not packed"),
        }
        out
    }

    #[test]
    fn round_trip() {
        let (d, s, e) = store_with_entry();
        let bytes = packed(&s, &e);
        let s2 = Store::open(&d.path().join("b")).unwrap();
        let syncs = || crate::store::SYNCS.with(std::cell::Cell::get);
        let n0 = syncs();
        let got = unpack(&s2, &e.crate_name, &e.key, &bytes[..], &Check::default()).unwrap();
        assert_eq!(got, Unpacked::Imported(e.size()));
        // An import syncs each file and the manifest, once each.
        assert_eq!(syncs() - n0, e.files.len() as u64 + 1);
        let e2 = s2.get(&e.crate_name, &e.key).unwrap().unwrap();
        assert_eq!(e2.files, e.files);
        assert_eq!(e2.stderr, "warning: x");
        assert_eq!(
            fs::read(s2.blob_path(&e.files[0].hash)).unwrap(),
            b"rlib bytes"
        );
        assert_eq!(
            unpack(&s2, &e.crate_name, &e.key, &bytes[..], &Check::default()).unwrap(),
            Unpacked::AlreadyPresent
        );
        assert_eq!(fs::read_dir(s2.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn signed_archives_verify_peek_and_refuse_before_staging() {
        let (d, s, e) = store_with_entry();
        let (secret, public) = crate::trust::generate("ci").unwrap();
        let key = SigningKey::parse(&secret, "test").unwrap();
        let mut bytes = Vec::new();
        assert!(matches!(
            pack(&s, &e.crate_name, &e.key, &mut bytes, 3, Some(&key)).unwrap(),
            Packed::Done(_)
        ));
        // The manifest is read past the signature frame.
        assert_eq!(peek_manifest(&bytes).unwrap().key, e.key);
        let trusted = vec![crate::trust::parse_trusted(&public).unwrap()];
        let check = Check {
            trusted: &trusted,
            origin: None,
        };
        // Another key: refused, and nothing reaches the store.
        let (_, other) = crate::trust::generate("other").unwrap();
        let others = vec![crate::trust::parse_trusted(&other).unwrap()];
        let s2 = Store::open(&d.path().join("b")).unwrap();
        let err = unpack(
            &s2,
            &e.crate_name,
            &e.key,
            &bytes[..],
            &Check {
                trusted: &others,
                origin: None,
            },
        )
        .unwrap_err();
        assert!(err.is::<crate::trust::Refused>(), "{err:#}");
        assert!(s2.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(s2.root().join("blobs")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(s2.root().join("tmp")).unwrap().count(), 0);
        // Bound to the name: a long name's origin it was not signed for.
        let origin = crate::store::entry::Origin {
            version: "1.0.0".into(),
            target: "t".into(),
            toolchain: "tc".into(),
            deps: Vec::new(),
        };
        let moved = Check {
            trusted: &trusted,
            origin: Some(&origin),
        };
        assert!(unpack(&s2, &e.crate_name, &e.key, &bytes[..], &moved).is_err());
        // The trusted key: imported, provenance recorded, not marked.
        assert_eq!(
            unpack(&s2, &e.crate_name, &e.key, &bytes[..], &check).unwrap(),
            Unpacked::Imported(e.size())
        );
        let got = s2.get(&e.crate_name, &e.key).unwrap().unwrap();
        assert_eq!(
            got.pulled.unwrap().signed_by.as_deref(),
            Some(public.as_str())
        );
        assert!(!s2.has_unverified());
        // Unsigned, without a check: imported and marked unverified; a
        // signing writer never vouches for it.
        let s3 = Store::open(&d.path().join("c")).unwrap();
        unpack(&s3, &e.crate_name, &e.key, &bytes[..], &Check::default()).unwrap();
        assert!(s3.has_unverified());
        let mut out = Vec::new();
        assert!(matches!(
            pack(&s3, &e.crate_name, &e.key, &mut out, 3, Some(&key)).unwrap(),
            Packed::NotBuiltHere
        ));
        // Pulled and signed by a trusted key: another signer never signs
        // it again.
        let (secret2, _) = crate::trust::generate("other").unwrap();
        let key2 = SigningKey::parse(&secret2, "test").unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            pack(&s2, &e.crate_name, &e.key, &mut out, 3, Some(&key2)).unwrap(),
            Packed::NotBuiltHere
        ));
        // Its `pulled` field edited away (as every earlier kache wrote
        // pulled entries): still not signed.
        let manifest = |st: &Store| st.entry_path(&e.crate_name, &e.key);
        let mut m: serde_json::Value =
            serde_json::from_slice(&fs::read(manifest(&s3)).unwrap()).unwrap();
        m.as_object_mut().unwrap().remove("pulled");
        fs::write(manifest(&s3), serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(
            s3.get(&e.crate_name, &e.key)
                .unwrap()
                .unwrap()
                .pulled
                .is_none()
        );
        let mut out = Vec::new();
        assert!(matches!(
            pack(&s3, &e.crate_name, &e.key, &mut out, 3, Some(&key)).unwrap(),
            Packed::NotBuiltHere
        ));
        // A built entry whose manifest was edited since: not signed.
        let mut m: serde_json::Value =
            serde_json::from_slice(&fs::read(manifest(&s)).unwrap()).unwrap();
        m["stderr"] = "planted".into();
        fs::write(manifest(&s), serde_json::to_vec(&m).unwrap()).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            pack(&s, &e.crate_name, &e.key, &mut out, 3, Some(&key)).unwrap(),
            Packed::NotBuiltHere
        ));
        // The provenance is never packed.
        let mut out = Vec::new();
        pack(&s2, &e.crate_name, &e.key, &mut out, 3, None).unwrap();
        assert!(peek_manifest(&out).unwrap().pulled.is_none());
    }

    #[test]
    fn a_head_tells_refused_verified_or_not_yet() {
        let (_d, s, e) = store_with_entry();
        let (secret, public) = crate::trust::generate("ci").unwrap();
        let key = SigningKey::parse(&secret, "test").unwrap();
        let mut signed = Vec::new();
        pack(&s, &e.crate_name, &e.key, &mut signed, 3, Some(&key)).unwrap();
        let trusted = vec![crate::trust::parse_trusted(&public).unwrap()];
        let check = Check {
            trusted: &trusted,
            origin: None,
        };
        let head = |b: &[u8]| check_head(b, b.len() == signed.len(), &e.crate_name, &e.key, &check);
        assert!(head(&signed).unwrap());
        // Cut before the manifest ends: undecided.
        let frame = signed.len() - trust::skip_frame(&signed).len();
        assert_eq!(head(&signed[..frame + 20]).ok(), Some(false));
        assert!(head(&packed(&s, &e)[..10]).is_err(), "unsigned");
        let other = crate::store::ids::test::key(&"9".repeat(64));
        assert!(check_head(&signed, true, &e.crate_name, &other, &check).is_err());
    }

    #[test]
    fn wrong_name_and_corruption_import_nothing() {
        let (d, s, e) = store_with_entry();
        let bytes = packed(&s, &e);
        let s2 = Store::open(&d.path().join("b")).unwrap();
        assert!(
            unpack(
                &s2,
                &ids::test::krate("bar"),
                &e.key,
                &bytes[..],
                &Check::default()
            )
            .is_err()
        );
        let mut trunc = bytes.clone();
        trunc.truncate(bytes.len() / 2);
        assert!(unpack(&s2, &e.crate_name, &e.key, &trunc[..], &Check::default()).is_err());
        assert!(unpack(&s2, &e.crate_name, &e.key, &b"junk"[..], &Check::default()).is_err());
        assert!(s2.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(s2.root().join("blobs")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(s2.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_corrupt_blob_is_never_packed() {
        for (why, damage) in [
            ("truncated", &b"rlib"[..]),
            ("same size, other bytes", &b"RLIB BYTES"[..]),
            ("longer", &b"rlib bytes and more"[..]),
        ] {
            let (_d, s, e) = store_with_entry();
            let p = s.blob_path(&e.files[0].hash);
            let mut perm = fs::metadata(&p).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            fs::set_permissions(&p, perm).unwrap();
            fs::write(&p, damage).unwrap();
            let mut out = Vec::new();
            let err = pack(&s, &e.crate_name, &e.key, &mut out, 3, None).expect_err(why);
            let cb = err.downcast_ref::<CorruptBlob>().expect(why);
            assert_eq!(cb.name, "libfoo.rlib", "{why}");
        }
    }

    #[test]
    fn vanished_entry() {
        let (_d, s, e) = store_with_entry();
        s.remove(&e.crate_name, &e.key).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            pack(&s, &e.crate_name, &e.key, &mut out, 3, None).unwrap(),
            Packed::Vanished
        ));
    }

    /// A raw member for hostile archives: any name, any type.
    struct Member<'a> {
        name: &'a [u8],
        kind: tar::EntryType,
        size: u64,
        data: &'a [u8],
        link: Option<&'a str>,
    }

    fn reg<'a>(name: &'a str, data: &'a [u8]) -> Member<'a> {
        Member {
            name: name.as_bytes(),
            kind: tar::EntryType::Regular,
            size: data.len() as u64,
            data,
            link: None,
        }
    }

    fn raw_archive(members: &[Member<'_>]) -> Vec<u8> {
        let mut tar_bytes = Vec::new();
        for m in members {
            let mut h = tar::Header::new_gnu();
            {
                let g = h.as_gnu_mut().unwrap();
                g.name = [0; 100];
                g.name[..m.name.len()].copy_from_slice(m.name);
            }
            h.set_entry_type(m.kind);
            h.set_size(m.size);
            h.set_mode(0o644);
            if let Some(l) = m.link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            tar_bytes.extend_from_slice(h.as_bytes());
            tar_bytes.extend_from_slice(m.data);
            let pad = (512 - m.data.len() % 512) % 512;
            tar_bytes.extend(std::iter::repeat_n(0u8, pad));
        }
        tar_bytes.extend(std::iter::repeat_n(0u8, 1024));
        zstd::encode_all(&tar_bytes[..], 3).unwrap()
    }

    fn manifest(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
        let key = "2".repeat(64);
        let recs = files
            .iter()
            .map(|(n, d)| FileRecord {
                name: (*n).to_string(),
                hash: BlobHash::of(&blake3::hash(d)),
                size: d.len() as u64,
                executable: false,
            })
            .collect();
        let e = Entry::new(
            crate::store::ids::test::krate("evil"),
            crate::store::ids::test::key(&key),
            recs,
        );
        (key, serde_json::to_vec(&e).unwrap())
    }

    fn evil() -> CrateName {
        ids::test::krate("evil")
    }

    fn assert_rejected(bytes: &[u8], key: &str, why: &str) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s")).unwrap();
        let err =
            unpack(&s, &evil(), &ids::test::key(key), bytes, &Check::default()).expect_err(why);
        assert!(s.list().unwrap().is_empty(), "{why}: entry imported");
        assert_eq!(
            fs::read_dir(s.root().join("blobs")).unwrap().count(),
            0,
            "{why}: blob imported"
        );
        assert_eq!(
            fs::read_dir(s.root().join("tmp")).unwrap().count(),
            0,
            "{why}: tmp left"
        );
        // Nothing escaped next to the store either.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("s")], "{why}: {err:#}");
    }

    /// The payload of the one file the hostile archives' manifest names.
    const PAYLOAD: &[u8] = b"payload";

    /// The key and manifest of an entry of one file, `libx.rlib`.
    fn libx_manifest() -> (String, Vec<u8>) {
        manifest(&[("libx.rlib", PAYLOAD)])
    }

    /// `files/libx.rlib` as a member of another type: a link or a device.
    fn special(kind: tar::EntryType, link: Option<&str>) -> Member<'_> {
        Member {
            name: b"files/libx.rlib",
            kind,
            size: 0,
            data: b"",
            link,
        }
    }

    /// An archive of the manifest `m`, then `members`.
    fn after_manifest(m: &[u8], members: Vec<Member<'_>>) -> Vec<u8> {
        let mut all = vec![reg("manifest.json", m)];
        all.extend(members);
        raw_archive(&all)
    }

    /// Each case is rejected, and leaves nothing behind.
    fn assert_all_rejected(cases: &[(&str, Vec<u8>)], key: &str) {
        for (why, bytes) in cases {
            assert_rejected(bytes, key, why);
        }
    }

    /// The control for the hostile archives: the same manifest, packed
    /// right, is imported.
    #[test]
    fn the_well_formed_archive_is_imported() {
        let (key, m) = libx_manifest();
        let ok = after_manifest(&m, vec![reg("files/libx.rlib", PAYLOAD)]);
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(matches!(
            unpack(
                &s,
                &evil(),
                &ids::test::key(&key),
                &ok[..],
                &Check::default()
            )
            .unwrap(),
            Unpacked::Imported(_)
        ));
    }

    #[test]
    fn members_named_outside_files_are_rejected() {
        let (key, m) = libx_manifest();
        assert_all_rejected(
            &[
                (
                    "dot-dot name",
                    after_manifest(&m, vec![reg("files/../../libx.rlib", PAYLOAD)]),
                ),
                (
                    "absolute name",
                    after_manifest(&m, vec![reg("/tmp/libx.rlib", PAYLOAD)]),
                ),
            ],
            &key,
        );
    }

    #[test]
    fn links_and_devices_are_rejected() {
        let (key, m) = libx_manifest();
        assert_all_rejected(
            &[
                (
                    "symlink",
                    after_manifest(
                        &m,
                        vec![special(tar::EntryType::Symlink, Some("/etc/passwd"))],
                    ),
                ),
                (
                    "hard link",
                    after_manifest(
                        &m,
                        vec![special(tar::EntryType::Link, Some("manifest.json"))],
                    ),
                ),
                (
                    "device",
                    after_manifest(&m, vec![special(tar::EntryType::Char, None)]),
                ),
            ],
            &key,
        );
    }

    #[test]
    fn members_that_disagree_with_the_manifest_are_rejected() {
        let (key, m) = libx_manifest();
        assert_all_rejected(
            &[
                (
                    "duplicate",
                    after_manifest(
                        &m,
                        vec![
                            reg("files/libx.rlib", PAYLOAD),
                            reg("files/libx.rlib", PAYLOAD),
                        ],
                    ),
                ),
                (
                    "extra member",
                    after_manifest(
                        &m,
                        vec![reg("files/libx.rlib", PAYLOAD), reg("files/other", PAYLOAD)],
                    ),
                ),
                ("missing member", raw_archive(&[reg("manifest.json", &m)])),
                (
                    "wrong content",
                    after_manifest(&m, vec![reg("files/libx.rlib", b"PAYLOAD")]),
                ),
                (
                    "manifest not first",
                    raw_archive(&[reg("files/libx.rlib", PAYLOAD), reg("manifest.json", &m)]),
                ),
            ],
            &key,
        );
    }

    #[test]
    fn junk_is_rejected() {
        let (key, _) = libx_manifest();
        assert_all_rejected(
            &[
                ("junk", b"this is not zstd".to_vec()),
                (
                    "zstd of junk",
                    zstd::encode_all(&b"not a tar archive at all"[..], 3).unwrap(),
                ),
            ],
            &key,
        );
    }

    #[test]
    fn hostile_manifests_are_rejected() {
        // Manifest naming a path, not a file.
        let (k2, m2) = manifest(&[("../escape", PAYLOAD)]);
        assert_rejected(
            &raw_archive(&[reg("manifest.json", &m2), reg("files/../escape", PAYLOAD)]),
            &k2,
            "manifest dot-dot",
        );
        let (k3, m3) = manifest(&[("a", PAYLOAD), ("a", PAYLOAD)]);
        assert_rejected(
            &raw_archive(&[
                reg("manifest.json", &m3),
                reg("files/a", PAYLOAD),
                reg("files/a", PAYLOAD),
            ]),
            &k3,
            "manifest dup",
        );
    }

    #[test]
    fn decompression_bomb_stops_at_the_manifest_size() {
        // The manifest says 7 bytes; the member claims 256 MiB of zeros,
        // which zstd squeezes to almost nothing.
        let data: &[u8] = b"payload";
        let (key, m) = manifest(&[("libx.rlib", data)]);
        let zeros = vec![0u8; 256 << 20];
        let mut members = vec![reg("manifest.json", &m)];
        members.push(Member {
            name: b"files/libx.rlib",
            kind: tar::EntryType::Regular,
            size: zeros.len() as u64,
            data: &zeros,
            link: None,
        });
        let bomb = raw_archive(&members);
        assert!(bomb.len() < 1 << 20);
        assert_rejected(&bomb, &key, "bomb");
    }
}
