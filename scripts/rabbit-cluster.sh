#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for running Tether where one broker is
# not enough (README, "Run Tether on a RabbitMQ cluster") and for the tests that stop a
# node under load (server/tests/cluster.rs). Each node has a name, ports, configuration,
# mnesia and log folders of its own; all run as the rabbitmq user through Debian's
# wrapper (as scripts/identity-broker.sh runs its node), so they share that user's
# Erlang cookie, and are joined with `rabbitmqctl join_cluster`. Devices are admitted
# as a deployment admits them: RabbitMQ's internal accounts first (guest, the servers',
# from this machine only), then Tether's HTTP auth backend, answered by a tether-server
# this script starts with a SQLite database of devices of its own (or by the server at
# TETHER_CLUSTER_AUTH_URL). The shared RabbitMQ on 127.0.0.1:5672 is not touched.
#
#   scripts/rabbit-cluster.sh start         start the auth server and the three nodes and
#                                           join them (or reuse them when all are up,
#                                           healthy and clustered; else start afresh,
#                                           the nodes' old state deleted); idempotent
#   scripts/rabbit-cluster.sh stop          stop every node, then the auth server
#   scripts/rabbit-cluster.sh status        exit status 0 when all are up and clustered
#   scripts/rabbit-cluster.sh env           print `export` lines:
#       TETHER_TEST_CLUSTER_AMQP_URLS       the three nodes' server URLs, comma-separated
#                                           (what TETHER_AMQP_URL takes)
#       TETHER_TEST_CLUSTER_AMQP_URL_<N>    node N's alone (N = 1, 2, 3)
#       TETHER_TEST_CLUSTER_AUTH_URL        the auth server
#       TETHER_TEST_CLUSTER_DATABASE        sqlite://<dir>/devices.db, its device database
#                                           (empty with TETHER_CLUSTER_AUTH_URL)
#       and the TETHER_CLUSTER_* settings below, so that a test calling this script
#       (stop-node, start-node) reaches the same cluster
#   scripts/rabbit-cluster.sh stop-node N   stop node N (rabbitmqctl stop), keeping its
#                                           files: its connections close, its quorum
#                                           queue replicas wait for it
#   scripts/rabbit-cluster.sh start-node N  start node N again; it rejoins the cluster
#   scripts/rabbit-cluster.sh users N       the users connected to node N, one a line per
#                                           connection (which devices are on which node)
#
# Settings (environment):
#   TETHER_CLUSTER_DIR          state folder                 /var/tmp/tether-rabbit-cluster
#   TETHER_CLUSTER_AMQP_PORT    node 1's AMQP; N's is +N-1   5681 (5681, 5682, 5683)
#   TETHER_CLUSTER_DIST_PORT    node 1's Erlang dist; +N-1   AMQP port + 20000 (25681..)
#   TETHER_CLUSTER_NODE_PREFIX  node N is <prefix>N@localhost  tether-c
#   TETHER_CLUSTER_AUTH_PORT    the auth server this starts  3681
#   TETHER_CLUSTER_AUTH_URL     an auth server of your own instead (none is started)
#   TETHER_CLUSTER_TIMEOUT      start-up limit per node, s   120
#   TETHER_SERVER_BIN           tether-server; else ${CARGO_TARGET_DIR:-target}/debug/
#                               tether-server, built (debug, as cargo test builds it) if missing
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"

DIR="${TETHER_CLUSTER_DIR:-/var/tmp/tether-rabbit-cluster}"
AMQP_PORT="${TETHER_CLUSTER_AMQP_PORT:-5681}"
DIST_PORT="${TETHER_CLUSTER_DIST_PORT:-$((AMQP_PORT + 20000))}"
PREFIX="${TETHER_CLUSTER_NODE_PREFIX:-tether-c}"
AUTH_PORT="${TETHER_CLUSTER_AUTH_PORT:-3681}"
AUTH_URL="${TETHER_CLUSTER_AUTH_URL:-}"
TIMEOUT="${TETHER_CLUSTER_TIMEOUT:-120}"
NODES=(1 2 3)

