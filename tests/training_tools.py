"""Helpers of the training tests: a character tokenizer, a tiny model directory, two-task data."""

from __future__ import annotations

import json
import random
import string

CHARS = string.ascii_letters + string.digits + " .,:;!?-=\n"


def char_tokenizer():
    """One token per character (ids 2..), <unk> 0 and <pad> 1: offline and tiny (vocab < 128)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1} | {c: i + 2 for i, c in enumerate(CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def two_task_records(n: int, seed: int, length: int = 40) -> list[dict]:
    """'lower' prompts of lowercase letters (robust) and 'digits' prompts of digits (sensitive)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            prompt = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(length - 8, length)))
            out.append({"task": "lower", "category": "robust", "prompt": prompt, "answer": " ab"})
        else:
            prompt = "".join(rng.choice(string.digits) for _ in range(rng.randint(length - 8, length)))
            out.append({"task": "digits", "category": "sensitive", "prompt": prompt, "answer": " 12"})
    return out


def write_jsonl(records, path):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
