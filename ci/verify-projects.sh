#!/usr/bin/env bash
# KACHE_VERIFY over real projects (run by hand, not in CI):
#
#   bash ci/verify-projects.sh PROJECT_DIR...
#
# For each project: a cold build through kache fills an empty store, then
# target/ is removed and the build runs again with KACHE_VERIFY=1, so every
# hit also compiles for real and kache compares the outputs byte for byte
# with what it would have restored. Prints, per project, the hits verified
# and every mismatch (crate and file). Needs the projects' crates in the
# local registry (`cargo fetch` once in each). ARGS="--all-targets" adds
# tests and benches to the build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -gt 0 ] || { echo "usage: $0 PROJECT_DIR..." >&2; exit 2; }
cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml"
KACHE="$ROOT/target/release/kache"
WORK=$(mktemp -d /tmp/kache-verify.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export CARGO_INCREMENTAL=0 RUSTC_WRAPPER="$KACHE"
unset RUSTC_WORKSPACE_WRAPPER KACHE_DISABLED
printf '| %-22s | %6s | %8s | %10s |\n' project compiles verified mismatches
printf '|%s|%s|%s|%s|\n' ------------------------ -------- ---------- ------------
status=0
for p in "$@"; do
  name=$(basename "$(cd "$p" && pwd)")
  src="$WORK/$name/src"
  mkdir -p "$src"
  (cd "$p" && tar --exclude=./target --exclude=./.git -cf - .) | (cd "$src" && tar -xf -)
  export CARGO_TARGET_DIR="$WORK/$name/target" KACHE_CACHE_DIR="$WORK/$name/cache"
  (cd "$src" && cargo build --offline --quiet ${ARGS:-} >"$WORK/$name/cold.log" 2>&1) \
    || { echo "error: cold build of $name failed; see $WORK/$name/cold.log" >&2; cat "$WORK/$name/cold.log" >&2; exit 1; }
  rm -rf "$CARGO_TARGET_DIR" "$KACHE_CACHE_DIR/events.jsonl"
  (cd "$src" && KACHE_VERIFY=1 cargo build --offline --quiet ${ARGS:-} >"$WORK/$name/verify.log" 2>&1) \
    || { echo "error: verify build of $name failed" >&2; cat "$WORK/$name/verify.log" >&2; exit 1; }
  ev="$KACHE_CACHE_DIR/events.jsonl"
  n=$(grep -c '"crate":"[^"]' "$ev" || true)
  ok=$(grep -c '"result":"verified"' "$ev" || true)
  bad=$(grep -c '"result":"verify_mismatch"' "$ev" || true)
  printf '| %-22s | %6s | %8s | %10s |\n' "$name" "$n" "$ok" "$bad"
  if [ "$bad" != 0 ]; then
    status=1
    grep '"result":"verify_mismatch"' "$ev" | sed 's/.*"crate":"\([^"]*\)".*"files":\[\([^]]*\)\].*/  mismatch: \1: \2/' >&2
  fi
done
exit $status
