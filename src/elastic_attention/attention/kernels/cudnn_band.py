"""SSA heads on cuDNN: the sliding window as cuDNN's causal diagonal band, plus its log-sum-exp.

PyTorch's SDPA cannot ask cuDNN for a window, but the cuDNN frontend's graph API can
(`diagonal_band_left_bound`): keys (q - local, q], tiles outside the band skipped, at cuDNN's
full-attention rate. The sink keys are then folded in by sink_merge.py. Needs the optional package
`nvidia-cudnn-frontend` (extra `cudnn`); without it `available()` is False and FlexAttention runs
the SSA heads. Plans are built once per (shapes, strides, dtype, scale, window, device) and cached.
"""

from __future__ import annotations

import torch

from .sink_merge import HAVE_TRITON, sink_merge

GRAPH_CACHE_SIZE = 64
MAX_SINK = 256  # the sink merge scores every sink key in one tile
_GRAPHS: dict = {}
_HANDLES: dict = {}
_STATE: dict = {}


def _preload_torch_cudnn() -> None:
    """Make PyTorch's own libcudnn visible by its soname, where the frontend looks for it."""
    import ctypes

    torch.backends.cudnn.version()  # PyTorch loads its libcudnn
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libcudnn.so" in line}
    for path in sorted(paths):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _cudnn():
    """The cudnn frontend module, or None where it (or cuDNN itself) cannot be loaded (the reason is
    kept in load_error())."""
    if "module" not in _STATE:
        _STATE["module"] = None
        try:
            _preload_torch_cudnn()
            import cudnn
            cudnn.backend_version()  # fails where no libcudnn could be loaded
            _STATE["module"] = cudnn
        except Exception as e:  # not installed, or no cuDNN library: FlexAttention runs the SSA heads
            _STATE["error"] = f"{type(e).__name__}: {e}"
    return _STATE["module"]


def load_error() -> str | None:
    """Why the cuDNN frontend could not be loaded (None if it was, or was not tried yet)."""
    return _STATE.get("error")


def available() -> bool:
    """Whether the cuDNN band path can run here (CUDA, Triton and the cuDNN frontend present)."""
    return torch.cuda.is_available() and HAVE_TRITON and _cudnn() is not None


def supported(q: torch.Tensor, sink: int) -> bool:
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and sink <= MAX_SINK


def _handle(device: torch.device):
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _HANDLES:
        with torch.cuda.device(index):
            _HANDLES[index] = _cudnn().create_handle()
    return _HANDLES[index]


def _graph(q, k, v, out, lse, scale: float, local: int):
    cudnn = _cudnn()
    key = (tuple(q.shape), q.stride(), tuple(k.shape), k.stride(), v.stride(), out.stride(), q.dtype,
           scale, local, str(q.device))
    hit = _GRAPHS.pop(key, None)
    if hit is None:
        io = cudnn.data_type.BFLOAT16 if q.dtype == torch.bfloat16 else cudnn.data_type.HALF
        handle = _handle(q.device)
        g = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=handle)
        tq, tk, tv = (g.tensor(name=n, dim=list(t.shape), stride=list(t.stride()), data_type=io)
                      for n, t in (("q", q), ("k", k), ("v", v)))
        to, tl = g.sdpa(name="band", q=tq, k=tk, v=tv, generate_stats=True, attn_scale=scale,
                        diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT,
                        diagonal_band_right_bound=0, diagonal_band_left_bound=local)
        to.set_output(True).set_dim(list(out.shape)).set_stride(list(out.stride())).set_data_type(io)
        tl.set_output(True).set_dim(list(lse.shape)).set_stride(list(lse.stride())).set_data_type(
            cudnn.data_type.FLOAT)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        workspace = torch.empty(g.get_workspace_size(), device=q.device, dtype=torch.uint8)
        hit = (g, (tq, tk, tv, to, tl), workspace)
    _GRAPHS[key] = hit  # most recently used last
    if len(_GRAPHS) > GRAPH_CACHE_SIZE:
        _GRAPHS.pop(next(iter(_GRAPHS)))
    return hit


def ssa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, sink: int, local: int,
                  scale: float) -> None:
    """FA-SSA attention (sink + window, causal) of q [b, hq, s, d] over k, v [b, hk, s, d], written
    into out [b, hq, s, d] (a view into a larger output is fine: any strides, contiguous last dim).
    Runs on the current CUDA stream."""
    b, hq, s, d = q.shape
    lse = torch.empty(b, hq, s, 1, device=q.device, dtype=torch.float32)
    g, (tq, tk, tv, to, tl), workspace = _graph(q, k, v, out, lse, scale, local)
    handle = _handle(q.device)
    _cudnn().set_stream(handle=handle, stream=torch.cuda.current_stream(q.device).cuda_stream)
    g.execute({tq: q, tk: k, tv: v, to: out, tl: lse}, workspace, handle=handle)
    sink_merge(q, k, v, out, lse[..., 0], sink, local, scale)
