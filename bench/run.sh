#!/usr/bin/env bash
# Slipway deploy benchmark, side by side with the Walle/rsync baseline (../shared/bench).
#
#   [REUSE=hardlink] bench/run.sh [-n "1 4 16"] [-p "small large"] [--no-baseline]   (root)
#
# For each host count and preset it
#   1. builds the baseline's source repo (same trees, same commits: tags wb-c1 -> wb-c2),
#   2. starts N slipd agents on loopback, each with its own root and state (release build),
#   3. runs three Slipway phases: full (wb-c1 on empty hosts), incr (wb-c2: one file changed),
#      rollback; for each: wall time, bytes sent to agents, controller CPU and peak RSS (GNU
#      time), switch skew (first to last flip), and one agent's peak RSS,
#   4. measures the floor: plain `tar -x` of the same tree into N directories, two at a time,
#   5. runs the baseline harness (walle + rsync variants, parallel) on its own netns fleet,
# and prints one table per N/preset with Slipway / best-baseline ratios. Bounded: every step
# has a timeout, agents are stopped on exit, nothing is written outside $BENCH_DIR and the
# baseline's own temp dirs.
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")/.." && pwd)
BASELINE=${BASELINE:-$HERE/../shared/bench/walle_baseline.sh}
NS="1 4 16"; PRESETS="small"; RUN_BASELINE=1
REUSE=${REUSE:-copy}   # REUSE=hardlink: unchanged files hard-linked (then hooks run as www)
while [ $# -gt 0 ]; do
  case $1 in
    -n) NS=$2; shift 2 ;; -p) PRESETS=$2; shift 2 ;; --no-baseline) RUN_BASELINE=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;; *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/run.sh needs root (the baseline builds network namespaces)" >&2; exit 2; }
[ "$REUSE" != hardlink ] || id www >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh www
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
BENCH_DIR=${BENCH_DIR:-/tmp/slipway-bench}
RESULTS=${RESULTS:-$BENCH_DIR/results.txt}
mkdir -p "$BENCH_DIR"
(cd "$HERE" && timeout 1800 cargo build --release --locked -q)
SLIPCTL=$HERE/target/release/slipctl SLIPD=$HERE/target/release/slipd
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

# Run one slipctl phase; prints: wall_s bytes_sent cpu_s max_rss_kb skew_ms
phase() {
  local home=$1 out=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  timeout 900 /usr/bin/time -f "%U %S %M" -o "$out.time" "$SLIPCTL" --home "$home" --output json "$@" > "$out" 2> "$out.err"
  t1=$(date +%s.%N)
  read -r u s rss < "$out.time"
  local bytes skew
  bytes=$(json "$out" "sum(h.get('bytes_sent',0) for h in d['hosts'])")
  skew=$(json "$out" "(lambda t: max(t)-min(t) if t else 0)([s['started_ms']+s['elapsed_ms'] for h in d['hosts'] for s in h['steps'] if s['name']=='activate'])")
  printf '%.2f %s %.2f %s %s\n' "$(echo "$t1 - $t0" | bc)" "$bytes" "$(echo "$u + $s" | bc)" "$rss" "$skew"
}

for preset in $PRESETS; do
  timeout 1800 "$BASELINE" build-src -p "$preset" > "$BENCH_DIR/build-src-$preset.log" 2>&1
  REPO=/tmp/wb-src/$preset/repo
  for n in $NS; do
    run=$BENCH_DIR/$preset-n$n; rm -rf "$run"; mkdir -p "$run"
    home=$run/home
    "$SLIPCTL" --home "$home" init > /dev/null
    PIDS=()
    for i in $(seq 1 "$n"); do
      port=$((17000 + i)); bundle=$run/agents/h$i; root=$run/hosts/h$i; mkdir -p "$root"
      "$SLIPCTL" --home "$home" agent add "h$i" --addr "127.0.0.1:$port" --listen "127.0.0.1:$port" \
        --label role=web --out "$bundle" --state-dir "$bundle/state" --allowed-root "$root" > /dev/null
      SLIPWAY_LOG=warn "$SLIPD" --config "$bundle/agent.toml" 2> "$bundle/slipd.log" & PIDS+=($!)
    done
    for i in $(seq 1 "$n"); do timeout 30 bash -c "until (exec 3<>/dev/tcp/127.0.0.1/$((17000 + i))) 2>/dev/null; do sleep 0.05; done"; done
    cat > "$run/project.toml" <<TOML
name = "bench"
repo = "$REPO"
keep_releases = 20
reuse = "$REUSE"
[target]
deploy_to = "$run/hosts/{host}/srv"
$( [ "$REUSE" = hardlink ] && echo 'user = "www"' )
[env.bench]
hosts = ["role=web"]
TOML
    "$SLIPCTL" --home "$home" project apply -f "$run/project.toml" > /dev/null
    sync
    full=$(phase "$home" "$run/full.json" deploy bench bench --ref wb-c1)
    incr=$(phase "$home" "$run/incr.json" deploy bench bench --ref wb-c2)
    back=$(phase "$home" "$run/rollback.json" rollback bench bench)
    agent_rss=$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[0]}/status")
    cleanup; PIDS=()
    # The floor: plain tar -x of the same tree into n directories, two at a time.
    git -C "$REPO" archive --format=tar wb-c1 > "$run/tree.tar"
    sync
    t0=$(date +%s.%N)
    seq 1 "$n" | xargs -P 2 -I{} sh -c "mkdir -p '$run/floor/{}' && tar -xf '$run/tree.tar' -C '$run/floor/{}'"
    sync
    floor=$(echo "$(date +%s.%N) - $t0" | bc)
    rm -rf "$run/floor"
    {
      echo "reuse=$REUSE"
      echo "slipway $preset n=$n full:     wall_s bytes cpu_s ctl_rss_kb skew_ms = $full"
      echo "slipway $preset n=$n incr:     wall_s bytes cpu_s ctl_rss_kb skew_ms = $incr"
      echo "slipway $preset n=$n rollback: wall_s bytes cpu_s ctl_rss_kb skew_ms = $back"
      echo "slipway $preset n=$n agent_peak_rss_kb = $agent_rss"
      printf 'floor   %s n=%s tar -x x%s (2 at a time): %.2f s\n' "$preset" "$n" "$n" "$floor"
    } | tee -a "$RESULTS"
    if [ "$RUN_BASELINE" = 1 ]; then
      timeout 3000 "$BASELINE" run -n "$n" -p "$preset" -m parallel --out "$RESULTS.baseline" > "$run/baseline.log" 2>&1 || echo "baseline failed: see $run/baseline.log"
      grep -E "^(walle|rsync) " "$run/baseline.log" | awk -v n="$n" -v p="$preset" '{print "baseline " p " n=" n ": " $0}' | tee -a "$RESULTS" || true
    fi
  done
done
echo "results: $RESULTS"
