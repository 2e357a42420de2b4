"""Host time and torch ops that attaching adds to each layer of a small Llama forward.

The default model's head layout (30 layers, 9 query / 3 KV heads, head_dim 64) with everything else tiny
(hidden 72, MLP 64, vocab 128, 16 tokens, random weights): the forward is almost all host work (Python and
op dispatch), so attached minus plain, per layer, is what routing and dispatch add to every layer of a real
prefill. Cases: plain (not attached), full (force_mode "full"), mask (a static [layers, kv_heads] mask,
70 % sparse heads), router (the routers decide), each on its own copy of the model. The cases run
`model(input_ids=ids, logits_to_keep=1, use_cache=False)` under no_grad in turn, `--calls` times each (the
host's speed drifts); ms/forward is the median call, the overhead per layer the median of (attached call -
the plain call of the same turn) / layers, also as a share of a plain layer's time (the host's speed drifts by
2x over minutes here, so runs made apart compare by that share). Ops are the aten ops one forward dispatches
(TorchDispatchMode; Triton launches are not aten ops and not counted).

Paths: on the CPU the attached model runs hybrid_attention ("cpu"); with --device cuda, bf16, the fused
prefill ("cuda"). --stub-cuda (CPU) times the fused CUDA path's host work on the CPU: tensors report is_cuda
and the Triton launches (fa_ssa, router kernel) launch nothing, so outputs are meaningless but every other
host step of that path runs ("cuda-stubbed").

Usage: PYTHONPATH=src python benchmarks/host_overhead.py [--device cpu|cuda] [--stub-cuda] [--run LABEL]
       [--calls 400] [--seq 16] [--profile CASE] [--stub-cuda --wrapper]
Writes benchmarks/results/host_overhead.json (and $OUT/host_overhead.json when OUT is set): rows of this
run replace earlier rows with the same run label, path and device; other rows stay.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM

import elastic_attention as ea
from elastic_attention.attention.kernels import fa_ssa, launcher, router as router_kernel

RESULTS = Path(__file__).parent / "results" / "host_overhead.json"
CASES = ("plain", "full", "mask", "router")


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


class _NoLaunch:
    """Stands in for a Triton kernel: `kernel[grid](...)` launches nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_cuda() -> None:
    torch.Tensor.is_cuda = property(lambda self: True)
    launcher.ENABLED = False  # every launch through `kernel[grid]`: the stubs below
    fa_ssa._fa_ssa_fwd = _NoLaunch()
    router_kernel._route_fwd = _NoLaunch()


def models(args, device, dtype) -> dict:
    """The plain model and one attached copy per case, each forced once (a forced mode is set once for many
    prefills, and each copy keeps what it builds for its mode), so that the cases can run call by call in turn."""
    cfg = LlamaConfig(hidden_size=72, intermediate_size=64, num_hidden_layers=args.layers, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=128)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    plain = LlamaForCausalLM(cfg).eval().to(device=device, dtype=dtype)
    out = {"plain": plain}
    for case, mode in (("full", "full"), ("mask", static_mask(args.layers, 3, 0.7)), ("router", "router")):
        out[case] = ea.attach(copy.deepcopy(plain), ea.ElasticConfig()).eval()
        ea.force_mode(out[case], mode)
    return out


def static_mask(layers: int, kv: int, msr: float) -> torch.Tensor:
    perm = torch.randperm(layers * kv, generator=torch.Generator().manual_seed(0))
    m = torch.zeros(layers * kv, dtype=torch.bool)
    m[perm[:round(msr * layers * kv)]] = True
    return m.view(layers, kv)


def profile(nets, ids, args, sync) -> int:
    """cProfile of plain and one case, by own time (cProfile's overhead inflates small calls alike on both)."""
    import cProfile
    import pstats

    for case in ("plain", args.profile):
        with torch.no_grad():
            for _ in range(5):
                nets[case](input_ids=ids, logits_to_keep=1, use_cache=False)
            sync()
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.calls):
                nets[case](input_ids=ids, logits_to_keep=1, use_cache=False)
            sync()
            prof.disable()
        print(f"== {case}: {args.calls} forwards of {args.layers} layers")
        pstats.Stats(prof).sort_stats("tottime").print_stats(28)
    return 0


