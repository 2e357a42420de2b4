"""Router training on a tiny random model: learning, multipliers, frozen backbone, resume, errors, gloo."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import elastic_attention as ea
from elastic_attention.gate import load_static_gate
from elastic_attention.training import TrainConfig, train
from elastic_attention.training.data import Batcher, Targets, collate, encode, load_records, parse_target
from elastic_attention.training.make_data import TASKS, make_records
from helpers import tiny_model
from training_tools import TOY_MODEL, TOY_POOL, char_tokenizer, instruction_records, two_task_records, write_jsonl

CFG = ea.ElasticConfig(sink=2, local=4)
FAST = dict(max_len=64, batch_size=4, lr=3e-2, lambda_lr=3e-2, save_every=1000, progress=False)


def backbone_hashes(model):
    return {k: hashlib.sha256(v.detach().cpu().numpy().tobytes()).hexdigest()
            for k, v in model.state_dict().items() if "elastic_router" not in k}


def router_state(model):
    return {k: v.clone() for k, v in ea.routers(model).state_dict().items()}


def held_out_msr(model, tok, task):
    model.eval()
    msrs = []
    with torch.no_grad():
        for r in two_task_records(40, seed=99):
            if r["task"] == task:
                model(torch.tensor([tok(r["prompt"], add_special_tokens=False)["input_ids"]]))
                msrs.append(ea.routing_stats(model).msr.item())
    return sum(msrs) / len(msrs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run on two tasks whose prompts differ (letters vs digits), targets 1.0 and 0.0."""
    tmp = tmp_path_factory.mktemp("run")
    data = write_jsonl(two_task_records(64, seed=0), tmp / "data.jsonl")
    tok = char_tokenizer()
    model = ea.attach(tiny_model("llama"), CFG)
    before, routers_before = backbone_hashes(model), router_state(model)
    entries = []
    cfg = TrainConfig(data=str(data), out=str(tmp / "out"), steps=60,
                      targets={"robust": 1.0, "sensitive": 0.0}, **FAST)
    summary = train(cfg, model, tok, on_step=entries.append)
    return dict(model=model, tok=tok, before=before, routers_before=routers_before, entries=entries,
                summary=summary, out=tmp / "out", data=data)


def test_router_learns_per_prompt_sparsity(trained):
    high = held_out_msr(trained["model"], trained["tok"], "lower")
    low = held_out_msr(trained["model"], trained["tok"], "digits")
    assert high - low >= 0.5, (high, low)


def test_routing_follows_the_instruction_alone(tmp_path):
    """Two tasks whose prompts differ only in their 14-character first line (bodies drawn alike, the same
    question at the end), targets 1.0 / 0.0, the default recipe (standardised router inputs, router lr
    5e-3, multiplier lr 5e-2): on 40 held-out prompts the robust task runs at least 0.8 sparser than the
    sensitive one. benchmarks/router_learning_toy.py (variant recipe+300steps) measured seeds 0 / 1 / 2 at
    gaps 0.94 / 0.84 / 0.81; the paper's settings give 0.00 on every seed (one MSR for every prompt)."""
    data = write_jsonl(instruction_records(128, seed=0), tmp_path / "data.jsonl")
    tok = char_tokenizer()
    model = ea.attach(tiny_model("llama", **TOY_MODEL), ea.ElasticConfig(sink=4, local=32, pool_tokens=TOY_POOL))
    train(TrainConfig(data=str(data), out=str(tmp_path / "out"), steps=300, max_len=384, batch_size=4,
                      targets={"robust": 1.0, "sensitive": 0.0}, save_every=1000, progress=False), model, tok)
    model.eval()
    msr = {"copy": [], "find": []}
    with torch.no_grad():
        for r in instruction_records(40, seed=99):
            model(torch.tensor([tok(r["prompt"], add_special_tokens=False)["input_ids"]]))
            msr[r["task"]].append(ea.routing_stats(model).msr.item())
    robust, sensitive = (sum(v) / len(v) for v in (msr["copy"], msr["find"]))
    assert robust - sensitive >= 0.8, (robust, sensitive)


def test_multiplier_of_a_constraint_below_target_grows(trained):
    first, last = trained["entries"][0]["constraints"], trained["entries"][-1]["constraints"]
    assert first["robust"]["msr"] < first["robust"]["target"]  # below target at the start
    # The price of staying below: lambda2 grows and lambda1 falls (-lambda1 rewards more sparsity).
    assert last["robust"]["lambda2"] > first["robust"]["lambda2"] + 0.1
    assert last["robust"]["lambda1"] < first["robust"]["lambda1"] - 0.1
    # Above target (sensitive, target 0): lambda1 grows.
    assert last["sensitive"]["lambda1"] > first["sensitive"]["lambda1"] + 0.1


