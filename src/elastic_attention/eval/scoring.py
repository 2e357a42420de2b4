"""Scoring functions of the benchmarks, written from their published definitions.

LongBench metrics take `(prediction, ground_truth, **kwargs)` and return a float in [0, 1]; a sample's
score is the maximum over its reference answers (`best_of`), a task's score 100 x the mean.
Every function restates the published behaviour, quirks included, so numbers agree with LongBench's
own scorer:

- `qa_f1_score`: token F1 after SQuAD normalisation (lower case, drop ASCII punctuation, drop the
  articles a/an/the, collapse whitespace).
- `rouge_score`: ROUGE-L F of the `rouge` package LongBench uses (summary level): text split into
  "sentences" at every '.', words split at single spaces, word counts and the union of the
  sentence-wise longest common subsequences taken as *sets* of distinct words,
  F = 2PR / (P + R + 1e-8). An empty hypothesis or reference scores 0 (the package raises, LongBench
  catches it).
- `classification_score` (needs `all_classes=`): class names found as substrings of the prediction;
  a found name that is a strict substring of the ground truth is dropped (with the skip-next
  behaviour of removing from a list while iterating it); 1/len(found) if the ground truth was found,
  else 0. (LongBench's difflib fallback sits behind `if list != 0`, which is always true, so it never
  runs; we keep that.)
- `retrieval_score` / `retrieval_zh_score`: the paragraph id in the ground truth ("Paragraph N" /
  "段落N"); share of the numbers in the prediction equal to it (0 when none).
- `count_score`: share of the numbers in the prediction equal to the ground truth (0 when none).
- `code_sim_score`: the first line of the prediction (leading newlines stripped) that has none of
  '`', '#', '//' (empty if none); fuzz.ratio against the ground truth / 100, where fuzz.ratio =
  round(100 x 2 x LCS / (len a + len b)) on characters (the indel-distance Levenshtein ratio of
  python-Levenshtein / rapidfuzz); equal strings give 100, one empty string 0.

RULER scores (`string_match_all`, `string_match_part`) and LongBench-v2's answer extraction are here
too. Chinese word-level metrics (qa_f1_zh, rouge_zh) need the `jieba` segmenter and are not provided.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower, remove punctuation, remove articles, collapse whitespace (in that order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def f1_tokens(prediction: list, ground_truth: list) -> float:
    """F1 of two token lists (multiset overlap)."""
    same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return f1_tokens(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


# ---------------------------------------------------------------- ROUGE-L (summary level, word sets)

def _rouge_sentences(text: str) -> list[str]:
    return [" ".join(part.split()) for part in text.split(".") if len(part) > 0]


def _words(sentences: list[str]) -> list[str]:
    return [w for s in sentences for w in s.split(" ")]


def _lcs_words(ref: list[str], hyp: list[str]) -> set[str]:
    """The words of one longest common subsequence of ref and hyp, as a set.

    Dynamic programming over prefixes, then the usual backtrack from the end: on a match take it; else
    step back in `ref` only when that keeps a strictly longer LCS, otherwise step back in `hyp`.
    (Which LCS is read back matters here, because only its distinct words count.)"""
    n, m = len(ref), len(hyp)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, prev, r = table[i], table[i - 1], ref[i - 1]
        for j in range(1, m + 1):
            row[j] = prev[j - 1] + 1 if r == hyp[j - 1] else max(prev[j], row[j - 1])
    out, i, j = set(), n, m
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            out.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out


def rouge_score(prediction: str, ground_truth: str, **kwargs) -> float:
    hyp, ref = _rouge_sentences(prediction), _rouge_sentences(ground_truth)
    if not hyp or not ref:
        return 0.0
    m, n = len(set(_words(ref))), len(set(_words(hyp)))
    union: set[str] = set()
    for ref_sentence in ref:
        ref_words = ref_sentence.split(" ")
        for hyp_sentence in hyp:
            union |= _lcs_words(ref_words, hyp_sentence.split(" "))
    recall, precision = len(union) / m, len(union) / n
    return 2.0 * precision * recall / (precision + recall + 1e-8)


# ---------------------------------------------------------------- classification, retrieval, count

def classification_score(prediction: str, ground_truth: str, **kwargs) -> float:
    all_classes = kwargs.get("all_classes")
    if all_classes is None:
        raise ValueError("classification_score needs all_classes=[...] (the dataset's class names)")
    found = [name for name in all_classes if name in prediction]
    i = 0
    # Removing from the list being walked skips the element after each removal (LongBench's behaviour).
    while i < len(found):
        name = found[i]
        if name in ground_truth and name != ground_truth:
            found.remove(name)
        i += 1
    return 1.0 / len(found) if ground_truth in found else 0.0


def _share_equal(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(number == target for number in numbers) / len(numbers)


def count_score(prediction: str, ground_truth, **kwargs) -> float:
    return float(_share_equal(prediction, str(ground_truth)))


def retrieval_score(prediction: str, ground_truth: str, **kwargs) -> float:
    ids = re.findall(r"Paragraph (\d+)", ground_truth)
    if not ids:
        raise ValueError(f"retrieval ground truth {ground_truth!r} names no 'Paragraph N'")
    return float(_share_equal(prediction, ids[0]))


def retrieval_zh_score(prediction: str, ground_truth: str, **kwargs) -> float:
    ids = re.findall(r"段落(\d+)", ground_truth)
    if not ids:
        raise ValueError(f"retrieval ground truth {ground_truth!r} names no '段落N'")
    return float(_share_equal(prediction, ids[0]))


# ---------------------------------------------------------------- code similarity

def _lcs_length(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for ch in a:
        cur = [0]
        for j, other in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if ch == other else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def fuzz_ratio(a: str, b: str) -> int:
    """0..100: round(100 x (1 - indel distance / (len a + len b))) = round(200 x LCS / (len a + len b))."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * 2 * _lcs_length(a, b) / (len(a) + len(b))))


def first_code_line(prediction: str) -> str:
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_sim_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return fuzz_ratio(first_code_line(prediction), ground_truth) / 100


def best_of(metric, prediction: str, ground_truths, **kwargs) -> float:
    """A sample's score: the best over its reference answers (0 when there are none)."""
    return max([metric(prediction, gt, **kwargs) for gt in ground_truths], default=0.0)


# ---------------------------------------------------------------- RULER and LongBench-v2

def string_match_all(prediction: str, references) -> float:
    """RULER: the fraction of the references found (case-insensitive substring) in the prediction."""
    refs = list(references)
    if not refs:
        raise ValueError("string_match_all needs at least one reference")
    low = prediction.lower()
    return sum(r.lower() in low for r in refs) / len(refs)


def string_match_part(prediction: str, references) -> float:
    """RULER QA: 1 when any reference is found (case-insensitive substring) in the prediction."""
    low = prediction.lower()
    return float(any(r.lower() in low for r in references))


def extract_choice(response: str) -> str | None:
    """LongBench-v2: the letter of 'The correct answer is (X)' (or without brackets), '*' ignored."""
    response = response.replace("*", "")
    match = re.search(r"The correct answer is \(([A-D])\)", response) or \
        re.search(r"The correct answer is ([A-D])", response)
    return match.group(1) if match else None


def choice_score(prediction: str, ground_truth: str, **kwargs) -> float:
    return float(extract_choice(prediction) == ground_truth)
