"""`elastic-attn`: thin command line over the library (parse, call, print)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

# torch and transformers load inside the command functions, never here: `elastic-attn --help` stays fast.
from .checks import context_length, read_text_file, resolve_device
from .demo import add_parser as add_demo_parser
from .eval.command import add_parser as add_eval_parser
from .training.command import add_parsers as add_training_parsers

DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names
MODES = ("router", "full", "sparse")
TRUNCATE = ("left", "middle")
DEFAULT_NEW_TOKENS = {"passkey": 16, "prompt": 64}


def note(text: str) -> None:
    """One status line on stderr (stdout keeps the result, e.g. for --json)."""
    print(text, file=sys.stderr)


def _device_dtype(args):
    import torch

    device = resolve_device(args.device)
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    return device, dtype


def _config_overrides(args) -> dict:
    """--sink, --local, ... as ElasticConfig fields, checked now (a bad value fails before the model loads)."""
    from .config import ElasticConfig

    fields = ("sink", "local", "retrieval_mode", "sparse_mode", "xa_threshold")
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    dataclasses.replace(ElasticConfig(), **overrides)
    return overrides


def _load(args):
    """Model + tokenizer with routers attached -> (model, tokenizer, trained router loaded?).

    --router DIR is checked against the model's config before the weights load; without --router the
    router shipped for the model is loaded when there is one."""
    from .adapter import check_router_dir, default_router_path, load_router
    from .config import ElasticConfig
    from .integrations.hf import attach, runtime_of
    from .models import load_model, load_model_config

    device, dtype = _device_dtype(args)
    overrides = _config_overrides(args)
    router = args.router
    if router not in (None, "none", "default"):
        check_router_dir(router, load_model_config(args.model))
    model, tokenizer = load_model(args.model, device=device, dtype=dtype)
    trained = True
    if router == "none":
        attach(model, ElasticConfig())
        trained = False
        note("router: none (--router none): untrained routers, so heads run full attention unless --mode says "
             "otherwise")
    elif router is None:
        try:
            shipped = default_router_path(model)
        except ValueError:
            shipped = None
        if shipped is not None:
            load_router(model, shipped)
            note(f"router: shipped default for {shipped.name} (pass --router none for the bare model)")
        else:
            attach(model, ElasticConfig())
            trained = False
            note("router: none ships for this model, so heads run full attention unless --mode says otherwise "
                 "(train one with `elastic-attn train`, then pass --router DIR)")
    else:
        load_router(model, router)
    if overrides:
        rt = runtime_of(model)
        rt.config = dataclasses.replace(rt.config, **overrides)
    return model, tokenizer, trained


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct, offline), a .gguf file, or a transformers model directory")
    p.add_argument("--router", help="directory written by save_router / `elastic-attn train`; 'default' for the "
                                    "router shipped for the model (used when --router is not given and one "
                                    "ships); 'none' for the bare model")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bfloat16 on GPU, float32 on CPU")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attention modes (override the router's config)")
    g.add_argument("--sink", type=int, help="SSA sink tokens (default: the router's; 128 without one)")
    g.add_argument("--local", type=int, help="SSA local window in tokens (default: the router's; 2048 without one)")
    g.add_argument("--retrieval-mode", choices=["fa", "xa"], help="mode of heads routed to full (default fa)")
    g.add_argument("--sparse-mode", choices=["ssa", "xa"], help="mode of heads routed to sparse (default ssa)")
    g.add_argument("--xa-threshold", type=float, help="XAttention mass threshold in (0, 1] (default 0.9)")


def cmd_info(args) -> int:
    from .integrations.hf import model_signature, routers, runtime_of

    model, _, trained = _load(args)
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
    print(f"context          {context_length(model.config)} tokens (config.max_position_embeddings)")
    print(f"backbone params  {backbone:,}")
    print(f"router params    {per_layer:,} per layer, {total:,} in all "
          f"({100 * total / backbone:.2f} % of the backbone)")
    print(f"router           {(args.router or 'shipped default') if trained else 'untrained'}")
    print(f"config ({rt.config.name})")
    print(rt.config.to_json(), end="")
    return 0


def parse_mode(text: str | None):
    """--mode -> None (not given), 'router', 'full', 'sparse' or the MSR of static:MSR, before any model work."""
    if text is None or text in MODES:
        return text
    if text.startswith("static:"):
        try:
            msr = float(text.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--mode {text!r}: the MSR after 'static:' must be a number in [0, 1], "
                             "e.g. --mode static:0.5") from None
        if not 0.0 <= msr <= 1.0:
            raise ValueError(f"--mode {text!r}: the MSR (the fraction of heads made sparse) must lie in [0, 1], "
                             "e.g. --mode static:0.5")
        return msr
    raise ValueError(f"unknown --mode {text!r}; use router, full, sparse or static:MSR (e.g. static:0.5)")


def _prompt_text(args) -> str | None:
    """The user's prompt (None: the built-in passkey prompt); a missing file or an empty prompt fails here."""
    if args.prompt is None and args.prompt_file is None:
        return None
    text = args.prompt if args.prompt is not None else read_text_file(args.prompt_file, "--prompt-file")
    if not text.strip():
        raise ValueError("the prompt is empty: give some text with --prompt or --prompt-file")
    return text


