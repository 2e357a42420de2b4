"""Whole-model prefill: random-weight Llama models, elastic (static 70 % sparse heads) vs plain SDPA.

Usage (GPU): PYTHONPATH=src python benchmarks/model_prefill.py [--router-only] [--only default:8192,llama8b-5L:65536] [--rounds 5]
Writes benchmarks/results/model_prefill.json (and $OUT/model_prefill.json when OUT is set).

Rows: the default model's shape (30 layers, hidden 576, 9 / 3 heads, d 64) at 8K, 16K and 32K, and an 8B-shaped
model (hidden 4096, 32 / 8 heads, d 128, intermediate 14336, vocab 128256) with 5 layers (40 KV heads:
MSR 0.7 = 28 SSA heads) at 32K and 64K. Heads are forced with force_mode(static bool mask). Columns:
plain SDPA model; attached + fast path at MSR 0.7; attached + fast path forced full (MSR 0, overhead of
routing + dispatch); attached with the routers deciding (random routers whose head biases of +-100 make them
decide the same 70 % mask: the routing's own cost counted, elastic_routed_ms), and for the default shape attached at MSR 0.7 with every Triton launch through triton's JIT
(not the compiled handle, kernels/launcher.py), measured in turn over 5 rounds; the host's time of one
forward (until the call returns), plain and elastic; the host syncs of one forward, plain and elastic;
attached with the old masked path (fast_prefill off) at MSR 0.7 where memory allows. Also times the router forward (pooling included) against one layer's attention at 32K.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import elastic_attention as ea
from elastic_attention.attention import FA, SSA
from elastic_attention.attention.kernels import hybrid_prefill, launcher
from elastic_attention.config import ElasticConfig
from elastic_attention.router import AttentionRouter

from cuda_timing import back_to_back_ms, queued_ms, warm_median_ms as timed  # benchmarks/ sits on sys.path when a script here runs

MODELS = {
    "default": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, head_dim=64),
    "llama8b-5L": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=5, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, head_dim=128),
}


def static_mask(layers, kv, msr, seed=0):
    n = layers * kv
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    m = torch.zeros(n, dtype=torch.bool)
    m[perm[:round(msr * n)]] = True
    return m.view(layers, kv)


def random_model(name: str, seq: int):
    """(bf16 Llama of the named shape with random weights on the GPU, one row of seq random token ids)."""
    kw = MODELS[name]
    cfg = LlamaConfig(max_position_embeddings=max(seq, 8192), rope_theta=500000.0, **kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(prev)
    return model, torch.randint(1, kw["vocab_size"], (1, seq), device="cuda")


def host_syncs(fn) -> int:
    """How many times one call makes the host wait for the GPU (torch's sync debug mode, counted)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def host_ms(fn, reps: int = 5) -> float:
    """Median milliseconds until one call returns, started from an idle GPU (the host's side of a forward;
    a host sync inside the call adds the GPU time before it)."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
    return statistics.median(times)


def route_as(model, mask, margin: float = 100.0) -> None:
    """Make the attached (random) routers decide `mask` [layers, kv] (True = sparse) on any prompt: each
    head's bias is +-margin, far beyond the MLP's logits. The routers still pool and run their MLP, so a
    routed forward costs what a trained router's does."""
    for router, row in zip(ea.routers(model), mask):
        with torch.no_grad():
            router.head_bias.copy_(torch.where(row, margin, -margin).to(router.head_bias))


def run_model(name, seq, old_path=True, rounds=5, reps=3, jit_row=False):
    """Plain, elastic at MSR 0.7 and elastic forced full, measured in turn over `rounds` rounds (medians of
    the round medians): the host's speed drifts between runs, and a small model at 8K is bound by it."""
    kw = MODELS[name]
    model, ids = random_model(name, seq)
    fwd = lambda: model(input_ids=ids, logits_to_keep=1, use_cache=False)  # noqa: E731
    r = dict(card=torch.cuda.get_device_name(), model=name, S=seq, layers=kw["num_hidden_layers"],
             date=time.strftime("%Y-%m-%d"), rounds=rounds)
    mask = static_mask(kw["num_hidden_layers"], kw["num_key_value_heads"], 0.7)
    r["msr_actual"] = mask.float().mean().item()

    def run(kind):
        launcher.ENABLED = kind != "elastic_jit"
        attached = getattr(model, "elastic_runtime", None) is not None
        if kind == "plain" and attached:
            ea.detach(model)
        if kind != "plain" and not attached:
            ea.attach(model, ElasticConfig())
            route_as(model, mask)
        if kind in ("plain", "routed"):  # routed: the routers decide (the mask, through their head biases)
            return timed(fwd, reps)
        with ea.force_mode(model, "full" if kind == "full" else mask):
            return timed(fwd, reps)

    kinds = {"sdpa_ms": "plain", "elastic_ms": "elastic", "elastic_full_ms": "full", "elastic_routed_ms": "routed"}
    if jit_row:  # the same elastic forward with every Triton launch through triton's JIT (launcher.ENABLED off)
        kinds["elastic_jit_launch_ms"] = "elastic_jit"
    times = {key: [] for key in kinds}
    with torch.no_grad():
        for _ in range(rounds):
            for key, kind in kinds.items():
                times[key].append(run(kind))
        for key, values in times.items():
            r[key] = statistics.median(values)
        r["speedup_per_round"] = [p / e for p, e in zip(times["sdpa_ms"], times["elastic_ms"])]
        r["speedup_median_of_rounds"] = statistics.median(r["speedup_per_round"])
        r["speedup_routed"] = r["sdpa_ms"] / r["elastic_routed_ms"]
        r["speedup_routed_per_round"] = [p / e for p, e in zip(times["sdpa_ms"], times["elastic_routed_ms"])]
        rt = model.elastic_runtime  # still attached after the rounds, its routers deciding outside force_mode
        fwd()
        decided = torch.stack([state.decisions[0].bool().cpu() for state in rt.layers])
        r["routed_matches_mask"] = bool(torch.equal(decided, mask))
        run("plain")
        r["host_ms_plain"] = host_ms(fwd)
        r["host_syncs_plain"] = host_syncs(fwd)
        run("elastic")
        rt = model.elastic_runtime
        with ea.force_mode(model, mask):
            r["host_ms_elastic"] = host_ms(fwd)
            r["host_syncs_elastic"] = host_syncs(fwd)
            r["esr_last_layer"] = 1 - rt.layers[-1].density.mean().item()
        if old_path:
            rt.fast_prefill = False
            try:
                with ea.force_mode(model, mask):
                    r["old_path_ms"] = timed(fwd, reps=2)
            except torch.OutOfMemoryError:
                r["old_path_ms"] = None
            rt.fast_prefill = True
    r["speedup"] = r["sdpa_ms"] / r["elastic_ms"]
    del model
    torch.cuda.empty_cache()
    return r


def router_vs_attention(seq=32768):
    out = []
    for name, (hq, hk, d) in {"llama8b": (32, 8, 128), "default": (9, 3, 64)}.items():
        router = AttentionRouter(d).cuda().eval()
        keys = torch.randn(1, seq, hk, d, device="cuda", dtype=torch.bfloat16)
        q = torch.randn(1, hq, seq, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, hk, seq, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        modes = torch.tensor([[SSA if i < round(0.7 * hk) else FA for i in range(hk)]], device="cuda")
        with torch.no_grad():
            # what a prefill runs: pooling + MLP + decision (one Triton launch in inference) vs eager
            t_router = timed(lambda: router(keys), reps=50)
            t_eager = timed(lambda: router.decide(router.logits(keys)), reps=50)
            t_attn = timed(lambda: hybrid_prefill(q, k, v, modes, ElasticConfig(), d ** -0.5), reps=10)
            t_stream = back_to_back_ms(lambda: router(keys))
            t_gpu = queued_ms(lambda: router(keys))
            same = torch.allclose(router(keys)[0], router.logits(keys), atol=1e-4, rtol=1e-3)
        out.append(dict(card=torch.cuda.get_device_name(), shape=name, S=seq, router_ms=t_router,
                        router_eager_ms=t_eager, router_back_to_back_ms=t_stream, fused_matches_eager=same,
                        attention_ms=t_attn, router_pct=100 * t_router / t_attn,
                        router_back_to_back_pct=100 * t_stream / t_attn, router_gpu_ms=t_gpu,
                        router_gpu_pct=100 * t_gpu / t_attn, date=time.strftime("%Y-%m-%d")))
        print(out[-1], flush=True)
    return out


def main():
    rows = []
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "model_prefill.json")

    def dump():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = json.dumps(rows, indent=1)
        open(path, "w").write(data)
        if os.environ.get("OUT"):
            open(os.path.join(os.environ["OUT"], "model_prefill.json"), "w").write(data)

    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 5
    if not only:
        rows.extend(router_vs_attention())
        dump()
    if "--router-only" in sys.argv:
        return 0
    for name, seq, old in (("default", 8192, True), ("default", 16384, False), ("default", 32768, False),
                           ("llama8b-5L", 32768, True), ("llama8b-5L", 65536, False)):
        if only and f"{name}:{seq}" not in only:
            continue
        try:
            rows.append(run_model(name, seq, old, rounds=rounds, jit_row=name == "default"))
        except torch.OutOfMemoryError as e:
            rows.append(dict(model=name, S=seq, error=f"OOM: {str(e)[:120]}"))
        print(rows[-1], flush=True)
        dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())
