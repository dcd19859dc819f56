#!/usr/bin/env bash
# The project's one test command (README Quick start, and .ci/run):
#   bash tests/run.sh
# On a fresh Debian 12 machine with the Rust toolchain and root, it installs what the tests need
# (systemd-container and mmdebstrap for the real-systemd container tests, lintian, cargo-deb,
# zsh and fish for the completion tests),
# then runs every test of the workspace: unit tests, black-box tests of each binary, the
# broken-config corpus and the system tests in a real systemd (tests/system).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

need_pkgs=()
for p in systemd-container mmdebstrap lintian debootstrap zsh fish; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
  if [[ $(id -u) == 0 ]]; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    log "not root: cannot install ${need_pkgs[*]}; the system tests will skip"
  fi
fi
if ! command -v cargo-deb >/dev/null 2>&1 && [[ ! -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb ]]; then
  log "installing cargo-deb"
  cargo install --locked --quiet cargo-deb
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# The export tests' schema checks (citadel-service/tests/export_schemas.rs, root tier) use PyPI's
# kubernetes-validate in a venv under /var/cache.
k8s_venv=""
if [[ $(id -u) == 0 ]]; then
  log "kubernetes-validate venv (tests/kubernetes-validate-venv.sh)"
  bash tests/kubernetes-validate-venv.sh && k8s_venv=yes
fi

log "cargo test --workspace"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --workspace --no-fail-fast -- --test-threads="${CITADEL_TEST_THREADS:-2}" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
if [[ -n $k8s_venv ]]; then
  log "root tier: cargo test -p citadel-service --test export_schemas -- --ignored"
  cargo test -p citadel-service --test export_schemas --no-fail-fast -- --ignored 2>&1 | tee "$out.ignored"
  [[ ${PIPESTATUS[0]} == 0 ]] || rc=1
else
  log "root tier (export schemas) not run: not root, or no kubernetes-validate venv"
fi
set -e
# Ignored tests that ran in a later tier are not skipped.
if [[ -f $out.ignored ]]; then
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/ || $(i+1) ~ /^failed/) print "test result: " $i " unignored" } }' "$out.ignored" >>"$out"
  awk '/^test result:/' "$out.ignored" >>"$out"
  rm -f "$out.ignored"
fi
# One closing line for the whole run (cargo prints one per test binary, the last often a
# doc-test run with nothing in it).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i; if ($(i+1) ~ /^unignored/) s -= $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
exit "$rc"
