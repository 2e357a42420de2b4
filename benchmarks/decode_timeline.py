"""Where a decode step's time goes: the decode kernel with a GPU clock read at five points of every program.

Usage (GPU): PYTHONPATH=src python benchmarks/decode_timeline.py [--seq 131072] [--steps 20]
Writes benchmarks/results/decode_timeline.json (and $OUT/decode_timeline.json when OUT is set).

benchmarks/decode_kernel.py fits a step's time to a fixed cost plus its bytes at a bandwidth (about 12 us +
bytes at 4.55 TB/s on an H200): this script splits that time. The kernel of attention/kernels/decode.py is
compiled a second time with `%globaltimer` (ns) stored by every program at: its start (t0), after waiting
for the kernel before (t1, PDL only), after its chunk of keys (t2), when it starts merging (t3: the pair's
last chunk, or one of its last MERGE_SLICES once the last is in), after its share of the merge (t4). The source is the shipped kernel's, with the five reads
inserted (nothing else changes), so the timings are the kernel's own. --steps steps of one layout are
queued behind matmuls (the GPU runs them back to back, as generate.py times them), with and without PDL,
and per --slices value (decode.MERGE_SLICES: 1 merges in the last program alone).

Per layout and setting, medians over the steps (us): span (the first program past its wait to the last
one's end), gap (previous step's end to this one's first program past its wait), start spread (first to
last program start), wait (t1 - t0, longest), chunk time (t2 - t1: shortest, median, longest), tail
(latest t2 to the step's end: the last chunk's arrival and the merge after it), merge (t4 - t3, longest).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import statistics
import sys
import textwrap
import time

import torch
import triton
import triton.language as tl

from elastic_attention.attention.kernels import decode, launcher

from cuda_timing import save_json  # benchmarks/ sits on sys.path when a script here runs
from decode_kernel import LAYOUTS, layout

def timed_kernel():
    """decode._decode's source with the clock reads added: a TL pointer after its tensors, five stores."""
    src = textwrap.dedent(inspect.getsource(decode._decode.fn))
    src = src[src.index("def "):]  # the decorator goes: jitted below with the same settings
    src = src.replace(", qk_scale,", ", TL, qk_scale,", 1)  # the clock buffer after the kernel's tensors
    clock = 'tl.store(TL + pid * 5 + {i}, tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,{c}", ' \
            '[{arg}], dtype=tl.int64, is_pure=False, pack=1))'
    inserts = [  # (a line of the kernel, the clock read's place: after or before it, its index, what it waits on)
        ("pid = tl.program_id(0)", "after", 0, "r", "pid"),
        ("if pid < NF * SF:", "before", 1, "r", "pid"),
        ("tl.store(M_W + pid * G + offs_g,", "before", 2, "f", "tl.sum(l_i)"),
        ("offs_s = tl.arange(0, BLOCK_S)", "before", 3, "r", "waiting.to(tl.int32)"),  # after the wait
        ("tl.store(o_at,", "after", 4, "f", "tl.sum(den)"),
    ]
    lines = src.splitlines()
    for anchor, where, i, c, arg in inserts:
        at = [n for n, line in enumerate(lines) if line.strip().startswith(anchor)]
        if len(at) != 1:
            raise SystemExit(f"decode._decode changed: {anchor!r} is not one of its lines; update the inserts")
        indent = lines[at[0]][:len(lines[at[0]]) - len(lines[at[0]].lstrip())]
        lines.insert(at[0] + (where == "after"), indent + clock.format(i=i, c=c, arg=arg))
    src = "\n".join(lines) + "\n"
    namespace = {"tl": tl, "triton": triton}
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "decode_timed_kernel.py")
    with open(path, "w") as f:  # triton reads a kernel's source from its file
        f.write("import triton\nimport triton.language as tl\n\n\n" + src)
    code = compile(open(path).read(), path, "exec")
    exec(code, namespace)
    return triton.jit(do_not_specialize=decode._decode.do_not_specialize)(namespace["_decode"])


