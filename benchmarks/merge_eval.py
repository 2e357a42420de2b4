"""Merge evaluation runs of one model over the same prompts into one report (table, JSON, CSV, plots).

Runs that split the methods or the tasks of one evaluation over several processes or GPUs (for example
`full` on one GPU while the router trains on the other, `elastic` split by task, then `static:MSR` at the
elastic method's mean MSR) come together here as if one `elastic-attn eval` had run them all.

python benchmarks/merge_eval.py --out DIR RUN_DIR [RUN_DIR ...]   (each RUN_DIR holds a results.json)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from elastic_attention.eval.report import markdown_table, write_report
from elastic_attention.eval.runner import EvalResults


def merge(dirs: list[Path]) -> EvalResults:
    runs = [json.loads((d / "results.json").read_text()) for d in dirs]
    records = [r for run in runs for r in run["records"]]
    keys = {(r["task"], r["length"], r["method"], r["index"]) for r in records}
    if len(keys) != len(records):
        raise ValueError("two runs hold the same (task, length, method, sample): merge runs that split the work")
    config = dict(runs[0]["config"])
    config["methods"] = list(dict.fromkeys(m for run in runs for m in run["config"]["methods"]))
    config["tasks"] = list(dict.fromkeys(t for run in runs for t in run["config"]["tasks"]))
    config["categories"] = {k: v for run in runs for k, v in run["config"].get("categories", {}).items()}
    for run in runs:
        for key in ("static_elastic_msr", "score_samples", "score_length"):
            if run["config"].get(key) is not None:
                config[key] = run["config"][key]
    config["merged_from"] = [str(d) for d in dirs]
    scores = next((run["retrieval_scores"] for run in runs if run.get("retrieval_scores")), None)
    head_shape = (config["layers"], config["kv_heads"])
    return EvalResults(records, config, head_shape, scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--static-elastic-msr", type=float, default=None,
                    help="the MSR the static method ran at, when it was the elastic method's mean")
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    results = merge([Path(d) for d in args.runs])
    if args.static_elastic_msr is not None:
        results.config["static_elastic_msr"] = args.static_elastic_msr
    paths = write_report(results, args.out)
    print(markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
