"""RULER-style generators: determinism, answers inside the context, lengths in the tokenizer's tokens."""

import pytest

from elastic_attention.eval import ruler
from elastic_attention.eval.runner import build_samples, parse_lengths, parse_methods, parse_tasks
from test_eval_fixtures import tiny_tokenizer

LENGTHS = (384, 768)
LONGER = {"fwe": (768, 1536)}  # this tokenizer spends about 7 tokens per coded word: fwe needs more room


@pytest.mark.parametrize("task", list(ruler.TASKS))
def test_answers_in_context_and_length(task):
    tok = tiny_tokenizer()
    for length in LONGER.get(task, LENGTHS):
        for index in range(2):
            s = ruler.ruler_sample(tok, task, length, index, seed=3)
            text = tok.decode(s.input_ids)
            assert s.answers and all(a in text for a in s.answers), (task, length, s.answers)
            if ruler.TASKS[task]["kind"] in ("niah", "vt"):
                assert s.length == length
            else:  # whole items: at most a few percent short, never long
                assert 0.97 * length <= s.length <= length
            assert s.scorer(" ".join(s.answers)) == 1.0 and s.scorer("") == 0.0


def test_deterministic_and_seeded():
    tok = tiny_tokenizer()
    for task in ("niah_multikey_2", "niah_multiquery", "vt", "cwe", "fwe"):
        n = 768 if task == "fwe" else 384
        a, b = ruler.ruler_samples(tok, task, n, 2, seed=1), ruler.ruler_samples(tok, task, n, 2, seed=1)
        assert [s.input_ids for s in a] == [s.input_ids for s in b]
        assert [s.answers for s in a] == [s.answers for s in b]
        assert a[0].input_ids != a[1].input_ids  # samples differ
        assert ruler.ruler_sample(tok, task, n, 0, seed=2).input_ids != a[0].input_ids


def test_task_structure():
    tok = tiny_tokenizer()
    mq = ruler.ruler_sample(tok, "niah_multiquery", 768)
    assert len(mq.answers) == 4 and not mq.stop_at_newline
    mv = ruler.ruler_sample(tok, "niah_multivalue", 768)
    assert len(mv.answers) == 4
    single = ruler.ruler_sample(tok, "niah_single_3", 768)
    assert len(single.answers[0]) == 36 and single.stop_at_newline  # a uuid
    vt = ruler.ruler_sample(tok, "vt", 768)
    text = tok.decode(vt.input_ids)
    assert f"VAR {vt.answers[0]} = {vt.info['value']}." in text
    assert text.index(f"VAR {vt.answers[1]} = VAR {vt.answers[0]}") > text.index(f"VAR {vt.answers[0]} =")
    fwe = ruler.ruler_sample(tok, "fwe", 1536)
    words = tok.decode(fwe.input_ids).split()
    counts = [words.count(w) for w in fwe.answers]
    assert counts == sorted(counts, reverse=True) and counts[-1] > max(
        words.count(w) for w in set(words) if len(w) == 6 and w.isalpha() and w not in fwe.answers)


def test_bad_input_names_the_value():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="niah_single_9"):
        ruler.ruler_sample(tok, "niah_single_9", 512)
    with pytest.raises(ValueError, match="length=20"):
        ruler.ruler_sample(tok, "niah_single_1", 20)
    with pytest.raises(ValueError, match="unknown task 'bogus'"):
        parse_tasks("niah_single_1,bogus")
    with pytest.raises(ValueError, match="unknown method 'half'"):
        parse_methods("full,half")
    with pytest.raises(ValueError, match="static:1.5"):
        parse_methods("static:1.5")
    with pytest.raises(ValueError, match="'2x'"):
        parse_lengths("2048,2x")
    assert parse_lengths("2k,4096") == [2048, 4096]
    assert len(build_samples(tok, "vt", 384, 3)) == 3
