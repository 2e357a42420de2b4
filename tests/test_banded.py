"""Banded SSA prefill (attention/banded.py) against the masked reference, and its use in attached models."""

import copy

import pytest
import torch

import elastic_attention.attention.dispatch as dispatch
from elastic_attention import ElasticConfig, attach, force_mode, routing_stats
from elastic_attention.attention import (FA, SSA, XA, hybrid_attention, masked_attention, ssa_banded_attention,
                                         ssa_mask)
from elastic_attention.attention.masks import causal_allowed, mode_mask
from elastic_attention.integrations.hf import ModeMasks
from helpers import brute_allowed, brute_attention, brute_ssa, padded_batch, tiny_model

# (s, sink, local, chunk): one token; s < local; s < sink + local; sink > local; several chunks with a
# ragged last one; chunks of one row; the default chunk over more than one chunk.
CASES = [(1, 1, 1, 4), (6, 3, 8, 4), (11, 4, 8, 4), (30, 8, 2, 7), (37, 3, 5, 4), (40, 1, 1, 1),
         (45, 4, 8, 16), (300, 4, 8, None), (300, 64, 100, None)]
GQA = [(2, 2), (4, 2), (6, 2)]
CFG = ElasticConfig(sink=4, local=8)


def qkv(hq, hk, s, d=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, h, s, d, generator=g) for h in (hq, hk, hk))
    return (q * 2).to(dtype), k.to(dtype), v.to(dtype)  # peaky logits: a wrong key set shows


def banded(q, k, v, sink, local, chunk):
    extra = {} if chunk is None else {"chunk": chunk}
    return ssa_banded_attention(q, k, v, sink, local, q.shape[-1] ** -0.5, **extra)


@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("case", CASES)
def test_matches_masked_reference_fp32(case, heads):
    s, sink, local, chunk = case
    q, k, v = qkv(*heads, s, seed=s + sink + local)
    want = masked_attention(q, k, v, ssa_mask(causal_allowed(2, s, s), sink, local), q.shape[-1] ** -0.5)
    torch.testing.assert_close(banded(q, k, v, sink, local, chunk), want, atol=1e-5, rtol=0)


def test_matches_brute_force():
    q, k, v = qkv(4, 2, 13, seed=1)
    mask = brute_ssa(brute_allowed(torch.ones(2, 13, dtype=torch.bool), 13), 3, 4)
    want = brute_attention(q, k, v, mask, q.shape[-1] ** -0.5)
    torch.testing.assert_close(banded(q, k, v, 3, 4, 5).double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", [(37, 3, 5, 4), (300, 64, 100, None)])
def test_bf16_close_to_fp32_reference(case):
    s, sink, local, chunk = case
    q, k, v = qkv(4, 2, s, dtype=torch.bfloat16, seed=2)
    want = masked_attention(q.float(), k.float(), v.float(), ssa_mask(causal_allowed(2, s, s), sink, local),
                            q.shape[-1] ** -0.5)
    got = banded(q, k, v, sink, local, chunk)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=0)


@pytest.mark.parametrize("bad, message", [
    (dict(q=torch.zeros(2, 5, 8)), "4-D"),
    (dict(v=torch.zeros(2, 2, 4, 8)), "same shape"),
    (dict(q=torch.zeros(2, 4, 6, 8)), "prefill"),
    (dict(q=torch.zeros(2, 3, 5, 8)), "multiple"),
    (dict(sink=0), "sink"), (dict(local=-1), "local"), (dict(chunk=2.0), "chunk")])
def test_bad_input_raises(bad, message):
    args = dict(q=torch.zeros(2, 4, 5, 8), k=torch.zeros(2, 2, 5, 8), v=torch.zeros(2, 2, 5, 8), sink=2, local=3,
                scale=1.0, chunk=4)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        ssa_banded_attention(**args)


def test_hybrid_attention_ssa_window_matches_masks():
    q, k, v = qkv(8, 4, 37, seed=3)
    scale = q.shape[-1] ** -0.5
    allowed = causal_allowed(2, 37, 37)
    modes = torch.tensor([[FA, SSA, XA, SSA], [SSA, FA, FA, SSA]])
    masks = {mode: mode_mask(mode, allowed, q, k, scale, CFG) for mode in (SSA, XA)}
    masks[FA] = None
    want = hybrid_attention(q, k, v, modes, masks, scale)
    no_ssa_mask = {FA: None, XA: masks[XA]}  # the banded path must not read masks[SSA]
    got = hybrid_attention(q, k, v, modes, no_ssa_mask, scale, ssa_window=(CFG.sink, CFG.local))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    all_ssa = torch.full((2, 4), SSA)
    torch.testing.assert_close(hybrid_attention(q, k, v, all_ssa, {}, scale, ssa_window=(CFG.sink, CFG.local)),
                               hybrid_attention(q, k, v, all_ssa, masks, scale), atol=1e-5, rtol=0)


