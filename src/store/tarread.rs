/*!
A strict reader of the tar archives kache writes, bounded by what its
caller allows.

The `tar` crate reads a GNU long-name, long-link or PAX header body into
memory at whatever size the header claims, before the caller sees the
member: a few KiB of compressed archive could make a pull allocate
gigabytes before anything was checked. kache's archives (written by
`archive::pack` with the `tar` crate) hold only regular files, with a
GNU long-name member in front of a name over 100 bytes, so this reader
accepts exactly that: a member of any other type is an error, a long
name is at most `MAX_NAME` bytes, and a member's body is read only as the
caller reads it. Memory is one header block and one name.
*/

use std::io::{self, Read};

use anyhow::{Result, bail};

/// Longest name a GNU long-name member may give.
pub(crate) const MAX_NAME: u64 = 4096;

const BLOCK: usize = 512;

/// One member's header.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) name: Vec<u8>,
    pub(crate) size: u64,
}

impl Member {
    pub(crate) fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Reads members in order; between `next` calls it reads as the body of
/// the current member (no further than its end).
pub(crate) struct Reader<R> {
    inner: R,
    /// Unread bytes of the current member's body.
    left: u64,
    /// Padding after it, up to the next block.
    pad: u64,
}

impl<R: Read> Reader<R> {
    pub(crate) fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            left: 0,
            pad: 0,
        }
    }

    /// The next member, skipping what is left of the current one;
    /// `None` at the end-of-archive block.
    pub(crate) fn next(&mut self) -> Result<Option<Member>> {
        self.skip(self.left)?;
        let mut pad = [0u8; BLOCK];
        let pad = &mut pad[..usize::try_from(self.pad).unwrap_or(0)];
        self.exact(pad)?;
        if pad.iter().any(|&b| b != 0) {
            bail!("corrupt archive: a member's padding is not zeros");
        }
        self.left = 0;
        self.pad = 0;
        let mut block = [0u8; BLOCK];
        if !self.block(&mut block)? {
            return Ok(None);
        }
        let mut long_name = None;
        if block[156] == b'L' {
            let size = size_of(&block)?;
            if size > MAX_NAME {
                bail!("a member's long name claims {size} bytes (at most {MAX_NAME})");
            }
            let mut name = vec![0u8; usize::try_from(size)?];
            self.exact(&mut name)?;
            self.skip(padding(size))?;
            while name.last() == Some(&0) {
                name.pop();
            }
            long_name = Some(name);
            if !self.block(&mut block)? {
                bail!("archive ends after a long name");
            }
        }
        let name = match long_name {
            Some(n) => n,
            None => short_name(&block),
        };
        let kind = block[156];
        if !matches!(kind, b'0' | 0 | b'7') {
            bail!(
                "member `{}` is not a regular file (type {:?})",
                String::from_utf8_lossy(&name),
                char::from(kind)
            );
        }
        let size = size_of(&block)?;
        self.left = size;
        self.pad = padding(size);
        Ok(Some(Member { name, size }))
    }

    /// After the end block: reads what follows to the end of the stream
    /// (at most 64 KiB, all zero), so a checksummed stream (zstd) checks
    /// its checksum and nothing past the archive goes unread.
    pub(crate) fn finish(&mut self) -> Result<()> {
        let mut rest = Vec::new();
        (&mut self.inner).take(64 << 10).read_to_end(&mut rest)?;
        if rest.len() >= 64 << 10 || rest.iter().any(|&b| b != 0) {
            bail!("corrupt archive: data after its end");
        }
        Ok(())
    }

    /// Reads one header block; `false` at an all-zero (end) block.
    fn block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool> {
        self.exact(block)?;
        if block.iter().all(|&b| b == 0) {
            return Ok(false);
        }
        let stored = octal(&block[148..156]);
        let sum: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != Some(sum) {
            bail!("corrupt archive: a header's checksum does not match");
        }
        Ok(true)
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.inner.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => bail!("truncated archive"),
            Err(e) => Err(e.into()),
        }
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let got = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if got != n {
            bail!("truncated archive");
        }
        Ok(())
    }
}

impl<R: Read> Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated archive",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// The name field, with a POSIX `ustar` prefix if there is one.
fn short_name(block: &[u8; BLOCK]) -> Vec<u8> {
    let field = |r: std::ops::Range<usize>| {
        let f = &block[r];
        f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec()
    };
    let name = field(0..100);
    if &block[257..263] == b"ustar\0" {
        let prefix = field(345..500);
        if !prefix.is_empty() {
            return [prefix, b"/".to_vec(), name].concat();
        }
    }
    name
}

fn size_of(block: &[u8; BLOCK]) -> Result<u64> {
    let f = &block[124..136];
    if f[0] & 0x80 != 0 {
        // GNU base-256: big-endian, the top bit of the first byte a flag.
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            if v >> 56 != 0 {
                bail!("corrupt archive: a member's size overflows");
            }
            v = (v << 8) | u64::from(b);
        }
        return Ok(v);
    }
    match octal(f) {
        Some(v) => Ok(v),
        None => bail!("corrupt archive: a member's size is not a number"),
    }
}

/// An octal field, NUL- or space-terminated (leading spaces allowed).
fn octal(f: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn add(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }

    #[test]
    fn reads_what_the_tar_crate_writes() {
        let long = format!("files/{}", "n".repeat(300));
        let big = vec![7u8; 1000];
        let bytes = build(|b| {
            add(b, "manifest.json", b"{}");
            add(b, &long, &big);
            add(b, "files/empty", b"");
        });
        let mut r = Reader::new(&bytes[..]);
        let m = r.next().unwrap().unwrap();
        assert_eq!((m.name.as_slice(), m.size), (&b"manifest.json"[..], 2));
        // The second member is reached without reading the first's body.
        let m = r.next().unwrap().unwrap();
        assert_eq!((m.name_lossy(), m.size), (long, 1000));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, big);
        let m = r.next().unwrap().unwrap();
        assert_eq!((m.name_lossy(), m.size), ("files/empty".to_string(), 0));
        assert!(r.next().unwrap().is_none());
    }

    /// A header block of `kind` claiming `size`, checksummed.
    fn header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn a_huge_long_name_or_pax_header_is_refused_unread() {
        // Each claims 1 GiB and holds a few bytes: refused on the claim.
        for (kind, why) in [
            (b'L', "long name"),
            (b'x', "not a regular"),
            (b'K', "not a regular"),
        ] {
            let mut bytes = header("././@LongLink", kind, 1 << 30);
            bytes.extend_from_slice(&[b'a'; 512]);
            let err = Reader::new(&bytes[..]).next().unwrap_err();
            assert!(format!("{err:#}").contains(why), "{err:#}");
        }
    }

    #[test]
    fn links_devices_and_bad_checksums_are_refused() {
        for kind in [b'1', b'2', b'3', b'4', b'5', b'6', b'g'] {
            let bytes = header("files/x", kind, 0);
            assert!(
                Reader::new(&bytes[..]).next().is_err(),
                "{}",
                char::from(kind)
            );
        }
        let mut bytes = header("files/x", b'0', 3);
        bytes[0] = b'y';
        let err = Reader::new(&bytes[..]).next().unwrap_err();
        assert!(format!("{err:#}").contains("checksum"), "{err:#}");
        // A body cut short is an error, not an end.
        let mut bytes = header("files/x", b'0', 3);
        bytes.push(b'a');
        let mut r = Reader::new(&bytes[..]);
        r.next().unwrap().unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert!(Reader::new(&bytes[..100]).next().is_err());
    }
}
