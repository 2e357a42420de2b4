"""CPU prefill of the default model: full, all-sparse and static hybrids against the unattached model.

    python benchmarks/cpu_prefill.py [--length 4096] [--reps 3] [--threads 1] [--sink 64] [--local 256]
                                     [--out benchmarks/results/cpu_prefill.json]

One prefill (use_cache=False, logits of the last token only) of a passkey prompt, fp32, SSA sink 64 /
local 256 unless --sink / --local say otherwise; median of --reps runs after a short warm-up, the rows taking turns. Static rows spread
their sparse KV heads evenly over the layers, so most layers mix full and sparse heads. Each static
row is compared with the bound (1 - m) * full + m * all-sparse (linear in the share m of sparse
heads); targets: all-sparse at most 0.75x full, static rows at most 5 % over their bound. Use
--threads 2 only on an idle machine. Prints a markdown table and writes JSON.
"""

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from datetime import date

import torch

import elastic_attention as ea
from elastic_attention.passkey import passkey_sample
from elastic_attention.models import load_model

SPARSE_TARGET = 0.75  # all-sparse / full
STATIC_SLACK = 0.05  # static row / bound - 1


def prefill_seconds(model, ids):
    with torch.no_grad():
        t = time.perf_counter()
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return time.perf_counter() - t


def spread_mask(layers, kv_heads, msr):
    """[layers, kv_heads] bool with round(msr * layers * kv_heads) True, spread evenly over the heads."""
    i = torch.arange(layers * kv_heads, dtype=torch.float64)
    return (torch.round((i + 1) * msr) > torch.round(i * msr)).view(layers, kv_heads)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--local", type=int, default=256, help="SSA window (the shipped router's is 512)")
    ap.add_argument("--out", default="benchmarks/results/cpu_prefill.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]  # other work on the machine skews the timings

    model, tok = load_model("default")
    ids = torch.tensor([passkey_sample(tok, args.length, 0.5, "12345").input_ids])
    plain = copy.deepcopy(model)
    ea.attach(model, ea.ElasticConfig(sink=args.sink, local=args.local))
    rt = ea.integrations.hf.runtime_of(model)
    runs = {"unattached (plain SDPA)": None, "full": "full", "all-sparse": "sparse",
            "static MSR 0.5": spread_mask(rt.num_layers, rt.kv_heads, 0.5),
            "static MSR 0.7": spread_mask(rt.num_layers, rt.kv_heads, 0.7)}
    times = {name: [] for name in runs}
    stats = {}
    # Round robin, so that a change in the machine's other load hits every row alike.
    for rep in range(args.reps + 1):
        for name, mode in runs.items():
            if mode is None:
                t = prefill_seconds(plain, ids if rep else ids[:, :512])
            else:
                with ea.force_mode(model, mode):
                    t = prefill_seconds(model, ids if rep else ids[:, :512])
                stats[name] = ea.routing_stats(model)
            if rep:  # rep 0 is the warm-up
                times[name].append(t)
    median = {name: statistics.median(ts) for name, ts in times.items()}

    full, sparse = median["full"], median["all-sparse"]
    common = {"date": str(date.today()), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average_1min_at_start": round(load_at_start, 2), "prompt_tokens": ids.shape[1]}
    rows = []
    for name in runs:
        row = dict(common, method=name, median_s=median[name], times_s=times[name], ratio_to_full=median[name] / full,
                   msr=None, esr_all_layers=None)
        if name in stats:
            row.update(msr=float(stats[name].msr[0]), esr_all_layers=float(stats[name].esr_all_layers[0]))
        if name == "all-sparse":
            row["target_s"] = SPARSE_TARGET * full
        if name.startswith("static"):
            row["bound_s"] = (1 - row["msr"]) * full + row["msr"] * sparse
            row["target_s"] = (1 + STATIC_SLACK) * row["bound_s"]
        if "target_s" in row:
            row["meets_target"] = row["median_s"] <= row["target_s"]
        rows.append(row)

    print(f"{ids.shape[1]}-token prefill, fp32, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"median of {args.reps}")
    print("| method | MSR | ESR (all layers) | prefill s | / full | bound s | target s | met |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        msr = "" if r["msr"] is None else f"{r['msr']:.2f}"
        esr = "" if r["esr_all_layers"] is None else f"{r['esr_all_layers']:.3f}"
        bound = f"{r['bound_s']:.2f}" if "bound_s" in r else ""
        target = f"{r['target_s']:.2f}" if "target_s" in r else ""
        met = "" if "meets_target" not in r else ("yes" if r["meets_target"] else "no")
        print(f"| {r['method']} | {msr} | {esr} | {r['median_s']:.2f} | {r['ratio_to_full']:.2f} | {bound} | "
              f"{target} | {met} |")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
