#!/usr/bin/env bash
# Runs Tether: installs what is missing, makes sure a broker is up (RabbitMQ on
# 127.0.0.1:5672 unless TETHER_AMQP_URL points elsewhere), builds the release site,
# server and agent, starts three simulated devices so the fleet is not empty, and
# serves the UI until Ctrl-C.
#
#   TETHER_ADDR=0.0.0.0:8080 scripts/run.sh     serve elsewhere (default 127.0.0.1:3000)
#   TETHER_SIMULATE=0 scripts/run.sh            no simulated devices
#
# Every other argument is passed to tether-server (see `--help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
bootstrap run
cd "$TETHER_ROOT"

if [ -z "${TETHER_AMQP_URL:-}" ]; then
  ensure_rabbitmq
  export TETHER_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
fi

echo "run: building the release site, server and agent"
cargo leptos build --release
cargo build --release -p agent --bin tether-agent

target="${CARGO_TARGET_DIR:-$TETHER_ROOT/target}/release"
simulate="${TETHER_SIMULATE:-3}"
if [ "$simulate" -gt 0 ]; then
  echo "run: starting $simulate simulated devices (tether-agent --simulate $simulate)"
  RUST_LOG="${RUST_LOG:-warn}" "$target/tether-agent" --simulate "$simulate" --device-id demo &
  agents=$!
  trap 'kill "$agents" 2>/dev/null || true' EXIT
fi

export TETHER_SITE_ROOT="${TETHER_SITE_ROOT:-$TETHER_ROOT/target/site}"
export LEPTOS_ENV=PROD
export RUST_LOG="${RUST_LOG:-info}"
"$target/tether-server" "$@"
