#!/usr/bin/env bash
# Create .venv (if needed) and install the project with the given extras.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh train   or   scripts/setup.sh train,kfp,dev
# Idempotent: skips pip when pyproject.toml and the extras are unchanged since the last install.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-train}"
venv="$repo/.venv"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: error: $python must be Python 3.10 or newer" >&2
  exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup: creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.fl-kubeflow-installed"
want="$(cat "$repo/pyproject.toml" | sha256sum | cut -c1-16) $extras"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "setup: installing fl-kubeflow[$extras] into $venv (first time: a few minutes, ~1.6 GB; ~0.9 GB more with torch)"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e "$repo[$extras]"
echo "$want" > "$stamp"
