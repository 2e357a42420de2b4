"""Checks of command-line input, run before any model work so a mistake costs a second, not a minute.

Each raises ValueError with one line that names the bad value and the fix. Nothing here imports torch
or transformers at module level: `elastic-attn --help` stays fast.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def split_list(values) -> list[str]:
    """'a,b', ['a', 'b'] or ['a,b', 'c'] -> ['a', 'b', 'c']: commas and spaces both separate items."""
    if isinstance(values, str):
        values = [values]
    return [item for value in values for item in str(value).replace(",", " ").split()]


def parse_lengths(values, flag: str = "--lengths") -> list[int]:
    """Token counts from '2048,4096', '2048 4096', ['2k', '4096'] or [2048, 4096] ('k' = 1024)."""
    out = []
    for item in split_list(values):
        text = item.lower()
        try:
            value = int(text.removesuffix("k")) * (1024 if text.endswith("k") else 1)
        except ValueError:
            raise ValueError(f"{flag}: length {item!r} is not a number of tokens (e.g. 2048 or 4k)") from None
        if value < 1:
            raise ValueError(f"{flag}: length {item!r} must be positive")
        out.append(value)
    if not out:
        raise ValueError(f"no lengths given to {flag} (e.g. {flag} 2048,4096)")
    return out


def context_length(config) -> int | None:
    """The longest sequence a model's positions cover (config.max_position_embeddings), if it says."""
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def check_lengths_fit(lengths, config, flag: str = "--lengths") -> None:
    """Refuse lengths beyond the model's context: the model was never trained on such positions."""
    limit = context_length(config)
    too_long = [n for n in lengths if limit is not None and n > limit]
    if too_long:
        raise ValueError(f"{flag} {too_long[0]} is longer than the model's context of {limit} tokens "
                         f"(config.max_position_embeddings); use lengths up to {limit}")


def check_out_dir(path, flag: str = "--out") -> Path:
    """Create the output directory now and write a test file in it, so a bad path fails before the run."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {str(path)!r} cannot be written ({err.strerror or err}); "
                         "give a directory you can write to") from None
    return path


def check_out_file(path, flag: str = "--out") -> Path:
    """The same for an output file: its folder must be writable and the path must not be a directory."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a directory; give a file name, e.g. {path / 'mix.jsonl'}")
    check_out_dir(path.parent if str(path.parent) else Path("."), flag)
    return path


def read_text_file(path, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{flag} {str(path)!r}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {str(path)!r} is not UTF-8 text") from None
    except OSError as err:
        raise ValueError(f"{flag} {str(path)!r} cannot be read ({err.strerror or err})") from None


def resolve_device(name: str | None) -> str:
    """'auto' (or None) -> 'cuda' when a GPU is usable, else 'cpu'; a CUDA device must exist."""
    import torch

    name = name or "auto"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no usable CUDA GPU (torch.cuda.is_available() "
                             "is False); use --device cpu or --device auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type not in ("cpu", "mps"):
        raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return name
