#!/usr/bin/env bash
# The main job: set up .venv, then curate Fashion-MNIST end to end (`datacull run`) and print the summary.
# Extra args are Hydra overrides, e.g. `scripts/demo.sh select.fraction=0.3 select.policy=ccs`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_venv.sh"
cd "$root"
exec .venv/bin/datacull run "$@"
