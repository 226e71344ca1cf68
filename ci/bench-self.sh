#!/usr/bin/env bash
# kache's own release build (issue 21: "kache's own release build warm,
# before and after" build-script caching). Five builds of a copy of this
# checkout in one run, each into an empty target dir:
#   uncached              plain cargo
#   scripts off, cold     kache, KACHE_CACHE_BUILD_SCRIPTS=0, empty store
#   scripts off, warm     the same, after `rm -rf target` (every build script runs)
#   scripts on, cold      kache, the desk default (build scripts traced behind the build),
#                         empty store; then the wait for the twins, shown apart
#   scripts on, warm      the same, after `rm -rf target` (no build script runs)
# Each is printed as a ratio of the uncached build, with the build scripts
# the warm builds ran. The built binary's `--version` must be the same in all.
#
# Usage: bash ci/bench-self.sh [path/to/kache]
# (default: target/release/kache, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
KACHE=${1:-target/release/kache}
if [ ! -x "$KACHE" ]; then
  cargo build --release --locked
fi
KACHE=$(realpath "$KACHE")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$work/src"
mkdir -p "$src"
git archive HEAD | tar -x -C "$src"

secs() { date +%s.%N; }
build() { # name, then env assignments; prints the seconds
  local name=$1
  shift
  local t0
  t0=$(secs)
  (cd "$src" && env "$@" cargo build -q --release --locked 2>"$work/$name.err") || {
    cat "$work/$name.err" >&2
    exit 1
  }
  awk -v a="$t0" -v b="$(secs)" 'BEGIN { printf "%.2f", b - a }'
}
version() { "$1/release/kache" --version; }
. ci/lib-settle.sh # settle STORE: waits for the build's twins
ran() { grep -c '"result":"miss".*"lang":"build-script"' "$1" || true; }

unset RUSTC_WRAPPER CI
t_plain=$(build plain CARGO_TARGET_DIR="$work/plain")
want=$(version "$work/plain")

off=(RUSTC_WRAPPER="$KACHE" KACHE_CACHE_DIR="$work/store-off" CARGO_TARGET_DIR="$work/off" KACHE_CACHE_BUILD_SCRIPTS=0)
t_off_cold=$(build off-cold "${off[@]}")
rm -rf "$work/off"
t_off_warm=$(build off-warm "${off[@]}")
got_off=$(version "$work/off")

on=(RUSTC_WRAPPER="$KACHE" KACHE_CACHE_DIR="$work/store-on" CARGO_TARGET_DIR="$work/on")
t_on_cold=$(build on-cold "${on[@]}")
t0=$(secs)
settle "$work/store-on"
t_behind=$(awk -v a="$t0" -v b="$(secs)" 'BEGIN { printf "%.2f", b - a }')
mv "$work/store-on/events.jsonl" "$work/on-cold.jsonl"
rm -rf "$work/on"
t_on_warm=$(build on-warm "${on[@]}")
got_on=$(version "$work/on")
scripts_on=$(ran "$work/store-on/events.jsonl")
hits_on=$(grep -c '"result":"local_hit".*"lang":"build-script"' "$work/store-on/events.jsonl" || true)

if [ "$got_off" != "$want" ] || [ "$got_on" != "$want" ]; then
  echo "MISMATCH: plain '$want', scripts off '$got_off', scripts on '$got_on'"
  exit 1
fi

ratio() { awk -v a="$1" -v b="$t_plain" 'BEGIN { printf "%.3f", a / b }'; }
echo "| kache's own release build | s | / uncached |"
echo "|---|---:|---:|"
printf '| uncached | %.1f | 1.000 |\n' "$t_plain"
printf '| build scripts not cached, cold | %.1f | %s |\n' "$t_off_cold" "$(ratio "$t_off_cold")"
printf '| build scripts not cached, warm (after rm -rf target) | %.2f | %s |\n' "$t_off_warm" "$(ratio "$t_off_warm")"
printf '| build scripts cached, cold | %.1f | %s |\n' "$t_on_cold" "$(ratio "$t_on_cold")"
printf '| (traced twins still running after it) | %.1f | %s |\n' "$t_behind" "$(ratio "$t_behind")"
printf '| build scripts cached, warm (after rm -rf target) | %.2f | %s |\n' "$t_on_warm" "$(ratio "$t_on_warm")"
echo
echo "warm, build scripts cached: $hits_on build-script hits, $scripts_on build scripts ran"
echo "binary (same in all): $want"
