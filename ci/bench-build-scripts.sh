#!/usr/bin/env bash
# Build-script caching on an app with -sys dependencies (issue 21):
# tikv-jemalloc-sys (jemalloc's `configure` and `make`) and zstd-sys (the
# cc crate). Three builds in one run, dev profile:
#   uncached          plain cargo, empty target dir
#   kache cold        kache with KACHE_TRACE_BEHIND=1 (the default on a desk), empty store, empty target dir (then the wait
#                     for the misses' traced twins to record, shown apart)
#   kache warm        kache, same store, after `rm -rf target`
#   kache inline      kache cold again, KACHE_TRACE_BEHIND=0 (no twin, the default under CI)
# and prints each as a ratio of the uncached build, with how many build
# scripts ran and how many real compiler runs (Rust and C misses) the
# warm build made. The program's output must be the same in all three.
#
# Usage: bash ci/bench-build-scripts.sh [path/to/kache]
# (default: target/release/kache, built if missing). Needs crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
KACHE=${1:-target/release/kache}
if [ ! -x "$KACHE" ]; then
  cargo build --release --locked
fi
KACHE=$(realpath "$KACHE")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
app="$work/app"
mkdir -p "$app/src"
cat >"$app/Cargo.toml" <<'EOF'
[package]
name = "bsbench"
version = "0.1.0"
edition = "2021"

[dependencies]
tikv-jemallocator = "0.6"
zstd = "0.13"
EOF
cat >"$app/src/main.rs" <<'EOF'
#[global_allocator]
static A: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let data = vec![7u8; 1 << 16];
    let z = zstd::encode_all(&data[..], 3).unwrap();
    let back = zstd::decode_all(&z[..]).unwrap();
    println!("zstd {} -> {} -> {}", data.len(), z.len(), back.len());
}
EOF
(cd "$app" && cargo generate-lockfile -q && cargo fetch -q)

secs() { date +%s.%N; }
build() { # name, then env assignments
  local name=$1
  shift
  local t0 t1
  t0=$(secs)
  (cd "$app" && env "$@" cargo build -q 2>"$work/$name.err") || {
    cat "$work/$name.err"
    exit 1
  }
  t1=$(secs)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}
run() { (cd "$app" && env "$@" cargo run -q 2>/dev/null); }

unset RUSTC_WRAPPER
t_plain=$(build plain CARGO_TARGET_DIR="$work/plain")
want=$(run CARGO_TARGET_DIR="$work/plain")
k=(RUSTC_WRAPPER="$KACHE" KACHE_CACHE_DIR="$work/store" CARGO_TARGET_DIR="$work/kt" KACHE_TRACE_BEHIND=1)
t_cold=$(build cold "${k[@]}")
# A miss's traced twin (cache.trace_behind) records after the build: wait
# for it as `kache sync --push` does.
. ci/lib-settle.sh
t0=$(secs)
settle "$work/store"
t_behind=$(awk -v a="$t0" -v b="$(secs)" 'BEGIN { printf "%.2f", b - a }')
mv "$work/store/events.jsonl" "$work/cold.jsonl"
rm -rf "$work/kt"
t_warm=$(build warm "${k[@]}")
cp "$work/store/events.jsonl" "$work/warm.jsonl"
got=$(run "${k[@]}")
# The same cold build with the trace in the build's own run
# (trace_behind = false, the default where CI is set).
ki=(RUSTC_WRAPPER="$KACHE" KACHE_CACHE_DIR="$work/store-inline" CARGO_TARGET_DIR="$work/ki" KACHE_TRACE_BEHIND=0)
t_inline=$(build inline "${ki[@]}")
settle "$work/store-inline"
if [ "$got" != "$want" ]; then
  echo "MISMATCH: kache's program printed '$got', plain cargo's '$want'"
  exit 1
fi

count() { # file, jq-like grep patterns
  local f=$1
  shift
  local n
  n=$(grep -c -- "$(printf '%s.*' "$@")" "$f" || true)
  echo "${n:-0}"
}
scripts_ran=$(count "$work/warm.jsonl" '"result":"miss"' '"lang":"build-script"')
script_hits=$(count "$work/warm.jsonl" '"result":"local_hit"' '"lang":"build-script"')
misses=$(count "$work/warm.jsonl" '"result":"miss"')
c_misses=$(count "$work/warm.jsonl" '"result":"miss"' '"lang":"c"')
cold_scripts=$(count "$work/cold.jsonl" '"result":"miss"' '"lang":"build-script"')

ratio() { awk -v a="$1" -v b="$t_plain" 'BEGIN { printf "%.3f", a / b }'; }
echo "| build | s | / uncached |"
echo "|---|---:|---:|"
printf '| uncached | %.1f | 1.000 |\n' "$t_plain"
printf '| kache cold (trace_behind = true, the default on a desk) | %.1f | %s |\n' "$t_cold" "$(ratio "$t_cold")"
printf '| (traced twins still running after it) | %.1f | %s |\n' "$t_behind" "$(ratio "$t_behind")"
printf '| kache warm (after rm -rf target) | %.2f | %s |\n' "$t_warm" "$(ratio "$t_warm")"
printf '| kache cold, traced inline (trace_behind = false, the default under CI) | %.1f | %s |\n' "$t_inline" "$(ratio "$t_inline")"
echo
echo "cold: $cold_scripts build-script runs recorded"
echo "warm: $script_hits build-script hits, $scripts_ran build scripts ran, $((misses - scripts_ran)) real compiler runs ($c_misses C)"
echo "program output (same in all three): $want"
