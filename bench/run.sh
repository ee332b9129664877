#!/usr/bin/env bash
# Slipway deploy benchmark, side by side with the Walle/rsync baseline (../shared/bench).
#
#   [REUSE=hardlink | MODES="copy hardlink"] [FRESH_FS=0] [WARMUP=1] [PROFILE=1]
#     bench/run.sh [-n "1 4 16"] [-p "small large"] [-r REPS] [--no-baseline]   (root)
#
# MODES runs both reuse modes, alternating which goes first from one repetition to the next;
# FRESH_FS=0 measures on this machine's own disk (each run in a directory of its own, none
# deleted before the end); WARMUP=1 deploys once, untimed, before the timed phases (then `sync`,
# unless WARMUP_SYNC=0); BIN_DIR=DIR measures the binaries in DIR instead of building; SERVE=1
# runs the phases through `slipctl serve`.
#
# For each host count and preset it
#   1. builds the baseline's source repo (same trees, same commits: tags wb-c1 -> wb-c2),
#   2. starts N slipd agents on loopback, each with its own root and state (release build),
#   3. runs three Slipway phases: full (wb-c1 on empty hosts), incr (wb-c2: one file changed),
#      rollback; for each: wall time, bytes on the wire (loopback's interface counter, both
#      directions), controller CPU and peak RSS (GNU
#      time), switch skew (first to last flip), and one agent's peak RSS,
#   4. measures the floor: plain `tar -x` of the same tree into N directories, two at a time,
#   5. runs the baseline harness (walle + rsync variants, parallel) on its own netns fleet,
# and prints one table per N/preset with Slipway / best-baseline ratios. -r R repeats steps 2-5
# R times (fresh filesystems each time) and reports medians. Bounded: every step
# has a timeout, agents are stopped on exit, nothing is written outside $BENCH_DIR and the
# baseline's own temp dirs. PROFILE=1 records each Slipway phase system-wide with perf
# (<run>/<phase>.json.perf; `perf report -i ... --sort comm,dso,sym`); PROFILE=ctl records only
# the controller, with DWARF call stacks. PROFILE=instr counts the controller's instructions
# under callgrind (slipctl only, not its git children; this machine's VM has no hardware
# counters for `perf stat -e instructions:u`): `bench/run.sh -n "1 16" --no-baseline` then
# compares 1 host with 16. Its walls are valgrind's.
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/bench/agents.sh"
BASELINE=${BASELINE:-$HERE/../shared/bench/walle_baseline.sh}
NS="1 4 16"; PRESETS="small"; RUN_BASELINE=1; REPS=1
REUSE=${REUSE:-copy}   # REUSE=hardlink: unchanged files hard-linked (then hooks run as www)
MODES=${MODES:-$REUSE} # MODES="copy hardlink": both, in alternating order, each repetition
WARMUP=${WARMUP:-0}    # WARMUP=1: an untimed deploy (of its own project) before the timed phases
while [ $# -gt 0 ]; do
  case $1 in
    -n) NS=$2; shift 2 ;; -p) PRESETS=$2; shift 2 ;; -r) REPS=$2; shift 2 ;;
    --no-baseline) RUN_BASELINE=0; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;; *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/run.sh needs root (the baseline builds network namespaces)" >&2; exit 2; }
case " $MODES " in *" hardlink "*) id www >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh www ;; esac
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
BENCH_DIR=${BENCH_DIR:-/tmp/slipway-bench}
RESULTS=${RESULTS:-$BENCH_DIR/results.txt}
mkdir -p "$BENCH_DIR"
# BIN_DIR=DIR: measure the slipctl and slipd in DIR (an older build, to compare) instead.
if [ -n "${BIN_DIR:-}" ]; then SLIPCTL=$BIN_DIR/slipctl SLIPD=$BIN_DIR/slipd; else
  (cd "$HERE" && timeout 1800 cargo build --release --locked -q)
  SLIPCTL=$HERE/target/release/slipctl SLIPD=$HERE/target/release/slipd
fi
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap 'cleanup; unmount_fs' EXIT

json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

