"""AttentionRouter: boundary pooling, deterministic inference, straight-through training, temperatures."""

import math

import pytest
import torch

import elastic_attention as ea
from elastic_attention import AttentionRouter, ElasticConfig, TemperatureSchedule, attach, routing_stats
from elastic_attention.router import boundary_pool, gumbel_noise
from helpers import padded_batch, run_in_triton_interpreter, tiny_model

CFG = ElasticConfig(sink=4, local=8)


def expected_pool(keys, valid, n):
    """Mean of the first n and last n real tokens, all of them when fewer than 2n (explicit indices)."""
    out = []
    for row in range(keys.shape[0]):
        real = [i for i in range(keys.shape[1]) if valid[row, i]]
        chosen = real if len(real) <= 2 * n else real[:n] + real[-n:]
        out.append(torch.stack([keys[row, i].double() for i in chosen]).mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("n", [1, 3, 6, 100])
def test_boundary_pool_first_and_last_real_tokens(n):
    g = torch.Generator().manual_seed(n)
    keys = torch.randn(4, 15, 2, 5, generator=g)
    valid = torch.ones(4, 15, dtype=torch.bool)
    valid[1, :4] = False  # left padding
    valid[2, 10:] = False  # right padding
    valid[3, :] = False
    valid[3, 7:12] = True  # five real tokens in the middle (shorter than 2n for n >= 3)
    got = boundary_pool(keys, valid, n)
    assert got.shape == (4, 2, 5) and got.dtype == torch.float32
    assert torch.allclose(got.double(), expected_pool(keys, valid, n), atol=1e-6)

    # Padding never enters: any values at padded positions give the same pool, bit for bit.
    noisy = keys.clone()
    noisy[~valid] = torch.randn(int((~valid).sum()), 2, 5, generator=g) * 1e3
    assert torch.equal(boundary_pool(noisy, valid, n), got)
    # And the middle is ignored once the prompt is longer than 2n.
    if 2 * n < 15:
        middle = keys.clone()
        middle[0, n:15 - n] += 7.0
        assert torch.equal(boundary_pool(middle, valid, n)[0], got[0])
    # No mask means every token is real.
    assert torch.allclose(boundary_pool(keys, None, n).double(),
                          expected_pool(keys, torch.ones(4, 15, dtype=torch.bool), n), atol=1e-6)


def test_router_ignores_padding_tokens_in_a_model():
    model = attach(tiny_model("llama", seed=1), ElasticConfig(sink=4, local=8, pool_tokens=5))
    ids, mask = padded_batch([30, 22], 30, side="left", seed=1)
    with torch.no_grad():
        model(ids, attention_mask=mask)
        first = routing_stats(model).logits
        other = ids.clone()
        other[mask == 0] = (other[mask == 0] + 17) % 128  # different tokens at the padded positions
        model(other, attention_mask=mask)
        second = routing_stats(model).logits
        # Padding on the other side does not change a prompt's router logits either.
        right = torch.zeros_like(ids)
        right[1, :22] = ids[1, 8:]
        rmask = torch.zeros_like(mask)
        rmask[1, :22] = 1
        right[0], rmask[0] = ids[0], mask[0]
        model(right, attention_mask=rmask)
        third = routing_stats(model).logits
    assert torch.allclose(first, second, atol=1e-6, rtol=0)
    assert torch.allclose(first, third, atol=1e-5, rtol=0)


def test_eval_routing_is_deterministic():
    model = attach(tiny_model("qwen2", seed=2), CFG)
    ids, mask = padded_batch([40, 33], 40, seed=2)
    with torch.no_grad():
        out1 = model(ids, attention_mask=mask).logits
        stats1 = routing_stats(model)
        out2 = model(ids, attention_mask=mask).logits
        stats2 = routing_stats(model)
    assert stats1.logits is not None
    assert torch.equal(stats1.logits, stats2.logits)
    assert torch.equal(stats1.decisions, stats2.decisions)
    assert torch.equal(stats1.decisions, stats1.logits > 0)  # inference: r = 1[z > 0], no noise
    assert torch.equal(out1, out2)


def test_training_gradients_reach_every_router_parameter_only():
    model = attach(tiny_model("llama", seed=3), CFG)
    model.train()
    ids, mask = padded_batch([40, 34], 40, side="left", seed=3)
    out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()

    router_params = {id(p) for p in ea.routers(model).parameters()}
    assert router_params
    for name, p in model.named_parameters():
        if id(p) in router_params:
            assert p.requires_grad, name
            assert p.grad is not None and p.grad.abs().sum() > 0, f"router parameter {name} got no gradient"
        else:
            assert not p.requires_grad, f"backbone parameter {name} is trainable"
            assert p.grad is None

    for state in model.elastic_runtime.layers:
        r = state.decisions
        assert r.requires_grad  # straight-through: differentiable ...
        assert set(r.detach().unique().tolist()) <= {0.0, 1.0}  # ... yet exactly 0 or 1 in value


def test_straight_through_values_and_gradient():
    router = AttentionRouter(8).train()
    router.tau = 1.3
    logits = (torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_(True)
    r = router.decide(logits, generator=torch.Generator().manual_seed(1))
    assert set(r.detach().unique().tolist()) == {0.0, 1.0}
    (r * torch.arange(4096.0)).sum().backward()
    noise = gumbel_noise(logits.shape, logits.device, torch.Generator().manual_seed(1))
    soft = torch.sigmoid((logits.detach() + noise) / router.tau)
    assert torch.equal(r.detach(), (soft > 0.5).float())  # hard value of the noisy soft sample
    assert torch.allclose(logits.grad, torch.arange(4096.0) * soft * (1 - soft) / router.tau, rtol=1e-4, atol=1e-6)
    # Noise: the same logits give different decisions with different seeds.
    r2 = router.decide(logits.detach(), generator=torch.Generator().manual_seed(2))
    assert not torch.equal(r.detach(), r2)

    router.eval()
    z = torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 3.0])
    assert router.decide(z).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_temperature_schedules():
    exp = TemperatureSchedule("exp", tau_init=1.5, tau_min=1.0, rate=0.6)
    assert exp(0.0) == pytest.approx(1.5)
    assert exp(0.5) == pytest.approx(1.5 * math.exp(-0.3))
    assert exp(1.0) == pytest.approx(1.0)  # 1.5 e^-0.6 = 0.82 is floored at tau_min
    assert TemperatureSchedule("exp", 2.0, 0.5, 0.6)(1.0) == pytest.approx(2.0 * math.exp(-0.6))

    cos = TemperatureSchedule("cosine", tau_init=1.5, tau_min=1.0, cosine_span=0.6)
    assert cos(0.0) == pytest.approx(1.5)
    assert cos(0.3) == pytest.approx(1.25)  # half-way through the span
    assert cos(0.5) == pytest.approx(1.0 + 0.25 * (1 + math.cos(math.pi * 0.5 / 0.6)))
    assert cos(0.6) == pytest.approx(1.0) and cos(1.0) == pytest.approx(1.0)

    const = TemperatureSchedule("constant", tau_init=1.5, tau_min=1.0)
    assert const(0.0) == const(0.5) == const(1.0) == 1.5

    cfg = ElasticConfig(tau_schedule="exp", tau_init=2.0, tau_min=0.1, tau_rate=1.0)
    assert TemperatureSchedule.from_config(cfg)(0.5) == pytest.approx(2.0 * math.exp(-0.5))
    with pytest.raises(ValueError, match="linear"):
        TemperatureSchedule("linear")
    with pytest.raises(ValueError, match="positive"):
        TemperatureSchedule("exp", tau_init=0.0)


