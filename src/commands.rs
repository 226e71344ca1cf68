/*!
The small commands: status, list, stats, gc, purge, config.

Each prints its result on stdout (text, or JSON with `--json`) and
nothing else; warnings go to stderr.
*/

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use serde_json::json;

use crate::cli::{ConfigCmd, GcCmd, ListCmd, PurgeCmd, SortBy, StatsCmd};
use crate::config::Config;
use crate::remote::credentials::Credentials;
use crate::store::events::{self, Event, Outcome};
use crate::store::{self, CrateName, Entry, EntryRef, Store, now_secs};
use crate::units::{format_age, format_size, parse_duration};

fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// An entry with its manifest loaded.
struct Loaded {
    r: EntryRef,
    entry: Entry,
}

/// Loads every readable manifest; unreadable ones are reported once.
fn load_all(store: &Store, only: Option<&str>) -> Result<Vec<Loaded>> {
    let refs = match only {
        Some(c) => match CrateName::normalize(c) {
            Some(c) => store.list_crate(&c)?,
            None => Vec::new(),
        },
        None => store.list()?,
    };
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        match store.get(&r.crate_name, &r.key) {
            Ok(Some(entry)) => out.push(Loaded { r, entry }),
            Ok(None) => {}
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
    Ok(out)
}

/// Total bytes and count of the blobs on disk.
pub(crate) fn blob_usage(store: &Store) -> (u64, u64) {
    let mut bytes = 0;
    let mut count = 0;
    for (_, meta) in store.walk_blobs() {
        bytes += meta.len();
        count += 1;
    }
    (bytes, count)
}

fn remote_desc(cfg: &Config) -> String {
    match &cfg.bucket.value {
        Some(b) => {
            let ep = cfg
                .endpoint
                .value
                .clone()
                .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region.value));
            format!("s3://{b}/{} at {ep}", cfg.prefix.value)
        }
        None => "none (set KACHE_S3_BUCKET to enable kache sync)".to_string(),
    }
}

