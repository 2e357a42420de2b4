"""Routers on disk (save_router / load_router) and ElasticConfig validation and JSON round trip."""

import copy
import json

import pytest
import torch

import elastic_attention as ea
from elastic_attention import ElasticConfig, attach, load_router, routing_stats, save_router
from helpers import padded_batch, tiny_model

CFG = ElasticConfig(sink=4, local=8, pool_tokens=6, xa_block=16, xa_stride=8)


def randomize_routers(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ea.routers(model).parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def run(model, ids, mask):
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    return logits, routing_stats(model)


def test_save_load_round_trip(tmp_path):
    base = tiny_model("llama", seed=1)
    fresh = copy.deepcopy(base)  # the same base model, never attached
    model = attach(base, CFG)
    randomize_routers(model, seed=5)
    ids, mask = padded_batch([40, 31], 40, seed=4)
    want_logits, want = run(model, ids, mask)

    path = save_router(model, tmp_path / "router")
    assert (path / "elastic_config.json").is_file() and (path / "router.safetensors").is_file()
    meta = json.loads((path / "elastic_config.json").read_text())
    assert meta["sink"] == 4 and meta["base_model"]["model_type"] == "llama"

    # A freshly attached router differs; the loaded one reproduces decisions, logits and outputs.
    other = attach(copy.deepcopy(fresh), CFG)
    _, other_stats = run(other, ids, mask)
    assert not torch.equal(other_stats.logits, want.logits)

    loaded = load_router(fresh, path)
    assert loaded is fresh
    assert loaded.elastic_runtime.config == CFG
    got_logits, got = run(loaded, ids, mask)
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got.decisions, want.decisions)
    assert torch.equal(got_logits, want_logits)
    # Loading again onto an already attached model replaces its routers.
    randomize_routers(loaded, seed=9)
    load_router(loaded, path)
    assert torch.equal(run(loaded, ids, mask)[1].logits, want.logits)


@pytest.mark.parametrize("other, field", [
    (dict(model_type="llama", num_hidden_layers=3), "num_layers"),
    (dict(model_type="llama", num_key_value_heads=1), "kv_heads"),
    (dict(model_type="llama", hidden_size=128, intermediate_size=128), "head_dim"),
    (dict(model_type="mistral"), "model_type"),
])
def test_load_refuses_router_of_another_model(tmp_path, other, field):
    model = attach(tiny_model("llama"), CFG)
    path = save_router(model, tmp_path / "r")
    target = tiny_model(**other)
    with pytest.raises(ValueError) as err:
        load_router(target, path)
    message = str(err.value)
    assert field in message
    assert not hasattr(target, "elastic_runtime")  # nothing half-attached


def test_load_refuses_non_router_directory(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="not a router directory"):
        load_router(model, tmp_path)
    (tmp_path / "elastic_config.json").write_text(CFG.to_json())
    with pytest.raises(ValueError, match="router.safetensors"):
        load_router(model, tmp_path)
    with pytest.raises(ValueError, match="not a router directory"):
        load_router(model, tmp_path / "missing")


def test_load_refuses_weights_that_do_not_fit(tmp_path):
    """Config says one router width, weights another: a ValueError, not a torch shape error."""
    model = attach(tiny_model("llama"), CFG)
    path = save_router(model, tmp_path / "r")
    meta = json.loads((path / "elastic_config.json").read_text())
    meta["router_hidden_mult"] = 2
    (path / "elastic_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit"):
        load_router(tiny_model("llama"), path)


def test_config_json_round_trip(tmp_path):
    cfg = ElasticConfig(retrieval_mode="xa", sparse_mode="ssa", sink=16, local=256, xa_block=32, xa_stride=8,
                        xa_threshold=0.75, pool_tokens=50, router_hidden_mult=2, tau_schedule="cosine",
                        tau_init=2.0, tau_min=0.5, tau_rate=0.3)
    assert ElasticConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert ElasticConfig.from_json(tmp_path / "c.json") == cfg
    assert ElasticConfig.from_json(str(tmp_path / "c.json")) == cfg
    assert ElasticConfig.from_json(ElasticConfig().to_json()) == ElasticConfig()
    assert cfg.name == "XA-SSA" and ElasticConfig().name == "FA-SSA"
    with pytest.raises(ValueError, match="nope.json"):
        ElasticConfig.from_json(tmp_path / "nope.json")


@pytest.mark.parametrize("kwargs, named", [
    (dict(sink=0), "sink=0"),
    (dict(sink=-3), "sink=-3"),
    (dict(local=0), "local=0"),
    (dict(local=-1), "local=-1"),
    (dict(sink=2.5), "sink=2.5"),
    (dict(xa_threshold=0), "xa_threshold=0"),
    (dict(xa_threshold=1.5), "xa_threshold=1.5"),
    (dict(retrieval_mode="ssa"), "'ssa'"),
    (dict(retrieval_mode="full"), "'full'"),
    (dict(sparse_mode="fa"), "'fa'"),
    (dict(sparse_mode="SSA"), "'SSA'"),
    (dict(xa_block=24, xa_stride=16), "xa_block=24"),
    (dict(tau_schedule="linear"), "'linear'"),
    (dict(pool_tokens=0), "pool_tokens=0"),
])
def test_invalid_config_values_raise(kwargs, named):
    with pytest.raises(ValueError) as err:
        ElasticConfig(**kwargs)
    assert named in str(err.value)
    with pytest.raises(ValueError) as err:  # the same check guards configs read from JSON
        ElasticConfig.from_dict(ElasticConfig().to_dict() | kwargs)
    assert named in str(err.value)


def test_unknown_config_field_raises():
    with pytest.raises(ValueError, match="sinks"):
        ElasticConfig.from_dict({"sinks": 4})
    with pytest.raises(ValueError, match="sinks"):
        ElasticConfig.from_json('{"sinks": 4}')
