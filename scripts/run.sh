#!/usr/bin/env bash
# Runs Tether: installs what is missing, builds the release site and server, serves it.
#
#   TETHER_ADDR=0.0.0.0:8080 scripts/run.sh     serve elsewhere (default 127.0.0.1:3000)
#
# Every other argument is passed to tether-server (see `--help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
bootstrap run
cd "$TETHER_ROOT"

echo "run: building the release site and server (cargo leptos build --release)"
cargo leptos build --release

export TETHER_SITE_ROOT="${TETHER_SITE_ROOT:-$TETHER_ROOT/target/site}"
export LEPTOS_ENV=PROD
export RUST_LOG="${RUST_LOG:-info}"
exec "${CARGO_TARGET_DIR:-$TETHER_ROOT/target}/release/tether-server" "$@"