def test_only_router_and_multipliers_change(trained):
    model = trained["model"]
    assert backbone_hashes(model) == trained["before"]
    assert all(not p.requires_grad for n, p in model.named_parameters() if "elastic_router" not in n)
    after = router_state(model)
    assert any(not torch.equal(after[k], v) for k, v in trained["routers_before"].items())
    lag = trained["summary"]["lagrangian"]
    assert lag.lambda1.abs().min() > 0  # started at zero


def test_outputs_log_plot_and_router(trained):
    out = trained["out"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and len(log) == 61
    step = log[-1]
    assert {"ce", "msr", "tau", "lr", "constraints"} <= set(step)
    assert {"ce", "msr", "target", "lambda1", "lambda2"} <= set(step["constraints"]["robust"])
    assert (out / "curves.png").stat().st_size > 1000
    fresh = ea.load_router(tiny_model("llama"), out)
    for a, b in zip(ea.routers(fresh).parameters(), ea.routers(trained["model"]).parameters()):
        assert torch.equal(a, b)


def test_interrupt_and_resume_gives_the_same_router(tmp_path):
    data = write_jsonl(two_task_records(32, seed=1), tmp_path / "data.jsonl")
    tok = char_tokenizer()
    common = dict(FAST, data=str(data), steps=6, save_every=3, seed=5)
    straight = ea.attach(tiny_model("llama"), CFG)
    train(TrainConfig(out=str(tmp_path / "a"), **common), straight, tok)

    def interrupt(entry):
        if entry["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "b"), **common), ea.attach(tiny_model("llama"), CFG), tok,
              on_step=interrupt)
    resumed = ea.attach(tiny_model("llama"), CFG)
    summary = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **common), resumed, tok)
    assert summary["resumed_from"] == 3
    for a, b in zip(ea.routers(straight).state_dict().values(), ea.routers(resumed).state_dict().values()):
        assert torch.equal(a, b)
    steps = [json.loads(x).get("step") for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("line, message", [
    ('{"task": "a", "category": "robust", "prompt": "x"', "not valid JSON"),
    ('{"task": "a", "category": "robust", "prompt": "x"}', "missing field(s) ['answer']"),
    ('{"task": "a", "category": "fuzzy", "prompt": "x", "answer": "y"}', "category 'fuzzy'"),
    ('["a"]', "expected a JSON object"),
])
def test_malformed_data_names_file_and_line(tmp_path, line, message):
    good = json.dumps({"task": "a", "category": "robust", "prompt": "xy", "answer": "z"})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ValueError) as err:
        load_records(path)
    assert f"{path}:3" in str(err.value) and message in str(err.value)


def test_impossible_targets_are_rejected(tmp_path):
    records = [ea.training.data.Record("t", "robust", "p", "a")]
    with pytest.raises(ValueError, match=r"impossible.*\[0, 1\]"):
        parse_target("sensitive=1.5")
    with pytest.raises(ValueError, match="impossible"):
        Targets.build(records, {"robust": -0.2})
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_target("0.5")
    with pytest.raises(ValueError, match="neither a category"):
        Targets.build(records, {"nosuchtask": 0.5})
    data = write_jsonl(two_task_records(8, seed=0), tmp_path / "d.jsonl")
    with pytest.raises(ValueError, match="impossible"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "o"), steps=1, targets={"lower": 2.0}, **{
            k: v for k, v in FAST.items()}), ea.attach(tiny_model("llama"), CFG), char_tokenizer())


def test_cli_reports_errors(tmp_path, capsys):
    from elastic_attention.training.__main__ import main

    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n")
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "o"), "--model", "unused"]) == 2
    assert f"{path}:1" in capsys.readouterr().err
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "o"), "--target", "robust=3"]) == 2
    assert "impossible" in capsys.readouterr().err


def test_targets_per_category_and_task():
    records = [ea.training.data.Record(t, c, "p", "a") for t, c in
               [("qa", "sensitive"), ("needle", "sensitive"), ("code", "robust")]]
    t = Targets.build(records, {"needle": 0.2, "robust": 0.9})
    assert t.target == {"sensitive": 0.7, "needle": 0.2, "robust": 0.9}
    assert t.of_task == {"qa": "sensitive", "needle": "needle", "code": "robust"}
    static = Targets.build(records, None, single="all")
    assert static.target == {"all": pytest.approx((0.7 + 0.7 + 1.0) / 3)}


def test_long_prompts_lose_their_middle_and_batches_group_lengths():
    tok = char_tokenizer()
    records = [ea.training.data.Record("t", "robust", "abcdefghijklmnopqrstuvwxyz", "XY"),
               ea.training.data.Record("t", "robust", "short", "XY")]
    samples, cut = encode(records, tok, 12, Targets.build(records))
    assert cut == 1
    text = tok.decode(samples[0].ids).replace(" ", "")
    assert text == "abcdevwxyzXY" and samples[0].prompt_len == 10
    lens = [{"task": "t", "category": "robust", "prompt": "x" * n, "answer": "y"} for n in range(1, 65)]
    recs = [ea.training.data.Record(**r) for r in lens]
    samples, _ = encode(recs, tok, 100, Targets.build(recs))
    spread = [max(len(samples[i].ids) for i in mb) - min(len(samples[i].ids) for i in mb)
              for mb in Batcher(samples, 8, seed=0, window=8).epoch(0)]
    assert max(spread) <= 7  # sorted within the window: each micro-batch holds 8 neighbouring lengths


