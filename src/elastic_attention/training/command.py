"""`elastic-attn train` and `elastic-attn make-data`: parse, call the library, print."""

from __future__ import annotations

import dataclasses
import os
import sys

from ..checks import check_lengths_fit, check_out_dir, check_out_file, parse_lengths, resolve_device, split_list
from .data import DEFAULT_TARGETS, parse_target
from .options import LAMBDA_SCHEDULES, PENALTIES, TrainConfig


def _default(name: str):
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def add_parsers(subparsers) -> None:
    """Register `train` and `make-data` on an argparse subparsers object (each sets `func`)."""
    p = subparsers.add_parser("train", help="train the routers (or a static gate) of a frozen model",
                              description="Train only the routers and the Lagrange multipliers; the backbone stays "
                                          "frozen. Run under `torchrun --nproc_per_node K` to shard the backbone "
                                          "with FSDP2 over K GPUs.")
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct) or a model directory")
    p.add_argument("--data", required=True, help="JSONL file of {task, category, prompt, answer} records")
    p.add_argument("--out", required=True, help="directory for the router, checkpoints, log and plot")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--max-len", type=int, default=4096, help="longer prompts lose their middle (default 4096)")
    p.add_argument("--batch-size", type=int, default=1, help="samples per micro-batch and process (default 1)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step and process (default 1)")
    p.add_argument("--lr", type=float, default=_default("lr"),
                   help="router learning rate (default %(default)g; the paper's is 5e-4)")
    p.add_argument("--lambda-lr", type=float, default=_default("lambda_lr"),
                   help="multiplier learning rate (default %(default)g; the paper's is 1e-3)")
    p.add_argument("--penalty", choices=PENALTIES, default=_default("penalty"),
                   help="linear term of the Lagrangian: lambda1*(MSR-t) (signed, the paper) or lambda1*|MSR-t| "
                        "(abs, the public code)")
    p.add_argument("--lambda-schedule", choices=LAMBDA_SCHEDULES, default=_default("lambda_schedule"),
                   help="multipliers' learning rate: the routers' warmup + cosine decay, or constant")
    p.add_argument("--calibration-samples", type=int, default=_default("calibration_samples"),
                   help="training prompts that measure the router input statistics (router_norm standardize)")
    p.add_argument("--target", action="append", default=[], metavar="NAME=VALUE",
                   help="target MSR of a category or a task (repeatable); defaults "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_TARGETS.items())
                        + "; with --static-gate: all=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (default 50)")
    p.add_argument("--tau-schedule", choices=("exp", "cosine", "constant"), default=None,
                   help="Gumbel temperature schedule (default: the router config's, 'exp')")
    p.add_argument("--static-gate", action="store_true",
                   help="baseline: one learned logit per head for every prompt, one target for all tasks")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing (less memory)")
    p.add_argument("--cudnn-sdpa", action="store_true",
                   help="let SDPA use cuDNN (faster once warm, but it builds plans per sequence length)")
    p.add_argument("--elastic-config", default=None, help="ElasticConfig JSON (file or text) for new routers")
    p.add_argument("--device", default=None, help="default: this process's GPU, else the CPU")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)

    m = subparsers.add_parser("make-data", help="write an offline training mix for the default model",
                              description="Synthetic sensitive (retrieval) and robust (local) tasks built from the "
                                          "Python standard library's text; seeds offset by 10**6 from evaluation's.")
    m.add_argument("--lengths", nargs="+", required=True,
                   help="prompt lengths in tokens, e.g. 1024 2048 4096 or 1024,2048,4k")
    m.add_argument("--per-task", type=int, required=True, help="samples per task and length")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True, help="JSONL file to write")
    m.add_argument("--model", default="default", help="model whose tokenizer measures lengths")
    m.add_argument("--tasks", nargs="+", default=None, help="subset of the tasks, space or comma separated "
                                                            "(default all)")
    m.set_defaults(func=run_make_data)


def run_train(args) -> int:
    from .trainer import train

    try:
        if args.device is not None:
            resolve_device(args.device)
        targets = dict(parse_target(t) for t in args.target)
        cfg = TrainConfig(data=args.data, out=args.out, model=args.model, steps=args.steps, max_len=args.max_len,
                          batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                          lambda_lr=args.lambda_lr, penalty=args.penalty, lambda_schedule=args.lambda_schedule,
                          calibration_samples=args.calibration_samples, targets=targets, seed=args.seed,
                          resume=args.resume,
                          save_every=args.save_every, tau_schedule=args.tau_schedule, static_gate=args.static_gate,
                          checkpointing=args.checkpointing, cudnn_sdpa=args.cudnn_sdpa,
                          elastic_config=args.elastic_config,
                          device=args.device, progress=not args.no_progress)
        check_out_dir(args.out)
        summary = train(cfg)
    except ValueError as err:
        print(f"elastic-attn train: error: {err}", file=sys.stderr)
        return 2
    if summary.get("final") and os.environ.get("RANK", "0") == "0":
        print("final MSR: " + ", ".join(f"{k} {v['msr']:.3f} (target {v['target']})"
                                        for k, v in summary["final"].items()))
    return 0


def run_make_data(args) -> int:
    from ..models import load_model, load_model_config
    from .make_data import TASKS, make_records, write_records

    try:
        # Every check that needs no model first: a mistake costs a second, not a model load.
        lengths = parse_lengths(args.lengths)
        tasks = split_list(args.tasks) if args.tasks is not None else None
        unknown = sorted(set(tasks or []) - set(TASKS))
        if unknown:
            raise ValueError(f"--tasks: unknown task(s) {unknown}; known tasks: {', '.join(TASKS)}")
        check_lengths_fit(lengths, load_model_config(args.model))
        check_out_file(args.out)
        _, tokenizer = load_model(args.model)
        records = make_records(tokenizer, lengths, args.per_task, args.seed, tasks)
    except ValueError as err:
        print(f"elastic-attn make-data: error: {err}", file=sys.stderr)
        return 2
    path = write_records(records, args.out)
    print(f"wrote {len(records)} records to {path}")
    return 0
