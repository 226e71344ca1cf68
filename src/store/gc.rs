/*!
Store upkeep: what `kache gc` removes, and the bounds it keeps.

Run under the exclusive gc lock (writers hold it shared), so no blob an
entry being published is about to reference is ever removed. One pass:

1. `tmp/`: files and staging dirs whose writer process is gone, and
   anything older than `STALE_TMP`.
2. Manifests: every one is read; a manifest proven corrupt (not JSON of
   the entry format, invalid names or hashes) is removed and reported.
   One that cannot be read (EIO, EMFILE) is reported and kept, and then
   no blob is removed this pass: its references are unknown.
3. With `verify`, every blob is re-hashed; corrupt blobs and the entries
   whose files are missing, corrupt or of another size are removed. With
   trusted keys too, so are entries pulled from the remote that none of
   them signed (pulled before the keys were set, or by a key no longer
   trusted); entries built here are kept.
4. Eviction: by age, or least recently used first down to the size
   limit; then blobs no entry references, and index lists whose base has
   no entry left; `hashes/` (a cache of a cache) is cleared.
5. Bounds: `locks/` keeps only lock files held by a process or younger
   than `STALE_LOCK`; `events.jsonl` is cut to its newest
   `EVENTS_KEEP` bytes (whole lines) once it exceeds `EVENTS_MAX`.
*/

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use super::events::{Event, Outcome};
use super::{
    BlobHash, Entry, EntryRef, STALE_TMP, Store, hash_file, is_corrupt, now_secs, tmp_owner,
};

/// A lock file no process holds and older than this is removed.
pub(crate) const STALE_LOCK: Duration = Duration::from_mins(10);
/// `events.jsonl` larger than this is trimmed...
pub(crate) const EVENTS_MAX: u64 = 16 << 20;
/// ... to its newest this many bytes (whole lines).
pub(crate) const EVENTS_KEEP: u64 = 8 << 20;

/// What to collect.
#[derive(Clone, Debug, Default)]
pub(crate) struct GcOptions {
    /// Remove entries not used for this many seconds instead of evicting
    /// down to `max_size`.
    pub(crate) max_age: Option<u64>,
    pub(crate) max_size: u64,
    pub(crate) verify: bool,
    /// A pass a build runs (`auto`), not `kache gc`.
    pub(crate) auto: bool,
    /// With `verify`: the trusted keys (empty: none set, nothing
    /// removed for provenance).
    pub(crate) trusted: Option<Vec<crate::trust::TrustedKey>>,
}

/// What a gc pass did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct GcReport {
    pub(crate) entries_removed: u64,
    pub(crate) blobs_removed: u64,
    pub(crate) bytes_freed: u64,
    pub(crate) tmp_removed: u64,
    pub(crate) corrupt_blobs: u64,
    pub(crate) corrupt_manifests: u64,
    /// Pulled entries removed: no trusted key signed them.
    pub(crate) untrusted_removed: u64,
    /// Pulled entries kept unverified (no trusted keys are set).
    pub(crate) unverified_kept: u64,
    pub(crate) locks_removed: u64,
    pub(crate) events_bytes_trimmed: u64,
    pub(crate) entries_kept: u64,
    pub(crate) bytes_kept: u64,
    /// One line each, for stderr.
    #[serde(skip)]
    pub(crate) warnings: Vec<String>,
}

struct Loaded {
    r: EntryRef,
    entry: Entry,
}

/// One gc pass (see the module doc).
pub(crate) fn collect(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let _lock = store.gc_lock()?;
    let rep = collect_locked(store, opts)?;
    if rep.entries_removed > 0 {
        evicted_event(&rep, "kache gc").write(store);
    }
    Ok(rep)
}

/// The store keeping itself within its size limit: called by whoever
/// just added to it (a stored miss, a pull). Costs two small reads
/// while the store is within `max_size` (see `Store::usage`). Past it,
/// and if no writer, restore or gc holds the store right now (else the
/// next caller tries, see `patience`), evicts least recently used entries down to 90%
/// of the limit, so the next pass is far off. The pass holds the gc
/// lock exclusive: no restore is half way through an entry it removes
/// (restores hold the lock shared), and no entry being stored loses a
/// blob.
///
/// `patience`: how long to keep trying for the lock (a background store,
/// which nobody waits for, waits longer than a build's own wrapper).
pub(crate) fn auto(store: &Store, max_size: u64, patience: Duration) -> Option<GcReport> {
    if max_size == 0 || store.usage().is_some_and(|u| u <= max_size) {
        return None;
    }
    let deadline = std::time::Instant::now() + patience;
    let _lock = loop {
        match store.try_gc_lock() {
            Some(l) => break l,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            None => return None,
        }
    };
    if store.usage().is_some_and(|u| u <= max_size) {
        return None;
    }
    let opts = GcOptions {
        max_size: max_size / 10 * 9,
        auto: true,
        ..GcOptions::default()
    };
    let rep = collect_locked(store, &opts).ok()?;
    if rep.entries_removed > 0 {
        evicted_event(&rep, "local_max_size").write(store);
    }
    Some(rep)
}

