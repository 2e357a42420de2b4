"""The training loop: routers (or a static gate) and Lagrange multipliers learn; the backbone stays frozen.

One step = `grad_accum` micro-batches on each of the `world` processes. The data order, the Gumbel
noise and the multipliers' start are all drawn from `seed` (and the step), and a checkpoint holds the
rest, so a resumed run ends with the same router as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..adapter import save_router
from ..calibration import calibrate_routers, is_calibrated
from ..config import ElasticConfig
from ..gate import StaticGate, save_static_gate, use_gate
from ..integrations.hf import attach, routers, runtime_of
from ..metrics import soft_msr
from ..router import TemperatureSchedule
from . import checkpoint, distributed
from .data import Batcher, Targets, collate, encode, file_digest, load_records
from .objective import Lagrangian, answer_ce
from .options import TrainConfig
from .report import StepLog, plot, progress

STATIC_CONSTRAINT = "all"


def lr_factor(step: int, steps: int, warmup: float) -> float:
    """Linear warmup over the first `warmup` of the steps, then cosine decay to 0."""
    n_warm = max(1, round(warmup * steps)) if warmup > 0 else 0
    if step < n_warm:
        return (step + 1) / n_warm
    return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))


def train(cfg: TrainConfig, model=None, tokenizer=None,
          on_step: Callable[[dict], None] | None = None) -> dict:
    """Train and save the router (save_router) or the static gate (save_static_gate) into cfg.out.

    Returns a summary dict (also written to out/summary.json). `on_step` is called with every step's
    log entry. Under torchrun the backbone is sharded with FSDP2 and router gradients are all-reduced.
    """
    cfg.check()
    d = distributed.setup(cfg.device)
    out = Path(cfg.out)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    records = load_records(cfg.data)
    targets = Targets.build(records, cfg.targets, single=STATIC_CONSTRAINT if cfg.static_gate else None)
    if model is None:
        from ..models import load_model
        model, tokenizer = load_model(cfg.model, device=d.device)
    elif tokenizer is None:
        raise ValueError("train(model=...) needs the model's tokenizer too")
    model.to(d.device)
    samples, n_cut = encode(records, tokenizer, cfg.max_len, targets)
    names = targets.names

    if getattr(model, "elastic_runtime", None) is None:
        elastic = ElasticConfig.from_json(cfg.elastic_config) if cfg.elastic_config else ElasticConfig()
        attach(model, elastic)
    rt = runtime_of(model)
    schedule = TemperatureSchedule.from_config(rt.config)
    if cfg.tau_schedule is not None:
        schedule = TemperatureSchedule(cfg.tau_schedule, schedule.tau_init, schedule.tau_min, schedule.rate)
    if cfg.static_gate:
        learner = StaticGate(rt.num_layers, rt.kv_heads).to(d.device)
        use_gate(model, learner)
    else:
        learner = routers(model)
    params = list(learner.parameters())
    lagrangian = Lagrangian(names, torch.Generator().manual_seed(cfg.seed), cfg.penalty).to(d.device)
    if cfg.checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if d.world > 1:
        distributed.shard_backbone(model, d, params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    lopt = torch.optim.AdamW(lagrangian.parameters(), lr=cfg.lambda_lr, betas=(0.9, 0.95), weight_decay=0.0,
                             maximize=True)
    digest = file_digest(cfg.data)
    identity = {"seed": cfg.seed, "data": digest, "static_gate": cfg.static_gate, "world": d.world,
                "constraints": names, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                "penalty": cfg.penalty}

    start, rng = 0, None
    if cfg.resume:
        state = checkpoint.load_latest(out / "checkpoints")
        if state is not None:
            diff = {k: (state["identity"].get(k), v) for k, v in identity.items() if state["identity"].get(k) != v}
            if diff:
                raise ValueError(f"cannot resume from {state['path']}: it was written by a different run "
                                 f"(checkpoint vs now: {diff}); resume with the same settings or start afresh "
                                 "without --resume")
            learner.load_state_dict(state["learner"])
            lagrangian.load_state_dict(state["lagrangian"])
            opt.load_state_dict(state["opt"])
            lopt.load_state_dict(state["lopt"])
            start, rng = state["step"], state["rng"][d.rank]
            if d.main:
                print(f"resuming from {state['path']} (step {start} of {cfg.steps})")
        elif d.main:
            print(f"--resume: no checkpoint in {out / 'checkpoints'}; starting from step 0")

    if start == 0 and not cfg.static_gate and rt.config.router_norm == "standardize" and not is_calibrated(model):
        # Input statistics from training prompts, spread over the constraints (every k-th sample).
        every = max(1, len(samples) // cfg.calibration_samples)
        prompts = [s.ids[:s.prompt_len] for s in samples[::every][:cfg.calibration_samples]]
        calibrate_routers(model, prompts, progress=cfg.progress and d.main)

    batcher = Batcher(samples, cfg.batch_size, cfg.seed)
    micro_per_step = cfg.grad_accum * d.world
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda"
                else contextlib.nullcontext())
    log = StepLog(out / "train_log.jsonl", start) if d.main else None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"event": "start", "samples": len(samples), "cut": n_cut, "targets": targets.target,
                "world": d.world, "trainable": sum(p.numel() for p in params), "tau_schedule": schedule.kind,
                "config": asdict(cfg)}
        log.write(meta)
        print(f"{len(samples)} samples ({n_cut} prompts cut in the middle to --max-len {cfg.max_len}); "
              f"targets {targets.target}; {meta['trainable']} trainable parameters; {d.world} process(es)")
    if rng is not None:
        checkpoint.set_rng_state(rng, d.device)

    model.train()
    learner.train()
    bar = progress(cfg.steps, start, cfg.progress and d.main)
    times = []
    cudnn_before = torch.backends.cuda.cudnn_sdp_enabled()
    if d.device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(cfg.cudnn_sdpa)
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            tau = schedule(step / cfg.steps)
            for m in learner if not cfg.static_gate else [learner]:
                m.tau = tau
            factor = lr_factor(step, cfg.steps, cfg.warmup)
            lambda_factor = factor if cfg.lambda_schedule == "cosine" else 1.0
            for o, lr in ((opt, cfg.lr * factor), (lopt, cfg.lambda_lr * lambda_factor)):
                for group in o.param_groups:
                    group["lr"] = lr
            batches = batcher.micro_batches(step, micro_per_step)
            everyone = [samples[i] for mb in batches for i in mb]
            counts = torch.bincount(torch.tensor([s.constraint for s in everyone]), minlength=len(names)).to(d.device)
            stats = torch.zeros(len(names), 3, device=d.device)  # CE sum, MSR sum, samples
            lambdas = (lagrangian.lambda1.detach().cpu().tolist(), lagrangian.lambda2.detach().cpu().tolist())
            for j in range(d.rank, len(batches), d.world):
                # The Gumbel noise of a micro-batch depends on (seed, step, its index) alone: the same run
                # on 1 process with grad_accum K or on K processes draws the same noise.
                torch.manual_seed((cfg.seed << 32) + step * micro_per_step + j)
                batch = collate([samples[i] for i in batches[j]], pad_id, d.device)
                keep = batch["input_ids"].shape[1] - batch["first_answer"] + 1
                rt.route_mask = batch["prompt_mask"]
                try:
                    with autocast:
                        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       use_cache=False, logits_to_keep=keep).logits
                    ce = answer_ce(logits, batch["input_ids"], batch["answer_mask"])
                    msr = soft_msr(model).float()
                    loss = ce.sum() / len(everyone) + lagrangian.penalty(msr, batch["target"], batch["constraint"],
                                                                         counts)
                    loss.backward()
                finally:
                    rt.route_mask = None
                row = torch.stack([ce.detach(), msr.detach(), torch.ones_like(ce)], dim=1)
                stats.index_add_(0, batch["constraint"], row)
            distributed.all_reduce_grads(params + list(lagrangian.parameters()), d)
            opt.step()
            lopt.step()
            opt.zero_grad(set_to_none=True)
            lopt.zero_grad(set_to_none=True)
            stats = distributed.all_reduce_sum(stats, d).cpu()
            if d.device.type == "cuda":
                torch.cuda.synchronize(d.device)
            times.append(time.perf_counter() - t0)
            entry = _entry(step + 1, names, targets, stats, lambdas, tau, cfg.lr * factor, times[-1])
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                _save_checkpoint(out, step + 1, cfg, identity, learner, lagrangian, opt, lopt, d)
            if d.main:
                log.write(entry)
                bar.update(1)
                bar.set_postfix(ce=f"{entry['ce']:.3f}", msr="/".join(f"{c['msr']:.2f}"
                                                                      for c in entry["constraints"].values()))
            if on_step is not None:
                on_step(entry)
    finally:
        bar.close()
        torch.backends.cuda.enable_cudnn_sdp(cudnn_before)

    summary = {"steps": cfg.steps, "resumed_from": start, "world": d.world, "cut": n_cut,
               "samples": len(samples), "tau_schedule": schedule.kind,
               "s_per_step": sum(times[2:]) / len(times[2:]) if len(times) > 2 else None,
               "final": (entry["constraints"] if times else None)}
    if d.main:
        if cfg.static_gate:
            save_static_gate(model, learner, out)
        else:
            save_router(model, out)
        plot(out / "train_log.jsonl", out / "curves.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    distributed.teardown(d)
    summary["learner"] = learner
    summary["lagrangian"] = lagrangian
    return summary


def _entry(step, names, targets, stats, lambdas, tau, lr, seconds) -> dict:
    per = {}
    for k, name in enumerate(names):
        n = stats[k, 2].item()
        if n == 0:
            continue
        per[name] = {"ce": stats[k, 0].item() / n, "msr": stats[k, 1].item() / n, "target": targets.target[name],
                     "lambda1": lambdas[0][k], "lambda2": lambdas[1][k], "samples": int(n)}
    total = stats[:, 2].sum().item()
    return {"step": step, "ce": stats[:, 0].sum().item() / total, "msr": stats[:, 1].sum().item() / total,
            "tau": tau, "lr": lr, "time_s": seconds, "constraints": per}


def _save_checkpoint(out, step, cfg, identity, learner, lagrangian, opt, lopt, d) -> None:
    rngs = distributed.gather_objects(checkpoint.rng_state(d.device), d)
    if not d.main:
        return
    state = {"step": step, "identity": identity, "learner": learner.state_dict(),
             "lagrangian": lagrangian.state_dict(), "opt": opt.state_dict(), "lopt": lopt.state_dict(),
             "rng": rngs, "config": asdict(cfg)}
    checkpoint.save(out / "checkpoints", step, state, cfg.keep_checkpoints)
