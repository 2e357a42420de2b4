"""Which (query, key) pairs each attention mode keeps, as boolean masks (True = attend).

Every mask starts from `allowed`, the model's own mask (causal + padding, [batch, 1, q, kv]),
so padding and causality are respected by construction. These masks define the modes; every
backend is tested against attention computed with them.
"""

from __future__ import annotations

import torch

FA, SSA, XA = 0, 1, 2
MODE_IDS = {"fa": FA, "ssa": SSA, "xa": XA}


def mode_ids(r: torch.Tensor, sparse: int, kept: int) -> torch.Tensor:
    """Decisions r (1 = sparse) -> mode ids [same shape] int64."""
    if (kept, sparse) == (FA, SSA):  # the ids are the decisions: one op (each costs host time)
        return (r > 0.5).long()
    return torch.where(r > 0.5, sparse, kept)


def causal_allowed(batch: int, q_len: int, kv_len: int, device=None) -> torch.Tensor:
    """Plain causal mask for queries that are the last `q_len` of `kv_len` positions."""
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
    k_pos = torch.arange(kv_len, device=device)
    return (k_pos[None, :] <= q_pos[:, None]).expand(batch, 1, q_len, kv_len)


def allowed_from_hf_mask(mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int,
                         device=None) -> torch.Tensor:
    """Turn what transformers passes to an attention function into a bool mask [b, 1, q, kv].

    transformers passes None (plain causal, nothing padded), a bool mask (True = attend), or an
    additive float mask (0 = attend, a very negative number = masked).
    """
    if mask is None:
        return causal_allowed(batch, q_len, kv_len, device)
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    mask = mask[..., :kv_len]
    if mask.shape[1] != 1:  # a per-head mask from the caller: keep the first head's pattern
        mask = mask[:, :1]
    return mask.expand(batch, 1, q_len, kv_len)


def valid_keys(allowed: torch.Tensor) -> torch.Tensor:
    """[b, kv] True for keys that some query may see, i.e. keys that are not padding."""
    return allowed.any(dim=-2)[:, 0]


def ssa_mask(allowed: torch.Tensor, sink: int, local: int) -> torch.Tensor:
    """Streaming attention: each query keeps the first `sink` and the last `local` of its allowed keys.

    Ranks are counted among the keys the row may see, so left padding moves the sink to the first
    real token, and the window always includes the query itself.
    """
    rank = allowed.to(torch.int32).cumsum(-1)  # 1-based rank at allowed positions
    total = rank[..., -1:]
    return allowed & ((rank <= sink) | (rank > total - local))


def ssa_pair_count(n: int, sink: int, local: int) -> int:
    """(query, key) pairs `ssa_mask` keeps in an n-token causal prefill without padding.

    Query i keeps {j <= i : j < sink or j > i - local}: min(i + 1, local) window keys plus the
    max(0, min(sink, i + 1 - local)) sink keys before the window, min(i + 1, sink + local) in all.
    """
    w = sink + local
    return n * (n + 1) // 2 if n <= w else w * (w + 1) // 2 + (n - w) * w


