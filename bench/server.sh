#!/usr/bin/env bash
# Server benchmark (issue: `slipctl serve`): a 16-host full deploy through a running
# `slipctl serve`, alone and with 50 clients polling the dashboard back to back plus 100
# watchers on the deploy's event stream; the pollers' latency (p50, p99), the deploy's wall time
# both ways (the watchers must not slow it by more than 5%), whether all 100 watchers saw the
# complete event list, and the server's RSS idle and at its peak.
#
#   [POLL_MS=1000] bench/server.sh [-n HOSTS] [-r ROUNDS]     (root; release build)
#
# PROFILE=1 records the server's CPU during the loaded deploys (perf, cpu-clock, call graphs):
# `perf report -i $BENCH_DIR/loaded.perf --no-children --sort sym`.
# POLL_MS is each poller's pause between requests: 1000 is the dashboard's own rate (it takes
# live updates as events and polls at most once a second); 0 polls back to back (a stress test:
# on a 2-core machine the pollers then compete with the agents for the CPU).
#
# Each round deploys twice, alternating which of the two runs under load, on the tree of the
# baseline's small preset (../shared/bench/walle_baseline.sh build-src). Results: one line per
# deploy, then medians, in $BENCH_DIR/server.txt.
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/bench/agents.sh"
BASELINE=${BASELINE:-$HERE/../shared/bench/walle_baseline.sh}
N=16; ROUNDS=3; POLL_MS=${POLL_MS:-1000}
while [ $# -gt 0 ]; do
  case $1 in -n) N=$2; shift 2 ;; -r) ROUNDS=$2; shift 2 ;; -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;; esac
done
# On tmpfs by default: the subject is the server, and disk writeback is this machine's largest
# source of noise in a deploy's wall time.
BENCH_DIR=${BENCH_DIR:-/dev/shm/slipway-bench-server}
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
(cd "$HERE" && timeout 1800 cargo build --release --locked -q && timeout 900 cargo build --release --locked -q -p slipway-tests --bin slipway-load)
SLIPCTL=$HERE/target/release/slipctl SLIPD=$HERE/target/release/slipd LOAD=$HERE/target/release/slipway-load
REPO=/tmp/wb-src/small/repo
[ -d "$REPO" ] || timeout 1800 "$BASELINE" build-src -p small > "$BENCH_DIR/build-src.log" 2>&1
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

home=$BENCH_DIR/home
"$SLIPCTL" --home "$home" init > /dev/null
start_agents "$home" "$N" 18000 "$BENCH_DIR"
cat > "$BENCH_DIR/project.toml" <<TOML
name = "bench"
repo = "$REPO"
keep_releases = 3
[target]
deploy_to = "$BENCH_DIR/hosts/{host}/srv"
[env.bench]
hosts = ["role=web"]
TOML
"$SLIPCTL" --home "$home" project apply -f "$BENCH_DIR/project.toml" > /dev/null
token=$("$SLIPCTL" --home "$home" --output json token create bench --admin | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
port=18999
"$SLIPCTL" --home "$home" serve --listen "127.0.0.1:$port" > "$BENCH_DIR/serve.log" 2>&1 & server=$!; PIDS+=($server)
timeout 30 bash -c "until grep -q 'listening' '$BENCH_DIR/serve.log'; do sleep 0.05; done"
rss() { awk "/$1/ {print \$2}" "/proc/$server/status"; }
# The server's CPU time so far (user + system), in clock ticks.
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
# A first deploy so every later one is the same work (a full artifact to hosts that hold a release).
"$LOAD" "$port" "$token" bench bench wb-c1 0 0 0 > "$BENCH_DIR/warmup.json"
idle_rss=$(rss VmRSS)
out=$BENCH_DIR/server.txt; : > "$out"
refs=(wb-c2 wb-c1)
for round in $(seq 1 "$ROUNDS"); do
  order="quiet loaded"; [ $((round % 2)) = 0 ] && order="loaded quiet"
  for which in $order; do
    ref=${refs[$(( $(wc -l < "$out") % 2 ))]}
    sync
    c0=$(cpu)
    prof=()
    [ -n "${PROFILE:-}" ] && [ "$which" = loaded ] && prof=(perf record -q -g -e cpu-clock -F 999 -p "$server" -o "$BENCH_DIR/loaded-$round.perf" --)
    if [ "$which" = loaded ] && [ ${#prof[@]} -gt 0 ]; then r=$("${prof[@]}" "$LOAD" "$port" "$token" bench bench "$ref" 50 100 "$POLL_MS");
    elif [ "$which" = loaded ]; then r=$("$LOAD" "$port" "$token" bench bench "$ref" 50 100 "$POLL_MS"); else r=$("$LOAD" "$port" "$token" bench bench "$ref" 0 0 0); fi
    c1=$(cpu)
    echo "$which $(echo "$r" | python3 -c "import json,sys; d=json.load(sys.stdin); d['server_cpu_s']=($c1-$c0)/$(getconf CLK_TCK); print(json.dumps(d))")" | tee -a "$out"
  done
done
peak_rss=$(rss VmHWM)
python3 - "$out" "$idle_rss" "$peak_rss" "$POLL_MS" <<'PY' | tee -a "$out"
import json, sys, statistics as st
rows = [(l.split(' ', 1)[0], json.loads(l.split(' ', 1)[1])) for l in open(sys.argv[1]) if l.strip()]
q = [r['deploy_ms'] for w, r in rows if w == 'quiet']
l = [r['deploy_ms'] for w, r in rows if w == 'loaded']
p50 = [r['poll_p50_ms'] for w, r in rows if w == 'loaded']
p99 = [r['poll_p99_ms'] for w, r in rows if w == 'loaded']
polls = sum(r['polls'] for w, r in rows if w == 'loaded')
complete = sum(r['watchers_complete'] for w, r in rows if w == 'loaded')
watchers = sum(r['watchers'] for w, r in rows if w == 'loaded')
qc = [r['server_cpu_s'] for w, r in rows if w == 'quiet']
lc = [r['server_cpu_s'] for w, r in rows if w == 'loaded']
print(f"server CPU per deploy, median: quiet {st.median(qc):.2f} s, loaded {st.median(lc):.2f} s")
print(f"deploy wall median: quiet {st.median(q)/1000:.2f} s, loaded {st.median(l)/1000:.2f} s, ratio {st.median(l)/st.median(q):.3f} (target <= 1.05)")
print(f"dashboard polls under load (each poller pausing {sys.argv[4]} ms): {polls}, p50 {st.median(p50):.1f} ms, p99 {st.median(p99):.1f} ms (medians of the rounds)")
print(f"watchers with the complete event list: {complete} of {watchers}")
print(f"server RSS: idle {int(sys.argv[2])/1024:.1f} MiB, peak {int(sys.argv[3])/1024:.1f} MiB")
PY
echo "results: $out"
