# Shared by the benchmarks (source it): start N agents on loopback for controller home HOME.
#   start_agents HOME N BASE_PORT DIR
# Agent i listens on AGENT_IP (default 127.0.0.1):BASE_PORT+i with bundle DIR/agents/h$i and
# allowed root DIR/hosts/h$i, labelled role=web; their pids are appended to PIDS. Returns once
# every one accepts.
start_agents() {
  local home=$1 n=$2 base=$3 dir=$4 i port bundle root ip=${AGENT_IP:-127.0.0.1}
  for i in $(seq 1 "$n"); do
    port=$((base + i)); bundle=$dir/agents/h$i; root=$dir/hosts/h$i; mkdir -p "$root"
    "$SLIPCTL" --home "$home" agent add "h$i" --addr "$ip:$port" --listen "$ip:$port" \
      --label role=web --out "$bundle" --state-dir "$bundle/state" --allowed-root "$root" > /dev/null
    SLIPWAY_LOG=warn "$SLIPD" --config "$bundle/agent.toml" 2> "$bundle/slipd.log" & PIDS+=($!)
  done
  for i in $(seq 1 "$n"); do
    timeout 30 bash -c "until (exec 3<>/dev/tcp/$ip/$((base + i))) 2>/dev/null; do sleep 0.05; done"
  done
}
