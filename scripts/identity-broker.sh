#!/usr/bin/env bash
# A RabbitMQ node of the tests' own that admits devices the way a deployment does
# (README, "With RabbitMQ, Tether can decide which devices get in"): RabbitMQ's internal
# accounts first (guest, the servers' account, from this machine only), then RabbitMQ's
# HTTP auth backend answered by a tether-server that exists only for that, with its own
# SQLite database of devices. The shared RabbitMQ on 127.0.0.1:5672 is not touched.
#
#   scripts/identity-broker.sh start   start both (or reuse them when they are up and
#                                      healthy; restart them when stale); idempotent
#   scripts/identity-broker.sh stop    stop the node (rabbitmqctl stop), then the server
#   scripts/identity-broker.sh env     print `export` lines for the tests:
#       TETHER_TEST_IDENTITY_AMQP_URL   amqp://guest:guest@127.0.0.1:<port>/%2f
#       TETHER_TEST_IDENTITY_DATABASE   sqlite://<dir>/devices.db, the auth server's
#                                       database (tests provision devices in it with the
#                                       store crate; SQLite WAL, safe across processes)
#       TETHER_TEST_IDENTITY_AUTH_URL   http://127.0.0.1:<port>, the auth server
#   scripts/identity-broker.sh status  exit status 0 when both are up and healthy
#
# Settings (environment):
#   TETHER_IDENTITY_DIR         state folder        /var/tmp/tether-identity-broker
#   TETHER_IDENTITY_AMQP_PORT   the node's AMQP     5674
#   TETHER_IDENTITY_DIST_PORT   its Erlang dist     AMQP port + 20000 (25674)
#   TETHER_IDENTITY_AUTH_PORT   the auth server     3674
#   TETHER_IDENTITY_NODE        the node's name     tether-identity@localhost
#   TETHER_IDENTITY_TIMEOUT     start-up limit, s   120
#   TETHER_SERVER_BIN           tether-server; else ${CARGO_TARGET_DIR:-target}/debug/
#                               tether-server, built (debug, as cargo test builds it) if missing
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"

DIR="${TETHER_IDENTITY_DIR:-/var/tmp/tether-identity-broker}"
AMQP_PORT="${TETHER_IDENTITY_AMQP_PORT:-5674}"
DIST_PORT="${TETHER_IDENTITY_DIST_PORT:-$((AMQP_PORT + 20000))}"
AUTH_PORT="${TETHER_IDENTITY_AUTH_PORT:-3674}"
NODE="${TETHER_IDENTITY_NODE:-tether-identity@localhost}"
TIMEOUT="${TETHER_IDENTITY_TIMEOUT:-120}"

DATABASE_URL="sqlite://$DIR/devices.db"
SERVER_DIR="$DIR/server"            # the auth server's cwd, data dir, log and pid
SERVER_LOG="$SERVER_DIR/server.log"
SERVER_PID="$SERVER_DIR/server.pid"
SERVER_STAMP="$SERVER_DIR/binary"   # which binary (path, mtime) it runs
RABBIT_DIR="$DIR/rabbit"            # the node's files; the rabbitmq user's when root
RABBIT_CONF="$RABBIT_DIR/rabbitmq.conf"
RABBIT_LOGS="$RABBIT_DIR/log"
RABBIT_PID="$RABBIT_DIR/rabbitmq.pid"

NAME=identity-broker
SETTINGS=TETHER_IDENTITY
AUTH_URL="http://127.0.0.1:$AUTH_PORT"
OWN_AUTH=1
ADMIN_USER=identity-admin
# shellcheck source=scripts/lib/auth-server.sh
. "$ROOT/scripts/lib/auth-server.sh"

for port in "$AMQP_PORT" "$DIST_PORT" "$AUTH_PORT"; do
  case "$port" in
    '' | *[!0-9]*) fail "ports must be numbers (TETHER_IDENTITY_*_PORT): got '$port'" ;;
    5672 | 5673 | 25672 | 15672 | 4369) fail "port $port belongs to the shared RabbitMQ or epmd: choose another (TETHER_IDENTITY_*_PORT)" ;;
  esac
done

# --- the RabbitMQ node ----------------------------------------------------------------

