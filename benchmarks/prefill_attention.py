"""Prefill attention of one layer: ours vs SDPA full, naive FlexAttention hybrid, serial dispatch.

Usage (GPU): PYTHONPATH=src python benchmarks/prefill_attention.py [--seqs 8192,16384] [--quick]
Writes benchmarks/results/prefill_attention.json (and $OUT/prefill_attention.json when OUT is set),
replacing the rows of the (shape, S) pairs it measures and keeping the others.

MSR is realised exactly by batching rows with different decisions: the 8B shape (32 q / 8 kv heads,
d 128) runs 5 rows (40 KV heads: MSR 0.7 = 28 SSA heads), the default shape (9 / 3, d 64) 10 rows
(30 KV heads); at 128K a single row is used (nearest MSR, reported as msr_actual). Sparse heads run
FA-SSA (sink 128, local 2048). Times are medians of CUDA-event timings after warm-up; "ours" includes
building the block lists / BlockMask from the decisions and the stream fork. ideal = (1 - MSR) * SDPA
full + MSR * (SSA FLOPs at SDPA-full's FLOP rate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from elastic_attention.attention import FA, SSA
from elastic_attention.attention.kernels import DEFAULT_BACKEND, hybrid_prefill
from elastic_attention.attention.kernels.blocks import padding_bounds
from elastic_attention.attention.kernels.flex import build_block_mask
from elastic_attention.config import ElasticConfig

from cuda_timing import cuda_median_ms  # benchmarks/ sits on sys.path when a script here runs

SHAPES = {"llama8b": (32, 8, 128, 5), "default": (9, 3, 64, 10)}


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bench(fn, budget_ms=600.0, max_reps=20):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = (time.perf_counter() - t0) * 1e3
    reps = int(max(3, min(max_reps, budget_ms / max(est, 1e-3))))
    return cuda_median_ms(fn, reps)


def ssa_pairs(s, w):
    n = s
    return n * (n + 1) / 2 if n <= w else w * (w + 1) / 2 + (n - w) * w


def naive_flex(q, k, v, modes_q, cfg, scale):
    """Naive hybrid: one per-head mask_mod, BlockMask by create_block_mask (built outside timing)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from elastic_attention.attention.kernels.flex import compiled_flex
    mq = modes_q.to(torch.int32)
    sink, local = cfg.sink, cfg.local

    def mask_mod(b, h, qi, ki):
        causal = ki <= qi
        ssa = (ki < sink) | (qi - ki < local)
        return causal & ((mq[b, h] == FA) | ssa)

    b, hq, s, _ = q.shape
    bm = create_block_mask(mask_mod, b, hq, s, s, device=q.device, _compile=True)
    fn = compiled_flex()
    return lambda: fn(q, k, v, block_mask=bm, scale=scale, enable_gqa=True)


_DYN = []


def _dynamic_flex():
    from torch.nn.attention.flex_attention import flex_attention
    if not _DYN:
        _DYN.append(torch.compile(flex_attention, dynamic=True))
    return _DYN[0]


