"""The training mix's tasks (make-data) as evaluation tasks: same generators, unseen draws, scored.

Task names are make-data's: passkey, multikey_needle, kv_retrieval, variable_tracking, multidoc_qa
(sensitive) and prose_continuation, code_continuation, fewshot_pattern, topic_ending (robust). Sample i
of task T at length L and seed s draws from random.Random(f"eval|{s}|{T}|{L}|{i}"), a namespace no
`make-data` seed reaches, so a router is never evaluated on a prompt it was trained on.
"""

from __future__ import annotations

import random

from ..training.make_data import TASKS, Counter
from . import scoring as M
from .sample import EvalSample, token_ids


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _contains(references):
    return lambda pred: M.string_match_all(pred, references)


# task -> (max new tokens, stop at the first line break, scorer builder from the reference answer)
SCORING = {
    "passkey": (12, False, lambda ans: _contains([ans.strip()])),
    "multikey_needle": (16, False, lambda ans: _contains([ans.strip()])),
    "kv_retrieval": (40, False, lambda ans: _contains([ans.strip().rstrip('"')])),
    "variable_tracking": (30, False, lambda ans: _contains(ans.split())),
    "multidoc_qa": (12, True, lambda ans: _contains([ans.strip()])),
    "prose_continuation": (24, False, lambda ans: lambda pred: M.qa_f1_score(pred, ans)),
    "code_continuation": (32, True, lambda ans: lambda pred: M.code_sim_score(pred, ans.splitlines()[0])),
    "fewshot_pattern": (12, True, lambda ans: lambda pred: float(_first_line(pred) == ans.strip())),
    "topic_ending": (8, True, lambda ans: lambda pred: float(ans.strip() in _first_line(pred))),
}


def task_names() -> list[str]:
    return list(TASKS)


def category(task: str) -> str:
    return TASKS[task][0]


def mix_samples(tokenizer, task: str, length: int, n: int, seed: int = 0) -> list[EvalSample]:
    """n prompts of a make-data task of about `length` tokens, with their scorers."""
    if task not in TASKS:
        raise ValueError(f"unknown make-data task {task!r}; known: {', '.join(TASKS)}")
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    if length < 256:
        raise ValueError(f"length={length} is too short for make-data task {task!r}; use at least 256 tokens")
    count = Counter(tokenizer)
    max_new, stop, scorer = SCORING[task]
    out = []
    for i in range(n):
        prompt, answer = TASKS[task][1](random.Random(f"eval|{seed}|{task}|{length}|{i}"), length, count)
        out.append(EvalSample(task=task, input_ids=token_ids(tokenizer, prompt), answers=[answer.strip()],
                              max_new_tokens=max_new, scorer=scorer(answer), stop_at_newline=stop,
                              info={"index": i, "seed": seed, "requested_length": length,
                                    "category": category(task)}))
    return out
