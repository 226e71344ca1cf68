#!/usr/bin/env bash
# Wrapper benchmark (run by hand, not in CI):
#
#   bash ci/bench-wrapper.sh [PROJECT_DIR]
#
# Builds a real project (default: this repository, ~90 crates from
# crates.io, dev profile) cold, then warm after removing target/, with no
# cache, with sccache and with kache, in one run, and prints a table of
# times and ratios plus kache's median time per hit. sccache is included
# when it is on PATH (`cargo install sccache --locked`). Needs the
# project's crates in the local registry (`cargo fetch` once).
# PROFILE="--release" benchmarks release. It also times the two ways a
# hit can put files in place, on this project's real outputs: a private
# copy (what kache does) against a hard link into the store (what it did
# before, unsafe: a write into target/ then reaches the store).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROJECT=$(cd "${1:-$ROOT}" && pwd)
PROFILE=${PROFILE:-}
TOOLS="none kache"
if command -v sccache >/dev/null; then TOOLS="none sccache kache"; else echo "note: sccache not on PATH; comparing with plain cargo only" >&2; fi

WORK=$(mktemp -d /tmp/kache-bench.XXXXXX)
trap 'sccache --stop-server >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

echo "building kache (release)..." >&2
cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml"
KACHE="$ROOT/target/release/kache"

mkdir -p "$WORK/src"
(cd "$PROJECT" && tar --exclude=./target --exclude=./.git -cf - .) | (cd "$WORK/src" && tar -xf -)
cd "$WORK/src"
cargo fetch --quiet
CRATES=$(cargo tree -e normal,build --prefix none 2>/dev/null | sed 's/ (\*)//' | awk '{print $1"@"$2}' | sort -u | wc -l)

export CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$WORK/target"
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER

now() { date +%s.%N; }
build() {  # build LABEL -> prints seconds
  local t0 t1
  t0=$(now)
  if ! cargo build --offline --quiet $PROFILE >"$WORK/$1.log" 2>&1; then
    echo "error: build $1 failed; see $WORK/$1.log" >&2; cat "$WORK/$1.log" >&2; exit 1
  fi
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

declare -A T
for tool in $TOOLS; do
  rm -rf "$CARGO_TARGET_DIR"
  case $tool in
    none) unset RUSTC_WRAPPER ;;
    sccache)
      export SCCACHE_DIR="$WORK/sccache" RUSTC_WRAPPER=sccache
      sccache --stop-server >/dev/null 2>&1 || true
      sccache --start-server >/dev/null ;;
    kache)
      sccache --stop-server >/dev/null 2>&1 || true
      export KACHE_CACHE_DIR="$WORK/kache" RUSTC_WRAPPER="$KACHE" ;;
  esac
  echo "$tool: cold build..." >&2
  T[$tool,cold]=$(build "$tool-cold")
  rm -rf "$CARGO_TARGET_DIR"
  [ "$tool" = kache ] && mv "$KACHE_CACHE_DIR/events.jsonl" "$WORK/events-cold.jsonl"
  if [ "$tool" = none ]; then T[none,warm]=${T[none,cold]}; continue; fi
  echo "$tool: warm build..." >&2
  T[$tool,warm]=$(build "$tool-warm")
done
# Copy against hard link, on the outputs the warm build restored.
OUTS="$CARGO_TARGET_DIR/${PROFILE:+release}"; OUTS="${OUTS%/}"; [ -n "$PROFILE" ] || OUTS="$CARGO_TARGET_DIR/debug"
OUT_BYTES=$(du -sb "$OUTS/deps" | cut -f1)
sync
t0=$(now); cp -r --reflink=auto "$OUTS/deps" "$WORK/copy"; t1=$(now)
COPY_S=$(echo "$t1 - $t0" | bc -l)
t0=$(now); cp -rl "$OUTS/deps" "$WORK/link"; t1=$(now)
LINK_S=$(echo "$t1 - $t0" | bc -l)
unset RUSTC_WRAPPER

HITS=$(grep -c '"result":"local_hit"' "$KACHE_CACHE_DIR/events.jsonl" || true)
MISSES=$(grep -c '"result":"miss"' "$KACHE_CACHE_DIR/events.jsonl" || true)
MEDIAN=$(grep '"result":"local_hit"' "$KACHE_CACHE_DIR/events.jsonl" | sed 's/.*"ms":\([0-9]*\).*/\1/' | sort -n | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else print a[int((NR+1)/2)]}')
SIZE=$(stat -c %s "$KACHE")
PKGS=$(cd "$ROOT" && cargo tree -e normal --prefix none 2>/dev/null | sed 's/ (\*)//' | awk '{print $1}' | sort -u | wc -l)

r() { echo "scale=3; $1 / $2" | bc -l; }
printf '\nproject: %s (%s crates), profile: %s, %s cores\n\n' "$PROJECT" "$CRATES" "${PROFILE:-dev}" "$(nproc)"
printf '| %-8s | %9s | %9s | %12s | %12s |\n' tool "cold s" "warm s" "cold / none" "warm / none"
printf '|%s|%s|%s|%s|%s|\n' ---------- ----------- ----------- -------------- --------------
for tool in $TOOLS; do
  printf '| %-8s | %9.2f | %9.2f | %12s | %12s |\n' "$tool" "${T[$tool,cold]}" "${T[$tool,warm]}" \
    "$(r "${T[$tool,cold]}" "${T[none,cold]}")" "$(r "${T[$tool,warm]}" "${T[none,cold]}")"
done
if [ -n "${T[sccache,warm]:-}" ]; then
  printf '\nkache warm / sccache warm: %s\n' "$(r "${T[kache,warm]}" "${T[sccache,warm]}")"
fi
printf '\nrestoring the %s MiB in deps/: private copy %.3f s, hard link %.3f s (%s of the kache warm build)\n' \
  "$((OUT_BYTES / 1048576))" "$COPY_S" "$LINK_S" "$(r "$COPY_S" "${T[kache,warm]}")"
printf '\nkache warm build: %s hits, %s misses, median %s ms per hit\n' "$HITS" "$MISSES" "$MEDIAN"
printf 'kache release binary: %s bytes (%.2f MiB, stripped); %s packages in its normal dependency tree\n' \
  "$SIZE" "$(echo "$SIZE / 1048576" | bc -l)" "$PKGS"
if (cd "$ROOT" && cargo tree -e normal --prefix none | grep -Eq '^(tokio|async-std|smol) '); then
  echo "async runtime: FOUND in the normal tree"
else
  echo "async runtime: none in the normal tree"
fi
