#!/usr/bin/env bash
# The project's one test command (README Quick start, and .ci/run):
#   bash tests/run.sh
# On a fresh Debian 12 machine with the Rust toolchain and root, it installs what the tests need
# (systemd-container and mmdebstrap for the real-systemd container tests, lintian, cargo-deb,
# zsh and fish for the completion tests),
# builds what the tests use (the stand-in engine; the .deb where the system tier runs), then
# runs the test tiers:
#
#   tier 1   cargo test --workspace: unit and black-box tests, the broken-config corpus, the
#            binaries against the stand-in; then the gateway's black-box tests again with
#            stand-ins that keep their connections alive (STANDIN_KEEPALIVE=1). Needs no
#            root. Every test that needs more is #[ignore = "REASON"], and the REASON names
#            its tier:
#   system   "system tier: needs root + systemd-nspawn" (tests/system/tests/*.rs)
#   engine   "engine tier: needs root + systemd-nspawn + the real vLLM venv" (tests/system/tests/engine.rs)
#   root     "root tier: needs root ..." (e.g. mounting a tmpfs)
#   gpu      "needs an NVIDIA GPU and driver"
#   no-gpu   "needs a machine without the NVIDIA driver"
#
# The ignored tests are found in tier 1's own output (`test NAME ... ignored, REASON`), so a
# new test file or a new ignored test joins its tier by its reason alone. Each tier whose
# prerequisites this machine has is run with `cargo test --workspace -- --ignored --exact
# NAMES`; under CI=true the system, engine and root tiers always run (a missing prerequisite
# is then a failing test, and the run fails). The last line counts everything:
#   total: N passed, N failed, N skipped
# where skipped = ignored tests that did not run (each tier says why above it).
#
# Environment: CITADEL_TEST_THREADS (tier 1, default 2); CITADEL_SDBOX_LOCK: a lock file taken
# (flock) around the system and engine tiers, for machines where others boot boxes with the
# same fixed names; CITADEL_VLLM_VENV (default /var/cache/citadel-test/vllm).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's line carries the seconds since the start, so a slow step shows in the log.
log() { printf '== [%ds] %s\n' "$SECONDS" "$*" >&2; }
ci=false
[[ ${CI:-} == true ]] && ci=true
root=false
[[ $(id -u) == 0 ]] && root=true

need_pkgs=()
# prometheus: promtool, for health-monitor/tests/observability.rs (promtool check rules).
# tmux: citadel-service/tests/top.rs drives `citadel-service top` in a real terminal.
# systemd-journal-remote: tests/system/tests/xid.rs writes a kernel-transport journal entry into a box.
for p in systemd-container mmdebstrap lintian debootstrap zsh fish prometheus tmux systemd-journal-remote; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
  if $root; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    log "not root: cannot install ${need_pkgs[*]}"
  fi
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# The export tests' schema checks (citadel-service/tests/export_schemas.rs, root tier) use PyPI's
# kubernetes-validate in a venv under /var/cache.
if $root; then
  log "kubernetes-validate venv (tests/kubernetes-validate-venv.sh)"
  bash tests/kubernetes-validate-venv.sh || log "no kubernetes-validate venv: the export schema tests (root tier) will fail"
fi

# Why each ignored tier cannot run here (empty: it can).
why_system=""
if ! $root; then
  why_system="not root (systemd-nspawn, overlayfs mounts and cgroups need root)"
elif [[ ! -x /usr/bin/systemd-nspawn || ! -x /usr/bin/mmdebstrap ]]; then
  why_system="systemd-nspawn or mmdebstrap is missing (apt-get install systemd-container mmdebstrap)"
fi
venv=${CITADEL_VLLM_VENV:-/var/cache/citadel-test/vllm}
why_engine=$why_system
# The engine tier's real vLLM (CPU build): built once and cached by setup-vllm.sh (about 10 GB
# and 5-10 minutes the first time, seconds after; idempotent, locked). Under CI=true it is always
# made (a fresh CI machine installs it; a failure fails the tier); elsewhere the tier runs where
# the venv is already there (setup-vllm.sh's stamp), so a plain run never downloads 10 GB.
if $ci || [[ -z $why_system && -f $venv/.citadel-engine-ok ]]; then
  log "engine tier: the real vLLM venv (tests/system/engine/setup-vllm.sh $venv)"
  bash tests/system/engine/setup-vllm.sh "$venv" >/dev/null || why_engine="tests/system/engine/setup-vllm.sh could not make the venv at $venv"
fi
[[ -z $why_engine && ! -x $venv/bin/python ]] && why_engine="no real vLLM venv at $venv (bash tests/system/engine/setup-vllm.sh makes it: about 10 GB, 5-10 minutes; see shared/docs/VLLM.md)"
why_root=""
$root || why_root="not root"
nvml=false
/sbin/ldconfig -p 2>/dev/null | grep -q 'libnvidia-ml\.so\.1' && nvml=true
why_gpu=""
$nvml || why_gpu="no NVIDIA driver here (libnvidia-ml.so.1 is not installed)"
why_nogpu=""
$nvml && why_nogpu="the NVIDIA driver is installed here (these tests need a machine without it)"
if $ci; then
  # Under CI the real-systemd tiers always run: what is missing makes their tests fail.
  [[ -n $why_system ]] && log "CI=true: the system tier runs anyway, and fails: $why_system"
  [[ -n $why_engine ]] && log "CI=true: the engine tier runs anyway, and fails: $why_engine"
  [[ -n $why_root ]] && log "CI=true: the root tier runs anyway, and fails: $why_root"
  why_system="" why_engine="" why_root=""
