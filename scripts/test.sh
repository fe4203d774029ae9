#!/usr/bin/env bash
# Runs every check and test of Tether, in this order:
#   cargo fmt --check; clippy -D warnings on the server (ssr) and wasm32 (hydrate) builds;
#   every Rust test in the workspace (against RabbitMQ on 127.0.0.1:5672 and PostgreSQL on
#   127.0.0.1:5432, each started if it is not running, and a RabbitMQ node of their own
#   on 127.0.0.1:5674 whose devices Tether admits: scripts/identity-broker.sh, stopped
#   at the end; the aarch64 and armv7 agents, cross-built, that tests run under
#   qemu-user: scripts/cross-build.sh aarch64 armv7; and a three-node RabbitMQ cluster
#   on 127.0.0.1:5681-5683, scripts/rabbit-cluster.sh, for server/tests/cluster.rs,
#   stopped at the end); the release build; the Playwright suite in headless Chromium.
# Every stage runs even when an earlier one failed; the script ends with each runner's
# summary, then one line `N passed, N failed` over all of them, and exits non-zero on
# any failure. A failed check (fmt, clippy, build) counts as one failure.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
bootstrap test || exit 1
cd "$TETHER_ROOT"

export TETHER_TEST_AMQP_URL="${TETHER_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
logs="$(mktemp -d)"
failed_checks=()
started=$SECONDS

stage() {
  local name="$1"; shift
  local t0=$SECONDS
  printf '\n=== %s: %s\n' "$name" "$*"
  if "$@"; then
    printf '=== %s: ok (%ss)\n' "$name" $((SECONDS - t0))
  else
    printf '=== %s: FAILED (%ss)\n' "$name" $((SECONDS - t0))
    failed_checks+=("$name")
    return 1
  fi
}

