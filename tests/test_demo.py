"""`elastic-attn demo`: a shortened run on the default model with its shipped router (the three methods on
identical prompts, the table, the verdict, the files), bad input before any model work, Ctrl-C."""

import json

import pytest

import elastic_attention.models as models
from elastic_attention import cli
from elastic_attention.eval import command as eval_command


def test_demo_short_run_on_the_default_model(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--tasks", "passkey,code_continuation", "--lengths", "1024", "--samples", "1",
                     "--max-new-tokens", "8", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    for name in ("results.json", "results.csv", "table.md", "msr_by_task.png", "score_vs_msr.png",
                 "routing_examples.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["methods"] == ["full", "elastic", "static:elastic"]
    cells = {(c["task"], c["method"]): c for c in results["cells"]}
    assert set(cells) == {(t, m) for t in ("passkey", "code_continuation")
                          for m in ("full", "elastic", "static:elastic")}
    assert cells["passkey", "full"]["msr"] == 0.0
    # the static baseline runs at the router's mean MSR (to one head in 90: its top heads stay full)
    elastic_msr = results["config"]["static_elastic_msr"]
    for task in ("passkey", "code_continuation"):
        assert abs(cells[task, "static:elastic"]["msr"] - elastic_msr) <= 1 / 90 + 1e-6
    # the table has one row per task and method, and the verdict names both categories
    rows = [line for line in stdout.splitlines() if line.startswith("| passkey") or line.startswith("| code_")]
    assert len(rows) == 6
    assert "elastic: mean MSR" in stdout and "sensitive tasks:" in stdout and "robust tasks:" in stdout
    assert "prefill: elastic" in stdout and str(out.resolve()) in stdout


@pytest.mark.parametrize("argv, words", [
    (["--tasks", "passkey,no_such_task"], ["no_such_task"]),
    (["--lengths", "100000"], ["100000"]),
    (["--router", "/no/such/router"], ["/no/such/router"]),
    (["--sparsity-bias", "nan"], ["sparsity"]),
])
def test_demo_bad_input_fails_before_the_model_loads(argv, words, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(models, "load_model", refuse)
    code = cli.main(["demo", "--out", str(tmp_path / "o"), *argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("elastic-attn demo: error:") and all(w in err[0] for w in words), err[0]


def test_demo_unwritable_out(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = cli.main(["demo", "--out", str(tmp_path / "file" / "sub")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--out" in err[0]


def test_demo_ctrl_c_keeps_what_finished(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"

    def interrupted(**kwargs):  # one task finished (its results written), then Ctrl-C
        out.mkdir()
        (out / "results.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_command, "evaluate", interrupted)
    code = cli.main(["demo", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and str(out / "results.json") in err
