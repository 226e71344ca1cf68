/*!
The local store: content-addressed blobs and the entries that name them.

Layout under the cache dir (documented in the README):

```text
blobs/ab/<blake3 hex>          one file per distinct content, mode 0444
entries/<crate>/<key>.json     one manifest per entry; mtime = last access
index/<base>/<list hash>.json  the wrapper's input lists (see wrapper::inputs)
toolchains/<id>                cached `rustc -vV` / `cc --version` answers
hashes/<id>                    remembered file hashes (Store::hash_file_cached)
hashes/list-<id>               the same for a lookup's whole input list
dylibs/<so blake3>             the shared libraries a proc macro or dylib loads
origins/<blake3>               `name@version` of an rlib/rmeta/so, for the pull
                               filter's dependency versions
pending/<remote>/<crate>/<key> uploads recorded for the daemon (`pending`)
built/<crate>/<key>            blake3 of the manifest of an entry this machine
                               compiled (what a signer vouches for)
daemon/                        mode 0700: the daemon's socket, pid, lock, log
uncacheable/<base>              why a build script's runs under this base key
                               cannot be stored (they then run untraced)
tmp/                           staging; anything older than an hour is junk
locks/<key>.lock               per-key compile locks (flock)
gc.lock                        writers hold it shared, gc exclusive
events.jsonl                   one JSON line per wrapper outcome (and sync); see `events`
unverified-pulls               present once an entry was pulled unverified
```

Invariants:
- An entry is visible only once complete: its blobs are in place first,
  then its manifest is written under `tmp/` and hard-linked into
  `entries/`, which never replaces an existing manifest (one writer wins).
  A reader never sees half an entry, and a crash leaves only `tmp/` junk
  or unreferenced blobs, both removed by `kache gc`.
- Blobs are immutable and read-only. A blob is written under `tmp/` and
  renamed to its hash, so parallel writers of the same content are safe.
- Every blob and manifest is synced to disk (once) before it is renamed
  or linked into place, whether a build or a pull wrote it: after a power
  loss a visible file is complete.
- Entries are immutable; only their manifest's mtime changes (on a hit),
  which is the access time `kache gc` evicts by.
- Writers take `gc.lock` shared for the whole blobs-then-manifest
  sequence; gc takes it exclusive, so it never deletes a blob that an
  entry being published is about to reference.
*/

pub(crate) mod archive;
pub(crate) mod entry;
pub(crate) mod events;
pub(crate) mod gc;
pub(crate) mod ids;
pub(crate) mod pending;
mod sys;
mod tarread;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

pub(crate) use entry::{Entry, FileRecord};
pub(crate) use ids::{BlobHash, CacheKey, CrateName};
pub(crate) use sys::euid;

/// Current manifest format. Entries of another version are ignored.
pub(crate) const ENTRY_VERSION: u32 = 1;

/// Temp files older than this are leftovers of a crashed writer.
pub(crate) const STALE_TMP: Duration = Duration::from_hours(1);

/// A handle on the local store. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    root: PathBuf,
}

/// A reference to a stored entry, as listed from disk.
#[derive(Clone, Debug)]
pub(crate) struct EntryRef {
    pub(crate) crate_name: CrateName,
    pub(crate) key: CacheKey,
    /// Last access (manifest mtime), seconds since the epoch.
    pub(crate) accessed: u64,
    /// The same to the nanosecond: the order eviction goes by (the
    /// builds of one minute are told apart).
    pub(crate) accessed_ns: u128,
}

/// A manifest that can never be served: not JSON of the entry format, or
/// naming invalid keys, hashes or file names. Distinct from an I/O error
/// (EMFILE, EIO), after which the manifest may be fine: only a manifest
/// proven corrupt may be removed.
#[derive(Debug)]
pub(crate) struct CorruptManifest {
    pub(crate) path: PathBuf,
    pub(crate) why: String,
}

impl std::fmt::Display for CorruptManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "corrupt entry manifest {}: {}",
            self.path.display(),
            self.why
        )
    }
}

impl std::error::Error for CorruptManifest {}

