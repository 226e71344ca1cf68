#!/usr/bin/env bash
# Soak test, run by hand: many push/pull rounds through the fault proxy
# (tests/s3server.rs) at a high fault rate: 503 SlowDown, 500, 429,
# connections cut in either direction, truncated bodies. Prints the
# transfers, requests, faults injected, object retries, re-runs and
# entries lost (must be 0); each pulled cache is checked with
# `kache gc --verify`.
#
#   bash ci/soak.sh                       # 5 rounds at 30%
#   ROUNDS=50 RATE=0.4 ENTRIES=40 bash ci/soak.sh
#
# Against an external server, export KACHE_TEST_S3_* first (see
# ci/garage.sh); by default an in-process s3s-fs server is used.
set -euo pipefail
cd "$(dirname "$0")/.."
export KACHE_SOAK_ROUNDS=${ROUNDS:-5}
export KACHE_SOAK_FAULT_RATE=${RATE:-0.3}
export KACHE_SOAK_ENTRIES=${ENTRIES:-20}
export KACHE_SOAK_SEED=${SEED:-$RANDOM}
echo "soak: $KACHE_SOAK_ROUNDS rounds, fault rate $KACHE_SOAK_FAULT_RATE, $KACHE_SOAK_ENTRIES entries a round, seed $KACHE_SOAK_SEED" >&2
cargo test --release --locked --test tests sync::reliability::soak -- --ignored --nocapture --exact
