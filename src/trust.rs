/*!
Trust: signed entries and the keys readers accept.

A writer holding a signing key (ed25519, `ring`) signs every archive it
uploads. The signature covers the entry's identity as its object name
gives it (crate, version, target, toolchain, cache key), the blake3 of
the archive's `manifest.json` (which names every file's blake3 and
size) and the signer's key name, under a fixed domain string:

```text
kache-entry-signature-v1
crate dep
version 0.1.0
target x86_64-unknown-linux-gnu
toolchain 0123456789ab
key <64 hex>
manifest <blake3 hex of manifest.json>
signer ci
```

(`version`, `target` and `toolchain` are empty for a short object name.)
So a signature cannot be moved to another object name, another entry or
other file contents, and a key name cannot be swapped for another.

Where it lives: a zstd *skippable frame* in front of the archive's zstd
stream (`SIG_MAGIC`, a length, then one JSON line `{"v":1,"key":NAME,
"sig":BASE64}`). The object stays one immutable object (no sidecar, no
extra request), and every zstd decoder, kache's older versions
included, skips such a frame: a signed bucket stays readable by readers
that do not verify, and an unsigned bucket stays readable by them too.

Readers that list trusted keys (`name:base64` of the 32-byte public
key) import an entry only if its frame holds a valid signature by one
of them; the check runs on the manifest, before any file is staged, so
a refused entry leaves nothing in the store.

The secret key never leaves this module in readable form: its `Debug`
shows the name only, and no error message quotes the key text.
*/

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// The first four bytes of the signature frame: a zstd skippable frame
/// (magic 0x184D2A5?, little endian), the low nibble 0xB marking kache's.
const SIG_MAGIC: [u8; 4] = [0x5B, 0x2A, 0x4D, 0x18];
/// The largest signature frame payload read.
const MAX_FRAME: u32 = 4096;
const DOMAIN: &str = "kache-entry-signature-v1";

