#!/usr/bin/env bash
# The test command: set up .venv, then run the default (fast) test suite. Extra args go to pytest,
# e.g. `scripts/test.sh -m slow` for the long integration tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_venv.sh"
cd "$root"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/python -m pytest -q "$@"
