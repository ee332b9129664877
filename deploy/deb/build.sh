#!/usr/bin/env bash
# Build the two Debian packages (release binaries) into target/debian/:
#   slipd_<version>_<arch>.deb   the agent, its two systemd units, /etc/slipway/agent.toml.example
#   slipctl_<version>_<arch>.deb the controller and server, its unit, /etc/default/slipctl
# Needs cargo-deb (cargo install cargo-deb --locked). Extra arguments go to each `cargo deb`.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 2; }
for package in slipway-agent slipway-controller; do
  cargo deb --locked -p "$package" "$@"
done
ls -l target/debian/*.deb
