#!/usr/bin/env bash
# Check the systemd units: `systemd-analyze verify` (with ExecStart pointed at a built slipd) and
# `systemd-analyze security --offline=yes` scores no higher than deploy/unit-scores records.
# Usage: deploy/check-units.sh PATH/TO/slipd
set -euo pipefail
slipd=$(realpath "$1")
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
while read -r unit max; do
  [ -z "$unit" ] || [ "${unit:0:1}" = "#" ] && continue
  sed "s|/usr/bin/slipd|$slipd|g; s|/usr/bin/slipctl|$(dirname "$slipd")/slipctl|g" "$unit" > "$tmp/$unit"
  if ! systemd-analyze verify "$tmp/$unit"; then
    echo "FAIL: $unit does not pass systemd-analyze verify"
    status=1
  fi
  score=$(systemd-analyze security --offline=yes "$unit" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  if [ -z "$score" ]; then
    echo "FAIL: no exposure score for $unit"
    status=1
  elif awk -v s="$score" -v m="$max" 'BEGIN { exit !(s > m) }'; then
    echo "FAIL: $unit scores $score, above the $max recorded in deploy/unit-scores"
    status=1
  else
    echo "ok: $unit scores $score (at most $max)"
  fi
done < unit-scores
exit $status