def serial_dispatch(q, k, v, modes, cfg, scale):
    """The paper's serial baseline: gather heads by mode, SDPA on FA heads, then FlexAttention SSA
    on the sparse heads, sequentially, and scatter back."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, hq, s, d = q.shape
    hk = k.shape[1]
    g = hq // hk
    flat = modes.flatten()
    fa_idx = (flat == FA).nonzero().flatten()
    sp_idx = (flat != FA).nonzero().flatten()
    sink, local = cfg.sink, cfg.local

    def ssa_mod(bb, h, qi, ki):
        return (ki <= qi) & ((ki < sink) | (qi - ki < local))

    bm = create_block_mask(ssa_mod, None, None, s, s, device=q.device, _compile=True)
    fn = _dynamic_flex()

    def run():
        qf = q.view(b * hk, g, s, d)
        kf, vf = k.view(b * hk, 1, s, d), v.view(b * hk, 1, s, d)
        out = torch.empty_like(qf)
        if fa_idx.numel():
            out[fa_idx] = F.scaled_dot_product_attention(qf[fa_idx], kf[fa_idx], vf[fa_idx], is_causal=True,
                                                         scale=scale, enable_gqa=g > 1)
        if sp_idx.numel():
            out[sp_idx] = fn(qf[sp_idx], kf[sp_idx], vf[sp_idx], block_mask=bm, scale=scale, enable_gqa=g > 1)
        return out.view(b, hq, s, d)
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="8192,16384,32768,65536,131072")
    ap.add_argument("--msrs", default="0,0.5,0.7,0.9")
    ap.add_argument("--shapes", default="llama8b,default")
    ap.add_argument("--candidates", default="split,flex,fused")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default=os.path.join(RESULTS, "prefill_attention.json"))
    args = ap.parse_args()
    dev = "cuda"
    card = torch.cuda.get_device_name()
    dtype = getattr(torch, args.dtype)
    cfg = ElasticConfig()  # sink 128, local 2048
    # Rows of other (shape, S) pairs already in --out are kept: the table can be built by several runs
    # (one per shape fits a 10-minute device call); every row says when and how it was measured.
    todo = {(sh, int(x)) for sh in args.shapes.split(",") for x in args.seqs.split(",")}
    rows = []
    if os.path.exists(args.out):
        rows = [r for r in json.load(open(args.out)) if (r["shape"], r["S"]) not in todo]
    command = "python benchmarks/prefill_attention.py " + " ".join(sys.argv[1:])
    cands = [c for c in args.candidates.split(",") if c and c != DEFAULT_BACKEND]
    print(f"card {card}; torch {torch.__version__}; default backend {DEFAULT_BACKEND}", flush=True)
    for shape in args.shapes.split(","):
        hq, hk, d, brows = SHAPES[shape]
        g = hq // hk
        for s in [int(x) for x in args.seqs.split(",")]:
            b = brows if s <= 65536 else 1
            torch.manual_seed(0)
            q = torch.randn(b, hq, s, d, device=dev, dtype=dtype)
            k = torch.randn(b, hk, s, d, device=dev, dtype=dtype)
            v = torch.randn(b, hk, s, d, device=dev, dtype=dtype)
            scale = d ** -0.5
            sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                enable_gqa=True))
            full_flops = 4 * b * hq * d * s * (s + 1) / 2
            for msr in [float(x) for x in args.msrs.split(",")]:
                n_heads = b * hk
                n_sp = round(msr * n_heads)
                perm = torch.randperm(n_heads, generator=torch.Generator().manual_seed(int(msr * 100)))
                flat = torch.full((n_heads,), FA, dtype=torch.int64)
                flat[perm[:n_sp]] = SSA
                modes = flat.view(b, hk).to(dev)
                ma = n_sp / n_heads
                modes_q = modes.repeat_interleave(g, 1)
                r = dict(card=card, shape=shape, S=s, batch=b, msr=msr, msr_actual=ma, dtype=args.dtype,
                         date=time.strftime("%Y-%m-%d"), command=command)
                r["sdpa_ms"] = sdpa
                r["ours_ms"] = bench(lambda: hybrid_prefill(q, k, v, modes, cfg, scale))
                for c in cands:
                    try:
                        r[f"cand_{c}_ms"] = bench(lambda: hybrid_prefill(q, k, v, modes, cfg, scale, backend=c))
                    except Exception as e:  # a candidate failing must not stop the table
                        print(f"  candidate {c} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                        r[f"cand_{c}_ms"] = None
                st, en = padding_bounds(None, b, s, q.device)
                r["blockmask_ms"] = bench(lambda: build_block_mask(modes_q, st, en, s, cfg, None, True, has_xa=False,
                                                                 padded=False))
                try:
                    r["flex_ms"] = bench(naive_flex(q, k, v, modes_q, cfg, scale))
                except Exception as e:
                    print(f"  naive flex failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    r["flex_ms"] = None
                r["serial_ms"] = bench(serial_dispatch(q, k, v, modes, cfg, scale))
                ssa_flops = 4 * b * hq * d * ssa_pairs(s, cfg.sink + cfg.local)
                useful = (1 - ma) * full_flops + ma * ssa_flops
                r["ideal_ms"] = (1 - ma) * sdpa + ma * sdpa * ssa_flops / full_flops
                r["ours_tflops"] = useful / r["ours_ms"] / 1e9
                r["sdpa_tflops"] = full_flops / sdpa / 1e9
                r["speedup_vs_sdpa"] = sdpa / r["ours_ms"]
                r["pct_of_ideal"] = 100 * r["ideal_ms"] / r["ours_ms"]
                rows.append(r)
                print(fmt(r, cands), flush=True)
                dump(rows, args.out)
            del q, k, v
            torch.cuda.empty_cache()
    print("\n" + table(rows, cands))


def fmt(r, cands):
    c = " ".join(f"{x}={r.get('cand_' + x + '_ms') or float('nan'):.2f}" for x in cands)
    return (f"{r['shape']:8s} S={r['S']:6d} b={r['batch']} msr={r['msr']:.1f}({r['msr_actual']:.2f}) "
            f"ours={r['ours_ms']:.2f} sdpa={r['sdpa_ms']:.2f} flex={r['flex_ms'] or float('nan'):.2f} "
            f"serial={r['serial_ms']:.2f} ideal={r['ideal_ms']:.2f} | {c} bm={r['blockmask_ms']:.3f} "
            f"x{r['speedup_vs_sdpa']:.2f} {r['pct_of_ideal']:.0f}%ideal {r['ours_tflops']:.0f}TF/s")


def table(rows, cands):
    head = ("| shape | S | MSR | ours ms | TFLOP/s | SDPA full ms | naive flex ms | serial ms | ideal ms | "
            "x SDPA | % ideal | " + " | ".join(f"{c} ms" for c in cands) + " | BlockMask ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = " | ".join(f"{r.get('cand_' + x + '_ms'):.2f}" if r.get("cand_" + x + "_ms") else "-" for x in cands)
        msr = f"{r['msr']}" if abs(r["msr"] - r["msr_actual"]) < 1e-6 else f"{r['msr']} ({r['msr_actual']:.3f})"
        lines.append(f"| {r['shape']} | {r['S'] // 1024}K | {msr} | {r['ours_ms']:.2f} | {r['ours_tflops']:.0f} | "
                     f"{r['sdpa_ms']:.2f} | {r['flex_ms'] or float('nan'):.2f} | {r['serial_ms']:.2f} | "
                     f"{r['ideal_ms']:.2f} | {r['speedup_vs_sdpa']:.2f} | {r['pct_of_ideal']:.0f} | {c} | "
                     f"{r['blockmask_ms']:.3f} |")
    return "\n".join(lines)


def dump(rows, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], os.path.basename(path)), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
