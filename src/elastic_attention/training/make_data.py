"""Offline training mix for the default model: synthetic long prompts from text every Python ships.

Sensitive tasks (the answer sits somewhere in the long middle): passkey, multi-key needle, key-value
retrieval, variable tracking, multi-document fact QA. Robust tasks (the answer needs only the start and
the end of the prompt): continuation of local prose and code, few-shot pattern completion whose examples
sit near the end, and "which topic does this passage end on". Text comes from the standard library's
sources and docstrings of the Python that runs the command (so a mix is reproducible on one Python version).

Seeds: sample i of task T at length L draws from random.Random(f"{SEED_OFFSET + seed}:{T}:{L}:{i}"),
SEED_OFFSET = 10**6. Evaluation generators seed from small integers (passkey) or their own strings
("ruler|task|length|seed|index"), so no training prompt repeats an evaluation prompt's random draws.
"""

from __future__ import annotations

import ast
import functools
import json
import random
import string
import sysconfig
from pathlib import Path

SEED_OFFSET = 10**6
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
WORDS = ("amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "iris", "jasper", "kelp",
         "lagoon", "maple", "nectar", "onyx", "pepper", "quartz", "raven", "sable", "tundra", "umber", "velvet",
         "willow", "yarrow", "zephyr", "copper", "meadow", "falcon", "glacier", "pebble")
FIRST = ("Ada", "Boris", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko", "Luis",
         "Mira", "Nils", "Olga", "Pavel", "Rosa", "Sven", "Tara", "Umar")
LAST = ("Abbott", "Brandt", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Hale", "Ivanova", "Jensen",
        "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov", "Quinn", "Rossi", "Sato", "Varga")


# ------------------------------------------------------------------------------------------- text sources

@functools.lru_cache(maxsize=1)
def stdlib_modules() -> tuple[tuple[str, str], ...]:
    """(module name, source) of the standard library's top-level .py files, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if 2_000 <= len(text) <= 300_000 and not path.stem.startswith("_"):
            out.append((path.stem, text))
    if len(out) < 20:
        raise RuntimeError(f"found only {len(out)} standard-library sources under {root}; make-data needs them")
    return tuple(out)


@functools.lru_cache(maxsize=1)
def stdlib_paragraphs() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(module, paragraphs of its docstrings) for modules with at least 3 prose paragraphs."""
    out = []
    for name, source in stdlib_modules():
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        paragraphs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for para in (doc or "").split("\n\n"):
                    text = " ".join(para.split())
                    if len(text) >= 80 and not text.startswith((">>>", "-", "*")):
                        paragraphs.append(text)
        if len(paragraphs) >= 3:
            out.append((name, tuple(paragraphs)))
    return tuple(out)


