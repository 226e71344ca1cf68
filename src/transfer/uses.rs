//! Use records: what a sync or the daemon moved, and when, written to
//! the bucket so `kache gc --remote` can tell last use (S3 records no
//! reads). One small object per run; entry objects are never rewritten.

use serde::{Deserialize, Serialize};

use crate::remote::{Remote, layout};
use crate::store::now_secs;
use crate::transfer::plan::EntryId;

/// One use record: entries used at `ts`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct UseRecord {
    pub(crate) ts: u64,
    /// (crate, key) pairs used at `ts`.
    #[serde(default)]
    pub(crate) entries: Vec<(String, String)>,
    /// A compacted record: (crate, key) -> last use.
    #[serde(default)]
    pub(crate) last_use: Vec<(String, String, u64)>,
}

pub(crate) fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    blake3::hash(format!("{t}-{}", std::process::id()).as_bytes()).to_hex()[..12].to_string()
}

/// Records that `entries` were used now: one small object per call.
/// Best effort: a failure is a warning, never a failed sync.
pub(crate) fn record_use(remote: &dyn Remote, prefix: &str, entries: &[EntryId]) {
    if entries.is_empty() {
        return;
    }
    let ts = now_secs();
    let rec = UseRecord {
        ts,
        entries: entries
            .iter()
            .map(|(c, k)| (c.to_string(), k.to_string()))
            .collect(),
        last_use: Vec::new(),
    };
    let Ok(body) = serde_json::to_vec(&rec) else {
        return;
    };
    let name = layout::use_record(prefix, ts, None, &nonce());
    if let Err(e) = remote.put_bytes(&name, &body, false) {
        super::report::warning(&format!(
            "cannot record use of {} entries in {}: {e} (kache gc --remote may then treat them as unused)",
            entries.len(),
            remote.describe(&name)
        ));
    }
}
