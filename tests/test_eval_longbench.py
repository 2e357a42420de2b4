"""LongBench / LongBench-E / LongBench-v2 readers on tiny fixture files written for this repo."""

import json

import pytest

from elastic_attention.eval import longbench as lb
from test_eval_fixtures import tiny_tokenizer, write_longbench_fixtures


def test_prompts_truncation_and_scoring(tmp_path):
    data = write_longbench_fixtures(tmp_path / "lb")
    tok = tiny_tokenizer()
    short, = lb.longbench_samples(tok, "hotpotqa", 100000, 1, data)[:1]
    text = tok.decode(short.input_ids)
    assert text.startswith("Answer the question based on the given passages.")
    assert text.endswith("Question: Which colour is the sky?\nAnswer:")
    assert short.max_new_tokens == 32 and short.scorer("Blue.") == 1.0 and short.scorer("") == 0.0
    cut = lb.longbench_samples(tok, "hotpotqa", 64, 2, data)
    assert [s.length for s in cut] == [64, 64]
    assert cut[0].input_ids[:32] == short.input_ids[:32] and cut[0].input_ids[32:] == short.input_ids[-32:]
    assert cut[1].scorer("green") == 1.0  # best over the references
    trec, = lb.longbench_samples(tok, "trec_e", 4096, None, data)
    assert trec.info["bucket"] == "4-8k"
    assert trec.scorer("\nEntity\nHuman") == 1.0  # first line only
    v2, = lb.longbench_samples(tok, "longbench_v2", 4096, None, data)
    text = tok.decode(v2.input_ids)
    assert "What is the correct answer to this question: What colour is the sky?\nChoices:\n(A) red\n(B) blue" in text
    assert v2.scorer("The correct answer is (B)") == 1.0 and v2.scorer("The correct answer is (A)") == 0.0
    assert v2.max_new_tokens == 128


def test_errors_name_the_problem(tmp_path):
    data = write_longbench_fixtures(tmp_path / "lb")
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="--data-dir"):
        lb.load_rows(None, "hotpotqa")
    with pytest.raises(ValueError, match="does not exist"):
        lb.load_rows(tmp_path / "nowhere", "hotpotqa")
    with pytest.raises(ValueError, match="qasper.jsonl"):
        lb.load_rows(data, "qasper")
    with pytest.raises(ValueError, match="jieba"):
        lb.load_rows(data, "dureader")
    with pytest.raises(ValueError, match="unknown LongBench task 'narrativeqa_e'"):
        lb.load_rows(data, "narrativeqa_e")
    bad = data / "musique.jsonl"
    bad.write_text(json.dumps({"input": "q", "context": "c", "answers": ["a"]}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"musique.jsonl:2: malformed JSON"):
        lb.load_rows(data, "musique")
    (data / "qasper.jsonl").write_text(json.dumps({"input": "q", "answers": ["a"]}) + "\n")
    with pytest.raises(ValueError, match=r"qasper.jsonl:1: missing field\(s\) \['context'\]"):
        lb.longbench_samples(tok, "qasper", 512, 1, data)
