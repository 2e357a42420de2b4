"""What the routers read, and the input statistics of routers with norm="standardize".

`pooled_keys` runs prompts through an attached model and returns each router's input: the boundary-pooled
pre-RoPE keys. `calibrate_routers` sets every router's standardisation from them (the trainer calls it
on training prompts before the first step).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .control import force_mode
from .integrations.hf import runtime_of
from .router import boundary_pool


@torch.no_grad()
def pooled_keys(model, prompts: list[list[int]], progress: bool = False, desc: str = "pooled keys") -> torch.Tensor:
    """[n, layers, kv_heads, head_dim] fp32 (on the CPU): each router's pooled input for n prompts (token ids)."""
    rt = runtime_of(model)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("pooled_keys needs at least one prompt, and no empty prompt")
    device = next(model.parameters()).device
    grabbed: dict[int, torch.Tensor] = {}

    def hook(layer):
        def grab(module, args):
            keys, valid = args[0], args[1] if len(args) > 1 else None
            grabbed[layer] = boundary_pool(keys, valid, module.pool_tokens)[0].float().cpu()
        return grab

    handles = [state.router.register_forward_pre_hook(hook(i)) for i, state in enumerate(rt.layers)]
    gate, rt.gate = rt.gate, None  # a static gate in training would bypass the routers
    was_training = model.training
    model.eval()  # routers in training mode would run both attention modes for nothing
    out = []
    try:
        with force_mode(model, "router"):
            for ids in tqdm(prompts, desc=desc, disable=not progress):
                model(input_ids=torch.tensor([ids], device=device), use_cache=False, logits_to_keep=1)
                out.append(torch.stack([grabbed[i] for i in range(len(rt.layers))]))
    finally:
        rt.gate = gate
        model.train(was_training)
        for h in handles:
            h.remove()
    return torch.stack(out)


def calibrate_routers(model, prompts: list[list[int]], progress: bool = True) -> torch.Tensor:
    """Set the input statistics of every router (norm="standardize") from `prompts`; returns the pooled keys."""
    rt = runtime_of(model)
    if rt.config.router_norm != "standardize":
        raise ValueError(f"the routers have router_norm={rt.config.router_norm!r}; only 'standardize' routers "
                         "take input statistics")
    if len(prompts) < 2:
        raise ValueError(f"calibration needs at least 2 prompts (got {len(prompts)}): a standard deviation "
                         "is measured across prompts")
    pooled = pooled_keys(model, prompts, progress, desc="router input statistics")
    for i, state in enumerate(rt.layers):
        state.router.calibrate(pooled[:, i].to(state.router.input_mean.device))
    return pooled


def is_calibrated(model) -> bool:
    """True when the routers carry input statistics (norm "standardize", measured or loaded)."""
    rt = runtime_of(model)
    if rt.config.router_norm != "standardize":
        return False
    return any(bool((s.router.input_mean != 0).any() or (s.router.input_std != 1).any()) for s in rt.layers)
