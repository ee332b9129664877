#!/usr/bin/env bash
# How the controller scales with the fleet (issue #23, item 5, direct push): for each host
# count, N real slipd processes on loopback, a small tree (so the disk is not the limit), and
#   full   the first deploy of the tree to empty hosts
#   incr   a one-file change (delta)
#   probe  one probe of every agent (`slipctl agent list`: what the server's 30 s cycle does)
# each with its wall seconds, controller CPU seconds and peak RSS (GNU time, `git` children
# included) and the bytes loopback carried (tx_bytes over the phase: both directions, every
# header; an upper bound of what the controller sent). Ratios are against the first N.
#
#   bench/scale.sh [-n "16 64 256"] [-f FILES]      (root: many processes and ports)
#
# The S3 origin (issue #23, item 3) is not built yet: this is the direct-push half.
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/bench/agents.sh"
NS="16 64 256"; FILES=300
while [ $# -gt 0 ]; do
  case $1 in
    -n) NS=$2; shift 2 ;; -f) FILES=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;; *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
ulimit -n 65536 2>/dev/null || true
BENCH_DIR=${BENCH_DIR:-/tmp/slipway-scale}
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
(cd "$HERE" && timeout 1800 cargo build --release --locked -q -p slipway-agent -p slipway-controller)
SLIPCTL=$HERE/target/release/slipctl SLIPD=$HERE/target/release/slipd
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The tree: FILES files of 4 KiB of text in 10 directories, one git commit; then one file changed.
repo=$BENCH_DIR/repo; mkdir -p "$repo"
git -C "$repo" init -q -b main
for i in $(seq 1 "$FILES"); do
  d=$repo/d$((i % 10)); mkdir -p "$d"; head -c 3000 /dev/urandom | base64 > "$d/f$i.txt"
done
git -C "$repo" add -A && git -C "$repo" -c user.email=b@x -c user.name=b commit -q -m c1
tree_bytes=$(du -sb --exclude=.git "$repo" | cut -f1)

# One phase: wall_s cpu_s rss_kib lo_bytes
phase() {
  local home=$1 out=$2; shift 2
  local lo0 lo1 t0 t1 u s rss
  read -r lo0 < /sys/class/net/lo/statistics/tx_bytes
  t0=$(date +%s.%N)
  timeout 1800 /usr/bin/time -f "%U %S %M" -o "$out.time" "$SLIPCTL" --home "$home" --output json "$@" > "$out" 2> "$out.err" || true
  t1=$(date +%s.%N)
  read -r lo1 < /sys/class/net/lo/statistics/tx_bytes
  read -r u s rss < "$out.time"
  printf '%.2f %.2f %s %s\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$u + $s" | bc)" "$rss" "$((lo1 - lo0))"
}

printf '\ntree: %s files, %s bytes\n' "$FILES" "$tree_bytes" | tee "$BENCH_DIR/results.txt"
printf '%-6s %-6s %9s %9s %10s %14s %8s\n' hosts phase wall_s cpu_s rss_mib lo_bytes ok | tee -a "$BENCH_DIR/results.txt"
for n in $NS; do
  top=$BENCH_DIR/n$n; home=$top/home; mkdir -p "$top"
  "$SLIPCTL" --home "$home" init > /dev/null
  PIDS=()
  start_agents "$home" "$n" 20000 "$top"
  cat > "$top/site.toml" <<TOML
name = "site"
repo = "$repo"
keep_releases = 3
[target]
deploy_to = "$top/hosts/{host}/site"
current = "$top/hosts/{host}/www/site"
[env.test]
hosts = ["role=web"]
TOML
  "$SLIPCTL" --home "$home" project apply -f "$top/site.toml" > /dev/null
  git -C "$repo" checkout -q main
  for ph in full incr probe; do
    case $ph in
      full) args=(deploy site test) ;;
      incr)
        echo "changed $n" >> "$repo/d1/f1.txt"
        git -C "$repo" -c user.email=b@x -c user.name=b commit -qam "c-$n"
        args=(deploy site test) ;;
      probe) args=(agent list) ;;
    esac
    read -r wall cpu rss bytes < <(phase "$home" "$top/$ph.json" "${args[@]}")
    ok=$(python3 -c "import json,sys
try:
    d=json.load(open(sys.argv[1]))
    print(d.get('status','-') if isinstance(d,dict) else sum(1 for a in d if a.get('reachable')))
except Exception: print('error')" "$top/$ph.json")
    printf '%-6s %-6s %9s %9s %10s %14s %8s\n' "$n" "$ph" "$wall" "$cpu" "$((rss / 1024))" "$bytes" "$ok" \
      | tee -a "$BENCH_DIR/results.txt"
  done
  cleanup; PIDS=()
done
echo "(results in $BENCH_DIR/results.txt)"
