//! Command-line types (clap derive). No I/O here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A content-addressed build cache for Rust (run as `RUSTC_WRAPPER`), with
/// S3 sync.
#[derive(Debug, Parser)]
#[command(name = "kache", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Print the status as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Move entries between the local store and S3.
    Sync(SyncCmd),
    /// List stored entries.
    List(ListCmd),
    /// Entries, bytes, dedup savings, hits and misses, time saved.
    Stats(StatsCmd),
    /// Evict least recently used entries down to the size limit.
    Gc(GcCmd),
    /// Remove all entries, or one crate's.
    Purge(PurgeCmd),
    /// Show the effective settings and where each came from.
    Config(ConfigCmd),
    /// Upload in the background and serve remote hits (foreground
    /// without a subcommand).
    Daemon(DaemonCmd),
    /// Explain the last miss of a crate: which key inputs differ from the
    /// nearest stored entry.
    WhyMiss(WhyMissCmd),
    /// Switch kache on for cargo (build.rustc-wrapper in
    /// ~/.cargo/config.toml, or the project's).
    Init(InitCmd),
    /// Check the setup: wrapper, cc, store, config, remote, clock, daemon.
    Doctor(DoctorCmd),
    /// Print the source-path mapping a debugger needs to find the sources
    /// of cached builds (for its init file).
    DebugMap(DebugMapCmd),
    /// Signing keys for trusted entries.
    Key(KeyCmd),
}

#[derive(Debug, Args)]
pub(crate) struct KeyCmd {
    #[command(subcommand)]
    pub(crate) action: KeyAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyAction {
    /// Write a new ed25519 secret key to FILE (mode 0600, never over an
    /// existing file) and print its public key, `NAME:BASE64`, for
    /// `KACHE_TRUSTED_KEYS`.
    Generate {
        /// The key's name (letters, digits, `.`, `_`, `-`), recorded in
        /// every signature it makes.
        #[arg(value_name = "NAME")]
        name: String,
        /// Where to write the secret key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(crate) struct InitCmd {
    /// Write the project's .cargo/config.toml (at the workspace root)
    /// instead of $`CARGO_HOME/config.toml`.
    #[arg(long)]
    pub(crate) project: bool,
    /// Change nothing; exit 1 if kache is not the wrapper cargo runs here.
    #[arg(long)]
    pub(crate) check: bool,
    /// Replace another wrapper (such as sccache) set in that file.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DoctorCmd {
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DebugMapCmd {
    /// gdb syntax (`set substitute-path`); the default.
    #[arg(long, group = "debugger")]
    pub(crate) gdb: bool,
    /// lldb syntax (`settings set target.source-map`).
    #[arg(long, group = "debugger")]
    pub(crate) lldb: bool,
    /// A `sourceMap` block for a VS Code launch configuration.
    #[arg(long, group = "debugger")]
    pub(crate) vscode: bool,
    /// The workspace of this Cargo.toml instead of the current directory's.
    #[arg(long, value_name = "PATH")]
    pub(crate) manifest_path: Option<PathBuf>,
}

/// A debugger's syntax for `kache debug-map`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Debugger {
    Gdb,
    Lldb,
    Vscode,
}

#[derive(Debug, Args)]
pub(crate) struct WhyMissCmd {
    /// The crate (package) name.
    #[arg(value_name = "CRATE")]
    pub(crate) crate_name: String,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DaemonCmd {
    #[command(subcommand)]
    pub(crate) action: Option<DaemonAction>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DaemonAction {
    /// Start the daemon in the background; returns once it answers.
    Start,
    /// Upload what is pending, then stop; exit 1 if some uploads remain.
    Stop {
        /// The longest wait for pending uploads (`30s`, `5m`).
        #[arg(long, value_name = "DUR", default_value = "5m")]
        timeout: String,
    },
    /// Remote, uptime, queue, uploads and remote hits.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SyncCmd {
    /// Download only.
    #[arg(long, conflicts_with = "push")]
    pub(crate) pull: bool,
    /// Upload only.
    #[arg(long)]
    pub(crate) push: bool,
    /// Pull every crate in the bucket, ignoring Cargo.lock.
    #[arg(long)]
    pub(crate) all: bool,
    /// Print what would be transferred, with sizes; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Use the workspace of this Cargo.toml (for Cargo.lock filtering).
    #[arg(long, value_name = "PATH")]
    pub(crate) manifest_path: Option<PathBuf>,
    /// Exit 0 even if transfers or listings failed or the cache cannot be
    /// used (each reported; a cache that cannot be used is one warning).
    #[arg(long)]
    pub(crate) allow_partial: bool,
    /// Print the plan and the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum SortBy {
    #[default]
    Name,
    Size,
    Age,
}

#[derive(Debug, Args)]
pub(crate) struct ListCmd {
    /// Only this crate's entries.
    pub(crate) crate_name: Option<String>,
    /// Sort order.
    #[arg(long, value_enum, default_value_t)]
    pub(crate) sort: SortBy,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatsCmd {
    #[arg(long, conflicts_with = "markdown")]
    pub(crate) json: bool,
    /// A Markdown summary (for `$GITHUB_STEP_SUMMARY`): hits and misses
    /// per language, time saved, bytes pulled and pushed, top misses.
    #[arg(long)]
    pub(crate) markdown: bool,
    /// Count only events since this Unix time (seconds), or this long ago
    /// (`30m`, `2h`).
    #[arg(long, value_name = "WHEN")]
    pub(crate) since: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct GcCmd {
    /// Remove entries not used for this long (`30m`, `24h`, `7d`) instead
    /// of evicting down to the size limit.
    #[arg(long, value_name = "DUR")]
    pub(crate) max_age: Option<String>,
    /// Re-hash every blob and drop entries whose files are missing or
    /// corrupt.
    #[arg(long, conflicts_with = "remote")]
    pub(crate) verify: bool,
    /// Retention in the bucket: remove entries no runner has used (pushed,
    /// pulled) for `--max-age`, or the least recently used down to
    /// `--max-size`.
    #[arg(long)]
    pub(crate) remote: bool,
    /// With --remote: delete least recently used entries until the bucket
    /// holds at most this much (`10GB`, `50GiB`).
    #[arg(long, value_name = "SIZE")]
    pub(crate) max_size: Option<String>,
    /// With --remote: print what would be deleted, with sizes; change
    /// nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PurgeCmd {
    /// Only this crate's entries.
    #[arg(long, value_name = "NAME")]
    pub(crate) crate_name: Option<String>,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigCmd {
    #[arg(long)]
    pub(crate) json: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