/// The event of a pass that removed entries: how many, the bytes freed,
/// and what ran it.
fn evicted_event(rep: &GcReport, by: &str) -> Event {
    let mut ev = Event::new(Outcome::Evict, "").reason(by);
    ev.evicted = rep.entries_removed;
    ev.size = rep.bytes_freed;
    ev
}

/// One pass, the gc lock held.
fn collect_locked(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let mut rep = GcReport {
        tmp_removed: clean_tmp(store),
        ..GcReport::default()
    };
    let (mut all, unreadable) = load_entries(store, &mut rep)?;
    let blobs = store.walk_blobs();
    let blob_size: HashMap<BlobHash, u64> = blobs
        .iter()
        .filter_map(|(p, m)| Some((BlobHash::parse(p.file_name()?.to_str()?)?, m.len())))
        .collect();
    if opts.verify {
        verify_blobs(store, &blobs, &blob_size, &mut all, &mut rep);
    }
    if let Some(trusted) = &opts.trusted {
        drop_untrusted(store, trusted, &mut all, &mut rep);
    }
    // Oldest access first.
    all.sort_by_key(|l| l.r.accessed_ns);
    let plan = plan_evictions(&all, &blob_size, opts, now_secs());
    for &i in &plan.evict {
        let l = &all[i];
        if store.remove(&l.r.crate_name, &l.r.key)? {
            rep.entries_removed += 1;
        }
    }
    if !unreadable {
        remove_unreferenced(store, &blobs, &all, &plan, &mut rep);
    }
    // What is left, counted afresh (see `Store::usage`).
    let total: u64 = blobs.iter().map(|(_, m)| m.len()).sum();
    store.set_usage(total.saturating_sub(rep.bytes_freed));
    if !opts.auto {
        // Remembered file hashes: a cache of a cache, rebuilt on demand
        // (kept by the passes builds run: their next compiles use it).
        let _ = fs::remove_dir_all(store.root().join("hashes"));
    }
    rep.locks_removed = clean_locks(store, STALE_LOCK);
    rep.events_bytes_trimmed = trim_events(store, EVENTS_MAX, EVENTS_KEEP)?;
    rep.entries_kept = (all.len() - plan.evict.len()) as u64;
    rep.bytes_kept = plan.live;
    Ok(rep)
}

/// Every entry that can be read. A corrupt manifest is removed; one that
/// cannot be read (another format, an I/O error) is kept, and then no
/// blob may be removed (`true`): its references are unknown.
fn load_entries(store: &Store, rep: &mut GcReport) -> Result<(Vec<Loaded>, bool)> {
    let mut all = Vec::new();
    let mut unreadable = false;
    for r in store.list()? {
        match store.get(&r.crate_name, &r.key) {
            Ok(Some(entry)) => all.push(Loaded { r, entry }),
            Ok(None) => unreadable = true,
            Err(e) if is_corrupt(&e) => {
                rep.warnings.push(format!("{e:#}; removing it"));
                rep.corrupt_manifests += 1;
                if store.remove(&r.crate_name, &r.key).unwrap_or(false) {
                    rep.entries_removed += 1;
                }
            }
            Err(e) => {
                rep.warnings
                    .push(format!("{e:#}; kept, and no blob removed"));
                unreadable = true;
            }
        }
    }
    Ok((all, unreadable))
}

/// `--verify`: re-hashes every blob, removes corrupt ones, and drops the
/// entries whose files are missing, corrupt or of the wrong size.
fn verify_blobs(
    store: &Store,
    blobs: &[(std::path::PathBuf, fs::Metadata)],
    blob_size: &HashMap<BlobHash, u64>,
    all: &mut Vec<Loaded>,
    rep: &mut GcReport,
) {
    let mut bad = HashSet::new();
    for (p, _) in blobs {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match hash_file(p) {
            Ok(h) if h == name => {}
            _ => {
                rep.warnings
                    .push(format!("blob {} is corrupt; removing it", p.display()));
                bad.insert(name.to_string());
                rep.corrupt_blobs += 1;
                let _ = fs::remove_file(p);
            }
        }
    }
    all.retain(|l| {
        let ok = l.entry.files.iter().all(|f| {
            !bad.contains(f.hash.as_str()) && blob_size.get(f.hash.as_str()) == Some(&f.size)
        });
        if !ok {
            rep.warnings.push(format!(
                "entry {}/{} has missing or corrupt files; removing it",
                l.r.crate_name, l.r.key
            ));
            if store.remove(&l.r.crate_name, &l.r.key).unwrap_or(false) {
                rep.entries_removed += 1;
            }
        }
        ok
    });
}

