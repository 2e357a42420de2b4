"""ElasticCache: decode from the compact cache equals recomputing the routed prefill at every step with the
prompt's decisions held fixed; its memory follows the formula; bad uses raise errors that name the fix."""

import inspect
import random

import pytest
import torch

from elastic_attention import ElasticCache, ElasticConfig, attach, detach, force_mode, routing_stats
from elastic_attention import cache as cache_module
from elastic_attention.attention.masks import FA, XA
from elastic_attention.generation import greedy_generate
from helpers import padded_batch, run_in_triton_interpreter, tiny_model

CFG = ElasticConfig(sink=4, local=16)
STEPS = 24
TOL = 1e-4
# [layers=2, kv_heads=2], True = SSA: every layer mixes full and sparse heads
MIXED = torch.tensor([[True, False], [False, True]])
# per row of a batch of 2: row 1 differs from row 0 in every layer
PER_ROW = torch.tensor([[[True, False], [False, True]], [[False, True], [True, True]]])


def model_with_routers(cfg=CFG, seed=0, **overrides):
    model = tiny_model("llama", seed=seed, max_position_embeddings=128, **overrides)
    model.generation_config.eos_token_id = None  # generate the full length
    return attach(model, cfg)


def cache_kw(model, cache):
    # transformers 5.24 renamed `past_key_values` to `cache`
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def positions(mask):
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def decode_with_cache(model, ids, mask, decisions, steps=STEPS, chunk=None):
    """Greedy tokens and last-position logits per step, decoding from an ElasticCache.
    chunk: feed that many reference tokens at once right after the prompt (a continuation call)."""
    cache = ElasticCache(model)
    with force_mode(model, decisions):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True,
                    **cache_kw(model, cache))
    logits, tokens = [out.logits[:, -1]], [out.logits[:, -1].argmax(-1)]
    if chunk is not None:
        extra = chunk  # [b, n] tokens fed in one call
        mask = torch.cat([mask, torch.ones_like(extra)], dim=1)
        out = model(input_ids=extra, attention_mask=mask, position_ids=positions(mask)[:, -extra.shape[1]:],
                    use_cache=True, **cache_kw(model, cache))
        logits, tokens = [out.logits[:, -1]], [out.logits[:, -1].argmax(-1)]
    for _ in range(steps - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=positions(mask)[:, -1:],
                    use_cache=True, **cache_kw(model, cache))
        logits.append(out.logits[:, -1])
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, 1), torch.stack(logits, 1), cache


