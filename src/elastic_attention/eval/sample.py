"""EvalSample: one prompt in the model's tokens, its references and how to score a prediction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class EvalSample:
    task: str
    input_ids: list[int]  # the whole prompt, exactly what the model sees
    answers: list[str]  # reference strings
    max_new_tokens: int
    scorer: Callable[[str], float]  # prediction -> score in [0, 1]
    stop_at_newline: bool = False  # stop decoding at the first generated line break
    info: dict = field(default_factory=dict)  # extra fields kept in the JSON records (depth, length...)

    @property
    def length(self) -> int:
        return len(self.input_ids)


def token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a text piece, without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def bos_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text by default (e.g. [BOS]), else []."""
    return list(tokenizer("", add_special_tokens=True)["input_ids"])