/// Whether `e` says a manifest is corrupt (as opposed to unreadable).
pub(crate) fn is_corrupt(e: &anyhow::Error) -> bool {
    e.chain()
        .any(<dyn std::error::Error + 'static>::is::<CorruptManifest>)
}

/// Normalises a package or crate name the way the remote layout does:
/// lowercase, `-` written as `_`.
pub(crate) fn normalize_crate(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// The short id of a toolchain: 12 hex digits of the blake3 of its
/// `rustc -vV` output. Entries and remote objects carry it so a pull can
/// skip another compiler's entries.
pub(crate) fn toolchain_id(version_verbose: &str) -> String {
    blake3::hash(version_verbose.as_bytes()).to_hex()[..12].to_string()
}

/// A file name inside an entry: one plain path component.
pub(crate) fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mtime_secs(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The pid of the process that made a `tmp/` file (see `Store::tmp_path`).
pub(crate) fn tmp_owner(name: &str) -> Option<u32> {
    name.split('.').nth(1)?.parse().ok()
}

impl Store {
    /// Opens the store at `root`, creating its directories (mode 0700).
    /// A store that is not ours is refused (see [`check_owned`]): what
    /// another user can write into it, a build would run (proc macros)
    /// or link.
    pub(crate) fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
        };
        let mkdir = |p: &Path| {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .with_context(|| format!("cannot create cache directory {}", p.display()))
        };
        mkdir(root)?;
        check_owned(root)?;
        for d in ["blobs", "entries", "index", "tmp", "locks"] {
            mkdir(&root.join(d))?;
        }
        Ok(store)
    }

    /// A handle without touching the disk (for read-only commands on a
    /// store that may not exist).
    pub(crate) fn at(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `hash` lives (always under `blobs/`: a `BlobHash` is
    /// 64 hex digits).
    pub(crate) fn blob_path(&self, hash: &BlobHash) -> PathBuf {
        self.root.join("blobs").join(&hash[..2]).join(hash.as_str())
    }

    pub(crate) fn entry_path(&self, crate_name: &CrateName, key: &CacheKey) -> PathBuf {
        self.root
            .join("entries")
            .join(crate_name)
            .join(format!("{key}.json"))
    }

    pub(crate) fn index_dir(&self, base: &CacheKey) -> PathBuf {
        self.root.join("index").join(base)
    }

    pub(crate) fn events_path(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }

    pub(crate) fn contains(&self, crate_name: &CrateName, key: &CacheKey) -> bool {
        self.entry_path(crate_name, key).is_file()
    }

    /// A fresh unique path under `tmp/`.
    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.root
            .join("tmp")
            .join(format!("{what}.{}.{n}.{t}", std::process::id()))
    }

    /// Reads an entry's manifest. `Ok(None)` if absent or of another
    /// format version.
    pub(crate) fn get(&self, crate_name: &CrateName, key: &CacheKey) -> Result<Option<Entry>> {
        let p = self.entry_path(crate_name, key);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        let corrupt = |why: String| {
            anyhow::Error::new(CorruptManifest {
                path: p.clone(),
                why,
            })
        };
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if entry.version != ENTRY_VERSION {
            return Ok(None);
        }
        entry
            .validate(crate_name, key)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(entry))
    }

    /// Records an access (for LRU) by setting the manifest's mtime.
    pub(crate) fn touch(&self, crate_name: &CrateName, key: &CacheKey) {
        let p = self.entry_path(crate_name, key);
        if let Ok(f) = OpenOptions::new().append(true).open(&p) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Takes the gc lock shared: held while blobs and a manifest are
    /// written, so gc never removes a blob about to be referenced.
    pub(crate) fn writer_lock(&self) -> Result<File> {
        self.gc_lock_file(true)
    }

    /// Takes the gc lock exclusive.
    pub(crate) fn gc_lock(&self) -> Result<File> {
        self.gc_lock_file(false)
    }

    /// The gc lock exclusive if nobody holds it now (no writer, restore,
    /// background store or gc at work); `None` otherwise.
    pub(crate) fn try_gc_lock(&self) -> Option<File> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("gc.lock"))
            .ok()?;
        f.try_lock().ok()?;
        Some(f)
    }

    /// Waits (up to `limit`) until no writer holds the gc lock: the
    /// entries a build is still storing in the background are in place.
    /// For commands that read the store right after a build.
    pub(crate) fn settle(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.root.join("gc.lock").exists() && self.try_gc_lock().is_none() {
            if std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every build-script twin alive has recorded (at most
    /// 30 minutes; a configure-and-make can take minutes), saying so on
    /// stderr, then for background stores (at most 30 s): what a push,
    /// or a daemon's last drain, takes right after a build includes
    /// them.
    pub(crate) fn settle_for_upload(&self) {
        let twins = self.twins_running();
        if twins > 0 {
            eprintln!(
                "kache: waiting for {twins} build-script run(s) still being traced (cache.trace_behind)"
            );
            let end = std::time::Instant::now() + Duration::from_mins(30);
            while self.twins_running() > 0 && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.settle(Duration::from_secs(30));
    }

    /// How many build-script twins (see `wrapper::script::twin`) are
    /// alive: each keeps a `tmp/twin.PID.*` directory while it runs.
    pub(crate) fn twins_running(&self) -> usize {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return 0;
        };
        rd.flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("twin.")
                    && tmp_owner(&name)
                        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
            })
            .count()
    }

    fn gc_lock_file(&self, shared: bool) -> Result<File> {
        let p = self.root.join("gc.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .with_context(|| format!("cannot open {}", p.display()))?;
        if shared { f.lock_shared() } else { f.lock() }
            .with_context(|| format!("cannot lock {}", p.display()))?;
        Ok(f)
    }

    /// Streams `r` into the store as a blob. With `limit`, fails if the
    /// stream holds more than `limit` bytes (never reads past it + 1).
    pub(crate) fn put_blob_reader(
        &self,
        r: impl Read,
        limit: Option<u64>,
    ) -> Result<(BlobHash, u64)> {
        let tmp = self.tmp_path("blob");
        let res = (|| {
            let (hash, size) = write_hashed(r, &tmp, limit)?;
            self.adopt_blob(&tmp, &hash)?;
            Ok((hash, size))
        })();
        let _ = fs::remove_file(&tmp);
        res
    }

    /// Moves an already hashed file at `tmp` into place as blob `hash`.
    /// The file is made read-only. If a blob of that name exists and its
    /// content has that hash, `tmp` is left for the caller to remove; one
    /// that does not (planted, or damaged) is replaced: a name is never
    /// taken on trust.
    pub(crate) fn adopt_blob(&self, tmp: &Path, hash: &BlobHash) -> Result<()> {
        let dst = self.blob_path(hash);
        if dst.exists() && hash_file(&dst).is_ok_and(|h| h == hash.as_str()) {
            return Ok(());
        }
        let dir = dst.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Synced only now: content the store already holds (the common
        // case of a rebuild) costs no sync.
        let size = File::open(tmp)
            .and_then(|f| {
                sync(&f)?;
                Ok(f.metadata()?.len())
            })
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        set_readonly(tmp)?;
        fs::rename(tmp, &dst)
            .with_context(|| format!("cannot move blob into {}", dst.display()))?;
        self.note_added(size);
        Ok(())
    }

    /// Counts `bytes` of new blobs towards the store's size (see
    /// [`Store::usage`]): one short line appended to `usage.log`. Blobs
    /// are added under the writer lock, so a gc (exclusive) that resets
    /// the count loses none.
    fn note_added(&self, bytes: u64) {
        let p = self.root.join("usage.log");
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(p) {
            let _ = f.write_all(format!("{bytes}\n").as_bytes());
        }
    }

    /// The store's blob bytes as of the last gc plus those added since,
    /// without a scan: `None` if no gc has counted them yet.
    pub(crate) fn usage(&self) -> Option<u64> {
        let base: u64 = fs::read_to_string(self.root.join("usage"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let added: u64 = fs::read_to_string(self.root.join("usage.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .sum();
        Some(base.saturating_add(added))
    }

    /// Records the blob bytes a gc counted (under the exclusive lock) and
    /// restarts the count of additions.
    pub(crate) fn set_usage(&self, bytes: u64) {
        let _ = fs::remove_file(self.root.join("usage.log"));
        let _ = self.write_atomic(
            "usage",
            &self.root.join("usage"),
            bytes.to_string().as_bytes(),
        );
    }

    /// Publishes an entry whose blobs are already in place. Returns false
    /// if the entry already existed (it is left untouched). The manifest
    /// is `serde_json::to_vec(entry)` (what [`Store::mark_built`] hashes).
    pub(crate) fn publish(&self, entry: &Entry) -> Result<bool> {
        entry
            .validate(&entry.crate_name, &entry.key)
            .context("refusing to publish entry")?;
        for f in &entry.files {
            if !self.blob_path(&f.hash).is_file() {
                bail!("blob {} of {} is missing", f.hash, f.name);
            }
        }
        let dst = self.entry_path(&entry.crate_name, &entry.key);
        if dst.exists() {
            return Ok(false);
        }
        let dir = dst.parent().expect("entry path has a parent");
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = serde_json::to_vec(entry)?;
        let won = self
            .write_new("entry", &dst, &json)
            .with_context(|| format!("cannot publish entry {}", dst.display()))?;
        if let Some(inputs) = &entry.inputs {
            // Best effort: without it the entry is only found again by a
            // compile that computes the same key some other way.
            let _ = self.add_inputs(inputs);
        }
        Ok(won)
    }

    /// Like `write_atomic`, but never replaces an existing `dst`: of two
    /// writers of one entry (two syncs, a sync and a build) exactly one
    /// wins and gets `true`. A filesystem without hard links falls back
    /// to rename (still atomic; a loser then also gets `true`).
    pub(crate) fn write_new(&self, what: &str, dst: &Path, bytes: &[u8]) -> Result<bool> {
        let tmp = self.tmp_path(what);
        let res = write_synced(&tmp, bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))
            .and_then(|()| match fs::hard_link(&tmp, dst) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(_) => fs::rename(&tmp, dst)
                    .map(|()| true)
                    .with_context(|| format!("cannot write {}", dst.display())),
            });
        // Gone after a rename; the spare link (or junk) otherwise.
        let _ = fs::remove_file(&tmp);
        res
    }

    /// Writes `bytes` to `dst` through a temp file under `tmp/` and a
    /// rename, so `dst` is absent or complete. On any error (a full disk)
    /// the temp file is removed: a failed write leaves nothing behind.
    pub(crate) fn write_atomic(&self, what: &str, dst: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp_path(what);
        let res = write_synced(&tmp, bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))
            .and_then(|()| {
                fs::rename(&tmp, dst).with_context(|| format!("cannot write {}", dst.display()))
            });
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// [`Store::write_atomic`] without the sync, for `hashes/` (a cache of
    /// a cache): a record a crash cut short does not parse and is made
    /// again.
    pub(crate) fn write_cache_record(&self, dst: &Path, bytes: &[u8]) {
        let tmp = self.tmp_path("hash");
        let ok = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes))
            .and_then(|()| fs::rename(&tmp, dst));
        if ok.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Records an input list under its base key so the wrapper can find
    /// entries of that base without running rustc. Idempotent.
    pub(crate) fn add_inputs(&self, inputs: &entry::Inputs) -> Result<()> {
        let json = serde_json::to_vec(inputs)?;
        let list_hash = blake3::hash(&json).to_hex();
        let dir = self.index_dir(&inputs.base);
        let dst = dir.join(format!("{list_hash}.json"));
        if dst.exists() {
            return Ok(());
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        self.write_atomic("index", &dst, &json)
    }

    /// The input lists recorded under a base key (empty if none).
    pub(crate) fn inputs_for(&self, base: &CacheKey) -> Vec<entry::Inputs> {
        let Ok(rd) = fs::read_dir(self.index_dir(base)) else {
            return Vec::new();
        };
        rd.filter_map(|e| {
            let p = e.ok()?.path();
            let bytes = fs::read(p).ok()?;
            serde_json::from_slice(&bytes).ok()
        })
        .collect()
    }

    /// Drops a local entry found corrupt (a blob of the wrong size or
    /// content, see `archive::CorruptBlob`): its manifest, and the blob,
    /// which no entry can use and which would otherwise be trusted by
    /// the next writer of the same content (blobs are deduplicated by
    /// name). Best effort.
    pub(crate) fn drop_corrupt_entry(
        &self,
        crate_name: &CrateName,
        key: &CacheKey,
        hash: &BlobHash,
    ) {
        let _ = self.remove(crate_name, key);
        let _ = fs::remove_file(self.blob_path(hash));
    }

    /// Where the store records that it built entry `crate_name/key`
    /// itself (see [`Store::mark_built`]).
    fn built_path(&self, crate_name: &CrateName, key: &CacheKey) -> PathBuf {
        self.root
            .join("built")
            .join(crate_name.as_str())
            .join(key.as_str())
    }

    /// Records that this machine compiled `entry` (a wrapper's stored
    /// miss, never a pull): the blake3 of its manifest as published. A
    /// signer vouches only for entries so recorded whose manifest is
    /// still that one, so editing a pulled entry's manifest (dropping its
    /// `pulled` field) never gets it signed. Best effort: without the
    /// record the entry is only never signed.
    pub(crate) fn mark_built(&self, entry: &Entry) {
        let Ok(json) = serde_json::to_vec(entry) else {
            return;
        };
        let p = self.built_path(&entry.crate_name, &entry.key);
        if let Some(dir) = p.parent()
            && fs::create_dir_all(dir).is_ok()
        {
            let _ = self.write_atomic("built", &p, blake3::hash(&json).to_hex().as_bytes());
        }
    }

    /// Whether this machine built the entry whose manifest on disk is
    /// `manifest` (see [`Store::mark_built`]).
    pub(crate) fn built_here(
        &self,
        crate_name: &CrateName,
        key: &CacheKey,
        manifest: &[u8],
    ) -> bool {
        fs::read_to_string(self.built_path(crate_name, key))
            .is_ok_and(|h| h.trim() == blake3::hash(manifest).to_hex().as_str())
    }

    /// Puts `entry` in place of the manifest of the same key (one a build
    /// may not use: pulled unverified or signed by a key no longer
    /// trusted), atomically; the blobs must be in place.
    pub(crate) fn replace(&self, entry: &Entry) -> Result<()> {
        entry
            .validate(&entry.crate_name, &entry.key)
            .context("refusing to publish entry")?;
        let dst = self.entry_path(&entry.crate_name, &entry.key);
        self.write_atomic("entry", &dst, &serde_json::to_vec(entry)?)
    }

    /// Removes an entry's manifest (its blobs go at the next gc).
    pub(crate) fn remove(&self, crate_name: &CrateName, key: &CacheKey) -> Result<bool> {
        let _ = fs::remove_file(self.built_path(crate_name, key));
        let p = self.entry_path(crate_name, key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }

    /// Every complete entry on disk (by directory listing; manifests are
    /// not parsed).
    pub(crate) fn list(&self) -> Result<Vec<EntryRef>> {
        let mut out = Vec::new();
        let dir = self.root.join("entries");
        let crates = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        for c in crates {
            let c = c?;
            let Some(crate_name) = c.file_name().to_str().and_then(CrateName::parse) else {
                continue;
            };
            self.list_crate_into(&crate_name, &mut out)?;
        }
        Ok(out)
    }

    /// The entries of one crate (normalised name).
    pub(crate) fn list_crate(&self, crate_name: &CrateName) -> Result<Vec<EntryRef>> {
        let mut out = Vec::new();
        self.list_crate_into(crate_name, &mut out)?;
        Ok(out)
    }

    fn list_crate_into(&self, crate_name: &CrateName, out: &mut Vec<EntryRef>) -> Result<()> {
        let dir = self.root.join("entries").join(crate_name.as_str());
        let rd = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name();
            let Some(key) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(CacheKey::parse)
            else {
                continue;
            };
            let Ok(meta) = e.metadata() else { continue };
            out.push(EntryRef {
                crate_name: crate_name.clone(),
                key,
                accessed: mtime_secs(&meta),
                accessed_ns: meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos()),
            });
        }
        Ok(())
    }

    /// The shared libraries a proc macro or dylib (by the content hash
    /// of its `.so`) was linked against (normalised paths), recorded when
    /// it was built or restored.
    pub(crate) fn runtime_libs(&self, so_hash: &str) -> Vec<String> {
        if !ids::is_hash_form(so_hash) {
            return Vec::new();
        }
        fs::read(self.root.join("dylibs").join(so_hash))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records `libs` as the runtime libraries of the `.so` with content
    /// hash `so_hash` (best effort; the first record stays).
    pub(crate) fn set_runtime_libs(&self, so_hash: &str, libs: &[String]) {
        if !ids::is_hash_form(so_hash) || libs.is_empty() {
            return;
        }
        let dir = self.root.join("dylibs");
        let p = dir.join(so_hash);
        if p.exists() {
            return;
        }
        let _ = fs::create_dir_all(&dir);
        if let Ok(json) = serde_json::to_vec(libs) {
            let _ = self.write_atomic("dylibs", &p, &json);
        }
    }

    /// `name@version` of the entry whose output has content hash `hash`,
    /// as recorded when it was stored or restored here.
    pub(crate) fn origin_of(&self, hash: &str) -> Option<String> {
        if !ids::is_hash_form(hash) {
            return None;
        }
        let s = fs::read_to_string(self.root.join("origins").join(hash)).ok()?;
        let s = s.trim();
        (!s.is_empty() && s.len() <= 200 && !s.contains(['/', '\n'])).then(|| s.to_string())
    }

    /// Records the origin (`name@version`) of an entry's library outputs
    /// (best effort; one small file each, written once).
    pub(crate) fn set_origins(&self, entry: &Entry) {
        let Some(o) = &entry.origin else { return };
        let dir = self.root.join("origins");
        for f in &entry.files {
            let lib = [".rlib", ".rmeta", ".so"]
                .iter()
                .any(|e| f.name.ends_with(e));
            let p = dir.join(f.hash.as_str());
            if !lib || p.exists() {
                continue;
            }
            let _ = fs::create_dir_all(&dir);
            let _ = self.write_atomic(
                "origin",
                &p,
                format!("{}@{}", entry.crate_name, o.version).as_bytes(),
            );
        }
    }

    /// Where key `key`'s compile lock is.
    pub(crate) fn compile_lock_path(&self, key: &CacheKey) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }

    /// The per-key compile lock (`locks/<key>.lock`, flock): identical
    /// compiles racing compile once; the others wait (up to 10 minutes)
    /// and then find the entry. `None` if the lock cannot be had (the
    /// compile then goes ahead unlocked). With whether it had to wait.
    pub(crate) fn compile_lock(&self, key: &CacheKey) -> Option<(File, bool)> {
        let p = self.compile_lock_path(key);
        if p.with_extension("twin").exists() {
            // A build script's twin holds it, at idle priority: waiting
            // for it behind a busy build could take longer than the run.
            return None;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(p)
            .ok()?;
        let deadline = std::time::Instant::now() + Duration::from_mins(10);
        let mut waited = false;
        loop {
            match f.try_lock() {
                Ok(()) => return Some((f, waited)),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    waited = true;
                    std::thread::sleep(Duration::from_millis(75));
                }
                Err(_) => return None,
            }
        }
    }

    /// "Now" by the filesystem's own clock (the mtime of a file just
    /// written), comparable with the times it stamps on files.
    pub(crate) fn fs_clock(&self) -> Option<SystemTime> {
        let p = self.tmp_path("clock");
        let t = fs::write(&p, b"").and_then(|()| fs::metadata(&p)?.modified());
        let _ = fs::remove_file(&p);
        t.ok()
    }

    /// Where the store notes that it imported an entry from the remote
    /// without verifying a signature (no trusted keys were set).
    fn unverified_path(&self) -> PathBuf {
        self.root.join("unverified-pulls")
    }

    /// Notes an unverified import (best effort, one `stat` once noted).
    pub(crate) fn mark_unverified(&self) {
        let p = self.unverified_path();
        if !p.exists() {
            let _ = File::create(p);
        }
    }

    /// Whether entries may have been pulled without verification.
    pub(crate) fn has_unverified(&self) -> bool {
        self.unverified_path().exists()
    }

    /// Every unverified pulled entry is gone (`kache gc --verify`).
    pub(crate) fn clear_unverified(&self) {
        let _ = fs::remove_file(self.unverified_path());
    }

    /// Appends one line to the event log. A single `write` on an
    /// `O_APPEND` file, so concurrent writers never interleave. The
    /// writer that takes the log past `gc::EVENTS_MAX` cuts it to its
    /// newest `gc::EVENTS_KEEP` bytes (one `fstat` per line otherwise).
    pub(crate) fn log_event(&self, line: &str) {
        let p = self.events_path();
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(p) {
            let mut buf = String::with_capacity(line.len() + 1);
            buf.push_str(line);
            buf.push('\n');
            let _ = f.write_all(buf.as_bytes());
            if f.metadata().is_ok_and(|m| m.len() > gc::EVENTS_MAX) {
                gc::trim_events_now(self);
            }
        }
    }
}

/// Refuses a cache dir that another user owns or that group or others
/// may write to: anyone who can write there could plant an entry (a
/// proc macro's `.so` runs inside rustc).
pub(crate) fn check_owned(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(root)
        .with_context(|| format!("cannot read cache directory {}", root.display()))?;
    let me = sys::euid();
    if m.uid() != me {
        bail!(
            "cache directory {} belongs to uid {}, not to this user (uid {me}); use a directory of your own (KACHE_CACHE_DIR)",
            root.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "cache directory {} is writable by {} (mode {:o}); `chmod go-w {}` makes it yours alone",
            root.display(),
            if m.mode() & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            m.mode() & 0o7777,
            root.display()
        );
    }
    Ok(())
}

/// Copies `r` to a new file at `dst` while hashing; returns (hash, size).
/// With `limit`, errors out once more than `limit` bytes arrive.
pub(crate) fn write_hashed(
    r: impl Read,
    dst: &Path,
    limit: Option<u64>,
) -> Result<(BlobHash, u64)> {
    let mut out = File::create(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let cap = limit.map_or(u64::MAX, |l| l.saturating_add(1));
    let mut r = r.take(cap);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read failed"),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", dst.display()))?;
        size += n as u64;
        // Every 4 MiB, start writing back what came before: the sync
        // before publishing then has little left to wait for.
        const STEP: u64 = 4 << 20;
        if size % STEP < n as u64 && size >= STEP {
            sys::start_writeback(&out, size - size % STEP - STEP, STEP);
        }
        if let Some(l) = limit
            && size > l
        {
            bail!("more data than the {l} bytes announced");
        }
    }
    out.flush()?;
    Ok((BlobHash::of(&hasher.finalize()), size))
}

/// Writes `bytes` to a new file at `p` and syncs it to disk.
fn write_synced(p: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(p)?;
    f.write_all(bytes)?;
    sync(&f)
}

/// The one sync per file the store does: its data reaches the disk
/// before the file is renamed or linked into place, so a crash (power
/// loss) cannot leave a complete-looking blob or manifest with missing
/// content. (Directories are not synced: a crash may lose a rename,
/// which leaves only junk in `tmp/` or an entry to rebuild.)
fn sync(f: &File) -> io::Result<()> {
    #[cfg(test)]
    SYNCS.with(|n| n.set(n.get() + 1));
    f.sync_data()
}

#[cfg(test)]
thread_local! {
    /// Syncs done by this thread (tests count them).
    static SYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A file's age must exceed this (by its change time) before its hash
/// is remembered; far more than any filesystem's timestamp granularity.
const SETTLED: Duration = Duration::from_secs(3);

impl Store {
    /// A file's blake3 hash, remembered in `hashes/` by the file's inode
    /// identity (device, inode, size, mtime and ctime to the nanosecond),
    /// so a large `--extern` file is read once, not by every compile.
    ///
    /// Never wrong: any write, rename onto, or chmod of the file sets its
    /// ctime to the current time, which userspace cannot set back. A hash
    /// is remembered only if the file was unchanged while it was read and
    /// its ctime is older than `SETTLED`, so a later change, even within
    /// the filesystem's timestamp granularity, gets a different ctime.
    pub(crate) fn hash_file_cached(&self, p: &Path) -> io::Result<String> {
        let id = file_identity;
        let before = fs::metadata(p)?;
        if !before.is_file() {
            // A device or fifo named in a (hand-made) input list would
            // be read forever: only regular files are inputs.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", p.display()),
            ));
        }
        let fp = id(&before);
        let rec = self
            .root
            .join("hashes")
            .join(blake3::hash(fp.as_bytes()).to_hex().as_str());
        if let Ok(h) = fs::read_to_string(&rec)
            && ids::is_hash_form(&h)
        {
            return Ok(h);
        }
        let h = hash_file(p)?;
        if settled(&before) && fs::metadata(p).is_ok_and(|m| id(&m) == fp) {
            let _ = fs::create_dir_all(self.root.join("hashes"));
            self.write_cache_record(&rec, h.as_bytes());
        }
        Ok(h)
    }
}

impl Store {
    /// [`Store::hash_file_cached`] of each of `paths`, the files a lookup
    /// keys. Their identities and hashes are remembered together too, in
    /// one record named by the list, so the next lookup of the same list
    /// reads one record rather than one per file; a file whose identity
    /// changed is hashed again. (A record may pair an identity with the
    /// hash of content written after it: that identity never comes back.)
    pub(crate) fn hash_files_cached(&self, paths: &[PathBuf]) -> Vec<io::Result<String>> {
        use std::os::unix::ffi::OsStrExt;
        if paths.len() < 8 {
            return paths.iter().map(|p| self.hash_file_cached(p)).collect();
        }
        let mut list = blake3::Hasher::new();
        for p in paths {
            list.update(p.as_os_str().as_bytes());
            list.update(b"\0");
        }
        let rec = self
            .root
            .join("hashes")
            .join(format!("list-{}", list.finalize().to_hex()));
        let old = fs::read_to_string(&rec).unwrap_or_default();
        let mut old_lines = old.lines();
        let mut new = String::with_capacity(old.len().max(paths.len() * 140));
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            let was = old_lines.next().and_then(|l| l.split_once(' '));
            let one = fs::metadata(p).and_then(|m| {
                if !m.is_file() {
                    // As `hash_file_cached` says it.
                    return self.hash_file_cached(p).map(|h| (None, h));
                }
                let fp = file_identity(&m);
                if let Some((f, h)) = was
                    && f == fp
                    && ids::is_hash_form(h)
                {
                    return Ok((Some(fp), h.to_string()));
                }
                let h = self.hash_file_cached(p)?;
                Ok((settled(&m).then_some(fp), h))
            });
            match &one {
                Ok((Some(fp), h)) => {
                    new.push_str(fp);
                    new.push(' ');
                    new.push_str(h);
                }
                _ => new.push('-'),
            }
            new.push('\n');
            out.push(one.map(|(_, h)| h));
        }
        if new != old {
            let _ = fs::create_dir_all(self.root.join("hashes"));
            self.write_cache_record(&rec, new.as_bytes());
        }
        out
    }
}