@torch.no_grad()
def decode_by_recompute(model, ids, mask, decisions, steps=STEPS, chunk=None):
    """The same, recomputing the routed prefill over the whole sequence at every step (no cache)."""
    if chunk is not None:
        ids, mask = torch.cat([ids, chunk], 1), torch.cat([mask, torch.ones_like(chunk)], 1)
    logits, tokens = [], []
    with force_mode(model, decisions):
        for _ in range(steps):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False)
            last = out.logits[:, -1]
            logits.append(last)
            tokens.append(last.argmax(-1))
            ids = torch.cat([ids, tokens[-1][:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(tokens, 1), torch.stack(logits, 1)


def assert_same_decode(got, want):
    (got_tokens, got_logits), (want_tokens, want_logits) = got[:2], want[:2]
    assert torch.equal(got_tokens, want_tokens)
    diff = (got_logits - want_logits).abs().max().item()
    assert diff <= TOL, f"logits differ by {diff}"


def expected_bytes(model, rows_tokens, decisions):
    """Per layer, the sum over (row, KV head) of kept tokens x head_dim x 2 (K, V) x 4 bytes (fp32):
    every token for FA, min(tokens, sink + local) for SSA. decisions [b, layers, kv_heads]."""
    d = model.config.hidden_size // model.config.num_attention_heads
    w = CFG.sink + CFG.local
    total = 0
    for row, tokens in enumerate(rows_tokens):
        for sparse in decisions[row].flatten().tolist():
            total += (min(tokens, w) if sparse else tokens) * d * 2 * 4
    return total


@pytest.mark.parametrize("prompt", [40, 10])  # past sink + local from the start, and crossing it while decoding
def test_batch_one_equals_recompute(prompt):
    model = model_with_routers(seed=1)
    ids, mask = padded_batch([prompt], prompt, seed=1)
    got = decode_with_cache(model, ids, mask, MIXED)
    assert_same_decode(got, decode_by_recompute(model, ids, mask, MIXED))
    assert got[2].get_seq_length() == prompt + STEPS - 1


def test_full_heads_grow_their_buffer_in_place(monkeypatch):
    # FA pairs append into free room (no whole-cache copy per step); with room for 3 tokens the buffers
    # are regrown several times during the decode, padded rows included, and the result does not change.
    monkeypatch.setattr(cache_module, "FA_ROOM", 3)
    model = model_with_routers(seed=4)
    ids, mask = padded_batch([40, 27], 40, side="left", seed=4)
    got = decode_with_cache(model, ids, mask, PER_ROW)
    assert_same_decode(got, decode_by_recompute(model, ids, mask, PER_ROW))
    kv = got[2].layers[0].kv
    assert kv.fa_len == 40 + STEPS - 1 and kv.fa_keys.shape[1] <= kv.fa_len + 3


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "mistral"])
def test_other_architectures_equal_recompute(model_type):
    model = tiny_model(model_type, seed=15, max_position_embeddings=128)
    attach(model, CFG)
    ids, mask = padded_batch([40, 31], 40, side="left", seed=15)
    got = decode_with_cache(model, ids, mask, PER_ROW, steps=8)
    assert_same_decode(got, decode_by_recompute(model, ids, mask, PER_ROW, steps=8))


def test_batch_two_with_different_decisions_per_row_equals_recompute():
    model = model_with_routers(seed=2)
    ids, mask = padded_batch([40, 40], 40, seed=2)
    got = decode_with_cache(model, ids, mask, PER_ROW)
    assert torch.equal(routing_stats(model).decisions, PER_ROW)
    assert_same_decode(got, decode_by_recompute(model, ids, mask, PER_ROW))


def test_left_padded_batch_equals_recompute_and_each_row_alone():
    """The SSA sink is the first real tokens of each row: a padded row decodes as it does alone."""
    model = model_with_routers(seed=3)
    ids, mask = padded_batch([30, 12], 30, side="left", seed=3)
    got = decode_with_cache(model, ids, mask, PER_ROW)
    assert_same_decode(got, decode_by_recompute(model, ids, mask, PER_ROW))
    for row, n in enumerate([30, 12]):
        alone = decode_with_cache(model, ids[row:row + 1, -n:], mask[row:row + 1, -n:], PER_ROW[row])
        assert torch.equal(alone[0][0], got[0][row])
        assert (alone[1][0] - got[1][row]).abs().max().item() <= TOL


def test_sparse_heads_matter_at_this_length():
    """Without this the comparisons above could pass with SSA heads that attend to everything."""
    model = model_with_routers(seed=1)
    ids, mask = padded_batch([40], 40, seed=1)
    sparse = decode_by_recompute(model, ids, mask, MIXED, steps=2)[1]
    full = decode_by_recompute(model, ids, mask, torch.zeros_like(MIXED), steps=2)[1]
    assert (sparse - full).abs().max().item() > 1e-2


def test_continuation_chunk_equals_recompute():
    """A call of several tokens after the prompt (chunked input): causal inside the chunk, SSA window per token."""
    model = model_with_routers(seed=4)
    ids, mask = padded_batch([40, 33], 40, side="left", seed=4)
    chunk = torch.randint(1, 128, (2, 23), generator=torch.Generator().manual_seed(4))  # wraps the window
    got = decode_with_cache(model, ids, mask, PER_ROW, steps=6, chunk=chunk)
    assert_same_decode(got, decode_by_recompute(model, ids, mask, PER_ROW, steps=6, chunk=chunk))


def test_model_generate_with_elastic_cache():
    model = model_with_routers(seed=5)
    ids, mask = padded_batch([36, 25], 36, side="left", seed=5)
    cache = ElasticCache(model)
    with torch.no_grad(), force_mode(model, PER_ROW):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False,
                             **cache_kw(model, cache))
    want, _ = decode_by_recompute(model, ids, mask, PER_ROW)
    assert torch.equal(out[:, ids.shape[1]:], want)
    assert cache.get_seq_length() == ids.shape[1] + STEPS - 1
    assert cache.kv_bytes() < cache.full_kv_bytes()


