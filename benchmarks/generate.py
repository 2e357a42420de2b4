"""Generation with the elastic KV cache against the unattached model: time to first token, decode speed, KV bytes.

Usage (GPU, from the repository root):

    PYTHONPATH=src python benchmarks/generate.py            # full grid: about 5 minutes on one H200 (107 s for 8b, 212 s for default)
    PYTHONPATH=src python benchmarks/generate.py --quick    # 16K and 64K, MSR 0 and 0.7, batch 1
    python benchmarks/generate.py --device cpu --models tiny --lengths 256   # end-to-end check on a CPU

Writes benchmarks/results/generate.json (a list of rows; --out moves it; also $OUT/generate.json when OUT
is set) and prints a markdown table. A row is one (model, context S, MSR, batch):

- Models: "8b" = Llama-3-8B shape (hidden 4096, 32 query / 8 KV heads, head_dim 128, intermediate 14336,
  vocab 128256) with random weights and only --layers layers (default 4; every figure is for that stack,
  nothing is scaled to 32 layers); "default" = SmolLM2-135M (models.load_default_model, needs the GGUF;
  its max_position_embeddings is raised to fit S: RoPE positions past its trained 8K only change the
  values, not the work); "tiny" = a 2-layer random Llama (head_dim 64) for checks on a CPU. bf16 by
  default. SSA window: sink 64 / local 512 for "default" (its shipped router's config), the library's
  sink 128 / local 2048 for "8b", 16 / 64 for "tiny".
- Decisions are forced with force_mode(model, mask): round(MSR * layers * kv_heads) sparse heads spread
  evenly over the layers (as benchmarks/cpu_prefill.py); msr_actual is what that gives.
- TTFT: one prefill of random prompt tokens [batch, S] (logits of the last position only) plus the argmax
  of the first token, wall clock between two device syncs, median of --reps after one warm-up prefill
  (the warm-up compiles FlexAttention shapes and builds cuDNN plans). ttft_ms: attached, with an
  ElasticCache (prefill + compaction of the cache); ttft_plain_ms: the unattached model, transformers'
  own cache. Both prefills use SDPA's default kernels.
- Decode: greedy from the timed prefill's cache, --warmup-tokens steps, then --new-tokens timed steps
  (one token per row per step, argmax fed back, no sync in between). decode_tok_s = batch * steps /
  seconds. SDPA's default backend on Hopper with torch 2.11 is cuDNN, which builds a new plan for
  every KV length (about 45 ms per decode step on the plain cache); ElasticCache's decode asks SDPA for
  flash / memory-efficient / math kernels only. For a fair baseline the plain model decodes under the
  same restriction (torch.nn.attention.sdpa_kernel(cache.DECODE_BACKENDS)): decode_tok_s_plain. The plain
  model's decode with SDPA unrestricted follows on the same cache: decode_tok_s_plain_default.
- KV bytes, right after the prefill (S positions): kv_bytes = ElasticCache.kv_bytes(), kv_bytes_full =
  its full_kv_bytes(), kv_bytes_plain = the plain cache's key and value tensors. kv_ratio = full / elastic.
  kv_ideal = full * ((1 - m) + m * min(S, sink + local) / S) with m = msr_actual; kv_ideal_ratio_error =
  kv_bytes / kv_ideal - 1.
- Decode attention alone (decode_attn_ms, decode_attn_ms_full, decode_attn_speedup = full / elastic):
  per layer of the stack, K and V of that layer's shape [batch, kv_heads, S, head_dim] (random values)
  are held once as the ElasticCache layout (cache.CompactKV with that layer's decisions) and once as a
  plain [b, kv_heads, T, d] cache; one decode step's attention is then timed on each: CompactKV's
  extend_and_attend (store the token, attend to the kept entries: the decode kernel on a GPU) against
  what transformers does on a plain cache (torch.cat of the new token onto K and V, then SDPA with
  enable_gqa over all T keys), both under the same sdpa_kernel restriction. Two more columns separate
  the layout from the kernel: decode_attn_ms_sdpa, the same CompactKV decoding with SDPA (use_kernel =
  False, the path before the kernel), and decode_attn_ms_full_kernel, a CompactKV holding every head in
  full (MSR 0) decoded by the same kernel: a full cache written in place, no torch.cat
  (decode_attn_speedup_kernel = full_kernel / elastic compares like with like). Wall clock of
  --attn-steps steps between two syncs (host launch cost included, as in a decode step), summed over
  the layers of the stack (layers with the same number of sparse heads are timed once); the three
  CompactKV layouts are timed in turn over --attn-rounds rounds, medians (timed one after the other, the
  first ran 8-13 % slower on identical layouts in the 2026-12-01 runs: results/generate_timing_order.json).
  The same four as GPU time alone (decode_attn_gpu_ms, _gpu_ms_full, _gpu_ms_full_kernel, _gpu_ms_sdpa; speedups
  decode_attn_gpu_speedup and _gpu_speedup_kernel): --attn-steps steps queued behind matmuls that keep
  the GPU busy while the host launches them (cuda_timing.queued_ms), so the events time the kernels.
- Compilations: torch._dynamo's counters["stats"]["unique_graphs"] before and after the row
  (dynamo_graphs_before / _after, compiles = the difference: FlexAttention shapes compiled by this row,
  warm-up included), flex_cache_entries = the compiled variants of flex_attention now held (what
  dynamo's recompile_limit caps), recompile_limit_hits = warnings that a limit was hit so far.
- Rows whose plain cache would exceed --max-kv-gb, or whose estimated peak (weights + plain cache +
  prefill activations) exceeds --mem-gb, are skipped with the reason recorded; rows not started within
  --budget-s are recorded as skipped too; an out-of-memory error is recorded and the run goes on.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

import elastic_attention as ea
from elastic_attention.cache import DECODE_BACKENDS, CompactKV, ElasticCache
from elastic_attention.attention.masks import FA, SSA
from elastic_attention.checks import parse_lengths, split_list

from cpu_prefill import spread_mask  # the sibling benchmark's even spread of sparse heads
from cuda_timing import queued_ms

SHAPES = {  # LlamaConfig fields of the random-weight models
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, vocab_size=512, num_hidden_layers=2),
}
WINDOWS = {"8b": (128, 2048), "default": (64, 512), "tiny": (16, 64)}  # (sink, local)
QUICK = dict(lengths="16384,65536", msrs="0,0.7", batches="1")


# ------------------------------------------------------------------ models

def load(name: str, layers: int, device: str, dtype: torch.dtype, max_len: int):
    """(model, vocab size, what the name stands for)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name == "default":
        from elastic_attention.models import load_default_model

        model, _ = load_default_model(device=device, dtype=dtype)
        # SmolLM2 was trained to 8K; a longer prompt costs the same work (RoPE needs no table).
        model.config.max_position_embeddings = max(model.config.max_position_embeddings, max_len)
        what = f"SmolLM2-135M-Instruct ({model.config.num_hidden_layers} layers)"
        return model, model.config.vocab_size, what
    kw = dict(SHAPES[name])
    if name == "8b":
        kw["num_hidden_layers"] = layers
    cfg = LlamaConfig(max_position_embeddings=max_len, **kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    what = (f"Llama-3-8B shape, random weights, {layers} of 32 layers" if name == "8b"
            else "tiny random Llama (2 layers, 4 / 2 heads, head_dim 64)")
    return model, kw["vocab_size"], what


def shape_of(model) -> dict:
    c = model.config
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(layers=c.num_hidden_layers, hq=c.num_attention_heads, hk=c.num_key_value_heads, d=d,
                hidden=c.hidden_size, inter=c.intermediate_size)


def memory_estimate(shape: dict, weights: int, seq: int, batch: int, elem: int) -> tuple[int, int]:
    """(plain K/V bytes, rough peak bytes of a plain prefill + its cache). The peak counts the weights,
    the cache, and per token a few hidden-size tensors, three intermediate-size ones (the MLP's gate,
    up and product) and the projected q, k, v."""
    tokens = batch * seq
    kv = tokens * shape["layers"] * shape["hk"] * shape["d"] * 2 * elem
    per_token = 4 * shape["hidden"] + 3 * shape["inter"] + (shape["hq"] + 2 * shape["hk"]) * shape["d"]
    return kv, weights + kv + tokens * per_token * elem


# ------------------------------------------------------------------ timing

def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_arg_of(model) -> str:
    # transformers 5.24 renamed `past_key_values` to `cache` (the old name still works, with a warning)
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output, name: str):
    return output[name] if name in output else output["past_key_values"]


