//! Helpers shared by every test module.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The kache binary under test.
pub fn kache_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kache"))
}

/// A `kache` command with a clean environment: no user config, no
/// credentials from the host, the given cache dir.
pub fn kache(cache_dir: &Path) -> Command {
    let mut c = Command::new(kache_bin());
    clean_env(&mut c);
    c.env("KACHE_CACHE_DIR", cache_dir);
    c
}

/// Removes every KACHE_* and AWS_* variable and points config lookups
/// at nothing.
pub fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("KACHE_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("KACHE_CONFIG", "/nonexistent/kache-config.toml");
    c.env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials");
}

/// Output as text, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
