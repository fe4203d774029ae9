#!/usr/bin/env bash
# Cross-builds release tether-agent binaries and a .deb per architecture, on this
# machine, from rustup and the package registries only:
#
#   scripts/cross-build.sh                  x86_64, aarch64 and armv7
#   scripts/cross-build.sh aarch64          only these (x86_64 | aarch64 | armv7, or a
#   scripts/cross-build.sh x86_64 armv7     full target triple)
#
# For each: a static (musl) binary built with `cargo zigbuild` (zig is the C compiler and
# linker, so no cross toolchain is needed), optimised for size and stripped, then a .deb
# made by cargo-deb from agent/Cargo.toml's [package.metadata.deb]: /usr/bin/tether-agent,
# the systemd unit /usr/lib/systemd/system/tether-agent.service (= /lib/… on merged-/usr
# systems; packaging/tether-agent.service), and the example
# configuration as the conffile /etc/tether/agent.toml. Output:
#
#   ${CARGO_TARGET_DIR:-target}/cross/<triple>/tether-agent
#   ${CARGO_TARGET_DIR:-target}/cross/<triple>/tether-agent_<version>_<arch>.deb
#
# Installs what is missing, once: the rustup targets; ziglang and cargo-zigbuild (PyPI,
# in a virtualenv under ${TETHER_TOOLS_DIR:-~/.cache/tether/tools}); cargo-deb (crates.io).
# Idempotent: a second run rebuilds nothing that is up to date. Exits non-zero, naming
# the target and the step, if any target failed; the others are still built.
#
# armv7: rustup's armv7-unknown-linux-musleabihf standard library is not on every
# mirror (it is not on this machine's). When it cannot be installed the armv7 build
# falls back to armv7-unknown-linux-gnueabihf linked against glibc 2.17 (dynamically:
# any armhf distribution of the last decade runs it), packaged with the `glibc` variant
# of the metadata, which depends on libc6.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
TOOLS_DIR="${TETHER_TOOLS_DIR:-$HOME/.cache/tether/tools}"
VENV="$TOOLS_DIR/zigbuild-venv"
# cargo-deb 3.8.0 builds with rustc 1.95 (checked); pinned so a new release cannot break us.
CARGO_DEB_VERSION="${CARGO_DEB_VERSION:-3.8.0}"
export PATH="$VENV/bin:$HOME/.cargo/bin:$PATH"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export CARGO_TARGET_DIR="$TARGET_DIR"
OUT="$TARGET_DIR/cross"

# Small binaries, without touching the workspace's Cargo.toml: the release profile's
# settings for this build only (the targets are not the host's, so these artifacts never
# mix with a plain `cargo build --release`). panic stays `unwind`: a panicking task must
# not take the whole agent down.
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${CARGO_PROFILE_RELEASE_OPT_LEVEL:-s}"
export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-fat}"
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-1}"
export CARGO_PROFILE_RELEASE_DEBUG=false
export CARGO_PROFILE_RELEASE_STRIP=symbols

say() { printf 'cross-build: %s\n' "$*"; }
err() { printf 'cross-build: error: %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 || { err "$1 is needed: $2"; exit 1; }
}
need cargo "install Rust with rustup (https://rustup.rs)"
need rustup "install Rust with rustup (https://rustup.rs)"
need python3 "install Python 3 (apt-get install -y python3 python3-venv)"

# The triple for a short name.
triple_of() {
  case "$1" in
    x86_64 | amd64 | x86_64-unknown-linux-musl) echo x86_64-unknown-linux-musl ;;
    aarch64 | arm64 | aarch64-unknown-linux-musl) echo aarch64-unknown-linux-musl ;;
    armv7 | armhf | armv7-unknown-linux-musleabihf) echo armv7-unknown-linux-musleabihf ;;
    armv7-unknown-linux-gnueabihf) echo armv7-unknown-linux-gnueabihf ;;
    *) return 1 ;;
  esac
}

has_target() { rustup target list --installed | grep -qx "$1"; }

ensure_target() {
  has_target "$1" && return 0
  say "installing rust target $1"
  rustup target add "$1" >/dev/null 2>&1 || {
    err "rustup target add $1 failed"
    return 1
  }
}

