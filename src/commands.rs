//! The small commands: status, list, stats, gc, purge, config.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{ConfigCmd, GcCmd, ListCmd, PurgeCmd, StatsCmd};
use crate::config::Config;

pub(crate) fn status(_cfg: &Config, _json: bool) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
pub(crate) fn list(_cfg: &Config, _c: &ListCmd) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
pub(crate) fn stats(_cfg: &Config, _c: &StatsCmd) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
pub(crate) fn gc(_cfg: &Config, _c: &GcCmd) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
pub(crate) fn purge(_cfg: &Config, _c: &PurgeCmd) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
pub(crate) fn config(_cfg: &Config, _c: &ConfigCmd) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
