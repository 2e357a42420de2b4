"""RULER-style synthetic tasks (Hsieh et al. 2024), written from the paper's task definitions.

Thirteen RULER tasks minus the two QA ones (they need SQuAD / HotpotQA): eight needle-in-a-haystack
variants, variable tracking (vt), common words extraction (cwe) and frequent words extraction (fwe).
Prompts end with RULER's answer prefix and are plain text (no chat template).

Offline text: the "essay" haystack is prose from the docstrings of a fixed list of Python
standard-library modules (read with `ast`, never imported); the word list (needle keys, cwe words) is
the distinct lower-case words of that prose. Both are deterministic for a given Python version.

Lengths are in the model's own tokens: every prompt is assembled from separately tokenised pieces
(instruction, haystack units, needles, question), so niah and vt prompts have exactly the requested
length; cwe and fwe fill the length with whole items and fall short by at most one item.
Every sample has its own seeded random generator: the same (task, length, seed, index) gives the same
prompt.

Differences from RULER, on purpose: no in-context example before vt / cwe / fwe; needles and vt
statements sit between haystack units (never inside a sentence); cwe uses RULER's short-context
frequencies (2 / 1) only when 30 / 3 does not fit.
"""

from __future__ import annotations

import ast
import random
import re
import string
import sysconfig
import uuid
from functools import lru_cache
from pathlib import Path

from .scoring import string_match_all
from .sample import EvalSample, bos_ids, token_ids

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

NIAH_TEMPLATE = ("Some special magic {v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {v} afterwards.\n")
NIAH_QUESTION = ("\nWhat are all the special magic {v} for {query} mentioned in the provided text?"
                 " The special magic {v} for {query} mentioned in the provided text are")
NEEDLE = " One of the special magic {v} for {key} is: {value}."
VT_TEMPLATE = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUESTION = ("\nQuestion: Find all variables that are assigned the value {value} in the text above."
               " Answer: According to the chain(s) of variable assignment in the text above, {n} variables "
               "are assigned the value {value}, they are: ")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n")
CWE_QUESTION = ("\nQuestion: What are the {n} most common words in the above list?"
                " Answer: The top {n} words that appear most often in the list are:")
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. "
                "Find the three most frequently appeared coded words.")
FWE_QUESTION = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the "
                "three most frequently appeared words in the above coded text? Answer: According to the "
                "coded text above, the three most frequently appeared words are:")
FWE_NOISE = "...."

# RULER's configurations (synthetic.yaml): haystack, key type, value type, numbers of keys/values/queries.
TASKS: dict[str, dict] = {
    "niah_single_1": dict(kind="niah", haystack="noise", key="words", value="numbers", k=1, v=1, q=1),
    "niah_single_2": dict(kind="niah", haystack="essay", key="words", value="numbers", k=1, v=1, q=1),
    "niah_single_3": dict(kind="niah", haystack="essay", key="words", value="uuids", k=1, v=1, q=1),
    "niah_multikey_1": dict(kind="niah", haystack="essay", key="words", value="numbers", k=4, v=1, q=1),
    "niah_multikey_2": dict(kind="niah", haystack="needle", key="words", value="numbers", k=1, v=1, q=1),
    "niah_multikey_3": dict(kind="niah", haystack="needle", key="uuids", value="uuids", k=1, v=1, q=1),
    "niah_multivalue": dict(kind="niah", haystack="essay", key="words", value="numbers", k=1, v=4, q=1),
    "niah_multiquery": dict(kind="niah", haystack="essay", key="words", value="numbers", k=4, v=1, q=4),
    "vt": dict(kind="vt", chains=1, hops=4),
    "cwe": dict(kind="cwe", freq_cw=30, freq_ucw=3, num_cw=10),
    "fwe": dict(kind="fwe", alpha=2.0, vocab_size=2000, word_len=6),
}
GENERATION_TOKENS = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}  # RULER's tokens_to_generate
DEPTHS = [i / 39 for i in range(40)]  # needle depths to draw from, 0 = start of the haystack