/// With trusted keys: removes pulled entries no trusted key signed.
/// Without: keeps them and says how many there are.
fn drop_untrusted(
    store: &Store,
    trusted: &[crate::trust::TrustedKey],
    all: &mut Vec<Loaded>,
    rep: &mut GcReport,
) {
    let names: HashSet<String> = trusted.iter().map(ToString::to_string).collect();
    all.retain(|l| {
        let Some(p) = &l.entry.pulled else {
            return true;
        };
        let ok = p.signed_by.as_ref().is_some_and(|k| names.contains(k));
        if ok {
            return true;
        }
        if trusted.is_empty() {
            rep.unverified_kept += 1;
            return true;
        }
        rep.warnings.push(format!(
            "entry {}/{} was pulled {}; removing it",
            l.r.crate_name,
            l.r.key,
            match p.signer_name() {
                Some(n) => format!("signed by `{n}`, which is no longer trusted"),
                None => "without verification".to_string(),
            }
        ));
        if store.remove(&l.r.crate_name, &l.r.key).unwrap_or(false) {
            rep.untrusted_removed += 1;
            rep.entries_removed += 1;
        }
        false
    });
    if !trusted.is_empty() {
        store.clear_unverified();
    } else if rep.unverified_kept > 0 {
        rep.warnings.push(format!(
            "{} entries were pulled without verification; set KACHE_TRUSTED_KEYS and run `kache gc --verify` again to remove those no trusted key signed",
            rep.unverified_kept
        ));
    }
}

/// Which entries go, oldest access first: those unused for longer than
/// `--max-age`, else until the blobs still referenced fit the size
/// limit; with the references and bytes left.
struct Evictions<'a> {
    evict: Vec<usize>,
    refs: HashMap<&'a str, u32>,
    live: u64,
}

fn plan_evictions<'a>(
    all: &'a [Loaded],
    blob_size: &HashMap<BlobHash, u64>,
    opts: &GcOptions,
    now: u64,
) -> Evictions<'a> {
    let mut refs: HashMap<&str, u32> = HashMap::new();
    for l in all {
        for f in &l.entry.files {
            *refs.entry(f.hash.as_str()).or_default() += 1;
        }
    }
    let mut live: u64 = refs
        .keys()
        .map(|h| blob_size.get(*h).copied().unwrap_or(0))
        .sum();
    let mut evict = Vec::new();
    for (i, l) in all.iter().enumerate() {
        let too_old = opts
            .max_age
            .is_some_and(|a| now.saturating_sub(l.r.accessed) > a);
        let too_big = opts.max_age.is_none() && live > opts.max_size;
        if !(too_old || too_big) {
            continue;
        }
        evict.push(i);
        for f in &l.entry.files {
            let n = refs.get_mut(f.hash.as_str()).expect("counted above");
            *n -= 1;
            if *n == 0 {
                live -= blob_size.get(f.hash.as_str()).copied().unwrap_or(0);
            }
        }
    }
    Evictions { evict, refs, live }
}

/// Removes the blobs no kept entry references, and the input lists
/// whose base no longer has any entry.
fn remove_unreferenced(
    store: &Store,
    blobs: &[(std::path::PathBuf, fs::Metadata)],
    all: &[Loaded],
    plan: &Evictions<'_>,
    rep: &mut GcReport,
) {
    let keep: HashSet<&str> = plan
        .refs
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(h, _)| *h)
        .collect();
    for (p, m) in blobs {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !keep.contains(name) && p.exists() && fs::remove_file(p).is_ok() {
            rep.blobs_removed += 1;
            rep.bytes_freed += m.len();
        }
    }
    let bases: HashSet<&str> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !plan.evict.contains(i))
        .filter_map(|(_, l)| l.entry.inputs.as_ref().map(|i| i.base.as_str()))
        .collect();
    if let Ok(rd) = fs::read_dir(store.root().join("index")) {
        for d in rd.flatten() {
            let name = d.file_name();
            if !bases.contains(name.to_str().unwrap_or("")) {
                let _ = fs::remove_dir_all(d.path());
            }
        }
    }
}

