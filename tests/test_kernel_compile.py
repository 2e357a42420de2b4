"""Every Triton kernel compiles for the GPUs the fast paths target, as our wrappers launch it, without a GPU.

The CPU tests run the kernels under Triton's interpreter, which checks what they compute but not whether
they compile: a loop-carried variable whose type changes, a block shape the compiler rejects, more shared
memory than an SM holds, all fail only on a GPU (the first happened on 2026-12-01, caught only by a GPU
run). Here each wrapper is called with CPU tensors while its kernel is swapped for a recorder; the recorded
launch gives the kernel's signature, constexprs and launch options, and triton.compile builds it for
sm_90 (H100 / H200) and sm_80 (A100) down to a cubin, with the ptxas that ships in the triton wheel.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from elastic_attention.attention.kernels import decode, fa_ssa, router as router_kernel, sink_merge  # noqa: E402
from elastic_attention.attention.masks import FA, SSA  # noqa: E402
from elastic_attention.router import AttentionRouter  # noqa: E402

TARGETS = {90: 227 * 1024, 80: 163 * 1024}  # compute capability: shared memory a block may use (bytes)
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
         torch.int64: "i64", torch.int8: "i8", torch.bool: "i1"}


class Recorder:
    """Stands in for a JIT kernel: `kernel[grid](*args, **kwargs)` records the launch instead of running it."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def record(monkeypatch, module, name: str, call) -> tuple:
    """(the kernel, its one recorded launch) of `call()`, which launches module.name once."""
    kernel, rec = getattr(module, name), Recorder()
    monkeypatch.setattr(module, name, rec)
    call()
    assert len(rec.launches) == 1, f"{name} launched {len(rec.launches)} times"
    return kernel, rec.launches[0]


def compile_launch(kernel, launch, capability: int):
    """The recorded launch's kernel compiled for sm_<capability>: the signature from the arguments' types."""
    args, kwargs = launch
    signature, constexprs = {}, {}
    for i, param in enumerate(kernel.params):
        value = args[i] if i < len(args) else kwargs.get(param.name, param.default)
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {param.name} = {value!r} of a type this test does not map")
    options = {key: kwargs[key] for key in ("num_warps", "num_stages", "launch_pdl") if key in kwargs}
    return triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", capability, 32),
                          options=options)


def bf16(*shape):
    return torch.randn(*shape).to(torch.bfloat16)


def decode_launch(monkeypatch, capability, hq, hk, d, fa_heads, seq, sink, local):
    """decode_step on a one-row layout with `fa_heads` FA pairs and the rest SSA, as on an H100's 132 SMs,
    launched with programmatic dependent launch where the GPU has it (sm_90), as decode._pdl decides there."""
    monkeypatch.setattr(decode, "_pdl", lambda device: capability >= 90)
    n_ssa = hk - fa_heads
    width = min(seq, sink + local)
    rows = torch.zeros(hk, dtype=torch.int32)
    heads = torch.arange(hk, dtype=torch.int32)
    monkeypatch.setattr(decode, "_sm_count", lambda device: 132)
    split = decode._merge_split  # as on the GPU: one wave, so the last arrivals share the merge
    monkeypatch.setattr(decode, "_merge_split", lambda device, parts, d: split(torch.device("cuda"), parts, d))
    return record(monkeypatch, decode, "_decode", lambda: decode.decode_step(
        bf16(1, hq, 1, d), bf16(1, hk, 1, d), bf16(1, hk, 1, d), bf16(fa_heads, seq + 8, d),
        bf16(fa_heads, seq + 8, d), seq, bf16(n_ssa, width, d), bf16(n_ssa, width, d), width, sink, rows, heads,
        fa_heads, d ** -0.5))