def test_xa_heads_keep_everything_and_decode_attends_to_all_of_it():
    """XA is a prefill-only sparsity: with an ElasticCache, decode treats XA heads as full heads."""
    cfg = ElasticConfig(retrieval_mode="xa", sparse_mode="ssa", sink=4, local=16, xa_block=8, xa_stride=4,
                        xa_threshold=0.5)
    model = model_with_routers(cfg, seed=6)
    ids, mask = padded_batch([40], 40, seed=6)
    got = decode_with_cache(model, ids, mask, MIXED)
    cache = got[2]

    # Reference: a plain cache whose decode steps run the prompt's XA heads as FA (the prefill stays XA).
    with torch.no_grad(), force_mode(model, MIXED):
        out = model(input_ids=ids, use_cache=True)
    assert any(bool((s.modes == XA).any()) for s in model.elastic_runtime.layers)
    for state in model.elastic_runtime.layers:
        state.modes = torch.where(state.modes == XA, FA, state.modes)
    plain = out.past_key_values if "past_key_values" in out else out["cache"]
    logits, tokens = [out.logits[:, -1]], [out.logits[:, -1].argmax(-1)]
    with torch.no_grad():
        for _ in range(STEPS - 1):
            out = model(input_ids=tokens[-1][:, None], use_cache=True, **cache_kw(model, plain))
            logits.append(out.logits[:, -1])
            tokens.append(out.logits[:, -1].argmax(-1))
    assert_same_decode(got, (torch.stack(tokens, 1), torch.stack(logits, 1)))
    total = 40 + STEPS - 1
    assert cache.kv_bytes() == expected_bytes(model, [total], MIXED[None])


@pytest.mark.parametrize("prompt", [40, 10])
def test_kv_bytes_follow_the_formula(prompt):
    model = model_with_routers(seed=7)
    ids, mask = padded_batch([prompt, prompt], prompt, seed=7)
    cache = ElasticCache(model)
    with torch.no_grad(), force_mode(model, PER_ROW):
        model(input_ids=ids, use_cache=True, **cache_kw(model, cache))
        assert cache.kv_bytes() == expected_bytes(model, [prompt, prompt], PER_ROW)
        for _ in range(STEPS):
            model(input_ids=ids[:, :1], use_cache=True, **cache_kw(model, cache))
        tokens = prompt + STEPS
    assert cache.kv_bytes() == expected_bytes(model, [tokens, tokens], PER_ROW)
    full = expected_bytes(model, [tokens, tokens], torch.zeros_like(PER_ROW))
    assert cache.full_kv_bytes() == full
    assert cache.kv_bytes() < full


@torch.no_grad()
def test_layouts_are_built_for_every_layer_in_one_read_of_the_decisions(monkeypatch):
    """The prefill holds each layer's prompt; the first use builds every layer's layout, reading all
    layers' decisions in one host sync (a sync per layer made TTFT 0.6x of the plain model on a GPU)."""
    model = model_with_routers()
    ids = torch.randint(1, 100, (2, 40), generator=torch.Generator().manual_seed(5))
    cache = ElasticCache(model)
    with force_mode(model, PER_ROW):
        model(input_ids=ids, use_cache=True, **cache_kw(model, cache))
    assert all(layer.prompt is not None and layer._kv is None for layer in cache.layers)
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or real_tolist(t))
    n_ssa = cache.layers[1].kv.n_ssa  # the second layer asks first: both are built
    assert reads == [torch.Size([2])]  # one read: the SSA pair count of each layer
    assert all(layer.prompt is None and layer._kv is not None for layer in cache.layers)
    assert [layer.kv.n_ssa for layer in cache.layers] == [int(PER_ROW[:, i].sum()) for i in range(2)]
    assert n_ssa == int(PER_ROW[:, 1].sum())
    full = cache.full_kv_bytes()
    assert 0 < cache.kv_bytes() < full


