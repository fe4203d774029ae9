#!/usr/bin/env bash
# Installs what Tether's build and tests need and is missing, from rustup and the
# package registries only. Idempotent: a second run checks, prints and installs nothing.
#
#   scripts/bootstrap.sh run    what `scripts/run.sh` needs (the Rust tools)
#   scripts/bootstrap.sh test   that, plus the browser-test tools (npm packages, Chromium)
#
# Sourced by scripts/run.sh and scripts/test.sh, which call `bootstrap run|test`.

# Pinned: newer cargo-leptos releases need a newer rustc than 1.95.
CARGO_LEPTOS_VERSION=0.3.10
TETHER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Tools that do not come from cargo (wasm-opt) live outside the clone, so fresh clones reuse them.
TETHER_TOOLS_DIR="${TETHER_TOOLS_DIR:-$HOME/.cache/tether/tools}"
export PATH="$HOME/.cargo/bin:$TETHER_TOOLS_DIR/node_modules/.bin:$PATH"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; return 1; }

# Runs a command as root: directly when we are root, else through sudo if there is one.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else return 1
  fi
}

# The version of a package pinned in Cargo.lock.
locked_version() {
  awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/version = |"/, ""); print; exit }' \
    "$TETHER_ROOT/Cargo.lock"
}

need_rust() {
  command -v cargo >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1 ||
    die "cargo and rustup are needed: install Rust with rustup (https://rustup.rs), then run this again."
}

ensure_wasm_target() {
  if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    say "ok: rust target wasm32-unknown-unknown"
  else
    say "installing rust target wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
  fi
}

ensure_cargo_leptos() {
  if cargo leptos --version 2>/dev/null | grep -qw "$CARGO_LEPTOS_VERSION"; then
    say "ok: cargo-leptos $CARGO_LEPTOS_VERSION"
  else
    say "installing cargo-leptos $CARGO_LEPTOS_VERSION (about 13 minutes on 2 cores, once)"
    cargo install cargo-leptos --version "$CARGO_LEPTOS_VERSION" --locked
  fi
}

# cargo-leptos would download wasm-bindgen itself, which cannot work offline; and the
# CLI must match the wasm-bindgen crate exactly.
ensure_wasm_bindgen() {
  local want
  want="$(locked_version wasm-bindgen)"
  [ -n "$want" ] || die "no wasm-bindgen in Cargo.lock"
  if [ "$(wasm-bindgen --version 2>/dev/null)" = "wasm-bindgen $want" ]; then
    say "ok: wasm-bindgen $want"
  else
    say "installing wasm-bindgen-cli $want (about 2 minutes, once)"
    # Not --locked: its lock file names a crate version the registry no longer serves.
    cargo install wasm-bindgen-cli --version "$want" --force
  fi
}

ensure_wasm_opt() {
  if wasm-opt --version >/dev/null 2>&1; then
    say "ok: $(wasm-opt --version)"
  else
    command -v npm >/dev/null 2>&1 || die "npm is needed for wasm-opt (binaryen): install Node.js and npm."
    say "installing wasm-opt (npm package binaryen) into $TETHER_TOOLS_DIR"
    mkdir -p "$TETHER_TOOLS_DIR"
    npm install --prefix "$TETHER_TOOLS_DIR" --no-audit --no-fund --loglevel=error binaryen
  fi
}