OWN_AUTH=1
if [ -n "$AUTH_URL" ]; then
  OWN_AUTH=0
  AUTH_URL="${AUTH_URL%/}"
  case "$AUTH_URL" in http://* | https://*) ;; *) printf 'rabbit-cluster: error: TETHER_CLUSTER_AUTH_URL must be an http(s) URL: got %s\n' "$AUTH_URL" >&2; exit 1 ;; esac
else
  AUTH_URL="http://127.0.0.1:$AUTH_PORT"
fi
DATABASE_URL="sqlite://$DIR/devices.db"
SERVER_DIR="$DIR/server"            # the auth server's cwd, data dir, log and pid
SERVER_LOG="$SERVER_DIR/server.log"
SERVER_PID="$SERVER_DIR/server.pid"
SERVER_STAMP="$SERVER_DIR/binary"   # which binary (path, mtime) it runs

NAME=rabbit-cluster
SETTINGS=TETHER_CLUSTER
ADMIN_USER=cluster-admin
# shellcheck source=scripts/lib/auth-server.sh
. "$ROOT/scripts/lib/auth-server.sh"

for port in "$AMQP_PORT" "$DIST_PORT" "$AUTH_PORT"; do
  case "$port" in
    '' | *[!0-9]*) fail "ports must be numbers (TETHER_CLUSTER_*_PORT): got '$port'" ;;
  esac
done
for n in "${NODES[@]}"; do
  for port in $((AMQP_PORT + n - 1)) $((DIST_PORT + n - 1)) "$([ "$OWN_AUTH" = 1 ] && echo "$AUTH_PORT")"; do
    case "$port" in
      5672 | 5673 | 25672 | 15672 | 4369) fail "port $port belongs to the shared RabbitMQ or epmd: choose other TETHER_CLUSTER_*_PORT" ;;
    esac
  done
done

# --- the nodes ------------------------------------------------------------------------

node_name() { printf '%s%s@localhost\n' "$PREFIX" "$1"; }
node_dir() { printf '%s/node%s\n' "$DIR" "$1"; }
node_amqp() { echo $((AMQP_PORT + $1 - 1)); }
node_dist() { echo $((DIST_PORT + $1 - 1)); }
node_url() { printf 'amqp://guest:guest@127.0.0.1:%s/%%2f\n' "$(node_amqp "$1")"; }

# RabbitMQ's settings for node $1, exported for rabbitmq-server and rabbitmqctl (which
# Debian's wrapper runs as the rabbitmq user; su keeps the environment). In a subshell
# each time, so that nodes never see each other's.
node_env() {
  local n="$1" dir
  dir="$(node_dir "$n")"
  export RABBITMQ_NODENAME="$(node_name "$n")"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$(node_amqp "$n")"
  export RABBITMQ_DIST_PORT="$(node_dist "$n")"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
  export ERL_CRASH_DUMP="$dir/log/erl_crash.dump"
}

rabbit_config() {
  cat <<EOF
# Written by scripts/rabbit-cluster.sh: RabbitMQ's accounts first (guest, the
# servers'), then Tether's HTTP auth backend for devices.
listeners.tcp.default = 127.0.0.1:$(node_amqp "$1")
loopback_users.guest = true
auth_backends.1 = internal
auth_backends.2 = http
auth_http.http_method   = post
auth_http.user_path     = $AUTH_URL/auth/rabbitmq/user
auth_http.vhost_path    = $AUTH_URL/auth/rabbitmq/vhost
auth_http.resource_path = $AUTH_URL/auth/rabbitmq/resource
auth_http.topic_path    = $AUTH_URL/auth/rabbitmq/topic
# A node that lost the others keeps serving what it can; a node stopped on purpose
# (stop-node) is no partition.
cluster_partition_handling = ignore
EOF
}

