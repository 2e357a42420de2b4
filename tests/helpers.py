"""Shared test helpers: tiny random models and brute-force definitions of the attention modes.

The brute-force functions restate each mode's rule element by element with Python loops; they never
call the library's mask code, so the library is checked against an independent reading of the rules.
"""

from __future__ import annotations

import math

import torch

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def tiny_config(model_type: str = "llama", **overrides):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, PhiConfig, Qwen2Config, Qwen3Config

    if model_type == "gpt2":
        return GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128, **overrides)
    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config,
               "phi": PhiConfig}
    kwargs = dict(TINY)
    if model_type == "qwen3":
        kwargs["head_dim"] = 16  # Qwen3Config defaults to 128 whatever the hidden size
    kwargs.update(overrides)
    return classes[model_type](**kwargs)


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    """A tiny randomly initialised causal LM in fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    model.generation_config.pad_token_id = 0
    return model.eval()


def padded_batch(lengths, total: int, side: str = "left", vocab: int = 128, seed: int = 0):
    """Random ids [b, total] and a 2-D attention mask with `lengths[i]` real tokens on the other side."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "left":
            mask[row, total - n:] = 1
        else:
            mask[row, :n] = 1
    return ids, mask


# ---------------------------------------------------------------- brute-force masks (Python loops)

def brute_allowed(valid, q_len: int) -> torch.Tensor:
    """Causal + padding: query i (absolute position kv_len - q_len + i) may see key j iff j <= its
    position and key j is a real token. valid: [b, kv] bool. Returns [b, 1, q, kv] bool."""
    valid = torch.as_tensor(valid, dtype=torch.bool)
    b, kv_len = valid.shape
    flags = valid.tolist()
    rows = [[[flags[bi][j] and j <= kv_len - q_len + i for j in range(kv_len)] for i in range(q_len)]
            for bi in range(b)]
    return torch.tensor(rows, dtype=torch.bool).view(b, 1, q_len, kv_len)


def brute_ssa(allowed: torch.Tensor, sink: int, local: int) -> torch.Tensor:
    """Per row: the first `sink` and the last `local` of the keys the row may see."""
    out = allowed.tolist()
    for per_batch in out:
        for per_head in per_batch:
            for row in per_head:
                keys = [j for j, ok in enumerate(row) if ok]
                keep = set(keys[:sink]) | set(keys[max(len(keys) - local, 0):])
                row[:] = [j in keep for j in range(len(row))]
    return torch.tensor(out, dtype=torch.bool).view(allowed.shape)


