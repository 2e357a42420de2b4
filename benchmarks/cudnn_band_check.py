"""Checks and times the cuDNN sliding-window SSA path (cudnn_band.py + sink_merge.py) on a GPU.

Usage (GPU, repo root, nvidia-cudnn-frontend installed): PYTHONPATH=src python benchmarks/cudnn_band_check.py
Prints: relative error against the exact reference for a few shapes (and for band left bounds
local - 1, local, local + 1, which pins cuDNN's bound convention), then at 64K for the 8B shape's
MSR-0.7 SSA heads (28 KV / 112 q heads, d 128): the cuDNN path, FlexAttention, the band alone and the
sink merge alone. The H200 run of 2026-11-28 is benchmarks/results/cudnn_band_check.txt.
"""
import sys, time, traceback
import torch
sys.path.insert(0, "benchmarks")
from cuda_timing import warm_median_ms
from elastic_attention.attention.kernels import hybrid_prefill, cudnn_band
from elastic_attention.attention.kernels.sink_merge import sink_merge
from elastic_attention.attention.masks import ssa_mask, causal_allowed, SSA, FA
from elastic_attention.attention.reference import masked_attention
from elastic_attention.config import ElasticConfig
print("cudnn available", cudnn_band.available(), cudnn_band._cudnn().backend_version() if cudnn_band._cudnn() else None, cudnn_band.load_error(), flush=True)
if not cudnn_band.available():
    sys.exit(1)
dev = "cuda"
def relerr(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()
torch.manual_seed(0)
for d, dtype, S, sink, local in ((128, torch.bfloat16, 4096, 128, 1024), (64, torch.float16, 3000, 64, 512), (128, torch.bfloat16, 2048, 128, 2048)):
    q = torch.randn(2, 8, S, d, device=dev, dtype=dtype); k = torch.randn(2, 2, S, d, device=dev, dtype=dtype); v = torch.randn_like(k)
    allowed = causal_allowed(1, S, S, device=dev)
    ref = masked_attention(q, k, v, ssa_mask(allowed, sink, local), d ** -0.5)
    out = torch.empty_like(q)
    try:
        t = time.perf_counter(); cudnn_band.ssa_attention(q, k, v, out, sink, local, d ** -0.5); torch.cuda.synchronize()
        print(f"d{d} {dtype} S{S}: ssa relerr {relerr(out, ref):.2e} (first call {time.perf_counter()-t:.3f}s)", flush=True)
        for lb in (local - 1, local, local + 1):
            o2 = torch.empty_like(q); lse = torch.empty(2, 8, S, 1, device=dev)
            gr, (tq, tk, tv, to, tl), ws = cudnn_band._graph(q, k, v, o2, lse, d ** -0.5, lb)
            gr.execute({tq: q, tk: k, tv: v, to: o2, tl: lse}, ws, handle=cudnn_band._handle(q.device)); torch.cuda.synchronize()
            win = masked_attention(q, k, v, ssa_mask(allowed, 0, local), d ** -0.5)
            print(f"   band lb={lb} vs window {local}: {relerr(o2, win):.2e}", flush=True)
        cfg = ElasticConfig(sink=sink, local=local)
        modes = torch.tensor([[FA, SSA], [SSA, SSA]], device=dev)
        a = hybrid_prefill(q, k, v, modes, cfg, d ** -0.5, backend="cudnn")
        b_ = hybrid_prefill(q, k, v, modes, cfg, d ** -0.5, backend="flex")
        print(f"   hybrid cudnn vs flex relerr {relerr(a, b_):.2e}", flush=True)
    except Exception:
        traceback.print_exc()
S = 65536; HK = 28; HQ = 112; D = 128; cfg = ElasticConfig()
q = torch.randn(1, HQ, S, D, device=dev, dtype=torch.bfloat16); k = torch.randn(1, HK, S, D, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
modes = torch.full((1, HK), SSA, device=dev)
out = torch.empty_like(q)
sc = D ** -0.5
try:
    print("64K ssa cudnn (band+sink)", warm_median_ms(lambda: cudnn_band.ssa_attention(q, k, v, out, 128, 2048, sc)), flush=True)
    ref = hybrid_prefill(q, k, v, modes, cfg, sc, backend="flex")
    print("64K relerr vs flex", relerr(out, ref), flush=True)
    print("64K flex", warm_median_ms(lambda: hybrid_prefill(q, k, v, modes, cfg, sc, backend="flex")), flush=True)
    lse = torch.empty(1, HQ, S, 1, device=dev)
    gr, (tq, tk, tv, to, tl), ws = cudnn_band._graph(q, k, v, out, lse, sc, 2048)
    h = cudnn_band._handle(q.device)
    print("64K band only", warm_median_ms(lambda: gr.execute({tq: q, tk: k, tv: v, to: out, tl: lse}, ws, handle=h)), flush=True)
    print("64K sink merge only", warm_median_ms(lambda: sink_merge(q, k, v, out, lse[..., 0], 128, 2048, sc)), flush=True)
except Exception:
    traceback.print_exc()
