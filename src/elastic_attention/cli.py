"""`elastic-attn`: thin command line over the library (parse, call, print)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from . import ElasticConfig, attach, force_mode, load_router, routers, routing_stats, sparsity_bias
from .eval.command import add_parser as add_eval_parser
from .training.command import add_parsers as add_training_parsers
from .integrations.hf import model_signature, runtime_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device_dtype(args):
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = DTYPES[args.dtype]
    return device, dtype


def _config_overrides(args) -> dict:
    fields = ("sink", "local", "retrieval_mode", "sparse_mode", "xa_threshold")
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def _load(args):
    """Model + tokenizer with routers attached (from --router, else freshly initialised)."""
    from .models import load_model

    device, dtype = _device_dtype(args)
    model, tokenizer = load_model(args.model, device=device, dtype=dtype)
    if args.router:
        load_router(model, args.router)
    else:
        attach(model, ElasticConfig())
    overrides = _config_overrides(args)
    if overrides:
        rt = runtime_of(model)
        rt.config = dataclasses.replace(rt.config, **overrides)
    return model, tokenizer


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct, offline), a .gguf file, or a transformers model directory")
    p.add_argument("--router", help="directory written by save_router / `elastic-attn train`, or 'default' for the "
                                    "router shipped for the model")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bfloat16 on GPU, float32 on CPU")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attention modes (override the router's config)")
    g.add_argument("--sink", type=int, help="SSA sink tokens (default 128)")
    g.add_argument("--local", type=int, help="SSA local window in tokens (default 2048)")
    g.add_argument("--retrieval-mode", choices=["fa", "xa"], help="mode of heads routed to full (default fa)")
    g.add_argument("--sparse-mode", choices=["ssa", "xa"], help="mode of heads routed to sparse (default ssa)")
    g.add_argument("--xa-threshold", type=float, help="XAttention mass threshold in (0, 1] (default 0.9)")


def cmd_info(args) -> int:
    model, _ = _load(args)
    sig = model_signature(model)
    rt = runtime_of(model)
    per_layer = sum(p.numel() for p in rt.layers[0].router.parameters())
    total = sum(p.numel() for p in routers(model).parameters())
    backbone = sum(p.numel() for n, p in model.named_parameters() if "elastic_router" not in n)
    print(f"model            {args.model} ({type(model).__name__}, model_type {sig['model_type']})")
    print(f"layers           {sig['num_layers']}")
    print(f"query heads      {model.config.num_attention_heads}")
    print(f"KV heads         {sig['kv_heads']} (routing decisions per prompt: {sig['num_layers'] * sig['kv_heads']})")
    print(f"head_dim         {sig['head_dim']}")
    print(f"backbone params  {backbone:,}")
    print(f"router params    {per_layer:,} per layer, {total:,} in all ({100 * total / backbone:.2f} % of the backbone)")
    print(f"router           {args.router or 'untrained (no --router given)'}")
    print(f"config ({rt.config.name})")
    print(rt.config.to_json(), end="")
    return 0


def _prompt_ids(args, tokenizer):
    """(input_ids list, expected answer or None) from --prompt, --prompt-file or the passkey demo."""
    if args.prompt is not None or args.prompt_file is not None:
        text = args.prompt if args.prompt is not None else Path(args.prompt_file).read_text()
        if args.chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("the prompt is empty: give some text with --prompt or --prompt-file")
        return ids, None
    from .eval.passkey import passkey_sample

    sample = passkey_sample(tokenizer, args.passkey_length, 0.5, "48213")
    return sample.input_ids, sample.answer


def _apply_mode(args, model, tokenizer):
    mode = args.mode or ("router" if args.router else "full")
    if mode.startswith("static:"):
        from .baselines import retrieval_scores, static_mask

        msr = float(mode.split(":", 1)[1])
        scores = retrieval_scores(model, tokenizer, samples=args.score_samples, length=args.score_length)
        return force_mode(model, static_mask(scores, msr)), mode
    if mode not in ("router", "full", "sparse"):
        raise ValueError(f"unknown --mode {mode!r}; use router, full, sparse or static:MSR (e.g. static:0.5)")
    return force_mode(model, mode), mode


def cmd_generate(args) -> int:
    from .eval.passkey import passkey_found
    from .generation import greedy_generate

    model, tokenizer = _load(args)
    ids, answer = _prompt_ids(args, tokenizer)
    if args.mode is None and not args.router:
        print("note: no --router given, so heads run full attention; use --router DIR, "
              "--mode sparse or --mode static:0.5 to see sparse heads", file=sys.stderr)
    forced, mode = _apply_mode(args, model, tokenizer)
    device = next(model.parameters()).device
    with forced, sparsity_bias(model, args.sparsity_bias):
        gen = greedy_generate(model, torch.tensor([ids], device=device), args.max_new_tokens,
                              tokenizer.eos_token_id, progress=True)
    text = tokenizer.decode(gen.tokens, skip_special_tokens=True)
    stats = routing_stats(model)
    result = {"mode": mode, "config": runtime_of(model).config.name, "prompt_tokens": len(ids),
              "generated_tokens": len(gen.tokens), "msr": round(float(stats.msr[0]), 4),
              "esr": round(float(stats.esr[0]), 4), "esr_all_layers": round(float(stats.esr_all_layers[0]), 4),
              "sparsity_bias": args.sparsity_bias, "prefill_s": round(gen.prefill_s, 3),
              "decode_s": round(gen.decode_s, 3),
              "decode_tok_per_s": round(len(gen.tokens) / gen.decode_s, 1) if gen.decode_s > 0 else None}
    if answer is not None:
        result["passkey"] = answer
        result["passkey_found"] = passkey_found(text, answer)
    if args.json:
        print(json.dumps({"text": text, **result}))
        return 0
    if answer is not None:
        print(f"prompt: built-in passkey demo, {len(ids)} tokens, pass key {answer} at depth 50 %")
    print(f"output: {text!r}")
    print(f"mode {mode} ({result['config']}), {stats.summary()}")
    print(f"prefill {gen.prefill_s:.3f} s for {len(ids)} tokens, decode {gen.decode_s:.3f} s for "
          f"{len(gen.tokens)} tokens")
    if answer is not None:
        print(f"passkey found: {result['passkey_found']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elastic-attn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="model shape, router size and config",
                       description="Show the model's layers and KV heads, the router's size and the config.")
    _add_model_args(p)
    _add_config_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="generate text with per-prompt head routing",
                       description="Greedy generation with routed heads; prints MSR/ESR and prefill/decode "
                                   "time. Without a prompt it runs a built-in passkey retrieval demo.")
    _add_model_args(p)
    _add_config_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="file holding the prompt text")
    p.add_argument("--passkey-length", type=int, default=2048,
                   help="length in tokens of the built-in passkey demo prompt (when no prompt is given)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--mode", help="router (default with --router), full (default without), sparse, or "
                                  "static:MSR (retrieval-score ranked static hybrid, e.g. static:0.5)")
    p.add_argument("--sparsity-bias", type=float, default=0.0,
                   help="added to every router logit before its decision: > 0 sparser, < 0 denser (default 0)")
    p.add_argument("--score-samples", type=int, default=8, help="passkey prompts for static:MSR head ranking")
    p.add_argument("--score-length", type=int, default=1024, help="their length in tokens")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_generate)
    add_training_parsers(sub)  # train, make-data
    add_eval_parser(sub)  # eval
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"elastic-attn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
