//! Cargo.lock adapter (stub; being written).