ensure_zigbuild() {
  if command -v cargo-zigbuild >/dev/null 2>&1 && python3 -m ziglang version >/dev/null 2>&1; then
    say "ok: cargo-zigbuild $(cargo-zigbuild --version | awk '{print $2}'), zig $(python3 -m ziglang version)"
    return 0
  fi
  say "installing ziglang and cargo-zigbuild from PyPI into $VENV"
  mkdir -p "$TOOLS_DIR" &&
    { [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"; } &&
    "$VENV/bin/pip" install --quiet ziglang cargo-zigbuild || {
    err "could not install ziglang and cargo-zigbuild (python3 -m venv needs python3-venv on Debian)"
    return 1
  }
}

ensure_cargo_deb() {
  if cargo deb --version >/dev/null 2>&1; then
    say "ok: $(cargo deb --version 2>&1 | head -n 1)"
    return 0
  fi
  say "installing cargo-deb $CARGO_DEB_VERSION (a few minutes, once)"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked || {
    err "cargo install cargo-deb --version $CARGO_DEB_VERSION failed"
    return 1
  }
}

# The example configuration the .deb ships as /etc/tether/agent.toml.
ensure_example_config() {
  [ -f agent/agent.example.toml ] || { err "agent/agent.example.toml is missing"; return 1; }
}

# Builds, strips and packages one target; the result goes to $OUT/<triple>/.
build_one() {
  local triple="$1" zig_target="$1" variant=() dir="$OUT/$1"
  if [ "$triple" = armv7-unknown-linux-musleabihf ] && ! ensure_target "$triple"; then
    say "armv7: no musl standard library from rustup here; building armv7-unknown-linux-gnueabihf against glibc 2.17 instead"
    triple=armv7-unknown-linux-gnueabihf
  fi
  if [ "$triple" = armv7-unknown-linux-gnueabihf ]; then
    zig_target="$triple.2.17"
    variant=(--variant glibc)
    dir="$OUT/$triple"
  fi
  ensure_target "$triple" || return 1

  say "$triple: cargo zigbuild --release -p agent --bin tether-agent --target $zig_target"
  nice -n "${CROSS_BUILD_NICE:-10}" cargo zigbuild --release --locked -p agent --bin tether-agent \
    --target "$zig_target" || { err "$triple: the build failed"; return 1; }

  local built="$TARGET_DIR/$triple/release/tether-agent"
  [ -f "$built" ] || { err "$triple: no binary at $built"; return 1; }
  # The profile strips (strip = "symbols"); check, and strip again with zig if not.
  if ! file "$built" 2>/dev/null | grep -q ', stripped'; then
    python3 -m ziglang objcopy --strip-all "$built" "$built.stripped" && mv "$built.stripped" "$built" ||
      { err "$triple: could not strip $built"; return 1; }
  fi
  mkdir -p "$dir" && cp -p "$built" "$dir/tether-agent" || return 1

  say "$triple: cargo deb -p agent --no-build --no-strip --target $triple ${variant[*]}"
  rm -f "$dir"/*.deb
  ensure_example_config || return 1
  cargo deb -p agent --no-build --no-strip --target "$triple" "${variant[@]}" --output "$dir/" >/dev/null
  local status=$?
  [ "$status" = 0 ] || { err "$triple: cargo deb failed"; return 1; }
  BUILT_DIR="$dir"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(x86_64 aarch64 armv7)
triples=()
for name in "${targets[@]}"; do
  triple="$(triple_of "$name")" || { err "unknown target '$name' (x86_64, aarch64 or armv7)"; exit 2; }
  triples+=("$triple")
done

ensure_zigbuild || exit 1
ensure_cargo_deb || exit 1

failed=()
dirs=()
for triple in "${triples[@]}"; do
  if build_one "$triple"; then
    dirs+=("$BUILT_DIR")
  else
    failed+=("$triple")
  fi
done

printf '\n%-32s %10s  %s\n' "target" "bytes" "file"
for dir in "${dirs[@]}"; do
  for file in "$dir/tether-agent" "$dir"/*.deb; do
    [ -f "$file" ] && printf '%-32s %10s  %s\n' "$(basename "$dir")" "$(stat -c %s "$file")" "$file"
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  err "failed: ${failed[*]} (see the messages above)"
  exit 1
fi
