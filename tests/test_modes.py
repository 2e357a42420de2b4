"""FA, SSA and XA masks and both attention backends against brute-force definitions (tests/helpers.py)."""

import pytest
import torch

from elastic_attention import ElasticConfig
from elastic_attention.attention import (FA, SSA, XA, allowed_from_hf_mask, attention, head_masks, hybrid_attention,
                                         masked_attention, sdpa_attention, ssa_mask, xa_mask)
from helpers import brute_allowed, brute_attention, brute_ssa, brute_xa

CFG = ElasticConfig(sink=3, local=5, xa_block=8, xa_stride=4, xa_threshold=0.6)
SHAPES = [  # (q_len, kv_len): prefill, lengths off the block/stride grid, shorter than sink + local, decode, chunk
    (40, 40), (37, 37), (6, 6), (1, 1), (1, 40), (7, 45), (1, 23)]
GQA = [(2, 2), (4, 2), (4, 1)]  # (query heads, kv heads): ratios 1, 2, 4
PADS = ["none", "left", "right"]
BACKENDS = {"reference": masked_attention, "sdpa": sdpa_attention}


def make_valid(kv_len: int, pad: str) -> torch.Tensor:
    """[2, kv] real-token flags: row 0 padded by up to 5 tokens, row 1 by up to 2."""
    valid = torch.ones(2, kv_len, dtype=torch.bool)
    for row, n in enumerate((min(5, kv_len - 1), min(2, kv_len - 1))):
        if n and pad == "left":
            valid[row, :n] = False
        elif n and pad == "right":
            valid[row, kv_len - n:] = False
    return valid


def make_qkv(hq, hk, q_len, kv_len, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, q_len, d, generator=g) * 2  # peaky logits so XA prunes
    k = torch.randn(2, hk, kv_len, d, generator=g)
    v = torch.randn(2, hk, kv_len, d, generator=g)
    return q, k, v


def brute_mode(mode, q, k, allowed, scale):
    hq = q.shape[1]
    if mode == FA:
        return allowed.expand(-1, hq, -1, -1)
    if mode == SSA:
        return brute_ssa(allowed, CFG.sink, CFG.local).expand(-1, hq, -1, -1)
    return brute_xa(q, k, allowed, scale, CFG.xa_block, CFG.xa_stride, CFG.xa_threshold)


