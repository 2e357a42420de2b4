"""Routers with standardised inputs (router_norm="standardize"), calibration and the sparsity bias."""

import pytest
import torch

import elastic_attention as ea
from elastic_attention import AttentionRouter, ElasticConfig, attach, routing_stats
from elastic_attention.calibration import calibrate_routers, is_calibrated, pooled_keys
from elastic_attention.router import boundary_pool
from helpers import run_in_triton_interpreter, tiny_model

NORM = ElasticConfig(sink=4, local=8, pool_tokens=3, router_norm="standardize")


def test_standardize_is_the_paper_router_on_standardised_inputs_plus_a_head_bias():
    torch.manual_seed(0)
    plain = AttentionRouter(16, pool_tokens=4).eval()
    norm = AttentionRouter(16, pool_tokens=4, kv_heads=3, norm="standardize").eval()
    norm.load_state_dict(plain.state_dict(), strict=False)
    keys = torch.randn(5, 20, 3, 16) * 4 + 2
    with torch.no_grad():
        # Identity statistics and a zero bias: exactly the paper's router.
        assert torch.equal(norm.logits(keys), plain.logits(keys))
        norm.calibrate(boundary_pool(keys, None, 4))
        norm.head_bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        pooled = boundary_pool(keys, None, 4)
        z = (pooled - pooled.mean(0)) / pooled.std(0)
        want = plain.mlp(z) + torch.tensor([0.5, -1.0, 2.0])
        assert torch.allclose(norm.logits(keys), want, atol=1e-5)
    assert "input_mean" in norm.state_dict() and "head_bias" in dict(norm.named_parameters())
    assert "input_mean" not in plain.state_dict()


def test_calibration_input_errors():
    router = AttentionRouter(8, kv_heads=2, norm="standardize")
    with pytest.raises(ValueError, match=r"\[n >= 2, 2, 8\]"):
        router.calibrate(torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="only norm='standardize'"):
        AttentionRouter(8).calibrate(torch.randn(4, 2, 8))
    with pytest.raises(ValueError, match="kv_heads"):
        AttentionRouter(8, norm="standardize")
    with pytest.raises(ValueError, match="router_norm='layer'"):
        ElasticConfig(router_norm="layer")


def test_calibrate_routers_on_a_model_and_round_trip(tmp_path):
    model = attach(tiny_model("llama", seed=2), NORM)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 128, (n,), generator=g).tolist() for n in (9, 12, 15, 20)]
    assert not is_calibrated(model)
    pooled = calibrate_routers(model, prompts, progress=False)
    assert pooled.shape == (4, 2, 2, 16) and is_calibrated(model)
    router = model.model.layers[1].self_attn.elastic_router
    assert torch.allclose(router.input_mean, pooled[:, 1].mean(0), atol=1e-6)
    # After calibration, standardised inputs have mean 0 and std 1 over the calibration prompts.
    z = (pooled[:, 1] - router.input_mean) / router.input_std
    assert torch.allclose(z.mean(0), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones(2, 16), atol=1e-4)
    ea.save_router(model, tmp_path / "r")
    fresh = ea.load_router(tiny_model("llama", seed=2), tmp_path / "r")
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        model(ids)
        a = routing_stats(model).logits
        fresh(ids)
        b = routing_stats(fresh).logits
    assert torch.equal(a, b) and is_calibrated(fresh)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        calibrate_routers(model, prompts[:1], progress=False)
    with pytest.raises(ValueError, match="only 'standardize'"):
        calibrate_routers(attach(tiny_model("llama"), ElasticConfig(sink=4, local=8, router_norm="none")), prompts,
                          progress=False)


