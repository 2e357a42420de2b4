"""Shared fixtures of the eval tests (no tests here): a tiny byte-level BPE tokenizer trained in
memory, a tiny random Llama model sized to it, and LongBench-format files written for this repo."""

from __future__ import annotations

import json
from functools import lru_cache

import torch

CORPUS = [
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "Some special magic numbers are hidden within the following text. Make sure to memorize it.",
    "One of the special magic numbers for apple-tree is: 1234567. What are all the special magic uuids?",
    "Memorize and track the chain(s) of variable assignment hidden in the following text. VAR ABCDE = 12345.",
    "Below is a numbered list of words. Question: What are the 10 most common words in the above list?",
    "Read the following coded text and track the frequency of each coded word. Answer the question.",
    "Return the value of the argument. This function is called by the parser when the class is created.",
    "Answer the question based on the given passages. Only give me the answer and do not output any other words.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ - . , : ; ? ! ( ) \" ' \n",
]


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer with a 400-token vocabulary (any text encodes and decodes exactly)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    return fast


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def write_longbench_fixtures(root):
    """hotpotqa.jsonl, trec_e.jsonl and LongBench-v2's data.json with a few made-up records."""
    root.mkdir(parents=True, exist_ok=True)
    hotpot = [
        {"input": "Which colour is the sky?", "context": "Passage 1:\nThe sky is blue. " * 40,
         "answers": ["blue"], "length": 300, "dataset": "hotpotqa", "language": "en", "all_classes": None,
         "_id": "h1"},
        {"input": "Which colour is the grass?", "context": "Passage 1:\nThe grass is green. " * 10,
         "answers": ["green", "Green grass"], "length": 90, "dataset": "hotpotqa", "language": "en",
         "all_classes": None, "_id": "h2"},
    ]
    (root / "hotpotqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hotpot))
    trec = [{"input": "What is the sky?", "context": "Question: Who are you?\nType: Human\n",
             "answers": ["Entity"], "length": 5000, "all_classes": ["Human", "Entity", "Location"],
             "_id": "t1"}]
    (root / "trec_e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trec))
    v2 = [{"_id": "v1", "domain": "d", "sub_domain": "s", "difficulty": "easy", "length": "short",
           "question": "What colour is the sky? ", "choice_A": "red", "choice_B": "blue", "choice_C": "green",
           "choice_D": "black", "answer": "B", "context": " The sky is blue. " * 20}]
    (root / "data.json").write_text(json.dumps(v2))
    return root