# RabbitMQ's settings for this node; also passed through Debian's wrapper, which runs
# the node and rabbitmqctl as the rabbitmq user (su keeps the environment).
export RABBITMQ_NODENAME="$NODE"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$AMQP_PORT"
export RABBITMQ_DIST_PORT="$DIST_PORT"
export RABBITMQ_CONFIG_FILE="$RABBIT_CONF"
export RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
export RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
export RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
export RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
export RABBITMQ_LOG_BASE="$RABBIT_LOGS"
export RABBITMQ_PID_FILE="$RABBIT_PID"
# Not in the cwd Debian's wrapper gives it (/var/lib/rabbitmq, the shared node's).
export ERL_CRASH_DUMP="$RABBIT_LOGS/erl_crash.dump"

rabbit_config() {
  cat <<EOF
# Written by scripts/identity-broker.sh: RabbitMQ's accounts first (guest, the
# servers'), then Tether's HTTP auth backend for devices.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
auth_backends.1 = internal
auth_backends.2 = http
auth_http.http_method   = post
auth_http.user_path     = http://127.0.0.1:$AUTH_PORT/auth/rabbitmq/user
auth_http.vhost_path    = http://127.0.0.1:$AUTH_PORT/auth/rabbitmq/vhost
auth_http.resource_path = http://127.0.0.1:$AUTH_PORT/auth/rabbitmq/resource
auth_http.topic_path    = http://127.0.0.1:$AUTH_PORT/auth/rabbitmq/topic
EOF
}

# rabbitmqctl for this node, within a time limit.
ctl() { timeout "${CTL_TIMEOUT:-60}" rabbitmqctl -q -n "$NODE" "$@"; }

node_pid() { live_pid "$RABBIT_PID" beam; }

node_healthy() {
  node_pid >/dev/null && port_open 127.0.0.1 "$AMQP_PORT" &&
    CTL_TIMEOUT=30 ctl ping >/dev/null 2>&1 &&
    cmp -s <(rabbit_config) "$RABBIT_CONF"
}

stop_node() {
  local pid
  if ! pid="$(node_pid)"; then
    rm -f "$RABBIT_PID"
    # Its pid file lost (the state folder deleted under it), the node may still run.
    if CTL_TIMEOUT=30 ctl ping >/dev/null 2>&1; then
      say "stopping RabbitMQ node $NODE (no pid file)"
      CTL_TIMEOUT=60 ctl stop >/dev/null 2>&1 || say "rabbitmqctl -n $NODE stop failed"
    fi
    return 0
  fi
  say "stopping RabbitMQ node $NODE (pid $pid)"
  CTL_TIMEOUT=60 ctl stop >/dev/null 2>&1 || say "rabbitmqctl stop failed; stopping the process"
  local i
  for i in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$RABBIT_PID"; return 0; }
    [ "$i" = 50 ] && kill -TERM "$pid" 2>/dev/null
    sleep 0.2
  done
  say "node $NODE did not stop within 30 s: killing it"
  kill -KILL "$pid" 2>/dev/null
  rm -f "$RABBIT_PID"
}

