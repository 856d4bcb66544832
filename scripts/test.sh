#!/usr/bin/env bash
# The test command (CI runs exactly this): set up, lint, prepare the Kubernetes test
# control plane and the e2e node cluster's packages and binaries, run every test (the e2e
# tests start and stop the node cluster themselves). Extra arguments go to one pytest run
# instead, e.g. `scripts/test.sh -m e2e -rs` for the e2e tests alone, `-m "not e2e" -n 2`
# for all but them.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/setup.sh train,kfp,dev,torch
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if ! scripts/e2e-prereqs.sh; then
  echo "test: Kubernetes test binaries or e2e packages unavailable; the k8s and e2e tests" \
    "will say why they skip (under CI=true the e2e tests fail instead)" >&2
fi
export KUBEBUILDER_ASSETS="${KUBEBUILDER_ASSETS:-$repo/.k8s-assets}"
if [[ $# -gt 0 ]]; then
  exec .venv/bin/pytest -ra "$@"
fi
# Everything but e2e in two worker processes (most of its time is spent waiting on child
# processes: 9.8 instead of ~17 minutes on 2 cores), a test module per worker so module
# fixtures start once; then the e2e tests alone, since they share the one node cluster.
.venv/bin/pytest -ra -m "not e2e" -n 2 --dist loadfile
exec .venv/bin/pytest -ra -m e2e
