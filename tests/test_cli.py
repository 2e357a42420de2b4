"""The command line for a first-time user: bad input ends in one line on stderr and exit code 2 before any
model loads; long prompts are refused (or cut on request); free text goes through the chat template; the
built-in prompt is longer than sink + local; static:MSR scores are cached; --lengths takes commas and
spaces; --help imports neither torch nor transformers. Tiny random models, except one default-model test."""

import json
import subprocess
import sys

import pytest
import torch

import elastic_attention.models as models
from elastic_attention import ElasticConfig, attach, cli, save_router
from elastic_attention.baselines import retrieval_scores, scores_cache_path
from elastic_attention.checks import parse_lengths
from elastic_attention.eval import command as eval_command
from helpers import tiny_model
from test_eval_fixtures import tiny_llama, tiny_tokenizer

CHAT = ("{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny model directory (1024-token context), one with a chat template, its router and a foreign router."""
    root = tmp_path_factory.mktemp("cli")
    model, tok = tiny_llama(), tiny_tokenizer()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    model.save_pretrained(root / "chat")
    tok.chat_template = CHAT
    tok.save_pretrained(root / "chat")
    tok.chat_template = None  # the tokenizer is cached for other tests
    attach(model, ElasticConfig(sink=4, local=16))
    save_router(model, root / "router")
    save_router(attach(tiny_model("llama"), ElasticConfig(sink=4, local=16)), root / "foreign")  # head_dim 16, not 8
    (root / "file").write_text("not a folder\n")
    return root


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(models, "load_model", refuse)


def run(capsys, *argv):
    """cli.main -> (exit code, stdout, stderr lines without progress bars)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line and "Loading" not in line]
    return code, out, lines


def one_error(capsys, *argv) -> str:
    code, out, lines = run(capsys, *argv)
    assert code == 2 and not out
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
    return errors[0]


def test_help_imports_neither_torch_nor_transformers():
    code = ("import sys, elastic_attention.cli as c; c.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "[]", res.stderr
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0


def test_generate_bad_input_fails_before_the_model_loads(root, tmp_path, capsys, monkeypatch, no_model):
    model = root / "model"
    assert "--prompt-file 'missing.txt': no such file" in one_error(capsys, "generate", "--prompt-file", "missing.txt")
    assert "prompt is empty" in one_error(capsys, "generate", "--prompt", " ")
    assert "--mode 'static:1.7'" in one_error(capsys, "generate", "--mode", "static:1.7")
    assert "--mode 'static:abc'" in one_error(capsys, "generate", "--mode", "static:abc")
    assert "unknown --mode 'half'" in one_error(capsys, "generate", "--mode", "half")
    assert "sink=0" in one_error(capsys, "generate", "--model", model, "--sink", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda: this machine has no usable CUDA GPU" in one_error(
        capsys, "generate", "--model", model, "--device", "cuda")
    assert "--device 'gpu0'" in one_error(capsys, "info", "--model", model, "--device", "gpu0")
    # Routers: another model's, a corrupt config (named), a truncated weights file (named).
    err = one_error(capsys, "generate", "--model", model, "--router", root / "foreign")
    assert "trained for another model" in err and "head_dim: router 16 vs model 8" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("elastic_config.json", "router.safetensors"):
        (bad / name).write_bytes((root / "router" / name).read_bytes())
    weights = (bad / "router.safetensors").read_bytes()
    (bad / "router.safetensors").write_bytes(weights[:len(weights) // 2])
    err = one_error(capsys, "generate", "--model", model, "--router", bad)
    assert "router.safetensors" in err and "truncated or corrupt" in err
    (bad / "elastic_config.json").write_text('{"sink": 4,')
    assert "elastic_config.json' is not a valid router config" in one_error(
        capsys, "generate", "--model", model, "--router", bad)
    assert "is not a router directory" in one_error(capsys, "generate", "--model", model, "--router", tmp_path / "no")


def test_long_prompt_refused_or_truncated(root, tmp_path, capsys):
    text = "The grass is green. " * 300  # > 1024 tokens with the tiny tokenizer
    err = one_error(capsys, "generate", "--model", root / "model", "--prompt", text)
    assert "more than the model's context of 1024" in err and "--truncate left" in err
    (tmp_path / "p.txt").write_text(text)
    code, out, lines = run(capsys, "generate", "--model", root / "model", "--prompt-file", tmp_path / "p.txt",
                           "--truncate", "left", "--max-new-tokens", "2", "--json")
    assert code == 0 and json.loads(out)["prompt_tokens"] == 1022
    assert any("--truncate left cut the prompt" in line and "to 1022 tokens" in line for line in lines)
    assert any("router: none ships for this model" in line for line in lines)  # no shipped router fits


def test_chat_template_by_default_and_no_chat(root, capsys):
    args = ["generate", "--prompt", "Which colour is the sky?", "--max-new-tokens", "2", "--json", "--model"]
    code, out, lines = run(capsys, *args, root / "chat")
    chat = json.loads(out)
    code2, out2, _ = run(capsys, *args, root / "chat", "--no-chat")
    raw = json.loads(out2)
    assert code == code2 == 0 and chat["chat"] and not raw["chat"]
    assert chat["prompt_tokens"] > raw["prompt_tokens"]
    code, out, _ = run(capsys, *args, root / "model")  # no template: plain text
    assert code == 0 and not json.loads(out)["chat"]


def test_builtin_prompt_outgrows_sink_plus_local_and_short_prompt_note(root, capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["generate"])
    assert cli._passkey_length(args, ElasticConfig(), 16, 8192) == 2 * (128 + 2048)  # bare config: 4352 > 2176
    assert cli._passkey_length(args, ElasticConfig(sink=64, local=512), 16, 8192) == 2048  # shipped router's
    assert cli._passkey_length(args, ElasticConfig(), 16, 1024) == 1008  # capped by the context
    code, out, lines = run(capsys, "generate", "--model", root / "model", "--router", root / "router", "--mode",
                           "sparse", "--max-new-tokens", "2", "--json")
    result = json.loads(out)
    assert code == 0 and result["prompt_tokens"] == 1022 and result["esr"] > 0.5 and "passkey" in result
    assert not any("sparsity saves nothing" in line for line in lines)
    code, out, lines = run(capsys, "generate", "--model", root / "model", "--router", root / "router", "--mode",
                           "sparse", "--prompt", "The sky is blue.", "--max-new-tokens", "2", "--json")
    assert code == 0 and json.loads(out)["esr"] == 0.0
    assert any("SSA heads keep every token at this length: sparsity saves nothing" in line for line in lines)


def test_static_scores_are_cached(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ELASTIC_CACHE_DIR", str(tmp_path))
    argv = ["generate", "--model", root / "model", "--router", root / "router", "--mode", "static:0.5",
            "--score-samples", "2", "--score-length", "256", "--max-new-tokens", "2", "--json"]
    code, out, lines = run(capsys, *argv)
    assert code == 0 and json.loads(out)["msr"] == 0.5
    assert any("retrieval scores: measuring 2 passkey prompts" in line for line in lines)
    import elastic_attention.baselines as baselines

    monkeypatch.setattr(baselines, "_measure", lambda *a: pytest.fail("scores measured again"))
    code, out, lines = run(capsys, *argv)
    assert code == 0 and any("retrieval scores: cached in" in line for line in lines)
    # The key is the weights and the scoring prompts: eval's runner shares the file.
    model, tok = tiny_llama(), tiny_tokenizer()
    path = scores_cache_path(model, tok, 2, 256)
    assert path.is_file() and path.parent == tmp_path / "retrieval-scores"
    assert retrieval_scores(model, tok, 2, 256, cache=True).shape == (2, 2)
    assert scores_cache_path(model, tok, 3, 256) != path and scores_cache_path(tiny_llama(seed=1), tok, 2, 256) != path


def test_lengths_take_commas_and_spaces(root, tmp_path, capsys, monkeypatch):
    assert parse_lengths("2048,4096") == parse_lengths(["2048", "4096"]) == parse_lengths(["2k,4k"]) == [2048, 4096]
    with pytest.raises(ValueError, match="--lengths: length '2x'"):
        parse_lengths(["2048", "2x"])
    parser = cli.build_parser()
    for form in (["300,320"], ["300", "320"]):
        args = parser.parse_args(["eval", "--out", "d", "--lengths", *form])
        assert parse_lengths(args.lengths) == [300, 320]
        args = parser.parse_args(["make-data", "--per-task", "1", "--out", "x", "--lengths", *form])
        assert parse_lengths(args.lengths) == [300, 320]
    code, out, _ = run(capsys, "make-data", "--model", root / "model", "--lengths", "300", "320", "--per-task", "1",
                       "--tasks", "passkey,topic_ending", "--out", tmp_path / "mix.jsonl")
    assert code == 0 and len((tmp_path / "mix.jsonl").read_text().splitlines()) == 4


def test_eval_train_make_data_bad_input(root, tmp_path, capsys, monkeypatch, no_model):
    model = root / "model"
    base = ["eval", "--model", model, "--methods", "full", "--quiet", "--out", tmp_path / "e", "--lengths", "512"]
    assert "unknown task 'nope'" in one_error(capsys, *base, "--tasks", "nope")
    assert "--lengths 2048 is longer than the model's context of 1024" in one_error(
        capsys, *base, "--tasks", "vt", "--lengths", "512", "2048")
    assert "trained for another model" in one_error(capsys, *base, "--tasks", "vt", "--router", root / "foreign")
    blocked = root / "file" / "sub"  # a path under a file can never be created
    assert f"--out '{blocked}' cannot be written" in one_error(capsys, *base[:-4], "--out", blocked, "--lengths", "512")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda" in one_error(capsys, *base, "--device", "cuda")
    with pytest.raises(SystemExit):  # eval's own entry point: the same one line
        eval_command.main(["eval", "--model", str(model), "--tasks", "nope", "--out", str(tmp_path / "e")])
    assert "unknown task 'nope'" in capsys.readouterr().err

    data = tmp_path / "mix.jsonl"
    data.write_text('{"task": "t", "category": "robust", "prompt": "p", "answer": "a"}\n')
    err = one_error(capsys, "train", "--model", model, "--data", data, "--out", blocked)
    assert f"--out '{blocked}' cannot be written" in err
    md = ["make-data", "--model", model, "--per-task", "1"]
    assert "--out" in one_error(capsys, *md, "--lengths", "300", "--out", blocked / "mix.jsonl")
    assert "is a directory" in one_error(capsys, *md, "--lengths", "300", "--out", tmp_path)
    assert "longer than the model's context of 1024" in one_error(capsys, *md, "--lengths", "4096", "--out", data)
    assert "unknown task(s) ['nope']" in one_error(capsys, *md, "--lengths", "300", "--tasks", "nope", "--out", data)


@pytest.mark.slow
def test_default_model_router_chat_and_builtin_passkey(capsys):
    """The default model: the shipped router without --router, a free-text prompt answered through the chat
    template, and the built-in passkey prompt (plain text, longer than sink + local) still answered."""
    torch.set_num_threads(2)
    try:
        code, out, lines = run(capsys, "generate", "--prompt", "Write one sentence about the sea.",
                               "--max-new-tokens", "12", "--json")
        result = json.loads(out)
        assert code == 0 and result["chat"] and result["mode"] == "router" and "sea" in result["text"].lower()
        assert "router: shipped default for smollm2-135m-instruct (pass --router none for the bare model)" in lines
        code, out, lines = run(capsys, "generate", "--max-new-tokens", "8", "--json")
        result = json.loads(out)
        assert code == 0 and not result["chat"] and result["passkey_found"], result
        assert result["prompt_tokens"] > 64 + 512  # the shipped router's sink + local
    finally:
        torch.set_num_threads(1)
