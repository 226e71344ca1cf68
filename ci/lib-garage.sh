# Garage on loopback, for ci/ scripts. Source it, then:
#   garage_install                 builds Garage from crates.io if missing (~13 min)
#   garage_start DIR NODES         starts NODES (1 or 3) nodes under DIR, with
#                                  replication factor NODES, creates a bucket
#                                  and a key, and exports GARAGE_ENDPOINT,
#                                  GARAGE_BUCKET, GARAGE_KEY_ID, GARAGE_SECRET,
#                                  GARAGE_REGION, GARAGE_PIDS (node pids, in order)
#   garage_stop                    stops every node started here
# GARAGE_NICE=19 runs the nodes at that nice value (benchmarks: a server
# that stands in for a remote one should not take the build's CPU).
# Ports: node i (0-based) uses 39i0 (S3), 39i1 (RPC), 39i3 (admin).

GARAGE_VERSION=2.5.0

garage_install() {
  if command -v garage >/dev/null 2>&1; then return 0; fi
  echo "installing garage $GARAGE_VERSION from crates.io (takes a while)..." >&2
  cargo install "garage@$GARAGE_VERSION" --locked --quiet
}

garage_node_conf() {  # DIR I NODES SECRET
  local dir=$1 i=$2 n=$3 secret=$4
  mkdir -p "$dir/n$i/meta" "$dir/n$i/data"
  cat > "$dir/n$i.toml" <<CONF
metadata_dir = "$dir/n$i/meta"
data_dir = "$dir/n$i/data"
db_engine = "sqlite"
replication_factor = $n
rpc_bind_addr = "127.0.0.1:39${i}1"
rpc_public_addr = "127.0.0.1:39${i}1"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:39${i}0"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:39${i}3"
CONF
}

garage_wait_port() {  # PORT
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: garage did not open port $1" >&2
  return 1
}

garage_start() {  # DIR NODES
  local dir=$1 n=$2 secret i id ids=()
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  GARAGE_PIDS=""
  GARAGE_DIR=$dir
  for ((i = 0; i < n; i++)); do
    garage_node_conf "$dir" "$i" "$n" "$secret"
    ${GARAGE_NICE:+nice -n "$GARAGE_NICE"} garage -c "$dir/n$i.toml" server >"$dir/n$i.log" 2>&1 &
    GARAGE_PIDS="$GARAGE_PIDS $!"
  done
  for ((i = 0; i < n; i++)); do garage_wait_port "39${i}1"; garage_wait_port "39${i}0"; done
  for ((i = 0; i < n; i++)); do
    id=$(garage -c "$dir/n$i.toml" node id -q 2>/dev/null | cut -d@ -f1)
    ids+=("$id")
  done
  for ((i = 1; i < n; i++)); do
    garage -c "$dir/n0.toml" node connect "${ids[$i]}@127.0.0.1:39${i}1" >/dev/null
  done
  for ((i = 0; i < n; i++)); do
    garage -c "$dir/n0.toml" layout assign -z "dc$i" -c 1G "${ids[$i]}" >/dev/null
  done
  garage -c "$dir/n0.toml" layout apply --version 1 >/dev/null
  # The layout takes a moment to propagate.
  for _ in $(seq 1 50); do
    garage -c "$dir/n0.toml" bucket create kache-test >/dev/null 2>&1 && break
    sleep 0.2
  done
  local out
  out=$(garage -c "$dir/n0.toml" key create kache-key)
  GARAGE_KEY_ID=$(echo "$out" | awk -F': *' '/Key ID/ {print $2; exit}')
  GARAGE_SECRET=$(echo "$out" | awk -F': *' '/Secret key/ {print $2; exit}')
  garage -c "$dir/n0.toml" bucket allow --read --write --owner kache-test --key kache-key >/dev/null
  export GARAGE_ENDPOINT="http://127.0.0.1:3900" GARAGE_BUCKET=kache-test GARAGE_REGION=garage
  export GARAGE_KEY_ID GARAGE_SECRET GARAGE_PIDS GARAGE_DIR
  if [ -z "$GARAGE_KEY_ID" ] || [ -z "$GARAGE_SECRET" ]; then
    echo "error: could not create a garage key; output was:" >&2
    echo "$out" >&2
    return 1
  fi
}

garage_stop() {
  local p
  for p in $GARAGE_PIDS; do kill "$p" 2>/dev/null || true; done
  for p in $GARAGE_PIDS; do wait "$p" 2>/dev/null || true; done
}
