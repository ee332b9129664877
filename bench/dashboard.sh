#!/usr/bin/env bash
# Dashboard benchmark (issue: the web dashboard): the HTML of the dashboard page for
# 50 projects x 4 envs x 20 hosts must render in <= 50 ms on the server and weigh < 300 KB.
# A fresh controller home is filled through the store (every env with DEPLOYS finished deploys
# of 20 hosts on two releases, and as many tickets), `slipctl serve` runs on it, and ROUNDS
# GETs of `/` are timed over loopback (render + HTTP: an upper bound on the render).
#
#   bench/dashboard.sh [-d DEPLOYS] [-r ROUNDS]      (release build; results in $BENCH_DIR/dashboard.txt)
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")/.." && pwd)
DEPLOYS="5 50"; ROUNDS=50
while [ $# -gt 0 ]; do
  case $1 in -d) DEPLOYS=$2; shift 2 ;; -r) ROUNDS=$2; shift 2 ;; -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;; esac
done
BENCH_DIR=${BENCH_DIR:-/dev/shm/slipway-bench-dashboard}
rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"
(cd "$HERE" && timeout 1800 cargo build --release --locked -q -p slipway-controller --bin slipctl \
  && timeout 900 cargo build --release --locked -q -p slipway-tests --bin slipway-dashboard)
for d in $DEPLOYS; do
  rm -rf "$BENCH_DIR/home"
  "$HERE/target/release/slipway-dashboard" "$HERE/target/release/slipctl" "$BENCH_DIR/home" 50 4 20 "$d" "$ROUNDS" \
    | tee -a "$BENCH_DIR/dashboard.txt"
done
rm -rf "$BENCH_DIR/home"
