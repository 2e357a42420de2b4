"""Shared timing for the GPU benchmarks: median of CUDA-event timings after a warm-up call."""

import statistics

import torch


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
