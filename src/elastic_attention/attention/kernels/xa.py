"""XAttention block selection without a dense token mask (runs on the GPU, counted in the time).

The antidiagonal sum of a (stride x stride) tile is a dot product of two strided vectors: with
queries q[t*S + a] and keys k[u*S + S-1-a], a = 0..S-1, tile (t, u) scores
  sum_a q[tS + a] . k[uS + S - 1 - a] = (Qs @ Ks^T)[t, u],
Qs = q viewed as [T, S*d], Ks = k with each tile reversed, viewed as [T, S*d]. One matmul of
1/S of the attention's length per side gives every tile score; the diagonal tiles (where
causality cuts the antidiagonal) and the padding are handled exactly as `masks.xa_mask` does.
"""

from __future__ import annotations

import torch


def xa_select(q: torch.Tensor, k: torch.Tensor, heads: torch.Tensor, start, end, scale: float,
              block: int, stride: int, threshold: float, head_chunk_elems: int = 1 << 27) -> torch.Tensor:
    """keep [b, hq, n_blocks, n_blocks] bool, computed for the query heads where heads[b, h] is True.

    q [b, hq, s, d], k [b, hk, s, d] (prefill, q_len == kv_len); start/end [b] the real tokens.
    Matches masks.xa_mask (its `keep`) for the chosen heads; other heads are all False.
    """
    b, hq, s, d = q.shape
    hk = k.shape[1]
    g = hq // hk
    S = stride
    nb = -(-s // block)
    P = nb * block
    T = P // S
    per = block // S
    dev = q.device
    keep = torch.zeros(b, hq, nb, nb, dtype=torch.bool, device=dev)
    cdt = q.dtype if q.is_cuda else torch.float32
    pos = torch.arange(P, device=dev)
    tq = torch.arange(T, device=dev)
    lower = tq[None, :] < tq[:, None]  # strictly below the diagonal [T, T]
    a_idx = torch.arange(S, device=dev)
    diag_a = (S - 1 - a_idx) <= a_idx  # antidiagonal elements of a diagonal tile that are causal
    chunk = max(1, head_chunk_elems // (T * T))
    for row in range(b):
        st, en = int(start[row]), int(end[row])
        hs = heads[row].nonzero().flatten()
        if hs.numel() == 0:
            continue
        row_valid = (pos >= st) & (pos < s)  # query rows that have at least one allowed key
        key_valid = (pos >= st) & (pos < en)
        rv = row_valid.view(T, S)
        kv_rev = key_valid.view(T, S).flip(1)
        tile_on = (rv.float() @ kv_rev.float().T > 0) & lower
        dtile = (rv & kv_rev & diag_a).any(-1)
        tile_on = tile_on | torch.diag(dtile)
        row_on = tile_on.any(-1)  # [T]
        rows_used = row_on.view(nb, per).sum(-1).clamp(min=1).float()  # [nb]
        for c in range(0, hs.numel(), chunk):
            h = hs[c:c + chunk]
            qh = torch.zeros(h.numel(), P, d, dtype=cdt, device=dev)
            kh = torch.zeros(h.numel(), P, d, dtype=cdt, device=dev)
            qh[:, :s] = q[row, h].to(cdt)
            kh[:, :s] = k[row, h // g].to(cdt)
            qh = qh * row_valid[None, :, None]
            kh = kh * key_valid[None, :, None]
            qs = qh.view(-1, T, S * d)
            ks = kh.view(-1, T, S, d).flip(2).reshape(-1, T, S * d)
            sc = torch.matmul(qs, ks.transpose(-1, -2)).float()  # [hc, T, T]
            dprod = (qh.view(-1, T, S, d).float() * kh.view(-1, T, S, d).flip(2).float()).sum(-1)
            dsum = (dprod * diag_a).sum(-1)  # [hc, T]
            sc.diagonal(dim1=-2, dim2=-1).copy_(dsum)
            sc = sc * (scale / S)
            sc = sc.masked_fill(~tile_on, float("-inf"))
            sc = torch.where(row_on[:, None], sc, 0.0)
            probs = torch.softmax(sc, dim=-1) * tile_on
            mass = probs.view(-1, nb, per, nb, per).sum(-1).sum(2) / rows_used[:, None]  # [hc, nb, nb]
            sm, order = mass.sort(dim=-1, descending=True)
            before = sm.cumsum(-1) - sm
            ks_ = (before < threshold * mass.sum(-1, keepdim=True)) & (sm > 0)
            kp = torch.zeros_like(ks_).scatter(-1, order, ks_)
            keep[row, h] = kp
    return keep