cargo_tests() {
  cargo test --workspace --exclude frontend --no-fail-fast 2>&1 | tee "$logs/cargo-test.log"
  local workspace="${PIPESTATUS[0]}"
  # The patched third-party crates (third_party/*/TETHER.md) are not workspace members:
  # their own unit tests, the patches' included, run from their own manifests.
  local patched=0
  for manifest in third_party/*/Cargo.toml; do
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TETHER_ROOT/target}" \
      cargo test --manifest-path "$manifest" --locked --lib 2>&1 | tee -a "$logs/cargo-test.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || patched=1
  done
  [ "$workspace" -eq 0 ] && [ "$patched" -eq 0 ]
}

playwright_tests() {
  rm -f end2end/test-results/results.json end2end/server.log
  if (cd end2end && npx playwright test); then
    return 0
  fi
  # What the server under test said last (global-setup.ts keeps all of it).
  if [ -f end2end/server.log ]; then
    echo "--- the last 300 lines of end2end/server.log"
    tail -n 300 end2end/server.log
  fi
  return 1
}

# A RabbitMQ node of the tests' own (127.0.0.1:5674) that admits devices through
# Tether's HTTP auth backend, answered by a tether-server of its own: the debug binary,
# with the workspace's features, as `cargo test` builds it (so nothing is built twice).
identity_broker() {
  cargo build --locked --workspace --exclude frontend --bin tether-server &&
    scripts/identity-broker.sh start &&
    eval "$(scripts/identity-broker.sh env)"
}

stage fmt cargo fmt --all --check
stage "clippy (server, ssr)" cargo clippy --workspace --exclude frontend --all-targets --locked -- -D warnings
stage "clippy (wasm32, hydrate)" cargo clippy -p frontend -p protocol --target wasm32-unknown-unknown --locked -- -D warnings
# A three-node RabbitMQ cluster (127.0.0.1:5681-5683) with an auth server of its own,
# for server/tests/cluster.rs, which stops a node under load (about a minute to start).
rabbit_cluster() {
  scripts/rabbit-cluster.sh start &&
    eval "$(scripts/rabbit-cluster.sh env)"
}

stage rabbitmq ensure_rabbitmq
trap 'scripts/identity-broker.sh stop; scripts/rabbit-cluster.sh stop' EXIT
stage "identity broker" identity_broker
stage "rabbitmq cluster" rabbit_cluster
stage postgresql ensure_postgres
# The aarch64 (static) and armv7 (glibc 2.17) agents and their .debs, which
# server/tests/cross_agent.rs runs under qemu-user and inspects; qemu-user-static and
# Debian's armhf C library for qemu-arm. (scripts/cross-build.sh with no arguments also
# builds x86_64.)
cross_build() {
  if ! command -v qemu-aarch64-static >/dev/null 2>&1 || ! command -v qemu-arm-static >/dev/null 2>&1 ||
     [ ! -f /usr/arm-linux-gnueabihf/lib/libc.so.6 ]; then
    echo "installing qemu-user-static and libc6-armhf-cross (apt)"
    { as_root apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static libc6-armhf-cross >/dev/null; } ||
      echo "could not install qemu-user-static and libc6-armhf-cross: the cross_agent tests will fail" >&2
  fi
  local dir="${CARGO_TARGET_DIR:-target}"
  case "$dir" in /*) ;; *) dir="$TETHER_ROOT/$dir" ;; esac
  scripts/cross-build.sh aarch64 armv7 &&
    export TETHER_AARCH64_AGENT="$dir/cross/aarch64-unknown-linux-musl/tether-agent" \
      TETHER_ARMV7_AGENT="$dir/cross/armv7-unknown-linux-gnueabihf/tether-agent"
}
stage "cross build (aarch64, armv7)" cross_build
stage "cargo test" cargo_tests
release_build() {
  # --split: pages loaded on demand are files of their own (app/src/routes.rs).
  # rehash-split.mjs: the main JS and WASM get names their on-demand files' change too.
  local dir="${CARGO_TARGET_DIR:-target}"
  case "$dir" in /*) ;; *) dir="$TETHER_ROOT/$dir" ;; esac
  cargo leptos build --release --split &&
    node scripts/rehash-split.mjs target/site/pkg "$dir/release/hash.txt" &&
    cargo build --release --locked -p agent --bin tether-agent
}

if stage "release build" release_build; then
  stage playwright playwright_tests
fi

# The runners' own counts.
read -r cargo_passed cargo_failed cargo_ignored < <(
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
       END { print p + 0, f + 0, g + 0 }' "$logs/cargo-test.log" 2>/dev/null || echo 0 0 0)
read -r pw_passed pw_failed pw_skipped < <(
  node -e 'const s = require(process.argv[1]).stats; console.log(s.expected + s.flaky, s.unexpected, s.skipped)' \
    "$TETHER_ROOT/end2end/test-results/results.json" 2>/dev/null || echo 0 0 0)

# A runner that failed without reporting a failed test (it did not compile, its
# server did not start) still counts as one failure; its own failures count once.
unreported=0
for check in "${failed_checks[@]}"; do
  case "$check" in
    "cargo test") [ "$cargo_failed" -gt 0 ] || unreported=$((unreported + 1)) ;;
    playwright) [ "$pw_failed" -gt 0 ] || unreported=$((unreported + 1)) ;;
    *) unreported=$((unreported + 1)) ;;
  esac
done
passed=$((cargo_passed + pw_passed))
failed=$((cargo_failed + pw_failed + unreported))
printf '\n=== summary (%ss)\n' $((SECONDS - started))
echo "cargo test: $cargo_passed passed, $cargo_failed failed, $cargo_ignored ignored"
echo "playwright: $pw_passed passed, $pw_failed failed, $pw_skipped skipped"
if [ ${#failed_checks[@]} -gt 0 ]; then
  joined="$(printf '%s, ' "${failed_checks[@]}")"
  echo "failed stages: ${joined%, }"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
