#!/usr/bin/env bash
# The test-bed plan, resumable (every step skips finished runs; run records land in bench/results/quality_runs/):
# 1. prompting's gate for honesty on SmolLM2 and Qwen2.5-Coder-1.5B (variant chosen on the tuning half, reporting run);
# 2. the decisive comparison on the 1.5B model at the KL its chosen prompt spends (InnerPiSSA first);
# 3. the rest of the gate: loyalty, Qwen2.5-Coder-0.5B and every random null.
#   nohup bash bench/testbed.sh > testbed.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
M=qwen2.5-coder-1.5b
$PY bench/qualify.py --models smollm2-135m,$M --concepts honesty --phases tune,report
read -r KL METHOD < <($PY -c "
import json, sys; sys.path.insert(0, 'bench'); from qualify import VARIANTS
r = json.load(open('bench/results/qualify.json'))['results']['$M']['honesty']
print(r['kl_budget'], VARIANTS[r['variant']])")
$PY bench/quality.py --model $M --kl "$KL" --methods "innerpissa,$METHOD,mean_diff,pca,bipo" --one-seed bipo \
  --seeds 3 --random-seeds 10 --datasets dd-honesty,truthfulqa-sample-200 --name "quality_$M" --out "results/quality_$M"
$PY bench/qualify.py
