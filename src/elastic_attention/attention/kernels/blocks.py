"""Block tables of the hybrid pattern, built from the decisions (never from a dense token mask).

FlexAttention runs over per-(batch, query head, query block) lists of key blocks: "full" blocks where
every (query, key) pair is kept and no mask is evaluated, and "partial" blocks where the token rule is
evaluated element-wise. The lists are computed
analytically from each head's mode, the padding bounds and the config; XA heads use the block
selection of `xa.py`. Padding must be one contiguous run of real tokens per row ([start, end)),
which is what left or right padding gives.

Token rule (the same as `masks.py`, for queries and keys of one prefill, q_len == kv_len):
  allowed(q, k) = start <= k <= hi(q),  hi(q) = min(q, end - 1)   (no key for q < start)
  FA  keeps allowed; SSA keeps allowed & (k < start + sink | k > hi(q) - local);
  XA  keeps allowed & (keep[q // B, k // B] | q // B == k // B | k // B == start // B).
"""

from __future__ import annotations

import torch

from ..masks import SSA, XA, ssa_pair_count


def padding_bounds(key_padding: torch.Tensor | None, batch: int, seq: int, device):
    """[b] int32 start and end of the real tokens. key_padding: [b, s] bool (True = real) or None.

    Raises ValueError if a row's real tokens are not one contiguous run.
    """
    if key_padding is None:
        start = torch.zeros(batch, dtype=torch.int32, device=device)
        return start, torch.full((batch,), seq, dtype=torch.int32, device=device)
    kp = key_padding.to(torch.bool)
    pos = torch.arange(seq, device=device)
    count = kp.sum(-1)
    start = torch.where(kp, pos, seq).amin(-1)
    end = torch.where(kp, pos + 1, 0).amax(-1)
    if bool(((end - start).clamp(min=0) != count).any()) or bool((count == 0).any()):
        raise ValueError("fast prefill needs one contiguous run of real tokens per row (left or right padding)")
    return start.to(torch.int32), end.to(torch.int32)


