"""LongBench / RULER / LongBench-v2 metrics against hand-computed values."""

import pytest

from elastic_attention.eval import scoring as M


def test_qa_f1_normalisation_and_overlap():
    # "the cat sat." -> "cat sat"; "a cat sat on the mat" -> "cat sat on mat": P = 1, R = 1/2.
    assert M.qa_f1_score("The Cat sat.", "a cat sat on the mat") == pytest.approx(2 / 3)
    assert M.qa_f1_score("U.S.A.", "usa") == 1.0  # punctuation dropped inside words
    assert M.qa_f1_score("An apple", "the apple!") == 1.0  # articles and punctuation
    assert M.qa_f1_score("", "blue") == 0.0
    assert M.qa_f1_score("the", "a") == 0.0  # both normalise to nothing
    assert M.normalize_answer("  The  Quick, brown-fox ") == "quick brownfox"


def test_best_of_several_references():
    assert M.best_of(M.qa_f1_score, "green", ["blue", "green grass"]) == pytest.approx(2 / 3)
    assert M.best_of(M.qa_f1_score, "x", []) == 0.0


def test_rouge_l_summary_level():
    # word sets: ref {the, cat, is, on, mat} (5), hyp {the, cat, sat, on, mat} (5); LCS words {the, cat, on, mat}.
    assert M.rouge_score("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.8, abs=1e-7)
    # sentences split at '.': union of LCS words over hyp sentences {a} | {c} = 2; R = 2/2, P = 2/4.
    assert M.rouge_score("a b. c d", "a c") == pytest.approx(2 / 3, abs=1e-7)
    assert M.rouge_score("", "a c") == 0.0
    assert M.rouge_score("...", "a c") == 0.0  # no sentence left
    assert M.rouge_score("a c", "") == 0.0
    assert M.rouge_score("Same text", "Same text") == pytest.approx(1.0, abs=1e-7)
    assert M.rouge_score("Cat", "cat") == 0.0  # case-sensitive, like the package


def test_classification_with_all_classes():
    classes = ["Human", "Entity", "Location"]
    assert M.classification_score("Location and Human", "Human", all_classes=classes) == 0.5
    assert M.classification_score("Entity", "Entity", all_classes=classes) == 1.0
    assert M.classification_score("", "Entity", all_classes=classes) == 0.0
    assert M.classification_score("nothing", "Entity", all_classes=classes) == 0.0  # no difflib fallback
    # A found class that is a strict substring of the truth is dropped ...
    assert M.classification_score("category", "category", all_classes=["cat", "category", "dog"]) == 1.0
    # ... and removing while iterating skips the next one, as LongBench does: ["ab", "abc"] remain.
    assert M.classification_score("abc", "abc", all_classes=["a", "ab", "abc"]) == 0.5
    with pytest.raises(ValueError, match="all_classes"):
        M.classification_score("x", "y")


def test_retrieval_and_count():
    assert M.retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
    assert M.retrieval_score("Paragraph 12 or Paragraph 3", "Paragraph 12") == 0.5
    assert M.retrieval_score("", "Paragraph 12") == 0.0
    assert M.retrieval_score("Paragraph 112", "Paragraph 12") == 0.0
    assert M.retrieval_zh_score("段落3", "段落3") == 1.0
    assert M.count_score("5 paragraphs, not 6", 5) == 0.5
    assert M.count_score("five", "5") == 0.0


def test_code_sim():
    # first line without '#', '`', '//'; LCS "x = foo()" has 9 of 10 + 10 characters -> 90.
    assert M.code_sim_score("# comment\nx = foo(1)\n", "x = foo(2)") == pytest.approx(0.9)
    assert M.code_sim_score("```python\n// c\ny = 1", "y = 1") == 1.0
    assert M.code_sim_score("", "y = 1") == 0.0
    assert M.code_sim_score("# only comments", "y = 1") == 0.0
    assert M.code_sim_score("\n\nreturn x", "return x") == 1.0  # leading newlines stripped
    assert M.fuzz_ratio("abc", "abd") == 67  # round(200 * 2 / 6)
    assert M.fuzz_ratio("", "") == 100


def test_ruler_and_choice():
    assert M.string_match_all("I found 1234 and 99", ["1234", "5678"]) == 0.5
    assert M.string_match_all("ABCDE fghij", ["abcde", "FGHIJ"]) == 1.0
    assert M.string_match_all("", ["x"]) == 0.0
    assert M.string_match_part("it is Paris", ["London", "paris"]) == 1.0
    assert M.extract_choice("The correct answer is (B)") == "B"
    assert M.extract_choice("**The correct answer is C**") == "C"
    assert M.extract_choice("I think (A)") is None
    assert M.choice_score("The correct answer is (D).", "D") == 1.0
