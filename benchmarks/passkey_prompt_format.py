"""Why elastic_attention.passkey puts one newline before the question: full-attention passkey accuracy of the
default model at 2K tokens with one and with two newlines there (same keys, needle depths and seeds).

    python benchmarks/passkey_prompt_format.py [--length 2048] [--seeds 0 1] [--n 6]

Prints a table and writes benchmarks/results/passkey_prompt_format.json.
"""

import argparse
import json
from datetime import date

import torch

import elastic_attention.passkey as passkey
from elastic_attention.generation import greedy_generate
from elastic_attention.models import load_default_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n", type=int, default=6, help="prompts per seed")
    ap.add_argument("--out", default="benchmarks/results/passkey_prompt_format.json")
    args = ap.parse_args()
    model, tok = load_default_model()
    question = passkey.QUESTION.lstrip("\n")
    rows = []
    for name, sep in (("one newline (shipped)", "\n"), ("two newlines", "\n\n")):
        passkey.QUESTION = sep + question
        found = total = 0
        for seed in args.seeds:
            for s in passkey.passkey_samples(tok, args.length, args.n, seed=seed):
                gen = greedy_generate(model, torch.tensor([s.input_ids]), 8, tok.eos_token_id)
                found += passkey.passkey_found(tok.decode(gen.tokens), s.answer)
                total += 1
        rows.append({"question_separator": name, "found": found, "prompts": total})
        print(f"| {name} | {found}/{total} |", flush=True)
    result = {"date": str(date.today()), "machine": "CPU", "length": args.length, "seeds": args.seeds,
              "attention": "full", "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
