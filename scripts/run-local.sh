#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run a local federation on the bundled
# digits data (3 clients, 5 rounds). Extra arguments go to `fl-kubeflow local`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/setup.sh" train
exec "$repo/.venv/bin/fl-kubeflow" local --clients 3 --rounds 5 --dataset digits \
  --output "$repo/runs/local" "$@"
