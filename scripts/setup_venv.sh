#!/usr/bin/env bash
# Create or reuse the virtualenv .venv at the repo root and install datacull (+ test extras) into it.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
stamp=".venv/.datacull-install-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    echo "setup: installing torch + torchvision (large, once)"
    # these exact versions: pip takes them from the local wheel cache where there is one
    .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  fi
  echo "setup: installing datacull into .venv"
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.datacull-install-*
  touch "$stamp"
fi
