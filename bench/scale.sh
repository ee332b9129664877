#!/usr/bin/env bash
# How the controller scales with the fleet (issue #23, item 5): for each host count and origin,
# N real slipd processes, a small tree (so the disk is not the limit), and
#   full   the first deploy of the tree to empty hosts
#   incr   a one-file change (delta)
#   probe  one probe of every agent (`slipctl agent list`: what the server's 30 s cycle does)
# each with its wall seconds, controller CPU seconds and peak RSS (GNU time, `git` children
# included) and the bytes the controller sent: the controller runs in a network namespace of its
# own, and its veth's tx_bytes are exactly what left it (TLS, headers and retransmits included).
# Origins: `direct` (the controller pushes the artifact to every host) and `s3` (it uploads the
# artifact once to an s3s-fs process, and hosts fetch it by presigned URL). Ratios are against
# the first N of the same origin.
#
#   bench/scale.sh [-n "16 64 256"] [-o "direct s3"] [-f FILES] [-b BLOB_MIB]
# (root: namespaces, many ports). -b adds one incompressible file of that size to the tree.
# PROFILE=1 records each phase system-wide with perf (<dir>/n<N>-<origin>/<phase>.json.perf;
# `perf report -i FILE --sort comm,dso,sym`). BENCH_DIR=/dev/shm/… puts the hosts on tmpfs.
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/bench/agents.sh"
NS="16 64 256"; ORIGINS="direct s3"; FILES=300; BLOB=0
while [ $# -gt 0 ]; do
  case $1 in
    -n) NS=$2; shift 2 ;; -o) ORIGINS=$2; shift 2 ;; -f) FILES=$2; shift 2 ;; -b) BLOB=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;; *) echo "unknown option $1" >&2; exit 2 ;;
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
trap 'cleanup; ip netns del slipbench 2>/dev/null || true; ip link del sb0 2>/dev/null || true' EXIT

# The controller's own namespace: veth sb1 (10.99.0.2) in it, sb0 (10.99.0.1) here, where the
# agents and the store listen.
ip netns del slipbench 2>/dev/null || true; ip link del sb0 2>/dev/null || true
ip netns add slipbench
ip link add sb0 type veth peer name sb1
ip link set sb1 netns slipbench
ip addr add 10.99.0.1/24 dev sb0; ip link set sb0 up
ip netns exec slipbench ip addr add 10.99.0.2/24 dev sb1
ip netns exec slipbench ip link set sb1 up; ip netns exec slipbench ip link set lo up
export AGENT_IP=10.99.0.1
S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
case " $ORIGINS " in *" s3 "*) [ -x "$S3S" ] || cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary ;; esac

# The tree: FILES files of 4 KiB of text in 10 directories, one git commit; then one file changed.
repo=$BENCH_DIR/repo; mkdir -p "$repo"
git -C "$repo" init -q -b main
for i in $(seq 1 "$FILES"); do
  d=$repo/d$((i % 10)); mkdir -p "$d"; head -c 3000 /dev/urandom | base64 > "$d/f$i.txt"
done
[ "$BLOB" -gt 0 ] && head -c $((BLOB << 20)) /dev/urandom > "$repo/blob.bin"
git -C "$repo" add -A && git -C "$repo" -c user.email=b@x -c user.name=b commit -q -m c1
tree_bytes=$(du -sb --exclude=.git "$repo" | cut -f1)