class WithClock:
    """Stands in for decode._decode: launches the timed kernel with the clock buffer after the tensors."""

    def __init__(self, kernel):
        self.kernel, self.buffer = kernel, None
        self.at = decode._decode.arg_names.index("qk_scale")

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            return self.kernel[grid](*args[:self.at], self.buffer, *args[self.at:], **kwargs)
        return launch


def summarise(clocks: torch.Tensor) -> dict:
    """clocks [steps, programs, 5] int64 ns -> medians over steps (us)."""
    rows = []
    prev_end = None
    for step in clocks.double():
        t0, t1, t2, t3, t4 = step.unbind(1)
        merged = t3 > 0
        end = torch.maximum(t2.max(), t4[merged].max() if merged.any() else t2.max())
        chunk = t2 - t1
        rows.append(dict(span=(end - t1.min()).item(), start_spread=(t0.max() - t0.min()).item(),
                         wait=(t1 - t0).max().item(), chunk_min=chunk.min().item(),
                         chunk_median=chunk.median().item(), chunk_max=chunk.max().item(),
                         tail=(end - t2.max()).item(), merge=(t4 - t3)[merged].max().item(),
                         gap=None if prev_end is None else (t1.min() - prev_end).item()))
        prev_end = end
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        out[key + "_us"] = statistics.median(values) / 1e3
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=131072)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--fa", default="2,3,8", help="FA heads of the 8B layer's 8, one layout each")
    ap.add_argument("--slices", default=str(decode.MERGE_SLICES), help="values of decode.MERGE_SLICES, e.g. 1,4")
    ap.add_argument("--out", default="benchmarks/results/decode_timeline.json")
    args = ap.parse_args(argv)
    hq, hk, d, sink, local, _ = LAYOUTS["8b"]
    timed = WithClock(timed_kernel())
    shipped, enabled, pdl_default, slices_default = decode._decode, launcher.ENABLED, decode.PDL, decode.MERGE_SLICES
    launcher.ENABLED = False  # the JIT path on every launch: the handle would leave out the clock buffer
    decode._decode = timed
    base = dict(card=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"), torch=torch.__version__,
                triton=triton.__version__, S=args.seq, shape="8b",
                command="python benchmarks/decode_timeline.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    rows = []
    try:
        with torch.no_grad():
            a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
            for n_fa in map(int, args.fa.split(",")):
                compact, q, k, v = layout(hq, hk, d, sink, local, n_fa, args.seq, 1)
                step_args = compact.decode_args(q, k, v, d ** -0.5)
                for pdl, slices in itertools.product((False, True), map(int, args.slices.split(","))):
                    decode.PDL, decode.MERGE_SLICES = pdl, slices
                    timed.buffer = torch.zeros(1 << 16, 5, dtype=torch.int64, device="cuda")
                    decode.decode_step(*step_args)  # compiles
                    torch.cuda.synchronize()
                    parts = int((timed.buffer[:, 0] > 0).sum())
                    clocks = torch.zeros(args.steps, parts, 5, dtype=torch.int64, device="cuda")
                    for _ in range(40):  # the host launches every step while the GPU is still busy
                        a @ a
                    for i in range(args.steps):
                        timed.buffer = clocks[i]
                        decode.decode_step(*step_args)
                    torch.cuda.synchronize()
                    row = dict(base, n_fa=n_fa, pdl=pdl, slices=slices, programs=parts, **summarise(clocks.cpu()))
                    rows.append(row)
                    print(" ".join(f"{key}={val:.2f}" if isinstance(val, float) else f"{key}={val}"
                                   for key, val in row.items() if key not in base), flush=True)
                del compact
    finally:
        decode._decode, launcher.ENABLED, decode.PDL, decode.MERGE_SLICES = shipped, enabled, pdl_default, slices_default
    save_json(args.out, rows)


if __name__ == "__main__":
    main()
