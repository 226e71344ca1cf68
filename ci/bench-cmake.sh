#!/usr/bin/env bash
# C through CMake: kache against ccache (run by hand, not in CI):
#
#   bash ci/bench-cmake.sh [LIBGIT2_SOURCE_DIR]
#
# Builds libgit2 (default: the copy vendored in the libgit2-sys crate,
# fetched from crates.io; about 220 C files) with CMake and Ninja,
# RelWithDebInfo, in one run: plain, kache cold and warm, ccache cold and
# warm (both as CMAKE_C_COMPILER_LAUNCHER, each with an empty cache of its
# own), then the warm kache store from a second checkout at another path
# (each checkout a git work tree with its build directory inside, as a
# clone is built; no KACHE_BASE_DIR, no CCACHE_BASEDIR).
# Then one header-heavy hit (src/libgit2/repository.c, about 270 headers)
# repeated, under each. Prints seconds and ratios. Needs cmake, ninja and
# ccache (Debian: cmake ninja-build ccache). JOBS sets ninja's -j (default:
# the number of cores).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
JOBS=${JOBS:-$(nproc)}
for t in cmake ninja ccache; do
  command -v "$t" >/dev/null || { echo "error: $t is not on PATH (apt-get install cmake ninja-build ccache)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/kache-bench-cmake.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "building kache (release)..." >&2
cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml"
KACHE="$ROOT/target/release/kache"

SRC=${1:-}
if [ -z "$SRC" ]; then
  echo "fetching libgit2-sys from crates.io..." >&2
  mkdir -p "$WORK/fetch/src"
  cat >"$WORK/fetch/Cargo.toml" <<'EOF'
[package]
name = "fetch"
version = "0.0.0"
edition = "2021"
[dependencies]
libgit2-sys = "0.18"
EOF
  : >"$WORK/fetch/src/lib.rs"
  cargo fetch --quiet --manifest-path "$WORK/fetch/Cargo.toml"
  crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/libgit2-sys-0.18*.crate | tail -1)
  tar -xzf "$crate" -C "$WORK/fetch"
  SRC=$(ls -d "$WORK"/fetch/libgit2-sys-*/libgit2)
fi
# Two checkouts at different paths, each a git work tree.
mkdir -p "$WORK/a" "$WORK/b-elsewhere"
for c in a b-elsewhere; do
  cp -a "$SRC" "$WORK/$c/libgit2"
  git -C "$WORK/$c/libgit2" init -q
done

export KACHE_CACHE_DIR="$WORK/kache-store" CCACHE_DIR="$WORK/ccache"
unset KACHE_DISABLED KACHE_BASE_DIR CCACHE_BASEDIR CARGO_MANIFEST_DIR
now() { date +%s.%N; }
declare -A T
build() {  # build LABEL CHECKOUT LAUNCHER
  local b="$WORK/$2/libgit2/build" la=()
  case $3 in
    kache) la=(-DCMAKE_C_COMPILER_LAUNCHER="$KACHE") ;;
    ccache) la=(-DCMAKE_C_COMPILER_LAUNCHER=ccache) ;;
  esac
  rm -rf "$b"
  cmake -S "$WORK/$2/libgit2" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DUSE_HTTPS=OFF -DUSE_SSH=OFF -DBUILD_TESTS=OFF -DBUILD_CLI=OFF -DBUILD_EXAMPLES=OFF \
    -DREGEX_BACKEND=builtin -DUSE_HTTP_PARSER=builtin -DUSE_BUNDLED_ZLIB=ON \
    ${la[@]+"${la[@]}"} >"$WORK/$1.cfg.log" 2>&1
  local t0 t1
  t0=$(now)
  ninja -C "$b" -j "$JOBS" >"$WORK/$1.log" 2>&1 || { tail -20 "$WORK/$1.log" >&2; exit 1; }
  t1=$(now)
  T[$1]=$(echo "$t1 - $t0" | bc)
  printf '%-16s %8.2f s\n' "$1" "${T[$1]}" >&2
}
build plain a none
build kache-cold a kache
build kache-warm a kache
build ccache-cold a ccache
build ccache-warm a ccache
build kache-2nd b-elsewhere kache

# One header-heavy hit, repeated.
(cd "$WORK/a/libgit2/build" && ninja -t commands) >"$WORK/commands.txt"
CMD=$(grep -m1 'libgit2/repository\.c' "$WORK/commands.txt")
CMD=${CMD#ccache }
hit() {  # hit LAUNCHER -> ms per hit
  local t0 t1 n=50
  (cd "$WORK/a/libgit2/build" && $1 $CMD)
  t0=$(now)
  for _ in $(seq $n); do (cd "$WORK/a/libgit2/build" && $1 $CMD); done
  t1=$(now)
  echo "($t1 - $t0) * 1000 / $n" | bc -l
}
HK=$(hit "$KACHE")
HC=$(hit ccache)

r() { echo "$1 / $2" | bc -l; }
printf '\nlibgit2 through CMake, ninja -j%s\n' "$JOBS"
printf '| build | s | / plain |\n|---|---:|---:|\n'
for k in plain kache-cold kache-warm ccache-cold ccache-warm kache-2nd; do
  printf '| %s | %.2f | %.3f |\n' "$k" "${T[$k]}" "$(r "${T[$k]}" "${T[plain]}")"
done
printf '\nwarm kache / warm ccache: %.2f\n' "$(r "${T[kache-warm]}" "${T[ccache-warm]}")"
printf 'second checkout, warm kache store / plain: %.3f\n' "$(r "${T[kache-2nd]}" "${T[plain]}")"
printf 'one hit of repository.c: kache %.1f ms, ccache %.1f ms (%.2f)\n' "$HK" "$HC" "$(r "$HK" "$HC")"