# One phase: wall_s cpu_s rss_kib sent_bytes machine_cpu_s store_cpu_s
tx() { ip netns exec slipbench cat /sys/class/net/sb1/statistics/tx_bytes; }
# CPU seconds the whole machine spent (every process: agents, store, controller, kernel).
busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{print ($2+$3+$4+$7+$8)/hz}' /proc/stat; }
# CPU seconds the store process has used so far (0 without one).
store_cpu() {
  local pid=${S3_PID:-}
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || { echo 0; return; }
  awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$pid/stat"
}
phase() {
  local home=$1 out=$2; shift 2
  local lo0 lo1 t0 t1 u s rss m0 m1 c0 c1
  lo0=$(tx); m0=$(busy); c0=$(store_cpu)
  t0=$(date +%s.%N)
  local prof=()
  [ -n "${PROFILE:-}" ] && prof=(perf record -q -a -g -e cpu-clock -F 499 -o "$out.perf" --)
  timeout 1800 "${prof[@]}" /usr/bin/time -f "%U %S %M" -o "$out.time" ip netns exec slipbench "$SLIPCTL" --home "$home" --output json "$@" > "$out" 2> "$out.err" || true
  t1=$(date +%s.%N)
  lo1=$(tx); m1=$(busy); c1=$(store_cpu)
  read -r u s rss < "$out.time"
  printf '%.2f %.2f %s %s %.2f %.2f\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$u + $s" | bc)" "$rss" "$((lo1 - lo0))" \
    "$(echo "$m1 - $m0" | bc)" "$(echo "$c1 - $c0" | bc)"
}

printf '\ntree: %s files, %s bytes\n' "$FILES" "$tree_bytes" | tee "$BENCH_DIR/results.txt"
printf '%-6s %-6s %-6s %8s %8s %8s %12s %10s %9s %9s %10s\n' hosts origin phase wall_s cpu_s rss_mib sent_bytes artifact machine_s store_s ok \
  | tee -a "$BENCH_DIR/results.txt"
for n in $NS; do
for origin in $ORIGINS; do
  top=$BENCH_DIR/n$n-$origin; home=$top/home; mkdir -p "$top"
  "$SLIPCTL" --home "$home" init > /dev/null
  PIDS=()
  start_agents "$home" "$n" 20000 "$top"
  if [ "$origin" = s3 ]; then
    mkdir -p "$top/s3/artifacts"
    "$S3S" --host 10.99.0.1 --port 19000 --access-key bench --secret-key bench-secret "$top/s3" 2> "$top/s3.log" &
    S3_PID=$!; PIDS+=($!)
    timeout 30 bash -c "until (exec 3<>/dev/tcp/10.99.0.1/19000) 2>/dev/null; do sleep 0.05; done"
    cat > "$home/config.toml" <<TOML
[artifacts]
store = "s3://artifacts/bench"
endpoint = "http://10.99.0.1:19000"
access_key = "bench"
secret_key = "bench-secret"
TOML
  fi
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
    read -r wall cpu rss bytes machine store < <(phase "$home" "$top/$ph.json" "${args[@]}")
    # What one host needed: the full artifact, or the delta (the stage step's size).
    read -r ok artifact < <(python3 -c "import json,sys,re
try:
    d=json.load(open(sys.argv[1]))
    if isinstance(d,dict):
        size=d.get('artifact',{}).get('compressed_bytes',0) if sys.argv[2]=='full' else 0
        if sys.argv[2]=='incr':
            det=[s.get('detail','') for s in d['hosts'][0]['steps'] if s.get('name')=='stage'][0]
            m=re.match(r'([0-9.]+) (B|KiB|MiB)',det); size=int(float(m.group(1))*{'B':1,'KiB':1024,'MiB':1<<20}[m.group(2)]) if m else 0
        print(d.get('status','-'), size)
    else: print(sum(1 for a in d if a.get('reachable')), 0)
except Exception as e: print('error', 0)" "$top/$ph.json" "$ph")
    printf '%-6s %-6s %-6s %8s %8s %8s %12s %10s %9s %9s %10s\n' "$n" "$origin" "$ph" "$wall" "$cpu" "$((rss / 1024))" \
      "$bytes" "$artifact" "$machine" "$store" "$ok" \
      | tee -a "$BENCH_DIR/results.txt"
  done
  git -C "$repo" reset -q --hard HEAD~1
  cleanup; PIDS=(); S3_PID=
  # The hosts' releases are done with (256 hosts of a large tree fill a disk): KEEP=1 keeps them.
  [ -n "${KEEP:-}" ] || rm -rf "$top/hosts" "$top/s3"
done
done
echo "(results in $BENCH_DIR/results.txt)"
