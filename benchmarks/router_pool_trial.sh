#!/usr/bin/env bash
# A CPU trial of the routers' pooling width (docs/training.md, "Why: the pooling width"): the same small
# training run twice, pool N = 8 and N = 100, then routing and scores on held-out prompts, with needle
# prompts split by haystack. About 40 minutes on 2 CPU cores. Run from the repository root:
#
#   bash benchmarks/router_pool_trial.sh OUT
#
# 768-token prompts, sink 32 / local 128 (so SSA prunes at this length), 50 steps of 4 samples, targets
# robust 1.0 / sensitive 0.2, the shipped recipe otherwise (standardised inputs, lr 5e-3, multiplier lr 5e-2).
set -euo pipefail
out=${1:?usage: router_pool_trial.sh OUT}
EA="python -m elastic_attention.cli"
TASKS=passkey,multikey_needle,prose_continuation,code_continuation,topic_ending,fewshot_pattern
mkdir -p "$out"
[ -f "$out/mix.jsonl" ] || $EA make-data --lengths 768 --per-task 16 --seed 0 --out "$out/mix.jsonl"
for n in 8 100; do
  $EA train --data "$out/mix.jsonl" --max-len 768 --batch-size 2 --grad-accum 2 --steps 50 \
    --elastic-config "{\"sink\": 32, \"local\": 128, \"router_norm\": \"standardize\", \"pool_tokens\": $n}" \
    --lr 5e-3 --lambda-lr 5e-2 --target sensitive=0.2 --calibration-samples 32 --save-every 25 --no-progress \
    --out "$out/pool$n"
  methods=elastic
  [ "$n" = 8 ] && methods=full,elastic  # full attention does not depend on the router: once is enough
  $EA eval --router "$out/pool$n" --methods "$methods" --tasks "$TASKS" --lengths 768 --samples 12 \
    --max-new-tokens 8 --quiet --no-plots --out "$out/eval_pool$n"
  python benchmarks/router_head_choice.py "$out/eval_pool$n/results.json" --haystack --out "$out/haystack_pool$n.json"
done
