#!/usr/bin/env bash
# Sync benchmark (run by hand, not in CI):
#
#   bash ci/bench-sync.sh [PROJECT_DIR]
#
# Against a one-node Garage on loopback (installed from crates.io when
# missing), on a store filled by a real build of PROJECT_DIR (default: this
# repository, ~90 crates), in one run:
#   - kache sync --push / --pull   vs   rclone copy of the cache dir (16
#     transfers) and aws s3 sync (both up and down), with wall time, peak
#     memory (/usr/bin/time -v) and S3 requests (Garage's metrics);
#   - planning at scale: a bucket of 10,000 entries over 500 crates,
#     kache sync --dry-run --all;
#   - trust: a signed push (KACHE_SIGNING_KEY_FILE) against an unsigned
#     one and a verifying pull (KACHE_TRUSTED_KEYS) against a plain one,
#     alternated over TRUST_ROUNDS (default 3) rounds on fresh prefixes,
#     medians compared. TRUST_ONLY=1 runs only this part (no rclone, aws
#     or planning).
# Needs rclone, awscli, time and bc (Debian packages).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROJECT=$(cd "${1:-$ROOT}" && pwd)
. "$ROOT/ci/lib-garage.sh"
for t in rclone aws bc; do command -v $t >/dev/null || { echo "error: $t missing (apt-get install rclone awscli bc)" >&2; exit 1; }; done
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }

# A CA bundle from the environment breaks rclone on plain http endpoints.
unset AWS_CA_BUNDLE
WORK=$(mktemp -d /tmp/kache-syncbench.XXXXXX)
trap 'garage_stop; rm -rf "$WORK"' EXIT
garage_install
cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml"
KACHE="$ROOT/target/release/kache"

echo "filling a store with a real build of $PROJECT..." >&2
mkdir -p "$WORK/src"
(cd "$PROJECT" && tar --exclude=./target --exclude=./.git -cf - .) | (cd "$WORK/src" && tar -xf -)
(cd "$WORK/src" && CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$WORK/target" RUSTC_WRAPPER="$KACHE" \
  KACHE_CACHE_DIR="$WORK/store" cargo build --offline --quiet)
rm -rf "$WORK/target"
ENTRIES=$(find "$WORK/store/entries" -name '*.json' | wc -l)
BYTES=$(du -sb "$WORK/store/blobs" | cut -f1)

garage_start "$WORK/garage" 1
export KACHE_S3_ENDPOINT=$GARAGE_ENDPOINT KACHE_S3_BUCKET=$GARAGE_BUCKET KACHE_S3_REGION=$GARAGE_REGION
export KACHE_S3_ACCESS_KEY=$GARAGE_KEY_ID KACHE_S3_SECRET_KEY=$GARAGE_SECRET KACHE_PROGRESS=0
export AWS_ACCESS_KEY_ID=$GARAGE_KEY_ID AWS_SECRET_ACCESS_KEY=$GARAGE_SECRET AWS_DEFAULT_REGION=$GARAGE_REGION
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT=$GARAGE_ENDPOINT \
  RCLONE_CONFIG_G_ACCESS_KEY_ID=$GARAGE_KEY_ID RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$GARAGE_SECRET \
  RCLONE_CONFIG_G_REGION=$GARAGE_REGION RCLONE_CONFIG_G_FORCE_PATH_STYLE=true

requests() {  # total S3 API requests Garage has served
  curl -s http://127.0.0.1:3903/metrics 2>/dev/null |
    awk '/^api_s3_request_counter/ {s += $NF} END {print s + 0}'
}

declare -A WALL MEM REQ
measure() {  # LABEL CMD...
  local label=$1; shift
  local r0 r1
  r0=$(requests)
  /usr/bin/time -v -o "$WORK/$label.time" "$@" >"$WORK/$label.log" 2>&1 || {
    echo "error: $label failed:" >&2; cat "$WORK/$label.log" >&2; exit 1; }
  r1=$(requests)
  WALL[$label]=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, a, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + a[i]; print s}' "$WORK/$label.time")
  MEM[$label]=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2 / 1024}' "$WORK/$label.time")
  REQ[$label]=$((r1 - r0))
}

