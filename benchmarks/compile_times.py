"""Cold compile time of every Triton kernel launch that tests/test_kernel_compile.py checks, on a CPU.

Usage: PYTHONPATH=src python benchmarks/compile_times.py [--only "NAME;..."] [--capabilities 90,80]
       [--merge VALUES] [--timeout 600] [--label TEXT]
Writes benchmarks/results/compile_times.json (rows of this run added to the file's).

Each (launch, compute capability) compiles in a fresh Python with an empty Triton cache, so the time is
what a user's first call pays (Triton's frontend, then ptxas from the triton wheel); a compile past
--timeout is stopped and recorded as such. --merge overrides the decode kernel's merge size
(decode.MERGE) to time another setting. The launches, their shapes and
the compile itself are the test's (one definition). To time an earlier version of the library, point
PYTHONPATH at that version's src (--label names it in the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "compile_times.json"

# Run in the child: one launch recorded and compiled (prints the seconds of the compile alone).
CHILD = r"""
import sys, time
sys.path.insert(0, {tests!r})
import pytest
import test_kernel_compile as T
from elastic_attention.attention.kernels import decode
if {merge}:
    decode.MERGE = {merge}
mp = pytest.MonkeyPatch()
kernel, launch = T.LAUNCHES[{name!r}](mp, {capability})
mp.undo()
t = time.perf_counter()
T.compile_launch(kernel, launch, {capability})
print("SECONDS", time.perf_counter() - t)
"""


def compile_seconds(name: str, capability: int, merge: int, timeout: float) -> float | None:
    """Seconds of one cold compile, or None past the timeout."""
    code = CHILD.format(tests=str(ROOT / "tests"), merge=merge, name=name, capability=capability)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)  # ptxas runs in the child's session: stop it too
            child.communicate()
            return None
    for line in out.splitlines():
        if line.startswith("SECONDS"):
            return float(line.split()[1])
    raise RuntimeError(f"{name} for sm_{capability} did not compile:\n{err[-2000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="launch names of tests/test_kernel_compile.py, ';'-separated (default: all)")
    ap.add_argument("--capabilities", default="90,80")
    ap.add_argument("--merge", type=int, default=0, help="decode merge values to launch with (0: the library's)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a compile may take before it is stopped")
    ap.add_argument("--label", default="this checkout", help="which version of the library runs (for the rows)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    import triton
    from test_kernel_compile import LAUNCHES

    names = args.only.split(";") if args.only else list(LAUNCHES)
    unknown = [n for n in names if n not in LAUNCHES]
    if unknown:
        raise SystemExit(f"--only: unknown launch {unknown}; the test defines {list(LAUNCHES)}")
    rows = []
    for name in names:
        for capability in map(int, args.capabilities.split(",")):
            seconds = compile_seconds(name, capability, args.merge, args.timeout)
            rows.append(dict(launch=name, capability=capability, seconds=seconds, stopped_after=None if seconds
                             else args.timeout, merge=args.merge or "library", code=args.label,
                             triton=triton.__version__, date=time.strftime("%Y-%m-%d"),
                             command="python benchmarks/compile_times.py " + " ".join(argv or sys.argv[1:])))
            shown = f"{seconds:.1f} s" if seconds is not None else f"stopped after {args.timeout:.0f} s"
            print(f"{name:40s} sm_{capability}: {shown}", flush=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps(old + rows, indent=1))


if __name__ == "__main__":
    main()
