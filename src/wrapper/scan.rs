/*!
The scan for machine-local roots in outputs, in the same pass that
stores them: an output that contains the real path of the workspace,
the target dir, `CARGO_HOME` or `HOME` depends on where it was built, so
that root's real value joins its key.
*/

use std::io::Read;

/// A reader that looks for the machine-local roots (real paths) in what
/// passes through it, so the outputs are scanned in the same pass that
/// stores them. Memory stays bounded whatever the file size.
pub(crate) struct RootScan<'a, R> {
    inner: R,
    rules: &'a [(String, String)],
    finders: Vec<memchr::memmem::Finder<'a>>,
    /// Sentinels of the roots found so far.
    found: &'a mut Vec<String>,
    /// The last bytes of the previous read: a path may straddle two.
    tail: Vec<u8>,
    keep: usize,
}

impl<'a, R: Read> RootScan<'a, R> {
    pub(crate) fn new(inner: R, rules: &'a [(String, String)], found: &'a mut Vec<String>) -> Self {
        let keep = rules.iter().map(|(r, _)| r.len()).max().unwrap_or(1) - 1;
        RootScan {
            inner,
            rules,
            finders: rules
                .iter()
                .map(|(r, _)| memchr::memmem::Finder::new(r.as_bytes()))
                .collect(),
            found,
            tail: Vec::new(),
            keep,
        }
    }
}

impl<R: Read> Read for RootScan<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && self.found.len() < self.rules.len() {
            let chunk = &buf[..n];
            // Across the seam: the previous tail and this chunk's head.
            self.tail.extend_from_slice(&chunk[..n.min(self.keep)]);
            for (f, (_, sent)) in self.finders.iter().zip(self.rules) {
                if !self.found.contains(sent)
                    && (f.find(chunk).is_some() || f.find(&self.tail).is_some())
                {
                    self.found.push(sent.clone());
                }
            }
            if n > self.keep {
                self.tail.clear();
                self.tail.extend_from_slice(&chunk[n - self.keep..]);
            } else {
                let cut = self.tail.len().saturating_sub(self.keep);
                self.tail.drain(..cut);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};

    use anyhow::{Context, Result};

    use super::*;
    use crate::wrapper::paths::Paths;

    /// The sentinels of the machine-local roots whose real path appears in
    /// any of the outputs: such an output depends on where it was built.
    fn roots_in(outputs: &[std::path::PathBuf], paths: &Paths) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for p in outputs {
            let f = File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
            std::io::copy(
                &mut RootScan::new(f, paths.rules(), &mut found),
                &mut std::io::sink(),
            )?;
        }
        found.sort();
        Ok(found)
    }

    #[test]
    fn roots_found_across_chunk_boundaries() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::from_rules(
            &[("/home/u/ws", "/kache-ws"), ("/home/u/t", "/kache-target")],
            "/home/u/ws",
        );
        let p = d.path().join("bin");
        let mut bytes = vec![0u8; 3 << 20];
        let at = (1 << 20) - 4; // straddles the first chunk's end
        bytes[at..at + 10].copy_from_slice(b"/home/u/ws");
        fs::write(&p, &bytes).unwrap();
        assert_eq!(
            roots_in(std::slice::from_ref(&p), &paths).unwrap(),
            vec!["/kache-ws"]
        );
        fs::write(&p, vec![7u8; 2 << 20]).unwrap();
        assert!(
            roots_in(std::slice::from_ref(&p), &paths)
                .unwrap()
                .is_empty()
        );
        // Reads of a few bytes each: a path spread over several reads.
        let mut found = Vec::new();
        let data = b"xx/home/u/t/yy".to_vec();
        let mut r = RootScan::new(Chunks(&data, 3), paths.rules(), &mut found);
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(found, vec!["/kache-target"]);
    }

    /// A reader that hands out at most `.1` bytes a call.
    struct Chunks<'a>(&'a [u8], usize);

    impl Read for Chunks<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
}
