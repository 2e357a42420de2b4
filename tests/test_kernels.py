"""Fast prefill kernels vs the exact reference (masks.head_masks + masked_attention).

CPU: FlexAttention runs eagerly, so the block lists, the mask_mod, the split dispatch and the XA
selection are checked here at small sizes on every CI run. GPU (skipped without CUDA): the same
checks in bf16/fp16 at larger sizes. The fused FA/SSA kernel (fa_ssa.py) runs under the Triton interpreter
on the CPU and natively on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from elastic_attention.attention import FA, SSA, XA, head_masks, masked_attention
from elastic_attention.attention.kernels import hybrid_prefill
from elastic_attention.attention.kernels.flex import bucket_length
from elastic_attention.attention.kernels.blocks import padding_bounds
from elastic_attention.attention.kernels.xa import xa_select
from elastic_attention.attention.masks import causal_allowed, xa_mask
from elastic_attention.config import ElasticConfig
from helpers import run_in_triton_interpreter

CUDA = torch.cuda.is_available()


def _allowed(valid, s):
    b = valid.shape[0]
    return causal_allowed(b, s, s, valid.device) & valid[:, None, None, :]


def _padding(b, s, kind, g):
    valid = torch.ones(b, s, dtype=torch.bool)
    if kind == "none":
        return None, valid
    for row in range(b):
        n = int(torch.randint(s // 2, s + 1, (1,), generator=g))
        if kind == "left":
            valid[row, : s - n] = False
        else:
            valid[row, n:] = False
    return valid, valid


def _case(seed, b, hq, hk, s, d, modes_pool, pad, cfg, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, s, d, generator=g).to(device, dtype)
    k = torch.randn(b, hk, s, d, generator=g).to(device, dtype)
    v = torch.randn(b, hk, s, d, generator=g).to(device, dtype)
    modes = torch.tensor(modes_pool)[torch.randint(len(modes_pool), (b, hk), generator=g)]
    kp, valid = _padding(b, s, pad, g)
    return q, k, v, modes.to(device), (kp.to(device) if kp is not None else None), valid.to(device)


def _check(q, k, v, modes, kp, valid, cfg, backend, tol, real_rows_only=True, bucket=None):
    scale = q.shape[-1] ** -0.5
    s = q.shape[2]
    allowed = _allowed(valid, s)
    mask = head_masks(modes, allowed, q.float(), k.float(), scale, cfg)
    ref = masked_attention(q.float(), k.float(), v.float(), mask, scale)
    out, dens = hybrid_prefill(q, k, v, modes, cfg, scale, key_padding=kp, backend=backend,
                               return_density=True, bucket=bucket)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    err = (out.float() - ref).norm() / ref.norm()
    assert err < tol, f"{backend}: relative error {err:.2e}"
    # density (ESR input) vs the dense count over real query rows
    real = valid[:, None, :, None]
    total = (allowed & real).sum((-1, -2)).float()
    kept = (mask & allowed & real).sum((-1, -2)).float() / total  # [b, hq]
    kept = kept.view(kp.shape[0] if kp is not None else q.shape[0], modes.shape[1], -1).mean(-1)
    assert torch.allclose(dens.float().cpu(), kept.cpu(), atol=1e-5), (dens, kept)


CPU_CFG = ElasticConfig(sink=8, local=40, xa_block=64, xa_stride=16, xa_threshold=0.9)


@pytest.mark.parametrize("backend", ["auto", "flex", "split"])
@pytest.mark.parametrize("pad", ["none", "left", "right"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cpu_fa_ssa_mix(backend, pad, seed):
    b, hq, hk = (2, 4, 2) if seed == 0 else (1, 6, 3)
    s = 200 + 37 * seed  # not a multiple of any block
    case = _case(seed, b, hq, hk, s, 16, [FA, SSA], pad, CPU_CFG)
    _check(*case, CPU_CFG, backend, 1e-4)


@pytest.mark.parametrize("pad", ["none", "left"])
def test_cpu_xa_modes(pad):
    case = _case(3, 2, 4, 2, 320, 16, [FA, SSA, XA], pad, CPU_CFG)
    _check(*case, CPU_CFG, "flex", 1e-4)
    _check(*case, CPU_CFG, "split", 1e-4)


@pytest.mark.parametrize("pad", ["none", "left", "right"])
@pytest.mark.parametrize("pool", [[FA, SSA], [SSA], [FA, SSA, XA]])
def test_cpu_bucketed_flex_is_exact(pad, pool):
    # CUDA runs FlexAttention at bucket_length(s) (zero rows appended): the same result as unpadded.
    s = 180  # bucket 256: 76 appended rows; the XA block table grows from 3 to 4 blocks of 64
    assert bucket_length(s) == 256
    case = _case(7, 2, 4, 2, s, 16, pool, pad, CPU_CFG)
    _check(*case, CPU_CFG, "flex", 1e-4, bucket=True)
    _check(*case, CPU_CFG, "split", 1e-4, bucket=True)


def test_cpu_prompts_sharing_a_bucket_get_their_own_blocks():
    # Regression: the cached block lists of unpadded prompts were built from the first prompt's length, so every
    # later prompt of the same bucket lost or gained keys on CUDA (10-17 % error per head on the H200, routing
    # flipped; benchmarks/router_paths.py). Eager FlexAttention on the CPU applies the mask_mod everywhere and
    # hides it, so this checks what the block-sparse kernel computes from the lists, prompt after prompt.
    from elastic_attention.attention.kernels import blocks
    from elastic_attention.attention.kernels.blocks import block_lists
    from elastic_attention.attention.kernels.flex import make_mask_mod

    cfg = ElasticConfig(sink=64, local=300)
    modes = torch.tensor([[FA, SSA]])
    blocks._ROW_CACHE.clear()
    for s in (1030, 1200, 1100, 1280):  # one bucket: ten key blocks of 128
        sb = bucket_length(s)
        assert sb == 1280
        start, end = padding_bounds(None, 1, s, "cpu")
        lists = block_lists(modes, start, end, sb, cfg, 128, 128, padded=False)
        mm = make_mask_mod(modes.int(), start, end, cfg.sink, cfg.local, padded=False)
        dense = _dense_from_lists(lists, mm, 1, 2, sb, 128, 128)[..., :s, :s]
        q = torch.randn(1, 2, s, 8)
        assert torch.equal(dense, head_masks(modes, causal_allowed(1, s, s, "cpu"), q, q, 1.0, cfg)), s


def test_bucket_lengths_are_few_and_close():
    lengths = {bucket_length(s) for s in range(1, (1 << 17) + 1)}
    assert len(lengths) == 36  # every prompt up to 128K tokens compiles at 36 shapes at most
    for s in (129, 1000, 3930, 4097, 100_000):
        assert s <= bucket_length(s) <= 1.25 * s + 128 and bucket_length(s) % 128 == 0


def test_cpu_xa_selection_matches_reference():
    cfg = CPU_CFG
    q, k, v, modes, kp, valid = _case(5, 1, 4, 2, 256 + 64, 16, [XA], "left", cfg)
    scale = 0.25
    start, end = padding_bounds(kp, 1, q.shape[2], q.device)
    keep = xa_select(q, k, torch.ones(1, 4, dtype=torch.bool), start, end, scale,
                     cfg.xa_block, cfg.xa_stride, cfg.xa_threshold)
    ref = xa_mask(q, k, _allowed(valid, q.shape[2]), scale, cfg.xa_block, cfg.xa_stride, cfg.xa_threshold)
    from elastic_attention.attention.kernels.flex import make_mask_mod
    mm = make_mask_mod(torch.full((1, 4), XA, dtype=torch.int32), start, end, cfg.sink, cfg.local, keep,
                       cfg.xa_block)
    s = q.shape[2]
    qi = torch.arange(s)[:, None]
    ki = torch.arange(s)[None, :]
    for h in range(4):
        ours = mm(torch.tensor(0), torch.tensor(h), qi, ki)
        assert torch.equal(ours, ref[0, h]), h


def test_cpu_all_full_and_all_sparse():
    for pool in ([FA], [SSA]):
        for pad in ("none", "left"):
            case = _case(7, 1, 4, 2, 150, 16, pool, pad, CPU_CFG)
            _check(*case, CPU_CFG, "split", 1e-4)
            _check(*case, CPU_CFG, "auto", 1e-4)


def test_cpu_auto_splits_large_layers_only(monkeypatch):
    """"auto" takes the split dispatch at or above SPLIT_MIN_WORK and FlexAttention alone below it;
    both are exact. The dispatch is observed through the SDPA calls it makes on FA heads."""
    import elastic_attention.attention.kernels as kernels

    case = _case(11, 2, 4, 2, 130, 16, [FA, SSA], "none", CPU_CFG)
    q = case[0]
    case[3][0] = torch.tensor([FA, SSA])  # at least one FA and one SSA head
    calls = []
    real_sdpa = kernels.F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(kernels.F, "scaled_dot_product_attention", counting_sdpa)
    work = q.shape[0] * q.shape[1] * q.shape[2] ** 2 * q.shape[3]
    monkeypatch.setattr(kernels, "SPLIT_MIN_WORK", work + 1)
    _check(*case, CPU_CFG, "auto", 1e-4)
    assert calls == []  # below the threshold: one FlexAttention call for every head
    monkeypatch.setattr(kernels, "SPLIT_MIN_WORK", work)
    _check(*case, CPU_CFG, "auto", 1e-4)
    assert len(calls) >= 1 and all(c[2] == q.shape[2] for c in calls)  # FA heads went to SDPA


def test_cpu_block_masks_are_reused_per_decision_pattern_and_never_stale(monkeypatch):
    import elastic_attention.attention.kernels as kernels

    kernels._MASKS.clear()
    q, k, v, modes, kp, valid = _case(13, 2, 4, 2, 140, 16, [FA, SSA], "none", CPU_CFG)
    modes[:] = torch.tensor([[FA, SSA], [SSA, SSA]])
    _check(q, k, v, modes, kp, valid, CPU_CFG, "flex", 1e-4)
    _check(q, k, v, modes, kp, valid, CPU_CFG, "flex", 1e-4)
    assert len(kernels._MASKS) == 1  # the second call reused the first call's BlockMask
    modes[:] = torch.tensor([[SSA, FA], [FA, SSA]])  # another pattern: a new mask, exact again
    _check(q, k, v, modes, kp, valid, CPU_CFG, "flex", 1e-4)
    assert len(kernels._MASKS) == 2
    monkeypatch.setattr(kernels, "MASK_CACHE_ENTRY_BYTES", 0)  # too large to keep: rebuilt, still exact
    modes[:] = torch.tensor([[SSA, SSA], [FA, FA]])
    _check(q, k, v, modes, kp, valid, CPU_CFG, "flex", 1e-4)
    assert len(kernels._MASKS) == 2


def test_cpu_unpadded_row_lists_are_cached_and_equal_to_the_padded_build():
    from elastic_attention.attention.kernels.blocks import block_lists, row_lists

    cfg = ElasticConfig(sink=16, local=48)
    g = torch.Generator().manual_seed(3)
    for skip_fa in (False, True):
        modes_q = torch.tensor([FA, SSA])[torch.randint(2, (3, 4), generator=g)]
        start, end = padding_bounds(None, 3, 300, "cpu")
        fresh = block_lists(modes_q, start, end, 300, cfg, 32, 32, skip_fa=skip_fa, has_xa=False, padded=True)
        cached = block_lists(modes_q, start, end, 300, cfg, 32, 32, skip_fa=skip_fa, has_xa=False, padded=False)
        for a, b in zip(fresh, cached):
            assert torch.equal(a, b)
    width = 10
    one = row_lists(start, end, 300, cfg, 32, 32, width, True, padded=False)
    assert row_lists(start, end, 300, cfg, 32, 32, width, True, padded=False) is one
    assert row_lists(start, end, 300, cfg, 32, 32, width, True, padded=True) is not one


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", ["auto", "split", "flex"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_many_shapes(backend, dtype, d):
    cfg = ElasticConfig(sink=64, local=256)
    shapes = [(1, 8, 2, 1024, "none"), (2, 9, 3, 1000, "left"), (2, 4, 4, 777, "right")]
    for i, (b, hq, hk, s, pad) in enumerate(shapes):
        for pool in ([FA, SSA], [FA, SSA, XA], [SSA], [XA, SSA]):
            case = _case(11 + i, b, hq, hk, s, d, pool, pad, cfg, dtype, "cuda")
            q, k, v, modes, kp, valid = case
            # XA selection in half precision may differ from the fp32 reference at the threshold:
            # check the attention given our own selection by building the reference mask from it.
            _check_gpu(q, k, v, modes, kp, valid, cfg, backend)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_cudnn_band_backend(dtype, d):
    """SSA heads on cuDNN's sliding-window band + the sink merge (needs nvidia-cudnn-frontend)."""
    from elastic_attention.attention.kernels import cudnn_band

    if not cudnn_band.available():
        pytest.skip(f"cuDNN frontend not loadable: {cudnn_band.load_error()}")
    shapes = [(1, 8, 2, 1024), (2, 9, 3, 1000), (1, 4, 4, 777), (2, 6, 2, 200)]
    for cfg in (ElasticConfig(sink=64, local=256), ElasticConfig(sink=1, local=100), ElasticConfig(sink=200, local=512)):
        for i, (b, hq, hk, s) in enumerate(shapes):
            for pool in ([FA, SSA], [SSA]):
                q, k, v, modes, kp, valid = _case(31 + i, b, hq, hk, s, d, pool, "none", cfg, dtype, "cuda")
                _check_gpu(q, k, v, modes, kp, valid, cfg, "cudnn")