TRUST_ROUNDS=${TRUST_ROUNDS:-3}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
trust() {
  echo "trust: signed vs unsigned push, verifying vs plain pull ($TRUST_ROUNDS rounds)..." >&2
  "$KACHE" key generate bench --out "$WORK/bench.key" >"$WORK/bench.pub"
  for i in $(seq 1 "$TRUST_ROUNDS"); do
    measure "push-unsigned-$i" env KACHE_CACHE_DIR="$WORK/store" KACHE_S3_PREFIX="unsigned-$i" "$KACHE" sync --push
    measure "push-signed-$i" env KACHE_CACHE_DIR="$WORK/store" KACHE_S3_PREFIX="signed-$i" \
      KACHE_SIGNING_KEY_FILE="$WORK/bench.key" "$KACHE" sync --push
    measure "pull-plain-$i" env KACHE_CACHE_DIR="$WORK/plain-$i" KACHE_S3_PREFIX="signed-$i" "$KACHE" sync --pull --all
    measure "pull-verified-$i" env KACHE_CACHE_DIR="$WORK/verified-$i" KACHE_S3_PREFIX="signed-$i" \
      KACHE_TRUSTED_KEYS="$(cat "$WORK/bench.pub")" "$KACHE" sync --pull --all
    n=$(find "$WORK/verified-$i/entries" -name '*.json' | wc -l)
    [ "$n" -eq "$ENTRIES" ] || { echo "error: the verifying pull imported $n of $ENTRIES entries" >&2; exit 1; }
  done
  for k in push-unsigned push-signed pull-plain pull-verified; do
    local times=()
    for i in $(seq 1 "$TRUST_ROUNDS"); do times+=("${WALL[$k-$i]}"); done
    eval "M_${k//-/_}=$(median "${times[@]}")"
  done
  printf 'trust (median of %s): push %s s unsigned, %s s signed (%s); pull %s s plain, %s s verifying (%s)\n' \
    "$TRUST_ROUNDS" "$M_push_unsigned" "$M_push_signed" "$(r "$M_push_signed" "$M_push_unsigned")" \
    "$M_pull_plain" "$M_pull_verified" "$(r "$M_pull_verified" "$M_pull_plain")"
}
r() { echo "scale=2; $1 / $2" | bc -l; }
if [ "${TRUST_ONLY:-}" = 1 ]; then
  printf '%s entries (%s MiB of blobs) from a build of %s; Garage 1 node on loopback; %s cores\n' \
    "$ENTRIES" "$((BYTES / 1048576))" "$PROJECT" "$(nproc)"
  trust
  exit 0
fi

echo "push and pull: $ENTRIES entries, $BYTES bytes of blobs" >&2
measure kache-push env KACHE_CACHE_DIR="$WORK/store" KACHE_S3_PREFIX=kache "$KACHE" sync --push
measure kache-pull env KACHE_CACHE_DIR="$WORK/pulled" KACHE_S3_PREFIX=kache "$KACHE" sync --pull --all
measure rclone-push rclone copy "$WORK/store" "g:$GARAGE_BUCKET/rclone" --transfers 16 --checkers 16
measure rclone-pull rclone copy "g:$GARAGE_BUCKET/rclone" "$WORK/rclone-pulled" --transfers 16 --checkers 16
measure aws-push aws --endpoint-url "$GARAGE_ENDPOINT" s3 sync --only-show-errors "$WORK/store" "s3://$GARAGE_BUCKET/aws"
measure aws-pull aws --endpoint-url "$GARAGE_ENDPOINT" s3 sync --only-show-errors "s3://$GARAGE_BUCKET/aws" "$WORK/aws-pulled"
PULLED=$(find "$WORK/pulled/entries" -name '*.json' | wc -l)

echo "planning at scale: writing 10,000 entries over 500 crates..." >&2
mkdir -p "$WORK/fake"
for c in $(seq 1 500); do
  d="$WORK/fake/crate_$c"; mkdir -p "$d"
  for k in $(seq 1 20); do
    printf 'x' > "$d/$(printf '%s-%s' "$c" "$k" | sha256sum | cut -c1-64).tar.zst"
  done
done
rclone copy "$WORK/fake" "g:$GARAGE_BUCKET/scale" --transfers 32 --checkers 32 >/dev/null 2>&1
measure kache-plan env KACHE_CACHE_DIR="$WORK/empty" KACHE_S3_PREFIX=scale "$KACHE" sync --pull --all --dry-run
PLANNED=$(grep -c '^pull' "$WORK/kache-plan.log" || true)

printf '\n%s entries (%s MiB of blobs) from a build of %s; Garage 1 node on loopback; %s cores\n\n' \
  "$ENTRIES" "$((BYTES / 1048576))" "$PROJECT" "$(nproc)"
printf '| %-12s | %8s | %10s | %9s | %13s |\n' run "wall s" "peak MiB" requests "time / rclone"
printf '|%s|%s|%s|%s|%s|\n' -------------- ---------- ------------ ----------- ---------------
for dir in push pull; do
  for tool in kache rclone aws; do
    l=$tool-$dir
    printf '| %-12s | %8s | %10s | %9s | %13s |\n' "$l" "${WALL[$l]}" "${MEM[$l]}" "${REQ[$l]}" "$(r "${WALL[$l]}" "${WALL[rclone-$dir]}")"
  done
done
printf '\nkache pull imported %s of %s entries\n' "$PULLED" "$ENTRIES"
trust
printf 'planning: kache sync --pull --all --dry-run over 10,000 entries / 500 crates: %s s, %s MiB peak, %s requests, %s entries planned\n' \
  "${WALL[kache-plan]}" "${MEM[kache-plan]}" "${REQ[kache-plan]}" "$PLANNED"