@torch.no_grad()
def test_held_prompts_past_the_limit_are_compacted_during_the_prefill(monkeypatch):
    model = model_with_routers()
    ids = torch.randint(1, 100, (1, 40), generator=torch.Generator().manual_seed(6))
    layer_bytes = 2 * (2 * 40 * 16) * 4  # keys and values of one layer: [1, 2 heads, 40, d 16] fp32
    monkeypatch.setattr(cache_module, "HOLD_BYTES", layer_bytes)  # the second layer's prompt passes it
    built = []
    real_build = cache_module.HeldPrompts.build
    monkeypatch.setattr(cache_module.HeldPrompts, "build",
                        lambda group: built.append(sum(layer.prompt is not None for layer in group.layers))
                        or real_build(group))
    cache = ElasticCache(model)
    with force_mode(model, MIXED):
        model(input_ids=ids, use_cache=True, **cache_kw(model, cache))
    assert built == [2]  # the first layer was held, the second one's prompt built both
    assert all(layer.prompt is None and layer._kv is not None for layer in cache.layers)


def test_all_full_heads_hold_what_a_plain_cache_holds():
    model = model_with_routers(seed=8)
    ids = torch.randint(1, 128, (1, 30), generator=torch.Generator().manual_seed(8))
    with force_mode(model, "full"):
        elastic = greedy_generate(model, ids, 8)
        plain = greedy_generate(model, ids, 8, elastic_cache=False)
    assert elastic.tokens == plain.tokens
    assert elastic.kv_bytes == elastic.kv_bytes_full == plain.kv_bytes == plain.kv_bytes_full


def test_greedy_generate_uses_the_elastic_cache():
    model = model_with_routers(seed=9)
    ids = torch.randint(1, 128, (1, 40), generator=torch.Generator().manual_seed(9))
    with force_mode(model, MIXED):
        elastic = greedy_generate(model, ids, STEPS)
        plain = greedy_generate(model, ids, STEPS, elastic_cache=False)  # full KV under SSA masks
    assert elastic.tokens == plain.tokens
    tokens = 40 + STEPS - 1
    assert elastic.kv_bytes == expected_bytes(model, [tokens], MIXED[None])
    assert elastic.kv_bytes_full == plain.kv_bytes == expected_bytes(model, [tokens], torch.zeros(1, 2, 2))
    detach(model)
    unattached = greedy_generate(model, ids, 4)
    assert unattached.kv_bytes == unattached.kv_bytes_full > 0


# ---------------------------------------------------------------- bad input

def prefilled(batch=2, prompt=20):
    model = model_with_routers(seed=10)
    ids, _ = padded_batch([prompt] * batch, prompt, seed=10)
    cache = ElasticCache(model)
    with torch.no_grad(), force_mode(model, MIXED):
        model(input_ids=ids, use_cache=True, **cache_kw(model, cache))
    return model, cache, ids


def test_reuse_for_another_batch_size_names_the_fix():
    model, cache, ids = prefilled(batch=2)
    with pytest.raises(ValueError, match="finished prompt of batch 2.*create a new ElasticCache"):
        with torch.no_grad():
            model(input_ids=ids[:1], use_cache=True, **cache_kw(model, cache))


def test_new_prompt_on_a_used_cache_names_the_fix():
    model, cache, ids = prefilled(batch=2)
    pos = torch.arange(ids.shape[1])[None].expand(2, -1)  # starts again at position 0: a new prompt
    with pytest.raises(ValueError, match="finished prompt of batch 2.*create a new ElasticCache"):
        with torch.no_grad():
            model(input_ids=ids, position_ids=pos, use_cache=True, **cache_kw(model, cache))


def test_second_generate_call_on_a_used_cache_names_the_fix():
    model = model_with_routers(seed=13)
    ids, mask = padded_batch([30, 20], 30, side="left", seed=13)
    cache = ElasticCache(model)
    kw = dict(max_new_tokens=3, do_sample=False, **cache_kw(model, cache))
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, **kw)
        longer, longer_mask = padded_batch([40, 37], 40, side="left", seed=14)  # would pass for a continuation
        with pytest.raises(ValueError, match="finished prompt of batch 2.*new ElasticCache for every generate call"):
            model.generate(longer, attention_mask=longer_mask, **kw)


