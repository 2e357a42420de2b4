"""Run every task x length x method on identical prompts with greedy decoding.

Methods (one run compares them on the same prompts):
- `full`: every KV head full attention;
- `sparse`: every KV head the config's sparse mode;
- `static:MSR`: a static hybrid, heads ranked by retrieval score (passkey prompts), the top
  (1 - MSR) of them full;
- `static:elastic`: the same static hybrid at the mean MSR the `elastic` method chose over the whole run
  (run after every other method, on the same prompts): the fair static baseline of a router;
- `gate:PATH`: a saved static gate (`save_static_gate`);
- `elastic`: the attached / loaded router decides per prompt.

Prompts of one cell with exactly the same token length run as one batch (up to `batch_size`); no
padding is ever added, so a sample's result does not depend on its batch. Prefill time per sample is
the batch's prefill time divided by the batch size.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .. import baselines
from ..checks import parse_lengths, split_list  # noqa: F401 (parse_lengths: this module's name for it)
from ..cache import ElasticCache
from ..config import ElasticConfig
from ..control import force_mode
from ..gate import load_static_gate
from ..integrations.hf import attach, runtime_of
from ..metrics import routing_stats
from . import longbench, mix, ruler
from .sample import EvalSample


@dataclass
class Method:
    name: str  # as given, e.g. "static:0.7"
    kind: str  # full | sparse | static | gate | elastic
    arg: object = None  # MSR for static, path for gate


def parse_methods(spec) -> list[Method]:
    """'full,sparse,static:0.7,gate:PATH,elastic' (or a list of such strings) -> [Method]."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no methods given; use for example 'full,sparse,static:0.7,elastic'")
    out = []
    for item in items:
        kind, _, arg = item.partition(":")
        if kind in ("full", "sparse", "elastic") and not arg:
            out.append(Method(item, kind))
        elif kind == "static" and arg == "elastic":
            out.append(Method(item, "static", "elastic"))
        elif kind == "static" and arg:
            try:
                msr = float(arg)
            except ValueError:
                raise ValueError(f"method {item!r}: the MSR after 'static:' must be a number in [0, 1]") from None
            if not 0.0 <= msr <= 1.0:
                raise ValueError(f"method {item!r}: MSR {msr} must lie in [0, 1]")
            out.append(Method(item, "static", msr))
        elif kind == "gate" and arg:
            out.append(Method(item, "gate", arg))
        else:
            raise ValueError(f"unknown method {item!r}; use full, sparse, static:MSR, static:elastic, gate:PATH "
                             "or elastic")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"a method is listed twice in {names}")
    if "static:elastic" in names and "elastic" not in names:
        raise ValueError("method 'static:elastic' takes the MSR of the 'elastic' method: list 'elastic' too")
    return out


def parse_tasks(spec) -> list[str]:
    """'a,b', 'a b' or ['a', 'b,c'] -> task names, each checked."""
    items = split_list(spec)
    if not items:
        raise ValueError("no tasks given")
    for task in items:
        if task not in ruler.TASKS and task not in mix.TASKS and not longbench.is_longbench_task(task):
            raise ValueError(f"unknown task {task!r}; RULER tasks: {', '.join(ruler.task_names())}; "
                             f"make-data tasks: {', '.join(mix.task_names())}; "
                             f"LongBench tasks: {', '.join(longbench.task_names())}")
    return items


def task_category(task: str) -> str | None:
    """'sensitive' or 'robust' for RULER (all retrieval or aggregation over the whole context: sensitive)
    and make-data tasks; None for LongBench tasks."""
    if task in mix.TASKS:
        return mix.category(task)
    return "sensitive" if task in ruler.TASKS else None


def build_samples(tokenizer, task: str, length: int, n: int, seed: int = 0, data_dir=None) -> list[EvalSample]:
    """The prompts of one cell: RULER or make-data samples generated at `length` tokens, or LongBench
    records cut to it."""
    if task in ruler.TASKS:
        return ruler.ruler_samples(tokenizer, task, length, n, seed)
    if task in mix.TASKS:
        return mix.mix_samples(tokenizer, task, length, n, seed)
    return longbench.longbench_samples(tokenizer, task, length, n, data_dir)


# ---------------------------------------------------------------- model setup

