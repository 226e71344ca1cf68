//! The remote store (stub; being written).