def test_prompt_longer_than_the_model_maximum():
    model = model_with_routers(seed=11)
    ids = torch.randint(1, 128, (1, 129))
    with pytest.raises(ValueError, match="max_position_embeddings = 128"):
        with torch.no_grad():
            model(input_ids=ids, use_cache=True, **cache_kw(model, ElasticCache(model)))
    with pytest.raises(ValueError, match="max_position_embeddings = 128"):
        greedy_generate(model, ids, 4)
    with pytest.raises(ValueError, match="max_position_embeddings = 128.*fewer tokens"):
        greedy_generate(model, ids[:, :126], 8)  # decoding runs past the maximum


def test_cache_of_a_detached_model_names_the_fix():
    model, cache, ids = prefilled(batch=1)
    detach(model)
    attach(model, CFG)
    with pytest.raises(ValueError, match="create a new ElasticCache"):
        with torch.no_grad():
            model(input_ids=ids[:, :1], use_cache=True, **cache_kw(model, cache))


def test_model_sliding_window_is_refused_once_reached():
    model = attach(tiny_model("mistral", seed=16, sliding_window=48), CFG)
    ids = torch.randint(1, 128, (1, 40), generator=torch.Generator().manual_seed(16))
    with pytest.raises(ValueError, match="sliding window \\(48\\).*plain cache"):
        greedy_generate(model, ids, 12)
    assert len(greedy_generate(model, ids, 12, elastic_cache=False).tokens) == 12


def test_cache_needs_routers():
    with pytest.raises(ValueError, match="attach"):
        ElasticCache(tiny_model("llama"))


def test_training_mode_is_refused():
    model = model_with_routers(seed=12)
    model.train()
    with pytest.raises(ValueError, match="model.eval"):
        model(input_ids=torch.randint(1, 128, (1, 8)), use_cache=True, **cache_kw(model, ElasticCache(model)))


# The decode kernel (attention/kernels/decode.py) against CompactKV's SDPA path, step by step: outputs and
# the buffers it writes the new token into. Cases: the SSA ring wrapping, SSA buffers still growing, FA
# keys over several chunks, rows with different decisions, one layout empty, the FA buffer out of room.
_DECODE_SCRIPT = r"""
import copy, torch
from elastic_attention import cache as C
from elastic_attention.attention.kernels import decode
from elastic_attention.attention.masks import FA, SSA

decode.MIN_CHUNK = decode.BLOCK_N  # small chunks: several per pair at these lengths
decode.MAX_CHUNKS = 6  # and the cap on chunks a pair reached
decode.MERGE = 64  # the merge walks a pair's chunks over several loads (1 or 2 chunks a load here)
decode.MERGE_SLICES = 4  # and head_dim in slices where it is 64 wide
C.FA_ROOM = 3  # FA buffers run out of room within the steps
torch.manual_seed(0)
cases = [  # b, hk, groups, prompt, d, sink, local, steps, modes
    (2, 3, 3, 40, 16, 4, 8, 6, [[SSA, FA, SSA], [FA, SSA, SSA]]),
    (1, 2, 4, 5, 32, 4, 8, 12, [[SSA, FA]]),
    (2, 2, 2, 300, 16, 4, 16, 4, [[FA, SSA], [SSA, FA]]),
    (1, 2, 2, 30, 16, 4, 8, 3, [[SSA, SSA]]),
    (1, 2, 2, 30, 16, 4, 8, 3, [[FA, FA]]),
    (2, 2, 1, 90, 16, 4, 8, 3, [[FA, SSA], [SSA, SSA]]),  # one query head a KV head (no GQA)
    (1, 2, 2, 700, 16, 4, 8, 3, [[FA, SSA]]),  # 6 FA chunks, merged over 3 loads
    (1, 2, 4, 600, 64, 4, 8, 3, [[SSA, FA]]),  # head_dim 64: the merge walks 4 slices of it
]
# and one key whose score is hundreds above every other (and the new token's): its chunk dominates the merge
for (b, hk, g, s, d, sink, local, steps, modes), spike in [(c, 1.0) for c in cases] + [(cases[6], 40.0)]:
    keys, values = torch.randn(b, hk, s, d), torch.randn(b, hk, s, d)
    keys[:, :, s // 3] *= spike
    ref = C.CompactKV(keys, values, torch.tensor(modes), None, sink, local)
    fast = copy.deepcopy(ref)
    for step in range(steps):
        q, k, v = torch.randn(b, hk * g, 1, d), torch.randn(b, hk, 1, d), torch.randn(b, hk, 1, d)
        if spike > 1:
            q = keys[:, :, s // 3][:, :, None].repeat_interleave(g, 1) / spike  # aligned with the spiked key
        want = ref.extend_and_attend(q, k, v, d ** -0.5)
        got = fast._decode_kernel(q, k, v, d ** -0.5)
        err = (got - want).abs().max().item()
        assert err < 1e-5 * max(1.0, want.abs().max().item()), (b, hk, s, spike, step, err)
        assert torch.equal(fast.ssa_keys, ref.ssa_keys) and torch.equal(fast.ssa_values, ref.ssa_values)
        assert fast.fa_len == ref.fa_len and torch.equal(fast.count, ref.count)
        assert torch.equal(fast.fa_keys[:, :fast.fa_len], ref.fa_keys[:, :ref.fa_len])
        assert torch.equal(fast.fa_values[:, :fast.fa_len], ref.fa_values[:, :ref.fa_len])
print("DECODE_OK")
"""


