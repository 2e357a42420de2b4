"""Passkey accuracy of a trained router vs full attention, and its MSR per task on held-out prompts.

python benchmarks/router_passkey.py --router DIR [--length 4096 --n 20 --heldout MIX.jsonl --out eval.json]
Prints one JSON object (also written to --out). Uses the GPU in bf16 when there is one.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

import elastic_attention as ea
from elastic_attention.passkey import passkey_found, passkey_samples
from elastic_attention.generation import greedy_generate
from elastic_attention.models import load_model
from elastic_attention.training.data import load_records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--router", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heldout", default=None, help="JSONL mix (other seed than training) for MSR per task")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    model, tok = load_model(args.model, device="cuda" if cuda else "cpu",
                            dtype=torch.bfloat16 if cuda else torch.float32)
    ea.load_router(model, args.router)
    model.elastic_runtime.fast_prefill = False  # the reference SDPA dispatch: the figure does not rest on a kernel
    model.eval()
    device = next(model.parameters()).device
    result = {"length": args.length, "n": args.n, "gpu": torch.cuda.get_device_name() if cuda else "cpu"}
    for method in ("full", "router"):
        hits, msrs = 0, []
        with ea.force_mode(model, "full" if method == "full" else "router"):
            for s in passkey_samples(tok, args.length, args.n, args.seed):
                gen = greedy_generate(model, torch.tensor([s.input_ids], device=device), max_new_tokens=8)
                hits += passkey_found(tok.decode(gen.tokens), s.answer)
                msrs.append(ea.routing_stats(model).msr.item())
        result[method] = {"accuracy": hits / args.n, "mean_msr": sum(msrs) / len(msrs)}
    if args.heldout:
        per_task = defaultdict(list)
        with torch.no_grad():
            for r in load_records(args.heldout):
                ids = tok(r.prompt, add_special_tokens=False)["input_ids"][-args.length:]
                model(torch.tensor([ids], device=device), use_cache=False, logits_to_keep=1)
                per_task[f"{r.category}/{r.task}"].append(ea.routing_stats(model).msr.item())
        result["heldout_msr"] = {k: sum(v) / len(v) for k, v in sorted(per_task.items())}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