def xa_mask(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor, scale: float,
            block: int, stride: int, threshold: float) -> torch.Tensor:
    """XAttention block selection, per query head: [b, hq, q, kv] bool.

    Blocks and stride tiles are laid on absolute positions (queries are the last q of kv
    positions). A tile (stride x stride) scores the sum of its antidiagonal logits scaled by
    1/(sqrt(d) * stride); a softmax over the key tiles of each query tile gives attention mass; a
    query block's mass on a key block is the mean over its tile rows. Each query block keeps the
    fewest key blocks whose mass reaches `threshold`, plus its diagonal block and the block of the
    row's first real token (the sink block). Dense O(q * kv) work: this is the reference.
    """
    b, hq, q_len, d = q.shape
    hk, kv_len = k.shape[1], k.shape[2]
    k = k.repeat_interleave(hq // hk, dim=1)
    dev = q.device
    q0 = (kv_len - q_len) // block * block  # first position of the first query block
    rows = kv_len - q0  # padded query axis starts at q0
    n_qb = -(-rows // block)
    n_kb = -(-kv_len // block)

    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [b, hq, q, kv]
    q_pos = torch.arange(kv_len - q_len, kv_len, device=dev)
    k_pos = torch.arange(kv_len, device=dev)
    anti = ((q_pos[:, None] + k_pos[None, :]) % stride == stride - 1) & allowed  # [b, 1, q, kv]

    # Lay out on a block-aligned grid: rows q0 .. q0 + n_qb*block, cols 0 .. n_kb*block.
    grid = torch.zeros(b, hq, n_qb * block, n_kb * block, device=dev)
    on = torch.zeros(b, 1, n_qb * block, n_kb * block, dtype=torch.bool, device=dev)
    r0 = kv_len - q_len - q0
    grid[:, :, r0:r0 + q_len, :kv_len] = torch.where(anti, logits, 0.0)
    on[:, :, r0:r0 + q_len, :kv_len] = anti

    t_q, t_k = n_qb * block // stride, n_kb * block // stride
    tile_sum = grid.view(b, hq, t_q, stride, t_k, stride).sum(dim=(3, 5)) / stride
    tile_on = on.view(b, 1, t_q, stride, t_k, stride).any(dim=5).any(dim=3)
    tile_sum = tile_sum.masked_fill(~tile_on, float("-inf"))
    row_on = tile_on.any(-1, keepdim=True)
    probs = torch.softmax(torch.where(row_on, tile_sum, 0.0), dim=-1) * tile_on  # [b, hq, tq, tk]

    per = block // stride
    mass = probs.view(b, hq, n_qb, per, n_kb, per).sum(-1)  # [b, hq, qb, per, kb]
    rows_used = row_on.view(b, 1, n_qb, per).sum(-1, keepdim=True).clamp(min=1)  # [b,1,qb,1]
    mass = mass.sum(3) / rows_used  # [b, hq, qb, kb]

    sorted_mass, order = mass.sort(dim=-1, descending=True)
    before = sorted_mass.cumsum(-1) - sorted_mass
    keep_sorted = (before < threshold * mass.sum(-1, keepdim=True)) & (sorted_mass > 0)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # [b, hq, qb, kb]

    q_block = (q_pos - q0) // block  # index into the padded query-block axis
    k_block = k_pos // block
    token_keep = keep[:, :, q_block][..., k_block]  # [b, hq, q, kv]
    diagonal = (q_pos // block)[:, None] == k_block[None, :]
    first_real = allowed.to(torch.int8).argmax(-1, keepdim=True)  # [b, 1, q, 1]
    sink_block = (first_real // block) == k_block
    return allowed & (token_keep | diagonal | sink_block)


def mode_mask(mode: int, allowed: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float,
              config) -> torch.Tensor:
    """The mask of one mode for all heads (FA and SSA broadcast over heads, XA is per head)."""
    if mode == FA:
        return allowed
    if mode == SSA:
        return ssa_mask(allowed, config.sink, config.local)
    return xa_mask(q, k, allowed, scale, config.xa_block, config.xa_stride, config.xa_threshold)


def head_masks(modes: torch.Tensor, allowed: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               scale: float, config) -> torch.Tensor:
    """One mask per query head [b, hq, q, kv] from per-KV-head modes [b, hk] (ints FA/SSA/XA)."""
    hq = q.shape[1]
    per_q_head = modes.repeat_interleave(hq // modes.shape[1], dim=1)[:, :, None, None]
    out = None
    for mode in modes.unique().tolist():
        m = mode_mask(mode, allowed, q, k, scale, config)
        out = m if out is None else torch.where(per_q_head == mode, m, out)
    return out.expand(q.shape[0], hq, q.shape[2], k.shape[2])