def _grid(seq: int, bq: int, bk: int, device):
    nq, nk = -(-seq // bq), -(-seq // bk)
    r0 = torch.arange(nq, device=device) * bq
    r1 = torch.clamp(r0 + bq, max=seq) - 1
    c0 = torch.arange(nk, device=device) * bk
    c1 = torch.clamp(c0 + bk, max=seq) - 1
    # shapes [1, nq, 1] and [1, 1, nk] for broadcasting against [b, 1, 1]
    return r0[None, :, None], r1[None, :, None], c0[None, None, :], c1[None, None, :]


def fa_ssa_tables(start, end, seq: int, sink: int, local: int, bq: int, bk: int):
    """(any, all) bool tables [b, nq, nk] for FA and for SSA: (fa_any, fa_all, ssa_any, ssa_all)."""
    dev = start.device
    r0, r1, c0, c1 = _grid(seq, bq, bk, dev)
    st, en = start.long()[:, None, None], end.long()[:, None, None]
    hi_r1 = torch.minimum(r1, en - 1)
    lo_c = torch.maximum(c0, st)
    fa_any = (r1 >= st) & (lo_c <= torch.minimum(c1, hi_r1))
    fa_all = (r0 >= st) & (c0 >= st) & (c1 <= torch.minimum(r0, en - 1))
    sink_any = (r1 >= st) & (lo_c <= torch.minimum(torch.minimum(c1, st + sink - 1), hi_r1))
    rr0 = torch.maximum(r0, st)
    win_lo = torch.maximum(st, torch.minimum(rr0, en - 1) - local + 1)
    win_any = (rr0 <= r1) & (torch.maximum(c0, win_lo) <= torch.minimum(c1, hi_r1))
    ssa_any = sink_any | win_any
    ssa_all = fa_all & ((c1 <= st + sink - 1) | (c0 >= hi_r1 - local + 1))
    return fa_any, fa_all, ssa_any, ssa_all


def xa_tables(keep: torch.Tensor, start, seq: int, xa_block: int, bq: int, bk: int, fa_any_x, fa_all):
    """(any, all) [b, h, nq, nk] for XA heads from keep [b, h, nqx, nkx] at xa_block granularity.

    fa_any_x: FA 'any' table at xa_block granularity [b, nqx, nkx]; fa_all at (bq, bk) [b, nq, nk].
    """
    if bq % xa_block or bk % xa_block:
        raise ValueError(f"xa_block={xa_block} must divide the kernel blocks ({bq}, {bk})")
    b, h, nqx, nkx = keep.shape
    dev = keep.device
    qb = torch.arange(nqx, device=dev)
    kb = torch.arange(nkx, device=dev)
    sink_col = (kb[None, :] == (start.long() // xa_block)[:, None])[:, None, None, :]  # [b,1,1,nkx]
    sel = keep | (qb[:, None] == kb[None, :]) | sink_col
    any_x = sel & fa_any_x[:, None]
    rq, rk = bq // xa_block, bk // xa_block
    nq, nk = -(-seq // bq), -(-seq // bk)
    pad = (0, nk * rk - nkx, 0, nq * rq - nqx)
    any_x = torch.nn.functional.pad(any_x, pad, value=False)
    sel = torch.nn.functional.pad(sel, pad, value=True)
    xa_any = any_x.view(b, h, nq, rq, nk, rk).any(5).any(3)
    xa_all = sel.view(b, h, nq, rq, nk, rk).all(5).all(3) & fa_all[:, None]
    return xa_any, xa_all


def to_ordered(table: torch.Tensor, width: int | None = None):
    """bool [..., nk] -> (count [...] int32, indices [..., width] int32, kept first in increasing order).

    width (default nk) must be >= every row's count; a narrow width keeps the lists small.
    """
    nk = table.shape[-1]
    width = nk if width is None else min(width, nk)
    t = table.to(torch.int32)
    count = t.sum(-1, dtype=torch.int32)
    pos = t.cumsum(-1, dtype=torch.int32) - 1
    target = torch.where(table & (pos < width), pos, width).long()
    idx = torch.zeros(*table.shape[:-1], width + 1, dtype=torch.int32, device=table.device)
    src = torch.arange(nk, dtype=torch.int32, device=table.device).expand_as(table)
    idx.scatter_(-1, target, src)
    return count, idx[..., :width].contiguous()


_ROW_CACHE: dict = {}


def row_lists(start, end, seq: int, config, bq: int, bk: int, width: int, with_fa: bool, padded: bool = True):
    """Per batch row: {"ssa_part", "ssa_full" (and "fa_part", "fa_full")} -> (count [b, nq], idx [b, nq, width]).

    They depend on the padding bounds, the sequence length and the config only, not on the decisions.
    Without padding every row is the same: one row (b = 1, broadcast by the caller) is built once
    per (seq, config, blocks) and cached, so a model's layers do not rebuild it on every call.
    """
    key = (seq, config.sink, config.local, bq, bk, width, with_fa, str(start.device))
    if not padded and key in _ROW_CACHE:
        return _ROW_CACHE[key]
    if padded:
        st, en = start, end
    else:
        # Unpadded lists are cached by `seq`, so they must not depend on the row's real length: they are built
        # for keys up to `seq`. A prompt run at a longer bucket length (flex.bucket_length) has end < seq, and
        # its real queries never reach the keys past `end` anyway (causal). Building them from `end` cached the
        # first prompt's length for every later prompt of the bucket (benchmarks/router_paths.py found it).
        st, en = torch.zeros_like(start[:1]), torch.full_like(end[:1], seq)
    fa_any, fa_all, ssa_any, ssa_all = fa_ssa_tables(st, en, seq, config.sink, config.local, bq, bk)
    out = {"ssa_part": to_ordered(ssa_any & ~ssa_all, width), "ssa_full": to_ordered(ssa_all, width)}
    if with_fa:
        out["fa_part"] = to_ordered(fa_any & ~fa_all, width)
        out["fa_full"] = to_ordered(fa_all, width)
    if not padded:
        if len(_ROW_CACHE) >= 64:  # many distinct lengths: start over rather than grow without bound
            _ROW_CACHE.clear()
        _ROW_CACHE[key] = out
    return out


def block_lists(modes_q: torch.Tensor, start, end, seq: int, config, bq: int, bk: int,
                xa_keep: torch.Tensor | None = None, skip_fa: bool = False, has_xa: bool | None = None,
                padded: bool = True):
    """(partial_count, partial_idx, full_count, full_idx) int32, [b, hq, nq] / [b, hq, nq, width].

    modes_q: [b, hq] mode per query head. skip_fa: FA heads get no blocks (another kernel runs them).
    xa_keep: [b, hq, nqx, nkx] XA block selection (needed when an XA head is present).
    padded=False promises start = 0 and end = seq for every row (the per-row lists are then cached).
    The FA and SSA lists are built once per batch row ([b, nq, width]) and picked per head.
    """
    if has_xa is None:
        has_xa = bool((modes_q == XA).any())
    if has_xa and xa_keep is None:
        raise ValueError("XA heads need xa_keep (the XA block selection)")
    b, hq = modes_q.shape
    nk = -(-seq // bk)
    narrow = skip_fa and not has_xa
    # an SSA row touches at most the sink blocks, the window blocks and a few edge blocks
    width = min(nk, -(-config.sink // bk) + -(-(config.local + bq) // bk) + 3) if narrow else nk
    rows = row_lists(start, end, seq, config, bq, bk, width, not skip_fa, padded)
    (sp_c, sp_i), (sf_c, sf_i) = rows["ssa_part"], rows["ssa_full"]
    m = modes_q[:, :, None, None]
    is_ssa = m[..., 0] == SSA
    if skip_fa:
        zero = torch.zeros((), dtype=torch.int32, device=modes_q.device)
        pc = torch.where(is_ssa, sp_c[:, None], zero)
        fc = torch.where(is_ssa, sf_c[:, None], zero)
        pi = sp_i[:, None].expand(b, hq, -1, -1)
        fi = sf_i[:, None].expand(b, hq, -1, -1)
    else:
        (fp_c, fp_i), (ff_c, ff_i) = rows["fa_part"], rows["fa_full"]
        pc = torch.where(is_ssa, sp_c[:, None], fp_c[:, None])
        fc = torch.where(is_ssa, sf_c[:, None], ff_c[:, None])
        pi = torch.where(m == SSA, sp_i[:, None], fp_i[:, None])
        fi = torch.where(m == SSA, sf_i[:, None], ff_i[:, None])
    if has_xa:
        fa_all = fa_ssa_tables(start, end, seq, config.sink, config.local, bq, bk)[1]
        fa_any_x = fa_ssa_tables(start, end, seq, config.sink, config.local,
                                 config.xa_block, config.xa_block)[0]
        xa_any, xa_all = xa_tables(xa_keep, start, seq, config.xa_block, bq, bk, fa_any_x, fa_all)
        xp_c, xp_i = to_ordered(xa_any & ~xa_all, width)
        xf_c, xf_i = to_ordered(xa_all, width)
        is_xa = m[..., 0] == XA
        pc = torch.where(is_xa, xp_c, pc)
        fc = torch.where(is_xa, xf_c, fc)
        pi = torch.where(m == XA, xp_i, pi)
        fi = torch.where(m == XA, xf_i, fi)
    return pc.contiguous(), pi.contiguous(), fc.contiguous(), fi.contiguous()


# ------------------------------------------------------------------ density (ESR) analytically

def _tri(n):
    return n * (n + 1) // 2


def ssa_density(n: int, config) -> float:
    """Fraction of the causal pairs of an n-token prompt that an SSA head keeps (no padding)."""
    return ssa_pair_count(n, config.sink, config.local) / max(_tri(n), 1)


def density(modes: torch.Tensor, start, end, config, xa_keep: torch.Tensor | None = None) -> torch.Tensor:
    """[b, hk] fraction of the allowed (real query, key) pairs each KV head keeps, without masks.

    Same quantity as ModeMasks.density: FA 1; SSA sum_n min(n, sink + local) / sum_n n over the real
    rows; XA counts the pairs of the selected blocks (mean over the query heads of the group).
    """
    b, hk = modes.shape
    n = (end - start).long().clamp(min=0)  # real rows; row i (0-based) has i + 1 allowed keys
    total = _tri(n).double().clamp(min=1)
    w = config.sink + config.local
    ssa_kept = torch.where(n <= w, _tri(n), _tri(torch.full_like(n, w)) + (n - w) * w).double()
    out = torch.ones(b, hk, dtype=torch.float64, device=modes.device)
    out = torch.where(modes == SSA, (ssa_kept / total)[:, None], out)
    if xa_keep is not None and bool((modes == XA).any()):
        B = config.xa_block
        hq = xa_keep.shape[1]
        nqx, nkx = xa_keep.shape[2], xa_keep.shape[3]
        dev = xa_keep.device
        st, en = start.long()[:, None, None], end.long()[:, None, None]
        r0 = (torch.arange(nqx, device=dev) * B)[None, :, None]
        r1 = r0 + B - 1
        c0 = (torch.arange(nkx, device=dev) * B)[None, None, :]
        c1 = c0 + B - 1
        a = torch.maximum(r0, st)  # real rows of the block: [a, bb]
        bb = torch.minimum(r1, en - 1)
        L = torch.maximum(c0, st)  # row q keeps keys [L, min(c1, q)]
        lo1, hi1 = torch.maximum(a, L), torch.minimum(bb, c1)
        n1 = (hi1 - lo1 + 1).clamp(min=0)
        s1 = n1 * ((lo1 - L + 1) + (hi1 - L + 1)) // 2
        lo2 = torch.maximum(a, c1 + 1)
        n2 = (bb - lo2 + 1).clamp(min=0)
        s2 = n2 * (c1 - L + 1).clamp(min=0)
        pairs = (torch.where(n1 > 0, s1, 0) + s2).double()  # [b, nqx, nkx]
        qb = torch.arange(nqx, device=dev)
        kb = torch.arange(nkx, device=dev)
        sink_col = (kb[None, :] == (start.long() // B)[:, None])[:, None, None, :]
        sel = xa_keep | (qb[:, None] == kb[None, :]) | sink_col
        kept = (sel.double() * pairs[:, None]).sum((-1, -2))  # [b, hq]
        kept = kept.view(b, hk, hq // hk).mean(-1)
        out = torch.where(modes == XA, kept / total[:, None], out)
    return out.float()
