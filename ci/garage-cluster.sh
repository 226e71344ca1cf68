#!/usr/bin/env bash
# kache sync against a real distributed engine: a three-node Garage
# cluster on loopback, replication factor 3.
#
#   bash ci/garage-cluster.sh
#
# 1. Runs the S3 test suite (tests/sync.rs) against the cluster.
# 2. Node loss mid-sync: fills a store (the test suite's
#    `fill_store_for_scripts` helper), starts `kache sync --push` through
#    node 0, kills node 2 (kill -9) while it runs. The push must finish
#    (exit 0), or fail with a clear summary and finish on a re-run with
#    the node still down. Then every entry is pulled back into an empty
#    cache (through node 1) and checked with `kache gc --verify`; node 2
#    is restarted and a pull through it also gets everything.
#
# Installs Garage first when it is missing (see ci/lib-garage.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/ci/lib-garage.sh"

WORK=$(mktemp -d /tmp/kache-garage-cluster.XXXXXX)
cleanup() {
  garage_stop
  rm -rf "$WORK"
}
trap cleanup EXIT

garage_install
garage_start "$WORK" 3
read -r -a PIDS <<<"$GARAGE_PIDS"
echo "garage: 3 nodes (pids ${PIDS[*]}), replication 3, bucket $GARAGE_BUCKET" >&2

cd "$ROOT"
export KACHE_TEST_S3_ENDPOINT=$GARAGE_ENDPOINT KACHE_TEST_S3_BUCKET=$GARAGE_BUCKET
export KACHE_TEST_S3_ACCESS_KEY=$GARAGE_KEY_ID KACHE_TEST_S3_SECRET_KEY=$GARAGE_SECRET
export KACHE_TEST_S3_REGION=$GARAGE_REGION

echo "== S3 suite against the 3-node cluster" >&2
cargo test --locked --test tests sync:: -- --test-threads=2

echo "== node loss during kache sync --push" >&2
cargo build --locked --quiet
KACHE=$ROOT/target/debug/kache
STORE=$WORK/store
KACHE_FILL_DIR=$STORE KACHE_FILL_ENTRIES=${ENTRIES:-200} KACHE_FILL_SIZE=${SIZE:-262144} \
  cargo test --locked --quiet --test tests sync::reliability::fill_store_for_scripts -- --ignored --exact --nocapture

# kache's own settings; one prefix per run.
export KACHE_S3_BUCKET=$GARAGE_BUCKET KACHE_S3_REGION=$GARAGE_REGION
export KACHE_S3_ACCESS_KEY=$GARAGE_KEY_ID KACHE_S3_SECRET_KEY=$GARAGE_SECRET
export KACHE_S3_PREFIX="cluster-$$" KACHE_S3_TIMEOUT=5s KACHE_PROGRESS=0
export KACHE_CONFIG=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
node_url() { echo "http://127.0.0.1:39${1}0"; }
entries_in() { find "$1/entries" -name '*.json' | wc -l; }
want=$(entries_in "$STORE")

LOG=$WORK/push.log
KACHE_CACHE_DIR=$STORE KACHE_S3_ENDPOINT=$(node_url 0) KACHE_S3_CONCURRENCY=4 \
  "$KACHE" sync --push >"$LOG" 2>&1 &
push=$!
sleep "${KILL_AFTER:-1}"
if kill -0 "$push" 2>/dev/null; then
  echo "killing node 2 (pid ${PIDS[2]}) mid-push" >&2
else
  echo "warning: the push finished before the node was killed; use more ENTRIES or SIZE" >&2
fi
kill -9 "${PIDS[2]}"
wait "${PIDS[2]}" 2>/dev/null || true
set +e
wait "$push"
rc=$?
set -e
cat "$LOG"
if [ "$rc" -ne 0 ]; then
  grep -q '^failed' "$LOG" || { echo "error: the failed push printed no summary" >&2; exit 1; }
  echo "push exited $rc with node 2 down; re-running" >&2
  KACHE_CACHE_DIR=$STORE KACHE_S3_ENDPOINT=$(node_url 0) "$KACHE" sync --push
fi
# Node 2 stays out of GARAGE_PIDS until it is restarted.
GARAGE_PIDS="${PIDS[0]} ${PIDS[1]}"

verify_pull() {  # NAME NODE
  local cache=$WORK/$1
  KACHE_CACHE_DIR=$cache KACHE_S3_ENDPOINT=$(node_url "$2") "$KACHE" sync --pull --all
  local got
  got=$(entries_in "$cache")
  [ "$got" -eq "$want" ] || { echo "error: pulled $got of $want entries through node $2" >&2; exit 1; }
  KACHE_CACHE_DIR=$cache "$KACHE" gc --verify --json | tee "$WORK/$1.gc.json"
  grep -q '"corrupt_blobs": 0' "$WORK/$1.gc.json"
  grep -q '"entries_removed": 0' "$WORK/$1.gc.json"
}
echo "== pull back through node 1, node 2 still down" >&2
verify_pull pulled-degraded 1

echo "== restart node 2, pull through it" >&2
garage -c "$WORK/n2.toml" server >>"$WORK/n2.log" 2>&1 &
GARAGE_PIDS="$GARAGE_PIDS $!"
garage_wait_port 3921
garage_wait_port 3920
# Give the node a moment to rejoin before reading through it.
for _ in $(seq 1 50); do
  KACHE_CACHE_DIR=$WORK/probe KACHE_S3_ENDPOINT=$(node_url 2) "$KACHE" sync --pull --all --dry-run >/dev/null 2>&1 && break
  sleep 0.2
done
verify_pull pulled-restarted 2
echo "garage-cluster: suite and node-loss scenario passed ($want entries)" >&2
