#!/usr/bin/env bash
# The venv of the export tests' schema checks (citadel-service/tests/export_schemas.rs):
# PyPI's kubernetes-validate (the Kubernetes OpenAPI schemas of every release, and jsonschema,
# which also checks the production-stack values against the chart's values.schema.json).
#   bash tests/kubernetes-validate-venv.sh [VENV]     (default /var/cache/citadel-test/kubernetes-validate)
# Idempotent: a venv with the pinned version is kept. Called by tests/run.sh; needs root for
# the default path (and to apt-get python3-venv on a fresh Debian 12).
set -euo pipefail
VERSION=1.37.0   # validates against Kubernetes 1.37 (the tests ask for it by number)
venv=${1:-${CITADEL_K8S_VALIDATE_VENV:-/var/cache/citadel-test/kubernetes-validate}}
stamp="$venv/.citadel-kubernetes-validate-$VERSION"
if [[ -f $stamp && -x $venv/bin/kubernetes-validate ]]; then
  exit 0
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  if [[ $(id -u) == 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  else
    echo "kubernetes-validate venv: python3-venv is missing and this is not root" >&2
    exit 1
  fi
fi
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VERSION"
"$venv/bin/kubernetes-validate" --version >/dev/null
touch "$stamp"
echo "kubernetes-validate $VERSION in $venv" >&2
