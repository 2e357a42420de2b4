"""Where a whole-model prefill's GPU time goes: torch.profiler's kernel table, plain against attached.

The model_prefill.py shapes (random weights, heads forced with the same static 70 % sparse mask). One
warm-up forward, then `--calls` profiled forwards of each; per kernel name: GPU ms per forward and calls per
forward, the top `--top` of each side printed, every kernel written.

Usage (GPU): PYTHONPATH=src python benchmarks/model_profile.py [--model llama8b-5L] [--seq 65536] [--calls 2]
Writes benchmarks/results/model_profile.json (rows of the same model, S and run label replaced; also
$OUT/model_profile.json when OUT is set).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import elastic_attention as ea
from elastic_attention.config import ElasticConfig

from cuda_timing import save_json  # benchmarks/ sits on sys.path when a script here runs
from model_prefill import MODELS, random_model, static_mask  # benchmarks/ sits on sys.path when a script here runs

RESULTS = Path(__file__).parent / "results" / "model_profile.json"


def kernel_table(fn, calls: int) -> dict:
    """{kernel name: (GPU ms per forward, launches per forward)} over `calls` profiled forwards."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total, count = collections.Counter(), collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            total[e.name] += e.device_time_total / 1e3 / calls
            count[e.name] += 1 / calls
    return {name: (round(ms, 4), round(count[name], 2)) for name, ms in total.most_common()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="llama8b-5L", choices=sorted(MODELS))
    p.add_argument("--seq", type=int, default=65536)
    p.add_argument("--msr", type=float, default=0.7)
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--run", default="latest")
    args = p.parse_args()
    kw = MODELS[args.model]
    model, ids = random_model(args.model, args.seq)
    fwd = lambda: model(input_ids=ids, logits_to_keep=1, use_cache=False)  # noqa: E731
    mask = static_mask(kw["num_hidden_layers"], kw["num_key_value_heads"], args.msr)
    with torch.no_grad():
        plain = kernel_table(fwd, args.calls)
        ea.attach(model, ElasticConfig())
        with ea.force_mode(model, mask):
            elastic = kernel_table(fwd, args.calls)
    rows = []
    for side, table in (("plain", plain), ("elastic", elastic)):
        total = sum(ms for ms, _ in table.values())
        print(f"{side}: {total:.2f} GPU ms a forward ({args.model}, S {args.seq}, MSR {args.msr})")
        for name, (ms, n) in list(table.items())[:args.top]:
            print(f"  {ms:9.3f} ms {n:7.1f}x  {name[:110]}")
        rows.append(dict(run=args.run, date=time.strftime("%Y-%m-%d"), card=torch.cuda.get_device_name(),
                         model=args.model, S=args.seq, msr=args.msr, side=side, gpu_ms=round(total, 3),
                         kernels=table, command="python benchmarks/model_profile.py " + " ".join(sys.argv[1:])))
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    keep = [r for r in old if (r["model"], r["S"], r["run"]) != (args.model, args.seq, args.run)]
    save_json(RESULTS, keep + rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
