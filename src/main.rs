/*!
kache: a content-addressed build cache for Rust.

The mode is decided from argv before anything else: when cargo runs us as
`RUSTC_WRAPPER` (argv[1] is rustc or clippy-driver, or a workspace wrapper
followed by one) we go straight to the wrapper, which reads no more
settings than it needs. Otherwise the command line is parsed by clap.
*/
#![deny(unsafe_code)]

mod cli;
mod commands;
mod config;
mod lockfile;
mod remote;
mod store;
mod sync;
mod wrapper;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if wrapper::is_wrapper_call(&args) {
        let code = wrapper::main(&args);
        std::process::exit(code);
    }
    if let Some(program) = foreign_program(&args) {
        // cc-rs runs `$RUSTC_WRAPPER cc ARGS` for C code when the wrapper
        // is named kache (as it does for sccache): run the C compiler
        // as is, uncached.
        let status = std::process::Command::new(&program)
            .args(&args[2..])
            .status();
        std::process::exit(match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                s.code()
                    .unwrap_or_else(|| s.signal().map_or(1, |n| 128 + n))
            }
            Err(e) => {
                eprintln!("error: kache: cannot run {}: {e}", program.display());
                1
            }
        });
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

/// argv[1] names a program (not a kache command or flag) that exists:
/// a path to an executable, or a name found on `PATH`.
fn foreign_program(args: &[std::ffi::OsString]) -> Option<std::path::PathBuf> {
    use clap::CommandFactory;
    let a1 = args.get(1)?.to_str()?;
    if a1.is_empty() || a1.starts_with('-') {
        return None;
    }
    if cli::Cli::command()
        .get_subcommands()
        .any(|c| c.get_name() == a1)
        || a1 == "help"
    {
        return None;
    }
    let is_exe = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if a1.contains('/') {
        let p = std::path::PathBuf::from(a1);
        return is_exe(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(a1))
        .find(|p| is_exe(p))
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    use cli::Command;
    let cfg = config::Config::load()?;
    match cli.command {
        None => commands::status(&cfg, cli.json),
        Some(Command::Sync(c)) => sync::run(&cfg, &c),
        Some(Command::List(c)) => commands::list(&cfg, &c),
        Some(Command::Stats(c)) => commands::stats(&cfg, &c),
        Some(Command::Gc(c)) => commands::gc(&cfg, &c),
        Some(Command::Purge(c)) => commands::purge(&cfg, &c),
        Some(Command::Config(c)) => commands::config(&cfg, &c),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
