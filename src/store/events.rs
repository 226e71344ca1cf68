/*!
The event log, `events.jsonl`: one JSON line per wrapper outcome (a hit,
a miss, a pass-through, an error, a verification) and per sync that moved
something. `kache stats` and `kache why-miss` read it.

[`Event`] is the one shape of a line: every writer builds one and every
reader deserializes one, so a field is named in one place. Lines written
by older kaches (fields missing) still read; a line that does not parse
is skipped, never an error: the log is a record, not state.
*/

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Store, now_secs};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Answered from the local store.
    LocalHit,
    /// Answered from an entry the daemon fetched from the remote.
    RemoteHit,
    /// Ran for real (stored unless `reason` says why not).
    Miss,
    /// Ran uncached, for `reason`.
    Passthrough,
    /// An internal error; ran as without kache.
    Error,
    /// `KACHE_VERIFY=1`: ran for real and matched the entry.
    Verified,
    /// `KACHE_VERIFY=1`: ran for real and differed from the entry.
    VerifyMismatch,
    /// `kache sync` moved entries.
    Sync,
    /// Entries were removed to keep the store within its size limit
    /// (`reason`: `local_max_size` for a pass a build ran, `kache gc`).
    Evict,
    /// A result this kache does not know (a newer kache wrote it).
    #[serde(other)]
    Unknown,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Event {
    #[serde(default)]
    pub(crate) ts: u64,
    /// The store folder of the action (the cargo package); empty for a
    /// call that names none (cargo's `rustc -vV`, a sync).
    #[serde(rename = "crate", default)]
    pub(crate) crate_name: String,
    pub(crate) result: Outcome,
    /// The wrapper's own time for this call.
    #[serde(default)]
    pub(crate) ms: u64,
    /// Bytes restored or stored.
    #[serde(default)]
    pub(crate) size: u64,
    /// The entry's key; empty when nothing was stored.
    #[serde(default)]
    pub(crate) key: String,
    /// What running the action for real took (for a hit: when it was
    /// recorded).
    #[serde(default)]
    pub(crate) compile_ms: u64,
    /// The kind of action: `None` for a Rust compile, `c` for a C, C++ or
    /// assembler compile, `build-script` for a build-script run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lang: Option<String>,
    /// Why it passed through, or why a miss was not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// A stored miss: its key's inputs by name (for `why-miss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) inputs: Option<BTreeMap<String, String>>,
    /// A verify mismatch: the outputs that differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) files: Vec<String>,
    /// A sync: entries and bytes moved each way.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) pulled: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) pulled_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) pushed: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) pushed_bytes: u64,
    /// An eviction: the entries removed (`size`: the bytes freed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) evicted: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Event {
    /// An event of `crate_name` now, its other fields empty.
    pub(crate) fn new(result: Outcome, crate_name: &str) -> Event {
        Event {
            ts: now_secs(),
            crate_name: crate_name.to_string(),
            result,
            ms: 0,
            size: 0,
            key: String::new(),
            compile_ms: 0,
            lang: None,
            reason: None,
            inputs: None,
            files: Vec::new(),
            pulled: 0,
            pulled_bytes: 0,
            pushed: 0,
            pushed_bytes: 0,
            evicted: 0,
        }
    }

    /// The wrapper's time since `start`.
    pub(crate) fn took(mut self, start: Instant) -> Event {
        self.ms = crate::units::millis(start.elapsed());
        self
    }

    pub(crate) fn lang(mut self, lang: Option<&str>) -> Event {
        self.lang = lang.map(str::to_string);
        self
    }

    pub(crate) fn reason(mut self, reason: &str) -> Event {
        self.reason = Some(reason.to_string());
        self
    }

    /// Appends the event to the store's log.
    pub(crate) fn write(&self, store: &Store) {
        if let Ok(line) = serde_json::to_string(self) {
            store.log_event(&line);
        }
    }

    /// Whether it is the outcome of a compile of a named crate (cargo's
    /// own `rustc -vV` and `--print` queries name none).
    pub(crate) fn named(&self) -> bool {
        !self.crate_name.is_empty()
    }

    /// The kind of action, for per-language counts: `rust` by default.
    pub(crate) fn lang_name(&self) -> &str {
        self.lang.as_deref().unwrap_or("rust")
    }
}

/// Every event in the store's log, oldest first; `keep` filters the raw
/// line before it is parsed (a cheap substring test).
pub(crate) fn read(store: &Store, keep: impl Fn(&str) -> bool) -> Vec<Event> {
    let Ok(f) = fs::File::open(store.events_path()) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| keep(l))
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_old_lines_read() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut e = Event::new(Outcome::Miss, "foo").lang(Some("c"));
        e.key = "k".into();
        e.write(&s);
        Event::new(Outcome::Passthrough, "bar")
            .reason("never_cache")
            .write(&s);
        // As kache wrote them before this module, and a newer result.
        s.log_event(r#"{"ts":5,"crate":"baz","result":"local_hit","ms":1,"size":2,"key":"x","compile_ms":9}"#);
        s.log_event(r#"{"ts":6,"crate":"q","result":"teleported"}"#);
        s.log_event("not json");
        let all = read(&s, |_| true);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0], e);
        assert_eq!(all[0].lang_name(), "c");
        assert_eq!(all[1].reason.as_deref(), Some("never_cache"));
        assert_eq!(all[2].result, Outcome::LocalHit);
        assert_eq!(all[2].compile_ms, 9);
        assert_eq!(all[2].lang_name(), "rust");
        assert_eq!(all[3].result, Outcome::Unknown);
        let line = fs::read_to_string(s.events_path()).unwrap();
        let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(first["result"], "miss");
        assert_eq!(first["crate"], "foo");
        assert!(first.get("pulled").is_none(), "empty fields are left out");
    }
}
