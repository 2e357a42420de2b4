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


INSTRUCTIONS = {"robust": "Copy the end.\n", "sensitive": "Find the key.\n"}  # equal lengths: no length cue
# The toy of benchmarks/router_learning_toy.py and of the instruction test: a tiny random Llama, 4 layers x
# 2 KV heads; routers pool 20 tokens, so the 14-character first line is most of the first slice.
TOY_MODEL = dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                 intermediate_size=128)
TOY_POOL = 20


def instruction_records(n: int, seed: int, length: int = 300) -> list[dict]:
    """Two tasks whose prompts differ only in their first line: 'copy' (robust: the answer is the body's
    last letters) and 'find' (sensitive: its first letters). Bodies are random letters and spaces, drawn
    alike for both, and every prompt ends with the same question."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body = "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(rng.randint(length - 20, length)))
        category = "robust" if i % 2 == 0 else "sensitive"
        answer = body.replace(" ", "")[-3:] if category == "robust" else body.replace(" ", "")[:3]
        out.append({"task": "copy" if category == "robust" else "find", "category": category,
                    "prompt": INSTRUCTIONS[category] + body + "\nAnswer:", "answer": " " + answer})
    return out