@pytest.mark.parametrize("d", [16, 32, 128])
def test_router_parameter_count(d):
    n = sum(p.numel() for p in AttentionRouter(d).parameters())
    assert n == 16 * d * d + 11 * d + 1
    if d == 128:
        assert 0.25e6 < n < 0.28e6  # the paper's "about 0.27 M per layer"


def test_router_logits_shape_and_dtype():
    router = AttentionRouter(16, pool_tokens=4).eval()
    keys = torch.randn(3, 20, 2, 16, dtype=torch.bfloat16)
    z = router.logits(keys)
    assert z.shape == (3, 2) and z.dtype == torch.float32
    # Heads share the router: swapping the heads' keys swaps their logits.
    assert torch.allclose(router.logits(keys.flip(2)), z.flip(1))


def test_router_forward_is_logits_then_decide():
    router = AttentionRouter(16, pool_tokens=4).eval()
    keys = torch.randn(2, 30, 3, 16)
    with torch.no_grad():
        logits, r = router(keys)
    assert torch.equal(logits, router.logits(keys)) and torch.equal(r, router.decide(logits))
    with torch.no_grad():
        _, r2, modes = router(keys, None, 0.0, (2, 0))  # mode ids too: XA where sparse, FA where kept
    assert torch.equal(r2, r) and torch.equal(modes, torch.where(r > 0.5, 2, 0)) and modes.dtype == torch.int64


