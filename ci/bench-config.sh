#!/usr/bin/env bash
# What the wrapper pays on every compile to read its settings (run by
# hand; compare two commits on the same machine in one sitting):
#
#   bash ci/bench-config.sh
#
# Loads the wrapper's settings 20000 times, in a release build, from a
# config file that sets every key, and prints the time per load.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/kache-bench-config.XXXXXX)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/config.toml" <<'TOML'
[cache]
local_store = "/var/cache/kache"
local_max_size = "20GiB"
s3_concurrency = 32
cache_executables = true
cache_c = true
daemon_autostart = true
daemon_wait = "500ms"
never_cache = ["sqlx_macros"]

[cache.inputs.my_app]
env = ["DATABASE_URL"]
files = ["migrations"]

[cache.remote]
bucket = "b"
endpoint = "http://127.0.0.1:9000"
region = "eu-west-1"
prefix = "ci"
timeout = "30s"
read_only = false
TOML
KACHE_CONFIG="$dir/config.toml" cargo test --release --locked --quiet --bin kache config::bench:: \
  -- --ignored --nocapture --test-threads=1 2>&1 | grep 'wrapper config load'
