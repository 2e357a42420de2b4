"""Candidate (a): PyTorch FlexAttention with a per-head BlockMask built from the decisions.

The BlockMask comes from `blocks.block_lists` (analytic full / partial key-block lists per head,
no dense mask); the mask_mod, evaluated only on partial blocks, branches on the head's mode.
GQA runs natively (enable_gqa: K/V are never repeated). On CPU FlexAttention runs eagerly, which
is how CI checks this path against the exact reference.
"""

from __future__ import annotations

import functools

import torch

from ..masks import SSA, XA
from .blocks import block_lists

FLEX_BLOCK = 128
FLEX_COMPILE_LIMIT = 256  # dynamo's per-function cap on compiled variants, raised to this


def make_mask_mod(modes_q, start, end, sink: int, local: int, xa_keep=None, xa_block: int = 64,
                  padded: bool = True, only_ssa: bool = False):
    """The token rule of every mode (see blocks.py), indexed by (batch, query head, q, kv).

    padded=False (start 0, end seq) and only_ssa (the split dispatch: only SSA heads have blocks) give
    shorter rules with fewer loads; the kernel evaluates the rule on every partial block.
    """
    if not padded and xa_keep is None:
        def plain_mask_mod(b, h, q_idx, kv_idx):
            ssa = (kv_idx <= q_idx) & ((kv_idx < sink) | (kv_idx > q_idx - local))
            return ssa if only_ssa else (kv_idx <= q_idx) & ((modes_q[b, h] != SSA) | ssa)
        return plain_mask_mod

    def mask_mod(b, h, q_idx, kv_idx):
        st, en = start[b], end[b]
        hi = torch.minimum(q_idx, en - 1)
        ok = (kv_idx >= st) & (kv_idx <= hi)
        mode = modes_q[b, h]
        ssa = (kv_idx < st + sink) | (kv_idx > hi - local)
        sel = (mode != SSA) | ssa
        if xa_keep is not None:
            qb, kb = q_idx // xa_block, kv_idx // xa_block
            xa = xa_keep[b, h, qb, kb] | (qb == kb) | (kb == st // xa_block)
            sel = sel & ((mode != XA) | xa)
        return ok & sel
    return mask_mod


def build_block_mask(modes_q, start, end, seq: int, config, xa_keep=None, skip_fa: bool = False,
                     block: int = FLEX_BLOCK, has_xa: bool | None = None, padded: bool = True):
    from torch.nn.attention.flex_attention import BlockMask

    pc, pi, fc, fi = block_lists(modes_q, start, end, seq, config, block, block, xa_keep, skip_fa, has_xa,
                                 padded)
    mask_mod = make_mask_mod(modes_q.to(torch.int32), start, end, config.sink, config.local,
                             xa_keep, config.xa_block, padded, only_ssa=skip_fa and xa_keep is None)
    kwargs = dict(BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(seq, seq))
    try:
        return BlockMask.from_kv_blocks(pc, pi, fc, fi, compute_q_blocks=False, **kwargs)
    except TypeError:  # older torch without compute_q_blocks
        return BlockMask.from_kv_blocks(pc, pi, fc, fi, **kwargs)


def bucket_length(seq: int) -> int:
    """The length the compiled kernel runs at: seq rounded up to one of 4 steps per doubling.

    The kernel is compiled for static shapes, so without buckets every new prompt length compiled
    again (and past dynamo's cache limit fell back to a slow path). With them, all lengths up to 128K
    tokens run at 36 shapes per mask rule, for at most 25 % more sparse work.
    """
    if seq <= FLEX_BLOCK:
        return FLEX_BLOCK
    step = max(FLEX_BLOCK, 1 << (seq - 1).bit_length() - 3)
    return -(-seq // step) * step


@functools.lru_cache(maxsize=None)
def compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    import torch._dynamo

    # One compiled variant per (bucket, mask rule, batch size): 36 buckets up to 128K times a few rules
    # (docs/benchmarks.md, "Compilations") must stay under dynamo's cap, past which calls run uncompiled.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, FLEX_COMPILE_LIMIT)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 2 * FLEX_COMPILE_LIMIT)
    return torch.compile(flex_attention, dynamic=False)


# FlexAttention kernel options per head_dim on CUDA, picked by benchmarks/flex_options.py (H200);
# a head_dim not listed runs inductor's defaults.
TUNED_OPTIONS: dict[int, dict] = {
    64: {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    128: {"USE_TMA": True},
}


def flex_run(q, k, v, block_mask, scale: float, kernel_options: dict | None = None):
    """FlexAttention (compiled on CUDA, eager elsewhere); rows with no kept key give zeros.

    kernel_options None takes TUNED_OPTIONS on CUDA; {} takes inductor's defaults.
    """
    from torch.nn.attention.flex_attention import flex_attention

    if kernel_options is None:
        kernel_options = dict(TUNED_OPTIONS.get(q.shape[-1], {})) if q.is_cuda else {}
    gqa = q.shape[1] != k.shape[1]
    fn = compiled_flex() if q.is_cuda else flex_attention
    kw = {"kernel_options": kernel_options} if kernel_options else {}
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, **kw)
