"""Several processes (torchrun): the frozen backbone is sharded with FSDP2, the routers are replicated.

Router (and static-gate) parameters are left out of the shards (`ignored_params`): every process keeps
the whole router, and their gradients are summed across processes by one all-reduce per step. A single
process never touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else one process. device None:
    this process's GPU when CUDA is available, else the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world == 1:
        return Dist(device=dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, dev)


def teardown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the ModuleList that holds one block per layer."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and all(
                any(hasattr(m, "k_proj") for m in block.modules()) for block in module):
            return list(module)
    raise ValueError("could not find the model's list of decoder layers to shard")


def shard_backbone(model: nn.Module, d: Dist, keep: list[nn.Parameter]) -> None:
    """FSDP2: one shard group per decoder layer plus the root (embeddings, norm, head). `keep` (the
    trainable parameters) stays unsharded and out of FSDP's gradient handling."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(d.device.type, (d.world,))
    ignored = set(keep)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, ignored_params=ignored)
    fully_shard(model, mesh=mesh, ignored_params=ignored)


def all_reduce_grads(params: list[nn.Parameter], d: Dist) -> None:
    """Sum the gradients of `params` over processes (the loss is already divided by global counts)."""
    if d.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
        offset += g.numel()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t


def gather_objects(obj, d: Dist) -> list:
    """Every process's `obj`, in rank order (on every process)."""
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out

