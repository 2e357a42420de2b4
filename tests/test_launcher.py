"""kernels/launcher.Launch: which launches reuse a compiled handle (CPU, a fake kernel), and that a handle
launch gives bitwise the JIT launch's output (GPU)."""

from __future__ import annotations

import types

import pytest
import torch

from elastic_attention.attention.kernels import launcher

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(launcher.knobs is None, reason="needs triton with knobs")


class FakeHandle:
    packed_metadata = "meta"
    function = "fn"

    def __init__(self, log):
        self.log = log

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        self.log.append(("handle", args))


class FakeKernel:
    """Stands in for a JITFunction: kernel[grid](...) logs a JIT launch and returns a handle."""

    arg_names = ["X", "N", "LEN", "BLOCK"]

    def __init__(self):
        self.log = []
        self.params = [types.SimpleNamespace(do_not_specialize=name == "LEN") for name in self.arg_names]

    def __getitem__(self, grid):
        def jit(*args, **kwargs):
            self.log.append(("jit", grid, args, kwargs))
            return FakeHandle(self.log)
        return jit


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 7, raising=False)
    module = types.SimpleNamespace(kern=FakeKernel())
    return module, launcher.Launch(module, "kern")


def test_cpu_second_launch_with_the_same_key_goes_through_the_handle(fake):
    module, launch = fake
    x = torch.zeros(64)
    launch((4, 2), (x,), (5, 100), dict(BLOCK=16), dict(num_warps=4))
    launch((4, 2), (x,), (5, 101), dict(BLOCK=16), dict(num_warps=4))  # LEN is not specialised on
    log = module.kern.log
    assert [e[0] for e in log] == ["jit", "handle"]
    assert log[0][2:] == ((x, 5, 100), dict(BLOCK=16, num_warps=4))
    # what triton's own launch passes: grid, stream, function, metadata, launch metadata, hooks, all arguments
    assert log[1][1][:7] == (4, 2, 1, 7, "fn", "meta", None)
    assert log[1][1][9:] == (x, 5, 101, 16)
    assert launch.hits == 1


class Chain:
    """Stands in for triton's HookChain: the hooks it calls."""

    def __init__(self, *calls):
        self.calls = list(calls)


@pytest.mark.parametrize("hooks", ["none", "empty chains", "a hook"])
def test_cpu_launch_metadata_and_hooks_only_when_a_hook_is_set(fake, monkeypatch, hooks):
    """Without a hook (None, or empty chains as triton >= 3.5 keeps) the handle launch passes no launch metadata
    and no hooks; with one (a profiler's) it passes the handle's launch metadata and the hooks, as triton does."""
    module, launch = fake
    enter, leave = {"none": (None, None), "empty chains": (Chain(), Chain()), "a hook": (Chain(print), Chain())}[hooks]
    monkeypatch.setattr(launcher, "knobs", types.SimpleNamespace(
        runtime=types.SimpleNamespace(launch_enter_hook=enter, launch_exit_hook=leave)))
    monkeypatch.setattr(FakeHandle, "launch_metadata", lambda self, grid, stream, *args: ("metadata", grid, args))
    x = torch.zeros(64)
    for _ in range(2):
        launch((4,), (x,), (5, 100), dict(BLOCK=16), {})
    passed = module.kern.log[1][1][6:9]
    if hooks == "a hook":
        assert passed == (("metadata", (4,), (x, 5, 100, 16)), enter, leave)
    else:
        assert passed == (None, None, None)


@pytest.mark.parametrize("change", ["int", "dtype", "alignment", "const", "option", "wide_len"])
def test_cpu_any_specialised_change_goes_through_the_jit(fake, change):
    module, launch = fake
    base = torch.zeros(64)
    launch((1,), (base,), (5, 100), dict(BLOCK=16), dict(num_warps=4))
    tensors, scalars, consts, options = (base,), (5, 100), dict(BLOCK=16), dict(num_warps=4)
    if change == "int":
        scalars = (6, 100)
    elif change == "dtype":
        tensors = (base.double(),)
    elif change == "alignment":
        tensors = (base[1:],)  # 4 bytes past a 16-byte boundary
    elif change == "const":
        consts = dict(BLOCK=32)
    elif change == "option":
        options = dict(num_warps=8)
    else:
        scalars = (5, 2 ** 31)  # an unspecialised int that no longer fits in 32 bits
    launch((1,), tensors, scalars, consts, options)
    assert [e[0] for e in module.kern.log] == ["jit", "jit"]
    assert launch.hits == 0


def test_cpu_constexprs_out_of_order_are_refused(fake):
    module, launch = fake
    module.kern.arg_names = ["X", "N", "BLOCK", "LEN"]
    with pytest.raises(ValueError, match="constexprs must follow"):
        launch((1,), (torch.zeros(4),), (5, 100), dict(BLOCK=16), {})


def test_cpu_disabled_or_off_gpu_always_jit(fake, monkeypatch):
    module, launch = fake
    x = torch.zeros(64)
    monkeypatch.setattr(launcher, "ENABLED", False)
    for _ in range(2):
        launch((1,), (x,), (5, 100), dict(BLOCK=16), {})
    monkeypatch.setattr(launcher, "ENABLED", True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: False))
    for _ in range(2):
        launch((1,), (x,), (5, 100), dict(BLOCK=16), {})
    assert [e[0] for e in module.kern.log] == ["jit"] * 4 and not launch.handles


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_handle_launches_equal_jit_launches(monkeypatch):
    from elastic_attention.attention import FA, SSA
    from elastic_attention.attention.kernels import fa_ssa, router as router_kernel
    from elastic_attention.router import AttentionRouter

    g = torch.Generator(device="cuda").manual_seed(0)
    for s in (100, 1000, 100):
        q = torch.randn(2, 8, s, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(2, 2, s, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn_like(k)
        modes = torch.tensor([[SSA, FA], [FA, SSA]], device="cuda")
        router = AttentionRouter(64).cuda().eval()
        keys = k.transpose(1, 2)
        outs = {}
        for enabled in (False, True, True):
            monkeypatch.setattr(launcher, "ENABLED", enabled)
            outs.setdefault(enabled, []).append((fa_ssa.fa_ssa_prefill(q, k, v, modes, 4, 16, 0.125, ssa_density=0.3),
                                                 router_kernel.route_fused(router, keys)))
        (jit,), handled = outs[False], outs[True]
        for out in handled:
            for a, b in zip(jit, out):
                assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert fa_ssa._LAUNCH.hits >= 3 and router_kernel._LAUNCH.hits >= 3