def prepare_model(model, router=None, **overrides):
    """Attach routers for evaluation: load `router` (a router directory) or attach a fresh config.

    overrides (sink, local, sparse_mode, retrieval_mode, ...; None = keep) replace fields of the
    config every method then uses, so all methods share one sparse-mode definition."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if router is not None:
        from ..adapter import load_router
        load_router(model, router)
    elif getattr(model, "elastic_runtime", None) is None:
        attach(model, ElasticConfig(**overrides))
        return model
    rt = runtime_of(model)
    if overrides:
        rt.config = dataclasses.replace(rt.config, **overrides)
    return model


def method_modes(model, tokenizer, methods: list[Method], score_samples: int = 12, score_length: int = 2048,
                 progress: bool = True) -> tuple[dict, torch.Tensor | None]:
    """force_mode argument of every method; retrieval scores (or None) when a static method needs them."""
    scores = None
    if any(m.kind == "static" for m in methods):  # static:MSR and static:elastic rank heads by these
        scores = baselines.retrieval_scores(model, tokenizer, samples=score_samples, length=score_length,
                                            progress=progress, cache=True)
    modes = {}
    for m in methods:
        if m.kind in ("full", "sparse"):
            modes[m.name] = m.kind
        elif m.kind == "elastic":
            modes[m.name] = "router"
        elif m.kind == "gate":
            modes[m.name] = load_static_gate(model, m.arg).mask()
        elif m.arg != "elastic":  # static:elastic gets its mask once the elastic method has run (run_eval)
            modes[m.name] = baselines.static_mask(scores, m.arg)
    return modes, scores


# ---------------------------------------------------------------- decoding

def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return ids


@torch.no_grad()
def greedy_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, stop_at_newline: bool = False,
                 eos_ids: set[int] | None = None):
    """Greedy decoding of equally long prompts from an ElasticCache.

    Returns (texts, token counts, prefill_s, decode_s, stats, (kv bytes held, kv bytes of a plain cache))
    with the cache as it was after the prompt.

    A row stops at an end-of-sequence token (dropped) or, with stop_at_newline, once its text has a
    line break after a letter or digit (so "Answer:\n1234" still reaches the number)."""
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("greedy_batch needs prompts of one length (no padding is used)")
    device = next(model.parameters()).device
    eos_ids = _eos_ids(model, tokenizer) if eos_ids is None else eos_ids
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ids = torch.tensor(prompts, device=device)
    # Only the last position's logits are needed: skipping the others saves the LM head's work at prefill.
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    # Decode from the compact cache: SSA heads keep only their sink and window (cache.py).
    cache = ElasticCache(model)
    sync()
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, **keep, **{cache_arg: cache})
    nxt = out.logits[:, -1].argmax(-1)
    sync()
    prefill = time.perf_counter() - start
    stats = routing_stats(model)
    kv = (cache.kv_bytes(), cache.full_kv_bytes())
    b = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    start = time.perf_counter()
    for step in range(max_new_tokens):
        for r, tok in enumerate(nxt.tolist()):
            if done[r]:
                continue
            if tok in eos_ids:
                done[r] = True
                continue
            tokens[r].append(tok)
            if stop_at_newline and _line_done(tokenizer.decode(tokens[r])):
                done[r] = True
        if all(done) or step == max_new_tokens - 1:
            break
        out = model(input_ids=nxt[:, None], use_cache=True, **{cache_arg: cache})
        nxt = out.logits[:, -1].argmax(-1)
    sync()
    decode = time.perf_counter() - start
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    return texts, [len(t) for t in tokens], prefill, decode, stats, kv


def _line_done(text: str) -> bool:
    """True once a line with a letter or digit has ended."""
    match = re.search(r"[^\W_]", text)
    return match is not None and "\n" in text[match.start():]


# ---------------------------------------------------------------- the run

@dataclass
class EvalResults:
    records: list[dict]  # one per (task, length, method, sample)
    config: dict  # what was run: tasks, lengths, methods, elastic config, model
    head_shape: tuple[int, int]  # (layers, kv_heads)
    retrieval_scores: list | None = None
    cells: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not self.cells:
            self.cells = summarise(self.records)

    @property
    def methods(self) -> list[str]:
        return list(self.config["methods"])

    @property
    def tasks(self) -> list[str]:
        return list(self.config["tasks"])

    @property
    def lengths(self) -> list[int]:
        return list(self.config["lengths"])

    def full_fraction(self, method: str, task: str | None = None) -> torch.Tensor:
        """[layers, kv_heads] fraction of the samples (of a task, or all) whose head ran full attention."""
        rows = [r for r in self.records if r["method"] == method and (task is None or r["task"] == task)]
        if not rows:
            return torch.full(self.head_shape, float("nan"))
        return torch.tensor([r["full_heads"] for r in rows], dtype=torch.float32).mean(0)

    def to_dict(self) -> dict:
        return {"config": self.config, "cells": self.cells, "records": self.records,
                "retrieval_scores": self.retrieval_scores,
                "full_fraction": {m: self.full_fraction(m).tolist() for m in self.methods}}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(records: list[dict]) -> list[dict]:
    """One row per (task, length, method): score 0-100 and the means of MSR, ESR and timings."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["length"], r["method"]), []).append(r)
    cells = []
    for (task, length, method), rows in groups.items():
        cell = {"task": task, "length": length, "method": method, "n": len(rows),
                "score": 100 * _mean([r["score"] for r in rows]),
                "msr": _mean([r["msr"] for r in rows]), "esr": _mean([r["esr"] for r in rows]),
                "esr_all_layers": _mean([r["esr_all_layers"] for r in rows]),
                "prefill_s": _mean([r["prefill_s"] for r in rows]),
                "decode_s": _mean([r["decode_s"] for r in rows]),
                "kv_ratio": _mean([r.get("kv_ratio") for r in rows]),  # absent in results written before it
                "prompt_tokens": _mean([r["prompt_tokens"] for r in rows])}
        buckets = {}
        for r in rows:
            if "bucket" in r["info"]:
                buckets.setdefault(r["info"]["bucket"], []).append(r["score"])
        if buckets:
            cell["buckets"] = {k: 100 * _mean(v) for k, v in sorted(buckets.items())}
        cells.append(cell)
    return cells


