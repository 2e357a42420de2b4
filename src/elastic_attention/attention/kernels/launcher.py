"""Launch a Triton kernel through its compiled handle once triton's JIT has compiled it for these arguments.

A small model's prefill is bound by the host, and triton's JIT launch (binding the arguments, computing the
specialisation key, checking globals) is most of the host time an attached layer adds
(benchmarks/launch_overhead.py, docs/benchmarks.md "Small layers"). `Launch` keeps the compiled kernel
triton returns from a launch, under a key that holds every argument triton specialises on, taken more
strictly: each tensor's dtype and 16-byte alignment, every other argument's exact value (ints, floats,
constexprs; for an int the kernel marks do_not_specialize, whether it fits in 32 bits), the launch options
and the current device. A later launch whose key was seen calls the compiled
kernel's launcher directly, with what triton's own launch passes (without the launch metadata and hooks when
no hook is set: triton builds that metadata on every launch, hooks or not); any other launch goes through
the JIT and keeps its handle. Same kernel, same arguments, same stream: the outputs are bitwise those of the JIT launch
(tests/test_kernels.py, on the GPU).
"""

from __future__ import annotations

import torch

try:
    from triton import knobs
except ImportError:  # CPU-only installs, or a triton without knobs: every launch goes through the JIT
    knobs = None

ENABLED = True  # False: every launch through the JIT (benchmarks compare the two)
MAX_HANDLES = 256  # distinct keys kept per kernel (one per prompt length and layout); then start afresh


class Launch:
    """`Launch(module, "name")(grid, tensors, scalars, consts, options)` does
    `module.name[grid](*tensors, *scalars, **consts, **options)`.

    The kernel is looked up on its module at each call (a test or benchmark may put a recorder in its place).
    tensors: the kernel's tensor arguments, which come first in its signature; scalars: the arguments that
    follow them up to the constexprs (ints, floats, bools), in order; consts: the constexprs by name, in the
    kernel's order; options: num_warps, num_stages. A call site passes the same Python types at each position
    (a bool where a bool goes), as triton types arguments by their Python type. Tensors off the GPU
    (triton's interpreter) always go through the JIT."""

    def __init__(self, module, name: str):
        self.module, self.name = module, name
        self.handles: dict = {}
        self.hits = 0
        self._kernel = self._loose = None

    def _key(self, kernel, device, tensors, scalars, consts, options) -> tuple:
        if kernel is not self._kernel:  # scalars triton does not specialise on: only their int type counts
            params = getattr(kernel, "params", [])
            self._kernel = kernel
            self._loose = [i - len(tensors) for i, p in enumerate(params) if p.do_not_specialize]
        if self._loose:
            scalars = list(scalars)
            for i in self._loose:
                scalars[i] = -2 ** 31 <= scalars[i] < 2 ** 31  # i32 or i64
            scalars = tuple(scalars)
        return (kernel, device, scalars, *consts.values(), *options.values(),
                *[(t.dtype, t.data_ptr() % 16 == 0) for t in tensors])

    def __call__(self, grid, tensors, scalars, consts: dict, options: dict):
        kernel = getattr(self.module, self.name)
        if not (ENABLED and knobs is not None and tensors[0].is_cuda):
            kernel[grid](*tensors, *scalars, **consts, **options)
            return
        device = torch._C._cuda_getDevice()  # torch.cuda.current_device() without its init check: the GPU is up
        key = self._key(kernel, device, tensors, scalars, consts, options)
        handle = self.handles.get(key)
        if handle is None:
            handle = kernel[grid](*tensors, *scalars, **consts, **options)
            if hasattr(handle, "packed_metadata"):  # a compiled kernel (not a recorder's or interpreter's return)
                names, n = list(kernel.arg_names), len(tensors) + len(scalars)
                if names != [*names[:n], *consts]:  # the direct launch passes constexprs in this order
                    raise ValueError(f"{self.name}: constexprs must follow the other arguments in the kernel's "
                                     f"order {names[n:]}; got {list(consts)}")
                if len(self.handles) >= MAX_HANDLES:
                    self.handles.clear()
                self.handles[key] = handle
            return
        self.hits += 1
        stream = torch._C._cuda_getCurrentRawStream(device)
        full = (*tensors, *scalars, *consts.values())
        gx, gy, gz = (*grid, 1, 1)[:3]
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        if getattr(enter, "calls", enter) or getattr(leave, "calls", leave):  # a hook is set (a profiler's)
            handle.run(gx, gy, gz, stream, handle.function, handle.packed_metadata,
                       handle.launch_metadata(grid, stream, *full), enter, leave, *full)
        else:  # no hook (None, or an empty chain of them): no metadata to build for one
            handle.run(gx, gy, gz, stream, handle.function, handle.packed_metadata, None, None, None, *full)