// ---------------------------------------------------------------- base64

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` on any other
/// character.
pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding of the last byte.
    (bits < 6 && acc == 0).then_some(out)
}

// ------------------------------------------------------------------ keys

/// A key name: what signatures and trusted-key lists call a key.
pub(crate) fn valid_key_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

const NAME_FORM: &str = "letters, digits, `.`, `_` or `-`, at most 64";

/// A writer's secret key. `Debug` shows its name only.
pub(crate) struct SigningKey {
    name: String,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses a secret key file's text (`NAME:BASE64` of a PKCS#8
    /// document, as `kache key generate` writes). `whence` names where
    /// the text came from; the error never quotes the text.
    pub(crate) fn parse(text: &str, whence: &str) -> Result<SigningKey> {
        let bad = || {
            anyhow!(
                "{whence} does not hold a kache signing key: expected one line NAME:BASE64 as written by `kache key generate NAME --out FILE`"
            )
        };
        let line = text.trim();
        let (name, b64) = line.split_once(':').ok_or_else(bad)?;
        if !valid_key_name(name) {
            return Err(bad());
        }
        let der = b64_decode(b64).ok_or_else(bad)?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| bad())?;
        Ok(SigningKey {
            name: name.to_string(),
            pair,
        })
    }

    pub(crate) fn load_file(p: &Path, whence: &str) -> Result<SigningKey> {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(p)
            && m.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: the signing key {} can be read by other users (mode {:o}); `chmod 600` it",
                p.display(),
                m.permissions().mode() & 0o777
            );
        }
        let text = std::fs::read_to_string(p).map_err(|e| {
            anyhow!(
                "cannot read the signing key {} ({whence}): {e}",
                p.display()
            )
        })?;
        SigningKey::parse(&text, &format!("{} ({whence})", p.display()))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The public half, as readers list it: `NAME:BASE64`.
    pub(crate) fn public(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            b64_encode(self.pair.public_key().as_ref())
        )
    }

    /// The signature frame for an archive of `id` whose manifest has
    /// blake3 `manifest_hash`.
    pub(crate) fn frame(&self, id: &Identity<'_>, manifest_hash: &str) -> Vec<u8> {
        let sig = self.pair.sign(&message(id, manifest_hash, &self.name));
        let payload = serde_json::json!({
            "v": 1,
            "key": self.name,
            "sig": b64_encode(sig.as_ref()),
        })
        .to_string();
        let mut out = Vec::with_capacity(8 + payload.len());
        out.extend_from_slice(&SIG_MAGIC);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload.as_bytes());
        out
    }
}

/// A new key pair: (the secret key file's text, the public key line).
pub(crate) fn generate(name: &str) -> Result<(String, String)> {
    if !valid_key_name(name) {
        bail!("invalid key name `{name}`: expected {NAME_FORM}");
    }
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow!("cannot generate a key: the system's random source failed"))?;
    let secret = format!("{name}:{}\n", b64_encode(doc.as_ref()));
    let key = SigningKey::parse(&secret, "the new key")?;
    Ok((secret, key.public()))
}

/// `kache key generate NAME --out FILE`: writes the secret key (mode
/// 0600, never over an existing file) and prints the public key.
pub(crate) fn generate_cmd(name: &str, out: &Path) -> Result<std::process::ExitCode> {
    use std::os::unix::fs::OpenOptionsExt;
    let (secret, public) = generate(name)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                anyhow!(
                    "{} already exists: refusing to overwrite a key; choose another --out or remove it first",
                    out.display()
                )
            } else {
                anyhow!("cannot create {}: {e}", out.display())
            }
        })?;
    f.write_all(secret.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))?;
    let mut o = io::stdout().lock();
    writeln!(o, "{public}")?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// A public key a reader trusts.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TrustedKey {
    pub(crate) name: String,
    pub(crate) public: [u8; 32],
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, b64_encode(&self.public))
    }
}

pub(crate) const TRUSTED_FORM: &str = "NAME:BASE64 public keys as `kache key generate` prints them, separated by commas (a list in the file)";

/// Parses one `NAME:BASE64` public key.
pub(crate) fn parse_trusted(item: &str) -> std::result::Result<TrustedKey, String> {
    let item = item.trim();
    let (name, b64) = item
        .split_once(':')
        .ok_or_else(|| format!("`{item}` is not NAME:BASE64"))?;
    if !valid_key_name(name) {
        return Err(format!("key name `{name}` must be {NAME_FORM}"));
    }
    let bytes = b64_decode(b64).ok_or_else(|| format!("`{b64}` is not base64"))?;
    let public: [u8; 32] = bytes
        .try_into()
        .map_err(|v: Vec<u8>| format!("key `{name}` is {} bytes, not 32", v.len()))?;
    Ok(TrustedKey {
        name: name.to_string(),
        public,
    })
}

// ------------------------------------------------------------ signatures

/// What a signature is bound to: the entry as its object name gives it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Identity<'a> {
    pub(crate) crate_name: &'a str,
    pub(crate) key: &'a str,
    /// (version, target, toolchain) of a long object name.
    pub(crate) origin: Option<(&'a str, &'a str, &'a str)>,
}

fn message(id: &Identity<'_>, manifest_hash: &str, signer: &str) -> Vec<u8> {
    let (v, t, tc) = id.origin.unwrap_or(("", "", ""));
    format!(
        "{DOMAIN}\ncrate {}\nversion {v}\ntarget {t}\ntoolchain {tc}\nkey {}\nmanifest {manifest_hash}\nsigner {signer}\n",
        id.crate_name, id.key
    )
    .into_bytes()
}

/// A signature frame as read from an archive.
#[derive(Clone, Debug)]
pub(crate) enum Frame {
    /// No frame: an unsigned archive.
    None,
    /// A frame that does not parse.
    Malformed,
    Signed {
        key: String,
        sig: Vec<u8>,
    },
}

#[derive(serde::Deserialize)]
struct FramePayload {
    v: u32,
    key: String,
    sig: String,
}

/// The archive's zstd stream after its signature frame (with any bytes
/// read ahead put back in front).
pub(crate) type Rest<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads the signature frame at the start of `r`, if any; returns it
/// and a reader of the archive's zstd stream (the bytes after it).
pub(crate) fn read_frame<R: Read>(mut r: R) -> io::Result<(Frame, Rest<R>)> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if got < 8 || head[..4] != SIG_MAGIC {
        return Ok((Frame::None, io::Cursor::new(head[..got].to_vec()).chain(r)));
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_FRAME {
        // Not one of ours: skipped, as any zstd decoder skips it.
        io::copy(&mut (&mut r).take(u64::from(len)), &mut io::sink())?;
        return Ok((Frame::Malformed, io::Cursor::new(Vec::new()).chain(r)));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    let frame = serde_json::from_slice::<FramePayload>(&payload)
        .ok()
        .filter(|p| p.v == 1 && valid_key_name(&p.key))
        .and_then(|p| {
            let sig = b64_decode(&p.sig).filter(|s| s.len() == 64)?;
            Some(Frame::Signed { key: p.key, sig })
        })
        .unwrap_or(Frame::Malformed);
    Ok((frame, io::Cursor::new(Vec::new()).chain(r)))
}

/// The bytes of `head` after a signature frame (all of it without one).
pub(crate) fn skip_frame(head: &[u8]) -> &[u8] {
    if head.len() >= 8 && head[..4] == SIG_MAGIC {
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        return head.get(8 + len..).unwrap_or(&[]);
    }
    head
}

/// An entry refused because no trusted key signed it. Its message is
/// what follows `refused: `.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Checks `frame` against the trusted keys for the archive of `id` with
/// manifest hash `manifest_hash`: the trusted key that signed it, or why
/// it is refused.
pub(crate) fn verify<'k>(
    trusted: &'k [TrustedKey],
    frame: &Frame,
    id: &Identity<'_>,
    manifest_hash: &str,
) -> std::result::Result<&'k TrustedKey, Refused> {
    const NOT: &str = "not signed by a trusted key";
    let (name, sig) = match frame {
        Frame::None => return Err(Refused(format!("{NOT} (the object is unsigned)"))),
        Frame::Malformed => {
            return Err(Refused(format!("{NOT} (its signature is malformed)")));
        }
        Frame::Signed { key, sig } => (key, sig),
    };
    let msg = message(id, manifest_hash, name);
    let mut named = false;
    for k in trusted.iter().filter(|k| &k.name == name) {
        named = true;
        if UnparsedPublicKey::new(&signature::ED25519, &k.public)
            .verify(&msg, sig)
            .is_ok()
        {
            return Ok(k);
        }
    }
    if named {
        Err(Refused(format!(
            "{NOT} (the signature by `{name}` does not match this entry: its content or name changed after it was signed)"
        )))
    } else {
        Err(Refused(format!(
            "{NOT} (signed by `{name}`, which is not a trusted key)"
        )))
    }
}

/// Whether a build that trusts `trusted` may restore `e` from `store`:
/// any entry when it trusts no key; otherwise one this machine compiled
/// (its `built/` record matches the manifest on disk, which an edit of
/// the manifest cannot forge) or one imported with the signature of a
/// key trusted now (a key dropped since no longer serves its entries).
pub(crate) fn usable(
    store: &crate::store::Store,
    e: &crate::store::Entry,
    trusted: &[TrustedKey],
) -> bool {
    if trusted.is_empty() {
        return true;
    }
    match &e.pulled {
        Some(p) => p
            .signed_by
            .as_deref()
            .is_some_and(|s| trusted.iter().any(|t| t.to_string() == s)),
        None => std::fs::read(store.entry_path(&e.crate_name, &e.key))
            .is_ok_and(|m| store.built_here(&e.crate_name, &e.key, &m)),
    }
}

/// What a sync or the daemon does about signatures.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    /// Sign uploads with this key.
    pub(crate) signer: Option<SigningKey>,
    /// Import only entries signed by one of these (none: no check).
    pub(crate) trusted: Vec<TrustedKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_rejects_junk() {
        for n in 0..70u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            let s = b64_encode(&data);
            assert_eq!(s.len() % 4, 0);
            assert_eq!(b64_decode(&s).unwrap(), data, "{n}");
        }
        assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64_encode(b"fo"), "Zm8=");
        assert_eq!(b64_decode("Zm8").unwrap(), b"fo");
        assert!(b64_decode("Zm9v!").is_none());
        assert!(b64_decode("Zm9=").is_none(), "non-zero padding bits");
    }

    fn id<'a>(c: &'a str, k: &'a str) -> Identity<'a> {
        Identity {
            crate_name: c,
            key: k,
            origin: Some(("1.0.0", "x86_64-unknown-linux-gnu", "abc")),
        }
    }

    #[test]
    fn signatures_bind_identity_manifest_and_key() {
        let (secret, public) = generate("ci").unwrap();
        let sk = SigningKey::parse(&secret, "test").unwrap();
        assert!(!format!("{sk:?}").contains(secret.trim().split(':').nth(1).unwrap()));
        let tk = parse_trusted(&public).unwrap();
        let k = "a".repeat(64);
        let h = "b".repeat(64);
        let frame_bytes = sk.frame(&id("dep", &k), &h);
        let (frame, rest) = read_frame(&frame_bytes[..]).unwrap();
        assert_eq!(rest.bytes().count(), 0);
        let trusted = vec![tk.clone()];
        assert_eq!(verify(&trusted, &frame, &id("dep", &k), &h).unwrap(), &tk);
        // Another entry, another manifest, another origin, another name.
        let k2 = "c".repeat(64);
        assert!(verify(&trusted, &frame, &id("dep", &k2), &h).is_err());
        assert!(verify(&trusted, &frame, &id("dep2", &k), &h).is_err());
        assert!(verify(&trusted, &frame, &id("dep", &k), &"d".repeat(64)).is_err());
        let mut other = id("dep", &k);
        other.origin = None;
        assert!(verify(&trusted, &frame, &other, &h).is_err());
        // Another key under the same name.
        let (_, public2) = generate("ci").unwrap();
        let e = verify(
            &[parse_trusted(&public2).unwrap()],
            &frame,
            &id("dep", &k),
            &h,
        )
        .unwrap_err();
        assert!(e.0.contains("does not match"), "{e}");
        let (_, public3) = generate("other").unwrap();
        let e = verify(
            &[parse_trusted(&public3).unwrap()],
            &frame,
            &id("dep", &k),
            &h,
        )
        .unwrap_err();
        assert!(
            e.0.contains("signed by `ci`, which is not a trusted key"),
            "{e}"
        );
        // Unsigned.
        let (frame, mut rest) = read_frame(&b"\x28\xb5\x2f\xfdxyz"[..]).unwrap();
        assert!(matches!(frame, Frame::None));
        let mut all = Vec::new();
        rest.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"\x28\xb5\x2f\xfdxyz");
        assert!(verify(&trusted, &frame, &id("dep", &k), &h).is_err());
    }

    #[test]
    fn key_texts_are_checked_without_being_quoted() {
        let (secret, _) = generate("ci").unwrap();
        let mut broken = secret.trim().to_string();
        broken.truncate(broken.len() - 8);
        let e = SigningKey::parse(&broken, "KACHE_SIGNING_KEY").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("KACHE_SIGNING_KEY"), "{msg}");
        assert!(!msg.contains(&broken[3..20]), "{msg}");
        assert!(parse_trusted("ci:AAAA").is_err());
        assert!(parse_trusted("no colon").is_err());
        assert!(parse_trusted("bad name:AAAA").is_err());
        assert!(generate("bad/name").is_err());
    }

    /// What signing and verifying cost per entry (run with `cargo test
    /// --release --bin kache bench_sign -- --ignored --nocapture`).
    #[test]
    #[ignore = "benchmark"]
    fn bench_sign_and_verify() {
        let (secret, public) = generate("ci").unwrap();
        let sk = SigningKey::parse(&secret, "test").unwrap();
        let trusted = vec![parse_trusted(&public).unwrap()];
        let k = "a".repeat(64);
        let manifest = vec![b'x'; 4096];
        let n = 2000;
        let t = std::time::Instant::now();
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|_| sk.frame(&id("dep", &k), blake3::hash(&manifest).to_hex().as_str()))
            .collect();
        let sign = t.elapsed() / n;
        let t = std::time::Instant::now();
        for f in &frames {
            let (frame, _) = read_frame(&f[..]).unwrap();
            let h = blake3::hash(&manifest).to_hex();
            verify(&trusted, &frame, &id("dep", &k), h.as_str()).unwrap();
        }
        let check = t.elapsed() / n;
        eprintln!("per entry: sign {sign:?}, verify {check:?} (4 KiB manifest)");
    }

    #[test]
    fn zstd_skips_the_signature_frame() {
        // Older kache (and any zstd decoder) read a signed archive as if
        // it were unsigned.
        let (secret, _) = generate("ci").unwrap();
        let sk = SigningKey::parse(&secret, "test").unwrap();
        let mut bytes = sk.frame(&id("dep", &"a".repeat(64)), &"b".repeat(64));
        bytes.extend(zstd::encode_all(&b"hello archive"[..], 3).unwrap());
        let mut out = Vec::new();
        zstd::Decoder::new(&bytes[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello archive");
    }
}
