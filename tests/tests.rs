//! The integration test binary: real cargo builds, a real S3 server.

mod commands;
mod common;
mod s3server;
mod sync;
mod wrapper;
