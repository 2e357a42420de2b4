"""attach() on tiny random transformers models: forced modes against the unattached model, generate(),
static head masks, force_mode, unsupported models and empty prompts."""

import copy

import pytest
import torch

import elastic_attention as ea
from elastic_attention import ElasticConfig, attach, force_mode, routing_stats
from elastic_attention.attention import SSA, XA
from elastic_attention.gate import StaticGate, use_gate
from helpers import brute_allowed, brute_ssa, padded_batch, ssa_4d_mask, tiny_model

MODEL_TYPES = ["llama", "qwen2", "qwen3", "mistral"]
CFG = ElasticConfig(sink=4, local=8)
S = 40


def batch(side: str):
    if side == "none":
        return padded_batch([S, S], S, seed=1)
    return padded_batch([S - 9, S - 3], S, side=side, seed=2)


def max_diff(a, b, mask):
    return (a - b)[mask.bool()].abs().max().item()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_forced_full_and_sparse_match_unattached_model(model_type):
    model = tiny_model(model_type)
    plain = copy.deepcopy(model)
    attach(model, CFG)
    for side in ("none", "left", "right"):
        ids, mask = batch(side)
        with torch.no_grad():
            want_full = plain(ids, attention_mask=mask).logits
            want_ssa = plain(ids, attention_mask=ssa_4d_mask(mask, CFG.sink, CFG.local)).logits
            with force_mode(model, "full"):
                got_full = model(ids, attention_mask=mask).logits
            with force_mode(model, "sparse"):
                got_ssa = model(ids, attention_mask=mask).logits
        assert max_diff(got_full, want_full, mask) <= 1e-4, f"{model_type} full, {side} padding"
        assert max_diff(got_ssa, want_ssa, mask) <= 1e-4, f"{model_type} sparse, {side} padding"
        # Sparsity must matter at this length, or the comparison above proves nothing.
        assert max_diff(want_ssa, want_full, mask) > 1e-2


def test_static_head_mask_routes_exactly_those_heads():
    model = tiny_model("llama", seed=3)
    plain = copy.deepcopy(model)
    attach(model, CFG)
    ids, mask = batch("left")
    static = torch.tensor([[True, False], [True, False]])  # KV head 0 sparse, KV head 1 full, both layers
    # Unattached reference: per query head 4-D mask; query heads 0, 1 belong to KV head 0.
    allowed = brute_allowed(mask.bool(), S)
    per_head = torch.cat([brute_ssa(allowed, CFG.sink, CFG.local)] * 2 + [allowed] * 2, dim=1)
    with torch.no_grad(), force_mode(model, static):
        got = model(ids, attention_mask=mask).logits
        want = plain(ids, attention_mask=per_head).logits
    assert max_diff(got, want, mask) <= 1e-4
    stats = routing_stats(model)
    assert torch.equal(stats.decisions, static.expand(2, 2, 2))
    assert torch.allclose(stats.msr, torch.full((2,), static.float().mean().item()))
    assert (stats.esr > 0).all()

    other = torch.tensor([[False, True], [True, True]])
    with torch.no_grad(), force_mode(model, other):
        model(ids, attention_mask=mask)
    stats = routing_stats(model)
    assert torch.equal(stats.decisions, other.expand(2, 2, 2))
    assert torch.allclose(stats.msr, torch.full((2,), 0.75))