/// What identifies a file's content without reading it: device, inode,
/// size, mtime and ctime to the nanosecond (see
/// [`Store::hash_file_cached`]).
pub(crate) fn file_identity(m: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// Whether a file's ctime is far enough in the past for its hash to be
/// remembered.
pub(crate) fn settled(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ctime = UNIX_EPOCH + Duration::new(m.ctime().max(0) as u64, 0);
    SystemTime::now()
        .duration_since(ctime)
        .is_ok_and(|age| age > SETTLED + Duration::from_secs(1))
}

/// Hashes a file's content with blake3.
pub(crate) fn hash_file(p: &Path) -> io::Result<String> {
    let mut f = File::open(p)?;
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut f)?;
    Ok(h.finalize().to_hex().to_string())
}

fn set_readonly(p: &Path) -> Result<()> {
    let mut perm = fs::metadata(p)?.permissions();
    perm.set_readonly(true);
    fs::set_permissions(p, perm).with_context(|| format!("cannot chmod {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpstore() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    #[test]
    fn blobs_dedup_and_entries_publish_once() {
        let (_d, s) = tmpstore();
        let (h1, n1) = s.put_blob_reader(&b"hello"[..], None).unwrap();
        let (h2, _) = s.put_blob_reader(&b"hello"[..], None).unwrap();
        assert_eq!(h1, h2);
        assert_eq!(n1, 5);
        assert_eq!(fs::read(s.blob_path(&h1)).unwrap(), b"hello");
        let e = Entry::new(
            crate::store::ids::test::krate("foo"),
            crate::store::ids::test::key(&"a".repeat(64)),
            vec![FileRecord {
                name: "libfoo.rlib".into(),
                hash: h1,
                size: 5,
                executable: false,
            }],
        );
        assert!(s.publish(&e).unwrap());
        assert!(!s.publish(&e).unwrap());
        let got = s.get(&e.crate_name, &e.key).unwrap().unwrap();
        assert_eq!(got.files, e.files);
        assert_eq!(s.list().unwrap().len(), 1);
        // nothing left in tmp
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_blob_planted_under_a_hash_is_replaced_not_adopted() {
        let (_d, s) = tmpstore();
        let good = b"the real rlib";
        let h = BlobHash::of(&blake3::hash(good));
        let p = s.blob_path(&h);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"planted bytes").unwrap();
        let (got, _) = s.put_blob_reader(&good[..], None).unwrap();
        assert_eq!(got, h);
        assert_eq!(fs::read(&p).unwrap(), good);
    }

    #[test]
    fn racing_publishers_of_one_entry_have_one_winner() {
        let (_d, s) = tmpstore();
        let (h, n) = s.put_blob_reader(&b"race"[..], None).unwrap();
        for i in 0..20u8 {
            let e = Entry::new(
                ids::test::krate("foo"),
                CacheKey::of(&blake3::hash(&[i])),
                vec![FileRecord {
                    name: "libfoo.rlib".into(),
                    hash: h.clone(),
                    size: n,
                    executable: false,
                }],
            );
            let wins: usize = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..4)
                    .map(|_| sc.spawn(|| usize::from(s.publish(&e).unwrap())))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(wins, 1, "round {i}");
        }
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn blobs_and_manifests_are_synced_once_before_they_appear() {
        let (_d, s) = tmpstore();
        let syncs = || SYNCS.with(std::cell::Cell::get);
        let n0 = syncs();
        let (h, n) = s.put_blob_reader(&b"durable"[..], None).unwrap();
        assert_eq!(syncs() - n0, 1, "one sync per blob");
        let e = Entry::new(
            crate::store::ids::test::krate("foo"),
            crate::store::ids::test::key(&"d".repeat(64)),
            vec![FileRecord {
                name: "libfoo.rlib".into(),
                hash: h,
                size: n,
                executable: false,
            }],
        );
        let n1 = syncs();
        assert!(s.publish(&e).unwrap());
        // The manifest (the input list is not recorded: no inputs).
        assert_eq!(syncs() - n1, 1, "one sync per manifest");
        let n2 = syncs();
        s.write_atomic("x", &s.root().join("x"), b"x").unwrap();
        assert_eq!(syncs() - n2, 1);
    }

    #[test]
    fn blob_limit_is_enforced() {
        let (_d, s) = tmpstore();
        assert!(s.put_blob_reader(&b"0123456789"[..], Some(4)).is_err());
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn publish_refuses_missing_blob() {
        let (_d, s) = tmpstore();
        let e = Entry::new(
            crate::store::ids::test::krate("foo"),
            crate::store::ids::test::key(&"b".repeat(64)),
            vec![FileRecord {
                name: "x".into(),
                hash: crate::store::ids::test::blob(&"c".repeat(64)),
                size: 1,
                executable: false,
            }],
        );
        assert!(s.publish(&e).is_err());
        assert!(!s.contains(&e.crate_name, &e.key));
    }

    #[test]
    fn remembered_hashes_follow_every_change() {
        let (d, s) = tmpstore();
        let p = d.path().join("libx.rmeta");
        fs::write(&p, b"one").unwrap();
        let h1 = hash_file(&p).unwrap();
        // A fresh file is hashed, never remembered.
        assert_eq!(s.hash_file_cached(&p).unwrap(), h1);
        assert!(!s.root().join("hashes").exists());
        std::thread::sleep(SETTLED + Duration::from_millis(1200));
        assert_eq!(s.hash_file_cached(&p).unwrap(), h1);
        let recs: Vec<PathBuf> = fs::read_dir(s.root().join("hashes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(recs.len(), 1);
        // The record is what is used next time...
        let fake = "f".repeat(64);
        fs::write(&recs[0], &fake).unwrap();
        assert_eq!(s.hash_file_cached(&p).unwrap(), fake);
        // ... until the file changes in any way, even to the same size
        // and mtime at once.
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        fs::write(&p, b"two").unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(s.hash_file_cached(&p).unwrap(), hash_file(&p).unwrap());
        assert_ne!(hash_file(&p).unwrap(), h1);
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn remembered_list_hashes_follow_every_change() {
        let (d, s) = tmpstore();
        let files: Vec<PathBuf> = (0..10).map(|i| d.path().join(format!("h{i}.h"))).collect();
        for (i, p) in files.iter().enumerate() {
            fs::write(p, format!("header {i}")).unwrap();
        }
        let real = |i: usize| hash_file(&files[i]).unwrap();
        let got = |s: &Store| -> Vec<String> {
            s.hash_files_cached(&files)
                .into_iter()
                .map(Result::unwrap)
                .collect()
        };
        let list = |s: &Store| -> Vec<PathBuf> {
            fs::read_dir(s.root().join("hashes"))
                .map(|r| r.map(|e| e.unwrap().path()).collect::<Vec<PathBuf>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|p: &PathBuf| p.to_string_lossy().contains("list-"))
                .collect()
        };
        // Fresh files: hashed, no identity remembered.
        assert_eq!(got(&s), (0..10).map(real).collect::<Vec<_>>());
        let rec = list(&s);
        assert_eq!(rec.len(), 1);
        assert!(
            fs::read_to_string(&rec[0])
                .unwrap()
                .lines()
                .all(|l| l == "-")
        );
        std::thread::sleep(SETTLED + Duration::from_millis(1200));
        assert_eq!(got(&s), (0..10).map(real).collect::<Vec<_>>());
        // The list's record is what the next lookup uses...
        let text = fs::read_to_string(&rec[0]).unwrap();
        let fake = "f".repeat(64);
        let forged = text
            .lines()
            .map(|l| format!("{} {fake}", l.split_once(' ').unwrap().0))
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(&rec[0], forged).unwrap();
        assert!(got(&s).iter().all(|h| *h == fake));
        // ... but not for a file changed in any way (here to the same
        // size and mtime), nor for one that is gone.
        let mtime = fs::metadata(&files[3]).unwrap().modified().unwrap();
        fs::write(&files[3], b"header X").unwrap();
        File::options()
            .write(true)
            .open(&files[3])
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        fs::remove_file(&files[5]).unwrap();
        let after = s.hash_files_cached(&files);
        assert_eq!(after[3].as_ref().unwrap(), &real(3));
        assert!(after[5].is_err());
        assert_eq!(after[0].as_ref().unwrap(), &fake);
    }

    #[test]
    fn names() {
        assert_eq!(normalize_crate("Serde-JSON"), "serde_json");
        assert!(valid_file_name("libfoo-123.rlib"));
        assert!(!valid_file_name("../x"));
        assert!(!valid_file_name("a/b"));
        assert!(!valid_file_name(".."));
        assert!(CacheKey::parse("ABC").is_none());
    }
}
