#!/usr/bin/env bash
# The GitHub Action's no-bucket mode on a real project (run by hand):
#
#   bash ci/bench-action.sh PROJECT_DIR
#
# Runs the action's script (ci/github/kache-ci.sh) twice on PROJECT_DIR
# (e.g. a ripgrep checkout) as two CI runs of the default branch would:
# run 1 on an empty store (env, pull, cargo build, finish: the store
# trimmed to what the job used, as it would be saved); run 2 with that
# store and no target/ (as restored from the Actions cache). Against an
# uncached build in the same run, it prints: the size of what the action
# saves (the store, packed as actions/cache packs it: tar, `zstdmt
# --long=30`) over what saving target/ would take, packed the same way,
# for two target/s: cargo's defaults (incremental on for the workspace's
# own crates, what a plain `actions/cache` of target/ saves) and
# CARGO_INCREMENTAL=0 (what rust-cache saves, and the same compiled
# outputs the store holds); and run 2's build time over the uncached
# (CARGO_INCREMENTAL=0) build's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROJECT=$(cd "${1:?usage: bench-action.sh PROJECT_DIR}" && pwd)
WORK=$(mktemp -d /tmp/kache-bench-action.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml"
mkdir -p "$WORK/home/.kache-bin/bin" "$WORK/src"
cp "$ROOT/target/release/kache" "$WORK/home/.kache-bin/bin/kache"
(cd "$PROJECT" && tar --exclude=./target --exclude=./.git -cf - .) | (cd "$WORK/src" && tar -xf -)
cd "$WORK/src"
cargo fetch --quiet
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER KACHE_CACHE_DIR
# The runs below get a HOME of their own: keep the toolchain where it is.
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export CARGO_TARGET_DIR="$WORK/src/target"

now() { date +%s.%N; }
timed() { local t0; t0=$(now); "$@" >"$WORK/log" 2>&1 || { cat "$WORK/log" >&2; exit 1; }; echo "$(now) - $t0" | bc -l; }
packed() { tar -C "$1" -cf - . | zstd -q -T0 --long=30 | wc -c; }

rm -rf target
unset CARGO_INCREMENTAL
timed cargo build --offline --locked >/dev/null
s_target_default=$(packed target)
rm -rf target
export CARGO_INCREMENTAL=0
t_plain=$(timed cargo build --offline --locked)
s_target=$(packed target)

run() {  # one CI run of the action on the default branch
  local gh="$WORK/gh$1"; mkdir -p "$gh"
  echo '{"repository":{"full_name":"o/p","default_branch":"main"}}' > "$gh/event.json"
  export HOME="$WORK/home" GITHUB_ENV="$gh/env" GITHUB_PATH="$gh/path" GITHUB_OUTPUT="$gh/out" \
    GITHUB_STEP_SUMMARY="$gh/summary" GITHUB_EVENT_NAME=push GITHUB_EVENT_PATH="$gh/event.json" \
    GITHUB_REF=refs/heads/main GITHUB_RUN_ID="$1"
  bash "$ROOT/ci/github/kache-ci.sh" env >&2
  set -a; . "$GITHUB_ENV"; set +a
  export PATH="$HOME/.kache-bin/bin:$PATH"
  bash "$ROOT/ci/github/kache-ci.sh" pull >&2
  rm -rf target
  t=$(timed cargo build --offline --locked)
  bash "$ROOT/ci/github/kache-ci.sh" finish >&2
  echo "$t"
}
t1=$(run 1)
store="$WORK/home/.cache/kache"
s_store=$(packed "$store")
t2=$(run 2)

printf '%-44s %10s\n' "uncached build" "${t_plain}s"
printf '%-44s %10s\n' "run 1 (empty store) build" "${t1}s"
printf '%-44s %10s\n' "run 2 (restored store, no target/) build" "${t2}s"
printf '%-44s %10s\n' "target/ packed, cargo defaults" "$s_target_default B"
printf '%-44s %10s\n' "target/ packed, CARGO_INCREMENTAL=0" "$s_target B"
printf '%-44s %10s\n' "store packed (what the action saves)" "$s_store B"
echo "saved size / target size (cargo defaults):       $(echo "scale=3; $s_store / $s_target_default" | bc -l)"
echo "saved size / target size (CARGO_INCREMENTAL=0):  $(echo "scale=3; $s_store / $s_target" | bc -l)"
echo "run 2 / uncached build:                          $(echo "scale=3; $t2 / $t_plain" | bc -l)"
