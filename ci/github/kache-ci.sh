#!/usr/bin/env bash
# The steps of the kache GitHub Action (ci/github/action.yml and
# ci/github/push/action.yml), as one script that runs anywhere GitHub's
# environment files are set: `key`, `env`, `pull`, `finish`.
#
#   key     the Actions cache key of the kache binary (kache's version, OS,
#           architecture) -> $GITHUB_OUTPUT bin-key
#   env     PATH, RUSTC_WRAPPER, the store and the remote settings ->
#           $GITHUB_PATH, $GITHUB_ENV; mode, read-only, store keys ->
#           $GITHUB_OUTPUT. Read-only on a pull request from a fork and on
#           the events in INPUT_READ_ONLY_EVENTS.
#   pull    bucket mode: kache sync --pull (a failure never fails the job)
#   finish  bucket mode: kache sync --push (read-only: nothing; signed with
#           INPUT_SIGNING_KEY on the default branch only); no-bucket
#           mode: kache gc to what this job used, and whether to save;
#           then kache stats --markdown >> $GITHUB_STEP_SUMMARY
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
step=${1:?usage: kache-ci.sh key|env|pull|finish}

out() { echo "$1=$2" >> "${GITHUB_OUTPUT:-/dev/null}"; }
setenv() { echo "$1=$2" >> "${GITHUB_ENV:-/dev/null}"; export "$1=$2"; }

# A field of the event payload ($GITHUB_EVENT_PATH), dotted; empty if absent.
event_field() {
  [ -n "${GITHUB_EVENT_PATH:-}" ] && [ -f "$GITHUB_EVENT_PATH" ] || return 0
  python3 - "$GITHUB_EVENT_PATH" "$1" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else (str(v).lower() if isinstance(v, bool) else v))
PY
}

# "true" when this job runs on the repository's default branch.
on_default_branch() {
  local default_branch
  default_branch=$(event_field repository.default_branch)
  if [ -n "$default_branch" ] && [ "${GITHUB_REF:-}" = "refs/heads/$default_branch" ]; then
    echo true
  else
    echo false
  fi
}

case "$step" in
key)
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -1)
  out bin-key "kache-bin-$version-${RUNNER_OS:-$(uname -s)}-${RUNNER_ARCH:-$(uname -m)}"
  ;;

env)
  bin_dir="$HOME/.kache-bin/bin"
  echo "$bin_dir" >> "${GITHUB_PATH:-/dev/null}"
  setenv RUSTC_WRAPPER kache
  setenv CARGO_INCREMENTAL 0
  setenv KACHE_CI_START "$(date +%s)"
  store=${KACHE_CACHE_DIR:-$HOME/.cache/kache}
  setenv KACHE_CACHE_DIR "$store"
  out store "$store"

  event=${GITHUB_EVENT_NAME:-}
  read_only=false
  if [ "$event" = pull_request ] || [ "$event" = pull_request_target ]; then
    head_repo=$(event_field pull_request.head.repo.full_name)
    base_repo=$(event_field repository.full_name)
    fork=$(event_field pull_request.head.repo.fork)
    if [ "$fork" = true ] || { [ -n "$head_repo" ] && [ "$head_repo" != "$base_repo" ]; }; then
      read_only=true
    fi
  fi
  IFS=',' read -ra ro_events <<< "${INPUT_READ_ONLY_EVENTS:-}"
  for e in "${ro_events[@]}"; do
    [ "$(echo "$e" | tr -d ' ')" = "$event" ] && [ -n "$event" ] && read_only=true
  done
  out read-only "$read_only"
  [ "$read_only" = true ] && setenv KACHE_REMOTE_READ_ONLY 1

  on_default=$(on_default_branch)

  if [ -n "${INPUT_TRUSTED_KEYS:-}" ]; then
    setenv KACHE_TRUSTED_KEYS "$INPUT_TRUSTED_KEYS"
  fi
  if [ -n "${INPUT_BUCKET:-}" ]; then
    out mode bucket
    setenv KACHE_CI_MODE bucket
    setenv KACHE_S3_BUCKET "$INPUT_BUCKET"
    [ -n "${INPUT_ENDPOINT:-}" ] && setenv KACHE_S3_ENDPOINT "$INPUT_ENDPOINT"
    setenv KACHE_S3_REGION "${INPUT_REGION:-us-east-1}"
    setenv KACHE_S3_PREFIX "${INPUT_PREFIX:-artifacts}"
    if [ -n "${INPUT_ACCESS_KEY_ID:-}" ]; then
      setenv KACHE_S3_ACCESS_KEY "$INPUT_ACCESS_KEY_ID"
      setenv KACHE_S3_SECRET_KEY "${INPUT_SECRET_ACCESS_KEY:-}"
    fi
  else
    out mode actions-cache
    setenv KACHE_CI_MODE actions-cache
    lock_hash=$(cat $(git ls-files '*Cargo.lock' 2>/dev/null || true) /dev/null 2>/dev/null | sha256sum | cut -c1-16)
    base="kache-store-${RUNNER_OS:-$(uname -s)}-${INPUT_CACHE_KEY:-}"
    out store-key "$base-$lock_hash-${GITHUB_RUN_ID:-0}-${GITHUB_RUN_ATTEMPT:-1}"
    out store-restore-keys "$base-$lock_hash-
$base-"
    setenv KACHE_CI_STORE_KEY "$base-$lock_hash-${GITHUB_RUN_ID:-0}-${GITHUB_RUN_ATTEMPT:-1}"
    save=${INPUT_SAVE_IF:-$on_default}
    [ "$read_only" = true ] && save=false
    setenv KACHE_CI_SAVE "$save"
  fi
  ;;

pull)
  if [ "${KACHE_CI_MODE:-}" = bucket ]; then
    kache sync --pull --allow-partial || echo "::warning::kache sync --pull failed; building without the remote"
  else
    kache stats | head -2 || true
  fi
  ;;

finish)
  start=${KACHE_CI_START:-0}
  if [ "${KACHE_CI_MODE:-}" = bucket ]; then
    # The signing key reaches the push alone (never the build, whose
    # build scripts and proc macros run the project's code), and only on
    # the default branch of a job that may write.
    if [ -n "${INPUT_SIGNING_KEY:-}" ] && [ "$(on_default_branch)" = true ] &&
      [ -z "${KACHE_REMOTE_READ_ONLY:-}" ]; then
      KACHE_SIGNING_KEY="$INPUT_SIGNING_KEY" kache sync --push --allow-partial ||
        echo "::warning::kache sync --push failed"
    else
      kache sync --push --allow-partial || echo "::warning::kache sync --push failed"
    fi
  else
    out store "${KACHE_CACHE_DIR:-$HOME/.cache/kache}"
    out store-key "${KACHE_CI_STORE_KEY:-}"
    if [ "${KACHE_CI_SAVE:-false}" = true ]; then
      # Keep only what this job used: the saved cache stays the size of
      # one build's entries, deduplicated.
      age=$(( $(date +%s) - start + 60 ))
      kache gc --max-age "${age}s" || true
      out save true
    else
      out save false
    fi
  fi
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    kache stats --markdown --since "$start" >> "$GITHUB_STEP_SUMMARY" || true
  fi
  ;;

*)
  echo "error: unknown step $step (key, env, pull, finish)" >&2
  exit 2
  ;;
esac