def test_cpu_decode_kernel_in_interpreter():
    """The decode kernel equals the SDPA path (TRITON_INTERPRET=1: needs the triton package, no GPU)."""
    run_in_triton_interpreter(_DECODE_SCRIPT, "DECODE_OK")


def test_decode_chunks_cover_the_keys_within_the_program_budget():
    """The decode kernel's split: one chunk length in whole blocks, every key of every pair covered, at most
    the program budget (or one program a pair when the pairs alone are more), no more than MAX_CHUNKS a pair."""
    dec = cache_module.decode
    rng = random.Random(0)
    for _ in range(500):
        n_fa, n_ssa = rng.randint(0, 40), rng.randint(0, 40)
        fa_len, ssa_len = rng.randint(1, 300_000), rng.randint(1, 2200)
        programs, block_n = rng.choice([16, 132, 264]), rng.choice([32, 64, 128])
        chunk, sf, ss = dec._chunks(fa_len, n_fa, ssa_len, n_ssa, programs, block_n)
        longest = max(fa_len if n_fa else 0, ssa_len if n_ssa else 0)
        assert chunk % block_n == 0 and chunk >= dec.MIN_CHUNK
        assert chunk < max(longest, dec.MIN_CHUNK) + block_n  # no program walks past the longest pair's keys
        assert sf * chunk >= fa_len or not n_fa
        assert ss * chunk >= ssa_len or not n_ssa
        assert max(sf if n_fa else 1, ss if n_ssa else 1) <= max(dec.MAX_CHUNKS, 1)
        total = n_fa * sf + n_ssa * ss
        assert total <= max(programs, n_fa + n_ssa) or chunk >= longest, (n_fa, fa_len, n_ssa, ssa_len, chunk)
        if chunk - block_n >= max(dec.MIN_CHUNK, -(-longest // dec.MAX_CHUNKS)):  # a shorter chunk was possible:
            shorter = chunk - block_n  # it had to make too many programs
            assert n_fa * -(-fa_len // shorter) + n_ssa * -(-ssa_len // shorter) > max(programs, n_fa + n_ssa)


def test_decode_plan_takes_more_programs_only_where_one_an_sm_is_uneven(monkeypatch):
    """_plan: one program an SM where the chunks come out even (batch 1: a few FA pairs of long keys), two where
    many short SSA pairs would leave SMs idle in a wave sized for the FA chunks (batch 8); a number is used as is."""
    dec = cache_module.decode
    even = (131072, 2, 2176, 6)  # an 8B layer's FA and SSA pairs at 128K, batch 1
    uneven = (65536, 16, 2176, 48)  # batch 8 at 64K
    assert dec._plan(*even, 132, 128) == dec._chunks(*even, 132, 128)
    assert dec._plan(*uneven, 132, 128) == dec._chunks(*uneven, 264, 128)
    assert dec._chunks(*uneven, 264, 128) != dec._chunks(*uneven, 132, 128)
    monkeypatch.setattr(dec, "PROGRAMS_PER_SM", 1)
    assert dec._plan(*uneven, 132, 128) == dec._chunks(*uneven, 132, 128)
    monkeypatch.setattr(dec, "PROGRAMS_PER_SM", 0.5)
    assert dec._plan(*even, 132, 128) == dec._chunks(*even, 66, 128)


def test_decode_merge_is_shared_only_when_the_launch_is_one_wave(monkeypatch):
    """The last arrivals wait for their pair's other chunks only where those all run at once: on a GPU, with
    at most one program an SM. The interpreter (programs one by one) and larger launches merge alone."""
    dec = cache_module.decode
    monkeypatch.setattr(dec, "_sm_count", lambda device: 132)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(dec, "MERGE_SLICES", 4)
    assert dec._merge_split(gpu, 128, 128) == (4, True)
    assert dec._merge_split(gpu, 132, 32) == (2, True)  # slices at least 16 wide
    assert dec._merge_split(gpu, 133, 128) == (1, False)
    assert dec._merge_split(gpu, 8, 16) == (1, False)  # head_dim 16: one slice, nothing to share
    assert dec._merge_split(cpu, 128, 128) == (4, False)
    monkeypatch.setattr(dec, "MERGE_SLICES", 1)
    assert dec._merge_split(gpu, 128, 128) == (1, False)


def test_decode_kernel_only_where_it_applies():
    """The kernel path takes GPU half-precision single tokens without padding; the rest stays on SDPA."""
    keys = torch.randn(1, 2, 10, 16)
    kv = cache_module.CompactKV(keys, keys, torch.tensor([[1, 0]]), None, 4, 8)
    assert not kv.fast_decode(torch.randn(1, 4, 1, 16))  # a CPU tensor
    if torch.cuda.is_available():
        q = torch.randn(1, 4, 1, 16, device="cuda", dtype=torch.bfloat16)
        kv = cache_module.CompactKV(keys.cuda(), keys.cuda(), torch.tensor([[1, 0]], device="cuda"), None, 4, 8)
        assert kv.fast_decode(q) == cache_module.decode.HAVE_TRITON
        assert not kv.fast_decode(q.float()) and not kv.fast_decode(q.expand(1, 4, 2, 16))
        valid = torch.ones(1, 10, dtype=torch.bool, device="cuda")
        valid[0, 0] = False
        padded = cache_module.CompactKV(keys.cuda(), keys.cuda(), torch.tensor([[1, 0]], device="cuda"), valid, 4, 8)
        assert not padded.fast_decode(q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(1, 8, 4, 5000, 128), (3, 3, 3, 700, 64)])  # 8B-like, SmolLM2-like
def test_gpu_decode_kernel_matches_sdpa(shape):
    """bf16 on the GPU: the kernel's steps against the SDPA path's, mixed decisions, sink 64 / local 512."""
    b, hk, g, s, d = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    make = lambda *size: torch.randn(*size, device="cuda", dtype=torch.bfloat16, generator=gen)  # noqa: E731
    keys, values = make(b, hk, s, d), make(b, hk, s, d)
    modes = (torch.rand(b, hk, device="cuda", generator=gen) < 0.7).long()
    ref = cache_module.CompactKV(keys, values, modes, None, 64, 512)
    ref.use_kernel = False
    fast = cache_module.CompactKV(keys, values, modes, None, 64, 512)
    for _ in range(5):
        q, k, v = make(b, hk * g, 1, d), make(b, hk, 1, d), make(b, hk, 1, d)
        assert fast.fast_decode(q) and not ref.fast_decode(q)
        got, want = fast.extend_and_attend(q, k, v, d ** -0.5), ref.extend_and_attend(q, k, v, d ** -0.5)
        assert (got.float() - want.float()).abs().max().item() < 2e-2
    assert torch.equal(fast.ssa_keys, ref.ssa_keys) and fast.fa_len == ref.fa_len
    assert torch.equal(fast.fa_keys[:, :fast.fa_len], ref.fa_keys[:, :ref.fa_len])