_FUSED_SCRIPT = r"""
import torch
from elastic_attention import AttentionRouter
from elastic_attention.attention.kernels.router import route_fused
torch.manual_seed(0)
signs = set()
for d, n, s, dtype in [(16, 4, 30, torch.float32), (32, 8, 12, torch.bfloat16), (16, 3, 7, torch.float32)]:
    router = AttentionRouter(d, pool_tokens=n).eval()
    for p in router.parameters():
        torch.nn.init.normal_(p, std=0.5)  # logits of both signs
    keys = torch.randn(2, s, 3, d).to(dtype)
    with torch.no_grad():
        logits, r = route_fused(router, keys)
        want = router.logits(keys)
    assert torch.allclose(logits, want, atol=1e-4, rtol=1e-4), (logits, want)
    assert torch.equal(r, (logits > 0).float())
    for sparse, kept in ((1, 0), (2, 0), (1, 2)):  # SSA / FA, XA / FA, SSA / XA: the ids the kernel writes
        logits2, r2, modes = route_fused(router, keys, 0.0, None, (sparse, kept))
        assert torch.equal(logits2, logits) and torch.equal(r2, r) and modes.dtype == torch.int64
        assert torch.equal(modes, torch.where(r > 0.5, sparse, kept))
    signs |= set((want > 0).flatten().tolist())
assert signs == {True, False}  # both decisions were exercised
print("FUSED_OK")
"""


def test_cpu_fused_router_kernel_in_interpreter():
    """The one-launch router under TRITON_INTERPRET=1 matches the eager router (needs triton, no GPU)."""
    run_in_triton_interpreter(_FUSED_SCRIPT, "FUSED_OK")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_fused_router_matches_eager(d):
    torch.manual_seed(d)
    router = AttentionRouter(d).cuda().eval()
    for p in router.parameters():
        torch.nn.init.normal_(p, std=0.1)
    for b, s in ((1, 50), (2, 200), (3, 5000)):  # shorter than, equal to and longer than 2 * pool_tokens
        keys = torch.randn(b, s, 8, d, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            logits, r = router(keys)
            want = router.logits(keys)
        assert torch.allclose(logits, want, atol=1e-4, rtol=1e-3)
        assert torch.equal(r, (logits > 0).float())
        with torch.no_grad():
            _, r2, modes = router(keys, None, 0.0, (1, 0))
        assert torch.equal(r2, r) and torch.equal(modes, (r > 0.5).long())
    with torch.enable_grad():  # training: the eager path, gradients flow
        router.train()
        logits, _ = router(torch.randn(1, 40, 3, d, device="cuda"))
        assert logits.requires_grad


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_router_sees_pre_rope_keys(model_type):
    """The router's input is k_proj's output (after k_norm where the model has one), before RoPE."""
    model = attach(tiny_model(model_type, seed=5), ElasticConfig(sink=4, local=8, pool_tokens=3))
    ids, mask = padded_batch([20, 14], 20, side="left", seed=5)
    attn = model.model.layers[1].self_attn
    seen = {}

    def capture(mod, args, kwargs):
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    handle = attn.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(ids, attention_mask=mask)
        handle.remove()
        keys = attn.k_proj(seen["h"]).view(2, 20, -1, attn.head_dim)
        if model_type == "qwen3":
            keys = attn.k_norm(keys)
        want = attn.elastic_router.logits(keys, mask.bool())
    assert torch.allclose(routing_stats(model).logits[:, 1], want, atol=1e-6, rtol=0)
