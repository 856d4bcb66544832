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
# Meanwhile tests/e2e/prestart.py starts that cluster and builds the image in the
# background (about a minute, mostly waiting on the daemons), so the e2e run finds them
# ready; it holds the cluster until told to stop, and tears it down on every way out of
# here (the e2e fixture adopts it and removes it first, checking nothing is left behind).
prestart_dir="$(mktemp -d "${TMPDIR:-/tmp}/fl-e2e-prestart.XXXXXX")"
.venv/bin/python -m tests.e2e.prestart "$prestart_dir/status.json" \
  >"$prestart_dir/prestart.log" 2>&1 &
prestart_pid=$!
stop_prestart() {
  kill -TERM "$prestart_pid" 2>/dev/null || true
  # Its teardown bounds each of its steps; this bounds the whole (600 polls of 0.5 s).
  for _ in $(seq 600); do kill -0 "$prestart_pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$prestart_pid" 2>/dev/null || true
  wait "$prestart_pid" 2>/dev/null || true
  if [[ -s "$prestart_dir/prestart.log" ]]; then cat "$prestart_dir/prestart.log" >&2; fi
  rm -rf "$prestart_dir"
}
trap stop_prestart EXIT
.venv/bin/pytest -ra -m "not e2e" -n 2 --dist loadfile
status=0
FL_E2E_PRESTART="$prestart_dir/status.json" .venv/bin/pytest -ra -m e2e || status=$?
exit "$status"