@torch.no_grad()
def prefill(model, ids, elastic: bool):
    """(first token [b, 1], cache, seconds): the prompt's forward, last position's logits only, argmax."""
    arg = cache_arg_of(model)
    extra = {arg: ElasticCache(model)} if elastic else {}
    sync(ids.device)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **extra)
    token = out.logits[:, -1:].argmax(-1)
    sync(ids.device)
    return token, cache_of(out, arg), time.perf_counter() - start


@torch.no_grad()
def decode(model, token, cache, steps: int):
    """(last token, cache, seconds) of `steps` greedy steps; one sync at the end."""
    arg = cache_arg_of(model)
    sync(token.device)
    start = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=token, use_cache=True, logits_to_keep=1, **{arg: cache})
        cache = cache_of(out, arg)
        token = out.logits[:, -1:].argmax(-1)
    sync(token.device)
    return token, cache, time.perf_counter() - start


def plain_cache_bytes(cache) -> int | None:
    tensors = [t for layer in getattr(cache, "layers", []) for t in (getattr(layer, "keys", None),
                                                                     getattr(layer, "values", None))]
    if not tensors or any(not isinstance(t, torch.Tensor) for t in tensors):
        return None
    return sum(t.numel() * t.element_size() for t in tensors)


def timed_prefills(model, ids, elastic: bool, reps: int):
    """One warm-up prefill, then `reps` timed: (token, cache of the last one, median seconds)."""
    token, cache, _ = prefill(model, ids, elastic)
    del token, cache
    times = []
    for _ in range(reps):
        token, cache, t = prefill(model, ids, elastic)
        times.append(t)
        if len(times) < reps:
            del token, cache
    return token, cache, statistics.median(times)


