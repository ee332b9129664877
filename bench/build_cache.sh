#!/usr/bin/env bash
# Builds with a cold and a warm [build] cache (issue #24 item 5): the same project built again
# and again on the controller (`slipctl deploy --dry-run` builds and packages, sends nothing),
# a new commit each time so nothing is reused but the cache; `slipctl cache clear` before each
# cold build. Cold and warm alternate; each figure is over RUNS builds.
#
#   bench/build_cache.sh [-r RUNS] [-k "java npm"]
#   java: Maven (Debian's `maven`, plugins from /usr/share/maven-repo) with ~/.m2/repository kept
#   npm:  `npm install` of express from the npm registry with node_modules and ~/.npm kept
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3; KINDS="java npm"
while [ $# -gt 0 ]; do
  case $1 in
    -r) RUNS=$2; shift 2 ;; -k) KINDS=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;; *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
DIR=${BENCH_DIR:-/tmp/slipway-build-cache}
rm -rf "$DIR"; mkdir -p "$DIR"
(cd "$HERE" && cargo build --release --locked -q -p slipway-controller)
SLIPCTL=$HERE/target/release/slipctl
HOME_DIR=$DIR/home
"$SLIPCTL" --home "$HOME_DIR" init > /dev/null
"$SLIPCTL" --home "$HOME_DIR" agent add h1 --addr 127.0.0.1:1 --label role=web --out "$DIR/agent" > /dev/null

make_java() {
  local r=$1; mkdir -p "$r/src/main/java/demo" "$r/src/main/resources"
  cat > "$r/pom.xml" <<'EOF'
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>demo</groupId><artifactId>shop</artifactId><version>1.0</version><packaging>jar</packaging>
<properties><maven.compiler.source>17</maven.compiler.source><maven.compiler.target>17</maven.compiler.target>
<project.build.sourceEncoding>UTF-8</project.build.sourceEncoding></properties>
<build><finalName>shop</finalName></build></project>
EOF
  cat > "$r/settings.xml" <<'EOF'
<settings><mirrors><mirror><id>debian</id><mirrorOf>*</mirrorOf><url>file:///usr/share/maven-repo</url></mirror></mirrors></settings>
EOF
  echo 'package demo; public class Shop { public static void main(String[] a) { System.out.println("shop"); } }' \
    > "$r/src/main/java/demo/Shop.java"
  echo v > "$r/src/main/resources/version.txt"
  BUILD='cache = ["~/.m2/repository"]
pre_deploy = ["mvn -B -q -s settings.xml -Dmaven.repo.local=$HOME/.m2/repository -Dmaven.test.skip=true package"]'
}

make_npm() {
  local r=$1; mkdir -p "$r"
  echo '{"name":"site","version":"1.0.0","private":true,"dependencies":{"express":"4.21.2"}}' > "$r/package.json"
  echo v > "$r/version.txt"
  BUILD='cache = ["node_modules", "~/.npm"]
pre_deploy = ["npm install --prefer-offline --no-audit --no-fund --loglevel=error"]'
}

# One build: its hooks' wall milliseconds.
build_ms() {
  local kind=$1 repo=$2
  echo "$RANDOM" >> "$repo/$( [ "$kind" = java ] && echo src/main/resources/version.txt || echo version.txt)"
  git -C "$repo" -c user.email=b@x -c user.name=b commit -qam "change" > /dev/null
  "$SLIPCTL" --home "$HOME_DIR" --output json deploy "$kind" test --dry-run \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(h["elapsed_ms"] for h in d["build"]))'
}

echo "kind   run  cold_ms  warm_ms"
for kind in $KINDS; do
  repo=$DIR/$kind; "make_$kind" "$repo"
  git -C "$repo" init -q -b main && git -C "$repo" add -A && git -C "$repo" -c user.email=b@x -c user.name=b commit -qm c1
  cat > "$DIR/$kind.toml" <<EOF
name = "$kind"
repo = "$repo"
[build]
$BUILD
timeout_secs = 600
[target]
deploy_to = "/srv/$kind"
[env.test]
hosts = ["role=web"]
EOF
  "$SLIPCTL" --home "$HOME_DIR" project apply -f "$DIR/$kind.toml" > /dev/null
  build_ms "$kind" "$repo" > /dev/null   # untimed: the first build of the process and the disk
  cold_all=(); warm_all=()
  for run in $(seq 1 "$RUNS"); do
    "$SLIPCTL" --home "$HOME_DIR" cache clear "$kind" > /dev/null
    cold=$(build_ms "$kind" "$repo")
    warm=$(build_ms "$kind" "$repo")
    cold_all+=("$cold"); warm_all+=("$warm")
    printf "%-6s %3d  %7d  %7d\n" "$kind" "$run" "$cold" "$warm"
  done
  python3 - "$kind" "${cold_all[*]}" "${warm_all[*]}" <<'EOF'
import statistics, sys
kind, cold, warm = sys.argv[1], [int(x) for x in sys.argv[2].split()], [int(x) for x in sys.argv[3].split()]
c, w = statistics.median(cold), statistics.median(warm)
print(f"{kind}: median cold {c:.0f} ms, warm {w:.0f} ms: warm/cold = {w / c:.2f}")
EOF
done