# rabbitmqctl for node $1, within a time limit.
ctl() {
  local n="$1"
  shift
  (node_env "$n" && timeout "${CTL_TIMEOUT:-60}" rabbitmqctl -q -n "$(node_name "$n")" "$@")
}

node_pid() { live_pid "$(node_dir "$1")/rabbitmq.pid" beam; }

node_up() {
  node_pid "$1" >/dev/null && port_open 127.0.0.1 "$(node_amqp "$1")" &&
    CTL_TIMEOUT=30 ctl "$1" ping >/dev/null 2>&1
}

node_healthy() {
  node_up "$1" && cmp -s <(rabbit_config "$1") "$(node_dir "$1")/rabbitmq.conf"
}

# The running nodes node $1 sees in its cluster, one a line.
running_nodes() {
  CTL_TIMEOUT=30 ctl "$1" eval 'rabbit_nodes:all_running().' 2>/dev/null |
    tr -d '[]\n ' | tr ',' '\n' | tr -d "'" | grep .
}

clustered() {
  local n seen
  for n in "${NODES[@]}"; do
    seen="$(running_nodes "$n" | sort | tr '\n' ' ')"
    [ "$seen" = "$(for m in "${NODES[@]}"; do node_name "$m"; done | sort | tr '\n' ' ')" ] || return 1
  done
}

stop_node() {
  local n="$1" name pid dir i
  name="$(node_name "$n")"
  dir="$(node_dir "$n")"
  if ! pid="$(node_pid "$n")"; then
    rm -f "$dir/rabbitmq.pid"
    # Its pid file lost (the state folder deleted under it), the node may still run.
    if [ -d "$dir" ] && CTL_TIMEOUT=30 ctl "$n" ping >/dev/null 2>&1; then
      say "stopping RabbitMQ node $name (no pid file)"
      CTL_TIMEOUT=60 ctl "$n" stop >/dev/null 2>&1 || say "rabbitmqctl -n $name stop failed"
    fi
    return 0
  fi
  say "stopping RabbitMQ node $name (pid $pid)"
  CTL_TIMEOUT=60 ctl "$n" stop >/dev/null 2>&1 || say "rabbitmqctl -n $name stop failed; stopping the process"
  for i in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/rabbitmq.pid"; return 0; }
    [ "$i" = 50 ] && kill -TERM "$pid" 2>/dev/null
    sleep 0.2
  done
  say "node $name did not stop within 30 s: killing it"
  kill -KILL "$pid" 2>/dev/null
  rm -f "$dir/rabbitmq.pid"
}

# Launches node $1 in the background (its files written first; `fresh` deletes its
# old state); wait_node waits for it.
launch_node() {
  local n="$1" fresh="${2:-}" dir name port
  dir="$(node_dir "$n")"
  name="$(node_name "$n")"
  for port in "$(node_amqp "$n")" "$(node_dist "$n")"; do
    port_open 127.0.0.1 "$port" &&
      fail "127.0.0.1:$port (for node $name) is taken by something else: stop it, or choose TETHER_CLUSTER_AMQP_PORT / TETHER_CLUSTER_DIST_PORT"
  done
  [ -n "$fresh" ] && rm -rf "$dir/mnesia"
  mkdir -p "$dir/mnesia" "$dir/log" || fail "cannot create $dir"
  rabbit_config "$n" >"$dir/rabbitmq.conf"
  echo '[rabbitmq_auth_backend_http].' >"$dir/enabled_plugins"
  cat >"$dir/rabbitmq-env.conf" <<'EOF'
# Written by scripts/rabbit-cluster.sh: Erlang distribution on loopback only, as the
# shared node has it, and as many open files as the machine allows.
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
EOF
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq: "$dir" || fail "cannot give $dir to the rabbitmq user"
  fi
  rm -f "$dir/rabbitmq.pid"
  say "starting RabbitMQ node $name on 127.0.0.1:$(node_amqp "$n") (dist $(node_dist "$n"), files in $dir)"
  printf '=== %s: started\n' "$(date -u +%FT%TZ)" >>"$dir/log/startup.log"
  (node_env "$n" && cd / && exec setsid rabbitmq-server </dev/null >>"$dir/log/startup.log" 2>&1) &
  echo $! >"$dir/launcher.pid"
}