start_node() {
  command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null 2>&1 ||
    fail "rabbitmq-server is not installed (scripts/bootstrap.sh's ensure_rabbitmq installs Debian's)"
  for port in "$AMQP_PORT" "$DIST_PORT"; do
    port_open 127.0.0.1 "$port" &&
      fail "127.0.0.1:$port is taken by something else: stop it, or choose TETHER_IDENTITY_AMQP_PORT / TETHER_IDENTITY_DIST_PORT"
  done
  mkdir -p "$RABBIT_DIR/mnesia" "$RABBIT_LOGS" || fail "cannot create $RABBIT_DIR"
  rabbit_config >"$RABBIT_CONF"
  echo '[rabbitmq_auth_backend_http].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  # Instead of /etc/rabbitmq/rabbitmq-env.conf (which names the shared node): only
  # Erlang distribution on loopback, as the shared node has it.
  cat >"$RABBITMQ_CONF_ENV_FILE" <<'EOF'
# Written by scripts/identity-broker.sh
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
# As many open files as the machine allows: RabbitMQ keeps about 90 % of them for
# sockets, and the soft limit su leaves (1,024) would stop it at 832 connections,
# short of a large simulated fleet. Sourced by the node's own start script, after su.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
EOF
  # Debian's wrapper runs RabbitMQ as the rabbitmq user, which must own its files.
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq: "$RABBIT_DIR" || fail "cannot give $RABBIT_DIR to the rabbitmq user"
  fi
  rm -f "$RABBIT_PID"
  say "starting RabbitMQ node $NODE on 127.0.0.1:$AMQP_PORT (files in $RABBIT_DIR)"
  # In the background rather than -detached, which throws away what the node says
  # before its log opens (a configuration it cannot read, say) and hides its exit.
  local startup_log="$RABBIT_LOGS/startup.log" launcher pid
  printf '=== %s: started\n' "$(date -u +%FT%TZ)" >>"$startup_log"
  (cd / && exec setsid rabbitmq-server </dev/null >>"$startup_log" 2>&1) &
  launcher=$!
  local deadline=$((SECONDS + TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ! kill -0 "$launcher" 2>/dev/null; then
      # What it said since this start: the reason comes first, the crash report after.
      printf -- '--- what the node said (%s):\n' "$startup_log" >&2
      awk '/^=== .*: started$/ { n = 0; delete line } { line[++n] = $0 }
           END { for (i = 2; i <= n && i <= 25; i++) print "    " line[i] }' "$startup_log" >&2
      fail "RabbitMQ node $NODE exited while starting (logs: $RABBIT_LOGS)"
    fi
    if pid="$(node_pid)" &&
      CTL_TIMEOUT=$((deadline - SECONDS + 5)) ctl await_startup --timeout $((deadline - SECONDS)) >/dev/null 2>&1 &&
      port_open 127.0.0.1 "$AMQP_PORT"; then
      say "RabbitMQ node $NODE is up (pid $pid)"
      return 0
    fi
    sleep 1
  done
  tail_log "$startup_log" "$RABBIT_LOGS/$NODE.log"
  stop_node
  kill -TERM "$launcher" 2>/dev/null
  fail "RabbitMQ node $NODE did not start within $TIMEOUT s (logs: $RABBIT_LOGS; TETHER_IDENTITY_TIMEOUT)"
}

# --- commands -------------------------------------------------------------------------

start() {
  local t0=$SECONDS bin
  mkdir -p "$DIR" || fail "cannot create $DIR (TETHER_IDENTITY_DIR)"
  chmod 755 "$DIR"
  bin="$(server_bin)" || exit 1
  if server_healthy && [ "$(stamp_of "$bin")" = "$(cat "$SERVER_STAMP" 2>/dev/null)" ]; then
    say "the auth server is up on 127.0.0.1:$AUTH_PORT (pid $(cat "$SERVER_PID")): reusing it"
  else
    if live_pid "$SERVER_PID" tether-server >/dev/null; then
      say "the auth server is stale (not answering, or its binary was rebuilt): restarting it"
    fi
    stop_server
    start_server "$bin"
  fi
  if node_healthy; then
    say "RabbitMQ node $NODE is up on 127.0.0.1:$AMQP_PORT (pid $(node_pid)): reusing it"
  else
    if node_pid >/dev/null; then
      say "RabbitMQ node $NODE is stale (not answering, or its configuration changed): restarting it"
    fi
    stop_node
    start_node
  fi
  say "ready in $((SECONDS - t0)) s: $(print_env | tr '\n' ' ')"
}

print_env() {
  echo "export TETHER_TEST_IDENTITY_AMQP_URL='amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f'"
  echo "export TETHER_TEST_IDENTITY_DATABASE='$DATABASE_URL'"
  echo "export TETHER_TEST_IDENTITY_AUTH_URL='http://127.0.0.1:$AUTH_PORT'"
}

status() {
  local ok=0
  if server_healthy; then say "auth server: up (pid $(cat "$SERVER_PID"), 127.0.0.1:$AUTH_PORT)"
  else say "auth server: down or not answering"; ok=1; fi
  if node_healthy; then say "RabbitMQ node $NODE: up (pid $(node_pid), 127.0.0.1:$AMQP_PORT)"
  else say "RabbitMQ node $NODE: down, not answering, or configured differently"; ok=1; fi
  return "$ok"
}

case "${1:-}" in
  start) start ;;
  stop) stop_node; stop_server; say "stopped" ;;
  env) print_env ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|env|status" >&2
    exit 2
    ;;
esac