# Run one slipctl phase; prints: wall_s bytes_sent cpu_s max_rss_kb skew_ms
phase() {
  local home=$1 out=$2; shift 2
  local t0 t1
  local prof=() wrap=()
  case ${PROFILE:-} in
    "") ;;
    instr) wrap=(valgrind -q --tool=callgrind --callgrind-out-file="$out.cg" --) ;;
    ctl) prof=(perf record -q --call-graph dwarf,32768 -e cpu-clock -F 999 -o "$out.perf" --) ;;  # slipctl only
    *) prof=(perf record -q -a -g -e cpu-clock -F 499 -o "$out.perf" --) ;;
  esac
  # Bytes on the wire: everything loopback carried during the phase, both directions, every
  # header (TCP/IP, TLS, HTTP/2) and message (inventory, manifests or diffs, archives), counted at
  # the interface as the baseline counts its veths. (Loopback's MTU is 64 KiB, the baseline's
  # veths' 1500: we pay fewer IP/TCP headers per byte.)
  local lo0 lo1
  read -r lo0 < /sys/class/net/lo/statistics/tx_bytes
  t0=$(date +%s.%N)
  timeout 900 "${prof[@]}" /usr/bin/time -f "%U %S %M" -o "$out.time" "${wrap[@]}" "$SLIPCTL" --home "$home" --output json "$@" > "$out" 2> "$out.err"
  t1=$(date +%s.%N)
  read -r lo1 < /sys/class/net/lo/statistics/tx_bytes
  read -r u s rss < "$out.time"
  if [ -f "$out.cg" ]; then awk '/^(summary|totals):/ {print $2; exit}' "$out.cg" > "$out.instr"; fi
  local bytes skew
  bytes=$((lo1 - lo0))
  skew=$(json "$out" "(lambda t: max(t)-min(t) if t else 0)([s['started_ms']+s['elapsed_ms'] for h in d['hosts'] for s in h['steps'] if s['name']=='activate'])")
  printf '%.2f %s %.2f %s %s\n' "$(echo "$t1 - $t0" | bc)" "$bytes" "$(echo "$u + $s" | bc)" "$rss" "$skew"
}

# Every measurement (Slipway's phases, the floor, the baseline) gets a fresh ext4 on a loop device:
# ext4 slows inode allocation for minutes after mass deletions (find_inode_bit/recently_deleted
# showed ~30% of a profile after the previous run's rm -rf), and real hosts each have their own
# disk. FRESH_FS=0 measures on the filesystem of $BENCH_DIR instead.
FRESH_FS=${FRESH_FS:-1}
FS=$BENCH_DIR/fs
unmount_fs() { if mountpoint -q "$FS"; then umount "$FS"; fi; rm -f "$BENCH_DIR/fs.img"; }
fresh_fs() {  # fresh_fs <inodes> <GiB>
  if [ "$FRESH_FS" != 1 ]; then rm -rf "$FS"; mkdir -p "$FS"; return; fi
  unmount_fs; mkdir -p "$FS"
  truncate -s "$2G" "$BENCH_DIR/fs.img"
  mkfs.ext4 -q -F -N "$1" -E lazy_itable_init=0,lazy_journal_init=0 "$BENCH_DIR/fs.img"
  mount -o loop "$BENCH_DIR/fs.img" "$FS"
  chmod 755 "$FS"
}

# One repetition of Slipway's phases in `reuse = MODE`, into DIR/rep<REP>.txt: an untimed warm-up
# deploy (WARMUP=1, into a deploy_to of its own), then full, incr, rollback; then the floor.
slipway_rep() {
  local mode=$1 rep=$2 top=$3 run home full incr back agent_rss floor t0 root
  run=$top/rep$rep; mkdir -p "$run"
  home=$run/home
  if [ "$FRESH_FS" = 1 ]; then fresh_fs "$inodes" "$gib"; root=$FS; else root=$DISK/$preset-n$n-$mode-rep$rep; mkdir -p "$root"; fi
  "$SLIPCTL" --home "$home" init > /dev/null
  PIDS=()
  start_agents "$home" "$n" 17000 "$root"
  project() {  # project NAME DEPLOY_TO
    cat > "$run/$1.toml" <<TOML
name = "$1"
repo = "$REPO"
keep_releases = 20
reuse = "$mode"
[target]
deploy_to = "$2"
$( [ "$mode" = hardlink ] && echo 'user = "www"' )
[env.bench]
hosts = ["role=web"]
TOML
    "$SLIPCTL" --home "$home" project apply -f "$run/$1.toml" > /dev/null
  }
  project bench "$root/hosts/{host}/srv"
  # SERVE=1: the phases go through `slipctl serve` for this home (how a team runs it: the server
  # holds the state open; each slipctl sends its command over the home's socket).
  if [ "${SERVE:-0}" = 1 ]; then
    "$SLIPCTL" --home "$home" serve --listen 127.0.0.1:0 > "$run/serve.out" 2>&1 & PIDS+=($!)
    timeout 30 bash -c "until grep -q 'listening on' '$run/serve.out'; do sleep 0.05; done"
  fi
  if [ "$WARMUP" = 1 ]; then
    project warm "$root/hosts/{host}/warm"
    "$SLIPCTL" --home "$home" deploy warm bench --ref wb-c1 > "$run/warmup.log" 2>&1 || true
  fi
  # WARMUP_SYNC=0: the timed deploy starts while the warm-up's writes are still being written
  # back, as a deploy that follows another one closely does.
  [ "${WARMUP_SYNC:-1}" = 0 ] || sync
  full=$(phase "$home" "$run/full.json" deploy bench bench --ref wb-c1)
  incr=$(phase "$home" "$run/incr.json" deploy bench bench --ref wb-c2)
  back=$(phase "$home" "$run/rollback.json" rollback bench bench)
  agent_rss=$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[0]}/status")
  cleanup; PIDS=()
  cp "$root"/agents/h1/slipd.log "$run/slipd-h1.log" 2>/dev/null || true
  # The floor: plain tar -x of the same tree into n directories, two at a time.
  git -C "$REPO" archive --format=tar wb-c1 > "$run/tree.tar"
  if [ "$FRESH_FS" = 1 ]; then fresh_fs "$inodes" "$gib"; root=$FS; fi
  sync
  t0=$(date +%s.%N)
  seq 1 "$n" | xargs -P 2 -I{} sh -c "mkdir -p '$root/floor/{}' && tar -xf '$run/tree.tar' -C '$root/floor/{}'"
  sync
  floor=$(echo "$(date +%s.%N) - $t0" | bc)
  {
    echo "preset $preset"; echo "n $n"; echo "reuse $mode"; echo "fresh_fs $FRESH_FS"; echo "order $4"
    echo "full $full"; echo "incr $incr"; echo "rollback $back"
    echo "agent_rss_kb $agent_rss"; printf 'floor_s %.2f\n' "$floor"
    for p in full incr rollback; do
      if [ -s "$run/$p.json.instr" ]; then echo "instr_$p $(cat "$run/$p.json.instr")"; fi
    done
  } > "$top/slipway-$rep.txt"
}

