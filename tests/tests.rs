//! The integration test binary: real cargo builds, a real S3 server.

#![allow(unreachable_pub)]
// A scenario test reads top to bottom, as the user's session it replays.
#![allow(clippy::too_many_lines)]

mod adoption;
mod cc;
mod commands;
mod common;
mod daemon;
mod differential;
mod s3server;
mod sync;
mod trust;
mod wrapper;