def wrapper(nets, args) -> int:
    """--wrapper (with --stub-cuda): one attention call's host time, our attention function on the fused CUDA
    path (forced mask, the launch stubbed) against transformers' SDPA wrapper with SDPA stubbed (returning
    its [b, s, h, d] layout, as on a GPU): the Python around the kernel call on each side. Prints, writes
    nothing."""
    from transformers.integrations import sdpa_attention

    from elastic_attention.integrations import hf

    b, s, d = 1, args.seq, 64
    q = torch.randn(b, 9, s, d, dtype=torch.bfloat16)
    k, v = torch.randn(b, 3, s, d, dtype=torch.bfloat16), torch.randn(b, 3, s, d, dtype=torch.bfloat16)
    out = torch.empty(b, s, 9, d, dtype=torch.bfloat16).transpose(1, 2)
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda *a, **kw: out
    elastic, plain = hf.attention_modules(nets["mask"])[0], nets["plain"].model.layers[0].self_attn
    calls = {"attention function": lambda: hf.elastic_attention_forward(elastic, q, k, v, None, scaling=d ** -0.5),
             "sdpa wrapper": lambda: sdpa_attention.sdpa_attention_forward(plain, q, k, v, None, scaling=d ** -0.5)}
    times = {name: [] for name in calls}
    try:
        with torch.no_grad():
            for _ in range(5):  # rounds in turn: the host's speed drifts
                for name, fn in calls.items():
                    for _ in range(100):
                        fn()
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        fn()
                    times[name].append((time.perf_counter() - t0) / args.calls * 1e6)
    finally:
        F.scaled_dot_product_attention = sdpa
    for name, t in times.items():
        print(f"{name:20s} {statistics.median(t):6.2f} us a call (median of 5 rounds of {args.calls})")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--stub-cuda", action="store_true", help="CPU: time the fused CUDA path with its launches stubbed")
    p.add_argument("--run", default="latest", help="label of this run's rows (e.g. before / after)")
    p.add_argument("--calls", type=int, default=400, help="timed forwards per case")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--wrapper", action="store_true", help="with --stub-cuda: time one attention call, ours "
                   "against transformers' SDPA wrapper, both kernels stubbed; writes nothing")
    p.add_argument("--profile", choices=CASES, help="print cProfile's top functions of this case's forwards "
                   "(plain and this case, --calls each) instead of timing; writes nothing")
    args = p.parse_args()
    if args.stub_cuda and args.device != "cpu":
        p.error("--stub-cuda is for --device cpu")
    if args.wrapper and not args.stub_cuda:
        p.error("--wrapper needs --stub-cuda")
    torch.set_num_threads(1)  # tiny ops: intra-op threads only add noise
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" or args.stub_cuda else torch.float32
    path = "cuda-stubbed" if args.stub_cuda else args.device
    if args.stub_cuda:
        stub_cuda()
    nets = models(args, device, dtype)
    ids = torch.randint(1, 128, (1, args.seq), generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    if args.profile:
        return profile(nets, ids, args, sync)
    if args.wrapper:
        return wrapper(nets, args)
    times = {c: [] for c in CASES}
    ops = {}
    with torch.no_grad():
        for case in CASES:
            for _ in range(3):
                nets[case](input_ids=ids, logits_to_keep=1, use_cache=False)
            with OpCounter() as counter:
                nets[case](input_ids=ids, logits_to_keep=1, use_cache=False)
            ops[case] = counter.counts
        sync()
        for i in range(args.calls):
            for case in CASES[i % len(CASES):] + CASES[:i % len(CASES)]:  # each case in each place in turn
                t0 = time.perf_counter()
                nets[case](input_ids=ids, logits_to_keep=1, use_cache=False)
                sync()
                times[case].append(time.perf_counter() - t0)

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    common = dict(run=args.run, date=time.strftime("%Y-%m-%d"), command="python " + " ".join(sys.argv),
                  device=name, path=path, torch=torch.__version__, dtype=str(dtype).replace("torch.", ""),
                  layers=args.layers, seq=args.seq, calls=args.calls)
    plain_ops = sum(ops["plain"].values())
    rows = []
    print(f"{path} ({name}), run {args.run}: {args.layers} layers, {args.seq} tokens, "
          f"median of {args.calls} calls")
    print(f"{'case':8} {'ms/forward':>11} {'us/layer over plain':>20} {'% of a plain layer':>19} {'ops/forward':>12} "
          f"{'extra ops/layer':>16}")
    plain_layer_us = statistics.median(times["plain"]) * 1e6 / args.layers
    for case in CASES:
        ms = statistics.median(times[case]) * 1e3
        n = sum(ops[case].values())
        extra = {op: (ops[case][op] - ops["plain"][op]) / args.layers for op in ops[case] | ops["plain"]
                 if ops[case][op] != ops["plain"][op]}
        row = dict(common, case=case, ms_per_forward=round(ms, 3), ops_per_forward=n)
        if case != "plain":
            # paired call by call: the host's speed drifts (here by 2x within a minute)
            diff = statistics.median(a - b for a, b in zip(times[case], times["plain"]))
            row.update(overhead_us_per_layer=round(diff * 1e6 / args.layers, 1),
                       # runs made minutes apart compare by this: the whole host, not only our share, drifts
                       overhead_pct_of_plain_layer=round(diff * 1e8 / args.layers / plain_layer_us, 1),
                       extra_ops_per_layer=round((n - plain_ops) / args.layers, 2),
                       extra_ops={op: round(c, 2) for op, c in sorted(extra.items(), key=lambda kv: -kv[1])})
        rows.append(row)
        print(f"{case:8} {ms:11.2f} {row.get('overhead_us_per_layer', 0.0):20.1f} "
              f"{row.get('overhead_pct_of_plain_layer', 0.0):19.1f} {n:12d} {row.get('extra_ops_per_layer', 0.0):16.2f}")
    for row in rows[1:]:
        print(f"extra ops per layer, {row['case']}: " + ", ".join(f"{op.removeprefix('aten.')} {c:g}"
                                                                  for op, c in row["extra_ops"].items()))

    keep = [r for r in (json.loads(RESULTS.read_text()) if RESULTS.exists() else [])
            if (r["run"], r["path"], r["device"]) != (args.run, path, name)]
    text = json.dumps(keep + rows, indent=1) + "\n"
    RESULTS.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], RESULTS.name).write_text(text)


if __name__ == "__main__":
    main()
