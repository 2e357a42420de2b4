"""Training data: JSONL records -> tokenised samples with targets -> length-grouped micro-batches.

A record is one line {"task": str, "category": "robust" | "sensitive", "prompt": str, "answer": str}.
Each sample belongs to one *constraint*: its category, or its task when the task was given a target
of its own (`--target TASK=VALUE`). Every constraint has one target MSR and its own Lagrange multipliers.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

CATEGORIES = ("robust", "sensitive")
DEFAULT_TARGETS = {"robust": 1.0, "sensitive": 0.7}
FIELDS = ("task", "category", "prompt", "answer")


@dataclass
class Record:
    task: str
    category: str
    prompt: str
    answer: str


def load_records(path) -> list[Record]:
    """Read and check a JSONL file; any malformed line raises ValueError naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"training data file {str(path)!r} does not exist")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object "
                                 f"with the fields {list(FIELDS)}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object with the fields {list(FIELDS)}, "
                                 f"got {type(obj).__name__}")
            missing = [k for k in FIELDS if k not in obj]
            if missing:
                raise ValueError(f"{where}: missing field(s) {missing}; each record needs {list(FIELDS)}")
            bad = [k for k in FIELDS if not isinstance(obj[k], str)]
            if bad:
                raise ValueError(f"{where}: field(s) {bad} must be strings")
            if obj["category"] not in CATEGORIES:
                raise ValueError(f"{where}: category {obj['category']!r} is not one of {list(CATEGORIES)}")
            if not obj["prompt"] or not obj["answer"] or not obj["task"]:
                raise ValueError(f"{where}: task, prompt and answer must be non-empty")
            records.append(Record(obj["task"], obj["category"], obj["prompt"], obj["answer"]))
    if not records:
        raise ValueError(f"training data file {str(path)!r} holds no records")
    return records


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def parse_target(text: str) -> tuple[str, float]:
    """'NAME=VALUE' -> (NAME, VALUE), VALUE in [0, 1]."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--target {text!r}: write NAME=VALUE, NAME a category or a task, e.g. sensitive=0.5")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"--target {text!r}: {value!r} is not a number") from None
    return name, check_target(name, number)


def check_target(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"target MSR {value} for {name!r} is impossible: an MSR is a fraction of heads and "
                         "lies in [0, 1] (1.0 = every head sparse, 0.0 = every head full)")
    return float(value)


@dataclass
class Targets:
    """constraint of each (task, category), and the target of each constraint."""

    of_task: dict[str, str]  # task -> constraint name
    target: dict[str, float]  # constraint name -> target MSR

    @property
    def names(self) -> list[str]:
        return sorted(self.target)

    @classmethod
    def build(cls, records: list[Record], overrides: dict[str, float] | None = None,
              single: str | None = None) -> "Targets":
        """Categories get their default targets unless overridden; a task named in `overrides` becomes a
        constraint of its own. `single` (static gate): one constraint of that name for every sample, its
        target given in overrides[single] or else the mean target the samples would have had."""
        overrides = dict(overrides or {})
        for name, value in overrides.items():
            check_target(name, value)
        tasks = {}
        for r in records:
            if tasks.setdefault(r.task, r.category) != r.category:
                raise ValueError(f"task {r.task!r} appears with categories {tasks[r.task]!r} and "
                                 f"{r.category!r}; a task belongs to one category")
        both = set(tasks) & set(CATEGORIES)
        if both:
            raise ValueError(f"task name(s) {sorted(both)} equal a category name; rename the task(s)")
        known = set(tasks) | set(CATEGORIES) | ({single} if single else set())
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"--target names {unknown} are neither a category {list(CATEGORIES)} nor a task of "
                             f"the data {sorted(tasks)}")
        cat_target = {c: overrides.get(c, DEFAULT_TARGETS[c]) for c in CATEGORIES}
        of_task, target = {}, {}
        for task, cat in tasks.items():
            name = task if task in overrides else cat
            of_task[task] = name
            target[name] = overrides[task] if task in overrides else cat_target[cat]
        if single is not None:
            per_sample = [target[of_task[r.task]] for r in records]
            value = overrides.get(single, sum(per_sample) / len(per_sample))
            return cls({task: single for task in tasks}, {single: check_target(single, value)})
        return cls(of_task, target)


@dataclass
class Sample:
    ids: list[int]  # prompt then answer
    prompt_len: int
    constraint: int  # index into Targets.names
    target: float


def encode(records: list[Record], tokenizer, max_len: int, targets: Targets) -> tuple[list[Sample], int]:
    """Tokenise; a prompt too long for max_len loses its middle (start and end kept: instructions and the
    question live there). Returns the samples and how many prompts were cut."""
    names = targets.names
    samples, cut = [], 0
    for i, r in enumerate(records):
        prompt = tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(r.answer, add_special_tokens=False)["input_ids"]
        room = max_len - len(answer)
        if room < 2:
            raise ValueError(f"record {i + 1} (task {r.task!r}): its answer has {len(answer)} tokens, which leaves "
                             f"no room for the prompt within --max-len {max_len}; raise --max-len")
        if len(prompt) > room:
            head = room // 2
            prompt = prompt[:head] + prompt[len(prompt) - (room - head):]
            cut += 1
        name = targets.of_task[r.task]
        samples.append(Sample(prompt + answer, len(prompt), names.index(name), targets.target[name]))
    return samples, cut


class Batcher:
    """A deterministic stream of micro-batches: a pure function of (seed, epoch), so a resumed run that
    knows its step sees the same data order. Within each window of 64 micro-batches' worth of samples the
    samples are sorted by length, so a micro-batch holds prompts of similar length (little padding)."""

    def __init__(self, samples: list[Sample], micro_batch: int, seed: int, window: int = 64):
        if micro_batch < 1:
            raise ValueError(f"--batch-size {micro_batch} must be at least 1")
        if len(samples) < micro_batch:
            raise ValueError(f"{len(samples)} samples are fewer than one micro-batch of {micro_batch}")
        self.samples, self.micro_batch, self.seed, self.window = samples, micro_batch, seed, window
        self._epochs: dict[int, list[list[int]]] = {}
        span = micro_batch * window
        self.per_epoch = sum(min(span, len(samples) - start) // micro_batch for start in range(0, len(samples), span))

    def epoch(self, e: int) -> list[list[int]]:
        if e not in self._epochs:
            rng = random.Random(f"{self.seed}:{e}")
            order = list(range(len(self.samples)))
            rng.shuffle(order)
            span = self.micro_batch * self.window
            batches = []
            for start in range(0, len(order), span):
                chunk = sorted(order[start:start + span], key=lambda i: len(self.samples[i].ids))
                full = len(chunk) - len(chunk) % self.micro_batch
                batches += [chunk[j:j + self.micro_batch] for j in range(0, full, self.micro_batch)]
            rng.shuffle(batches)
            self._epochs = {e: batches}  # keep one epoch in memory
        return self._epochs[e]

    def micro_batches(self, step: int, count: int) -> list[list[int]]:
        """The `count` micro-batches of global step `step` (0-based)."""
        return [self.epoch(k // self.per_epoch)[k % self.per_epoch] for k in range(step * count, (step + 1) * count)]


def collate(samples: list[Sample], pad_id: int, device) -> dict:
    """Right-padded tensors of one micro-batch. attention_mask is None when no row is padded."""
    import torch  # here, not at the top: the train command's options import this module (fast --help)

    longest = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    real = torch.zeros(len(samples), longest, dtype=torch.bool)
    prompt = torch.zeros_like(real)
    answer = torch.zeros_like(real)
    for row, s in enumerate(samples):
        ids[row, :len(s.ids)] = torch.tensor(s.ids)
        real[row, :len(s.ids)] = True
        prompt[row, :s.prompt_len] = True
        answer[row, s.prompt_len:len(s.ids)] = True
    return {
        "input_ids": ids.to(device),
        "attention_mask": None if bool(real.all()) else real.long().to(device),
        "prompt_mask": prompt.to(device),
        "answer_mask": answer.to(device),
        "constraint": torch.tensor([s.constraint for s in samples], device=device),
        "target": torch.tensor([s.target for s in samples], device=device),
        "first_answer": min(s.prompt_len for s in samples),
    }
