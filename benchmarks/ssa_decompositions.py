"""Ways to run FA-SSA (sink 128 + 2K window) through PyTorch's own kernels, timed against FlexAttention.

Usage (GPU, repo root): PYTHONPATH=src python benchmarks/ssa_decompositions.py   (writes $OUT/ssa_decompositions.json)
8B shape, the MSR-0.7 SSA heads at 64K (28 KV / 112 q heads, d 128). Tried: query chunks of C tokens
batched over a strided view of their key band (C + window keys) through PyTorch's private cuDNN op,
with an additive band mask and without it (the unmasked rectangle is not exact: it only bounds the
rate), plus a sink call and an eager log-sum-exp merge; FlashAttention-2's native window
(`_flash_attention_forward`, no sink); and the router's GPU time queued behind other work. The H200
run of 2026-11-28 is benchmarks/results/ssa_decompositions.json. The winner, cuDNN's own band
through the cuDNN frontend, is in cudnn_band.py (benchmarks/cudnn_band_check.py).
"""
import json, os, sys, time, traceback
import torch
import torch.nn.functional as F
sys.path.insert(0, "benchmarks")
from cuda_timing import warm_median_ms
from elastic_attention.attention.kernels import hybrid_prefill
from elastic_attention.config import ElasticConfig

torch.manual_seed(0)
dev = "cuda"
S = int(os.environ.get("S", 65536)); HK = 28; G = 4; HQ = HK * G; D = 128; SINK = 128; W = 2048
scale = D ** -0.5
q = torch.randn(1, HQ, S, D, device=dev, dtype=torch.bfloat16)
k = torch.randn(1, HK, S, D, device=dev, dtype=torch.bfloat16)
v = torch.randn(1, HK, S, D, device=dev, dtype=torch.bfloat16)
cfg = ElasticConfig(sink=SINK, local=W)
from elastic_attention.attention.masks import SSA
modes = torch.full((1, HK), SSA, dtype=torch.int64, device=dev)
res = {}
def rec(name, ms):
    res[name] = ms
    print(f"{name:40s} {ms:8.3f} ms", flush=True)

ref = hybrid_prefill(q, k, v, modes, cfg, scale, backend="flex")
rec("flex_ssa", warm_median_ms(lambda: hybrid_prefill(q, k, v, modes, cfg, scale, backend="flex")))
rec("sdpa_full_causal", warm_median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True), reps=3))

def relerr(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()

cud = torch.ops.aten._scaled_dot_product_cudnn_attention

def band(C, use_bias=True, gqa_expand=False):
    P0 = -(-(W + SINK) // C) * C
    n = (S - P0) // C
    qv = q.as_strided((n, HQ, C, D), (C * D, S * D, D, 1), P0 * D)
    kk, vv = k, v
    hk = HK
    kv = kk.as_strided((n, hk, W + C, D), (C * D, S * D, D, 1), (P0 - W) * D)
    vvv = vv.as_strided((n, hk, W + C, D), (C * D, S * D, D, 1), (P0 - W) * D)
    a = torch.arange(C, device=dev)[:, None]; j = torch.arange(W + C, device=dev)[None, :]
    allowed = (j > a) & (j <= a + W)
    bias = torch.zeros(C, W + C, device=dev, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
    bias = bias.expand(n, HQ, C, W + C) if use_bias else None
    def run():
        o, lse = cud(qv, kv, vvv, bias, True, 0.0, False, False, scale=scale)[:2]
        return o, lse
    return run, P0, n

def sink_call(P0):
    def run():
        o, lse = cud(q[:, :, P0:], k[:, :, :SINK], v[:, :, :SINK], None, True, 0.0, False, False, scale=scale)[:2]
        return o, lse
    return run

for C in (128, 256, 512):
    try:
        run, P0, n = band(C)
        o, lse = run()
        print("band", C, "out", tuple(o.shape), o.stride(), "lse", tuple(lse.shape), lse.stride(), flush=True)
        rec(f"cudnn_band_C{C}", warm_median_ms(run))
        srun = sink_call(P0)
        os_, ls = srun()
        print("sink out", tuple(os_.shape), "lse", tuple(ls.shape), flush=True)
        rec(f"cudnn_sink_P{P0}", warm_median_ms(srun))
        # merge and check
        ob = o.permute(1, 0, 2, 3).reshape(1, HQ, S - P0, D)
        lb = lse.reshape(n, HQ, C).permute(1, 0, 2).reshape(1, HQ, S - P0)
        ls = ls.reshape(1, HQ, S - P0)
        l = torch.logaddexp(lb, ls)
        out = ob.float() * (lb - l).exp()[..., None] + os_.float() * (ls - l).exp()[..., None]
        print("relerr band+sink vs flex (q>=P0):", relerr(out, ref[:, :, P0:]), flush=True)
        def merged():
            o, lse = run(); os_, ls = srun()
            ob = o.permute(1, 0, 2, 3).reshape(1, HQ, S - P0, D)
            lb = lse.reshape(n, HQ, C).permute(1, 0, 2).reshape(1, HQ, S - P0)
            ls = ls.reshape(1, HQ, S - P0)
            l = torch.logaddexp(lb, ls)
            return (ob.float() * (lb - l).exp()[..., None] + os_.float() * (ls - l).exp()[..., None]).to(q.dtype)
        rec(f"cudnn_band_C{C}_total_eager_merge", warm_median_ms(merged))
        run2, _, _ = band(C, use_bias=False)
        rec(f"cudnn_rect_nobias_C{C}", warm_median_ms(run2))
    except Exception:
        traceback.print_exc()

# FA2 native window
try:
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    def fa2():
        return torch.ops.aten._flash_attention_forward(qt, kt, vt, None, None, S, S, 0.0, True, False, scale=scale,
                                                       window_size_left=W - 1, window_size_right=0)[:2]
    o, lse = fa2()
    print("fa2 out", tuple(o.shape), "lse", tuple(lse.shape), flush=True)
    rec("fa2_window", warm_median_ms(fa2))
except Exception:
    traceback.print_exc()

# router GPU time, queued behind a long matmul (host launch hidden)
from elastic_attention.router import AttentionRouter
def gpu_time(fn, n=20):
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    fn(); torch.cuda.synchronize()
    for _ in range(8):
        a @ a
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record(); e.synchronize()
    return s.elapsed_time(e) / n
def host_time(fn, n=200):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    h = (time.perf_counter() - t) / n * 1e3
    torch.cuda.synchronize()
    return h
for d, hk in ((128, 8), (64, 3)):
    r = AttentionRouter(d).cuda().eval()
    keys = torch.randn(1, 32768, hk, d, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        rec(f"router_d{d}_gpu", gpu_time(lambda: r(keys)))
        rec(f"router_d{d}_host", host_time(lambda: r(keys)))
        rec(f"router_d{d}_idle", warm_median_ms(lambda: r(keys), reps=50))
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "ssa_decompositions.json"), "w"), indent=1)