def test_pooled_keys_match_what_the_routers_read():
    model = attach(tiny_model("llama", seed=3), ElasticConfig(sink=4, local=8, pool_tokens=3))
    ids = torch.randint(1, 128, (1, 17), generator=torch.Generator().manual_seed(3))
    got = pooled_keys(model, [ids[0].tolist()])[0]  # [layers, heads, d]
    with torch.no_grad():
        model(ids)
    logits = routing_stats(model).logits[0]
    for layer in range(2):
        router = model.model.layers[layer].self_attn.elastic_router
        assert torch.allclose(router.mlp(got[layer][None])[0], logits[layer], atol=1e-6)


def test_sparsity_bias_shifts_every_decision_and_is_undone():
    # One layer: its router's logits do not depend on earlier layers' decisions.
    model = attach(tiny_model("llama", seed=4, num_hidden_layers=1, num_key_value_heads=4),
                   ElasticConfig(sink=4, local=8, pool_tokens=3))
    torch.manual_seed(4)
    for p in ea.routers(model).parameters():
        torch.nn.init.normal_(p, std=0.3)  # logits of both signs and of different sizes
    ids = torch.randint(1, 128, (3, 25), generator=torch.Generator().manual_seed(4))
    router = model.model.layers[0].self_attn.elastic_router
    with torch.no_grad():
        model(ids)
        router.router[4].bias -= routing_stats(model).logits.median()  # logits on both sides of 0
        model(ids)
        base = routing_stats(model)
        logits = base.logits
        for value in (-0.5, 0.0, 0.3, 1e3, -1e3):
            with ea.sparsity_bias(model, value):
                model(ids)
                stats = routing_stats(model)
            assert torch.equal(stats.decisions, logits + value > 0)
            assert torch.equal(stats.logits, logits)  # the logits themselves are not shifted
            assert torch.equal(stats.decisions, base.decisions) == (value == 0.0)  # each shift moves some heads
        model(ids)
    assert torch.equal(routing_stats(model).decisions, base.decisions)
    assert (logits > 0).any() and (logits < 0).any()  # the case moves decisions both ways
    for bad in (float("nan"), float("inf"), "0.5", True):
        with pytest.raises(ValueError, match="sparsity bias"):
            ea.sparsity_bias(model, bad)


_FUSED_NORM_SCRIPT = r"""
import torch
from elastic_attention import AttentionRouter
from elastic_attention.router import boundary_pool
from elastic_attention.attention.kernels.router import route_fused
torch.manual_seed(0)
for d, n, s in [(16, 4, 30), (32, 8, 12)]:
    router = AttentionRouter(d, pool_tokens=n, kv_heads=3, norm="standardize").eval()
    for p in router.parameters():
        torch.nn.init.normal_(p, std=0.5)
    keys = torch.randn(2, s, 3, d) * 3 + 1
    router.calibrate(boundary_pool(torch.randn(6, s, 3, d) * 3 + 1, None, n))
    with torch.no_grad():
        want = router.logits(keys)
        for shift in (0.0, 0.7, -0.4):
            logits, r = route_fused(router, keys, shift)
            assert torch.allclose(logits, want, atol=1e-4, rtol=1e-4), (logits, want)
            assert torch.equal(r, (want + shift > 0).float())
print("FUSED_NORM_OK")
"""


def test_cpu_fused_router_with_norm_and_shift_in_interpreter():
    run_in_triton_interpreter(_FUSED_NORM_SCRIPT, "FUSED_NORM_OK")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fused_router_with_norm_matches_eager():
    torch.manual_seed(1)
    router = AttentionRouter(64, kv_heads=8, norm="standardize").cuda().eval()
    for p in router.parameters():
        torch.nn.init.normal_(p, std=0.1)
    router.calibrate(torch.randn(10, 8, 64, device="cuda") * 2 + 1)
    keys = torch.randn(2, 500, 8, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        logits, r = router(keys, None, 0.3)
        want = router.logits(keys)
    assert torch.allclose(logits, want, atol=1e-4, rtol=1e-3)
    assert torch.equal(r, (want + 0.3 > 0).float())
