#!/usr/bin/env bash
# The edit loop on a developer's desk (run by hand, not in CI):
#
#   bash ci/bench-desk.sh [PROJECT_DIR [FILE]]
#
# Cargo's default dev profile (incremental on for workspace crates), as a
# developer runs it. A one-line code edit in FILE (default: ripgrep's
# crates/core/main.rs, relative to PROJECT_DIR), then `cargo build`,
# `cargo check` and `cargo test --no-run`, each after seven edits, timed
# under plain cargo and under kache in one run (one source tree, two target
# dirs, plain and kache taking turns to go first, a one-second pause after
# each build as between two saves: kache's background store of the
# edited crate, about 0.2 s, ends there and never runs into the next
# timing). Prints the medians and
# their ratios, then a rebuild after `rm -rf target` under kache against
# the uncached build. Then the size limit: a dev and a release build
# into a store whose KACHE_MAX_SIZE is 1.25x the larger of the two (well
# under both together), the store's blob bytes after each build against
# the limit, and a release rebuild after `rm -rf target` (the most
# recently used build: it should restore). KACHE=path picks the binary (default: this
# repository's release build, built first). Needs the project's crates in
# the local registry (`cargo fetch` once).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROJECT=$(cd "${1:-/work/rg}" && pwd)
FILE=${2:-crates/core/main.rs}
if [ -z "${KACHE:-}" ]; then
  echo "building kache (release)..." >&2
  cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml"
  KACHE="$ROOT/target/release/kache"
fi

WORK=$(mktemp -d /tmp/kache-desk.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src"
(cd "$PROJECT" && tar --exclude=./target --exclude=./.git -cf - .) | (cd "$WORK/src" && tar -xf -)
cd "$WORK/src"
cargo fetch --quiet
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CARGO_INCREMENTAL CARGO_BUILD_INCREMENTAL
export KACHE_CACHE_DIR="$WORK/store"

now() { date +%s.%N; }
run() {  # run TOOL CMD... -> prints seconds
  local tool=$1 t0 t1; shift
  local target="$WORK/target-$tool"
  t0=$(now)
  if [ "$tool" = kache ]; then
    RUSTC_WRAPPER="$KACHE" CARGO_TARGET_DIR="$target" cargo "$@" --offline --quiet >"$WORK/last.log" 2>&1 || { cat "$WORK/last.log" >&2; exit 1; }
  else
    CARGO_TARGET_DIR="$target" cargo "$@" --offline --quiet >"$WORK/last.log" 2>&1 || { cat "$WORK/last.log" >&2; exit 1; }
  fi
  t1=$(now)
  sleep 1
  echo "$t1 - $t0" | bc -l
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
r() { echo "scale=3; $1 / $2" | bc -l; }
N=0
edit() { N=$((N + 1)); printf '\n#[allow(dead_code)]\nfn kache_desk_edit_%d() -> u64 { %d }\n' "$N" "$N" >>"$FILE"; }

echo "priming: plain and kache builds of everything..." >&2
for cmd in build check "test --no-run"; do
  # shellcheck disable=SC2086
  run none $cmd >/dev/null
  # shellcheck disable=SC2086
  run kache $cmd >/dev/null
done

declare -A T
for cmd in build check "test --no-run"; do
  P=() K=()
  for i in 1 2 3 4 5 6 7; do
    edit
    if [ $((i % 2)) = 1 ]; then
      # shellcheck disable=SC2086
      P+=("$(run none $cmd)"); K+=("$(run kache $cmd)")
    else
      # shellcheck disable=SC2086
      K+=("$(run kache $cmd)"); P+=("$(run none $cmd)")
    fi
  done
  T[$cmd,none]=$(median "${P[@]}")
  T[$cmd,kache]=$(median "${K[@]}")
  echo "$cmd: plain ${P[*]}; kache ${K[*]}" >&2
done

echo "clean rebuild..." >&2
rm -rf "$WORK/target-none" "$WORK/target-kache"
COLD=$(run none build)
WARM=$(run kache build)
HITS=$(grep -c '"result":"local_hit"' "$KACHE_CACHE_DIR/events.jsonl" || true)
SIZE=$(du -sm "$KACHE_CACHE_DIR" | cut -f1)

printf '\nproject: %s, edits in %s, dev profile (incremental on), %s cores, medians of 7\n\n' "$PROJECT" "$FILE" "$(nproc)"
printf '| %-16s | %8s | %8s | %6s |\n' "after an edit" "plain s" "kache s" ratio
printf '|%s|%s|%s|%s|\n' ------------------ ---------- ---------- --------
for cmd in build check "test --no-run"; do
  printf '| %-16s | %8.2f | %8.2f | %6s |\n' "cargo $cmd" "${T[$cmd,none]}" "${T[$cmd,kache]}" \
    "$(r "${T[$cmd,kache]}" "${T[$cmd,none]}")"
done
printf '\nafter rm -rf target: uncached %.2f s, kache %.2f s (%s of uncached)\n' "$COLD" "$WARM" "$(r "$WARM" "$COLD")"
printf 'store: %s MiB, %s local hits in all\n' "$SIZE" "$HITS"

echo "size limit: measuring a dev and a release build..." >&2
blobs() { du -sb --apparent-size "$1/blobs" | cut -f1; }
export KACHE_CACHE_DIR="$WORK/store-size"
rm -rf "$WORK/target-kache"
run kache build >/dev/null
DEV=$(blobs "$KACHE_CACHE_DIR")
run kache build --release >/dev/null
REL=$(( $(blobs "$KACHE_CACHE_DIR") - DEV ))
LIMIT=$(( (DEV > REL ? DEV : REL) * 5 / 4 ))
export KACHE_CACHE_DIR="$WORK/store-limited" KACHE_MAX_SIZE=$LIMIT
rm -rf "$WORK/target-kache"
run kache build >/dev/null
AFTER_DEV=$(blobs "$KACHE_CACHE_DIR")
run kache build --release >/dev/null
AFTER_REL=$(blobs "$KACHE_CACHE_DIR")
EVICTED=$("$KACHE" stats | grep "^evicted:" || echo "evicted: nothing")
rm -rf "$WORK/target-kache" "$KACHE_CACHE_DIR/events.jsonl"
run kache build --release >/dev/null
RHITS=$(grep -c '"result":"local_hit"' "$KACHE_CACHE_DIR/events.jsonl" || true)
RMISS=$(grep -c '"result":"miss"' "$KACHE_CACHE_DIR/events.jsonl" || true)
printf '\nsize limit: dev build stores %s MiB, release %s MiB; KACHE_MAX_SIZE %s MiB\n' \
  "$((DEV >> 20))" "$((REL >> 20))" "$((LIMIT >> 20))"
printf 'store after the dev build: %s of the limit; after the release build: %s\n' \
  "$(r "$AFTER_DEV" "$LIMIT")" "$(r "$AFTER_REL" "$LIMIT")"
printf 'release rebuild after rm -rf target: %s hits, %s misses\n' "$RHITS" "$RMISS"
echo "$EVICTED"
