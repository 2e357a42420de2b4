"""Where a small model's elastic prefill spends its time: host dispatch, syncs, kernels.

Usage (GPU): PYTHONPATH=src python benchmarks/prefill_overhead.py [--seqs 8192,16384] [--model-only]
             [--config-only] [--cache] [--profile-rows N | --no-profile]
Writes benchmarks/results/prefill_overhead.json (and $OUT/prefill_overhead.json when OUT is set); rows
carry `part`:
- config: the fused FA/SSA kernel's GPU time per launch config (--configs), next to FlexAttention's kernel
  and SDPA, on the default model's layer and the 8B layer;
- layer: one layer's attention call (9 / 3 heads, d 64) per backend, three ways: from an idle GPU, the
  host's time alone (perf_counter per call, no sync in the loop) and the GPU time alone (calls queued
  behind matmuls); "auto-old" is "auto" without `possible_modes` (the decisions read on the host);
- model: the default model's shape (random weights, batch 1), plain, attached forced full, and attached
  at MSR 0.5 / 0.7 per backend, plus the router deciding; single pass (model_prefill.py alternates);
- cache (--cache only): the prefill with an ElasticCache against the same prefill without one and the
  plain model with transformers' cache, in turn over 3 rounds, with the host syncs of each.
torch.profiler tables (plain-attached full, forced MSR 0.7, router) are printed, not saved.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import json
import os
import time

import torch

import elastic_attention as ea
from elastic_attention.attention import FA, SSA
from elastic_attention.attention import kernels
from elastic_attention.config import ElasticConfig

from cuda_timing import queued_ms, warm_median_ms  # benchmarks/ sits on sys.path when a script here runs
from model_prefill import MODELS, host_syncs, random_model, static_mask


def host_ms(fn, reps: int = 20) -> float:
    """Host milliseconds per call with no sync inside the timed loop (the launch cost)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    t = (time.perf_counter() - t0) * 1e3 / reps
    torch.cuda.synchronize()
    return t


def layer_rows(seq, backends):
    cfg = ElasticConfig()
    hq, hk, d = 9, 3, 64
    q = torch.randn(1, hq, seq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hk, seq, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    rows = []
    for name, modes in (("msr0.67", [[SSA, SSA, FA]]), ("msr0.33", [[SSA, FA, FA]]), ("msr1", [[SSA] * 3]),
                        ("msr0", [[FA] * 3])):
        m = torch.tensor(modes, device="cuda")
        for backend in backends:
            # "auto" as the model calls it: the router's config says FA / SSA only
            old = backend == "auto-old"  # the decisions read on the host, as before the fused kernel
            fn = lambda: kernels.hybrid_prefill(q, k, v, m, cfg, d ** -0.5,  # noqa: E731
                                                backend="auto" if old else backend, return_density=True,
                                                possible_modes=None if old else (FA, SSA))
            try:
                r = dict(S=seq, modes=name, backend=backend, idle_ms=warm_median_ms(fn, 20),
                         host_ms=host_ms(fn), gpu_ms=queued_ms(fn))
            except Exception as e:  # a backend that cannot run this shape
                r = dict(S=seq, modes=name, backend=backend, error=f"{type(e).__name__}: {str(e)[:160]}")
            rows.append(r)
            print(r, flush=True)
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,  # noqa: E731
                                                                    enable_gqa=True)
    rows.append(dict(S=seq, modes="sdpa", backend="sdpa", idle_ms=warm_median_ms(sdpa, 20), host_ms=host_ms(sdpa),
                     gpu_ms=queued_ms(sdpa)))
    print(rows[-1], flush=True)
    return rows