def test_generate_full_equals_unattached_and_sparse_equals_explicit_masks():
    model = tiny_model("llama", seed=4)
    plain = copy.deepcopy(model)
    attach(model, CFG)
    ids, mask = batch("left")
    kw = dict(max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        want = plain.generate(ids, attention_mask=mask, **kw)
        with force_mode(model, "full"):
            got = model.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(got, want)

    # Sparse decode with a KV cache must equal recomputing every step with an explicit SSA mask.
    ids = ids[:1, :30]
    with torch.no_grad():
        with force_mode(model, "sparse"):
            got = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        seq = ids
        for _ in range(6):
            m4 = ssa_4d_mask(torch.ones_like(seq), CFG.sink, CFG.local)
            nxt = plain(seq, attention_mask=m4).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(got, seq)


def _mixed_router_decisions(model, ids, mask):
    """Shift each layer's router bias so that its KV heads split between full and sparse for this batch."""
    with torch.no_grad():
        model(ids, attention_mask=mask)
        logits = routing_stats(model).logits  # [b, L, H]
        for layer, router in enumerate(ea.routers(model)):
            values = logits[:, layer].flatten().sort().values
            router.router[-1].bias -= (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def test_decode_reuses_prefill_decisions():
    model = tiny_model("llama", seed=5)
    attach(model, CFG)
    ids, mask = padded_batch([S, S - 6], S, side="left", seed=5)
    _mixed_router_decisions(model, ids, mask)
    with torch.no_grad():
        model(ids, attention_mask=mask)
    prefill = routing_stats(model)
    assert 0 < prefill.msr.mean() < 1  # a real mix of full and sparse heads

    layers = model.elastic_runtime.layers
    calls = []
    for state in layers:
        state.route = (lambda original, idx: lambda *a, **kw: (calls.append(idx), original(*a, **kw)))(
            state.route, state.layer_idx)
    seen = []
    hook = model.model.layers[-1].register_forward_hook(
        lambda *_: seen.append(torch.stack([s.decisions.clone() for s in layers], 1)))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    hook.remove()
    assert out.shape == (2, S + 5)
    assert calls == [0, 1]  # one routing per layer: the prefill; decode steps route nothing
    assert len(seen) == 5
    for step in seen:
        assert torch.equal(step > 0.5, prefill.decisions)
    assert torch.equal(routing_stats(model).decisions, prefill.decisions)


def test_length_one_prompt_generates():
    model = attach(tiny_model("qwen2", seed=6), CFG)
    ids = torch.tensor([[5], [7]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 4)
    assert routing_stats(model).decisions.shape == (2, 2, 2)


def test_empty_prompt_raises_value_error():
    model = attach(tiny_model("llama"), CFG)
    with pytest.raises(ValueError, match="empty|length 0|no tokens"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_all_padding_prompt_raises_value_error():
    model = attach(tiny_model("llama"), CFG)
    ids, mask = padded_batch([5, 0], 5)
    with pytest.raises(ValueError, match="padding"):
        model(ids, attention_mask=mask)


@pytest.mark.parametrize("model_type", ["gpt2", "phi"])
def test_unsupported_model_type_raises(model_type):
    model = tiny_model(model_type)
    with pytest.raises(ValueError) as err:
        attach(model, CFG)
    message = str(err.value)
    assert repr(model.config.model_type) in message or model.config.model_type in message
    for name in ea.SUPPORTED_MODEL_TYPES:
        assert name in message
    assert not hasattr(model, "elastic_runtime")


def test_force_mode_context_manager_restores_previous_mode():
    model = attach(tiny_model("mistral"), CFG)
    ids, mask = batch("none")
    rt = model.elastic_runtime

    def msr():
        with torch.no_grad():
            model(ids, attention_mask=mask)
        return routing_stats(model).msr.tolist()

    force_mode(model, "sparse")  # plain call: takes effect at once and stays
    assert msr() == [1.0, 1.0]
    with force_mode(model, "full"):
        assert msr() == [0.0, 0.0]
        static = torch.tensor([[True, False], [False, False]])
        with force_mode(model, static):
            assert msr() == [0.25, 0.25]
        assert rt.forced == "full"
    assert rt.forced == "sparse" and msr() == [1.0, 1.0]
    with force_mode(model, "router"):
        assert rt.forced is None
        model(ids, attention_mask=mask)
        assert routing_stats(model).logits is not None  # the routers decided
    assert rt.forced == "sparse"
    # An exception inside the block still restores the mode.
    with pytest.raises(KeyError):
        with force_mode(model, "full"):
            raise KeyError("boom")
    assert rt.forced == "sparse"


@pytest.mark.parametrize("bad", ["dense", "FULL", "", None, 3,
                                 torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 2)])
def test_bad_force_mode_values_raise(bad):
    model = attach(tiny_model("llama"), CFG)
    with pytest.raises(ValueError) as err:
        force_mode(model, bad)
    message = str(err.value)
    if isinstance(bad, str):
        assert repr(bad) in message
    assert model.elastic_runtime.forced is None  # nothing changed


def test_per_row_force_mode_replays_a_batch_routing():
    model = attach(tiny_model("llama", seed=7), CFG)
    ids, mask = batch("left")
    per_row = torch.tensor([[[True, False], [False, False]], [[False, True], [True, True]]])
    with torch.no_grad(), force_mode(model, per_row):
        model(ids, attention_mask=mask)
        assert torch.equal(routing_stats(model).decisions, per_row)
        with pytest.raises(ValueError, match="batch of 2.*batch of 1"):
            model(ids[:1], attention_mask=mask[:1])


def test_forced_routing_follows_the_mask_batch_and_config():
    """The forced decisions are built once and reused: a new mask, batch size or mode config rebuilds them."""
    model = attach(tiny_model("llama", seed=7), ElasticConfig(sink=4, local=8))
    rt = model.elastic_runtime
    ids, mask = batch("none")
    first = torch.tensor([[True, False], [False, True]])
    second = torch.tensor([[False, False], [True, True]])

    def run(rows):
        with torch.no_grad():
            model(ids[:rows], attention_mask=mask[:rows])
        return routing_stats(model).decisions, torch.stack([s.modes for s in rt.layers], 1)

    with force_mode(model, first):
        decisions, modes = run(2)
        assert torch.equal(decisions, first.expand(2, 2, 2)) and torch.equal(modes, first.long().expand(2, 2, 2))
        kept = rt.layers[1].modes
        run(2)
        assert rt.layers[1].modes is kept  # reused, not rebuilt
        assert torch.equal(run(1)[0], first[None])
        rt.config.retrieval_mode = "xa"
        assert torch.equal(run(1)[1], torch.where(first, SSA, XA)[None])
        rt.config.retrieval_mode = "fa"
    with force_mode(model, second):
        assert torch.equal(run(2)[0], second.expand(2, 2, 2))


def test_keys_are_hooked_only_while_the_routers_decide():
    model = attach(tiny_model("llama"), CFG)
    k_projs = [layer.self_attn.k_proj for layer in model.model.layers]
    hooked = lambda: [bool(k._forward_hooks) for k in k_projs]  # noqa: E731
    assert hooked() == [True, True]
    with force_mode(model, "full"):
        assert hooked() == [False, False]
        with force_mode(model, "router"):
            assert hooked() == [True, True]
        assert hooked() == [False, False]
    use_gate(model, StaticGate(2, 2))
    assert hooked() == [False, False]
    use_gate(model, None)
    assert hooked() == [True, True]
    ids, mask = batch("none")
    with torch.no_grad():
        model(ids, attention_mask=mask)
    assert routing_stats(model).logits is not None  # the routers decided on the captured keys


def test_force_mode_on_unattached_model_raises():
    with pytest.raises(ValueError, match="attach"):
        force_mode(tiny_model("llama"), "full")


def test_detach_restores_model():
    model = tiny_model("qwen3")
    plain = copy.deepcopy(model)
    ids, mask = batch("left")
    attach(model, CFG)
    with pytest.raises(ValueError, match="already"):
        attach(model, CFG)
    ea.detach(model)
    assert not any("elastic" in name for name, _ in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())
    for layer in model.model.layers:  # no hook of ours is left behind
        attn = layer.self_attn
        assert not attn._forward_pre_hooks and not attn.k_proj._forward_hooks and not attn.k_norm._forward_hooks
    with torch.no_grad():
        assert max_diff(model(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits, mask) == 0
