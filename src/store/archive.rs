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
- the manifest's crate and key equal the object's name.

Only then are the staged files moved into `blobs/` and the manifest
published, under the store's writer lock. A failure leaves nothing but
`tmp/` junk, which is removed on the way out.
*/

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

use super::{ENTRY_VERSION, Entry, Store, valid_crate, valid_file_name, valid_key, write_hashed};

/// Largest manifest we accept (it holds captured compiler output).
const MAX_MANIFEST: u64 = 64 << 20;

/// Result of packing an entry.
#[derive(Debug)]
pub(crate) enum Packed {
    /// Bytes written (compressed).
    Done(u64),
    /// The entry (or one of its blobs) disappeared: gc or purge ran.
    Vanished,
}

/// Result of unpacking an archive into the store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unpacked {
    /// Imported; uncompressed size of its files.
    Imported(u64),
    /// The entry appeared locally meanwhile; nothing was written.
    AlreadyPresent,
}

/// Writes the entry `crate_name/key` as a zstd tar to `w`.
pub(crate) fn pack(
    store: &Store,
    crate_name: &str,
    key: &str,
    w: impl Write,
    level: i32,
) -> Result<Packed> {
    let Some(entry) = store.get(crate_name, key)? else {
        return Ok(Packed::Vanished);
    };
    let mut blobs = Vec::with_capacity(entry.files.len());
    for f in &entry.files {
        match fs::File::open(store.blob_path(&f.hash)) {
            Ok(file) => blobs.push(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Packed::Vanished),
            Err(e) => return Err(e).with_context(|| format!("cannot read blob {}", f.hash)),
        }
    }
    let counter = CountingWriter { inner: w, count: 0 };
    let mut enc = zstd::Encoder::new(counter, level).context("zstd init failed")?;
    {
        let mut tar = tar::Builder::new(&mut enc);
        let manifest = serde_json::to_vec(&entry)?;
        let mut h = header(manifest.len() as u64, 0o644, entry.created);
        tar.append_data(&mut h, "manifest.json", &manifest[..])
            .context("cannot write archive")?;
        for (f, file) in entry.files.iter().zip(blobs) {
            let mode = if f.executable { 0o755 } else { 0o644 };
            let mut h = header(f.size, mode, entry.created);
            // Read exactly the manifest size: a blob changed under us is a
            // store corruption, caught by the size check below.
            let mut r = file.take(f.size);
            tar.append_data(&mut h, format!("files/{}", f.name), &mut r)
                .with_context(|| format!("cannot pack {}", f.name))?;
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

/// Checks the archive read from `r` and imports it as `crate_name/key`.
/// Nothing is visible in the store unless every check passes.
pub(crate) fn unpack(store: &Store, crate_name: &str, key: &str, r: impl Read) -> Result<Unpacked> {
    if store.contains(crate_name, key) {
        return Ok(Unpacked::AlreadyPresent);
    }
    let staging = store.tmp_path("pull");
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let res = unpack_staged(store, crate_name, key, r, &staging);
    let _ = fs::remove_dir_all(&staging);
    res
}

fn unpack_staged(
    store: &Store,
    crate_name: &str,
    key: &str,
    r: impl Read,
    staging: &std::path::Path,
) -> Result<Unpacked> {
    let dec = zstd::Decoder::new(r).context("not a zstd stream")?;
    let mut ar = tar::Archive::new(dec);
    let mut members = ar.entries().context("not a tar archive")?;

    let first = members
        .next()
        .ok_or_else(|| anyhow!("empty archive"))?
        .context("corrupt archive")?;
    check_regular(&first)?;
    if first.path_bytes().as_ref() != b"manifest.json" {
        bail!("archive does not start with manifest.json");
    }
    if first.header().size()? > MAX_MANIFEST {
        bail!("manifest larger than {MAX_MANIFEST} bytes");
    }
    let mut buf = Vec::new();
    first
        .take(MAX_MANIFEST + 1)
        .read_to_end(&mut buf)
        .context("corrupt archive")?;
    let entry: Entry = serde_json::from_slice(&buf).context("corrupt manifest")?;
    check_manifest(&entry, crate_name, key)?;

    let wanted: HashMap<&str, usize> = entry
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.as_str(), i))
        .collect();
    let mut staged: Vec<Option<PathBuf>> = vec![None; entry.files.len()];
    for m in members {
        let m = m.context("corrupt archive")?;
        check_regular(&m)?;
        let path = m.path_bytes().into_owned();
        let name = path
            .strip_prefix(b"files/")
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or_else(|| anyhow!("unexpected member `{}`", String::from_utf8_lossy(&path)))?;
        let &i = wanted
            .get(name)
            .ok_or_else(|| anyhow!("member `{name}` is not in the manifest"))?;
        if staged[i].is_some() {
            bail!("member `{name}` appears twice");
        }
        let rec = &entry.files[i];
        if m.header().size()? != rec.size {
            bail!("member `{name}` size differs from the manifest");
        }
        let dst = staging.join(format!("{i}"));
        let (hash, size) = write_hashed(m, &dst, Some(rec.size))
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
        Ok(Unpacked::Imported(entry.size()))
    } else {
        Ok(Unpacked::AlreadyPresent)
    }
}

fn check_regular<R: Read>(m: &tar::Entry<'_, R>) -> Result<()> {
    let t = m.header().entry_type();
    if !(t.is_file() || t == tar::EntryType::Continuous) {
        bail!(
            "member `{}` is not a regular file ({t:?})",
            String::from_utf8_lossy(&m.path_bytes())
        );
    }
    Ok(())
}

fn check_manifest(e: &Entry, crate_name: &str, key: &str) -> Result<()> {
    if e.version != ENTRY_VERSION {
        bail!("manifest format {} is not {ENTRY_VERSION}", e.version);
    }
    if e.crate_name != crate_name || e.key != key {
        bail!(
            "manifest names {}/{} but the object is {crate_name}/{key}",
            e.crate_name,
            e.key
        );
    }
    if !valid_crate(&e.crate_name) || !valid_key(&e.key) {
        bail!("manifest has an invalid crate or key");
    }
    let mut seen = std::collections::HashSet::new();
    for f in &e.files {
        if !valid_file_name(&f.name) {
            bail!("manifest names a bad file `{}`", f.name);
        }
        if !valid_key(&f.hash) {
            bail!("manifest has a bad hash for `{}`", f.name);
        }
        if !seen.insert(f.name.as_str()) {
            bail!("manifest lists `{}` twice", f.name);
        }
    }
    if let Some(d) = &e.dep_info {
        if !valid_file_name(&d.name) {
            bail!("manifest names a bad dep-info file `{}`", d.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FileRecord;

    fn store_with_entry() -> (tempfile::TempDir, Store, Entry) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("a")).unwrap();
        let (h, n) = s.put_blob_reader(&b"rlib bytes"[..], None).unwrap();
        let (h2, n2) = s.put_blob_reader(&b"#!bin"[..], None).unwrap();
        let mut e = Entry::new(
            "foo",
            &"1".repeat(64),
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
        (d, s, e)
    }

    fn packed(s: &Store, e: &Entry) -> Vec<u8> {
        let mut out = Vec::new();
        match pack(s, &e.crate_name, &e.key, &mut out, 3).unwrap() {
            Packed::Done(n) => assert_eq!(n as usize, out.len()),
            Packed::Vanished => panic!("vanished"),
        }
        out
    }

    #[test]
    fn round_trip() {
        let (d, s, e) = store_with_entry();
        let bytes = packed(&s, &e);
        let s2 = Store::open(&d.path().join("b")).unwrap();
        let got = unpack(&s2, "foo", &e.key, &bytes[..]).unwrap();
        assert_eq!(got, Unpacked::Imported(e.size()));
        let e2 = s2.get("foo", &e.key).unwrap().unwrap();
        assert_eq!(e2.files, e.files);
        assert_eq!(e2.stderr, "warning: x");
        assert_eq!(
            fs::read(s2.blob_path(&e.files[0].hash)).unwrap(),
            b"rlib bytes"
        );
        assert_eq!(
            unpack(&s2, "foo", &e.key, &bytes[..]).unwrap(),
            Unpacked::AlreadyPresent
        );
        assert_eq!(fs::read_dir(s2.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn wrong_name_and_corruption_import_nothing() {
        let (d, s, e) = store_with_entry();
        let bytes = packed(&s, &e);
        let s2 = Store::open(&d.path().join("b")).unwrap();
        assert!(unpack(&s2, "bar", &e.key, &bytes[..]).is_err());
        let mut trunc = bytes.clone();
        trunc.truncate(bytes.len() / 2);
        assert!(unpack(&s2, "foo", &e.key, &trunc[..]).is_err());
        assert!(unpack(&s2, "foo", &e.key, &b"junk"[..]).is_err());
        assert!(s2.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(s2.root().join("blobs")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(s2.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn vanished_entry() {
        let (_d, s, e) = store_with_entry();
        s.remove("foo", &e.key).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            pack(&s, "foo", &e.key, &mut out, 3).unwrap(),
            Packed::Vanished
        ));
    }
}