class Counter:
    """Token counts of text pieces in the model's tokenizer (pieces are counted alone: sums are close)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def prose(rng: random.Random):
    """An endless stream of docstring paragraphs, module after module."""
    mods = stdlib_paragraphs()
    while True:
        _, paras = mods[rng.randrange(len(mods))]
        start = rng.randrange(len(paras))
        yield from paras[start:start + 8]


def clip(text: str, budget: int, count: Counter) -> str:
    """`text` cut at a word so that it has about `budget` tokens or fewer."""
    n = count(text)
    if n <= budget:
        return text
    words = text.split()
    return " ".join(words[:max(1, len(words) * max(budget, 1) // n)])


def fill(pieces, budget: int, count: Counter, sep: str = "\n\n") -> list[str]:
    """Take pieces until their token count reaches `budget` (at least one piece; the last one clipped)."""
    out, used = [], 0
    for piece in pieces:
        if out and used >= budget:
            break
        piece = clip(piece, max(budget - used, 16), count)
        out.append(piece)
        used += count(piece + sep)
    return out


def haystack(rng: random.Random, budget: int, count: Counter) -> list[str]:
    """Half the time the repeated filler sentences of the passkey test, else standard-library prose."""
    if rng.random() < 0.5:
        n = max(1, budget // max(1, count(FILLER)))
        return [FILLER.strip()] * n
    return fill(prose(rng), budget, count)


def insert(parts: list[str], items: list[str], rng: random.Random) -> list[str]:
    parts = list(parts)
    for item in items:
        parts.insert(rng.randint(0, len(parts)), item)
    return parts


def number(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


# ------------------------------------------------------------------------------------------ sensitive tasks

def passkey(rng, length, count):
    key = number(rng, 5)
    head = rng.choice(("There is an important piece of information hidden inside a lot of irrelevant text. "
                       "Find it and memorize it. I will quiz you about it.\n\n",
                       "A pass key is hidden somewhere in the long text below. Remember it.\n\n"))
    question = "\nWhat is the pass key? The pass key is"
    parts = haystack(rng, length - count(head + question) - 20, count)
    parts = insert(parts, [f"The pass key is {key}. Remember it. {key} is the pass key."], rng)
    return head + " ".join(parts) + question, " " + key


def multikey_needle(rng, length, count):
    keys = rng.sample(WORDS, 4)
    values = {k: number(rng, 7) for k in keys}
    asked = rng.choice(keys)
    head = "Some special magic numbers are hidden inside the following text. Make sure to memorize them.\n\n"
    question = (f"\nWhat is the special magic number for {asked} mentioned in the text? "
                f"The special magic number for {asked} is")
    parts = haystack(rng, length - count(head + question) - 80, count)
    parts = insert(parts, [f"One of the special magic numbers for {k} is: {values[k]}." for k in keys], rng)
    return head + " ".join(parts) + question, " " + values[asked]


def _uuid(rng) -> str:
    h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def kv_retrieval(rng, length, count):
    head = "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n{"
    pair = count(f'"{_uuid(rng)}": "{_uuid(rng)}", ')
    n = max(2, (length - 80) // pair)
    pairs = [(_uuid(rng), _uuid(rng)) for _ in range(n)]
    key, value = pairs[rng.randrange(n)]
    body = ", ".join(f'"{k}": "{v}"' for k, v in pairs)
    tail = f'}}\n\nKey: "{key}"\nThe value associated with the specified key is: "'
    return head + body + tail, value + '"'


def variable_tracking(rng, length, count):
    names = ["".join(rng.choice(string.ascii_uppercase) for _ in range(5)) for _ in range(5)]
    value = number(rng, 5)
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)]
    head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    question = (f"\nQuestion: Find all variables that are assigned the value {value} in the text above. "
                f"Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
                f"assigned the value {value}, they are:")
    parts = haystack(rng, length - count(head + question) - 60, count)
    slots = sorted(rng.randint(0, len(parts)) for _ in chain)
    for offset, (slot, line) in enumerate(zip(slots, chain)):  # in order: each hop after the one it copies
        parts.insert(slot + offset, line)
    return head + " ".join(parts) + question, " " + " ".join(names)


def multidoc_qa(rng, length, count):
    mods = stdlib_paragraphs()
    head = "Answer the question based on the given documents. Only give the answer.\n\n"
    docs, used = [], count(head) + 60
    while used < length:
        name, paras = mods[rng.randrange(len(mods))]
        text = clip(" ".join(paras[:rng.randint(1, 3)]), max(length - used, 32), count)
        docs.append([name, text])
        used += count(text) + 12
    people = {}
    for doc in rng.sample(docs, min(3, len(docs))):  # the asked fact and up to two distractors
        person = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        people[doc[0]] = person
        doc[1] += f" The maintainer of the {doc[0]} module is {person}."
    asked = rng.choice(sorted(people))
    body = "\n\n".join(f"Document [{i + 1}] (Title: {n})\n{t}" for i, (n, t) in enumerate(docs))
    question = f"\n\nQuestion: Who is the maintainer of the {asked} module?\nAnswer:"
    return head + body + question, " " + people[asked]


# --------------------------------------------------------------------------------------------- robust tasks

def prose_continuation(rng, length, count):
    stream = prose(rng)
    parts = fill(stream, max(16, length - 40), count)
    words = next(p for p in stream if len(p.split()) >= 12).split()[:40]  # the paragraph cut mid-way
    cut = int(len(words) * rng.uniform(0.4, 0.7))
    parts.append(" ".join(words[:cut]))
    return "\n\n".join(parts), " " + " ".join(words[cut:cut + 16])


def code_continuation(rng, length, count):
    mods = stdlib_modules()
    lines = []
    while sum(len(line) + 1 for line in lines) < 6 * length:  # code runs 3-4 characters a token
        name, source = mods[rng.randrange(len(mods))]
        src = source.splitlines()
        lines.append(f"# ---- {name}.py")
        lines += src[rng.randrange(max(1, len(src) // 2)):]
    budget, kept, used = length, [], 0
    for line in lines:
        if used >= budget:
            break
        kept.append(line)
        used += count(line + "\n")
    following = [ln for ln in lines[len(kept):len(kept) + 6] if ln.strip()][:2]
    if not following:
        following = ["pass"]
    return "\n".join(kept) + "\n", "\n".join(following)


PATTERNS = (
    ("uppercase", lambda w, r: (w, w.upper())),
    ("increment", lambda w, r: (str(n := r.randint(10, 989)), str(n + 1))),
    ("last word", lambda w, r: (" ".join(ws := r.sample(WORDS, 3)), ws[-1])),
    ("repeat", lambda w, r: (w, f"{w} {w}")),
)


def fewshot_pattern(rng, length, count):
    _, rule = rng.choice(PATTERNS)
    pairs = [rule(rng.choice(WORDS), rng) for _ in range(7)]
    examples = "".join(f"Input: {a}\nOutput: {b}\n" for a, b in pairs[:6])
    shots = "\n\nFollow the pattern of the examples.\n" + examples + f"Input: {pairs[6][0]}\nOutput:"
    context = fill(prose(rng), length - count(shots), count) if rng.random() < 0.5 else \
        code_continuation(rng, max(64, length - count(shots)), count)[0].splitlines()
    return "\n".join(context) + shots, " " + pairs[6][1]


def topic_ending(rng, length, count):
    mods = stdlib_paragraphs()
    question = "\n\nWhich topic does this passage end on? Answer with the module name.\nAnswer:"
    # The last section stays short (at most 160 tokens): its "## name" heading lies in any window of
    # 256 tokens or more, so the task needs only the end of the prompt (robust by construction).
    last = min(160, max(48, length // 8))
    sections, used = [], count(question) + last

    def section(budget):
        name, paras = mods[rng.randrange(len(mods))]
        return name, f"## {name}\n" + clip("\n".join(paras[:rng.randint(2, 5)]), budget, count)

    while used < length:
        sections.append(section(max(length - used, 32)))
        used += count(sections[-1][1])
    sections.append(section(last))
    return "\n\n".join(t for _, t in sections) + question, " " + sections[-1][0]


TASKS = {
    "passkey": ("sensitive", passkey),
    "multikey_needle": ("sensitive", multikey_needle),
    "kv_retrieval": ("sensitive", kv_retrieval),
    "variable_tracking": ("sensitive", variable_tracking),
    "multidoc_qa": ("sensitive", multidoc_qa),
    "prose_continuation": ("robust", prose_continuation),
    "code_continuation": ("robust", code_continuation),
    "fewshot_pattern": ("robust", fewshot_pattern),
    "topic_ending": ("robust", topic_ending),
}


def make_records(tokenizer, lengths: list[int], per_task: int, seed: int = 0,
                 tasks: list[str] | None = None) -> list[dict]:
    """per_task samples of every task at every length (tokens, approximate), as training records."""
    tasks = list(TASKS) if tasks is None else tasks
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known tasks: {list(TASKS)}")
    if per_task < 1 or not lengths or min(lengths) < 256:
        raise ValueError(f"need --per-task >= 1 and lengths of at least 256 tokens (got {per_task}, {lengths})")
    count = Counter(tokenizer)
    records = []
    for task in tasks:
        category, make = TASKS[task]
        for length in lengths:
            for i in range(per_task):
                rng = random.Random(f"{SEED_OFFSET + seed}:{task}:{length}:{i}")
                prompt, answer = make(rng, length, count)
                records.append({"task": task, "category": category, "prompt": prompt, "answer": answer})
    return records


def write_records(records: list[dict], path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path
