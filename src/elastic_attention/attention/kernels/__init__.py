"""Fast prefill kernels for hybrid attention (all heads of a layer from the per-KV-head decisions).

`hybrid_prefill` is the entry point. Backends (measured against each other in
benchmarks/prefill_attention.py, see docs/benchmarks.md):
  "auto"    default: "cudnn" where it can run (the cuDNN frontend is installed, no padding, no XA
            head) on layers of at least CUDNN_MIN_WORK, else "split" for layers of at least
            SPLIT_MIN_WORK and "flex" for smaller ones; when the caller says the decisions hold
            FA / SSA only (`possible_modes`, what a router's config gives) and nothing is padded,
            layers below FUSED_MAX_WORK run "fused" without reading the decisions on the host;
  "fused"   FA and SSA heads in one Triton launch that reads the decisions on the GPU (fa_ssa.py):
            no host sync, no BlockMask, no compiled call; FA / SSA heads and no padding only;
  "cudnn"   SSA heads as cuDNN's sliding-window band with the sink keys merged in
            (cudnn_band.py), FA heads by SDPA on a side stream, concurrently;
  "split"   SDPA (cuDNN / flash) on the FA heads on a side stream, concurrently with the sparse heads:
            FA / SSA only, the fused kernel with the FA heads skipped (SPLIT_SPARSE), else FlexAttention
            (per-head BlockMask from the decisions);
  "flex"    FlexAttention on all heads, one launch (fallback; also the path with padding).
(An earlier one-launch Triton candidate walking per-head block lists, slower than FlexAttention on
every row measured, gave way to "fused".)
The exact reference (masks.py + reference.py) stays the CPU path and the oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..masks import FA, SSA, XA
from . import cudnn_band, fa_ssa
from .blocks import density as analytic_density, padding_bounds, ssa_density
from .flex import bucket_length, build_block_mask, flex_run
from .xa import xa_select

PREFILL_BACKENDS = ("auto", "fused", "cudnn", "split", "flex")
DEFAULT_BACKEND = "auto"
# "auto" splits when the layer's full causal attention has at least this many b * hq * s^2 * d
# (about 2 ms of SDPA on an H200): below it the stream fork and the extra launches cost more than
# cuDNN's faster FA heads save (measured in benchmarks/prefill_attention.py, docs/benchmarks.md).
SPLIT_MIN_WORK = 3e12
# cuDNN's band wins from about 1e12 (MSR 0.7: 8B shape at 8K 3.75 vs 4.67 ms for flex, default shape at
# 16K 4.10 vs 4.86); on smaller layers its per-run calls and the sink merge cost more (default shape at
# 8K: 1.87 vs 1.60 ms). benchmarks/results/prefill_attention.json, docs/benchmarks.md.
CUDNN_MIN_WORK = 1e12
# "auto" runs "fused" below this b * hq * s^2 * d when the decisions can hold FA / SSA only: on small
# layers the host sync and FlexAttention's call cost more than its kernel saves (default model at 8K:
# benchmarks/prefill_overhead.py, docs/benchmarks.md).
FUSED_MAX_WORK = 1e12
# The split dispatch's sparse heads: "fused" (fa_ssa.py, FA heads skipped; no copies, no BlockMask) or "flex"
# (FlexAttention on contiguous copies). 8B layer at 64K, MSR 0.7: benchmarks/split_sparse.py, docs/benchmarks.md.
SPLIT_SPARSE = "fused"
MASK_CACHE_SIZE = 64  # BlockMasks of recent (decisions, length) pairs, unpadded prompts only
MASK_CACHE_ENTRY_BYTES = 8 << 20  # larger masks are rebuilt each call rather than held (64 x 8 MiB at most)
HALF = (torch.bfloat16, torch.float16)  # the dtypes the fast paths run
_MASKS: dict = {}
_SIDE: dict = {}


def _mask_bytes(bm) -> int:
    lists = (bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices)
    return sum(t.numel() * t.element_size() for t in lists if t is not None)


def _side_stream(device):
    if device not in _SIDE:
        _SIDE[device] = torch.cuda.Stream(device=device)
    return _SIDE[device]


def head_runs(modes, mode: int):
    """[(row, h0, h1)] contiguous runs of KV heads in `mode` per batch row; modes: [b, hk] list or
    tensor. Each run is one kernel call on views of q, k, v and the output (no gather copies)."""
    runs = []
    for row, ms in enumerate(modes.tolist() if isinstance(modes, torch.Tensor) else modes):
        h = 0
        while h < len(ms):
            if ms[h] == mode:
                h1 = h
                while h1 < len(ms) and ms[h1] == mode:
                    h1 += 1
                runs.append((row, h, h1))
                h = h1
            else:
                h += 1
    return runs


def supported(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Shapes and dtypes the fast path handles (others use the reference / SDPA path)."""
    return (q.shape[2] == k.shape[2] and q.dtype in HALF
            and q.shape[-1] in (64, 128) and q.shape[1] % k.shape[1] == 0)


