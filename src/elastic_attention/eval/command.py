"""`elastic-attn eval`: the command line of the evaluation, and `evaluate`, its Python twin."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

DTYPES = ("bfloat16", "float16", "float32")  # torch dtype names; torch itself loads when a command runs


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="compare full, sparse, static and elastic attention on RULER / LongBench tasks",
        description="Run every task x length x method on identical prompts (greedy decoding); print a markdown "
                    "table and write results.json, results.csv, table.md and PNG plots to --out.")
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), a .gguf file or a "
                                                       "transformers model directory")
    p.add_argument("--router", default=None, help="trained router directory, or 'default' for the router shipped "
                                                  "for the model (needed by the 'elastic' method)")
    p.add_argument("--methods", default="full,sparse,static:0.7",
                   help="comma list of full, sparse, static:MSR, static:elastic (the static hybrid at the elastic "
                        "method's mean MSR), gate:PATH, elastic (default %(default)s)")
    p.add_argument("--tasks", nargs="+", default="niah_single_1,niah_single_2,niah_multikey_1,vt",
                   help="RULER tasks (niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, vt, "
                        "cwe, fwe), make-data tasks (passkey, multikey_needle, kv_retrieval, variable_tracking, "
                        "multidoc_qa, prose_continuation, code_continuation, fewshot_pattern, topic_ending; drawn "
                        "apart from any training seed) and LongBench tasks (e.g. hotpotqa, hotpotqa_e, longbench_v2; "
                        "need --data-dir), comma or space separated")
    p.add_argument("--lengths", nargs="+", default="2048,4096",
                   help="prompt lengths in tokens (RULER) or truncation budgets (LongBench), e.g. 2048,4096 or "
                        "2048 4096 or 2k,4k (default %(default)s)")
    p.add_argument("--samples", type=int, default=5, help="samples per task and length (default %(default)s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--data-dir", default=None, help="directory with the LongBench / LongBench-v2 files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1, help="equal-length prompts decoded together")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap every task's generation length")
    p.add_argument("--sink", type=int, default=None, help="SSA sink tokens (default: the config's, 128)")
    p.add_argument("--local", type=int, default=None, help="SSA local window (default: the config's, 2048)")
    p.add_argument("--sparse-mode", choices=("ssa", "xa"), default=None)
    p.add_argument("--retrieval-mode", choices=("fa", "xa"), default=None)
    p.add_argument("--sparsity-bias", type=float, default=0.0,
                   help="added to every router logit before its decision: > 0 sparser, < 0 denser (default 0)")
    p.add_argument("--score-samples", type=int, default=12, help="passkey prompts for the retrieval scores "
                                                                 "of static:MSR")
    p.add_argument("--score-length", type=int, default=None, help="their length (default min(2048, lengths))")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_command)
    return p


def run_command(args) -> int:
    command = "elastic-attn " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    results, paths = evaluate(
        model=args.model, router=args.router, methods=args.methods, tasks=args.tasks, lengths=args.lengths,
        samples=args.samples, out=args.out, data_dir=args.data_dir, seed=args.seed, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, sink=args.sink, local=args.local, sparse_mode=args.sparse_mode,
        retrieval_mode=args.retrieval_mode, sparsity_bias=args.sparsity_bias, score_samples=args.score_samples,
        score_length=args.score_length,
        device=args.device, dtype=args.dtype, threads=args.threads, plots=not args.no_plots,
        progress=not args.quiet, command=command)
    from .report import markdown_table
    print(markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def evaluate(model="default", tokenizer=None, *, router=None, methods="full,sparse,static:0.7",
             tasks="niah_single_1", lengths="2048", samples=5, out=None, data_dir=None, seed=0, batch_size=1,
             max_new_tokens=None, sink=None, local=None, sparse_mode=None, retrieval_mode=None, sparsity_bias=0.0,
             score_samples=12, score_length=None, device="cpu", dtype="float32", threads=None, plots=True,
             progress=True, command=None):
    """Load (or take) a model, attach / load routers, run every cell, write the report to `out`.

    model: a name or path for `load_model`, or a model object (then give `tokenizer`).
    Returns (EvalResults, {kind: path}) -- paths empty when out is None."""
    import torch

    from ..adapter import check_router_dir
    from ..checks import check_lengths_fit, check_out_dir, resolve_device
    from ..control import check_sparsity_bias, sparsity_bias as sparsity_bias_of
    from ..models import load_model, load_model_config
    from .report import write_report
    from .runner import parse_lengths, parse_methods, parse_tasks, prepare_model, run_eval

    # Every check that needs no weights runs first: bad input fails in a second, not after a model load.
    parsed = parse_methods(methods)
    check_sparsity_bias(sparsity_bias)
    parse_tasks(tasks)
    parsed_lengths = parse_lengths(lengths)
    if any(m.kind == "elastic" for m in parsed) and router is None and (
            isinstance(model, str) or getattr(model, "elastic_runtime", None) is None):
        raise ValueError("method 'elastic' needs a trained router: give --router PATH")
    if router is not None and str(router) != "default" and not Path(router).is_dir():
        raise ValueError(f"router directory {str(router)!r} does not exist")
    for m in parsed:
        if m.kind == "gate" and not Path(m.arg).is_dir():
            raise ValueError(f"method {m.name!r}: gate directory {m.arg!r} does not exist")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ValueError(f"data directory {str(data_dir)!r} does not exist")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    device = resolve_device(device)
    model_config = load_model_config(str(model)) if isinstance(model, (str, Path)) else model.config
    check_lengths_fit(parsed_lengths, model_config)
    if router is not None and str(router) != "default":  # a router for another model: say so before loading
        check_router_dir(router, model_config)
    if out is not None:  # last: it creates the directory
        check_out_dir(out)
    if threads:
        torch.set_num_threads(threads)
    if isinstance(model, (str, Path)):
        model, tokenizer = load_model(str(model), device=device, dtype=getattr(torch, dtype))
    elif tokenizer is None:
        raise ValueError("give the tokenizer along with a model object")
    prepare_model(model, router=router, sink=sink, local=local, sparse_mode=sparse_mode,
                  retrieval_mode=retrieval_mode)
    start = time.time()

    def checkpoint(partial):  # a crash or a kill keeps the finished cells (no plots until the end)
        write_report(partial, out, plots=False)

    with sparsity_bias_of(model, sparsity_bias):
        results = run_eval(model, tokenizer, tasks, lengths, methods, samples, seed=seed, data_dir=data_dir,
                           batch_size=batch_size, max_new_tokens=max_new_tokens, score_samples=score_samples,
                           score_length=score_length, progress=progress,
                           on_cell=checkpoint if out is not None else None)
    results.config.update(command=command, wall_s=time.time() - start, router=str(router) if router else None,
                          date=time.strftime("%Y-%m-%d %H:%M:%S"), device=str(device),
                          torch_threads=torch.get_num_threads())
    paths = write_report(results, out, plots=plots) if out is not None else {}
    return results, paths


def main(argv=None) -> int:
    """`python -m elastic_attention.eval.command ...` (the same as `elastic-attn eval ...`)."""
    parser = argparse.ArgumentParser(prog="elastic-attn")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"elastic-attn eval: error: {err}\n")


if __name__ == "__main__":
    raise SystemExit(main(["eval"] + sys.argv[1:] if len(sys.argv) < 2 or sys.argv[1] != "eval" else None))