@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("shape", SHAPES)
def test_masks_and_outputs_match_brute_force_fp32(shape, heads, pad):
    q_len, kv_len = shape
    hq, hk = heads
    q, k, v = make_qkv(hq, hk, q_len, kv_len, seed=q_len * 100 + kv_len + hq + 10 * hk)
    scale = q.shape[-1] ** -0.5
    allowed = brute_allowed(make_valid(kv_len, pad), q_len)
    expected = {mode: brute_mode(mode, q, k, allowed, scale) for mode in (FA, SSA, XA)}

    assert torch.equal(ssa_mask(allowed, CFG.sink, CFG.local).expand(-1, hq, -1, -1), expected[SSA])
    assert torch.equal(xa_mask(q, k, allowed, scale, CFG.xa_block, CFG.xa_stride, CFG.xa_threshold),
                       expected[XA])

    # Per-KV-head modes: every query head of a group follows its KV head.
    g = torch.Generator().manual_seed(kv_len)
    mixed = torch.randint(0, 3, (2, hk), generator=g)
    mixed[0, 0], mixed[1, -1] = FA, SSA
    want_mixed = torch.zeros(2, hq, q_len, kv_len, dtype=torch.bool)
    for b in range(2):
        for h in range(hq):
            want_mixed[b, h] = expected[int(mixed[b, h // (hq // hk)])][b, h]
    masks = {mode: head_masks(torch.full((2, hk), mode), allowed, q, k, scale, CFG) for mode in (FA, SSA, XA)}
    masks["mixed"] = head_masks(mixed, allowed, q, k, scale, CFG)
    expected["mixed"] = want_mixed
    for name, mask in masks.items():
        assert torch.equal(mask, expected[name]), f"head_masks for mode {name}"

    for name, mask in masks.items():
        want = brute_attention(q, k, v, expected[name], scale)
        for backend, fn in BACKENDS.items():
            out = fn(q, k, v, mask, scale)
            assert out.dtype == torch.float32 and out.shape == (2, hq, q_len, v.shape[-1])
            assert torch.allclose(out.double(), want, atol=1e-5, rtol=0), f"{backend} backend, mode {name}"


def test_sparse_modes_actually_prune():
    """The shapes above would prove little if SSA and XA kept everything."""
    q, k, _ = make_qkv(4, 2, 40, 40)
    allowed = brute_allowed(torch.ones(2, 40, dtype=torch.bool), 40)
    scale = q.shape[-1] ** -0.5
    ssa = brute_ssa(allowed, CFG.sink, CFG.local)
    xa = brute_xa(q, k, allowed, scale, CFG.xa_block, CFG.xa_stride, CFG.xa_threshold)
    n_allowed = allowed.sum().item()
    assert ssa.sum().item() * 2 < n_allowed
    assert xa.sum().item() < allowed.expand_as(xa).sum().item()  # XA pruned some blocks
    assert not torch.equal(xa[:, 0], xa[:, 2])  # per-head selection differs across KV heads
    # Every row keeps its own diagonal block and the sink block.
    assert xa[..., torch.arange(40), torch.arange(40)].all() and xa[..., 0].all()


@pytest.mark.parametrize("pad", ["left", "right"])
@pytest.mark.parametrize("shape", [(40, 40), (7, 45), (1, 40), (37, 37)])
def test_bf16_close_to_fp32_reference(shape, pad):
    q_len, kv_len = shape
    q, k, v = make_qkv(4, 2, q_len, kv_len, seed=7 + q_len)
    scale = q.shape[-1] ** -0.5
    allowed = brute_allowed(make_valid(kv_len, pad), q_len)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    for mode in (FA, SSA, XA):
        # XA selects blocks from the logits it sees: brute-force on the bf16 values it got.
        want_mask = brute_mode(mode, qb.float(), kb.float(), allowed, scale)
        mask = head_masks(torch.full((2, 2), mode), allowed, qb, kb, scale, CFG)
        assert torch.equal(mask, want_mask)
        ref = brute_attention(q, k, v, want_mask, scale)  # fp32 inputs
        for backend, fn in BACKENDS.items():
            out = fn(qb, kb, vb, mask, scale)
            assert out.dtype == torch.bfloat16
            rel = ((out.double() - ref).norm() / ref.norm()).item()
            assert rel <= 1e-2, f"{backend} backend, mode {mode}: relative error {rel:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("mode", [FA, SSA, XA])
def test_fully_masked_rows_are_zero_without_nan(mode, backend, dtype):
    """Left-padding query rows see no key: output 0, finite gradients, no gradient into those rows."""
    q_len = kv_len = 12
    q, k, v = make_qkv(4, 2, q_len, kv_len, seed=3)
    valid = torch.ones(2, kv_len, dtype=torch.bool)
    valid[0, :4] = False  # four padding query rows in sample 0
    valid[1, :] = False  # an all-padding sample
    allowed = brute_allowed(valid, q_len)
    q, k, v = (t.to(dtype).requires_grad_(True) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    mask = head_masks(torch.full((2, 2), mode), allowed, q.detach(), k.detach(), scale, CFG)
    out = BACKENDS[backend](q, k, v, mask, scale)
    assert not out.isnan().any()
    assert (out[0, :, :4] == 0).all() and (out[1] == 0).all()
    assert (out[0, :, 4:] != 0).any()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    (out * weights).sum().backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert torch.isfinite(t.grad).all(), f"grad of {name} has NaN/inf"
    assert (q.grad[0, :, :4] == 0).all() and (q.grad[1] == 0).all()
    assert (k.grad[0, :, :4] == 0).all() and (v.grad[0, :, :4] == 0).all()  # padding keys get nothing
    assert (q.grad[0, :, 4:] != 0).any()


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_allowed_from_hf_mask(kind):
    valid = make_valid(10, "left")
    want = brute_allowed(valid, 3)
    hf = want if kind == "bool" else torch.where(want, 0.0, torch.finfo(torch.float32).min)
    assert torch.equal(allowed_from_hf_mask(hf, 2, 3, 10), want)
    # None means plain causal with no padding.
    assert torch.equal(allowed_from_hf_mask(None, 2, 3, 10),
                       brute_allowed(torch.ones(2, 10, dtype=torch.bool), 3))


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("shape", [(40, 40), (7, 45), (1, 40), (1, 1)])
def test_no_mask_means_causal_aligned_to_the_last_positions(shape, backend):
    """mask None = plain causal where queries are the last q_len positions (not SDPA's top-left)."""
    q_len, kv_len = shape
    q, k, v = make_qkv(4, 2, q_len, kv_len, seed=11)
    scale = q.shape[-1] ** -0.5
    want = brute_attention(q, k, v, brute_allowed(torch.ones(2, kv_len, dtype=torch.bool), q_len), scale)
    assert torch.allclose(attention(q, k, v, None, scale, backend).double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("pad", ["none", "left"])
def test_hybrid_attention_runs_each_kv_head_in_its_mode(pad, backend):
    q, k, v = make_qkv(8, 4, 37, 37, seed=12)
    scale = q.shape[-1] ** -0.5
    allowed = brute_allowed(make_valid(37, pad), 37)
    modes = torch.tensor([[FA, SSA, XA, SSA], [XA, FA, FA, SSA]])
    expected = {mode: brute_mode(mode, q, k, allowed, scale) for mode in (FA, SSA, XA)}
    per_head = torch.stack([torch.stack([expected[int(modes[b, h // 2])][b, h] for h in range(8)])
                            for b in range(2)])
    masks = {FA: None if pad == "none" else allowed, SSA: brute_ssa(allowed, CFG.sink, CFG.local),
             XA: expected[XA]}
    out = hybrid_attention(q, k, v, modes, masks, scale, backend)
    assert torch.allclose(out.double(), brute_attention(q, k, v, per_head, scale), atol=1e-5, rtol=0)
