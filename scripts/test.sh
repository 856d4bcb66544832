#!/usr/bin/env bash
# The test command (CI runs exactly this): set up, lint, prepare the Kubernetes test
# control plane, run every test. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/setup.sh train,kfp,dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if ! scripts/k8s-assets.sh; then
  echo "test: Kubernetes test binaries unavailable; the k8s tests will say why they skip" >&2
fi
export KUBEBUILDER_ASSETS="${KUBEBUILDER_ASSETS:-$repo/.k8s-assets}"
exec .venv/bin/pytest -ra "$@"