def prefill_launch(monkeypatch, capability, hq, hk, d, s):
    modes = torch.tensor([[FA] + [SSA] * (hk - 1)])
    return record(monkeypatch, fa_ssa, "_fa_ssa_fwd", lambda: fa_ssa.fa_ssa_prefill(
        bf16(1, hq, s, d), bf16(1, hk, s, d), bf16(1, hk, s, d), modes, 64, 512, d ** -0.5, ssa_density=0.3))


def router_launch(monkeypatch, capability, hk, d, norm):
    router = AttentionRouter(d, kv_heads=hk, norm=norm).eval()
    keys = torch.randn(1, 300, hk, d)
    assert router_kernel.fused_tensors(router, keys) is not None
    return record(monkeypatch, router_kernel, "_route_fwd", lambda: router_kernel.route_fused(router, keys))


def sink_merge_launch(monkeypatch, capability, hq, hk, d, s):
    return record(monkeypatch, sink_merge, "_sink_merge", lambda: sink_merge.sink_merge(
        bf16(1, hq, s, d), bf16(1, hk, s, d), bf16(1, hk, s, d), bf16(1, hq, s, d), torch.zeros(1, hq, s),
        128, 2048, d ** -0.5))


LAUNCHES = {  # the shapes of the 8B layer and of the default model's, as the fast paths launch them
    "decode, 8B layer (G 4, d 128)": lambda mp, cap: decode_launch(mp, cap, 32, 8, 128, 2, 131072, 128, 2048),
    "decode, default model (G 3, d 64)": lambda mp, cap: decode_launch(mp, cap, 9, 3, 64, 1, 16384, 64, 512),
    "decode, no GQA (G 1, d 64)": lambda mp, cap: decode_launch(mp, cap, 4, 4, 64, 1, 4096, 64, 512),
    "fused prefill, d 128": lambda mp, cap: prefill_launch(mp, cap, 32, 8, 128, 4096),
    "fused prefill, d 64": lambda mp, cap: prefill_launch(mp, cap, 9, 3, 64, 4096),
    "router, standardised, d 64": lambda mp, cap: router_launch(mp, cap, 3, 64, "standardize"),
    "router, d 128": lambda mp, cap: router_launch(mp, cap, 8, 128, "none"),
    "sink merge, d 128": lambda mp, cap: sink_merge_launch(mp, cap, 32, 8, 128, 4096),
}


@pytest.mark.parametrize("capability", sorted(TARGETS))
@pytest.mark.parametrize("name", list(LAUNCHES))
def test_kernel_compiles_for_the_gpu(monkeypatch, name, capability):
    kernel, launch = LAUNCHES[name](monkeypatch, capability)
    compiled = compile_launch(kernel, launch, capability)
    assert compiled.asm["cubin"], f"{name}: no cubin for sm_{capability}"
    if launch[1].get("SPIN"):  # the last arrivals wait for the count's reset
        assert ".acquire" in compiled.asm["ptx"], f"{name}: waits for its pair's count with no acquire load"
    if launch[1].get("launch_pdl"):  # launched early: the programs wait for the kernel before on the GPU
        assert "griddepcontrol.wait" in compiled.asm["ptx"], f"{name}: launched with PDL but never waits"
    assert compiled.metadata.shared <= TARGETS[capability], (
        f"{name}: {compiled.metadata.shared} bytes of shared memory, more than sm_{capability}'s "
        f"{TARGETS[capability]}")


def test_the_recorder_sees_a_kernel_that_does_not_compile(monkeypatch):
    """The check above can fail: a kernel whose loop-carried value changes type is rejected at compile time."""
    @triton.jit
    def broken(X, N):
        acc = 0.0
        for i in range(0, N):
            acc = triton.language.zeros([16], triton.language.float32) + acc
        triton.language.store(X + triton.language.arange(0, 16), acc)

    rec = Recorder()
    rec[(1,)](torch.zeros(16), 3)
    with pytest.raises(Exception, match="(?i)loop-carried|type"):
        compile_launch(broken, rec.launches[0], 90)