def hybrid_prefill(q, k, v, modes, config, scale: float, key_padding: torch.Tensor | None = None,
                   backend: str | None = None, return_density: bool = False, kernel_options=None,
                   bucket: bool | None = None, possible_modes: tuple[int, ...] | None = None):
    """Causal prefill attention, every KV head in its own mode; output [b, hq, s, d] in q's dtype.

    q [b, hq, s, d]; k, v [b, hk, s, d] (GQA: never repeated); modes [b, hk] ints FA/SSA/XA;
    key_padding [b, s] bool, True = real token (one contiguous run per row), or None. XA block
    selection runs here (on q's device). With return_density, also returns [b, hk] the fraction of
    allowed pairs each head keeps (ESR input), computed analytically. bucket: FlexAttention runs at
    `bucket_length(s)` (zero rows appended, the output cut back) so the compiled kernel sees few
    shapes; None = on CUDA, where it is compiled. possible_modes: the modes `modes` can hold, known
    without reading it (a router's config gives its two); None = any, read from `modes` (one host sync).
    """
    backend = backend or DEFAULT_BACKEND
    if backend not in PREFILL_BACKENDS:
        raise ValueError(f"unknown prefill backend {backend!r}; use one of {PREFILL_BACKENDS}")
    b, hq, s, d = q.shape
    hk = k.shape[1]
    g = hq // hk
    known = None if possible_modes is None or key_padding is not None else set(possible_modes)
    if backend == "fused":
        return _fused(q, k, v, modes, config, scale, key_padding, return_density)
    if backend == "auto" and known and known <= {FA, SSA} and known != {FA} and q.is_cuda:
        out = fused_prefill(q, k, v, modes, config, scale, ssa_density(s, config) if return_density else None)
        if out is not None:
            return out
    if backend == "auto" and known == {FA}:  # every head full, known without reading the decisions
        return _causal(q, k, v, scale, return_density)
    padded = key_padding is not None and not bool(key_padding.all())
    modes = modes.to(device=q.device, dtype=torch.int64)
    modes_list = modes.tolist()  # the one host sync of the call
    if not padded and all(m == FA for row in modes_list for m in row):
        return _causal(q, k, v, scale, return_density)
    start, end = padding_bounds(key_padding if padded else None, b, s, q.device)
    has_xa = any(XA in row for row in modes_list)
    modes_q = modes.repeat_interleave(g, dim=1)
    xa_keep = None
    if has_xa:
        xa_keep = xa_select(q, k, modes_q == XA, start, end, scale, config.xa_block, config.xa_stride,
                            config.xa_threshold)
    work = b * hq * s * s * d
    cudnn_ok = (not padded and not has_xa and cudnn_band.supported(q, config.sink) and cudnn_band.available())
    if backend == "cudnn" and not cudnn_ok:
        raise ValueError(
            "the 'cudnn' prefill backend needs CUDA, the cuDNN frontend (pip install nvidia-cudnn-frontend),"
            f" bf16/fp16, sink <= {cudnn_band.MAX_SINK}, no padding and no XA head (got padding={padded},"
            f" XA={has_xa}, dtype={q.dtype}, sink={config.sink}, frontend error: {cudnn_band.load_error()});"
            " use backend='auto' or 'flex'")
    use_cudnn = backend == "cudnn" or (backend == "auto" and work >= CUDNN_MIN_WORK and cudnn_ok)
    split = not padded and (backend == "split" or
                            (backend == "auto" and work >= SPLIT_MIN_WORK))
    runs = head_runs(modes_list, FA) if (split or use_cudnn) else []
    # no FA head in the sparse kernel's share: SSA/XA lists only (narrow, shorter mask rule)
    skip_fa = bool(runs) or not any(FA in row for row in modes_list)
    on_cuda = q.is_cuda
    side_results = []
    if runs:
        main = torch.cuda.current_stream(q.device) if on_cuda else None
        side = _side_stream(q.device) if on_cuda else None
        if on_cuda:
            side.wait_stream(main)
        with torch.cuda.stream(side) if on_cuda else _null():
            for row, h0, h1 in runs:
                r = F.scaled_dot_product_attention(
                    q[row:row + 1, h0 * g:h1 * g], k[row:row + 1, h0:h1], v[row:row + 1, h0:h1],
                    is_causal=True, scale=scale, enable_gqa=g > 1)
                side_results.append((row, h0, h1, r))
    if use_cudnn:  # SSA runs straight into their slots of the output
        out = torch.empty_like(q)
        for row, h0, h1 in head_runs(modes_list, SSA):
            cudnn_band.ssa_attention(q[row:row + 1, h0 * g:h1 * g], k[row:row + 1, h0:h1],
                                     v[row:row + 1, h0:h1], out[row:row + 1, h0 * g:h1 * g],
                                     config.sink, config.local, scale)
    elif runs and SPLIT_SPARSE == "fused" and not has_xa and on_cuda and fa_ssa.supported(q, k, v):
        # SSA heads in the fused kernel, reading the model's layout in place; the FA heads, skipped there,
        # come from the side stream below.
        out = fa_ssa.launch(q, k, v, torch.where(modes == FA, fa_ssa.SKIP, modes), config.sink, config.local,
                            scale, fa_ssa.CONFIGS[d])
    else:
        # Zero rows appended after the prompt change nothing a real query sees (keys > q are never
        # kept; the block tables bound keys by `end`); the extra query rows are cut off.
        sb = bucket_length(s) if (on_cuda if bucket is None else bucket) else s
        # Contiguous either way: a length that is exactly a bucket would otherwise reach the kernel in the
        # model's strided layout, a second compiled variant of the same shape.
        qf, kf, vf = (F.pad(t, (0, 0, 0, sb - s)) if sb > s else t.contiguous() for t in (q, k, v))
        if padded or has_xa:  # the mask depends on the data: built for this call
            if xa_keep is not None and sb > s:
                nb = -(-sb // config.xa_block)
                xa_keep = F.pad(xa_keep, (0, nb - xa_keep.shape[-1], 0, nb - xa_keep.shape[-2]))
            bm = build_block_mask(modes_q, start, end, sb, config, xa_keep, skip_fa, has_xa=has_xa, padded=True)
        else:  # depends on the decisions and the length only: reused across layers and calls
            key = (tuple(map(tuple, modes_list)), skip_fa, hq, s, sb, config.sink, config.local, str(q.device))
            bm = _MASKS.pop(key, None)
            if bm is None:
                bm = build_block_mask(modes_q, start, end, sb, config, None, skip_fa, has_xa=False, padded=False)
            if _mask_bytes(bm) <= MASK_CACHE_ENTRY_BYTES:  # wide lists (every head, long prompt) stay uncached
                _MASKS[key] = bm  # most recently used last
                if len(_MASKS) > MASK_CACHE_SIZE:
                    _MASKS.pop(next(iter(_MASKS)))
        out = flex_run(qf, kf, vf, bm, scale, kernel_options)[:, :, :s]
    if runs:
        if on_cuda:
            main.wait_stream(side)
        for row, h0, h1, r in side_results:
            if on_cuda:
                r.record_stream(main)
            out[row:row + 1, h0 * g:h1 * g] = r
    if return_density and not padded and not has_xa:  # no per-row work: one op
        return out, torch.where(modes == SSA, ssa_density(s, config), 1.0).float()
    if return_density:
        return out, analytic_density(modes, start, end, config, xa_keep if has_xa else None)
    return out


def fused_prefill(q, k, v, modes, config, scale: float, density: float | None = None):
    """The "auto" dispatch's fused branch: fa_ssa.py on a CUDA prefill whose decisions the caller knows hold FA
    and SSA only, nothing padded; None where it does not apply (a layer of FUSED_MAX_WORK or more, a shape the
    kernel does not run). A small model's prefill is bound by the host, so this is all the work such a
    layer's attention does on it: two shape checks and one launch."""
    b, hq, s, d = q.shape
    if b * hq * s * s * d >= FUSED_MAX_WORK or q.dtype not in HALF or not fa_ssa.supported(q, k, v):
        return None
    return fa_ssa.launch(q, k, v, modes, config.sink, config.local, scale, fa_ssa.CONFIGS[d], density)


def _causal(q, k, v, scale, return_density):
    """MSR 0: the fastest causal kernel there is, with nothing else set up before it."""
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] > k.shape[1])
    return (out, torch.ones(q.shape[0], k.shape[1], device=q.device)) if return_density else out


def _fused(q, k, v, modes, config, scale, key_padding, return_density):
    """The "fused" backend asked for by name: its inputs checked (reading the decisions), then fa_ssa.py."""
    if bool((modes == XA).any()):
        raise ValueError("the 'fused' prefill backend runs FA and SSA heads only; with XA heads use "
                         "backend='auto' or 'flex'")
    if key_padding is not None and not bool(key_padding.all()):
        raise ValueError("the 'fused' prefill backend runs unpadded prompts only; use backend='auto' or 'flex'")
    return fa_ssa.fa_ssa_prefill(q, k, v, modes, config.sink, config.local, scale,
                                 ssa_density=ssa_density(q.shape[2], config) if return_density else None)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
