/*!
`RUSTC_WRAPPER` mode: every call cargo (or the `cc` crate, `CMake`, make)
makes through kache.

Rooms:
- `call`: which argv shapes are wrapper calls at all;
- `action`: the one hit/miss pipeline every cached action goes through,
  behind the `Action` trait;
- `rustc/`: rustc compiles (`kache RUSTC ARGS...`, or `kache
  WORKSPACE_WRAPPER RUSTC ARGS...`): their arguments, key, link lines;
- `cc/`: C, C++ and assembler compiles (`kache CC ARGS...`);
- `script/`: build-script runs (`kache --kache-run-build-script REAL`,
  from the launcher kache puts in place of each build script it
  compiles), traced by `trace`;
- shared by every kind: `paths` (machine-local roots and their
  sentinels), `hasher`, `inputs` and `explain` (the framed key
  hasher, the full key of a recorded input list, a key's account for
  `why-miss`), `probe` (what a
  key reads of the machine), `depinfo`, `scan` (roots in outputs),
  `restore` (outputs back into place), `process` (running the real
  program), `stamp`.

A cacheable call is looked up by its key; a hit restores the stored
outputs and replays the program's output without running it; a miss
runs it, streams its output live and stores the result. Everything else
passes straight through. Any internal error falls back to running the
program exactly as without kache, with one warning line.
*/

mod action;
mod background;
mod call;
mod cc;
pub(crate) mod depinfo;
pub(crate) mod explain;
mod glob;
mod hasher;
mod inputs;
mod paths;
mod probe;
mod process;
pub(crate) mod restore;
mod rustc;
mod scan;
mod script;
mod stamp;
mod trace;

use std::ffi::OsString;

pub(crate) use self::call::is_wrapper_call;
pub(crate) use self::script::how_traced;

/// Runs the wrapper; returns the exit code to exit with.
pub(crate) fn main(argv: &[OsString]) -> i32 {
    if argv.get(1).is_some_and(|a| a == script::RUN_ARG) {
        return script::main(argv);
    }
    if std::env::var_os("KACHE_ACTIVE").is_none() && cc::is_cc_call(argv) {
        return cc::main(argv);
    }
    rustc::main(argv)
}