def config_rows(seq, shape, configs):
    """GPU time of the fused kernel per launch config, next to FlexAttention's kernel and SDPA."""
    from elastic_attention.attention.kernels.fa_ssa import fa_ssa_prefill
    from elastic_attention.attention.kernels.flex import build_block_mask, flex_run
    from elastic_attention.attention.kernels.blocks import padding_bounds
    hq, hk, d, b = shape
    cfg = ElasticConfig()
    q = torch.randn(b, hq, seq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, hk, seq, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    rows = []
    n_ssa = round(0.7 * hk)
    m = torch.tensor([[SSA] * n_ssa + [FA] * (hk - n_ssa)] * b, device="cuda")
    mq = m.repeat_interleave(hq // hk, 1)
    st, en = padding_bounds(None, b, seq, "cuda")
    bm = build_block_mask(mq, st, en, seq, cfg, padded=False)
    ref = flex_run(q, k, v, bm, d ** -0.5)
    base = dict(S=seq, hq=hq, hk=hk, d=d, batch=b, msr=n_ssa / hk)
    rows.append(dict(base, kernel="flex", gpu_ms=queued_ms(lambda: flex_run(q, k, v, bm, d ** -0.5))))
    sd = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    rows.append(dict(base, kernel="sdpa_full", gpu_ms=queued_ms(sd)))
    for c in configs:
        try:
            out = fa_ssa_prefill(q, k, v, m, cfg.sink, cfg.local, d ** -0.5, c)
            err = (out.float() - ref.float()).abs().max().item()
            t = queued_ms(lambda: fa_ssa_prefill(q, k, v, m, cfg.sink, cfg.local, d ** -0.5, c))
            rows.append(dict(base, kernel="fused", config=list(c), gpu_ms=t, max_err_vs_flex=err))
        except Exception as e:
            rows.append(dict(base, kernel="fused", config=list(c), error=f"{type(e).__name__}: {str(e)[:160]}"))
    for r in rows:
        print(r, flush=True)
    return rows


def model_rows(seq, backends, profile):
    kw = MODELS["default"]
    model, ids = random_model("default", seq)
    fwd = lambda: model(input_ids=ids, logits_to_keep=1, use_cache=False)  # noqa: E731
    rows = []
    with torch.no_grad():
        plain = warm_median_ms(fwd, 10)
        ea.attach(model, ElasticConfig())
        with ea.force_mode(model, "full"):
            full = warm_median_ms(fwd, 10)
        rows.append(dict(S=seq, what="plain / attached MSR 0", plain_ms=plain, elastic_ms=full))
        print(rows[-1], flush=True)
        for msr in (0.5, 0.7):
            mask = static_mask(kw["num_hidden_layers"], kw["num_key_value_heads"], msr)
            for backend in backends:
                kernels.DEFAULT_BACKEND = "auto" if backend == "auto-old" else backend
                kernels.FUSED_MAX_WORK = 0 if backend == "auto-old" else 1e12
                try:
                    with ea.force_mode(model, mask):
                        t = warm_median_ms(fwd, 10)
                        syncs = host_syncs(fwd)
                    rows.append(dict(S=seq, what=f"MSR {msr}", backend=backend, plain_ms=plain, elastic_ms=t,
                                     speedup=plain / t, host_syncs=syncs))
                except Exception as e:
                    rows.append(dict(S=seq, what=f"MSR {msr}", backend=backend,
                                     error=f"{type(e).__name__}: {str(e)[:160]}"))
                print(rows[-1], flush=True)
            kernels.DEFAULT_BACKEND, kernels.FUSED_MAX_WORK = "auto", 1e12
        # the router deciding (untrained: its own decisions) instead of forced heads
        t = warm_median_ms(fwd, 10)
        msr_r = sum((s.modes == SSA).float().mean().item() for s in model.elastic_runtime.layers) / 30
        rows.append(dict(S=seq, what="router", backend="auto", plain_ms=plain, elastic_ms=t, msr=msr_r))
        print(rows[-1], flush=True)
        if profile:
            from torch.profiler import ProfilerActivity, profile as prof
            mask = static_mask(kw["num_hidden_layers"], kw["num_key_value_heads"], 0.7)
            for name, ctx in (("plain-attached MSR 0", lambda: ea.force_mode(model, "full")),
                              ("forced MSR 0.7", lambda: ea.force_mode(model, mask)),
                              ("router", contextlib.nullcontext)):
                with ctx():
                    fwd()
                    torch.cuda.synchronize()
                    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                        fwd()
                        torch.cuda.synchronize()
                ev = p.key_averages()
                gpu = sum(e.self_device_time_total for e in ev) / 1e3
                syncs = {e.key: e.count for e in ev if "Synchronize" in e.key or "Memcpy" in e.key}
                print(f"== {name}: GPU busy {gpu:.2f} ms; sync / copy calls {syncs}", flush=True)
                print(ev.table(sort_by="self_cpu_time_total", row_limit=profile), flush=True)
    del model
    torch.cuda.empty_cache()
    return rows


def cache_rows(seq, rounds=3, reps=3, profile_rows=0):
    """TTFT's extra cost: the attached model's prefill with an ElasticCache (compaction included) against
    the same prefill without a cache and the plain model with transformers' cache, measured in turn."""
    kw = MODELS["default"]
    model, ids = random_model("default", seq)
    mask = static_mask(kw["num_hidden_layers"], kw["num_key_value_heads"], 0.7)
    plain = lambda: model(input_ids=ids, logits_to_keep=1, use_cache=True)  # noqa: E731
    cached = lambda: model(input_ids=ids, logits_to_keep=1, past_key_values=ea.ElasticCache(model))  # noqa: E731
    uncached = lambda: model(input_ids=ids, logits_to_keep=1, use_cache=False)  # noqa: E731
    kinds = {"plain_dynamic_cache": (None, plain)}
    for msr in (0.0, 0.7):
        mode = "full" if msr == 0 else mask
        kinds[f"elastic_cache_msr{msr}"] = (mode, cached)
        kinds[f"elastic_no_cache_msr{msr}"] = (mode, uncached)
    times = {k: [] for k in kinds}
    syncs = {}
    with torch.no_grad():
        for _ in range(rounds):
            for name, (mode, fn) in kinds.items():
                if mode is None:
                    if getattr(model, "elastic_runtime", None) is not None:
                        ea.detach(model)
                    times[name].append(warm_median_ms(fn, reps))
                    syncs[name] = host_syncs(fn)
                    continue
                if getattr(model, "elastic_runtime", None) is None:
                    ea.attach(model, ElasticConfig())
                with ea.force_mode(model, mode):
                    times[name].append(warm_median_ms(fn, reps))
                    syncs[name] = host_syncs(fn)
        if profile_rows:
            from torch.profiler import ProfilerActivity, profile as prof
            with ea.force_mode(model, mask), prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                cached()
                torch.cuda.synchronize()
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile_rows), flush=True)
    rows = [dict(S=seq, what=name, ms=statistics.median(v), per_round=v, host_syncs=syncs[name])
            for name, v in times.items()]
    for r in rows:
        print(r, flush=True)
    del model
    torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="8192,16384")
    ap.add_argument("--backends", default="auto,auto-old,fused,flex,split")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--configs", default="64,64,4,3;64,64,4,2;64,32,4,3;128,64,8,3;128,64,4,3;128,32,8,3",
                    help="fused-kernel launch configs BLOCK_M,BLOCK_N,warps,stages (';'-separated) to time")
    ap.add_argument("--config-only", action="store_true")
    ap.add_argument("--model-only", action="store_true")
    ap.add_argument("--cache", action="store_true", help="only the prefill with an ElasticCache (TTFT's extra cost)")
    ap.add_argument("--profile-rows", type=int, default=25, help="rows of the torch.profiler tables (0: none)")
    args = ap.parse_args()
    backends = args.backends.split(",")
    meta = dict(card=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"), torch=torch.__version__)
    rows = []
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "prefill_overhead.json")

    def dump():
        data = json.dumps(rows, indent=1)
        open(path, "w").write(data)
        if os.environ.get("OUT"):
            open(os.path.join(os.environ["OUT"], "prefill_overhead.json"), "w").write(data)

    if args.cache:
        for seq in (int(x) for x in args.seqs.split(",")):
            rows += [dict(meta, part="cache", **r) for r in cache_rows(seq, profile_rows=args.profile_rows
                                                                       if not args.no_profile else 0)]
            dump()
        return
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs.split(";") if c]
    if args.model_only:
        configs = []
    for seq, shape in ((8192, (9, 3, 64, 1)), (16384, (9, 3, 64, 1)), (8192, (32, 8, 128, 1)),
                       (32768, (32, 8, 128, 1))) if configs else ():
        rows += [dict(meta, part="config", **r) for r in config_rows(seq, shape, configs)]
        dump()
    for i, seq in enumerate(int(s) for s in args.seqs.split(",")):
        if args.config_only:
            break
        if not args.model_only:
            rows += [dict(meta, part="layer", **r) for r in layer_rows(seq, backends)]
        dump()
        rows += [dict(meta, part="model", **r) for r in model_rows(seq, backends, profile=0 if i or args.no_profile else args.profile_rows)]
        dump()


if __name__ == "__main__":
    main()