# ------------------------------------------------------------------ decode attention alone

def per_step_ms(step, steps: int, device) -> tuple[float, float | None]:
    """(wall-clock milliseconds per call of `step`: two warm-up calls, then `steps` calls, one sync; GPU
    milliseconds per call with the host's launch hidden behind queued matmuls, cuda_timing.queued_ms,
    None on a CPU)."""
    with sdpa_kernel(DECODE_BACKENDS):
        step()
        step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall = 1000 * (time.perf_counter() - start) / steps
        gpu = queued_ms(step, n=steps) if device.type == "cuda" else None
    return wall, gpu


def _sum(a, b, times: int = 1):
    """(wall, gpu) pairs added, `b` counted `times`; None stays None."""
    return tuple(None if x is None or y is None else x + y * times for x, y in zip(a, b))


def layer_tensors(shape: dict, seq: int, batch: int, device, dtype, seed: int):
    """Random K, V [b, hk, seq, d] of one layer, a decode query [b, hq, 1, d] and the new token's K, V."""
    hq, hk, d = shape["hq"], shape["hk"], shape["d"]
    g = torch.Generator(device=device).manual_seed(seed)
    make = lambda *size: torch.randn(*size, device=device, dtype=dtype, generator=g)  # noqa: E731
    return make(batch, hk, seq, d), make(batch, hk, seq, d), make(batch, hq, 1, d), make(batch, hk, 1, d), \
        make(batch, hk, 1, d)