# Prose modules of the standard library whose docstrings form the essay haystack (missing ones skipped).
ESSAY_MODULES = ("argparse", "textwrap", "difflib", "inspect", "pathlib/__init__", "pathlib", "subprocess",
                 "functools", "typing", "logging/__init__", "collections/__init__", "json/__init__",
                 "http/client", "unittest/case", "threading", "shutil", "tarfile", "zipfile", "calendar",
                 "email/message", "pickle", "random", "heapq", "dataclasses", "enum", "contextlib",
                 "statistics", "fractions", "doctest", "sched", "queue", "socket", "selectors", "smtplib",
                 "ftplib", "imaplib", "urllib/parse", "urllib/request", "configparser", "csv", "gettext",
                 "locale", "optparse", "pprint", "shlex", "tempfile", "glob", "codecs", "os", "copy",
                 "weakref", "types", "asyncio/events", "asyncio/tasks", "multiprocessing/pool", "pdb",
                 "tokenize", "trace", "cmd", "mailbox", "_pydecimal", "_pyio", "ipaddress", "string",
                 "bdb", "symtable", "pydoc", "http/server", "xml/dom/minidom", "sqlite3/__init__")


def task_names() -> list[str]:
    return list(TASKS)


# ---------------------------------------------------------------- offline text

@lru_cache(maxsize=1)
def essay_sentences() -> tuple[str, ...]:
    """Prose sentences from standard-library docstrings, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for name in ESSAY_MODULES:
        path = root / f"{name}.py"
        if not path.is_file():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    out.extend(_prose(doc))
    if len(out) < 200:
        raise RuntimeError(f"found only {len(out)} docstring sentences in {root}; the essay haystack needs "
                           "the Python standard library's sources")
    return tuple(out)


def _prose(doc: str) -> list[str]:
    sentences = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.split("\n")
        if any(line.startswith((" ", "\t", ">>>")) for line in lines) or "::" in para or "=" * 3 in para:
            continue  # code, doctests, tables, reST directives
        text = " ".join(" ".join(lines).split())
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            letters = sum(ch.isalpha() or ch == " " for ch in s)
            if 30 <= len(s) <= 400 and s.endswith(".") and letters >= 0.85 * len(s) and s[0].isupper():
                sentences.append(s)
    return sentences


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """Distinct lower-case words (4 to 10 letters) of the essay text, sorted."""
    words = {w for s in essay_sentences() for w in re.findall(r"\b[a-z]{4,10}\b", s)}
    return tuple(sorted(words))


_TOKEN_CACHE: dict[int, tuple[object, dict[str, list[int]]]] = {}


def _cached_ids(tokenizer, texts) -> list[list[int]]:
    """Token ids of many pieces, memoised per tokenizer (the essay is tokenised once)."""
    entry = _TOKEN_CACHE.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        entry = (tokenizer, {})
        _TOKEN_CACHE.clear()
        _TOKEN_CACHE[id(tokenizer)] = entry
    memo = entry[1]
    missing = list(dict.fromkeys(t for t in texts if t not in memo))
    if missing:
        for text, ids in zip(missing, tokenizer(missing, add_special_tokens=False)["input_ids"]):
            memo[text] = list(ids)
    return [memo[t] for t in texts]


# ---------------------------------------------------------------- assembling prompts

def _fill(units, room: int) -> list[list[int]]:
    """Haystack units (token lists) in order until exactly `room` tokens (the last one cut)."""
    out, used = [], 0
    for unit in units:
        if used >= room:
            break
        take = unit[:room - used]
        out.append(take)
        used += len(take)
    if used < room:
        raise RuntimeError("the haystack ran out of text")
    return out


def _insert(hay: list[list[int]], pieces: list[list[int]], depths: list[float]) -> list[int]:
    """Put each piece between two haystack units, at the boundary nearest to its depth (0..1)."""
    bounds = [0]
    for unit in hay:
        bounds.append(bounds[-1] + len(unit))
    total = bounds[-1]
    at: dict[int, list[list[int]]] = {}
    for piece, depth in sorted(zip(pieces, depths), key=lambda pd: pd[1]):
        target = depth * total
        idx = min(range(len(bounds)), key=lambda i: abs(bounds[i] - target))
        at.setdefault(idx, []).append(piece)
    ids: list[int] = []
    for i in range(len(hay) + 1):
        for piece in at.get(i, []):
            ids.extend(piece)
        if i < len(hay):
            ids.extend(hay[i])
    return ids


def _check_room(task: str, length: int, used: int) -> int:
    room = length - used
    if room < 0:
        raise ValueError(f"length={length} is too short for task {task!r}: its fixed parts alone take "
                         f"{used} tokens")
    return room


def _cycle(seq):
    while True:
        yield from seq


def _key(rng: random.Random, kind: str) -> str:
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    words = word_list()
    return f"{rng.choice(words)}-{rng.choice(words)}"


def _value(rng: random.Random, kind: str) -> str:
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return str(rng.randint(1000000, 9999999))


def _niah(tokenizer, task: str, spec: dict, length: int, rng: random.Random) -> EvalSample:
    v = spec["value"]
    keys: list[str] = []
    while len(keys) < max(spec["k"], spec["q"]):
        key = _key(rng, spec["key"])
        if key not in keys:
            keys.append(key)
    values = {key: [_value(rng, v) for _ in range(spec["v"])] for key in keys}
    queried = rng.sample(keys, spec["q"])
    needles = [NEEDLE.format(v=v, key=key, value=val) for key in keys for val in values[key]]
    rng.shuffle(needles)
    query = queried[0] if len(queried) == 1 else ", ".join(queried[:-1]) + ", and " + queried[-1]
    head = bos_ids(tokenizer) + token_ids(tokenizer, NIAH_TEMPLATE.format(v=v))
    tail = token_ids(tokenizer, NIAH_QUESTION.format(v=v, query=query))
    needle_ids = _cached_ids(tokenizer, needles)
    room = _check_room(task, length, len(head) + len(tail) + sum(map(len, needle_ids)))
    if spec["haystack"] == "noise":
        units = _cycle(_cached_ids(tokenizer, [" " + NOISE]))
    elif spec["haystack"] == "essay":
        units = _cycle(_cached_ids(tokenizer, [" " + s for s in essay_sentences()]))
    else:  # "needle": distractor needles of other keys
        def distractors():
            while True:
                key = _key(rng, spec["key"])
                if key not in keys:
                    yield token_ids(tokenizer, NEEDLE.format(v=v, key=key, value=_value(rng, v)))
        units = distractors()
    depths = sorted(rng.sample(DEPTHS, len(needles)))
    ids = head + _insert(_fill(units, room), needle_ids, depths) + tail
    answers = [val for key in queried for val in values[key]]
    return _sample(task, ids, answers, GENERATION_TOKENS["niah"], stop_at_newline=len(answers) == 1,
                   info={"depths": depths, "query": query})


def _vt(tokenizer, task: str, spec: dict, length: int, rng: random.Random) -> EvalSample:
    names: list[str] = []
    while len(names) < spec["chains"] * (spec["hops"] + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    statements, answers = [], []
    for c in range(spec["chains"]):
        chain = names[c * (spec["hops"] + 1):(c + 1) * (spec["hops"] + 1)]
        chain_value = value if c == 0 else str(rng.randint(10000, 99999))
        statements.append([f" VAR {chain[0]} = {chain_value}."] +
                          [f" VAR {chain[i]} = VAR {chain[i - 1]}." for i in range(1, len(chain))])
        if c == 0:
            answers = chain
    head = bos_ids(tokenizer) + token_ids(tokenizer, VT_TEMPLATE)
    tail = token_ids(tokenizer, VT_QUESTION.format(value=value, n=len(answers)))
    flat = [s for chain in statements for s in chain]
    pieces = [token_ids(tokenizer, s) for s in flat]
    room = _check_room(task, length, len(head) + len(tail) + sum(map(len, pieces)))
    hay = _fill(_cycle(_cached_ids(tokenizer, [" " + NOISE])), room)
    # Each chain's statements in order, at increasing depths.
    depths = []
    for chain in statements:
        depths.extend(sorted(rng.sample(DEPTHS, len(chain))))
    ids = head + _insert_ordered(hay, pieces, depths, [len(c) for c in statements]) + tail
    return _sample(task, ids, answers, GENERATION_TOKENS["vt"], info={"value": value})


def _insert_ordered(hay, pieces, depths, chain_lengths) -> list[int]:
    """Like _insert, but keeps each chain's statements in their order even at equal boundaries."""
    order = []
    start = 0
    for n in chain_lengths:
        order.extend((depths[start + i], start + i) for i in range(n))
        start += n
    order.sort()
    return _insert(hay, [pieces[i] for _, i in order], [d for d, _ in order])


