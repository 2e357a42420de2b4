"""routing_stats: decisions, MSR per sample, ESR against hand-counted pruned pairs."""

import pytest
import torch

import elastic_attention as ea
from elastic_attention import ElasticConfig, attach, force_mode, routing_stats
from helpers import padded_batch, tiny_model

CFG = ElasticConfig(sink=4, local=8)
S = 40


def ssa_pruned_fraction(s, sink, local):
    """1 - kept / (s(s+1)/2): query i (1-based) sees i causal keys and keeps min(i, sink + local)."""
    kept = sum(min(i, sink + local) for i in range(1, s + 1))
    return 1 - kept / (s * (s + 1) / 2)


def test_routing_stats_before_any_forward_raises():
    model = attach(tiny_model("llama"), CFG)
    with pytest.raises(ValueError, match="prefill"):
        routing_stats(model)
    with pytest.raises(ValueError, match="attach"):
        routing_stats(tiny_model("llama"))


def test_decisions_shape_and_msr_per_sample():
    model = attach(tiny_model("qwen3", seed=2, num_hidden_layers=3), CFG)
    ids, mask = padded_batch([S, S], S, seed=2)
    with torch.no_grad():
        model(ids, attention_mask=mask)
        logits = routing_stats(model).logits  # [b, L, H]
        # Layer 0: exactly one of the four (sample, head) logits goes negative (full); layers 1, 2: all sparse.
        routers = ea.routers(model)
        values = logits[:, 0].flatten().sort().values
        routers[0].router[-1].bias -= (values[0] + values[1]) / 2
        for layer in (1, 2):
            routers[layer].router[-1].bias -= logits[:, layer].min() - 1.0
        model(ids, attention_mask=mask)
    stats = routing_stats(model)
    assert stats.decisions.shape == (2, 3, 2) and stats.decisions.dtype == torch.bool
    assert torch.equal(stats.decisions, stats.logits > 0)
    assert stats.decisions.sum().item() == 11
    assert torch.allclose(stats.msr, stats.decisions.float().mean(dim=(1, 2)))
    assert sorted(stats.msr.tolist()) == pytest.approx([5 / 6, 1.0])  # per sample, not a batch mean
    # ESR: the last layer is all SSA for both; over all layers the full head counts as 0.
    rho = ssa_pruned_fraction(S, CFG.sink, CFG.local)
    assert torch.allclose(stats.esr, torch.full((2,), rho))
    want_all = stats.decisions.float().mean(dim=(1, 2)) * rho
    assert torch.allclose(stats.esr_all_layers, want_all)
    assert "MSR" in stats.summary(0)


@pytest.mark.parametrize("s", [1, 5, 12, 13, 40])
def test_esr_of_all_sparse_ssa_counts_pruned_pairs(s):
    model = attach(tiny_model("llama"), CFG)
    ids, mask = padded_batch([s], s, seed=s)
    with torch.no_grad(), force_mode(model, "sparse"):
        model(ids, attention_mask=mask)
    stats = routing_stats(model)
    rho = ssa_pruned_fraction(s, CFG.sink, CFG.local)
    if s > CFG.sink + CFG.local:
        assert rho > 0
    assert torch.allclose(stats.msr, torch.ones(1))
    assert stats.esr.item() == pytest.approx(rho, abs=1e-6)
    assert stats.esr_all_layers.item() == pytest.approx(rho, abs=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_esr_ignores_padding(side):
    """A padded prompt has the ESR of the same prompt without padding."""
    model = attach(tiny_model("llama"), CFG)
    ids, mask = padded_batch([30, S], S, side=side, seed=1)
    with torch.no_grad(), force_mode(model, "sparse"):
        model(ids, attention_mask=mask)
    stats = routing_stats(model)
    want = torch.tensor([ssa_pruned_fraction(30, CFG.sink, CFG.local), ssa_pruned_fraction(S, CFG.sink, CFG.local)])
    assert torch.allclose(stats.esr, want, atol=1e-6)
    assert torch.allclose(stats.esr_all_layers, want, atol=1e-6)


def test_esr_zero_under_full_and_static_mix():
    model = attach(tiny_model("mistral"), CFG)
    ids, mask = padded_batch([S, S - 7], S, side="left", seed=3)
    with torch.no_grad(), force_mode(model, "full"):
        model(ids, attention_mask=mask)
    stats = routing_stats(model)
    assert torch.equal(stats.esr, torch.zeros(2)) and torch.equal(stats.esr_all_layers, torch.zeros(2))
    assert torch.equal(stats.msr, torch.zeros(2)) and not stats.decisions.any()
    assert stats.logits is None

    static = torch.tensor([[True, True], [True, False]])
    with torch.no_grad(), force_mode(model, static):
        model(ids, attention_mask=mask)
    stats = routing_stats(model)
    rho = torch.tensor([ssa_pruned_fraction(n, CFG.sink, CFG.local) for n in (S, S - 7)])
    assert torch.allclose(stats.esr, rho / 2, atol=1e-6)  # last layer: one SSA head, one full head
    assert torch.allclose(stats.esr_all_layers, rho * 3 / 4, atol=1e-6)
    assert torch.allclose(stats.msr, torch.full((2,), 0.75))


def test_esr_of_xa_is_a_measured_fraction():
    cfg = ElasticConfig(sparse_mode="xa", xa_block=8, xa_stride=4, xa_threshold=0.5)
    model = attach(tiny_model("llama", seed=4), cfg)
    ids, mask = padded_batch([S, S], S, seed=4)
    with torch.no_grad(), force_mode(model, "sparse"):
        model(ids, attention_mask=mask)
    stats = routing_stats(model)
    assert ((stats.esr > 0) & (stats.esr < 1)).all()
    assert ((stats.esr_all_layers > 0) & (stats.esr_all_layers < 1)).all()