@torch.no_grad()
def plain_attention_ms(shape: dict, seq: int, batch: int, steps: int, device, dtype) -> tuple:
    """One decode step's attention on transformers' plain cache, summed over the stack's layers: torch.cat
    of the new token onto K and V (what DynamicCache.update does), then SDPA over all keys (GQA native)."""
    keys, values, q, k1, v1 = layer_tensors(shape, seq, batch, device, dtype, seq)
    held = {"k": keys, "v": values}
    del keys, values
    scale, gqa = shape["d"] ** -0.5, shape["hq"] != shape["hk"]

    def step():
        held["k"] = torch.cat([held["k"], k1], dim=-2)
        held["v"] = torch.cat([held["v"], v1], dim=-2)
        F.scaled_dot_product_attention(q, held["k"], held["v"], scale=scale, enable_gqa=gqa)

    return _sum((0.0, 0.0), per_step_ms(step, steps, device), shape["layers"])


@torch.no_grad()
def elastic_attention_ms(shape: dict, mask: torch.Tensor, seq: int, batch: int, sink: int, local: int,
                         steps: int, device, dtype, rounds: int = 3) -> dict:
    """The same on the ElasticCache layout, three ways: CompactKV with each layer's decisions decoded by the
    kernel ("elastic"), the same by SDPA ("sdpa", use_kernel=False), and a CompactKV holding every head in
    full decoded by the kernel ("full_kernel"). Each step stores the token and attends to the kept entries.
    Layers with as many sparse heads share one timing. The three are timed in turn over `rounds` rounds
    (medians): what is timed first on a warm GPU ran slower in earlier runs. {name: (wall, gpu)} ms as
    per_step_ms, summed over the layers."""
    sparse_per_layer = mask.sum(1).tolist()
    scale = shape["d"] ** -0.5
    total = {name: (0.0, 0.0) for name in ("elastic", "sdpa", "full_kernel")}
    for n_sparse in sorted(set(sparse_per_layer)):
        keys, values, q, k1, v1 = layer_tensors(shape, seq, batch, device, dtype, seq)
        layer_mask = mask[sparse_per_layer.index(n_sparse)]
        compacts = {}
        for name, heads in (("elastic", layer_mask), ("sdpa", layer_mask), ("full_kernel", torch.zeros_like(layer_mask))):
            modes = torch.where(heads, SSA, FA).to(device).expand(batch, shape["hk"])
            compacts[name] = CompactKV(keys, values, modes, None, sink, local)
            compacts[name].use_kernel = name != "sdpa"
        del keys, values
        times = {name: [] for name in compacts}
        for _ in range(rounds):
            for name, compact in compacts.items():
                times[name].append(per_step_ms(lambda c=compact: c.extend_and_attend(q, k1, v1, scale), steps, device))
        for name, per_round in times.items():
            wall = statistics.median(w for w, _ in per_round)
            gpu = None if per_round[0][1] is None else statistics.median(g for _, g in per_round)
            total[name] = _sum(total[name], (wall, gpu), sparse_per_layer.count(n_sparse))
        del compacts
    return total


# ------------------------------------------------------------------ compile counters

class LimitWatch(logging.Handler):
    """Counts dynamo's "hit config.recompile_limit" (cache_size_limit in older torch) warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.hits, self.last = 0, None

    def emit(self, record):
        if record is self.last:  # the same record reaching the parent logger too
            return
        self.last = record
        text = record.getMessage()
        if "recompile_limit" in text or "cache_size_limit" in text:
            self.hits += 1


def dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def flex_cache_entries() -> int | None:
    """Compiled variants of flex_attention held by dynamo (what its recompile limit counts)."""
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
        from torch.nn.attention.flex_attention import flex_attention

        return len(_debug_get_cache_entry_list(flex_attention.__code__))
    except Exception:  # a private helper: absent or changed in some torch release
        return None


def recompile_limit() -> int | None:
    import torch._dynamo

    cfg = torch._dynamo.config
    return getattr(cfg, "recompile_limit", getattr(cfg, "cache_size_limit", None))


# ------------------------------------------------------------------ one (S, batch): plain once, then each MSR

def prompt(vocab: int, seq: int, batch: int, device) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seq + batch)
    return torch.randint(1, vocab, (batch, seq), generator=gen).to(device)


def measure_plain(model, ids, args, device, dtype) -> dict:
    """The unattached model: TTFT, decode under the decode-kernel restriction, then unrestricted; its KV bytes
    and one decode step's attention on its cache layout."""
    batch, seq = ids.shape
    row = {}
    token, cache, t = timed_prefills(model, ids, False, args.reps)
    row["ttft_plain_ms"] = 1000 * t
    row["kv_bytes_plain"] = plain_cache_bytes(cache)
    with sdpa_kernel(DECODE_BACKENDS):
        token, cache, _ = decode(model, token, cache, args.warmup_tokens)
        token, cache, t = decode(model, token, cache, args.new_tokens)
    row["decode_tok_s_plain"] = batch * args.new_tokens / t
    token, cache, _ = decode(model, token, cache, args.warmup_tokens)
    token, cache, t = decode(model, token, cache, args.new_tokens)
    row["decode_tok_s_plain_default"] = batch * args.new_tokens / t
    del token, cache
    free(device)
    row["decode_attn_ms_full"], row["decode_attn_gpu_ms_full"] = plain_attention_ms(
        shape_of(model), seq, batch, args.attn_steps, device, dtype)
    free(device)
    return row


