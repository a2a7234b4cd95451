#!/usr/bin/env bash
# The main job: set up .venv if needed, then compare InnerPiSSA with the baselines on the default model
# (SmolLM2-135M-Instruct). With no arguments: the quick run (InnerPiSSA, prompting, PCA, CAA mean-diff; 1 seed,
# 24 dd-honesty rows; several minutes on 2 CPU cores). Any arguments replace that, e.g. for the full table:
#   bash scripts/main.sh --seeds 3 --eval-limit 120
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- --quick --methods innerpissa,prompt,pca,mean_diff; fi
exec .venv/bin/innerpissa compare --overwrite "$@"   # refresh the tables (runs stay cached in runs/)
