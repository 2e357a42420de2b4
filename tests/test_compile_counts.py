"""GPU only: prompts of many lengths compile FlexAttention at most once per (length bucket, mask rule).

The CUDA prefill runs a torch.compile'd FlexAttention with static shapes; `flex.bucket_length` pads the
prompt so that every length falls in one of few buckets. 100 prompts of random lengths between 300 and
5000 tokens, with routing that varies from prompt to prompt, go through an attached bf16 model whose
heads take the fast path (head_dim 64), with the fused kernel's threshold set to 0 so that every sparse
layer runs FlexAttention (left alone, layers this small run the fused Triton kernel, which compiles no
dynamo graph: checked by the second test). The compiled variants must stay within the bound of
docs/benchmarks.md ("Compilations"), and dynamo's recompile limit must never be reached (reaching it
raises here, through fail_on_recompile_limit_hit, and is logged as a warning, which is counted too).
A length that is exactly a bucket runs unpadded; its q / k / v are made contiguous like the padded ones,
so it shares its bucket's variant (four such lengths are included). The first run compiles up to about
30 small kernels (a few minutes on a cold inductor cache).
"""

import logging
import random

import pytest
import torch

from elastic_attention import ElasticConfig, attach, force_mode
from helpers import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the compiled FlexAttention prefill)")

PROMPTS = 100
SHORTEST, LONGEST = 300, 5000
EXACT = [512, 1024, 2048, 4096]  # lengths equal to their bucket
CFG = ElasticConfig(sink=64, local=256)


class LimitWarnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        text = record.getMessage()
        if "recompile_limit" in text or "cache_size_limit" in text:
            self.messages.append(text)


def flex_entries():
    """Compiled variants of flex_attention held by dynamo (None where this private helper is missing)."""
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return len(_debug_get_cache_entry_list(flex_attention.__code__))


def routing(rng, layers, kv_heads):
    """A [layers, kv_heads] mask, each layer all full, all sparse or mixed, at random."""
    rows = []
    for _ in range(layers):
        kind = rng.choice(["full", "sparse", "mixed"])
        if kind == "mixed":  # a random non-empty proper subset of the heads goes sparse
            sparse = set(rng.sample(range(kv_heads), rng.randrange(1, kv_heads)))
            row = [h in sparse for h in range(kv_heads)]
        else:
            row = [kind == "sparse"] * kv_heads
        rows.append(row)
    return torch.tensor(rows)


def rule_of(layer_row):
    """Which compiled mask rule a layer's FlexAttention call uses, or None when it runs no FlexAttention:
    MSR 0 runs SDPA; all-sparse layers run the SSA-only rule; mixed layers the rule of both modes."""
    if not bool(layer_row.any()):
        return None
    return "ssa only" if bool(layer_row.all()) else "fa and ssa"


@torch.no_grad()
def test_prompt_lengths_compile_within_the_bucket_bound(monkeypatch):
    import torch._dynamo
    import elastic_attention.attention.kernels as kernels
    from torch._dynamo.utils import counters
    from elastic_attention.attention.kernels import supported
    from elastic_attention.attention.kernels.flex import bucket_length, compiled_flex

    model = tiny_model("llama", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, vocab_size=256, max_position_embeddings=8192)
    model = attach(model.to("cuda", torch.bfloat16), CFG)
    layers, kv_heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    probe = torch.zeros(1, 4, 8, 64, device="cuda", dtype=torch.bfloat16)
    assert supported(probe, probe[:, :2]), "the test model must take the fast prefill path"

    rng = random.Random(0)
    others = [n for n in range(SHORTEST, LONGEST + 1) if n not in EXACT]
    lengths = rng.sample(others, PROMPTS - len(EXACT)) + EXACT  # 100 different lengths
    rng.shuffle(lengths)
    # Layers this small run the fused Triton kernel (no dynamo) when the decisions hold FA / SSA only, as a
    # forced mask's do: the FlexAttention path under test is what they take above FUSED_MAX_WORK.
    monkeypatch.setattr(kernels, "FUSED_MAX_WORK", 0)
    torch._dynamo.reset()  # count from a clean state, whatever other tests compiled
    compiled_flex()  # applies the library's recompile limit
    limit_name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    fail_name = ("fail_on_recompile_limit_hit" if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit")
                 else "fail_on_cache_limit_hit")
    warnings = LimitWarnings()
    loggers = [logging.getLogger(name) for name in ("torch._dynamo", "torch._dynamo.convert_frame")]
    for logger in loggers:
        logger.addHandler(warnings)
    graphs_before = counters["stats"]["unique_graphs"]
    expected = set()  # (bucket, rule) that ran FlexAttention
    try:
        with torch._dynamo.config.patch(**{fail_name: True}):
            for length in lengths:
                mask = routing(rng, layers, kv_heads)
                ids = torch.randint(1, 256, (1, length), device="cuda")
                with force_mode(model, mask):
                    model(input_ids=ids, use_cache=False, logits_to_keep=1)
                bucket = bucket_length(length)
                expected |= {(bucket, rule_of(row)) for row in mask if rule_of(row)}
    finally:
        for logger in loggers:
            logger.removeHandler(warnings)

    compiles = counters["stats"]["unique_graphs"] - graphs_before
    buckets = {bucket_length(n) for n in lengths}
    # 300..5000 tokens fall in at most 15 buckets (384 .. 1024 by 128, then 4 a doubling up to 5120)
    assert 10 <= len(buckets) <= 15
    bound = len(expected)  # one variant per (bucket, rule): exact bucket lengths share it (contiguous inputs)
    assert bound <= 2 * len(buckets)
    assert 0 < compiles <= bound, f"{compiles} dynamo graphs for {bound} (bucket, rule) variants"
    entries = flex_entries()
    if entries is not None:
        assert entries <= bound
    assert not warnings.messages, warnings.messages
    assert compiles <= getattr(torch._dynamo.config, limit_name)


@torch.no_grad()
def test_fused_prefill_compiles_no_dynamo_graph():
    """The default dispatch of small FA / SSA layers (the fused Triton kernel) adds no dynamo graph, whatever
    the length and routing."""
    from torch._dynamo.utils import counters

    model = tiny_model("llama", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, vocab_size=256, max_position_embeddings=8192)
    model = attach(model.to("cuda", torch.bfloat16), CFG)
    rng = random.Random(1)
    before = counters["stats"]["unique_graphs"]
    for length in rng.sample(range(SHORTEST, LONGEST + 1), 20):
        with force_mode(model, routing(rng, model.config.num_hidden_layers, model.config.num_key_value_heads)):
            model(input_ids=torch.randint(1, 256, (1, length), device="cuda"), use_cache=False, logits_to_keep=1)
    assert counters["stats"]["unique_graphs"] == before
