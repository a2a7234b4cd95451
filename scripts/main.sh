#!/usr/bin/env bash
# The main job: set up .venv if needed, then compare InnerPiSSA with the baselines on the default model
# (SmolLM2-135M-Instruct). Default is the quick run (a few minutes on 2 CPU cores); pass options through,
# e.g. `bash scripts/main.sh --seeds 3 --eval-limit 240` (drops --quick) for the full comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- --quick; fi
exec .venv/bin/innerpissa compare "$@"
