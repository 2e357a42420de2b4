"""Does a router route a prompt the same way on every code path? Per-prompt MSR of held-out eval prompts
under each path the library can take for one prefill.

Written when the held-out GPU evaluation routed pass-key prompts in natural text at MSR 0.44-0.69 while the
same router on the CPU (fp32) routed them at 0.22-0.31. It found the cause, since fixed: the
fused prefill reused the first prompt's block lists for every later prompt of a length bucket
(docs/training.md, "A prefill bug behind the held-out GPU figures"). The paths it compares:

  default     what `elastic-attn eval` runs: on CUDA the one-launch Triton router and the fused prefill kernels
  eager       the router as plain PyTorch ops (what training runs), fused prefill kernels
  masked      eager router, attention through the dense masks (what training runs), no fused kernels
  fp32        the default path with the model in fp32
  nocache     the default path with the cache of FlexAttention BlockMasks emptied before every prompt
  recompile   the default path with torch.compile's caches reset before every prompt
  jitter      the masked path with the input embeddings scaled by (1 + 1e-3 * N(0, 1)) per element: bf16's
              own rounding is about 4e-3, so a router that flips here flips on numerical noise

A path may be named more than once (--paths default,masked,default): the rows then show whether what ran
before changes a path's routing.

python benchmarks/router_paths.py --router DIR [--tasks passkey,multikey_needle] [--length 4096] [--samples 8]
Prints a table (rows: paths; cells: per-prompt MSR) and writes JSON to --out.

--kernels (CUDA): runs the first natural-text prompt on the masked path and, at every layer, also the fused
prefill backends on that layer's own q, k, v and decisions; prints each one's relative error against the
exact fp32 attention per layer, split by mode (SSA / FA heads).
--check-default: the default path on --samples prompts of the first task, every fused prefill call checked
against fp32 attention on its own inputs (the check that located the bug).
--variant nobucket | untuned | nomaskcache: change one thing in the fused prefill first (no length buckets,
inductor's default kernel options, no BlockMask cache).
On a CPU only `default` and `jitter` run (every other path is the same eager code there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

import elastic_attention.attention.kernels.router as router_kernel
import elastic_attention.integrations.hf as hf
from elastic_attention.adapter import load_router
from elastic_attention.attention import kernels
from elastic_attention.attention.kernels import hybrid_prefill
from elastic_attention.attention.kernels import flex
from elastic_attention.attention.kernels.flex import compiled_flex
from elastic_attention.attention.masks import FA, SSA, causal_allowed, head_masks
from elastic_attention.attention.reference import masked_attention
from elastic_attention.eval.runner import build_samples
from elastic_attention.integrations.hf import attention_modules, runtime_of
from elastic_attention.metrics import routing_stats
from elastic_attention.models import load_default_model

PATHS = ("default", "eager", "masked", "fp32", "nocache", "recompile", "jitter")


@contextlib.contextmanager
def path_setting(model, path: str):
    """Switch the model to one of PATHS for the duration."""
    rt = runtime_of(model)
    fused, fast = router_kernel.fused_tensors, rt.fast_prefill
    if path in ("eager", "masked", "jitter"):
        router_kernel.fused_tensors = lambda *a: None
    if path in ("masked", "jitter"):
        rt.fast_prefill = False
    try:
        yield
    finally:
        router_kernel.fused_tensors, rt.fast_prefill = fused, fast


@torch.no_grad()
def prompt_msr(model, ids: list[int], device, path: str = "default") -> float:
    if path == "nocache":
        kernels._MASKS.clear()
    elif path == "recompile":
        torch._dynamo.reset()
        compiled_flex.cache_clear()
    ids = torch.tensor([ids], device=device)
    if path == "jitter":
        embeds = model.get_input_embeddings()(ids)
        noise = torch.randn(embeds.shape, device=device, generator=torch.Generator(device).manual_seed(len(ids[0])))
        model(inputs_embeds=embeds * (1 + 1e-3 * noise).to(embeds.dtype), logits_to_keep=1)
    else:
        model(input_ids=ids, logits_to_keep=1)
    return float(routing_stats(model).msr[0])


def layer_logits(model) -> list[list[float]]:
    """The last prefill's router logits, [layers][kv heads] of row 0."""
    return [m.elastic_state.logits[0].tolist() for m in attention_modules(model)]


