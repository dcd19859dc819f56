#!/usr/bin/env bash
# Build the citadel .deb: release build of the whole workspace, man pages and shell completions
# generated from the clap definitions, then cargo-deb (no second build). Prints the .deb path
# on stdout (last line); everything else goes to stderr.
#
#   packaging/build-deb.sh            # -> target/debian/citadel_VERSION-1_amd64.deb
#
# Needs cargo-deb (`cargo install cargo-deb`), gzip. Runs from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-deb >/dev/null || { echo "build-deb: cargo-deb not found (cargo install cargo-deb)" >&2; exit 69; }

echo "build-deb: cargo build --release --workspace" >&2
cargo build --release --workspace --bins >&2

gen=${CARGO_TARGET_DIR:-target}/release/citadel-packaging
rm -rf "$gen"
mkdir -p "$gen"
echo "build-deb: man pages and completion -> $gen" >&2
cargo run --release -q -p citadel-mangen -- "$gen" >&2
# Debian wants man pages gzip-compressed, reproducibly (-n: no name or timestamp).
for f in "$gen"/man/*; do gzip -9n "$f"; done

echo "build-deb: cargo deb -p citadel-service --no-build" >&2
# The release profile strips already (strip = true); cargo-deb prints the .deb path on stdout.
deb=$(cargo deb -p citadel-service --no-build --no-strip | tail -1)
[[ -f $deb ]] || { echo "build-deb: no .deb produced (got '$deb')" >&2; exit 1; }
echo "$deb"