/// Removes temp files and staging dirs left by crashed writers: those
/// whose writer process (named in the file name) is gone, and anything
/// older than `STALE_TMP` whatever its name.
fn clean_tmp(store: &Store) -> u64 {
    let mut n = 0;
    let cutoff = SystemTime::now() - STALE_TMP;
    let Ok(rd) = fs::read_dir(store.root().join("tmp")) else {
        return 0;
    };
    for e in rd.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = tmp_owner(&name);
        let dead = owner.is_some_and(|pid| !alive(pid));
        // A build-script twin's scratch and layers live as long as it
        // does (it may wait for the build, then run for up to an hour),
        // and it holds no lock gc would wait for meanwhile.
        let live_twin = name.starts_with("twin") && owner.is_some_and(alive);
        if live_twin {
            continue;
        }
        if old || (dead && cfg!(target_os = "linux")) {
            let p = e.path();
            let ok = if p.is_dir() {
                fs::remove_dir_all(&p).is_ok()
            } else {
                fs::remove_file(&p).is_ok()
            };
            n += u64::from(ok);
        }
    }
    n
}

/// Whether process `pid` exists and can still run: a zombie (killed,
/// not yet reaped by its parent) never writes again.
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, Some('Z' | 'X'))
}

/// Removes lock files no process holds (the flock is free) that are
/// older than `min_age`. The lock is held while the file is unlinked; a
/// compile that opened it just before then locks an orphan inode, which
/// costs at most one duplicate compile (publishing has one winner).
fn clean_locks(store: &Store, min_age: Duration) -> u64 {
    let Ok(rd) = fs::read_dir(store.root().join("locks")) else {
        return 0;
    };
    let cutoff = SystemTime::now() - min_age;
    let mut n = 0;
    for e in rd.flatten() {
        let p = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if !old {
            continue;
        }
        let Ok(f) = fs::OpenOptions::new().write(true).open(&p) else {
            continue;
        };
        if f.try_lock().is_ok() && fs::remove_file(&p).is_ok() {
            n += 1;
        }
    }
    n
}

/// [`trim_events`] to `EVENTS_KEEP`, by one writer at a time (others
/// skip it).
pub(crate) fn trim_events_now(store: &Store) {
    let Ok(f) = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(store.root().join("events.lock"))
    else {
        return;
    };
    if f.try_lock().is_ok() {
        let _ = trim_events(store, EVENTS_MAX, EVENTS_KEEP);
    }
}

/// Cuts `events.jsonl` to its newest `keep` bytes of whole lines once it
/// is larger than `max`, through a temp file and a rename (a reader sees
/// the old log or the new one). An event appended while this runs may be
/// lost. Returns the bytes dropped.
fn trim_events(store: &Store, max: u64, keep: u64) -> Result<u64> {
    let p = store.events_path();
    let Ok(mut f) = fs::File::open(&p) else {
        return Ok(0);
    };
    let len = f.metadata()?.len();
    if len <= max {
        return Ok(0);
    }
    let start = len.saturating_sub(keep);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity(usize::try_from(keep).unwrap_or(0));
    (&mut f).take(keep).read_to_end(&mut tail)?;
    // Drop the partial first line (unless the cut fell on a boundary).
    let mut at_boundary = start == 0;
    if !at_boundary {
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(start - 1))?;
        f.read_exact(&mut b)?;
        at_boundary = b[0] == b'\n';
    }
    let body = if at_boundary {
        &tail[..]
    } else {
        match tail.iter().position(|&b| b == b'\n') {
            Some(i) => &tail[i + 1..],
            None => &[][..],
        }
    };
    store.write_atomic("events", &p, body)?;
    Ok(len - body.len() as u64)
}