@pytest.mark.parametrize("s", [1, 11, 12, 13, 40, 5800])  # 5800: more pairs than fp32 holds exactly
def test_unpadded_density_counts_the_masked_pairs_exactly(s):
    q = k = torch.zeros(1, 2, s, 1)
    modes = torch.tensor([[FA, SSA]])
    counted = ModeMasks(None, q, k, 1.0, CFG).density(modes)
    masked = ModeMasks(causal_allowed(1, s, s), q, k, 1.0, CFG).density(modes)  # an explicit mask: dense path
    assert counted.dtype == masked.dtype and torch.equal(counted, masked)


def test_density_known_from_the_modes_is_computed_when_read(monkeypatch):
    """The CUDA prefill leaves an unpadded FA / SSA layer's density to be computed on first read: nothing
    before, the masked count after, and a density set later replaces the pending one."""
    import elastic_attention.integrations.hf as hf
    calls = []
    real = hf.unpadded_density
    monkeypatch.setattr(hf, "unpadded_density", lambda *a: calls.append(a) or real(*a))
    state = hf.LayerState(0, None, None, None)
    modes = torch.tensor([[FA, SSA], [SSA, SSA]])
    state.density_when_read(modes, 40, CFG)
    assert calls == []
    q = k = torch.zeros(2, 2, 40, 1)
    masked = ModeMasks(causal_allowed(2, 40, 40), q, k, 1.0, CFG).density(modes)
    assert torch.equal(state.density, masked) and torch.equal(state.density, masked) and len(calls) == 1
    state.density_when_read(modes, 40, CFG)
    state.density = torch.ones(2, 2)
    assert torch.equal(state.density, torch.ones(2, 2)) and len(calls) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fused_prefill_density_equals_the_masked_count():
    model = attach(tiny_model(head_dim=64).cuda().to(torch.bfloat16), CFG)
    ids = torch.randint(1, 100, (2, 300), device="cuda")
    mask = torch.tensor([[True, False], [False, True]])
    with force_mode(model, mask), torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for state in model.elastic_runtime.layers:
        q = k = torch.zeros(2, 2, 300, 1)
        want = ModeMasks(causal_allowed(2, 300, 300), q, k, 1.0, CFG).density(state.modes.cpu())
        assert torch.equal(state.density.cpu(), want)


@pytest.fixture
def banded_calls(monkeypatch):
    """The number of ssa_banded_attention calls hybrid_attention has made."""
    calls = []

    def spy(*args):
        calls.append(args[0].shape)
        return ssa_banded_attention(*args)

    monkeypatch.setattr(dispatch, "ssa_banded_attention", spy)
    return calls


def per_head_mask(allowed, static_layer):
    """[b, hq, s, s] masks for an unattached tiny model (2 query heads per KV head) from one layer's decisions."""
    ssa = brute_ssa(allowed, CFG.sink, CFG.local)
    return torch.cat([ssa if sparse else allowed for sparse in static_layer.tolist() for _ in range(2)], dim=1)


def test_attached_model_unpadded_prefill_takes_the_banded_path(banded_calls):
    model = tiny_model("llama", seed=3)
    plain = copy.deepcopy(model)
    attach(model, CFG)
    ids, _ = padded_batch([40, 40], 40, seed=1)
    static = torch.tensor([[True, False], [True, False]])  # both layers: KV head 0 sparse, KV head 1 full
    causal = brute_allowed(torch.ones(2, 40, dtype=torch.bool), 40)
    with torch.no_grad(), force_mode(model, static):
        got = model(ids).logits
        stats = routing_stats(model)
        assert len(banded_calls) == 4  # per layer and batch row (mixed modes are gathered per row)
        masked = model(ids, attention_mask=causal).logits  # an explicit 4-D mask takes the masked path
        masked_stats = routing_stats(model)
        assert len(banded_calls) == 4
        want = plain(ids, attention_mask=per_head_mask(causal, static[0])).logits
    torch.testing.assert_close(got, masked, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for field in ("decisions", "msr", "esr", "esr_all_layers"):
        assert torch.equal(getattr(stats, field), getattr(masked_stats, field)), field
    expected_esr = 0.5 * (1 - brute_ssa(causal, CFG.sink, CFG.local).sum() / causal.sum())
    torch.testing.assert_close(stats.esr, expected_esr.expand(2), atol=1e-6, rtol=0)


def test_attached_model_padded_batch_takes_the_masked_path(banded_calls):
    model = tiny_model("llama", seed=3)
    plain = copy.deepcopy(model)
    attach(model, CFG)
    ids, mask = padded_batch([31, 37], 40, side="left", seed=2)
    static = torch.tensor([[True, False], [True, False]])
    with torch.no_grad(), force_mode(model, static):
        got = model(ids, attention_mask=mask).logits
        want = plain(ids, attention_mask=per_head_mask(brute_allowed(mask.bool(), 40), static[0])).logits
    assert not banded_calls
    real = mask.bool()
    assert (got - want)[real].abs().max() <= 1e-5