def _check_gpu(q, k, v, modes, kp, valid, cfg, backend):
    from elastic_attention.attention.kernels.flex import make_mask_mod

    scale = q.shape[-1] ** -0.5
    b, hq, s, _ = q.shape
    g = hq // k.shape[1]
    start, end = padding_bounds(kp, b, s, q.device)
    modes_q = modes.repeat_interleave(g, 1)
    keep = xa_select(q, k, modes_q == XA, start, end, scale, cfg.xa_block, cfg.xa_stride, cfg.xa_threshold)
    mm = make_mask_mod(modes_q.int(), start, end, cfg.sink, cfg.local, keep, cfg.xa_block)
    bi = torch.arange(b, device=q.device)[:, None, None, None]
    hi = torch.arange(hq, device=q.device)[None, :, None, None]
    qi = torch.arange(s, device=q.device)[None, None, :, None]
    ki = torch.arange(s, device=q.device)[None, None, None, :]
    mask = mm(bi, hi, qi, ki)
    if not bool((modes == XA).any()):  # without XA the rule must equal the reference masks exactly
        ref_mask = head_masks(modes, _allowed(valid, s), q, k, scale, cfg)
        assert torch.equal(mask, ref_mask)
    ref = masked_attention(q.float(), k.float(), v.float(), mask, scale)
    out = hybrid_prefill(q, k, v, modes, cfg, scale, key_padding=kp, backend=backend)
    err = (out.float() - ref).norm() / ref.norm()
    assert torch.isfinite(out).all() and err < 1e-2, f"{backend} {tuple(q.shape)}: {err:.2e}"