def brute_xa(q, k, allowed, scale, block, stride, threshold) -> torch.Tensor:
    """XAttention block selection, restated from the docstring of `xa_mask`, per query head.

    Positions are absolute (queries are the last q of kv positions). Antidiagonal entries:
    (i + j) % stride == stride - 1, allowed pairs only. Tile (i // stride, j // stride) scores the sum
    of its entries' scaled logits / stride. Softmax over the tiles with entries of each tile row.
    Query block -> key block mass = mean over the block's tile rows that have entries. Keep the
    fewest key blocks (by descending mass) whose mass reaches threshold, plus the diagonal block and
    the block of the row's first allowed key; always within `allowed`.
    """
    b, hq, q_len, _ = q.shape
    hk, kv_len = k.shape[1], k.shape[2]
    off = kv_len - q_len
    out = [[[[False] * kv_len for _ in range(q_len)] for _ in range(hq)] for _ in range(b)]
    for bi in range(b):
        rows_allowed = allowed[bi, 0].tolist()
        for h in range(hq):
            kh = h // (hq // hk)
            logits = (q[bi, h].double() @ k[bi, kh].double().T * scale).tolist()
            tiles: dict[int, dict[int, float]] = {}
            for i in range(q_len):
                pos = off + i
                for j in range(kv_len):
                    if rows_allowed[i][j] and (pos + j) % stride == stride - 1:
                        row = tiles.setdefault(pos // stride, {})
                        row[j // stride] = row.get(j // stride, 0.0) + logits[i][j] / stride
            probs = {}
            for tr, row in tiles.items():
                top = max(row.values())
                z = sum(math.exp(v - top) for v in row.values())
                probs[tr] = {tk: math.exp(v - top) / z for tk, v in row.items()}
            kept_blocks = {}
            for qb in sorted({(off + i) // block for i in range(q_len)}):
                rows = [tr for tr in probs if tr * stride // block == qb]
                mass: dict[int, float] = {}
                for tr in rows:
                    for tk, p in probs[tr].items():
                        mass[tk * stride // block] = mass.get(tk * stride // block, 0.0) + p / len(rows)
                total = sum(mass.values())
                chosen, acc = set(), 0.0
                for kb, m in sorted(mass.items(), key=lambda kv: -kv[1]):
                    if acc >= threshold * total or m <= 0:
                        break
                    chosen.add(kb)
                    acc += m
                kept_blocks[qb] = chosen
            for i in range(q_len):
                pos = off + i
                real = [j for j in range(kv_len) if rows_allowed[i][j]]
                if not real:
                    continue
                blocks = kept_blocks[pos // block] | {pos // block, real[0] // block}
                for j in real:
                    out[bi][h][i][j] = (j // block) in blocks
    return torch.tensor(out, dtype=torch.bool).view(b, hq, q_len, kv_len)


def brute_attention(q, k, v, mask, scale) -> torch.Tensor:
    """Softmax attention row by row in float64; rows without an allowed key give zeros.
    q [b, hq, sq, d], k/v [b, hk, skv, d], mask broadcastable to [b, hq, sq, skv]."""
    b, hq, sq, d = q.shape
    hk = k.shape[1]
    mask = mask.expand(b, hq, sq, k.shape[2])
    out = torch.zeros(b, hq, sq, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for h in range(hq):
            kh = h // (hq // hk)
            for i in range(sq):
                idx = mask[bi, h, i].nonzero().flatten()
                if len(idx) == 0:
                    continue
                scores = (k[bi, kh, idx].double() @ q[bi, h, i].double()) * scale
                w = torch.exp(scores - scores.max())
                out[bi, h, i] = (w / w.sum()) @ v[bi, kh, idx].double()
    return out


def ssa_4d_mask(attention_mask_2d: torch.Tensor, sink: int, local: int) -> torch.Tensor:
    """The [b, 1, s, s] bool mask an unattached model needs to run every head as SSA."""
    valid = attention_mask_2d.bool()
    return brute_ssa(brute_allowed(valid, valid.shape[1]), sink, local)


def run_in_triton_interpreter(script: str, marker: str) -> None:
    """Run `script` in a fresh Python with TRITON_INTERPRET=1 (Triton kernels on the CPU, no GPU) and
    check that it printed `marker`. The variable must be set before triton is imported, hence the
    subprocess. Skips when triton is not installed."""
    import os
    import subprocess
    import sys

    import pytest

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    broken = _interpreter_broken(env)
    if broken:
        pytest.skip(broken)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert marker in res.stdout, res.stderr[-2000:]


# A kernel that only loops to an integer argument: nothing of the project's in it.
_PROBE = r"""
import torch, triton, triton.language as tl
@triton.jit
def probe(X, N):
    acc = 0.0
    for i in range(0, N):
        acc += 1.0
    tl.store(X, acc)
x = torch.zeros(1)
probe[(1,)](x, 3)
assert x.item() == 3.0
print("PROBE_OK")
"""
_PROBED: list = []


def _interpreter_broken(env) -> str | None:
    """Why this machine's Triton interpreter cannot run a loop bounded by a kernel argument, or None.
    Triton 3.6's interpreter turns such a bound into a one-element array, which NumPy 2.3 and later
    refuse to convert to an int (seen on the lent GPU machine); 3.9 runs it."""
    import subprocess
    import sys

    if not _PROBED:
        res = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
        _PROBED.append(None if "PROBE_OK" in res.stdout else
                       "this Triton's interpreter cannot run a loop bounded by a kernel argument "
                       f"(triton {_version('triton')}, numpy {_version('numpy')}: {res.stderr.strip()[-200:]}); "
                       "the GPU tests cover the kernels on such a machine")
    return _PROBED[0]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"
