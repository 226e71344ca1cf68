#!/usr/bin/env bash
# C/C++ caching benchmark (run by hand, not in CI):
#
#   bash ci/bench-cc.sh [PROJECT_DIR]
#
# Builds a real project with C dependencies (default: this repository,
# whose ring and zstd-sys compile about 50 C and assembler files through
# the cc crate; release profile) in one run: uncached, kache cold, kache
# warm after `rm -rf target`, and sccache cold and warm when sccache is on
# PATH (`cargo install sccache --locked`). Every build runs with `cc`,
# `c++`, `gcc` and `g++` on PATH replaced by scripts that log each real
# compile (`-c`; the cc crate's own `flag_check.c` probes, which never go
# through a wrapper, are left out), so the table shows how many times the
# real compiler ran in each build. Also prints kache's median time per C
# hit, from its event log. PROFILE="" benchmarks the dev profile. Needs
# the project's crates in the local registry (`cargo fetch` once).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROJECT=$(cd "${1:-$ROOT}" && pwd)
PROFILE=${PROFILE---release}
TOOLS="none kache"
if command -v sccache >/dev/null; then TOOLS="none kache sccache"; else echo "note: sccache not on PATH; comparing with plain cargo only" >&2; fi

WORK=$(mktemp -d /tmp/kache-bench-cc.XXXXXX)
trap 'sccache --stop-server >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

echo "building kache (release)..." >&2
cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml"
KACHE="$ROOT/target/release/kache"

# Compilers that log every real compile.
mkdir -p "$WORK/bin"
for c in cc c++ gcc g++; do
  real=$(command -v "$c") || continue
  cat >"$WORK/bin/$c" <<EOF
#!/bin/sh
case " \$* " in *flag_check*) ;; *" -c "*) echo x >> "$WORK/compiles.log" ;; esac
exec "$real" "\$@"
EOF
  chmod 755 "$WORK/bin/$c"
done
export PATH="$WORK/bin:$PATH"
: >"$WORK/compiles.log"
compiles() { wc -l <"$WORK/compiles.log"; }

mkdir -p "$WORK/src"
(cd "$PROJECT" && tar --exclude=./target --exclude=./.git -cf - .) | (cd "$WORK/src" && tar -xf -)
cd "$WORK/src"
cargo fetch --quiet || true

export CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$WORK/target"
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CC CXX

now() { date +%s.%N; }
declare -A T N
build() {  # build LABEL: times one build into T[LABEL], counts compiles into N[LABEL]
  local t0 t1 n0
  n0=$(compiles)
  t0=$(now)
  if ! cargo build --offline --quiet $PROFILE >"$WORK/$1.log" 2>&1; then
    echo "error: build $1 failed; see $WORK/$1.log" >&2; cat "$WORK/$1.log" >&2; exit 1
  fi
  t1=$(now)
  T[$1]=$(echo "$t1 - $t0" | bc -l)
  N[$1]=$(( $(compiles) - n0 ))
}

for tool in $TOOLS; do
  rm -rf "$CARGO_TARGET_DIR"
  case $tool in
    none) unset RUSTC_WRAPPER ;;
    kache) export KACHE_CACHE_DIR="$WORK/kache" RUSTC_WRAPPER="$KACHE" ;;
    sccache)
      export SCCACHE_DIR="$WORK/sccache" RUSTC_WRAPPER=sccache
      sccache --stop-server >/dev/null 2>&1 || true
      sccache --start-server >/dev/null ;;
  esac
  echo "$tool: cold build..." >&2
  build "$tool-cold"
  [ "$tool" = kache ] && mv "$KACHE_CACHE_DIR/events.jsonl" "$WORK/events-cold.jsonl"
  if [ "$tool" = none ]; then continue; fi
  rm -rf "$CARGO_TARGET_DIR"
  echo "$tool: warm build..." >&2
  build "$tool-warm"
done
unset RUSTC_WRAPPER

EV="$WORK/kache/events.jsonl"
C_HITS=$(grep '"lang":"c"' "$EV" | grep -c '"result":"local_hit"' || true)
C_MISSES=$(grep '"lang":"c"' "$EV" | grep -c '"result":"miss"' || true)
C_PASS=$(grep '"lang":"c"' "$EV" | grep '"result":"passthrough"' | grep -vc '"crate":""' || true)
C_MEDIAN=$(grep '"lang":"c"' "$EV" | grep '"result":"local_hit"' | sed 's/.*"ms":\([0-9]*\).*/\1/' | sort -n | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else print a[int((NR+1)/2)]}')
RUST_HITS=$(grep -v '"lang":"c"' "$EV" | grep -c '"result":"local_hit"' || true)

r() { echo "scale=3; $1 / $2" | bc -l; }
printf '\nproject: %s, profile: %s, %s cores\n\n' "$PROJECT" "${PROFILE:-dev}" "$(nproc)"
printf '| %-13s | %8s | %10s | %15s |\n' build "s" "/ uncached" "real C compiles"
printf '|%s|%s|%s|%s|\n' --------------- ---------- ------------ -----------------
row() { printf '| %-13s | %8.2f | %10s | %15s |\n' "$1" "${T[$2]}" "$(r "${T[$2]}" "${T[none-cold]}")" "${N[$2]}"; }
row uncached none-cold
row "kache cold" kache-cold
row "kache warm" kache-warm
if [ -n "${T[sccache-warm]:-}" ]; then
  row "sccache cold" sccache-cold
  row "sccache warm" sccache-warm
  printf '\nkache warm / sccache warm: %s\n' "$(r "${T[kache-warm]}" "${T[sccache-warm]}")"
fi
printf '\nkache warm build: %s C hits, %s C misses, %s C compiles passed through; median %s ms per C hit; %s Rust hits\n' \
  "$C_HITS" "$C_MISSES" "$C_PASS" "$C_MEDIAN" "$RUST_HITS"