def exact_attention(query, key, value, modes, scale, cfg):
    """fp32 attention of one causal prefill under the decisions `modes`, from the dense masks (the oracle)."""
    b, _, s, _ = query.shape
    q, k = query.float(), key.float()
    return masked_attention(q, k, value.float(), head_masks(modes, causal_allowed(b, s, s, query.device), q, k,
                                                            scale, cfg), scale)


def kernel_errors(model, ids: list[int], backends: list[str], device) -> list[dict]:
    """Per layer: relative error of each fused backend (and of the masked path) against fp32 attention."""
    rt = runtime_of(model)
    cfg = rt.config
    rows = []
    masked_path = hf.hybrid_attention

    def checked(query, key, value, modes, masks, scale, *args, **kwargs):
        out = masked_path(query, key, value, modes, masks, scale, *args, **kwargs)
        g = query.shape[1] // key.shape[1]
        ref = exact_attention(query, key, value, modes, scale, cfg)
        mode_q = modes.repeat_interleave(g, dim=1)[0]
        row = {"layer": len(rows), "ssa_heads": int((modes == SSA).sum()), "fa_heads": int((modes == FA).sum())}
        for name, o in [("masked", out)] + [(bk, hybrid_prefill(query, key, value, modes, cfg, scale, backend=bk))
                                           for bk in backends]:
            for mode, label in ((SSA, "ssa"), (FA, "fa")):
                sel = mode_q == mode
                if sel.any():
                    err = (o[:, sel].float() - ref[:, sel]).norm() / ref[:, sel].norm()
                    row[f"{name}_{label}"] = float(err)
        rows.append(row)
        return out

    hf.hybrid_attention = checked
    try:
        with path_setting(model, "masked"):
            prompt_msr(model, ids, device)
    finally:
        hf.hybrid_attention = masked_path
    return rows


def first_divergence(rows: list[dict]) -> None:
    """For each prompt, the first layer whose decisions differ between the first row of a task and another."""
    for task in dict.fromkeys(r["task"] for r in rows):
        base, *others = [r for r in rows if r["task"] == task]
        for other in others:
            for i, (a, b) in enumerate(zip(base["logits"], other["logits"])):
                layer = next((n for n, (x, y) in enumerate(zip(a, b)) if [v > 0 for v in x] != [v > 0 for v in y]),
                             None)
                if layer is not None:
                    print(f"{task} #{i}: {base['path']} and {other['path']} first differ at layer {layer}: logits "
                          f"{[round(v, 2) for v in a[layer]]} against {[round(v, 2) for v in b[layer]]}")