def measure_elastic(model, name, ids, msr, plain, args, device, dtype, watch) -> dict:
    """Attached with the decisions forced to a spread mask of this MSR, decoding from an ElasticCache."""
    batch, seq = ids.shape
    shape = shape_of(model)
    sink, local = WINDOWS[name]
    mask = spread_mask(shape["layers"], shape["hk"], msr)
    m = mask.float().mean().item()
    row = dict(msr_actual=m, sink=sink, local=local, dynamo_graphs_before=dynamo_graphs())
    ea.attach(model, ea.ElasticConfig(sink=sink, local=local))
    try:
        with ea.force_mode(model, mask):
            token, cache, t = timed_prefills(model, ids, True, args.reps)
        row["ttft_ms"] = 1000 * t
        row["kv_bytes"], row["kv_bytes_full"] = cache.kv_bytes(), cache.full_kv_bytes()
        token, cache, _ = decode(model, token, cache, args.warmup_tokens)
        token, cache, t = decode(model, token, cache, args.new_tokens)
        row["decode_tok_s"] = batch * args.new_tokens / t
        del token, cache
    finally:
        ea.detach(model)
    free(device)
    row["dynamo_graphs_after"] = dynamo_graphs()
    row["compiles"] = row["dynamo_graphs_after"] - row["dynamo_graphs_before"]
    row["flex_cache_entries"] = flex_cache_entries()
    row["recompile_limit"] = recompile_limit()
    row["recompile_limit_hits"] = watch.hits
    times = elastic_attention_ms(shape, mask, seq, batch, sink, local, args.attn_steps, device, dtype,
                                 args.attn_rounds)
    row["decode_attn_ms"], row["decode_attn_gpu_ms"] = times["elastic"]
    row["decode_attn_ms_sdpa"], row["decode_attn_gpu_ms_sdpa"] = times["sdpa"]
    row["decode_attn_ms_full_kernel"], row["decode_attn_gpu_ms_full_kernel"] = times["full_kernel"]
    free(device)

    row.update(plain)
    full = row["kv_bytes_full"]
    row["kv_ratio"] = full / row["kv_bytes"]
    row["kv_ideal"] = full * ((1 - m) + m * min(seq, sink + local) / seq)
    row["kv_ideal_ratio_error"] = row["kv_bytes"] / row["kv_ideal"] - 1
    row["ttft_speedup"] = row["ttft_plain_ms"] / row["ttft_ms"]
    row["decode_speedup"] = row["decode_tok_s"] / row["decode_tok_s_plain"]
    row["decode_attn_speedup"] = row["decode_attn_ms_full"] / row["decode_attn_ms"]
    row["decode_attn_speedup_kernel"] = row["decode_attn_ms_full_kernel"] / row["decode_attn_ms"]
    if row["decode_attn_gpu_ms"] is not None:  # GPU time alone: what the kernels take once launches overlap
        row["decode_attn_gpu_speedup"] = row["decode_attn_gpu_ms_full"] / row["decode_attn_gpu_ms"]
        row["decode_attn_gpu_speedup_kernel"] = row["decode_attn_gpu_ms_full_kernel"] / row["decode_attn_gpu_ms"]
    return row


