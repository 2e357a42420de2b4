"""The decode kernel's launch settings against the bandwidth it reaches: one layer, one decode step.

Usage (GPU): PYTHONPATH=src python benchmarks/decode_kernel.py [--seqs 131072] [--quick]
Writes benchmarks/results/decode_kernel.json (and $OUT/decode_kernel.json when OUT is set).

For each layer layout (an 8B layer: 32 / 8 heads, d 128, sink 128 / local 2048, with 2 or 3 FA heads as
MSR 0.7 spreads them, and all 8 FA: the full cache under the same kernel; the default model's layer: 9 / 3
heads, d 64, sink 64 / local 512, 1 FA head and all 3), batch 1 (and 8), the script builds the layer's
CompactKV from random keys and times kernels/decode.py's decode_step on it under every setting of
PROGRAMS_PER_SM (a number, or candidates 1/2 that decode._plan picks from per layout) x BLOCK_N x num_warps
x num_stages x MERGE x PDL x MERGE_SLICES (--grid picks the values; pdl=0,1 launches without and with
programmatic dependent launch; slices=1,2,4 merges a pair in its last program alone or shared by its last
2 or 4): GPU time alone
(steps queued behind matmuls, cuda_timing.queued_ms; --rounds timings interleaved over the layouts and
settings, median), and the bandwidth that makes (bytes of the kept keys and values read per step / time).
Each setting's output is checked against CompactKV's SDPA path (max abs error, bf16).
Printed: the table per layout, then per setting the full/elastic ratio (the 8B layouts at the longest
length: what generate.py's decode_attn_gpu_speedup_kernel measures over a stack) and the setting that
minimises the elastic layouts' summed time, then per setting and shape a line fitted to time against
bytes over the layouts and lengths: what a step costs whatever it reads, and the bandwidth of the rest.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import os
import statistics
import sys
import time

import torch

from elastic_attention.attention.kernels import decode
from elastic_attention.attention.masks import FA, SSA
from elastic_attention.cache import CompactKV

from cuda_timing import queued_ms  # benchmarks/ sits on sys.path when a script here runs

LAYOUTS = {  # name: (hq, hk, d, sink, local, FA heads per layout)
    "8b": (32, 8, 128, 128, 2048, (2, 3, 8)),
    "default": (9, 3, 64, 64, 512, (1, 3)),
}
# The full grid of the first run (programs/SM 1-8, block_n 32-128, warps 4/8, stages 2-4) chose 1-2 programs an
# SM, block_n 64-128, 4 warps and 3-4 stages on every layout: the default grid is that corner, with the merge.
SETTINGS = dict(programs_per_sm=(1, 2), block_n=(64, 128), num_warps=(4,), num_stages=(3, 4),
                merge=(2048, 8192, 16384), pdl=(1,), slices=(2,))
QUICK = dict(programs_per_sm=((1, 2), 1, 2), block_n=(128,), num_warps=(4,), num_stages=(3,), merge=(16384,),
             pdl=(1,), slices=(2,))


def layout(hq, hk, d, sink, local, n_fa, seq, batch, seed=0):
    """(CompactKV of one layer with n_fa FA heads a row, and a step's query, key, value)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda *size: torch.randn(*size, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    keys, values = make(batch, hk, seq, d), make(batch, hk, seq, d)
    modes = torch.full((batch, hk), SSA, device="cuda")
    modes[:, :n_fa] = FA
    compact = CompactKV(keys, values, modes, None, sink, local)
    del keys, values
    return compact, make(batch, hq, 1, d), make(batch, hk, 1, d), make(batch, hk, 1, d)


def bytes_read(compact: CompactKV) -> int:
    elem = compact.fa_keys.element_size()
    d = compact.fa_keys.shape[2]
    return 2 * d * elem * (compact.n_fa * compact.fa_len + compact.n_ssa * compact.ssa_keys.shape[1])


NAMES = dict(programs_per_sm="PROGRAMS_PER_SM", block_n="BLOCK_N", num_warps="NUM_WARPS", num_stages="NUM_STAGES",
             merge="MERGE", pdl="PDL", slices="MERGE_SLICES")


def apply(setting: dict) -> None:
    for key, value in setting.items():
        setattr(decode, NAMES[key], value)


def number(text: str):
    """A grid value: an int, a float, or candidates "1/2" (a tuple: decode._plan picks one per layout)."""
    if "/" in text:
        return tuple(map(number, text.split("/")))
    return float(text) if "." in text else int(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="131072")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--shapes", default="8b,default")
    ap.add_argument("--steps", type=int, default=50, help="steps queued per timing")
    ap.add_argument("--rounds", type=int, default=3, help="timings per layout and setting, interleaved (median)")
    ap.add_argument("--quick", action="store_true", help="three settings only: programs an SM as shipped, 1 and 2")
    ap.add_argument("--grid", help='settings to sweep instead, e.g. "programs_per_sm=1,2,4;block_n=32,64,128;'
                    'num_warps=4,8;num_stages=2,3,4;merge=8192" (names left out keep the default grid)')
    ap.add_argument("--out", default="benchmarks/results/decode_kernel.json")
    args = ap.parse_args(argv)
    grid = dict(QUICK if args.quick else SETTINGS)
    for part in filter(None, (args.grid or "").split(";")):
        key, _, values = part.partition("=")
        if key not in NAMES:
            raise SystemExit(f"--grid: unknown setting {key!r}; use {', '.join(NAMES)}")
        grid[key] = tuple(map(number, values.split(",")))  # programs_per_sm=0.5 or 1/2 (decode._plan picks)
    settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    default = {key: getattr(decode, name) for key, name in NAMES.items()}
    base = dict(card=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"), torch=torch.__version__,
                command="python benchmarks/decode_kernel.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    cases = []  # (layout fields, the step, its bytes, the SDPA path's output)
    with torch.no_grad():
        for shape, seq, batch in itertools.product(args.shapes.split(","), map(int, args.seqs.split(",")),
                                                   map(int, args.batches.split(","))):
            hq, hk, d, sink, local, fa_counts = LAYOUTS[shape]
            for n_fa in fa_counts:
                compact, q, k, v = layout(hq, hk, d, sink, local, n_fa, seq, batch)
                ref = copy.copy(compact)  # shares the FA buffers: the token goes past what either reads
                ref.ssa_keys, ref.ssa_values = compact.ssa_keys.clone(), compact.ssa_values.clone()
                ref.use_kernel = False
                want = ref.extend_and_attend(q, k, v, d ** -0.5).float()
                del ref
                step = functools.partial(decode.decode_step, *compact.decode_args(q, k, v, d ** -0.5))
                cases.append((dict(shape=shape, S=seq, batch=batch, n_fa=n_fa, kv_heads=hk), step,
                              bytes_read(compact), want))
        # Every setting on every layout, round after round (the GPU's clocks drift): medians of the rounds.
        times, errors = {}, {}
        for _ in range(args.rounds):
            for i, (fields, step, nbytes, want) in enumerate(cases):
                for j, setting in enumerate(settings):
                    apply(setting)
                    if (i, j) not in errors:
                        try:
                            errors[i, j] = (step().float() - want).abs().max().item()
                        except Exception as e:  # e.g. Triton's OutOfResources: more shared memory than an SM has
                            print(f"{fields} {setting}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                            errors[i, j] = None
                    if errors[i, j] is not None:
                        times.setdefault((i, j), []).append(queued_ms(step, n=args.steps))
    rows = []
    for (i, j), per_round in sorted(times.items()):
        fields, _, nbytes, _ = cases[i]
        ms = statistics.median(per_round)
        rows.append(dict(base, **fields, **settings[j], gpu_ms=ms, per_round=per_round, bytes=nbytes,
                         tb_s=nbytes / ms / 1e9, max_err=errors[i, j]))
        print(f"{fields['shape']:8s} S={fields['S']:7d} b={fields['batch']} fa={fields['n_fa']} {settings[j]} "
              f"{ms * 1e3:8.1f} us {rows[-1]['tb_s']:.2f} TB/s err {errors[i, j]:.1e}", flush=True)
    apply(default)
    if not rows:
        raise SystemExit("no setting ran (see the errors above)")
    summary(rows, settings)
    for path in (args.out, os.path.join(os.environ["OUT"], "decode_kernel.json") if os.environ.get("OUT") else None):
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w") as f:
                json.dump(rows, f, indent=1)


def summary(rows, settings) -> None:
    """Per setting: the 8B layouts' full/elastic ratio at the longest length, batch 1, and the elastic sum."""
    keyed = {(r["shape"], r["S"], r["batch"], r["n_fa"], *(r[k] for k in NAMES)): r["gpu_ms"] for r in rows}
    longest = max(r["S"] for r in rows)
    print("\n" + " ".join(NAMES) + " | 8B full us | fa=2 us (ratio) | fa=3 us (ratio) | elastic sum us")
    best = None
    for s in settings:
        tail = tuple(s[k] for k in NAMES)
        full = keyed.get(("8b", longest, 1, 8, *tail))
        two, three = keyed.get(("8b", longest, 1, 2, *tail)), keyed.get(("8b", longest, 1, 3, *tail))
        elastic = sum(ms for key, ms in keyed.items() if key[4:] == tail and key[3] < LAYOUTS[key[0]][1])
        if best is None or elastic < best[0]:
            best = (elastic, s)
        if full and two and three:
            print(f"{tail} | {full * 1e3:10.1f} | {two * 1e3:6.1f} ({full / two:.2f}) | {three * 1e3:6.1f} "
                  f"({full / three:.2f}) | {elastic * 1e3:.1f}")
    print(f"fastest elastic setting: {best[1]} ({best[0] * 1e3:.1f} us summed)")
    # A step's time against the bytes it reads, per setting and shape: the line's intercept is what a step
    # costs whatever it reads (launch, first loads, merge), its slope the bandwidth of the rest.
    for s in settings:
        tail = tuple(s[k] for k in NAMES)
        for shape in LAYOUTS:
            pts = [(r["bytes"], r["gpu_ms"]) for r in rows if r["shape"] == shape and tuple(r[k] for k in NAMES) == tail]
            if len({b for b, _ in pts}) < 2:
                continue
            n, sx, sy = len(pts), sum(b for b, _ in pts), sum(t for _, t in pts)
            slope = (n * sum(b * t for b, t in pts) - sx * sy) / (n * sum(b * b for b, _ in pts) - sx * sx)
            print(f"{shape} {tail}: a step costs {(sy - slope * sx) / n * 1e3:.1f} us + bytes at "
                  f"{1 / slope / 1e9:.2f} TB/s ({n} layouts)")


if __name__ == "__main__":
    main()
