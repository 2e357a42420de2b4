"""Shared timing for the GPU benchmarks: median of CUDA-event timings after a warm-up call."""

import statistics

import torch


def warm_median_ms(fn, reps: int = 5) -> float:
    """One warm-up call (compiles, caches), then the median of `reps` timed calls."""
    fn()
    torch.cuda.synchronize()
    return cuda_median_ms(fn, reps)


def back_to_back_ms(fn, n: int = 100) -> float:
    """Milliseconds per call of n calls queued without a sync: the GPU time a call adds when its
    launch overlaps earlier work, as inside a model's forward (vs one call from idle)."""
    fn()
    torch.cuda.synchronize()
    return _per_call_ms(fn, n)


def _per_call_ms(fn, n: int) -> float:
    """Milliseconds per call of n calls queued between two events (no sync in between)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def cuda_median_ms(fn, reps: int) -> float:
    """Median milliseconds of `reps` calls of fn (the caller has already warmed it up)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def queued_ms(fn, n: int = 20, busy_ms_target: float = 20.0) -> float:
    """GPU milliseconds per call of fn with its host-side launch cost hidden: n calls are queued
    behind enough matmuls to keep the GPU busy while the host launches them, so the events measure
    the kernels alone (the time a call adds when the host runs ahead of the GPU)."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    fn()
    a @ a
    torch.cuda.synchronize()
    one = cuda_median_ms(lambda: a @ a, 3)
    for _ in range(int(busy_ms_target / max(one, 1e-3)) + 1):
        a @ a
    return _per_call_ms(fn, n)


def save_json(path, rows) -> None:
    """Write rows to `path` (under benchmarks/results) and, when OUT is set (the lent GPU machine), a copy
    to $OUT under the same name, which comes back from that machine."""
    import json
    import os
    from pathlib import Path

    data = json.dumps(rows, indent=1)
    Path(path).write_text(data)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], Path(path).name).write_text(data)
