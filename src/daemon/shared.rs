/*!
What every job of the daemon reads: the store, the remote as configured
now (`Live`), the permits and the breaker that bound remote work, and
the fetch pool.

`Shared` is owned through an `Arc` by every thread. `Live` is swapped
whole when the config file changes: a job takes the current one
(`Shared::live`) and works with it to the end, so no request mixes two
remotes' settings.
*/

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, anyhow};

use super::breaker::Breaker;
use super::lock;
use super::permits::{Bounded, Permits};
use crate::config::Config;
use crate::remote::s3::S3Remote;
use crate::remote::{Remote, layout};
use crate::store::pending::pending_dir;
use crate::store::{CacheKey, CrateName, Store};
use crate::transfer::exec::Ctx;
use crate::trust::Policy;

/// The remote as configured now; replaced when the config file changes.
pub(super) struct Live {
    /// The remote's identity, as wrappers name it in their requests.
    pub(super) id: String,
    /// `s3://bucket/prefix at endpoint`, for messages.
    pub(super) shown: String,
    pub(super) remote: S3Remote,
    pub(super) prefix: String,
    pub(super) level: i32,
    /// Its upload markers.
    pub(super) pending: PathBuf,
    /// What the bucket holds, by crate (listed at most every `KNOWN_TTL`).
    pub(super) known: Mutex<HashMap<CrateName, (Instant, HashSet<CacheKey>)>>,
    /// Entries brought in, by crate.
    pub(super) fetched: Mutex<HashMap<CrateName, u64>>,
    /// Signing uploads, verifying remote hits.
    pub(super) trust: Policy,
    /// Never upload (pull-request runners).
    pub(super) read_only: bool,
    /// `local_max_size`: a fetch that takes the store past it evicts.
    pub(super) max_size: u64,
}

impl Live {
    pub(super) fn new(cfg: &Config, root: &Path) -> Result<Live> {
        let id = cfg.remote_identity().ok_or_else(|| {
            anyhow!("no remote configured: the daemon needs an S3 bucket (KACHE_S3_BUCKET or cache.remote.bucket)")
        })?;
        let remote = S3Remote::from_config(cfg)?;
        let trust = cfg.trust_policy(true)?;
        let endpoint = id.split('|').next().unwrap_or_default();
        let shown = format!(
            "{} at {endpoint}",
            remote.describe(&layout::root_prefix(&cfg.prefix.value))
        );
        Ok(Live {
            pending: pending_dir(root, &id),
            id,
            shown,
            remote,
            prefix: cfg.prefix.value.clone(),
            level: cfg.compression_level.value,
            max_size: cfg.max_size.value,
            known: Mutex::default(),
            fetched: Mutex::default(),
            trust,
            read_only: cfg.read_only.value,
        })
    }

    /// How it signs and verifies, for the log (never the key itself).
    pub(super) fn trust_line(&self) -> String {
        let sign = match &self.trust.signer {
            _ if self.read_only => "read-only: never uploads".to_string(),
            Some(k) => format!("uploads signed by `{}`", k.name()),
            None => "uploads unsigned".to_string(),
        };
        // Each fetch is verified against the asking build's keys.
        format!("{sign}; remote hits verified against the keys each build trusts")
    }

    /// What a transfer between `store` and this remote (seen through
    /// `remote`) needs.
    pub(super) fn ctx<'a>(&'a self, store: &'a Store, remote: &'a dyn Remote) -> Ctx<'a> {
        Ctx {
            store,
            remote,
            prefix: &self.prefix,
            level: self.level,
            trust: &self.trust,
            stop: AtomicBool::new(false),
        }
    }
}

pub(super) struct Shared {
    pub(super) store: Store,
    /// `s3_concurrency` when the daemon started: the permits, the upload
    /// threads and the fetch pool.
    pub(super) conc: usize,
    live: Mutex<Arc<Live>>,
    pub(super) permits: Permits,
    pub(super) breaker: Breaker,
    /// Where fetches run, `conc` threads, as `kache sync` runs them.
    pub(super) pool: rayon::ThreadPool,
    /// Set by a stop request: every loop ends.
    pub(super) quit: AtomicBool,
    pub(super) config_reloads: AtomicU64,
}

impl Shared {
    pub(super) fn new(store: Store, live: Live, pool: rayon::ThreadPool, conc: usize) -> Shared {
        Shared {
            store,
            conc,
            live: Mutex::new(Arc::new(live)),
            permits: Permits::new(conc),
            breaker: Breaker::default(),
            pool,
            quit: AtomicBool::new(false),
            config_reloads: AtomicU64::new(0),
        }
    }

    pub(super) fn live(&self) -> Arc<Live> {
        Arc::clone(&lock(&self.live))
    }

    /// Makes `l` the remote from now on; returns the one it replaces.
    pub(super) fn replace_live(&self, l: Arc<Live>) -> Arc<Live> {
        std::mem::replace(&mut *lock(&self.live), l)
    }

    /// `live`'s remote through the permits; `high` for a fetch.
    pub(super) fn remote<'a>(&'a self, live: &'a Live, high: bool) -> Bounded<'a> {
        Bounded {
            inner: &live.remote,
            permits: &self.permits,
            high,
        }
    }

    pub(super) fn quitting(&self) -> bool {
        self.quit.load(Ordering::SeqCst)
    }
}

pub(super) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub(super) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