def _cwe(tokenizer, task: str, spec: dict, length: int, rng: random.Random) -> EvalSample:
    num_cw = spec["num_cw"]
    head = bos_ids(tokenizer) + token_ids(tokenizer, CWE_TEMPLATE)
    tail = token_ids(tokenizer, CWE_QUESTION.format(n=num_cw))
    room = _check_room(task, length, len(head) + len(tail))
    pool = list(word_list())
    rng.shuffle(pool)
    word_len = [len(ids) for ids in _cached_ids(tokenizer, [" " + w for w in pool])]
    number_len: list[int] = [0]  # number_len[i] = tokens of the item numbers " 1." .. " i."

    def tokens(n_items: int) -> int:
        while len(number_len) <= n_items:
            i = len(number_len)
            number_len.append(number_len[-1] + len(_cached_ids(tokenizer, [f" {i}."])[0]))
        return number_len[n_items]

    def size(n_uncommon: int, f_cw: int, f_ucw: int) -> int:
        words = sum(word_len[i] * f_cw for i in range(num_cw)) + \
            sum(word_len[i] * f_ucw for i in range(num_cw, num_cw + n_uncommon))
        return words + tokens(num_cw * f_cw + n_uncommon * f_ucw)

    f_cw, f_ucw = spec["freq_cw"], spec["freq_ucw"]
    if size(num_cw, f_cw, f_ucw) > room:
        f_cw, f_ucw = 2, 1  # RULER's setting for short contexts
    lo, hi = 0, len(pool) - num_cw
    if size(0, f_cw, f_ucw) > room:
        raise ValueError(f"length={length} is too short for task {task!r}")
    while lo < hi:  # the most uncommon words that fit
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid, f_cw, f_ucw) <= room else (lo, mid - 1)
    common = pool[:num_cw]
    items = common * f_cw + pool[num_cw:num_cw + lo] * f_ucw
    rng.shuffle(items)
    body: list[int] = []
    word_ids = dict(zip(pool, _cached_ids(tokenizer, [" " + w for w in pool])))
    for i, word in enumerate(items, 1):
        body += _cached_ids(tokenizer, [f" {i}."])[0] + word_ids[word]
    return _sample(task, head + body + tail, common, GENERATION_TOKENS["cwe"],
                   info={"freq_cw": f_cw, "freq_ucw": f_ucw, "uncommon_words": lo})


