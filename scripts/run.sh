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
# (they retry until the server is up). Each logs in as itself, with the secret it was
# provisioned with (kept, readable by this user only, in the data folder).
agents_url="${TETHER_AMQP_URL:-amqp://${TETHER_BROKER_ADDR:-127.0.0.1:5673}/%2f}"
data_dir="${TETHER_DATA_DIR:-tether-data}"
secrets="$data_dir/demo-devices.secrets"

echo "run: building the release site, server and agent"
# --split: pages loaded on demand are files of their own (app/src/routes.rs).
cargo leptos build --release --split
# The main JS and WASM get names their on-demand files' change too (a browser keeps
# each hashed file for a year).
node scripts/rehash-split.mjs target/site/pkg "${CARGO_TARGET_DIR:-$TETHER_ROOT/target}/release/hash.txt"
cargo build --release -p agent --bin tether-agent

target="${CARGO_TARGET_DIR:-$TETHER_ROOT/target}/release"
simulate="${TETHER_SIMULATE:-3}"
export TETHER_SITE_ROOT="${TETHER_SITE_ROOT:-$TETHER_ROOT/target/site}"
export LEPTOS_ENV=PROD
export RUST_LOG="${RUST_LOG:-info}"

# The demo devices' ids, as `tether-agent --simulate N --device-id demo --kind mixed`
# names them: demo-<kind>-<n>, the kinds in turn.
demo_ids() {
  local kinds=(thermostat switch gateway) n
  for ((n = 1; n <= simulate; n++)); do echo "demo-${kinds[$(((n - 1) % 3))]}-$n"; done
}

# Each demo device gets an account the first time (or a new secret when its old one
# was lost), its secret appended to $secrets; a line of a device the database no
# longer has is dropped.
provision_demo_devices() {
  mkdir -p "$data_dir"
  touch "$secrets" && chmod 600 "$secrets"
  local id listed
  listed="$("$target/tether-server" "$@" device list | cut -f1)" || return 1
  for id in $(demo_ids); do
    if grep -qx "$id" <<<"$listed"; then
      grep -q "^$id " "$secrets" && continue
      "$target/tether-server" "$@" device rotate "$id" --secrets-file "$secrets" >/dev/null || return 1
    else
      sed -i "/^$id /d" "$secrets"
      "$target/tether-server" "$@" device add "$id" --secrets-file "$secrets" >/dev/null || return 1
    fi
  done
}

if [ "$simulate" -gt 0 ]; then
  if [ "${TETHER_DATABASE_URL:-}" = none ]; then
    echo "run: TETHER_DATABASE_URL=none keeps no device accounts: no simulated devices (set TETHER_SIMULATE=0 to silence this)"
  elif ! provision_demo_devices "$@"; then
    echo "run: could not provision the demo devices (see above); starting without them"
  else
    echo "run: starting $simulate simulated devices (tether-agent --simulate $simulate, each with its own account)"
    # Agents obey the server account; with the embedded broker it is TETHER_BROKER_USER.
    server_account="${TETHER_BROKER_USER:-tether-server}"
    if [ -n "${TETHER_AMQP_URL:-}" ]; then
      server_account="$(printf '%s' "$TETHER_AMQP_URL" | sed -n 's#^amqps\{0,1\}://\([^:@/]*\)[:@].*#\1#p')"
      server_account="${server_account:-guest}"
      # Devices log in to RabbitMQ through Tether's auth backend (README).
    fi
    TETHER_AMQP_URL="$agents_url" TETHER_SECRETS_FILE="$secrets" TETHER_SERVER_ACCOUNTS="$server_account" \
      RUST_LOG="${RUST_LOG_AGENTS:-warn}" "$target/tether-agent" --simulate "$simulate" --device-id demo &
    agents=$!
    trap 'kill "$agents" 2>/dev/null || true' EXIT
  fi
fi

if [ "${TETHER_DATABASE_URL:-}" != none ] && [ -z "$("$target/tether-server" "$@" user list 2>/dev/null)" ]; then
  echo "run: no user yet; creating the admin \"admin\" (log in with the password below)"
  echo "run: ------------------------------------------------------------"
  "$target/tether-server" "$@" user add admin --role admin ||
    echo "run: could not create it; open the first-run link the server prints below instead"
  echo "run: ------------------------------------------------------------"
fi
"$target/tether-server" "$@"
