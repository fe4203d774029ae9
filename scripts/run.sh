#!/usr/bin/env bash
# Runs Tether: installs what is missing, builds the release site, server and agent,
# starts three simulated devices so the fleet is not empty, and serves the UI until
# Ctrl-C. With TETHER_AMQP_URL unset the server runs its own embedded broker (on
# TETHER_BROKER_ADDR, default 127.0.0.1:5673; nothing is persisted), so nothing needs to
# be installed or running beforehand.
#
#   TETHER_ADDR=0.0.0.0:8080 scripts/run.sh     serve elsewhere (default 127.0.0.1:3000)
#   TETHER_AMQP_URL=amqp://… scripts/run.sh     use RabbitMQ (or another broker) instead
#   TETHER_SIMULATE=0 scripts/run.sh            no simulated devices
#
# Every other argument is passed to tether-server (see `--help`).
#
# Nobody may use Tether without logging in: when its database has no user yet, this
# script creates the admin `admin` and prints the password (change it on the account
# page).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
bootstrap run
cd "$TETHER_ROOT"

# Where the simulated devices connect: the given broker, or the server's embedded one
# (they retry until the server is up).
agents_url="${TETHER_AMQP_URL:-amqp://${TETHER_BROKER_USER:-guest}:${TETHER_BROKER_PASSWORD:-guest}@${TETHER_BROKER_ADDR:-127.0.0.1:5673}/%2f}"

echo "run: building the release site, server and agent"
cargo leptos build --release
cargo build --release -p agent --bin tether-agent

target="${CARGO_TARGET_DIR:-$TETHER_ROOT/target}/release"
simulate="${TETHER_SIMULATE:-3}"
if [ "$simulate" -gt 0 ]; then
  echo "run: starting $simulate simulated devices (tether-agent --simulate $simulate)"
  TETHER_AMQP_URL="$agents_url" RUST_LOG="${RUST_LOG:-warn}" "$target/tether-agent" --simulate "$simulate" --device-id demo &
  agents=$!
  trap 'kill "$agents" 2>/dev/null || true' EXIT
fi

export TETHER_SITE_ROOT="${TETHER_SITE_ROOT:-$TETHER_ROOT/target/site}"
export LEPTOS_ENV=PROD
export RUST_LOG="${RUST_LOG:-info}"
if [ "${TETHER_DATABASE_URL:-}" != none ] && [ -z "$("$target/tether-server" "$@" user list 2>/dev/null)" ]; then
  echo "run: no user yet; creating the admin \"admin\" (log in with the password below)"
  echo "run: ------------------------------------------------------------"
  "$target/tether-server" "$@" user add admin --role admin ||
    echo "run: could not create it; open the first-run link the server prints below instead"
  echo "run: ------------------------------------------------------------"
fi
"$target/tether-server" "$@"