def _dense_from_lists(lists, mask_mod, b, hq, s, bq, bk):
    """What a block-sparse kernel computes: full blocks all kept, partial blocks by the mask_mod."""
    pc, pi, fc, fi = lists
    out = torch.zeros(b, hq, s, s, dtype=torch.bool)
    for bb in range(b):
        for h in range(hq):
            for i in range(pi.shape[2]):
                rows = slice(i * bq, min(i * bq + bq, s))
                qi = torch.arange(rows.start, rows.stop)[:, None]
                for n in range(int(fc[bb, h, i])):
                    j = int(fi[bb, h, i, n])
                    cols = slice(j * bk, min(j * bk + bk, s))
                    ki = torch.arange(cols.start, cols.stop)[None, :]
                    assert mask_mod(torch.tensor(bb), torch.tensor(h), qi, ki).all(), "full block not full"
                    out[bb, h, rows, cols] = True
                for n in range(int(pc[bb, h, i])):
                    j = int(pi[bb, h, i, n])
                    cols = slice(j * bk, min(j * bk + bk, s))
                    ki = torch.arange(cols.start, cols.stop)[None, :]
                    out[bb, h, rows, cols] = mask_mod(torch.tensor(bb), torch.tensor(h), qi, ki)
    return out


@pytest.mark.parametrize("blocks", [(128, 128), (128, 64), (64, 64)])
@pytest.mark.parametrize("pad", ["none", "left", "right"])
def test_cpu_block_lists_cover_the_reference_mask(blocks, pad):
    from elastic_attention.attention.kernels.blocks import block_lists
    from elastic_attention.attention.kernels.flex import make_mask_mod

    cfg = ElasticConfig(sink=70, local=150, xa_block=64, xa_stride=16, xa_threshold=0.9)
    bq, bk = blocks
    for seed, pool in ((0, [FA, SSA]), (1, [FA, SSA, XA]), (2, [SSA])):
        q, k, v, modes, kp, valid = _case(seed, 2, 4, 2, 600 + 13 * seed, 8, pool, pad, cfg)
        b, hq, s = 2, 4, q.shape[2]
        scale = 8 ** -0.5
        start, end = padding_bounds(kp, b, s, q.device)
        modes_q = modes.repeat_interleave(2, 1)
        keep = xa_select(q, k, modes_q == XA, start, end, scale, cfg.xa_block, cfg.xa_stride, cfg.xa_threshold)
        lists = block_lists(modes_q, start, end, s, cfg, bq, bk, keep)
        mm = make_mask_mod(modes_q.int(), start, end, cfg.sink, cfg.local, keep, cfg.xa_block)
        dense = _dense_from_lists(lists, mm, b, hq, s, bq, bk)
        ref = head_masks(modes, _allowed(valid, s), q, k, scale, cfg)
        assert torch.equal(dense, ref), (seed, pool)
        # split dispatch: FA heads get no blocks
        split_lists = block_lists(modes_q, start, end, s, cfg, bq, bk, keep, skip_fa=True)
        pc, _, fc, _ = split_lists
        fa = (modes_q == FA)[:, :, None]
        assert not bool(((pc + fc) * fa).any())
        dense = _dense_from_lists(split_lists, mm, b, hq, s, bq, bk)  # narrow lists without XA
        sparse = (modes_q != FA)[:, :, None, None]
        assert torch.equal(dense, ref & sparse), (seed, pool)


