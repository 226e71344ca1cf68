//! `kache sync` (stub; being written).

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::SyncCmd;
use crate::config::Config;

pub(crate) fn run(_cfg: &Config, _cmd: &SyncCmd) -> Result<ExitCode> {
    bail!("kache sync is not implemented yet")
}
