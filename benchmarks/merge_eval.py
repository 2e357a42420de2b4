"""Merge evaluation runs of one model over the same prompts into one report (table, JSON, CSV, plots).

Runs that split the methods or the tasks of one evaluation over several processes or GPUs (for example
`full` on one GPU while the router trains on the other, `elastic` split by task, then `static:MSR` at the
elastic method's mean MSR) come together here as if one `elastic-attn eval` had run them all.

python benchmarks/merge_eval.py --out DIR RUN_DIR [RUN_DIR ...]   (each RUN_DIR holds a results.json)

--methods full keeps only those methods' records: a later run on the same prompts (same tasks, lengths,
samples, seed and model) reuses an earlier run's full-attention records instead of evaluating them again.
--check-prompts first rebuilds the prompts here and exits with 3 when any differs from the records' (token
count or answers): the tokenizer read from the GGUF file can split text differently under another
transformers version.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from elastic_attention.eval.report import markdown_table, write_report
from elastic_attention.eval.runner import EvalResults


def merge(dirs: list[Path], methods: list[str] | None = None) -> EvalResults:
    runs = [json.loads((d / "results.json").read_text()) for d in dirs]
    records = [r for run in runs for r in run["records"] if methods is None or r["method"] in methods]
    if not records:
        raise ValueError(f"no records of methods {methods} in {[str(d) for d in dirs]}")
    keys = {(r["task"], r["length"], r["method"], r["index"]) for r in records}
    if len(keys) != len(records):
        raise ValueError("two runs hold the same (task, length, method, sample): merge runs that split the work")
    config = dict(runs[0]["config"])
    config["methods"] = list(dict.fromkeys(r["method"] for r in records))
    config["tasks"] = list(dict.fromkeys(t for run in runs for t in run["config"]["tasks"]))
    config["categories"] = {k: v for run in runs for k, v in run["config"].get("categories", {}).items()}
    for run in runs:
        for key in ("static_elastic_msr", "score_samples", "score_length"):
            if run["config"].get(key) is not None:
                config[key] = run["config"][key]
    if not any(m.startswith("static") for m in config["methods"]):
        config.pop("static_elastic_msr", None)
    config["merged_from"] = [str(d) for d in dirs]
    scores = next((run["retrieval_scores"] for run in runs if run.get("retrieval_scores")), None)
    head_shape = (config["layers"], config["kv_heads"])
    return EvalResults(records, config, head_shape, scores)


def prompts_match(results: EvalResults) -> bool:
    """Whether every record's prompt (token count, answers) is what this machine builds for it now."""
    from elastic_attention.eval.runner import build_samples
    from elastic_attention.models import load_default_model

    _, tokenizer = load_default_model()
    cfg = results.config
    built = {}
    for task in cfg["tasks"]:
        for length in cfg["lengths"]:
            for i, s in enumerate(build_samples(tokenizer, task, length, cfg["samples"], cfg["seed"])):
                built[task, length, i] = (len(s.input_ids), list(s.answers))
    wrong = [r for r in results.records
             if built.get((r["task"], r["length"], r["index"])) != (r["prompt_tokens"], list(r["answers"]))]
    for r in wrong[:5]:
        print(f"prompt differs: {r['task']} {r['length']} #{r['index']}: {r['prompt_tokens']} tokens in the records, "
              f"{built.get((r['task'], r['length'], r['index']))} here")
    return not wrong


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--static-elastic-msr", type=float, default=None,
                    help="the MSR the static method ran at, when it was the elastic method's mean")
    ap.add_argument("--methods", default=None, help="comma list: keep only these methods' records")
    ap.add_argument("--check-prompts", action="store_true",
                    help="exit with 3 unless the records' prompts are the ones this machine builds")
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    results = merge([Path(d) for d in args.runs], args.methods.split(",") if args.methods else None)
    if args.check_prompts and not prompts_match(results):
        raise SystemExit(3)
    if args.static_elastic_msr is not None:
        results.config["static_elastic_msr"] = args.static_elastic_msr
    paths = write_report(results, args.out)
    print(markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
