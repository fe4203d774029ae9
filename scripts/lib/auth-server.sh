# What scripts/identity-broker.sh and scripts/rabbit-cluster.sh share: messages, and the
# tether-server each starts only to answer RabbitMQ's HTTP auth backend, with a SQLite
# database of devices of its own. Sourced; the caller sets first:
#   NAME           the prefix of messages (identity-broker, rabbit-cluster)
#   SETTINGS       the prefix of the caller's settings (TETHER_IDENTITY, TETHER_CLUSTER):
#                  <SETTINGS>_AUTH_PORT is named in errors, <SETTINGS>_RUST_LOG read
#   ROOT           the repository
#   AUTH_PORT      where the auth server listens; AUTH_URL, where it is asked
#   OWN_AUTH       1 when the caller starts the auth server, 0 when AUTH_URL is another's
#   ADMIN_USER     the user the auth server gets (so it prints no first-run link)
#   DATABASE_URL, SERVER_DIR, SERVER_LOG, SERVER_PID, SERVER_STAMP

say() { printf '%s: %s\n' "$NAME" "$*" >&2; }
fail() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

# The last lines of a log, indented, for a failure message.
tail_log() {
  local file
  for file in "$@"; do
    [ -s "$file" ] || continue
    printf -- '--- last lines of %s:\n' "$file" >&2
    tail -n "${TAIL_LINES:-25}" "$file" | sed 's/^/    /' >&2
  done
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

server_bin() {
  local bin="${TETHER_SERVER_BIN:-}"
  if [ -n "$bin" ]; then
    [ -x "$bin" ] || fail "TETHER_SERVER_BIN=$bin is not an executable"
    printf '%s\n' "$bin"
    return
  fi
  local target="${CARGO_TARGET_DIR:-target}"
  case "$target" in /*) ;; *) target="$ROOT/$target" ;; esac
  bin="$target/debug/tether-server"
  if [ ! -x "$bin" ]; then
    # The workspace's features, as `cargo test --workspace` has them: `-p server` alone
    # would build hyper, tower and what uses them a second time, with fewer features.
    say "building tether-server (cargo build --workspace --exclude frontend --bin tether-server)"
    (cd "$ROOT" && cargo build --workspace --exclude frontend --bin tether-server) >&2 ||
      fail "cannot build tether-server; build it, or set TETHER_SERVER_BIN"
    [ -x "$bin" ] || fail "cargo built no $bin"
  fi
  printf '%s\n' "$bin"
}

stamp_of() { printf '%s %s\n' "$1" "$(stat -c %Y "$1" 2>/dev/null)"; }

# The pid in a pid file, when that process is alive and runs $2 (a command name).
live_pid() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  case "$pid" in '' | *[!0-9]*) return 1 ;; esac
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  printf '%s\n' "$pid"
}

# Answers like Tether's broker auth backend: a device nobody provisioned is denied.
auth_answers() {
  [ "$(curl -s -m 5 -X POST -d 'username=no-such-device&password=x' \
    "$AUTH_URL/auth/rabbitmq/user")" = deny ]
}

server_healthy() {
  if [ "$OWN_AUTH" = 1 ]; then
    live_pid "$SERVER_PID" tether-server >/dev/null && auth_answers
  else
    auth_answers
  fi
}

stop_server() {
  [ "$OWN_AUTH" = 1 ] || return 0
  local pid
  pid="$(live_pid "$SERVER_PID" tether-server)" || { rm -f "$SERVER_PID"; return 0; }
  say "stopping the auth server (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$SERVER_PID"; return 0; }
    sleep 0.1
  done
  say "the auth server did not stop within 10 s: killing it"
  kill -KILL "$pid" 2>/dev/null
  rm -f "$SERVER_PID"
}

start_server() {
  local bin="$1" pid unset_vars=() var log_setting="${SETTINGS}_RUST_LOG"
  mkdir -p "$SERVER_DIR/data" || fail "cannot create $SERVER_DIR"
  if port_open 127.0.0.1 "$AUTH_PORT"; then
    fail "127.0.0.1:$AUTH_PORT is taken by something else: stop it, or choose ${SETTINGS}_AUTH_PORT"
  fi
  # Only the settings below: none of the caller's TETHER_* (TETHER_AMQP_URL above all).
  for var in $(compgen -e | grep '^TETHER_'); do unset_vars+=(-u "$var"); done
  # A user, so that the server does not print a first-run link (harmless either way).
  if ! env "${unset_vars[@]}" TETHER_DATABASE_URL="$DATABASE_URL" "$bin" user list 2>/dev/null | grep -q .; then
    head -c 18 /dev/urandom | base64 |
      env "${unset_vars[@]}" TETHER_DATABASE_URL="$DATABASE_URL" RUST_LOG=warn \
        "$bin" user add "$ADMIN_USER" --role admin --password-stdin >>"$SERVER_LOG" 2>&1 ||
      { tail_log "$SERVER_LOG"; fail "cannot create the auth server's user in $DATABASE_URL"; }
  fi
  say "starting the auth server on 127.0.0.1:$AUTH_PORT ($bin, database $DATABASE_URL)"
  printf '\n=== %s: started\n' "$(date -u +%FT%TZ)" >>"$SERVER_LOG"
  (
    cd "$SERVER_DIR" || exit 1
    exec env "${unset_vars[@]}" \
      TETHER_DATABASE_URL="$DATABASE_URL" \
      TETHER_DATA_DIR="$SERVER_DIR/data" \
      TETHER_ADDR="127.0.0.1:$AUTH_PORT" \
      TETHER_BROKER_ADDR=127.0.0.1:0 \
      RUST_LOG="${!log_setting:-info}" NO_COLOR=1 \
      setsid "$bin" </dev/null >>"$SERVER_LOG" 2>&1
  ) &
  pid=$!
  echo "$pid" >"$SERVER_PID"
  stamp_of "$bin" >"$SERVER_STAMP"
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { tail_log "$SERVER_LOG"; fail "the auth server exited at start (log: $SERVER_LOG)"; }
    auth_answers && { say "the auth server answers (pid $pid)"; return 0; }
    sleep 0.1
  done
  tail_log "$SERVER_LOG"
  stop_server
  fail "the auth server did not answer /auth/rabbitmq/user within 30 s (log: $SERVER_LOG)"
}
