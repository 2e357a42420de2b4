"""Passkey retrieval prompts (the prompt format of shared/anchors.md), built in the model's tokens.

The prompt is assembled from separately tokenised pieces, so its length is exact and the needle's
token span is known (retrieval-head scores need it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.\n\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"


@dataclass
class PasskeySample:
    input_ids: list[int]
    answer: str  # the pass key digits
    needle_span: tuple[int, int]  # [start, end) token positions of the needle sentence
    depth: float  # where the needle sits in the haystack, 0 = start, 1 = end


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def passkey_sample(tokenizer, length: int, depth: float, key: str) -> PasskeySample:
    """One prompt of exactly `length` tokens with the needle at `depth` of the haystack."""
    head, needle, tail = _ids(tokenizer, INSTRUCTION), _ids(tokenizer, NEEDLE.format(key=key)), _ids(tokenizer, QUESTION)
    room = length - len(head) - len(needle) - len(tail)
    if room < 0:
        raise ValueError(f"length={length} is too short for a passkey prompt; use at least "
                         f"{len(head) + len(needle) + len(tail)} tokens")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth} must lie in [0, 1]")
    filler = _ids(tokenizer, FILLER)
    hay = (filler * (room // len(filler) + 1))[:room]
    # The needle goes between two filler passages (never inside a sentence), as close to depth as possible.
    cut = min(round(depth * room / len(filler)) * len(filler), room // len(filler) * len(filler))
    ids = head + hay[:cut] + needle + hay[cut:] + tail
    start = len(head) + cut
    return PasskeySample(ids, key, (start, start + len(needle)), depth)


def passkey_samples(tokenizer, length: int, n: int, seed: int = 0) -> list[PasskeySample]:
    """n prompts with needle depths spread evenly over 0..1 and random 5-digit keys."""
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    rng = random.Random(seed)
    depths = [i / (n - 1) if n > 1 else 0.5 for i in range(n)]
    return [passkey_sample(tokenizer, length, d, str(rng.randint(10000, 99999))) for d in depths]


def passkey_found(generated: str, answer: str) -> bool:
    """True when the first number in the generated text is the pass key."""
    match = re.search(r"\d+", generated)
    return match is not None and match.group(0) == answer