ensure_end2end_packages() {
  local dir="$TETHER_ROOT/end2end"
  command -v npm >/dev/null 2>&1 || die "npm is needed for the browser tests: install Node.js and npm."
  if [ -f "$dir/node_modules/.package-lock.json" ] &&
     [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
    say "ok: end2end npm packages"
  else
    say "installing end2end npm packages (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

ensure_chromium() {
  if "$CHROMIUM_PATH" --version >/dev/null 2>&1; then
    say "ok: $("$CHROMIUM_PATH" --version 2>/dev/null)"
    return
  fi
  if [ "$CHROMIUM_PATH" = /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's chromium (apt-get)"
    if as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; then
      return
    fi
  fi
  die "the browser tests need Chromium at $CHROMIUM_PATH and it could not be installed.
  On Debian or Ubuntu: sudo apt-get install chromium
  Elsewhere: install Chromium or Chrome and set CHROMIUM_PATH to its executable."
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# The broker Tether and its tests use: RabbitMQ on 127.0.0.1:5672. Started (and
# installed from Debian's packages) when missing.
ensure_rabbitmq() {
  if port_open 127.0.0.1 5672; then
    echo "RabbitMQ is listening on 127.0.0.1:5672"
    return
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "installing Debian's rabbitmq-server (apt-get)"
    as_root apt-get update -qq &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server ||
      { echo "cannot install rabbitmq-server: install it, or start a broker on 127.0.0.1:5672" >&2; return 1; }
  fi
  port_open 127.0.0.1 5672 && return
  echo "starting RabbitMQ (rabbitmq-server -detached)"
  as_root rabbitmq-server -detached || return 1
  for _ in $(seq 120); do
    port_open 127.0.0.1 5672 && { echo "RabbitMQ is up"; return; }
    sleep 1
  done
  echo "RabbitMQ did not open 127.0.0.1:5672 within 120 s" >&2
  return 1
}

# The storage tests run against PostgreSQL too (TETHER_TEST_DATABASE_URL, default the
# local server's `test` database with trust auth, as on Debian's CI machines).
ensure_postgres() {
  if [ -n "${TETHER_TEST_DATABASE_URL:-}" ]; then
    echo "PostgreSQL for tests: $TETHER_TEST_DATABASE_URL (given)"
    return
  fi
  if port_open 127.0.0.1 5432; then
    echo "PostgreSQL is listening on 127.0.0.1:5432"
    return
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "installing Debian's postgresql (apt-get)"
    as_root apt-get update -qq &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql ||
      { echo "cannot install postgresql: install it, or set TETHER_TEST_DATABASE_URL" >&2; return 1; }
  fi
  echo "starting PostgreSQL"
  as_root service postgresql start || true
  for _ in $(seq 60); do
    port_open 127.0.0.1 5432 && break
    sleep 1
  done
  port_open 127.0.0.1 5432 || { echo "PostgreSQL did not open 127.0.0.1:5432 within 60 s" >&2; return 1; }
  # A fresh Debian install asks for passwords over TCP: the tests need a `test`
  # database the postgres user reaches from this machine.
  if ! psql "postgres://postgres@127.0.0.1:5432/test" -c 'select 1' >/dev/null 2>&1; then
    as_root su postgres -c "psql -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null &&
      { as_root su postgres -c "createdb test" 2>/dev/null || true; } ||
      { echo "cannot prepare PostgreSQL for the tests; set TETHER_TEST_DATABASE_URL" >&2; return 1; }
    export TETHER_TEST_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/test"
  fi
  echo "PostgreSQL is up"
}

# The broker's interop test drives it with pika, a client nobody here wrote: Debian's
# python3-pika (which brings python3).
ensure_pika() {
  if "${TETHER_PYTHON:-/usr/bin/python3}" -c 'import pika' >/dev/null 2>&1; then
    say "ok: pika for ${TETHER_PYTHON:-/usr/bin/python3}"
    return
  fi
  [ -z "${TETHER_PYTHON:-}" ] || die "TETHER_PYTHON=$TETHER_PYTHON cannot import pika: pip install pika there, or unset it"
  say "installing Debian's python3-pika (apt-get)"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pika ||
    die "the broker interop test needs Python's pika: sudo apt-get install python3-pika (or set TETHER_PYTHON to a python with pika)"
}

bootstrap() {
  local purpose="${1:-run}"
  need_rust || return 1
  ensure_wasm_target || return 1
  ensure_wasm_bindgen || return 1
  ensure_wasm_opt || return 1
  ensure_cargo_leptos || return 1
  if [ "$purpose" = test ]; then
    ensure_end2end_packages || return 1
    ensure_chromium || return 1
    ensure_pika || return 1
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-run}" in
    run|test) bootstrap "${1:-run}" ;;
    *) echo "usage: $0 [run|test]" >&2; exit 2 ;;
  esac
fi