def _fwe(tokenizer, task: str, spec: dict, length: int, rng: random.Random) -> EvalSample:
    vocab: set[str] = set()
    while len(vocab) < spec["vocab_size"]:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=spec["word_len"])))
    words = sorted(vocab)
    rng.shuffle(words)
    words[0] = FWE_NOISE  # the most frequent "word" is noise; the answer is ranks 2..4
    head = bos_ids(tokenizer) + token_ids(tokenizer, FWE_TEMPLATE)
    tail = token_ids(tokenizer, FWE_QUESTION)
    room = _check_room(task, length, len(head) + len(tail))
    word_ids = _cached_ids(tokenizer, [" " + w for w in words])
    alpha = spec["alpha"]
    zeta = sum(k ** -alpha for k in range(1, 100000)) + 100000 ** (1 - alpha) / (alpha - 1)  # Riemann zeta(alpha)

    def counts(num_words: int) -> list[int]:
        return [int(num_words * k ** -spec["alpha"] / zeta) for k in range(1, len(words) + 1)]

    def size(num_words: int) -> int:
        return sum(c * len(ids) for c, ids in zip(counts(num_words), word_ids))

    lo, hi = 0, max(room, 1) * 4
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= room else (lo, mid - 1)
    final = counts(lo)
    if final[3] <= final[4]:  # the three answer words (ranks 2-4) must outnumber every other word
        raise ValueError(f"length={length} is too short for task {task!r}: its top words tie")
    sampled = [i for i, c in enumerate(final) for _ in range(c)]
    rng.shuffle(sampled)
    body = [t for i in sampled for t in word_ids[i]]
    return _sample(task, head + body + tail, words[1:4], GENERATION_TOKENS["fwe"], info={"num_words": lo})


def _sample(task, ids, answers, max_new_tokens, stop_at_newline=False, info=None) -> EvalSample:
    refs = list(answers)
    return EvalSample(task=task, input_ids=ids, answers=refs, max_new_tokens=max_new_tokens,
                      scorer=lambda pred: string_match_all(pred, refs), stop_at_newline=stop_at_newline,
                      info=info or {})


_BUILDERS = {"niah": _niah, "vt": _vt, "cwe": _cwe, "fwe": _fwe}


def ruler_sample(tokenizer, task: str, length: int, index: int = 0, seed: int = 0) -> EvalSample:
    """Sample number `index` of a RULER task at `length` tokens (deterministic in all four)."""
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; known tasks: {', '.join(TASKS)}")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length={length!r} must be a positive number of tokens")
    spec = TASKS[task]
    rng = random.Random(f"ruler|{task}|{length}|{seed}|{index}")
    sample = _BUILDERS[spec["kind"]](tokenizer, task, spec, length, rng)
    sample.info.update(index=index, seed=seed, requested_length=length)
    return sample


def ruler_samples(tokenizer, task: str, length: int, n: int, seed: int = 0) -> list[EvalSample]:
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    return [ruler_sample(tokenizer, task, length, i, seed) for i in range(n)]

