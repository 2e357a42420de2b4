"""Routers on disk, like a PEFT adapter: elastic_config.json + router.safetensors.

Routers trained by the project ship inside the package (elastic_attention/routers/NAME/); `load_router(model)`
without a path, or with "default", loads the one trained for the model's shape.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import ElasticConfig
from .integrations.hf import attach, detach, model_signature, routers, runtime_of

CONFIG_NAME = "elastic_config.json"
WEIGHTS_NAME = "router.safetensors"
SHIPPED = Path(__file__).resolve().parent / "routers"


def save_router(model, path) -> Path:
    """Write the attached routers and their config to the directory `path` (created if needed)."""
    state = {f"layers.{name}": t.detach().contiguous().cpu() for name, t in routers(model).state_dict().items()}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _atomic_write(path / WEIGHTS_NAME, lambda f: save_file(state, f))
    write_config(model, path)
    return path


def write_config(model, path: Path) -> None:
    """elastic_config.json: the ElasticConfig plus the shape of the base model it was trained on."""
    meta = runtime_of(model).config.to_dict() | {"base_model": model_signature(model)}
    _atomic_write(path / CONFIG_NAME, lambda f: Path(f).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))


def read_config(model, path: Path, weights_name: str, kind: str, writer: str) -> ElasticConfig:
    """Read elastic_config.json of an adapter directory and check it was trained for `model`'s shape."""
    config, saved = read_adapter_dir(path, weights_name, kind, writer)
    check_signature(saved, model_signature(model), path, kind)
    return config


def read_adapter_dir(path, weights_name: str = WEIGHTS_NAME, kind: str = "router", writer: str = "save_router"):
    """(ElasticConfig, saved base-model signature or None) of an adapter directory, without any model.

    Every problem (missing files, a corrupt config or a truncated weights file) is a ValueError that
    names the file, so a command can check its --router before loading the model."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / weights_name).is_file():
        raise ValueError(f"{str(path)!r} is not a {kind} directory: it needs {CONFIG_NAME} and {weights_name} "
                         f"(written by {writer})")
    config_file = path / CONFIG_NAME
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
        saved = meta.pop("base_model", None)
        config = ElasticConfig.from_dict(meta)
    except (ValueError, TypeError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{str(config_file)!r} is not a valid {kind} config ({err}); write it again with "
                         f"{writer}") from None
    _check_weights_file(path / weights_name, kind, writer)
    return config, saved


def _check_weights_file(file: Path, kind: str, writer: str) -> None:
    """Open the safetensors header: a truncated or corrupt file fails here with its name, not in torch."""
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except Exception as err:  # safetensors raises its own error type (and OSError) on a bad file
        raise ValueError(f"{str(file)!r} is not a readable safetensors file ({err}); it may be truncated or "
                         f"corrupt: write it again with {writer}") from None


def check_router_dir(path, model_config) -> ElasticConfig:
    """Before a model loads: the router directory at `path` is readable and was trained for a model with
    this transformers config (model_signature reads nothing but `.config`)."""
    config, saved = read_adapter_dir(path)
    check_signature(saved, model_signature(SimpleNamespace(config=model_config)), path)
    return config


def check_signature(saved: dict | None, ours: dict, path, kind: str = "router") -> None:
    """Refuse an adapter saved for a model of another shape, naming every field that differs."""
    if saved is None:
        return
    diff = [f"{k}: {kind} {saved.get(k)!r} vs model {ours[k]!r}" for k in ours if saved.get(k) != ours[k]]
    if diff:
        raise ValueError(f"the {kind} in {str(path)!r} was trained for another model ({'; '.join(diff)}); "
                         f"load it onto the model it was trained for, or train a {kind} for this one")


def shipped_routers() -> dict[str, Path]:
    """The routers that ship with the package: name -> directory."""
    if not SHIPPED.is_dir():
        return {}
    return {p.name: p for p in sorted(SHIPPED.iterdir())
            if (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()}


def default_router_path(model) -> Path:
    """The shipped router trained for `model`'s shape (model type, layers, KV heads, head_dim)."""
    ours = model_signature(model)
    for path in shipped_routers().values():
        if json.loads((path / CONFIG_NAME).read_text()).get("base_model") == ours:
            return path
    names = ", ".join(f"{n} ({json.loads((p / CONFIG_NAME).read_text()).get('base_model')})"
                      for n, p in shipped_routers().items()) or "none"
    raise ValueError(f"no shipped router fits this model ({ours}); shipped routers: {names}. Train one with "
                     "`elastic-attn train` and load it with load_router(model, DIR)")


def load_router(model, path=None):
    """Load routers saved by `save_router` onto `model` (attaching them if needed). Returns the model.

    path None or "default": the shipped router trained for this model (the default model has one)."""
    path = default_router_path(model) if path is None or str(path) == "default" else Path(path)
    config = read_config(model, path, WEIGHTS_NAME, "router", "save_router")
    try:
        state = {k.removeprefix("layers."): v for k, v in load_file(path / WEIGHTS_NAME).items()}
    except Exception as err:  # damage past the header that read_config checked
        raise ValueError(f"{str(path / WEIGHTS_NAME)!r} cannot be read ({err}); it may be truncated or "
                         "corrupt: write it again with save_router") from None
    if getattr(model, "elastic_runtime", None) is not None:
        detach(model)
    attach(model, config)
    try:
        routers(model).load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"router weights in {str(path)!r} do not fit this model's routers: {err}") from None
    return model


def _atomic_write(target: Path, write) -> None:
    """Write to a temporary file beside `target`, then rename: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600); a saved router is an ordinary file
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