_SINK_MERGE_SCRIPT = r'''
import torch
from elastic_attention.attention.kernels.sink_merge import sink_merge
from elastic_attention.attention.masks import causal_allowed, ssa_mask
from elastic_attention.attention.reference import masked_attention

torch.manual_seed(0)
for s, sink, local, d, heads in ((200, 16, 64, 16, (4, 2)), (150, 8, 150, 32, (2, 2)), (97, 40, 30, 16, (3, 1))):
    hq, hk = heads
    q = torch.randn(1, hq, s, d); k = torch.randn(1, hk, s, d); v = torch.randn(1, hk, s, d)
    allowed = causal_allowed(1, s, s)
    scale = d ** -0.5
    # the window half as a band kernel gives it: output and natural-log lse over (q - local, q]
    window = ssa_mask(allowed, 0, local)
    scores = torch.matmul(q, k.repeat_interleave(hq // hk, 1).transpose(-1, -2)) * scale
    lse = scores.masked_fill(~window, float("-inf")).logsumexp(-1)
    out = masked_attention(q, k, v, window, scale)
    wide = torch.empty(1, hq + 1, s, d)  # a slot of a larger output: strided in-place writes
    wide[:, 1:] = out
    ref = masked_attention(q, k, v, ssa_mask(allowed, sink, local), scale)
    if s > local:  # queries past the window have sink keys to add: the window alone is wrong there
        assert ((out - ref).norm() / ref.norm()).item() > 1e-2, (s, sink, local)
    sink_merge(q, k, v, wide[:, 1:], lse, sink, local, scale)
    err = ((wide[:, 1:] - ref).norm() / ref.norm()).item()
    assert err < 1e-5, (s, sink, local, err)
print("SINK_OK")
'''


