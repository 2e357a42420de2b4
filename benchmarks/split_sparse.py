"""The split dispatch's sparse heads: the fused kernel with the FA heads skipped, or FlexAttention.

One attention layer of an 8B-shaped model (32 query / 8 KV heads, head_dim 128, bf16) with q, k, v in the
model's layout ([b, s, h, d] memory seen as [b, h, s, d], what transformers hands the attention function),
MSR 0.7 (the first round(0.7 * 8) KV heads of a random permutation SSA). Per length: causal SDPA on every
head, and hybrid_prefill(backend="split") with SPLIT_SPARSE "flex" and "fused", timed in turn over
`--rounds` rounds (medians of CUDA-event medians); the two split variants' outputs compared (max abs diff)
and each against SDPA on its FA heads.

Usage (GPU): PYTHONPATH=src python benchmarks/split_sparse.py [--seqs 32768,65536] [--rounds 5]
Writes benchmarks/results/split_sparse.json (and $OUT/split_sparse.json when OUT is set).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from elastic_attention.attention import FA, SSA
from elastic_attention.attention import kernels
from elastic_attention.config import ElasticConfig

from cuda_timing import save_json, warm_median_ms  # benchmarks/ sits on sys.path when a script here runs

RESULTS = Path(__file__).parent / "results" / "split_sparse.json"


def layer(seq: int, hq=32, hk=8, d=128, msr=0.7, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(1, seq, h, d, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
               for h in (hq, hk, hk))
    perm = torch.randperm(hk, generator=torch.Generator().manual_seed(seed))
    modes = torch.full((1, hk), FA, dtype=torch.int64)
    modes[0, perm[:round(msr * hk)]] = SSA
    return q, k, v, modes.cuda()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seqs", default="32768,65536")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    cfg = ElasticConfig()
    rows = []
    for seq in map(int, args.seqs.split(",")):
        q, k, v, modes = layer(seq)
        scale = q.shape[-1] ** -0.5

        def split(kind):
            kernels.SPLIT_SPARSE = kind
            return kernels.hybrid_prefill(q, k, v, modes, cfg, scale, backend="split")

        cases = {"sdpa_ms": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                   enable_gqa=True),
                 "split_flex_ms": lambda: split("flex"), "split_fused_ms": lambda: split("fused")}
        times = {key: [] for key in cases}
        with torch.no_grad():
            for _ in range(args.rounds):
                for key, fn in cases.items():
                    times[key].append(warm_median_ms(fn, reps=5))
            flex, fused, full = split("flex"), split("fused"), cases["sdpa_ms"]()
        fa_heads = (modes[0] == FA).repeat_interleave(q.shape[1] // k.shape[1]).nonzero().flatten()
        r = dict(card=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"), S=seq, shape="8b layer",
                 msr=0.7, rounds=args.rounds, **{key: round(statistics.median(t), 3) for key, t in times.items()},
                 max_diff_fused_flex=(fused.float() - flex.float()).abs().max().item(),
                 max_diff_fa_heads_vs_sdpa=(fused[:, fa_heads].float() - full[:, fa_heads].float()).abs().max().item(),
                 command="python benchmarks/split_sparse.py " + " ".join(sys.argv[1:]))
        r["flex_over_fused"] = r["split_flex_ms"] / r["split_fused_ms"]
        rows.append(r)
        print(r, flush=True)
        del q, k, v, flex, fused, full
        torch.cuda.empty_cache()
    kernels.SPLIT_SPARSE = "fused"
    save_json(RESULTS, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