# FRESH_FS=0: every run writes into a directory of its own under $DISK on this machine's disk,
# deleted only once the whole script is done (a deletion between runs would slow the next one's
# inode allocation; see above).
DISK=$BENCH_DIR/disk
# KEEP_DISK=1 leaves it (runs that follow then start without a mass deletion before them).
[ "$FRESH_FS" = 1 ] || { rm -rf "$DISK"; mkdir -p "$DISK"; [ "${KEEP_DISK:-0}" = 1 ] || trap 'cleanup; unmount_fs; rm -rf "$DISK"' EXIT; }

for preset in $PRESETS; do
  case $preset in large) tree_inodes=30000 tree_gib=1 ;; *) tree_inodes=6000 tree_gib=1 ;; esac
  timeout 1800 "$BASELINE" build-src -p "$preset" > "$BENCH_DIR/build-src-$preset.log" 2>&1
  REPO=/tmp/wb-src/$preset/repo
  for n in $NS; do
    inodes=$(( (n * 4 + 2) * tree_inodes + 100000 )) gib=$(( (n * 4 + 2) * tree_gib + 4 ))
    for mode in $MODES; do rm -rf "$BENCH_DIR/$preset-n$n-$mode"; mkdir -p "$BENCH_DIR/$preset-n$n-$mode"; done
    for rep in $(seq 1 "$REPS"); do
      # With two modes the order alternates: odd repetitions as given, even ones reversed.
      order=$MODES
      if [ $((rep % 2)) = 0 ]; then order=$(echo "$MODES" | tr ' ' '\n' | tac | tr '\n' ' '); fi
      i=0
      for mode in $order; do
        i=$((i + 1))
        slipway_rep "$mode" "$rep" "$BENCH_DIR/$preset-n$n-$mode" "$i"
      done
    done
    first=$(echo "$MODES" | awk '{print $1}')
    if [ "$RUN_BASELINE" = 1 ]; then
      if [ "$FRESH_FS" = 1 ]; then fresh_fs "$inodes" "$gib"; wb=$FS/wb; else wb=$DISK/wb-$preset-n$n; fi
      WB_ROOT=$wb timeout 3000 "$BASELINE" run -n "$n" -p "$preset" -m parallel -r "$REPS" \
        --out "$RESULTS.baseline" > "$BENCH_DIR/$preset-n$n-$first/baseline.log" 2>&1 \
        || echo "baseline failed: see $BENCH_DIR/$preset-n$n-$first/baseline.log"
      for mode in $MODES; do
        [ "$mode" = "$first" ] || cp "$BENCH_DIR/$preset-n$n-$first/baseline.log" "$BENCH_DIR/$preset-n$n-$mode/"
      done
    fi
    for mode in $MODES; do python3 "$HERE/bench/table.py" "$BENCH_DIR/$preset-n$n-$mode" | tee -a "$RESULTS"; done
    unmount_fs
  done
done
echo "results: $RESULTS"