def test_cpu_sink_merge_in_interpreter():
    """The sink keys folded into a window result (cuDNN SSA path) equal the exact SSA attention."""
    run_in_triton_interpreter(_SINK_MERGE_SCRIPT, "SINK_OK")


def test_cpu_cudnn_backend_names_what_it_needs():
    q = torch.randn(1, 2, 16, 16)
    k = torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match="nvidia-cudnn-frontend"):
        hybrid_prefill(q, k, k, torch.tensor([[SSA]]), ElasticConfig(sink=4, local=8), 0.25, backend="cudnn")


_FUSED_SCRIPT = r'''
import torch
from elastic_attention.attention import FA, SSA, head_masks, masked_attention
from elastic_attention.attention.kernels.blocks import ssa_density
from elastic_attention.attention.kernels.fa_ssa import SKIP, fa_ssa_prefill
from elastic_attention.attention.masks import causal_allowed
from elastic_attention.config import ElasticConfig
torch.manual_seed(0)
# (b, hq, hk, s, d, sink, local, (BLOCK_M, BLOCK_N, warps, stages)): lengths off the block grid, a sink
# that is not a whole block, a window longer than the prompt, GQA and rows with their own decisions
cases = [(2, 4, 2, 200, 64, 16, 64, (32, 16, 4, 1)), (1, 3, 3, 130, 64, 20, 50, (32, 32, 4, 1)),
         (2, 2, 1, 96, 128, 8, 200, (32, 16, 4, 1)), (1, 2, 2, 257, 64, 5, 33, (64, 16, 4, 1))]
for i, (b, hq, hk, s, d, sink, local, launch) in enumerate(cases):
    cfg = ElasticConfig(sink=sink, local=local)
    q = torch.randn(b, s, hq, d).transpose(1, 2)  # the model's strided layout
    k = torch.randn(b, hk, s, d)
    v = torch.randn(b, s, hk, d).transpose(1, 2)
    modes = torch.tensor([[[SSA, FA, SSA][(r + h + i) % 3] for h in range(hk)] for r in range(b)])
    out, dens = fa_ssa_prefill(q, k, v, modes, sink, local, d ** -0.5, launch, ssa_density=ssa_density(s, cfg))
    mask = head_masks(modes, causal_allowed(b, s, s), q, k, d ** -0.5, cfg)
    ref = masked_attention(q, k, v, mask, d ** -0.5)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-5, (i, err)
    assert out.transpose(1, 2).is_contiguous()  # the model's [b, s, hq, d] layout, no copy back
    kept = mask.sum((-1, -2)).float() / (s * (s + 1) / 2)
    assert torch.allclose(dens, kept.view(b, hk, -1).mean(-1), atol=1e-6), (dens, kept)
    # SKIP heads (the split dispatch's FA heads): nothing written there, the other heads unchanged
    skip = torch.where(modes == FA, SKIP, modes)
    out2 = fa_ssa_prefill(q, k, v, skip, sink, local, d ** -0.5, launch)
    skipped = (skip == SKIP).repeat_interleave(hq // hk, dim=1)  # [b, hq]
    assert torch.equal(out2[~skipped], out[~skipped]), i
print("FUSED_OK")
'''


