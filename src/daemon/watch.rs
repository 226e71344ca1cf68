/*!
The config watcher: one thread that checks the config file every
`WATCH_EVERY` and, on a change, rebuilds the remote (and so the identity
wrappers are compared with). The environment is the daemon's own and
does not change; `s3_concurrency` needs a restart (the permits, the
upload threads and the fetch pool are sized at start).

The same thread reads `pending/` again every `RESCAN_EVERY`, for uploads
nobody announced (a notice can be missed, a marker cannot).
*/

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::fetch::Fetches;
use super::log;
use super::shared::{Live, Shared, add};
use super::upload::Uploads;
use crate::config::{Config, config_path};

/// How often the config file is checked.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How often `pending/` is read again for uploads nobody announced.
const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// (mtime, size, inode) of the config file, `None` if absent.
fn config_stamp(p: Option<&Path>) -> Option<(SystemTime, u64, u64)> {
    let m = fs::metadata(p?).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Reloads the settings when the config file changes, until `quit`.
pub(super) fn watch(sh: &Shared, uploads: &Uploads, fetches: &Fetches) {
    let path = config_path();
    let mut last = config_stamp(path.as_deref());
    let mut scanned = Instant::now();
    while !sh.quitting() {
        std::thread::sleep(WATCH_EVERY);
        if scanned.elapsed() >= RESCAN_EVERY {
            uploads.rescan(&sh.live());
            scanned = Instant::now();
        }
        let now = config_stamp(path.as_deref());
        if now == last {
            continue;
        }
        last = now;
        let live = Config::load().and_then(|c| {
            if c.s3_concurrency.value != sh.conc {
                log("s3_concurrency changed: it takes effect at the next start");
            }
            Live::new(&c, sh.store.root())
        });
        match live {
            Ok(l) => {
                let l = Arc::new(l);
                log(&format!(
                    "config file changed: now serving {} ({})",
                    l.shown,
                    l.trust_line()
                ));
                let old = sh.replace_live(Arc::clone(&l));
                if old.id != l.id {
                    // Their markers stay under the old remote's pending/.
                    uploads.forget();
                }
                add(&sh.config_reloads, 1);
                fetches.forget();
                sh.breaker.reset();
                uploads.replay(&l);
            }
            Err(e) => log(&format!(
                "config file changed but cannot be used, keeping the old settings: {e:#}"
            )),
        }
    }
}