def test_padded_batch_routes_each_prompt_on_its_own_tokens():
    tok = char_tokenizer()
    model = ea.attach(tiny_model("llama", seed=3), CFG).eval()
    recs = [ea.training.data.Record("t", "robust", p, " ab") for p in ("hello world", "xyz")]
    samples, _ = encode(recs, tok, 64, Targets.build(recs))
    rt = model.elastic_runtime
    with torch.no_grad():
        batch = collate(samples, tok.pad_token_id, "cpu")
        rt.route_mask = batch["prompt_mask"]
        model(batch["input_ids"], attention_mask=batch["attention_mask"])
        together = ea.routing_stats(model).logits
        alone = []
        for s in samples:
            rt.route_mask = torch.ones(1, s.prompt_len, dtype=torch.bool)
            rt.route_mask = torch.cat([rt.route_mask, torch.zeros(1, len(s.ids) - s.prompt_len, dtype=torch.bool)], 1)
            model(torch.tensor([s.ids]))
            alone.append(ea.routing_stats(model).logits)
            rt.route_mask = None
            model(torch.tensor([s.ids[:s.prompt_len]]))  # inference sees the prompt only: same routing
            assert torch.allclose(ea.routing_stats(model).logits, alone[-1], atol=1e-5)
    assert torch.allclose(together, torch.cat(alone), atol=1e-5)


def test_static_gate_baseline(tmp_path):
    data = write_jsonl(two_task_records(32, seed=2), tmp_path / "d.jsonl")
    model = ea.attach(tiny_model("llama"), CFG)
    entries = []
    summary = train(TrainConfig(data=str(data), out=str(tmp_path / "g"), steps=30, static_gate=True,
                                targets={"all": 1.0}, **FAST), model, char_tokenizer(), on_step=entries.append)
    assert list(entries[-1]["constraints"]) == ["all"]
    gate = load_static_gate(model, tmp_path / "g")
    assert torch.equal(gate.logits, summary["learner"].logits.detach())
    assert gate.mask().float().mean() >= 0.75  # target 1.0: most heads learned to be sparse


def test_make_data_tasks_and_seeds():
    tok = char_tokenizer()
    records = make_records(tok, [300], per_task=1, seed=0)
    assert sorted(r["task"] for r in records) == sorted(TASKS)
    assert {r["category"] for r in records} == {"robust", "sensitive"}
    for r in records:
        n = len(tok(r["prompt"], add_special_tokens=False)["input_ids"])
        assert 150 <= n <= 700, (r["task"], n)
        assert r["answer"].strip()
    again = make_records(tok, [300], per_task=1, seed=0)
    other = make_records(tok, [300], per_task=1, seed=1)
    assert again == records and other != records
    needle = next(r for r in records if r["task"] == "passkey")
    assert needle["answer"].strip() in needle["prompt"]


def _tiny_model_dir(path: Path) -> Path:
    model = tiny_model("llama")
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def test_two_processes_with_gloo_match_one_process(tmp_path):
    model_dir = _tiny_model_dir(tmp_path / "model")
    data = write_jsonl(two_task_records(32, seed=3), tmp_path / "d.jsonl")
    args = ["--model", str(model_dir), "--data", str(data), "--steps", "3", "--max-len", "64",
            "--batch-size", "2", "--lr", "1e-2", "--device", "cpu", "--no-progress", "--seed", "7"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", "-m", "elastic_attention.training", "train",
                          "--out", str(tmp_path / "two"), *args], env=env, capture_output=True, text=True,
                         timeout=150)
    assert run.returncode == 0, run.stderr[-3000:]
    log = [json.loads(x) for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["world"] == 2
    # One process accumulating the same two micro-batches per step gives the same router.
    from elastic_attention.training.__main__ import main
    assert main(["train", "--out", str(tmp_path / "one"), "--grad-accum", "2", *args]) == 0
    two = ea.load_router(tiny_model("llama"), tmp_path / "two")
    one = ea.load_router(tiny_model("llama"), tmp_path / "one")
    for a, b in zip(ea.routers(two).parameters(), ea.routers(one).parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_activation_checkpointing_gives_the_same_router(tmp_path):
    data = write_jsonl(two_task_records(16, seed=4), tmp_path / "d.jsonl")
    got = []
    for flag in (False, True):
        model = ea.attach(tiny_model("llama"), CFG)
        train(TrainConfig(data=str(data), out=str(tmp_path / str(flag)), steps=3, checkpointing=flag, **FAST),
              model, char_tokenizer())
        got.append(ea.routers(model).state_dict())
    for k in got[0]:
        assert torch.allclose(got[0][k], got[1][k], atol=1e-6), k