impl Store {
    /// Every blob file on disk with its metadata.
    pub(crate) fn walk_blobs(&self) -> Vec<(PathBuf, fs::Metadata)> {
        let mut out = Vec::new();
        let Ok(shards) = fs::read_dir(self.root().join("blobs")) else {
            return out;
        };
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                if let Ok(m) = f.metadata() {
                    out.push((f.path(), m));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_age(p: &std::path::Path, age: Duration) {
        let f = fs::OpenOptions::new().append(true).open(p).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn locks_held_or_young_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let locks = s.root().join("locks");
        let (old_free, old_held, young) = (
            locks.join("a.lock"),
            locks.join("b.lock"),
            locks.join("c.lock"),
        );
        for p in [&old_free, &old_held, &young] {
            fs::write(p, b"").unwrap();
        }
        set_age(&old_free, STALE_LOCK * 2);
        set_age(&old_held, STALE_LOCK * 2);
        let held = fs::OpenOptions::new().write(true).open(&old_held).unwrap();
        held.lock().unwrap();
        // Another open file description: flock conflicts with it.
        assert_eq!(clean_locks(&s, STALE_LOCK), 1);
        assert!(!old_free.exists());
        assert!(old_held.exists());
        assert!(young.exists());
        drop(held);
        assert_eq!(clean_locks(&s, STALE_LOCK), 1);
        assert!(!old_held.exists());
    }

    #[test]
    fn events_are_trimmed_to_whole_newest_lines() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        for i in 0..1000 {
            s.log_event(&format!("{{\"n\":{i}}}"));
        }
        let len = fs::metadata(s.events_path()).unwrap().len();
        assert_eq!(trim_events(&s, len, 100).unwrap(), 0);
        let dropped = trim_events(&s, 1000, 100).unwrap();
        let text = fs::read_to_string(s.events_path()).unwrap();
        assert_eq!(dropped + text.len() as u64, len);
        assert!(text.len() <= 100 && !text.is_empty(), "{text}");
        assert!(text.ends_with("{\"n\":999}\n"), "{text}");
        for l in text.lines() {
            assert!(l.starts_with("{\"n\":") && l.ends_with('}'), "{l}");
        }
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    /// Publishes an entry of one blob of `n` bytes (content `tag`),
    /// last used `age` ago.
    fn entry(s: &Store, tag: u8, n: usize, age: Duration) -> crate::store::EntryRef {
        let (h, size) = s.put_blob_reader(&vec![tag; n][..], None).unwrap();
        let e = Entry::new(
            crate::store::ids::test::krate("foo"),
            crate::store::CacheKey::of(&blake3::hash(&[tag])),
            vec![crate::store::FileRecord {
                name: "libfoo.rlib".into(),
                hash: h,
                size,
                executable: false,
            }],
        );
        s.publish(&e).unwrap();
        set_age(&s.entry_path(&e.crate_name, &e.key), age);
        crate::store::EntryRef {
            crate_name: e.crate_name,
            key: e.key,
            accessed: 0,
            accessed_ns: 0,
        }
    }

    #[test]
    fn a_store_past_its_limit_evicts_least_recently_used_down_to_90_percent() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let old = entry(&s, 1, 1000, Duration::from_mins(5));
        let mid = entry(&s, 2, 1000, Duration::from_secs(200));
        let new = entry(&s, 3, 1000, Duration::from_secs(100));
        // No count yet: the first call counts (and is within the limit).
        assert_eq!(s.usage(), None);
        let rep = auto(&s, 10_000, Duration::ZERO).expect("a first pass counts the store");
        assert_eq!(rep.entries_removed, 0);
        assert_eq!(s.usage(), Some(3000));
        // Within the limit: nothing runs.
        assert!(auto(&s, 3000, Duration::ZERO).is_none());
        // Another blob counts without a scan.
        let newest = entry(&s, 4, 1000, Duration::ZERO);
        assert_eq!(s.usage(), Some(4000));
        // A writer (or a restore) holds the store: the pass waits for
        // the next caller.
        let w = s.writer_lock().unwrap();
        assert!(auto(&s, 3000, Duration::ZERO).is_none());
        drop(w);
        let rep = auto(&s, 3000, Duration::ZERO).expect("past the limit");
        // Down to 2700: the two least recently used go.
        assert_eq!(rep.entries_removed, 2);
        assert_eq!(rep.bytes_freed, 2000);
        for (r, kept) in [(&old, false), (&mid, false), (&new, true), (&newest, true)] {
            assert_eq!(s.contains(&r.crate_name, &r.key), kept, "{}", r.key);
        }
        assert_eq!(s.usage(), Some(2000));
        let ev: Vec<_> = crate::store::events::read(&s, |_| true)
            .into_iter()
            .filter(|e| e.result == Outcome::Evict)
            .collect();
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].evicted, ev[0].size), (2, 2000));
        assert_eq!(ev[0].reason.as_deref(), Some("local_max_size"));
    }

    #[test]
    fn the_event_log_bounds_itself() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let line = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
        let mut big = String::new();
        while (big.len() as u64) < EVENTS_MAX {
            big.push_str(&line);
            big.push('\n');
        }
        fs::write(s.events_path(), &big).unwrap();
        s.log_event("{\"last\":1}");
        let text = fs::read_to_string(s.events_path()).unwrap();
        assert!(text.len() as u64 <= EVENTS_KEEP, "{}", text.len());
        assert!(text.ends_with("{\"last\":1}\n"));
    }
}
