"""`elastic-attn eval` end to end on a tiny random Llama with a tiny tokenizer: every method, RULER and
LongBench tasks, the markdown table, JSON, CSV and the three plots."""

import argparse
import csv
import json

import pytest
import torch

from elastic_attention import ElasticConfig, attach, save_router
from elastic_attention.eval import command
from elastic_attention.gate import StaticGate, save_static_gate
from test_eval_fixtures import tiny_llama, tiny_tokenizer, write_longbench_fixtures


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    model, tok = tiny_llama(), tiny_tokenizer()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    attach(model, ElasticConfig(sink=4, local=16))
    save_router(model, root / "router")
    gate = StaticGate(2, 2)
    gate.logits.data = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # two of four heads sparse
    save_static_gate(model, gate, root / "gate")
    write_longbench_fixtures(root / "data")
    return root


def test_cli_writes_table_json_csv_and_plots(setup, capsys):
    root, out = setup, setup / "out"
    methods = f"full,sparse,static:0.5,gate:{root / 'gate'},elastic"
    code = command.main(["eval", "--model", str(root / "model"), "--router", str(root / "router"),
                         "--methods", methods, "--tasks", "niah_single_1,vt,hotpotqa,longbench_v2",
                         "--lengths", "256,320", "--samples", "2", "--data-dir", str(root / "data"),
                         "--out", str(out), "--max-new-tokens", "3", "--score-samples", "2", "--local", "16",
                         "--quiet", "--device", "cpu", "--batch-size", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| task | length (tokens) |" in printed and "static:0.5 score (MSR)" in printed
    data = json.loads((out / "results.json").read_text())
    assert len(data["cells"]) == 4 * 2 * 5
    assert len(data["records"]) == 4 * 2 * 5 * 2 - 5 * 2 * 1  # longbench_v2 has one record per length
    assert data["config"]["elastic_config"]["local"] == 16
    by = {(c["task"], c["length"], c["method"]): c for c in data["cells"]}
    for task in ("niah_single_1", "vt", "hotpotqa", "longbench_v2"):
        for length in (256, 320):
            assert by[task, length, "full"]["msr"] == 0.0 and by[task, length, "full"]["esr"] == 0.0
            assert by[task, length, "sparse"]["msr"] == 1.0 and by[task, length, "sparse"]["esr"] > 0.5
            assert by[task, length, "static:0.5"]["msr"] == 0.5
            assert by[task, length, f"gate:{root / 'gate'}"]["msr"] == 0.5
            assert 0.0 <= by[task, length, "elastic"]["msr"] <= 1.0
            assert all(0.0 <= c["score"] <= 100.0 for c in data["cells"])
    assert by["niah_single_1", 320, "full"]["prompt_tokens"] == 320  # RULER lengths exact
    assert data["full_fraction"]["full"] == [[1.0, 1.0], [1.0, 1.0]]
    assert data["full_fraction"][f"gate:{root / 'gate'}"] == [[0.0, 1.0], [1.0, 0.0]]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 40 and set(rows[0]) >= {"task", "length", "method", "score", "msr", "esr", "prefill_s"}
    assert (out / "table.md").read_text().startswith("Score (0-100)")
    for name in ("msr_by_task.png", "routing_heatmap.png", "score_vs_length.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_are_named(setup, capsys):
    root = setup
    with pytest.raises(ValueError, match="needs a trained router"):
        command.evaluate(str(root / "model"), methods="full,elastic", out=None)
    with pytest.raises(ValueError, match="gate directory 'nowhere'"):
        command.evaluate(str(root / "model"), methods="gate:nowhere", out=None)
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        command.evaluate(str(root / "model"), methods="fast", out=None)
    with pytest.raises(SystemExit):
        command.main(["eval", "--model", str(root / "model"), "--tasks", "nope", "--out", str(root / "x"),
                      "--quiet"])
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_add_parser_registers_eval():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    command.add_parser(sub)
    args = parser.parse_args(["eval", "--out", "d", "--methods", "full,static:0.7"])
    assert args.func is command.run_command and args.lengths == "2048,4096"


def test_batched_decoding_matches_one_by_one():
    from elastic_attention.eval.runner import greedy_batch

    model, tok = tiny_llama(seed=1), tiny_tokenizer()
    attach(model, ElasticConfig(sink=4, local=16))
    prompts = [tok("The sky is blue. " * 8)["input_ids"][:48], tok("The grass is green. " * 8)["input_ids"][:48]]
    texts, counts, _, _, stats, _ = greedy_batch(model, tok, prompts, 6, eos_ids=set())
    for row, prompt in enumerate(prompts):
        one, n, _, _, st, _ = greedy_batch(model, tok, [prompt], 6, eos_ids=set())
        assert one[0] == texts[row] and n[0] == counts[row] == 6
        assert torch.equal(st.decisions[0], stats.decisions[row])
    with pytest.raises(ValueError, match="one length"):
        greedy_batch(model, tok, [prompts[0], prompts[1][:40]], 2)


def test_newline_stop_rule_waits_for_content():
    from elastic_attention.eval.runner import _line_done

    assert not _line_done(":\n") and not _line_done("\n\n") and not _line_done(": 123")
    assert _line_done(":\n1234567\n") and _line_done(" 1234567.\nThe")


def test_make_data_tasks_static_at_the_elastic_msr_and_categories(setup, tmp_path):
    """make-data tasks evaluate (unseen draws, scored), static:elastic runs at the elastic method's mean MSR,
    and the table summarises by category."""
    from elastic_attention.eval.mix import SCORING, mix_samples
    from elastic_attention.training.make_data import make_records

    root = setup
    tok = tiny_tokenizer()
    for seed in (0, 1):  # never a prompt of make-data, whatever its seed
        made = {r["prompt"] for r in make_records(tok, [300], 2, seed=seed, tasks=["passkey", "topic_ending"])}
        for task in ("passkey", "topic_ending"):
            for s in mix_samples(tok, task, 300, 2, seed=seed):
                assert tok.decode(s.input_ids) not in made
    sample = mix_samples(tok, "kv_retrieval", 300, 1)[0]
    assert sample.scorer(sample.answers[0] + '"') == 1.0 and sample.scorer("no idea") == 0.0
    assert set(SCORING) == {"passkey", "multikey_needle", "kv_retrieval", "variable_tracking", "multidoc_qa",
                            "prose_continuation", "code_continuation", "fewshot_pattern", "topic_ending"}

    results, paths = command.evaluate(str(root / "model"), router=str(root / "router"),
                                      methods="full,elastic,static:elastic", tasks="passkey,topic_ending,vt",
                                      lengths="300", samples=2, out=tmp_path, max_new_tokens=2, score_samples=2,
                                      score_length=256, sparsity_bias=0.5, progress=False, plots=False)
    elastic = [r["msr"] for r in results.records if r["method"] == "elastic"]
    matched = results.config["static_elastic_msr"]
    assert matched == pytest.approx(sum(elastic) / len(elastic))
    static = [r["msr"] for r in results.records if r["method"] == "static:elastic"]
    assert len(static) == len(elastic) and all(abs(m - matched) <= 0.5 / 4 for m in static)  # 4 heads: rounding
    assert results.config["categories"] == {"passkey": "sensitive", "topic_ending": "robust", "vt": "sensitive"}
    assert results.config["sparsity_bias"] == 0.5
    table = paths["table"].read_text()
    assert "| sensitive |" in table and "| robust |" in table and f"MSR {matched:.3f}" in table
    with pytest.raises(ValueError, match="list 'elastic' too"):
        command.evaluate(str(root / "model"), methods="full,static:elastic", out=None)