def _passkey_length(args, config, max_new_tokens: int, limit: int | None) -> int:
    """The built-in prompt is longer than sink + local (twice, at least 2K tokens), so SSA heads prune."""
    if args.passkey_length is not None:
        return args.passkey_length
    length = max(2048, 2 * (config.sink + config.local))
    return min(length, limit - max_new_tokens) if limit else length


def _fit_context(ids: list[int], args, limit: int | None, max_new_tokens: int) -> list[int]:
    """Refuse (or, with --truncate, cut) a prompt that leaves no room for the new tokens in the context."""
    if limit is None or len(ids) + max_new_tokens <= limit:
        return ids
    keep = limit - max_new_tokens
    if keep < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context "
                         f"of {limit} tokens")
    if args.truncate is None:
        raise ValueError(f"the prompt has {len(ids)} tokens; with {max_new_tokens} new tokens that is more than the "
                         f"model's context of {limit} (config.max_position_embeddings): shorten it, or pass "
                         "--truncate left (keep its end) or --truncate middle (keep both ends)")
    if args.truncate == "left":
        cut = ids[-keep:]
    else:
        cut = ids[:keep // 2] + ids[len(ids) - (keep - keep // 2):]
    note(f"note: --truncate {args.truncate} cut the prompt from {len(ids)} to {keep} tokens (context {limit}, "
         f"{max_new_tokens} of them kept for new tokens)")
    return cut


def _static_scores(args, model, tokenizer):
    from .baselines import retrieval_scores, scores_cache_path

    path = scores_cache_path(model, tokenizer, args.score_samples, args.score_length)
    if path.is_file():
        note(f"retrieval scores: cached in {path}")
    else:
        note(f"retrieval scores: measuring {args.score_samples} passkey prompts of {args.score_length} tokens "
             f"(once; cached in {path})")
    return retrieval_scores(model, tokenizer, samples=args.score_samples, length=args.score_length, cache=True)


def cmd_generate(args) -> int:
    import torch

    from .baselines import static_mask
    from .control import check_sparsity_bias, force_mode, sparsity_bias
    from .passkey import passkey_found, passkey_sample
    from .generation import greedy_generate
    from .integrations.hf import runtime_of
    from .metrics import routing_stats

    # Everything that needs no model first: a typo costs a second, not a model load and head scoring.
    mode = parse_mode(args.mode)
    check_sparsity_bias(args.sparsity_bias)
    text = _prompt_text(args)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")

    model, tokenizer, trained = _load(args)
    config = runtime_of(model).config
    limit = context_length(model.config)
    answer, chat = None, False
    if text is None:  # the built-in passkey prompt is plain text: this model answers it only that way
        new_tokens = args.max_new_tokens or DEFAULT_NEW_TOKENS["passkey"]
        sample = passkey_sample(tokenizer, _passkey_length(args, config, new_tokens, limit), 0.5, "48213")
        ids, answer = sample.input_ids, sample.answer
        if args.chat:
            note("note: the built-in passkey prompt is sent as plain text (--chat applies to --prompt / "
                 "--prompt-file)")
    else:
        new_tokens = args.max_new_tokens or DEFAULT_NEW_TOKENS["prompt"]
        # An instruct model answers a free-text prompt only inside its chat template: use it when there is one.
        chat = args.chat if args.chat is not None else bool(getattr(tokenizer, "chat_template", None))
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = _fit_context(ids, args, limit, new_tokens)

    if mode is None:
        mode = "router" if trained else "full"
    name = args.mode if isinstance(mode, float) else mode  # static:MSR as typed
    if mode != "full" and config.sparse_mode == "ssa" and len(ids) <= config.sink + config.local:
        note(f"note: the prompt ({len(ids)} tokens) fits in sink + local = {config.sink} + {config.local} tokens, "
             "so SSA heads keep every token at this length: sparsity saves nothing (ESR 0)")
    forced = static_mask(_static_scores(args, model, tokenizer), mode) if isinstance(mode, float) else mode

    device = next(model.parameters()).device
    with force_mode(model, forced), sparsity_bias(model, args.sparsity_bias):
        gen = greedy_generate(model, torch.tensor([ids], device=device), new_tokens, tokenizer.eos_token_id,
                              progress=True)
    out_text = tokenizer.decode(gen.tokens, skip_special_tokens=True)
    stats = routing_stats(model)
    result = {"mode": name, "config": config.name, "chat": chat, "prompt_tokens": len(ids),
              "generated_tokens": len(gen.tokens), "msr": round(float(stats.msr[0]), 4),
              "esr": round(float(stats.esr[0]), 4), "esr_all_layers": round(float(stats.esr_all_layers[0]), 4),
              "sparsity_bias": args.sparsity_bias, "prefill_s": round(gen.prefill_s, 3),
              "decode_s": round(gen.decode_s, 3),
              "decode_tok_per_s": round(len(gen.tokens) / gen.decode_s, 1) if gen.decode_s > 0 else None}
    if answer is not None:
        result["passkey"] = answer
        result["passkey_found"] = passkey_found(out_text, answer)
    if args.json:
        print(json.dumps({"text": out_text, **result}))
        return 0
    if answer is not None:
        print(f"prompt: built-in passkey demo (plain text), {len(ids)} tokens, pass key {answer} at depth 50 %")
    elif chat:
        print(f"prompt: {len(ids)} tokens in the model's chat template (--no-chat sends the text as it is)")
    print(f"output: {out_text!r}")
    print(f"mode {name} ({result['config']}), {stats.summary()}")
    print(f"prefill {gen.prefill_s:.3f} s for {len(ids)} tokens, decode {gen.decode_s:.3f} s for "
          f"{len(gen.tokens)} tokens")
    if answer is not None:
        print(f"passkey found: {result['passkey_found']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elastic-attn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(sub)  # the main job: first in --help

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
    p.add_argument("--passkey-length", type=int, default=None,
                   help="length in tokens of the built-in passkey demo prompt (default: twice sink + local, at "
                        "least 2048, so sparse heads prune)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap your prompt in the model's chat template (default: when the tokenizer has one); "
                        "--no-chat sends it as plain text. The built-in passkey prompt is always plain text")
    p.add_argument("--truncate", choices=TRUNCATE, default=None,
                   help="cut a prompt longer than the model's context: left keeps its end, middle both ends "
                        "(default: refuse it)")
    p.add_argument("--mode", help="router (default with a router), full (default without), sparse, or "
                                  "static:MSR (retrieval-score ranked static hybrid, e.g. static:0.5)")
    p.add_argument("--sparsity-bias", type=float, default=0.0,
                   help="added to every router logit before its decision: > 0 sparser, < 0 denser (default 0)")
    p.add_argument("--score-samples", type=int, default=8, help="passkey prompts for static:MSR head ranking "
                                                                "(scores are cached per model)")
    p.add_argument("--score-length", type=int, default=1024, help="their length in tokens")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate (default 16 for the built-in prompt, 64 for yours)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_generate)
    add_training_parsers(sub)  # train, make-data
    add_eval_parser(sub)  # eval
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input or an unreadable / unwritable file: one line, no traceback
        print(f"elastic-attn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