/// `kache` with no command: a short status.
pub(crate) fn status(cfg: &Config, json: bool) -> Result<ExitCode> {
    let store = Store::at(&cfg.cache_dir.value);
    let entries = store.list()?.len();
    let (bytes, _) = blob_usage(&store);
    if json {
        print_json(&json!({
            "store": store.root(),
            "entries": entries,
            "bytes": bytes,
            "max_size": cfg.max_size.value,
            "remote": cfg.bucket.value.as_ref().map(|_| remote_desc(cfg)),
        }))?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "store:   {}", store.root().display())?;
        writeln!(out, "entries: {entries}")?;
        writeln!(
            out,
            "size:    {} of {}",
            format_size(bytes),
            format_size(cfg.max_size.value)
        )?;
        writeln!(out, "remote:  {}", remote_desc(cfg))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `kache list`.
pub(crate) fn list(cfg: &Config, c: &ListCmd) -> Result<ExitCode> {
    let store = Store::at(&cfg.cache_dir.value);
    let only = c.crate_name.as_deref().map(store::normalize_crate);
    let mut all = load_all(&store, only.as_deref())?;
    match c.sort {
        SortBy::Name => {
            all.sort_by(|a, b| (&a.r.crate_name, &a.r.key).cmp(&(&b.r.crate_name, &b.r.key)));
        }
        SortBy::Size => all.sort_by_key(|l| std::cmp::Reverse(l.entry.size())),
        SortBy::Age => all.sort_by_key(|l| std::cmp::Reverse(l.r.accessed)),
    }
    if c.json {
        let v: Vec<_> = all
            .iter()
            .map(|l| {
                json!({
                    "crate": l.r.crate_name,
                    "key": l.r.key,
                    "size": l.entry.size(),
                    "files": l.entry.files.iter().map(|f| &f.name).collect::<Vec<_>>(),
                    "created": l.entry.created,
                    "accessed": l.r.accessed,
                    "source": if l.entry.pulled.is_some() { "remote" } else { "local" },
                    "signed_by": l.entry.pulled.as_ref().and_then(|p| p.signed_by.as_deref()),
                    "lang": l.entry.lang.as_deref().unwrap_or("rust"),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(v))?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_secs();
    let mut out = std::io::stdout().lock();
    for l in &all {
        writeln!(
            out,
            "{:<28} {}  {:>10}  {:>8} ago  {}",
            l.r.crate_name,
            &l.r.key[..12],
            format_size(l.entry.size()),
            format_age(now.saturating_sub(l.r.accessed)),
            l.entry
                .files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        )?;
    }
    let total: u64 = all.iter().map(|l| l.entry.size()).sum();
    writeln!(out, "{} entries, {}", all.len(), format_size(total))?;
    Ok(ExitCode::SUCCESS)
}

/// Hits, misses and pass-throughs of one language.
#[derive(Clone, Copy, Default, serde::Serialize)]
struct LangCounts {
    hits: u64,
    misses: u64,
    passthrough: u64,
}

/// Counts from the event log.
#[derive(Default)]
struct EventStats {
    hits: u64,
    misses: u64,
    passthrough: u64,
    /// Why compiles were passed through, with counts.
    reasons: BTreeMap<String, u64>,
    errors: u64,
    saved_ms: u64,
    hit_ms: u64,
    verified: u64,
    mismatches: u64,
    /// By language (`rust`, `c`): events name theirs, Rust by default.
    langs: BTreeMap<String, LangCounts>,
    pulled: u64,
    pulled_bytes: u64,
    pushed: u64,
    pushed_bytes: u64,
    /// Eviction passes, the entries and bytes they removed, and when the
    /// last ran and what ran it.
    evictions: u64,
    evicted: u64,
    evicted_bytes: u64,
    last_eviction: Option<(u64, String)>,
    /// The misses and pass-throughs of named crates, for the summary's
    /// top misses.
    missed: Vec<Event>,
}

fn read_events(store: &Store, since: u64) -> EventStats {
    let mut s = EventStats::default();
    for v in events::read(store, |_| true) {
        if v.ts < since {
            continue;
        }
        // Compiles of a crate only: cargo's own `rustc -vV` and
        // `--print` queries name none.
        let named = v.named();
        let lang = v.lang_name().to_string();
        match v.result {
            Outcome::LocalHit | Outcome::RemoteHit => {
                s.hits += 1;
                s.hit_ms += v.ms;
                s.saved_ms += v.compile_ms.saturating_sub(v.ms);
                s.langs.entry(lang).or_default().hits += 1;
            }
            Outcome::Miss => {
                s.misses += 1;
                s.langs.entry(lang).or_default().misses += 1;
                if named {
                    s.missed.push(v);
                }
            }
            Outcome::Passthrough => {
                s.passthrough += 1;
                if let (Some(r), true) = (&v.reason, named) {
                    *s.reasons.entry(r.clone()).or_default() += 1;
                    s.langs.entry(lang).or_default().passthrough += 1;
                    s.missed.push(v);
                }
            }
            Outcome::Sync => {
                s.pulled += v.pulled;
                s.pulled_bytes += v.pulled_bytes;
                s.pushed += v.pushed;
                s.pushed_bytes += v.pushed_bytes;
            }
            Outcome::Evict => {
                s.evictions += 1;
                s.evicted += v.evicted;
                s.evicted_bytes += v.size;
                s.last_eviction = Some((v.ts, v.reason.clone().unwrap_or_default()));
            }
            Outcome::Error => s.errors += 1,
            Outcome::Verified => s.verified += 1,
            Outcome::VerifyMismatch => s.mismatches += 1,
            Outcome::Unknown => {}
        }
    }
    s
}

/// `--since`: a Unix time in seconds, or a duration ago.
fn parse_since(s: Option<&str>) -> Result<u64> {
    let Some(s) = s else { return Ok(0) };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| anyhow!("--since {s}: not a Unix time"));
    }
    let ago = parse_duration(s).ok_or_else(|| {
        anyhow!("--since {s}: expected a Unix time in seconds or a duration such as 30m or 2h")
    })?;
    Ok(now_secs().saturating_sub(ago))
}

fn hit_rate(hits: u64, misses: u64) -> f64 {
    let lookups = hits + misses;
    if lookups == 0 {
        0.0
    } else {
        #[allow(clippy::cast_precision_loss)]
        let r = hits as f64 * 100.0 / lookups as f64;
        r
    }
}

/// Provenance: (built here, pulled by the key that signed them, pulled
/// unverified).
fn provenance(all: &[Loaded]) -> (u64, BTreeMap<String, u64>, u64) {
    let mut built = 0u64;
    let mut unverified = 0u64;
    let mut signed: BTreeMap<String, u64> = BTreeMap::new();
    for l in all {
        match &l.entry.pulled {
            None => built += 1,
            Some(p) => match p.signer_name() {
                Some(n) => *signed.entry(n.to_string()).or_default() += 1,
                None => unverified += 1,
            },
        }
    }
    (built, signed, unverified)
}

/// The per-language and pass-through lines of `kache stats`.
fn print_breakdown(out: &mut impl Write, ev: &EventStats) -> Result<()> {
    for (lang, n) in &ev.langs {
        writeln!(
            out,
            "  {:<10}  {} hits, {} misses",
            lang_title(lang),
            n.hits,
            n.misses
        )?;
    }
    let mut reasons: Vec<(&String, &u64)> = ev.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (reason, n) in reasons {
        writeln!(out, "passed through: {n} ({reason})")?;
    }
    Ok(())
}

/// What the store holds, for `kache stats`.
struct StoreSummary {
    entries: usize,
    /// Entries of C, C++ or assembler objects.
    c_entries: usize,
    crates: usize,
    blobs: u64,
    /// Bytes the entries name, before dedup.
    logical: u64,
    /// Bytes the blobs take on disk.
    stored: u64,
    built: u64,
    signed: BTreeMap<String, u64>,
    unverified: u64,
}

impl StoreSummary {
    fn read(store: &Store) -> Result<Self> {
        let all = load_all(store, None)?;
        let logical: u64 = all.iter().map(|l| l.entry.size()).sum();
        let (stored, blobs) = blob_usage(store);
        let crates: HashSet<&str> = all.iter().map(|l| l.r.crate_name.as_str()).collect();
        let (built, signed, unverified) = provenance(&all);
        let c_entries = all
            .iter()
            .filter(|l| l.entry.lang.as_deref() == Some("c"))
            .count();
        Ok(Self {
            entries: all.len(),
            c_entries,
            crates: crates.len(),
            blobs,
            logical,
            stored,
            built,
            signed,
            unverified,
        })
    }
}

/// `kache stats`.
pub(crate) fn stats(cfg: &Config, c: &StatsCmd) -> Result<ExitCode> {
    let store = Store::at(&cfg.cache_dir.value);
    let since = parse_since(c.since.as_deref())?;
    // What a build just compiled is counted, even if still being stored.
    store.settle(Duration::from_secs(10));
    let ev = read_events(&store, since);
    if c.markdown {
        print_markdown(&store, &ev)?;
        return Ok(ExitCode::SUCCESS);
    }
    let sum = StoreSummary::read(&store)?;
    if c.json {
        print_json(&stats_json(&sum, &ev))?;
        return Ok(ExitCode::SUCCESS);
    }
    print_stats_text(cfg, &sum, &ev)?;
    Ok(ExitCode::SUCCESS)
}

/// `kache stats --json`.
fn stats_json(sum: &StoreSummary, ev: &EventStats) -> serde_json::Value {
    json!({
        "entries": sum.entries,
        "c_entries": sum.c_entries,
        "crates": sum.crates,
        "blobs": sum.blobs,
        "logical_bytes": sum.logical,
        "stored_bytes": sum.stored,
        "dedup_saved_bytes": sum.logical.saturating_sub(sum.stored),
        "hits": ev.hits,
        "misses": ev.misses,
        "passthrough": ev.passthrough,
        "passthrough_reasons": ev.reasons,
        "errors": ev.errors,
        "hit_rate": hit_rate(ev.hits, ev.misses),
        "time_saved_ms": ev.saved_ms,
        "mean_hit_ms": ev.hit_ms.checked_div(ev.hits).unwrap_or(0),
        "verified": ev.verified,
        "verify_mismatches": ev.mismatches,
        "provenance": {
            "built_here": sum.built,
            "pulled_signed_by": sum.signed,
            "pulled_unverified": sum.unverified,
        },
        "by_language": ev.langs,
        "pulled": ev.pulled,
        "pulled_bytes": ev.pulled_bytes,
        "pushed": ev.pushed,
        "pushed_bytes": ev.pushed_bytes,
        "evictions": ev.evictions,
        "evicted": ev.evicted,
        "evicted_bytes": ev.evicted_bytes,
        "last_eviction": ev.last_eviction.as_ref().map(|(ts, by)| json!({"ts": ts, "by": by})),
    })
}

/// `kache stats` as text: the store, then the compiles, then sync and
/// verification where there were any.
fn print_stats_text(cfg: &Config, sum: &StoreSummary, ev: &EventStats) -> Result<()> {
    let mut out = std::io::stdout().lock();
    print_store_lines(&mut out, cfg, sum)?;
    writeln!(
        out,
        "compiles:     {} hits, {} misses ({:.1}% hit rate), {} passed through, {} errors",
        ev.hits,
        ev.misses,
        hit_rate(ev.hits, ev.misses),
        ev.passthrough,
        ev.errors
    )?;
    print_breakdown(&mut out, ev)?;
    writeln!(
        out,
        "time saved:   {:.1}s",
        Duration::from_millis(ev.saved_ms).as_secs_f64()
    )?;
    if ev.pulled + ev.pushed > 0 {
        writeln!(
            out,
            "synced:       {} entries pulled ({}), {} pushed ({})",
            ev.pulled,
            format_size(ev.pulled_bytes),
            ev.pushed,
            format_size(ev.pushed_bytes)
        )?;
    }
    if let Some((ts, by)) = &ev.last_eviction {
        writeln!(
            out,
            "evicted:      {} entries ({}) in {} passes, the last at {} ({by})",
            ev.evicted,
            format_size(ev.evicted_bytes),
            ev.evictions,
            crate::units::utc(*ts)
        )?;
    }
    if ev.verified + ev.mismatches > 0 {
        writeln!(
            out,
            "verified:     {} hits matched a real compile, {} mismatches (KACHE_VERIFY)",
            ev.verified, ev.mismatches
        )?;
    }
    Ok(())
}

/// The entries, size and provenance lines of `kache stats`, with the note
/// on stderr about entries pulled unverified.
fn print_store_lines(out: &mut impl Write, cfg: &Config, sum: &StoreSummary) -> Result<()> {
    writeln!(
        out,
        "entries:      {} ({} crates; {} of them C/C++/asm objects)",
        sum.entries, sum.crates, sum.c_entries
    )?;
    writeln!(
        out,
        "size:         {} stored in {} blobs ({} before dedup, {} saved)",
        format_size(sum.stored),
        sum.blobs,
        format_size(sum.logical),
        format_size(sum.logical.saturating_sub(sum.stored))
    )?;
    let unverified = sum.unverified;
    let mut from = vec![format!("{} built here", sum.built)];
    from.extend(
        sum.signed
            .iter()
            .map(|(name, n)| format!("{n} pulled signed by `{name}`")),
    );
    if unverified > 0 {
        from.push(format!("{unverified} pulled unverified"));
    }
    writeln!(out, "provenance:   {}", from.join(", "))?;
    if unverified > 0 && !cfg.trusted_keys.value.is_empty() {
        eprintln!(
            "note: {unverified} entries were pulled without verification (before trusted keys were set); `kache gc --verify` removes them"
        );
    }
    Ok(())
}

/// The name a language goes by in the summary.
fn lang_title(lang: &str) -> &str {
    match lang {
        "rust" => "Rust",
        "c" => "C/C++/asm",
        other => other,
    }
}

/// `kache stats --markdown`: the job summary.
fn print_markdown(store: &Store, ev: &EventStats) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "### kache")?;
    writeln!(out)?;
    writeln!(out, "| language | hits | misses | not cached | hit rate |")?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for (lang, n) in &ev.langs {
        writeln!(
            out,
            "| {} | {} | {} | {} | {:.1}% |",
            lang_title(lang),
            n.hits,
            n.misses,
            n.passthrough,
            hit_rate(n.hits, n.misses)
        )?;
    }
    writeln!(
        out,
        "| **all** | **{}** | **{}** | **{}** | **{:.1}%** |",
        ev.hits,
        ev.misses,
        ev.reasons.values().sum::<u64>(),
        hit_rate(ev.hits, ev.misses)
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Time saved: **{:.1} s**. Pulled: {} entries ({}). Pushed: {} entries ({}).",
        Duration::from_millis(ev.saved_ms).as_secs_f64(),
        ev.pulled,
        format_size(ev.pulled_bytes),
        ev.pushed,
        format_size(ev.pushed_bytes)
    )?;
    let mut top: Vec<&Event> = ev.missed.iter().collect();
    top.sort_by_key(|v| std::cmp::Reverse(v.compile_ms));
    top.truncate(10);
    if !top.is_empty() {
        writeln!(out)?;
        writeln!(out, "| top misses | compile time | why |")?;
        writeln!(out, "|---|---:|---|")?;
        for v in top {
            let why = crate::why::reason(store, v).replace('|', "\\|");
            writeln!(
                out,
                "| {} | {:.1} s | {why} |",
                v.crate_name,
                Duration::from_millis(v.compile_ms).as_secs_f64()
            )?;
        }
    }
    Ok(())
}

/// `kache gc`: the store's own policy (`store::gc`) does the work; this
/// parses the flags and prints the report.
pub(crate) fn gc(cfg: &Config, c: &GcCmd) -> Result<ExitCode> {
    let max_age = c
        .max_age
        .as_deref()
        .map(|s| {
            parse_duration(s).ok_or_else(|| {
                anyhow!(
                    "invalid value `{s}` for --max-age: expected a duration such as 30m, 24h or 7d"
                )
            })
        })
        .transpose()?;
    if c.remote {
        if cfg.read_only.value {
            anyhow::bail!(
                "kache gc --remote deletes from the bucket, and this runner is read-only ({}); run it from a job that may write to the bucket",
                match &cfg.read_only.source {
                    crate::config::Source::Env(v) => format!("{v}=1"),
                    other => format!("cache.remote.read_only, {other}"),
                }
            );
        }
        return crate::sync::retention::gc_remote(
            cfg,
            max_age,
            c.max_size.as_deref(),
            c.dry_run,
            c.json,
        );
    }
    if c.max_size.is_some() || c.dry_run {
        anyhow::bail!(
            "--max-size and --dry-run go with --remote (the local store evicts down to local_max_size)"
        );
    }
    let store = Store::open(&cfg.cache_dir.value)?;
    let rep = store::gc::collect(
        &store,
        &store::gc::GcOptions {
            max_age,
            max_size: cfg.max_size.value,
            verify: c.verify,
            trusted: c.verify.then(|| cfg.trusted_keys.value.clone()),
            auto: false,
        },
    )?;
    for w in &rep.warnings {
        eprintln!("warning: {w}");
    }
    if c.json {
        print_json(&serde_json::to_value(&rep)?)?;
    } else {
        println!(
            "removed {} entries and {} blobs ({}), {} temp files, {} stale locks; kept {} entries ({}){}{}",
            rep.entries_removed,
            rep.blobs_removed,
            format_size(rep.bytes_freed),
            rep.tmp_removed,
            rep.locks_removed,
            rep.entries_kept,
            format_size(rep.bytes_kept),
            if c.verify {
                format!(
                    "; {} corrupt blobs; {} pulled entries without a trusted signature",
                    rep.corrupt_blobs, rep.untrusted_removed
                )
            } else {
                String::new()
            },
            if rep.corrupt_manifests > 0 {
                format!("; {} corrupt manifests", rep.corrupt_manifests)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kache purge`.
pub(crate) fn purge(cfg: &Config, c: &PurgeCmd) -> Result<ExitCode> {
    let root = &cfg.cache_dir.value;
    if !root.exists() {
        if c.json {
            print_json(&json!({"entries_removed": 0}))?;
        } else {
            println!("removed 0 entries");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(root)?;
    let refs = match c.crate_name.as_deref() {
        Some(n) => match CrateName::normalize(n) {
            Some(n) => store.list_crate(&n)?,
            None => Vec::new(),
        },
        None => store.list()?,
    };
    let mut removed = 0u64;
    for r in &refs {
        if store.remove(&r.crate_name, &r.key)? {
            removed += 1;
        }
    }
    // Free the blobs now unreferenced (size-only pass: no eviction).
    let freed = {
        let _lock = store.gc_lock()?;
        let all = load_all(&store, None)?;
        let keep: HashSet<String> = all
            .iter()
            .flat_map(|l| l.entry.files.iter().map(|f| f.hash.to_string()))
            .collect();
        let mut freed = 0u64;
        for (p, m) in store.walk_blobs() {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !keep.contains(name) && fs::remove_file(&p).is_ok() {
                freed += m.len();
            }
        }
        if c.crate_name.is_none() {
            remove_children(&store.root().join("index"));
        }
        freed
    };
    if c.json {
        print_json(&json!({"entries_removed": removed, "bytes_freed": freed}))?;
    } else {
        println!("removed {removed} entries, freed {}", format_size(freed));
    }
    Ok(ExitCode::SUCCESS)
}

fn remove_children(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// `kache config`.
pub(crate) fn config(cfg: &Config, c: &ConfigCmd) -> Result<ExitCode> {
    let rows = cfg.rows(&Credentials::shown(cfg));
    if c.json {
        let mut m = BTreeMap::new();
        for (name, var, value, source) in &rows {
            m.insert(*name, json!({"env": var, "value": value, "source": source}));
        }
        print_json(&json!({
            "file": cfg.file.as_ref().map(|p| p.display().to_string()),
            "settings": m,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    match &cfg.file {
        Some(p) => writeln!(out, "config file: {}", p.display())?,
        None => writeln!(
            out,
            "config file: none ({} does not exist)",
            crate::config::config_path()
                .map_or_else(|| "-".to_string(), |p| p.display().to_string())
        )?,
    }
    for (name, var, value, source) in &rows {
        writeln!(out, "{name:<24} {value:<40} ({source}; env {var})")?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_a_unix_time_or_a_duration_ago() {
        assert_eq!(parse_since(None).unwrap(), 0);
        assert_eq!(parse_since(Some("1700000000")).unwrap(), 1_700_000_000);
        let t = parse_since(Some("2h")).unwrap();
        assert!((now_secs() - 7200).abs_diff(t) <= 2, "{t}");
        let e = parse_since(Some("yesterday")).unwrap_err().to_string();
        assert!(e.contains("--since yesterday") && e.contains("30m"), "{e}");
    }

    #[test]
    fn hit_rates() {
        assert!((hit_rate(0, 0) - 0.0).abs() < f64::EPSILON);
        assert!((hit_rate(3, 1) - 75.0).abs() < 1e-9);
    }
}