wait_node() {
  local n="$1" dir name launcher pid deadline
  dir="$(node_dir "$n")"
  name="$(node_name "$n")"
  launcher="$(cat "$dir/launcher.pid")"
  deadline=$((SECONDS + TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ! kill -0 "$launcher" 2>/dev/null; then
      printf -- '--- what node %s said (%s):\n' "$name" "$dir/log/startup.log" >&2
      awk '/^=== .*: started$/ { n = 0; delete line } { line[++n] = $0 }
           END { for (i = 2; i <= n && i <= 25; i++) print "    " line[i] }' "$dir/log/startup.log" >&2
      tail_log "$dir/log/$name.log"
      fail "RabbitMQ node $name exited while starting (logs: $dir/log)"
    fi
    if pid="$(node_pid "$n")" &&
      CTL_TIMEOUT=$((deadline - SECONDS + 5)) ctl "$n" await_startup --timeout $((deadline - SECONDS)) >/dev/null 2>&1 &&
      port_open 127.0.0.1 "$(node_amqp "$n")"; then
      say "RabbitMQ node $name is up (pid $pid)"
      return 0
    fi
    sleep 1
  done
  tail_log "$dir/log/startup.log" "$dir/log/$name.log"
  stop_node "$n"
  kill -TERM "$launcher" 2>/dev/null
  fail "RabbitMQ node $name did not start within $TIMEOUT s (logs: $dir/log; TETHER_CLUSTER_TIMEOUT)"
}

# Joins node $1 to node 1's cluster.
join() {
  local n="$1" first
  first="$(node_name 1)"
  say "joining $(node_name "$n") to $first"
  { ctl "$n" stop_app && ctl "$n" join_cluster "$first" && ctl "$n" start_app; } >&2 ||
    { tail_log "$(node_dir "$n")/log/$(node_name "$n").log"; fail "cannot join $(node_name "$n") to $first"; }
}

# --- commands -------------------------------------------------------------------------

start() {
  local t0=$SECONDS bin="" n healthy=1
  command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null 2>&1 ||
    fail "rabbitmq-server is not installed (scripts/bootstrap.sh's ensure_rabbitmq installs Debian's)"
  mkdir -p "$DIR" || fail "cannot create $DIR (TETHER_CLUSTER_DIR)"
  chmod 755 "$DIR"
  if [ "$OWN_AUTH" = 1 ]; then
    bin="$(server_bin)" || exit 1
    if server_healthy && [ "$(stamp_of "$bin")" = "$(cat "$SERVER_STAMP" 2>/dev/null)" ]; then
      say "the auth server is up on 127.0.0.1:$AUTH_PORT (pid $(cat "$SERVER_PID")): reusing it"
    else
      live_pid "$SERVER_PID" tether-server >/dev/null &&
        say "the auth server is stale (not answering, or its binary was rebuilt): restarting it"
      stop_server
      start_server "$bin"
    fi
  else
    auth_answers || fail "the auth server at TETHER_CLUSTER_AUTH_URL=$AUTH_URL does not answer /auth/rabbitmq/user as Tether's does"
  fi
  for n in "${NODES[@]}"; do node_healthy "$n" || healthy=0; done
  if [ "$healthy" = 1 ] && clustered; then
    say "the cluster is up and whole: reusing it"
  else
    # A cluster half up, or stopped in another order than it is started, may wait for
    # peers for minutes: starting afresh takes less (the queues on it are tests' own).
    for n in "${NODES[@]}"; do node_pid "$n" >/dev/null && say "node $(node_name "$n") is stale or not clustered: starting the cluster afresh" && break; done
    for n in "${NODES[@]}"; do stop_node "$n"; done
    for n in "${NODES[@]}"; do launch_node "$n" fresh; done
    for n in "${NODES[@]}"; do wait_node "$n"; done
    for n in "${NODES[@]}"; do [ "$n" = 1 ] || join "$n"; done
    clustered || fail "the nodes do not all see each other after joining: $(running_nodes 1 | tr '\n' ' ')"
  fi
  say "ready in $((SECONDS - t0)) s: $(for n in "${NODES[@]}"; do node_name "$n"; done | tr '\n' ' ')"
}

print_env() {
  local n urls=()
  for n in "${NODES[@]}"; do urls+=("$(node_url "$n")"); done
  echo "export TETHER_TEST_CLUSTER_AMQP_URLS='$(IFS=,; echo "${urls[*]}")'"
  for n in "${NODES[@]}"; do echo "export TETHER_TEST_CLUSTER_AMQP_URL_$n='$(node_url "$n")'"; done
  echo "export TETHER_TEST_CLUSTER_AUTH_URL='$AUTH_URL'"
  if [ "$OWN_AUTH" = 1 ]; then
    echo "export TETHER_TEST_CLUSTER_DATABASE='$DATABASE_URL'"
  else
    echo "export TETHER_TEST_CLUSTER_DATABASE=''"
  fi
  echo "export TETHER_CLUSTER_DIR='$DIR' TETHER_CLUSTER_AMQP_PORT='$AMQP_PORT' TETHER_CLUSTER_DIST_PORT='$DIST_PORT' TETHER_CLUSTER_NODE_PREFIX='$PREFIX' TETHER_CLUSTER_AUTH_PORT='$AUTH_PORT'"
  [ "$OWN_AUTH" = 1 ] || echo "export TETHER_CLUSTER_AUTH_URL='$AUTH_URL'"
}

status() {
  local ok=0 n
  if server_healthy; then say "auth server: up ($AUTH_URL)"
  else say "auth server: down or not answering ($AUTH_URL)"; ok=1; fi
  for n in "${NODES[@]}"; do
    if node_healthy "$n"; then say "node $(node_name "$n"): up (pid $(node_pid "$n"), 127.0.0.1:$(node_amqp "$n"))"
    else say "node $(node_name "$n"): down, not answering, or configured differently"; ok=1; fi
  done
  if [ "$ok" = 0 ]; then
    if clustered; then say "cluster: whole"; else say "cluster: the nodes do not all see each other"; ok=1; fi
  fi
  return "$ok"
}

node_arg() {
  case "${1:-}" in
    1 | 2 | 3) ;;
    *) fail "which node? 1, 2 or 3 (got '${1:-}')" ;;
  esac
}

case "${1:-}" in
  start) start ;;
  stop)
    # The nodes in reverse order: node 1, stopped last, is the one start joins others to.
    for n in 3 2 1; do stop_node "$n"; done
    stop_server
    say "stopped"
    ;;
  env) print_env ;;
  status) status ;;
  stop-node)
    node_arg "${2:-}"
    stop_node "$2"
    ;;
  start-node)
    node_arg "${2:-}"
    if node_up "$2"; then
      say "node $(node_name "$2") is up: nothing to do"
    else
      stop_node "$2"
      launch_node "$2"
      wait_node "$2"
    fi
    ;;
  users)
    node_arg "${2:-}"
    # list_connections lists the whole cluster's: only those whose process is on node
    # N (its pid reads <node.n.n.n>).
    users="$(ctl "$2" list_connections user pid)" ||
      fail "cannot list node $(node_name "$2")'s connections: is it up?"
    printf '%s\n' "$users" | awk -v node="<$(node_name "$2")." -F '\t' 'index($2, node) == 1 { print $1 }'
    ;;
  *)
    echo "usage: $0 start|stop|status|env|stop-node N|start-node N|users N" >&2
    exit 2
    ;;
esac