def free(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ table

def print_doc_table(rows) -> None:
    """The table a run prints and docs/benchmarks.md shows (--doc-table prints it from a results file)."""
    print("| model | S | batch | MSR | TTFT ms plain / elastic (x) | decode tok/s plain / elastic | KV MiB plain / "
          "elastic (x) | decode attn ms: DynamicCache / full, same kernel / elastic, SDPA / elastic | x DynamicCache"
          " / x full same kernel | GPU time alone ms: full, same kernel / elastic (x) |")
    print("|" + "---|" * 10)
    for r in rows:
        length = f"{r['S'] // 1024}K" if r["S"] >= 1024 else str(r["S"])
        head = f"| {r['model']} | {length} | {r['batch']} | "
        if "skipped" in r or "error" in r:
            print(f"{head}{r['msr']:.2f} | {r.get('skipped') or r.get('error')} |" + " |" * 5)
            continue
        mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
        gpu = ""
        if r.get("decode_attn_gpu_ms") is not None:
            gpu = (f"{r['decode_attn_gpu_ms_full_kernel']:.3f} / {r['decode_attn_gpu_ms']:.3f} "
                   f"({r['decode_attn_gpu_speedup_kernel']:.2f})")
        print(f"{head}{r['msr_actual']:.2f} | {r['ttft_plain_ms']:.0f} / {r['ttft_ms']:.0f} ({r['ttft_speedup']:.2f}) | "
              f"{r['decode_tok_s_plain']:.0f} / {r['decode_tok_s']:.0f} | {mib(r['kv_bytes_plain'])} / "
              f"{mib(r['kv_bytes'])} ({r['kv_ratio']:.2f}) | {r['decode_attn_ms_full']:.3f} / "
              f"{r['decode_attn_ms_full_kernel']:.3f} / {r['decode_attn_ms_sdpa']:.3f} / {r['decode_attn_ms']:.3f} | "
              f"{r['decode_attn_speedup']:.2f} / {r['decode_attn_speedup_kernel']:.2f} | {gpu} |")


# ------------------------------------------------------------------ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="8b,default", help="8b, default, tiny (commas or spaces)")
    ap.add_argument("--layers", type=int, default=4, help="layers of the 8B-shaped stack (default 4)")
    ap.add_argument("--lengths", default="16384,32768,65536,131072", help="prompt lengths S (16k = 16384)")
    ap.add_argument("--msrs", default="0,0.7,0.9", help="shares of sparse KV heads, forced")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--quick", action="store_true", help="16K and 64K, MSR 0 and 0.7, batch 1 (about a minute)")
    ap.add_argument("--new-tokens", type=int, default=32, help="timed decode steps")
    ap.add_argument("--warmup-tokens", type=int, default=4, help="decode steps before the timed ones")
    ap.add_argument("--reps", type=int, default=1, help="timed prefills after the warm-up one (median)")
    ap.add_argument("--attn-steps", type=int, default=64, help="timed steps of the decode-attention comparison")
    ap.add_argument("--attn-rounds", type=int, default=3,
                    help="rounds of the decode-attention comparison, its three layouts in turn (median)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--max-kv-gb", type=float, default=100.0, help="skip rows whose plain K/V cache exceeds this")
    ap.add_argument("--mem-gb", type=float, default=None,
                    help="skip rows whose estimated peak exceeds this (default 90 %% of the GPU's memory)")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="start no row after this many seconds (0 = no limit); the rest are recorded as skipped")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "generate.json"))
    ap.add_argument("--doc-table", metavar="JSON", help="print docs/benchmarks.md's table from a results file, run nothing")
    args = ap.parse_args(argv)
    if args.doc_table:
        with open(args.doc_table) as f:
            print_doc_table(json.load(f))
        return 0
    if args.quick:
        args.lengths, args.msrs, args.batches = QUICK["lengths"], QUICK["msrs"], QUICK["batches"]
    models, lengths = split_list(args.models), parse_lengths(args.lengths)
    msrs, batches = [float(m) for m in split_list(args.msrs)], [int(b) for b in split_list(args.batches)]
    unknown = [m for m in models if m not in WINDOWS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; use 8b, default or tiny")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but CUDA is not available; use --device cpu")
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
        mem_gb = args.mem_gb or 0.9 * torch.cuda.get_device_properties(device).total_memory / 1e9
    else:
        card = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        mem_gb = args.mem_gb or float("inf")

    watch = LimitWatch()
    for logger in ("torch._dynamo", "torch._dynamo.convert_frame"):
        logging.getLogger(logger).addHandler(watch)
    import transformers
    from elastic_attention.attention.kernels import cudnn_band

    common = dict(card=card, date=time.strftime("%Y-%m-%d"), torch=torch.__version__,
                  transformers=transformers.__version__, dtype=args.dtype, new_tokens=args.new_tokens,
                  warmup_tokens=args.warmup_tokens, reps=args.reps,
                  cudnn_frontend=device.type == "cuda" and cudnn_band.available(),
                  command=" ".join(["python"] + sys.argv))
    rows: list[dict] = []

    def dump():
        data = json.dumps(rows, indent=1)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(data)
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "generate.json"), "w") as f:
                f.write(data)

    started = time.perf_counter()
    max_len = max(lengths) + args.warmup_tokens * 2 + args.new_tokens * 2 + 8
    for name in models:
        try:
            model, vocab, what = load(name, args.layers, args.device, dtype, max_len)
        except (ValueError, OSError) as err:  # the default model's GGUF is not installed
            rows.append(dict(common, model=name, layers=None, S=None, msr=None, batch=None,
                             skipped=f"model not loaded: {err}"))
            print(rows[-1]["skipped"], flush=True)
            dump()
            continue
        shape = shape_of(model)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        for seq in lengths:
            for batch in batches:
                kv, peak = memory_estimate(shape, weights, seq, batch, torch.finfo(dtype).bits // 8)
                base = dict(common, model=name, model_desc=what, layers=shape["layers"], S=seq, batch=batch)
                elapsed = time.perf_counter() - started
                skipped = None
                if kv > args.max_kv_gb * 1e9:
                    skipped = f"plain K/V cache {kv / 1e9:.1f} GB > --max-kv-gb {args.max_kv_gb:g}"
                elif peak > mem_gb * 1e9:
                    skipped = (f"estimated peak {peak / 1e9:.0f} GB (weights, plain K/V {kv / 1e9:.1f} GB, "
                               f"prefill activations) > {mem_gb:.0f} GB")
                elif args.budget_s and elapsed > args.budget_s:
                    skipped = f"time budget: {elapsed:.0f} s > --budget-s {args.budget_s:g}"
                plain, error = None, None
                if skipped is None:
                    ids = prompt(vocab, seq, batch, device)
                    t0 = time.perf_counter()
                    try:
                        plain = measure_plain(model, ids, args, device, dtype)
                    except torch.OutOfMemoryError as err:
                        error = f"OOM (plain model): {str(err)[:160]}"
                        free(device)
                    plain_s = time.perf_counter() - t0
                for msr in msrs:
                    row = dict(base, msr=msr)
                    if skipped or error:
                        row["skipped" if skipped else "error"] = skipped or error
                    else:
                        t0 = time.perf_counter()
                        try:
                            row.update(measure_elastic(model, name, ids, msr, plain, args, device, dtype, watch))
                        except torch.OutOfMemoryError as err:
                            row["error"] = f"OOM: {str(err)[:160]}"
                            if getattr(model, "elastic_runtime", None) is not None:
                                ea.detach(model)
                            free(device)
                        row["row_s"] = time.perf_counter() - t0
                        row["plain_s"] = plain_s  # shared by the rows of this (S, batch)
                    rows.append(row)
                    print({k: v for k, v in row.items() if k not in common and k != "model_desc"}, flush=True)
                    dump()
                ids = None
                free(device)
        del model
        free(device)
    print()
    print(f"{card}, {args.dtype}, {args.new_tokens} timed decode steps after {args.warmup_tokens}; "
          f"total {time.perf_counter() - started:.0f} s")
    print_doc_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