fi

target=${CARGO_TARGET_DIR:-$PWD/target}
# What the tests use is built here, before any test runs (tests never run cargo).
log "cargo build -p citadel-standin (the stand-in engine)"
cargo build -q -p citadel-standin
export CITADEL_STANDIN=$target/debug/citadel-standin
if [[ -z $why_system || -z $why_engine ]]; then
  if [[ -z ${CITADEL_DEB:-} ]]; then
    if ! command -v cargo-deb >/dev/null 2>&1; then
      log "installing cargo-deb"
      cargo install --locked --quiet cargo-deb
    fi
    log "packaging/build-deb.sh (the .deb the system tests install)"
    CITADEL_DEB=$(packaging/build-deb.sh | tail -1)
  fi
  export CITADEL_DEB
  log "CITADEL_DEB=$CITADEL_DEB"
else
  log "not building the .deb: the system tier will not run ($why_system)"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rc=0

# Sum of "N passed", "N failed", "N ignored" over every "test result:" line of a log.
count() {
  awk -v what="$2" '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ "^" what) n += $i }
    END { print n + 0 }' "$1"
}

log "tier 1: cargo test --workspace"
set +e
cargo test --workspace --no-fail-fast -- --test-threads="${CITADEL_TEST_THREADS:-2}" 2>&1 | tee "$out/tier1"
[[ ${PIPESTATUS[0]} == 0 ]] || rc=1
set -e
passed=$(count "$out/tier1" passed)
failed=$(count "$out/tier1" failed)
ignored=$(count "$out/tier1" ignored)
# The gateway's black-box tests once more with every stand-in keeping its connections alive, as
# vLLM's uvicorn does (STANDIN_KEEPALIVE=1): the same scenarios over pooled engine connections.
# --workspace, not -p citadel-gateway: the test binary tier 1 built, with the workspace's
# features (-p would build the dependencies again with the gateway's own); the system tier's
# gateway.rs, all #[ignore]d, is only listed.
log "tier 1, keep-alive engines: STANDIN_KEEPALIVE=1 cargo test --workspace --test gateway"
set +e
STANDIN_KEEPALIVE=1 cargo test --workspace --test gateway -- --test-threads="${CITADEL_TEST_THREADS:-2}" 2>&1 | tee "$out/tier1-keepalive"
[[ ${PIPESTATUS[0]} == 0 ]] || rc=1
set -e
passed=$((passed + $(count "$out/tier1-keepalive" passed)))
failed=$((failed + $(count "$out/tier1-keepalive" failed)))

# The ignored tests, by tier, from tier 1's output: "test NAME ... ignored, REASON".
for t in system engine root gpu nogpu other; do : >"$out/names.$t"; done
sed -n 's/^test \(.*\) \.\.\. ignored, \(.*\)$/\1\t\2/p' "$out/tier1" | while IFS=$'\t' read -r name reason; do
  case $reason in
    "system tier:"*) t=system ;;
    "engine tier:"*) t=engine ;;
    "root tier:"*) t=root ;;
    *"without the NVIDIA driver"*) t=nogpu ;;
    *"NVIDIA GPU"*) t=gpu ;;
    *) t=other ;;
  esac
  printf '%s\n' "$name" >>"$out/names.$t"
done
# Ignored without a reason (plain #[ignore], or an ```ignore doc test): never run.
grep -E '^test .* \.\.\. ignored$' "$out/tier1" | sed 's/^test \(.*\) \.\.\. ignored$/\1/' >>"$out/names.other" || true

ran=0
summary=()
run_tier() { # tier, why-not (empty: run), extra wrapper...
  local t=$1 why=$2
  shift 2
  local n
  n=$(sort -u "$out/names.$t" | grep -c . || true)
  ((n)) || return 0
  if [[ -n $why ]]; then
    summary+=("tier $t: $n tests not run: $why")
    return 0
  fi
  log "tier $t: $n ignored tests: cargo test --workspace -- --ignored --exact ..."
  local names
  mapfile -t names < <(sort -u "$out/names.$t")
  set +e
  "$@" cargo test --workspace --no-fail-fast -- --ignored --exact --test-threads="${CITADEL_TEST_THREADS:-2}" "${names[@]}" 2>&1 | tee "$out/tier.$t"
  [[ ${PIPESTATUS[0]} == 0 ]] || rc=1
  set -e
  local p f
  p=$(count "$out/tier.$t" passed)
  f=$(count "$out/tier.$t" failed)
  passed=$((passed + p))
  failed=$((failed + f))
  ran=$((ran + p + f))
  summary+=("tier $t: $p passed, $f failed of $n")
}

box_lock=()
[[ -n ${CITADEL_SDBOX_LOCK:-} ]] && box_lock=(flock "$CITADEL_SDBOX_LOCK")
run_tier root "$why_root"
run_tier gpu "$why_gpu"
run_tier nogpu "$why_nogpu"
run_tier system "$why_system" "${box_lock[@]}"
# The engine tier prints its figures (scenarios 1-6, the benchmark stops): not captured.
run_tier engine "$why_engine" "${box_lock[@]}" env RUST_TEST_NOCAPTURE=1
n_other=$(sort -u "$out/names.other" | grep -c . || true)
((n_other)) && summary+=("other: $n_other ignored tests with no tier in their reason, never run by this script")

skipped=$((ignored - ran))
((skipped < 0)) && skipped=0
for l in "${summary[@]}"; do log "$l"; done
echo "total: $passed passed, $failed failed, $skipped skipped"
exit "$rc"