def run_eval(model, tokenizer, tasks, lengths, methods, samples: int = 5, *, seed: int = 0, data_dir=None,
             batch_size: int = 1, max_new_tokens: int | None = None, score_samples: int = 12,
             score_length: int | None = None, progress: bool = True, on_cell=None) -> EvalResults:
    """Evaluate an attached model (see `prepare_model`). tasks / lengths / methods: lists or comma strings.

    max_new_tokens, when given, caps every task's own generation length (for quick runs).
    on_cell, when given, is called with the partial EvalResults after every task x length cell."""
    tasks, lengths, methods = parse_tasks(tasks), parse_lengths(lengths), parse_methods(methods)
    if samples < 1:
        raise ValueError(f"samples={samples} must be at least 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    runtime_of(model)  # a clear error when the model has no routers
    score_length = score_length or min(2048, min(lengths))
    modes, scores = method_modes(model, tokenizer, methods, score_samples, score_length, progress)
    cells = {}
    for task in tasks:
        for length in lengths:
            cells[task, length] = build_samples(tokenizer, task, length, samples, seed, data_dir)
    total = sum(len(v) for v in cells.values()) * len(methods)
    records: list[dict] = []
    bar = tqdm(total=total, desc="eval", unit="sample", disable=not progress)
    matched = [m for m in methods if m.arg == "elastic"]  # static at the elastic MSR: after everything else
    extra = {}

    def report():
        return _results(model, records, tasks, lengths, methods, samples, seed, batch_size, max_new_tokens,
                        score_samples, score_length, scores, extra)

    def run_cells(chosen):
        for (task, length), cell in cells.items():
            for method in chosen:
                with force_mode(model, modes[method.name]):
                    for batch in _batches(cell, batch_size):
                        records.extend(_run_batch(model, tokenizer, batch, task, length, method.name,
                                                  max_new_tokens))
                        bar.update(len(batch))
                        bar.set_postfix_str(f"{task} {length} {method.name}")
            if on_cell is not None:
                on_cell(report())

    run_cells([m for m in methods if m not in matched])
    if matched:
        msr = _mean([r["msr"] for r in records if r["method"] == "elastic"])
        extra["static_elastic_msr"] = msr
        for m in matched:
            modes[m.name] = baselines.static_mask(scores, msr)
        run_cells(matched)
    bar.close()
    return report()


def _results(model, records, tasks, lengths, methods, samples, seed, batch_size, max_new_tokens, score_samples,
             score_length, scores, extra=None) -> EvalResults:
    rt = runtime_of(model)
    config = {"tasks": tasks, "lengths": lengths, "methods": [m.name for m in methods], "samples": samples,
              "seed": seed, "batch_size": batch_size, "max_new_tokens_cap": max_new_tokens,
              "elastic_config": rt.config.to_dict(), "model_type": model.config.model_type,
              "layers": rt.num_layers, "kv_heads": rt.kv_heads, "score_samples": score_samples,
              "score_length": score_length if scores is not None else None,
              "sparsity_bias": rt.sparsity_bias, "categories": {t: task_category(t) for t in tasks},
              **(extra or {})}
    return EvalResults(list(records), config, (rt.num_layers, rt.kv_heads),
                       scores.tolist() if scores is not None else None)


def _batches(cell: list[EvalSample], batch_size: int):
    by_length: dict[int, list[EvalSample]] = {}
    for s in cell:
        by_length.setdefault(s.length, []).append(s)
    for group in by_length.values():
        for i in range(0, len(group), batch_size):
            yield group[i:i + batch_size]


def _run_batch(model, tokenizer, batch, task, length, method, cap) -> list[dict]:
    max_new = min(batch[0].max_new_tokens, cap) if cap else batch[0].max_new_tokens
    stop = batch[0].stop_at_newline
    texts, counts, prefill, decode, stats, (kv, kv_full) = greedy_batch(
        model, tokenizer, [s.input_ids for s in batch], max_new, stop)
    out = []
    for row, (s, text) in enumerate(zip(batch, texts)):
        out.append({"task": task, "length": length, "method": method, "index": s.info.get("index", row),
                    "prompt_tokens": s.length, "prediction": text, "answers": s.answers,
                    "score": float(s.scorer(text)), "msr": float(stats.msr[row]), "esr": float(stats.esr[row]),
                    "esr_all_layers": float(stats.esr_all_layers[row]), "prefill_s": prefill / len(batch),
                    "decode_s": decode / len(batch), "new_tokens": counts[row], "kv_ratio": kv / kv_full,
                    "full_heads": (~stats.decisions[row]).int().tolist(),
                    "info": {k: v for k, v in s.info.items() if k not in ("index",)}})
    return out
