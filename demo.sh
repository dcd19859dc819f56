#!/usr/bin/env bash
# The Citadel demo: the real stack under a real systemd, on any Debian 12 machine with root.
#
#   sudo ./demo.sh            build the .deb, boot a Debian 12 box (systemd-nspawn), install it,
#                             start three stand-in models, show `citadel-service status`, kill one
#                             engine and show the recovery; the box keeps running
#   sudo ./demo.sh --engine vllm
#                             the same with the REAL vLLM (CPU build) instead of the stand-in: its
#                             venv is installed once (about 10 GB, 5-10 min; cached under
#                             /var/cache/citadel-test/vllm by tests/system/engine/setup-vllm.sh),
#                             two models on a tiny generated model, each loading in a minute or more
#   sudo ./demo.sh sh         a shell inside the box (citadel-service status, journalctl -u 'citadel-*')
#   sudo ./demo.sh destroy    power the box off and delete it
#
# Installs what it needs on the host (systemd-container, mmdebstrap, cargo-deb) when missing.
# The first run builds a Debian 12 rootfs once (about a minute, cached in /var/tmp/citadel-sdbox).
set -euo pipefail
cd "$(dirname "$0")"
name=${CITADEL_DEMO_BOX:-citadel-demo}
[[ $(id -u) == 0 ]] || { echo "demo.sh: needs root (systemd-nspawn, mounts, cgroups)" >&2; exit 1; }
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if ((${#need[@]})); then
  echo "demo.sh: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo-deb >/dev/null || { echo "demo.sh: installing cargo-deb" >&2; cargo install --locked --quiet cargo-deb; }

# The harness binary (tests/system) and the package (packaging/build-deb.sh), built here: the
# harness itself never runs cargo.
cargo build --release -q -p citadel-system-tests -p citadel-standin
sdbox=target/release/citadel-sdbox
if [[ ${1:-demo} == demo && -z ${CITADEL_DEB:-} ]]; then
  CITADEL_DEB=$(packaging/build-deb.sh | tail -1)
  export CITADEL_DEB
fi
export CITADEL_SDBOX_HINT="$PWD/demo.sh"
engine=standin
if [[ ${1:-} == --engine ]]; then
  engine=${2:?demo.sh: --engine needs standin or vllm}
  shift 2
  set -- demo "$@"
fi
case ${1:-demo} in
  demo)
    if [[ $engine == vllm ]]; then
      bash tests/system/engine/setup-vllm.sh >/dev/null
    fi
    exec "$sdbox" demo --name "$name" --engine "$engine" ;;
  sh) exec "$sdbox" sh "$name" ;;
  destroy) exec "$sdbox" destroy "$name" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
