/*!
kache: a content-addressed build cache for Rust.

The mode is decided from argv before anything else: when cargo runs us as
`RUSTC_WRAPPER` (`argv[1]` is rustc or clippy-driver, or a workspace wrapper
followed by one) we go straight to the wrapper, which reads no more
settings than it needs. Otherwise the command line is parsed by clap.
*/
#![deny(unsafe_code)]

mod cli;
mod commands;
mod config;
mod daemon;
mod debugmap;
mod doctor;
mod init;
mod lockfile;
mod remote;
mod store;
mod sync;
mod transfer;
mod trust;
mod units;
mod why;
mod wrapper;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if wrapper::is_wrapper_call(&args) {
        let code = wrapper::main(&args);
        std::process::exit(code);
    }
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    use cli::Command;
    // These two must work whatever the config file holds.
    match &cli.command {
        Some(Command::Doctor(c)) => return doctor::doctor(config::Config::load(), c),
        Some(Command::Init(c)) => return init::init(c),
        _ => {}
    }
    let cfg = config::Config::load()?;
    match cli.command {
        None => commands::status(&cfg, cli.json),
        Some(Command::Sync(c)) => sync::run(&cfg, &c),
        Some(Command::List(c)) => commands::list(&cfg, &c),
        Some(Command::Stats(c)) => commands::stats(&cfg, &c),
        Some(Command::Gc(c)) => commands::gc(&cfg, &c),
        Some(Command::Purge(c)) => commands::purge(&cfg, &c),
        Some(Command::Config(c)) => commands::config(&cfg, &c),
        Some(Command::Daemon(c)) => daemon::run(cfg, &c),
        Some(Command::WhyMiss(c)) => why::why_miss(&cfg, &c),
        Some(Command::DebugMap(c)) => debugmap::debug_map(&c),
        Some(Command::Init(_) | Command::Doctor(_)) => unreachable!("handled above"),
        Some(Command::Key(c)) => match &c.action {
            cli::KeyAction::Generate { name, out } => trust::generate_cmd(name, out),
        },
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
