"""Host time of one launch: torch ops against our Triton kernels, through triton's JIT and through the
compiled kernel's handle.

A small model's prefill is bound by the host (docs/benchmarks.md, "Small layers"): what decides whether an
attached 135M model at 8K is faster than the plain one is how much host time each layer's launches take. Each
case runs `--calls` times back to back on tiny tensors (the default model's heads, 16 tokens, so the GPU
keeps up) between two syncs; host µs / call is the wall time / calls, the median of `--rounds` rounds taken in
turn. Cases:
  torch_add         torch.add of two [16, 576] bf16 tensors (one aten op)
  sdpa              F.scaled_dot_product_attention, causal, GQA (what the plain model's layer calls)
  fa_ssa            fa_ssa_prefill (the wrapper: output buffer, modes check, JIT launch)
  fa_ssa_jit        the fused kernel's JIT launch alone, its arguments made once
  fa_ssa_handle     the same launch through the compiled kernel's handle (launcher.Launch)
  router            route_fused (the router's wrapper and JIT launch)
  router_handle     the router's launch through the compiled kernel's handle
Outputs of the handle launches are checked bitwise against the JIT launches.

Usage (GPU): PYTHONPATH=src python benchmarks/launch_overhead.py [--calls 2000] [--rounds 5] [--run LABEL]
Writes benchmarks/results/launch_overhead.json (rows of this run replace earlier rows of the same label;
also $OUT/launch_overhead.json when OUT is set).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from elastic_attention.attention import FA, SSA
from elastic_attention.attention.kernels import fa_ssa, launcher, router as router_kernel
from elastic_attention.router import AttentionRouter

from cuda_timing import save_json  # benchmarks/ sits on sys.path when a script here runs

RESULTS = Path(__file__).parent / "results" / "launch_overhead.json"


def per_call_us(fn, calls: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e6 / calls


def cases(seq: int):
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, 9, seq, 64, device=dev, dtype=dt, generator=g)
    k = torch.randn(1, 3, seq, 64, device=dev, dtype=dt, generator=g)
    v = torch.randn(1, 3, seq, 64, device=dev, dtype=dt, generator=g)
    modes = torch.tensor([[SSA, FA, SSA]], device=dev)
    a = torch.randn(seq, 576, device=dev, dtype=dt, generator=g)
    scale = 64 ** -0.5
    out_jit = torch.empty(1, 9, seq, 64, device=dev, dtype=dt)
    out_handle = torch.empty_like(out_jit)
    bm, bn, warps, stages = fa_ssa.CONFIGS[64]
    nq, nk = -(-seq // bm), -(-seq // bn)

    def fa_args(out):
        return ((q, k, v, out, modes, out),
                (0.0, scale, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                 v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), 9, 3, seq, nq, nk,
                 4, 8))

    consts = dict(HEAD_DIM=64, BLOCK_M=bm, BLOCK_N=bn, WRITE_DENS=False)
    opts = dict(num_warps=warps, num_stages=stages)
    jit_args = fa_args(out_jit)
    fa_launch = launcher.Launch(fa_ssa, "_fa_ssa_fwd")
    handle_args = fa_args(out_handle)
    router = AttentionRouter(64).to(dev).eval()
    keys = k.transpose(1, 2)
    r_jit = router_kernel.route_fused(router, keys)
    tensors = router_kernel._tensors(router)
    r_out = torch.empty(2, 1, 3, dtype=torch.float32, device=dev)
    n = router.pool_tokens
    n1, n2 = (seq, 0) if seq <= 2 * n else (n, n)
    r_args = ((keys, r_out, *tensors, r_out, r_out, r_out),
              (seq, 3, n1, n2, keys.stride(0), keys.stride(1), keys.stride(2), 0.0))
    r_consts = dict(D=64, HID=router.task._modules["0"].out_features, HB=router_kernel.HIDDEN_CHUNK, BLOCK_T=32,
                    NORM=False)
    r_launch = launcher.Launch(router_kernel, "_route_fwd")

    run = {
        "torch_add": lambda: torch.add(a, a),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True),
        "fa_ssa": lambda: fa_ssa.fa_ssa_prefill(q, k, v, modes, 4, 8, scale),
        "fa_ssa_jit": lambda: fa_ssa._fa_ssa_fwd[(nq, 9)](*jit_args[0], *jit_args[1], **consts, **opts),
        "fa_ssa_handle": lambda: fa_launch((nq, 9), *handle_args, consts, opts),
        "router": lambda: router_kernel.route_fused(router, keys),
        "router_handle": lambda: r_launch((3,), *r_args, r_consts, dict(num_warps=4)),
    }
    for fn in run.values():
        fn()
    torch.cuda.synchronize()
    checks = {"fa_ssa_handle_equal": torch.equal(out_jit, out_handle),
              "router_handle_equal": torch.equal(torch.stack(r_jit), r_out),
              "handle_hits": fa_launch.hits + r_launch.hits}
    return run, checks


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--run", default="latest")
    args = p.parse_args()
    run, checks = cases(args.seq)
    times = {name: [] for name in run}
    for _ in range(args.rounds):
        for name, fn in run.items():
            times[name].append(per_call_us(fn, args.calls))
    import triton
    common = dict(run=args.run, date=time.strftime("%Y-%m-%d"), card=torch.cuda.get_device_name(),
                  torch=torch.__version__, triton=triton.__version__, seq=args.seq, calls=args.calls,
                  rounds=args.rounds, command="python benchmarks/launch_overhead.py " + " ".join(sys.argv[1:]))
    rows = [dict(common, case=name, host_us=round(statistics.median(t), 2), host_us_rounds=[round(x, 2) for x in t])
            for name, t in times.items()]
    rows.append(dict(common, case="checks", **checks))
    print(f"{common['card']}, torch {torch.__version__}, triton {triton.__version__}: host µs a call, "
          f"median of {args.rounds} rounds of {args.calls}")
    for r in rows[:-1]:
        print(f"  {r['case']:14} {r['host_us']:8.2f}")
    print(" ", checks)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    save_json(RESULTS, [r for r in old if r.get("run") != args.run] + rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
