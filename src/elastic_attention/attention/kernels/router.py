"""Routing in one Triton launch: boundary pooling, the router MLP and the decision, per (row, KV head).

Eager, routing is a dozen tiny kernels whose launches cost more than their work (about 0.3 ms at any
prompt length, against ~6 ms of attention for an 8B layer at 32K). Here one program per (row, head)
averages the first and last n keys, then runs the MLP as matrix-vector products in chunks of the
hidden layer: each Linear(d, hidden) -> SiLU -> Linear(hidden, d) pair is fused, so the hidden vector
is never stored whole. Inference only (no autograd); prompts without padding. Checked against the
eager router in tests (GPU, and on CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import sys

import torch

from .launcher import Launch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # CPU-only installs: the eager router runs
    HAVE_TRITON = False

HIDDEN_CHUNK = 64

if HAVE_TRITON:
    @triton.jit
    def _silu(x):
        return x * tl.sigmoid(x)

    @triton.jit
    def _expand_contract(x, W_IN, B_IN, W_OUT, offs_d, D: tl.constexpr, HID: tl.constexpr,
                         HB: tl.constexpr):
        """W_OUT @ silu(W_IN @ x + B_IN) for W_IN [HID, D], W_OUT [D, HID] (row-major), bias-free out."""
        acc = tl.zeros([D], tl.float32)
        for c in range(0, HID, HB):  # not unrolled: unrolled, d 128 took ptxas 114 s (sm_90)
            rows = c + tl.arange(0, HB)
            w_in = tl.load(W_IN + rows[:, None] * D + offs_d[None, :]).to(tl.float32)  # [HB, D]
            h = _silu(tl.sum(w_in * x[None, :], 1) + tl.load(B_IN + rows).to(tl.float32))  # [HB]
            w_out = tl.load(W_OUT + offs_d[:, None] * HID + rows[None, :]).to(tl.float32)  # [D, HB]
            acc += tl.sum(w_out * h[None, :], 1)
        return acc

    @triton.jit
    def _route_fwd(K, OUT, MODES, W1, B1, W2, B2, W3, B3, W4, B4, W5, B5, MEAN, STD, HBIAS,
                   S, H, N1, N2, stride_b, stride_s, stride_h, shift,
                   D: tl.constexpr, HID: tl.constexpr, HB: tl.constexpr, BLOCK_T: tl.constexpr,
                   NORM: tl.constexpr, WRITE_MODES: tl.constexpr, SPARSE: tl.constexpr, KEPT: tl.constexpr):
        pid = tl.program_id(0)
        b = pid // H
        h = pid % H
        offs_d = tl.arange(0, D)
        offs_t = tl.arange(0, BLOCK_T)
        base = K + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
        acc = tl.zeros([D], tl.float32)
        for t0 in range(0, N1, BLOCK_T):  # the first N1 tokens
            t = t0 + offs_t
            x = tl.load(base + t[:, None].to(tl.int64) * stride_s + offs_d[None, :], mask=t[:, None] < N1, other=0.0)
            acc += tl.sum(x.to(tl.float32), 0)
        for t0 in range(S - N2, S, BLOCK_T):  # and the last N2
            t = t0 + offs_t
            x = tl.load(base + t[:, None].to(tl.int64) * stride_s + offs_d[None, :], mask=t[:, None] < S, other=0.0)
            acc += tl.sum(x.to(tl.float32), 0)
        pooled = acc / (N1 + N2)
        if NORM:  # standardise per (head, channel); the head's bias joins the logit below
            pooled = ((pooled - tl.load(MEAN + h * D + offs_d).to(tl.float32))
                      / tl.load(STD + h * D + offs_d).to(tl.float32))
        task = _expand_contract(pooled, W1, B1, W2, offs_d, D, HID, HB) + tl.load(B2 + offs_d).to(tl.float32)
        r = _silu(_expand_contract(task, W3, B3, W4, offs_d, D, HID, HB) + tl.load(B4 + offs_d).to(tl.float32))
        logit = tl.sum(r * tl.load(W5 + offs_d).to(tl.float32), 0) + tl.load(B5).to(tl.float32)
        if NORM:
            logit += tl.load(HBIAS + h).to(tl.float32)
        tl.store(OUT + pid, logit)
        tl.store(OUT + tl.num_programs(0) + pid, (logit + shift > 0).to(tl.float32))
        if WRITE_MODES:  # the decision as the mode id the prefill kernels read
            tl.store(MODES + pid, tl.where(logit + shift > 0, SPARSE, KEPT).to(tl.int64))


_LAUNCH = Launch(sys.modules[__name__], "_route_fwd")


def _tensors(router) -> list[torch.Tensor]:
    """The router's weights and biases in the kernel's order, then its standardisation (when it has one).

    Read from the modules' own dicts, every call (so a moved or reassigned tensor is always the current
    one): walking router.parameters(), or Sequential indexing and Module attribute lookup, costs a layer
    more host time than the kernel's launch."""
    task, mlp = router._modules["task"]._modules, router._modules["router"]._modules
    out = []
    for m in (task["0"], task["2"], mlp["0"], mlp["2"], mlp["4"]):
        out += (m._parameters["weight"], m._parameters["bias"])
    if router.norm == "standardize":
        out += [router._buffers["input_mean"], router._buffers["input_std"], router._parameters["head_bias"]]
    return out


def fused_tensors(router, keys: torch.Tensor) -> list[torch.Tensor] | None:
    """The router's tensors for route_fused when it can run this router on these keys, else None (the
    eager router runs)."""
    d = keys.shape[-1]
    hidden = router.task._modules["0"].out_features
    if not (HAVE_TRITON and keys.shape[1] > 0 and d >= 16 and d & (d - 1) == 0
            and hidden % HIDDEN_CHUNK == 0 and keys.stride(-1) == 1):
        return None
    tensors = _tensors(router)
    return tensors if all(map(torch.Tensor.is_contiguous, tensors)) else None


def route_fused(router, keys: torch.Tensor, shift: float = 0.0, tensors: list[torch.Tensor] | None = None,
                modes: tuple[int, int] | None = None):
    """keys [b, s, h, d] -> (logits [b, h] fp32, decisions [b, h] fp32), like router(keys, shift=shift) in eval.

    modes (sparse id, kept id): also the decisions as mode ids [b, h] int64, written by the same launch (the
    ops that would make them from the decisions cost a layer more host time than the launch)."""
    b, s, h, d = keys.shape
    n = router.pool_tokens
    n1, n2 = (s, 0) if s <= 2 * n else (n, n)
    out = torch.empty(2, b, h, dtype=torch.float32, device=keys.device)
    ids = torch.empty(b, h, dtype=torch.int64, device=keys.device) if modes is not None else out
    norm = router.norm == "standardize"
    # Without standardisation the three pointers are never read: any tensor on the device will do.
    weights = (tensors or _tensors(router)) + ([] if norm else [out, out, out])
    sparse, kept = modes or (1, 0)
    _LAUNCH((b * h,), (keys, out, ids, *weights),
            (s, h, n1, n2, keys.stride(0), keys.stride(1), keys.stride(2), float(shift)),
            dict(D=d, HID=router.task._modules["0"].out_features, HB=HIDDEN_CHUNK, BLOCK_T=32, NORM=norm,
                 WRITE_MODES=modes is not None, SPARSE=sparse, KEPT=kept),
            dict(num_warps=4))
    logits, r = out.unbind(0)  # one op for both views, not two selects (host time)
    return (logits, r, ids) if modes is not None else (logits, r)
