"""FlexAttention kernel options on our BlockMasks: which tiles / TMA run the hybrid fastest.

Usage (GPU): PYTHONPATH=src python benchmarks/flex_options.py [--budget-s 420]
Writes benchmarks/results/flex_options.json (and $OUT/flex_options.json when OUT is set).

Cases: the sparse heads of the split dispatch (FA heads skipped: what runs beside cuDNN) and the
whole hybrid in FlexAttention (what "auto" runs on small layers), at MSR 0.7 with the rows of
benchmarks/prefill_attention.py. For each case also the FA heads' SDPA calls alone and the naive
FlexAttention hybrid, in the same run. The winner per head_dim becomes flex.TUNED_OPTIONS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

from elastic_attention.attention import FA, SSA
from elastic_attention.attention.kernels import head_runs
from elastic_attention.attention.kernels.blocks import padding_bounds
from elastic_attention.attention.kernels.flex import build_block_mask, flex_run
from elastic_attention.config import ElasticConfig

from cuda_timing import warm_median_ms as timed
from prefill_attention import SHAPES, dump, naive_flex

OPTIONS = {
    "inductor default": {},
    "tma": {"USE_TMA": True},
    "rows_safe": {"ROWS_GUARANTEED_SAFE": True},
    "m128 n128 w8 s2": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    "m128 n64 w8 s4": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 4},
    "m128 n64 w4 s3": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "m64 n64 w4 s3": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "tma m128 n128 w8 s2": {"USE_TMA": True, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    "tma rows_safe": {"USE_TMA": True, "ROWS_GUARANTEED_SAFE": True},
}
CASES = [("llama8b", 65536, True), ("default", 16384, False), ("default", 16384, True), ("llama8b", 16384, False)]


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--msr", type=float, default=0.7)
    ap.add_argument("--out", default=os.path.join(RESULTS, "flex_options.json"))
    args = ap.parse_args()
    t0 = time.time()
    card = torch.cuda.get_device_name()
    cfg = ElasticConfig()
    rows = []
    for shape, s, skip_fa in CASES:
        hq, hk, d, b = SHAPES[shape]
        g = hq // hk
        torch.manual_seed(0)
        q = torch.randn(b, hq, s, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, hk, s, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, hk, s, d, device="cuda", dtype=torch.bfloat16)
        scale = d ** -0.5
        n_sp = round(args.msr * b * hk)
        flat = torch.full((b * hk,), FA, dtype=torch.int64)
        flat[torch.randperm(b * hk, generator=torch.Generator().manual_seed(70))[:n_sp]] = SSA
        modes = flat.view(b, hk).cuda()
        modes_q = modes.repeat_interleave(g, 1)
        st, en = padding_bounds(None, b, s, q.device)
        bm = build_block_mask(modes_q, st, en, s, cfg, None, skip_fa, has_xa=False, padded=False)
        base = dict(card=card, shape=shape, S=s, batch=b, msr=n_sp / (b * hk),
                    part="sparse heads (split)" if skip_fa else "all heads (flex)")
        runs = head_runs(modes.tolist(), FA)

        def fa_part():
            for row, h0, h1 in runs:
                F.scaled_dot_product_attention(q[row:row + 1, h0 * g:h1 * g], k[row:row + 1, h0:h1],
                                               v[row:row + 1, h0:h1], is_causal=True, scale=scale, enable_gqa=True)
        extra = dict(fa_sdpa_ms=timed(fa_part), naive_flex_ms=timed(naive_flex(q, k, v, modes_q, cfg, scale)))
        ref = None
        for name, opts in OPTIONS.items():
            if time.time() - t0 > args.budget_s:
                print(f"budget spent: skipping {shape} {s} {name}", flush=True)
                continue
            try:
                out = flex_run(q, k, v, bm, scale, dict(opts))
                ok = ~modes_q.eq(FA)[:, :, None, None].expand_as(out) if skip_fa else torch.ones_like(out, dtype=torch.bool)
                if ref is None:
                    ref = out
                err = ((out.float() - ref.float())[ok].abs().max()).item()
                ms = timed(lambda: flex_run(q, k, v, bm, scale, dict(opts)))
            except Exception as e:  # an option the installed torch / triton rejects
                print(f"  {name}: failed {type(e).__name__}: {str(e)[:160]}", flush=True)
                continue
            r = dict(base, options=name, kernel_options=opts, ms=ms, max_diff_vs_default=err, **extra)
            rows.append(r)
            print(f"{shape:8s} S={s:6d} {r['part']:22s} {name:22s} {ms:8.2f} ms  (FA SDPA alone "
                  f"{extra['fa_sdpa_ms']:.2f}, naive flex {extra['naive_flex_ms']:.2f}) diff {err:.1e}", flush=True)
            dump(rows, args.out)
        del q, k, v, bm, ref
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