def test_cpu_fused_kernel_in_interpreter():
    """The fused FA/SSA kernel (decisions read on the GPU) under TRITON_INTERPRET=1 against the reference."""
    run_in_triton_interpreter(_FUSED_SCRIPT, "FUSED_OK")


def test_cpu_fused_backend_names_what_it_needs():
    q = torch.randn(1, 2, 16, 64)
    k = torch.randn(1, 1, 16, 64)
    cfg = ElasticConfig(sink=4, local=8)
    with pytest.raises(ValueError, match="FA and SSA heads only"):
        hybrid_prefill(q, k, k, torch.tensor([[XA]]), cfg, 0.25, backend="fused")
    pad = torch.ones(1, 16, dtype=torch.bool)
    pad[0, :3] = False
    with pytest.raises(ValueError, match="unpadded prompts only"):
        hybrid_prefill(q, k, k, torch.tensor([[SSA]]), cfg, 0.25, key_padding=pad, backend="fused")


def test_cpu_known_full_decisions_skip_the_host_read(monkeypatch):
    """possible_modes=(FA,) (every head forced full) runs causal SDPA without looking at the modes."""
    q, k, v, modes, _, valid = _case(3, 1, 4, 2, 50, 16, [FA], "none", CPU_CFG)

    def no_read(t):
        raise AssertionError("the decisions were read on the host")
    monkeypatch.setattr(torch.Tensor, "tolist", no_read)
    out, dens = hybrid_prefill(q, k, v, modes, CPU_CFG, 0.25, return_density=True, possible_modes=(FA,))
    monkeypatch.undo()
    ref = masked_attention(q, k, v, head_masks(modes, _allowed(valid, 50), q, k, 0.25, CPU_CFG), 0.25)
    assert torch.allclose(out, ref, atol=1e-5) and torch.equal(dens, torch.ones(1, 2))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_fused_backend(dtype, d):
    pytest.importorskip("triton")
    cfg = ElasticConfig(sink=64, local=256)
    for i, (b, hq, hk, s) in enumerate([(1, 8, 2, 1024), (2, 9, 3, 1000), (2, 4, 4, 777), (1, 32, 8, 4100)]):
        for pool in ([FA, SSA], [SSA], [FA]):
            q, k, v, modes, kp, valid = _case(21 + i, b, hq, hk, s, d, pool, "none", cfg, dtype, "cuda")
            _check_gpu(q, k, v, modes, kp, valid, cfg, "fused")


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_routing_and_fused_prefill_never_wait_for_the_gpu():
    """A small layer's prefill as the model runs it (router, decisions, fused kernel, density) makes no
    host sync: torch's sync debug mode turns any into an error."""
    pytest.importorskip("triton")
    from elastic_attention.router import AttentionRouter

    cfg = ElasticConfig(sink=64, local=256, pool_tokens=8)
    router = AttentionRouter(64, pool_tokens=8, kv_heads=3, norm="standardize").cuda().eval()
    q = torch.randn(1, 9, 2000, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 3, 2000, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    keys = k.transpose(1, 2).contiguous()
    with torch.no_grad():
        router(keys)  # compile the router kernel outside the check
        hybrid_prefill(q, k, v, torch.tensor([[SSA, FA, SSA]], device="cuda"), cfg, 0.125, possible_modes=(FA, SSA))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _, r = router(keys)
            modes = (r > 0.5).long()
            out, dens = hybrid_prefill(q, k, v, modes, cfg, 0.125, return_density=True, possible_modes=(FA, SSA))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    ref = hybrid_prefill(q, k, v, modes, cfg, 0.125, backend="flex")
    assert (out.float() - ref.float()).abs().max().item() < 2e-2