def checked_default(model, samples, device) -> list[dict]:
    """The default path, every fused prefill call checked against fp32 attention on its own inputs."""
    cfg = runtime_of(model).config
    fused = hf.hybrid_prefill
    rows = []

    def checked(query, key, value, modes, config, scale, **kwargs):
        result = fused(query, key, value, modes, config, scale, **kwargs)
        out = result[0] if isinstance(result, tuple) else result
        s = query.shape[2]
        ref = exact_attention(query, key, value, modes, scale, cfg)
        err = (out.float() - ref).norm(dim=(-1, -2)) / ref.norm(dim=(-1, -2))  # [b, hq]
        rows.append({"call": len(rows), "s": s, "modes": modes.tolist(), "max_head_err": float(err.max()),
                     "padding": kwargs.get("key_padding") is not None})
        return result

    hf.hybrid_prefill = checked
    try:
        for i, smp in enumerate(samples):
            start = len(rows)
            msr = prompt_msr(model, smp.input_ids, device)
            bad = [r for r in rows[start:] if r["max_head_err"] > 2e-2]
            print(f"sample {i}: MSR {msr:.2f}, {len(rows) - start} fused calls, {len(bad)} with a head off by "
                  f"> 2 %: " + "; ".join(f"layer {r['call'] - start} s={r['s']} modes={r['modes']} "
                                          f"err={r['max_head_err']:.2f} pad={r['padding']}" for r in bad[:4]), flush=True)
    finally:
        hf.hybrid_prefill = fused
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--router", required=True, help="a router directory (router.safetensors + elastic_config.json)")
    ap.add_argument("--tasks", default="passkey,multikey_needle")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--kernels", default=None, help="comma list of prefill backends to check layer by layer "
                    "(flex, split, triton, cudnn)")
    ap.add_argument("--check-default", action="store_true",
                    help="first run the default path with every fused prefill call checked against fp32 attention")
    ap.add_argument("--variant", default="none", choices=("none", "nobucket", "untuned", "nomaskcache"),
                    help="change one thing in the fused prefill first: no length buckets, inductor's default kernel "
                         "options, or no BlockMask cache")
    ap.add_argument("--out", default="router_paths.json")
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise SystemExit(f"unknown path(s) {unknown}: use some of {PATHS}")
    rows, layers, calls = [], [], []
    if args.variant == "nobucket":
        kernels.bucket_length = lambda seq: seq
    elif args.variant == "untuned":
        flex.TUNED_OPTIONS.clear()
    elif args.variant == "nomaskcache":
        kernels.MASK_CACHE_ENTRY_BYTES = -1
    if args.check_default:
        model, tok = load_default_model(device=args.device, dtype=torch.bfloat16)
        load_router(model, args.router)
        calls = checked_default(model, build_samples(tok, args.tasks.split(",")[0], args.length, args.samples, 0),
                                args.device)
        del model
    if args.kernels:
        model, tok = load_default_model(device=args.device, dtype=torch.bfloat16)
        load_router(model, args.router)
        task = args.tasks.split(",")[0]
        samples = build_samples(tok, task, args.length, args.samples, 0)
        ids = next(s.input_ids for s in samples if "The grass is green" not in tok.decode(s.input_ids))
        layers = kernel_errors(model, ids, args.kernels.split(","), args.device)
        keys = list(dict.fromkeys(k for r in layers for k in r if k.endswith(("_ssa", "_fa"))))
        print("layer SSA FA " + " ".join(keys))
        for r in layers:
            print(f"{r['layer']:5d} {r['ssa_heads']:3d} {r['fa_heads']:2d} " + " ".join(f"{r.get(k, float('nan')):.2e}"
                                                                                   for k in keys), flush=True)
        del model
    for dtype in ("bfloat16", "float32") if args.device == "cuda" else ("float32",):
        # Off CUDA every path but jitter is the same eager code.
        chosen = ([p for p in paths if (p == "fp32") == (dtype == "float32")] if args.device == "cuda"
                  else [p for p in paths if p in ("default", "jitter")])
        if not chosen:
            continue
        model, tok = load_default_model(device=args.device, dtype=getattr(torch, dtype))
        load_router(model, args.router)
        for task in args.tasks.split(","):
            samples = build_samples(tok, task, args.length, args.samples, 0)
            kinds = ["filler" if "The grass is green" in tok.decode(s.input_ids) else "text" for s in samples]
            for path in chosen:
                start = time.perf_counter()
                with path_setting(model, path):
                    msrs, logits = [], []
                    for s in samples:
                        msrs.append(prompt_msr(model, s.input_ids, args.device, path))
                        logits.append(layer_logits(model))
                rows.append({"task": task, "path": path if args.device == "cuda" else f"cpu-{path}", "dtype": dtype,
                             "msr": msrs, "logits": logits, "haystack": kinds, "tokens": [s.length for s in samples],
                             "seconds": time.perf_counter() - start})
                cells = " ".join(f"{k[0]}{m:.2f}" for k, m in zip(kinds, msrs))
                print(f"{task:16s} {rows[-1]['path']:12s} {dtype:9s} {cells}", flush=True)
        del model
    first_divergence(rows)
    meta = {"variant": args.variant, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "router": args.router,
            "torch": torch.__version__, "length": args.length, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "kernel_errors": layers, "default_calls": calls}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
