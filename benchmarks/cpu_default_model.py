"""Default model on the CPU: first (GGUF dequantise) and cached load times, and a 2K-token generate.

    python benchmarks/cpu_default_model.py [--length 2048] [--new-tokens 16] [--out benchmarks/results/cpu_default_model.json]

Prints a table and writes JSON. The first load runs against an empty temporary cache directory.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date

import torch

import elastic_attention as ea
from elastic_attention.baselines import retrieval_scores, static_mask
from elastic_attention.passkey import passkey_found, passkey_sample
from elastic_attention.generation import greedy_generate
from elastic_attention.models import load_default_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/cpu_default_model.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        os.environ["ELASTIC_CACHE_DIR"] = cache
        t = time.perf_counter()
        load_default_model()
        first = time.perf_counter() - t
        t = time.perf_counter()
        model, tok = load_default_model()
        second = time.perf_counter() - t

    ea.attach(model)
    sample = passkey_sample(tok, args.length, 0.5, "48213")
    ids = torch.tensor([sample.input_ids])
    scores = retrieval_scores(model, tok, samples=8, length=1024)
    rows = []
    ssa = ea.ElasticConfig(sink=64, local=256)
    for name, mode, config in [("full", "full", ea.ElasticConfig()), ("sparse 64/256", "sparse", ssa),
                               ("static 0.5, 64/256", static_mask(scores, 0.5), ssa)]:
        ea.integrations.hf.runtime_of(model).config = config
        with ea.force_mode(model, mode):
            greedy_generate(model, ids[:, :256], 2)  # warm-up
            gen = greedy_generate(model, ids, args.new_tokens, tok.eos_token_id)
        stats = ea.routing_stats(model)
        rows.append({"method": name, "prefill_s": round(gen.prefill_s, 3), "decode_s": round(gen.decode_s, 3),
                     "new_tokens": len(gen.tokens), "msr": round(float(stats.msr[0]), 3),
                     "esr_all_layers": round(float(stats.esr_all_layers[0]), 3),
                     "passkey_found": passkey_found(tok.decode(gen.tokens), sample.answer)})
    result = {"date": str(date.today()), "machine": f"CPU {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads", "torch": torch.__version__, "prompt_tokens": args.length,
              "first_load_s": round(first, 2), "cached_load_s": round(second, 2), "generate": rows}
    print(f"first load (GGUF dequantise + cache write): {first:.2f} s; cached load: {second:.2f} s")
    print(f"| method | prefill s ({args.length} tok) | decode s | new tokens | MSR | ESR (all layers) | passkey |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['prefill_s']} | {r['decode_s']} | {r['new_tokens']} | {r['msr']} | "
              f"{r['esr_all_layers']} | {r['passkey_found']} |")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
