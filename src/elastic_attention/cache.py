"""ElasticCache: a KV cache that keeps, after the prompt, only the entries each head can still attend to.

The prompt runs as any prefill (routed, over the whole prompt). Then each layer's cache is compacted by
that layer's decisions (all layers at once, when the first later call or `kv_bytes` needs it: reading the
decisions is one host sync for the whole model, not one per layer), per batch row and KV head:
- FA heads (and XA heads, see below) keep every position, packed together: [fa pairs, T, d].
- SSA heads keep the first `sink` real tokens and the last `local` ones in a fixed buffer
  [ssa pairs, sink + local, d]: slots [0, sink) hold the sink, slots [sink, sink + local) a ring of the
  window where the token of rank r (its index among the row's real tokens) lives in slot
  sink + (r - sink) % local. After a token is written the buffer holds exactly the keys SSA lets it
  see (rank < sink or rank > its rank - local), so decode needs no mask once the buffer is full.
- XA heads keep their whole KV (a later query's blocks may select any key) and decode attends to all
  of it: with this cache XAttention is a prefill-only sparsity.
Decode steps attend over the packed pairs only, the query heads of a GQA group stacked as the rows of
one head: on a GPU, one token per row and no padding, with attention/kernels/decode.py (all pairs in one
launch, split along the keys); otherwise with torch SDPA, the reference. The decisions are the prompt's,
as with a plain cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.cache_utils import Cache, CacheLayerMixin

from .attention.kernels import decode
from .attention.masks import SSA, causal_allowed
from .checks import context_length
from .integrations.hf import attention_modules, runtime_of

# Full heads gain one key per decode step. cuDNN's SDPA, torch's first choice on Hopper, builds a plan
# for every new shape: about 45 ms per step on an H200 (torch 2.11) against 0.05 ms for flash.
DECODE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
FA_ROOM = 256  # free positions kept after an FA pair's keys: a step writes in place, a copy every 256 steps
# Prompts held by the layers of one cache before their layouts are built (see ElasticLayer.compact): past
# this many bytes the layers so far are compacted at once (one sync), so a long prompt's peak memory stays
# near a compacting cache's instead of reaching a plain cache's (default model, batch 8 at 128K: 0.8 GB a layer).
HOLD_BYTES = 2 << 30


class ElasticCache(Cache):
    """A transformers Cache for one prompt (batch) of an attached model, then its decode steps.

    Use a new one for every prompt: `model.generate(ids, past_key_values=ElasticCache(model))`, or pass it
    to the model's forward in a loop of your own (generation.greedy_generate does). Tokens fed after
    the prompt are taken as real (not padding), as generate does.
    """

    def __init__(self, model):
        runtime = runtime_of(model)
        max_positions = context_length(model.config)
        layers = [ElasticLayer(module, runtime.config.sink, runtime.config.local, max_positions)
                  for module in attention_modules(model)]
        group = HeldPrompts(layers)
        for layer in layers:
            layer.group = group  # the first layer to need its layout builds every layer's (one host sync)
        self._user_defined = False
        super().__init__(layers=layers)

    @property
    def _is_user_defined(self) -> bool:
        return self._user_defined

    @_is_user_defined.setter
    def _is_user_defined(self, value: bool) -> None:
        # generate() marks the cache it is handed at the start of every call: one that holds tokens is being reused.
        if value and self.get_seq_length() > 0:
            raise ValueError(f"this ElasticCache holds a finished prompt of batch {self.layers[0].batch} "
                             f"({self.get_seq_length()} positions); create a new ElasticCache for every generate call")
        self._user_defined = value

    def kv_bytes(self) -> int:
        """Bytes of the key and value tensors held now."""
        return sum(layer.kv_bytes() for layer in self.layers)

    def full_kv_bytes(self) -> int:
        """Bytes a plain cache would hold for the same tokens: every position of every head."""
        return sum(layer.full_kv_bytes() for layer in self.layers)


class ElasticLayer(CacheLayerMixin):
    """One layer: holds the prompt until the attention function compacts it, then a CompactKV."""

    is_compileable = False
    is_croppable = False  # evicted window entries cannot come back
    is_sliding = False

    def __init__(self, module, sink: int, local: int, max_positions: int | None):
        super().__init__()
        self.module, self.state = module, module.elastic_state
        self.sink, self.local, self.max_positions = sink, local, max_positions
        self.length = 0  # positions seen, padding included (what a plain cache would hold)
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # this call's keys and values
        self.prompt: tuple | None = None  # (keys, values, modes, valid) of the prompt, until the layout is built
        self._kv: CompactKV | None = None
        self.batch: int | None = None  # rows of the prompt held
        self.group = HeldPrompts([self])
        self.full_bytes_per_position = 0  # batch * kv_heads * head_dim * 2 * element size

    # -- transformers' side: called by the attention module just before the attention function

    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if getattr(self.module, "elastic_state", None) is not self.state:
            raise ValueError("the routers of this model were detached or attached again after this ElasticCache "
                             "was created; create a new ElasticCache(model)")
        if self.pending is not None:
            raise RuntimeError("an earlier call through this ElasticCache did not reach the elastic attention "
                               "function; create a new ElasticCache(model) and run the prompt again")
        b, _, sq, _ = key_states.shape
        if self.batch is not None and b != self.batch:
            raise ValueError(f"this ElasticCache holds a finished prompt of batch {self.batch}, but the model was "
                             f"called with a batch of {b}; create a new ElasticCache for every prompt or generate call")
        if self.max_positions is not None and self.length + sq > self.max_positions:
            what = "the prompt has" if self.batch is None else "with this call the sequence would have"
            raise ValueError(f"{what} {self.length + sq} positions, more than the model's maximum "
                             f"(config.max_position_embeddings = {self.max_positions}); shorten the prompt "
                             "or generate fewer tokens")
        self.lazy_initialization(key_states, value_states)
        self.pending = (key_states, value_states)
        self.state.cache_layer = self  # lets the attention function find this layer (integrations/hf.py)
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def get_max_cache_shape(self) -> int:  # the name of get_max_length in older transformers
        return -1

    def reset(self) -> None:
        self.length, self.pending, self._kv, self.is_initialized = 0, None, None, False
        self.prompt, self.batch, self.group.bytes = None, None, 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise NotImplementedError("ElasticCache cannot crop: SSA heads have already dropped the tokens that "
                                      "left their window (assisted decoding needs a plain cache)")

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("ElasticCache does not support beam search; use greedy or sampled decoding")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("ElasticCache cannot repeat its rows; create it for the expanded batch")

    def batch_select_indices(self, indices) -> None:
        raise NotImplementedError("ElasticCache cannot select rows; use a plain cache for this generation mode")

    def offload(self) -> None:
        pass  # the compact layout stays on its device

    def prefetch(self) -> None:
        pass

    # -- the attention function's side (integrations/hf.py)

    @property
    def compacted(self) -> bool:
        """Whether the prompt has run: later calls attend to the kept entries."""
        return self._kv is not None or self.prompt is not None

    @property
    def kv(self) -> CompactKV | None:
        """The compact layout, built on first use after the prompt (see compact)."""
        if self._kv is None and self.prompt is not None:
            self.group.build()
        return self._kv

    def owns(self, key: torch.Tensor) -> bool:
        """Whether `key` is what this layer's update just returned (guards against a stale link)."""
        return self.pending is not None and self.pending[0] is key

    def check_window(self, window: int | None, new: int) -> None:
        """The model's own sliding window (Mistral, some Qwen2 layers) is not applied by the compact layout."""
        if window is not None and self.length + new > window:
            raise ValueError(f"the sequence reaches {self.length + new} positions, more than this model's sliding "
                             f"window ({window}), which ElasticCache does not apply; use a plain cache "
                             "(greedy_generate(..., elastic_cache=False))")

    def compact(self, modes: torch.Tensor, valid: torch.Tensor | None) -> None:
        """After the prompt's attention: keep per (row, KV head) what its mode needs. valid: [b, s] real keys.

        The layout's sizes depend on the decisions, which live on the GPU: reading them in every layer made
        every layer of the prefill a host sync (the host then waits for the GPU and the GPU for the host;
        TTFT 0.6x of the plain model at 16K on the default model, benchmarks/prefill_overhead.py --cache).
        So the prompt's keys are held, as a plain cache holds them, and the first call that needs a layout
        builds every layer's at once, reading all decisions in one sync (HeldPrompts.build); past HOLD_BYTES
        of held prompts the layers so far are built at once during the prefill."""
        keys, values = self.pending
        self.pending = None
        self.prompt = (keys, values, modes, valid)
        self.batch = keys.shape[0]
        self.length = keys.shape[2]
        self.group.hold(2 * keys.numel() * keys.element_size())
        b, hk, _, d = keys.shape
        self.full_bytes_per_position = b * hk * d * 2 * keys.element_size()

    def attend(self, query: torch.Tensor, scale: float, position_ids: torch.Tensor | None) -> torch.Tensor:
        """Attention of this call's queries [b, hq, sq, d] over the kept entries plus this call's tokens."""
        key, value = self.pending
        self.pending = None
        if query.shape[2] > 1 and position_ids is not None:
            self.kv.check_continuation(position_ids)
        out = self.kv.extend_and_attend(query, key, value, scale)
        self.length += key.shape[2]
        return out

    def kv_bytes(self) -> int:
        kv = self.kv
        return kv.nbytes() if kv is not None else 0

    def full_kv_bytes(self) -> int:
        return self.length * self.full_bytes_per_position


class HeldPrompts:
    """The layers of one cache and the bytes of the prompts they hold before their layouts are built."""

    def __init__(self, layers: list[ElasticLayer]):
        self.layers, self.bytes = layers, 0

    def hold(self, nbytes: int) -> None:
        """A layer now holds a prompt of nbytes; past HOLD_BYTES every held prompt is compacted."""
        self.bytes += nbytes
        if self.bytes > HOLD_BYTES:
            self.build()

    def build(self) -> None:
        """Build the compact layout of every layer still holding its prompt, reading the decisions of all
        of them in one host sync per device."""
        by_device: dict = {}
        for layer in self.layers:
            if layer._kv is None and layer.prompt is not None:
                by_device.setdefault(layer.prompt[2].device, []).append(layer)
        for waiting in by_device.values():
            counts = torch.stack([(layer.prompt[2] == SSA).sum() for layer in waiting]).tolist()
            for layer, n_ssa in zip(waiting, counts):
                layer._kv = CompactKV(*layer.prompt, layer.sink, layer.local, n_ssa=n_ssa)
                layer.prompt = None
        self.bytes = 0


class CompactKV:
    """The kept keys and values of one layer, FA pairs and SSA pairs packed apart (see the module doc)."""

    def __init__(self, keys, values, modes, valid, sink: int, local: int, n_ssa: int | None = None):
        """n_ssa: how many (row, head) pairs of `modes` are SSA, when the caller has read it (else one sync)."""
        b, hk, s, _ = keys.shape
        dev = keys.device
        self.batch, self.kv_heads, self.sink, self.local = b, hk, sink, local
        self.use_kernel = True  # decode with kernels/decode.py where fast_decode allows; False: SDPA always
        # FA pairs first, then SSA pairs, each in (row, head) order: one read of the decisions (a host sync)
        streaming = (modes == SSA).flatten()
        self.n_ssa = int(streaming.sum()) if n_ssa is None else n_ssa
        self.n_fa = b * hk - self.n_ssa  # host ints: no len() per step
        pairs = torch.argsort(streaming.to(torch.int8), stable=True)
        self.fa_rows, self.fa_heads = pairs[:self.n_fa] // hk, pairs[:self.n_fa] % hk
        self.ssa_rows, self.ssa_heads = pairs[self.n_fa:] // hk, pairs[self.n_fa:] % hk
        self.ssa_pairs = torch.arange(self.n_ssa, device=dev)
        # every pair's batch row and KV head, FA pairs first: what the decode kernel walks
        self.pair_rows = torch.cat([self.fa_rows, self.ssa_rows]).to(torch.int32)
        self.pair_heads = torch.cat([self.fa_heads, self.ssa_heads]).to(torch.int32)
        # FA pairs: [pairs, capacity, d] buffers, the first fa_len positions used. Appending by torch.cat
        # would copy every FA head's whole cache at every step (at 128K, more traffic than the attention).
        self.fa_len = s
        self.fa_keys = self._with_room(keys[self.fa_rows, self.fa_heads], s)
        self.fa_values = self._with_room(values[self.fa_rows, self.fa_heads], s)

        if valid is None or bool(valid.all()):
            self.fa_valid = None  # [b, T] real positions; None = nothing padded
            count = torch.full((b,), s, device=dev)
            order = torch.arange(s, device=dev).expand(b, s)
            counts = [s] * b
        else:
            self.fa_valid = valid.clone()
            count = valid.sum(1)
            order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # real positions first, in order
            counts = count.tolist()
        self._lag = 0  # tokens the decode kernel added since count was last updated (see count)
        self.count = count
        self.min_count, self.max_count = min(counts), max(counts)  # host copies: no device sync per step

        # Slot j < sink holds rank j; ring slot j holds the latest rank r < count with r = j (mod local).
        width = min(self.max_count, sink + local)
        slot = torch.arange(width, device=dev)
        ring = slot + local * ((count[:, None] - 1 - slot) // local).clamp(min=0)
        rank = torch.where(slot < sink, slot, ring)
        filled = slot < count[:, None]  # [b, width]
        pos = order.gather(1, torch.where(filled, rank, 0).clamp(max=s - 1))
        rows, heads = self.ssa_rows[:, None], self.ssa_heads[:, None]
        self.ssa_keys, self.ssa_values = keys[rows, heads, pos[self.ssa_rows]], values[rows, heads, pos[self.ssa_rows]]

    @property
    def count(self) -> torch.Tensor:
        """[b] real tokens seen per row: the rank the next token gets. The kernel path counts on the host
        and adds here when asked (one device op fewer a layer and step)."""
        if self._lag:
            self._count, self._lag = self._count + self._lag, 0
        return self._count

    @count.setter
    def count(self, value: torch.Tensor) -> None:
        self._count, self._lag = value, 0

    @staticmethod
    def _with_room(t: torch.Tensor, used: int) -> torch.Tensor:
        """t [pairs, used, d] copied into a buffer with FA_ROOM free positions after the used ones."""
        out = t.new_empty(t.shape[0], used + FA_ROOM, t.shape[2])
        out[:, :used] = t[:, :used]
        return out

    def nbytes(self) -> int:
        """Bytes of the kept keys and values (the FA buffers' free room, FA_ROOM positions, not counted)."""
        fa = self.fa_keys[:, :self.fa_len], self.fa_values[:, :self.fa_len]
        return sum(t.numel() * t.element_size() for t in (*fa, self.ssa_keys, self.ssa_values))

    def check_continuation(self, position_ids: torch.Tensor) -> None:
        """A call whose positions start before the tokens a row already holds is a new prompt, not more tokens."""
        first = position_ids[:, 0].to(self.count.device).expand(self.batch)
        if bool(((first < self.count) & (self.count > 0)).any()):
            raise ValueError(f"this ElasticCache holds a finished prompt of batch {self.batch}, and this call starts "
                             "again at an earlier position (a new prompt?); create a new ElasticCache for every "
                             "prompt or generate call")

    def extend_and_attend(self, query, key, value, scale) -> torch.Tensor:
        """Add this call's keys [b, hk, sq, d] and attend each query [b, hq, sq, d] to what its mode keeps."""
        b, hq, sq, d = query.shape
        if self.fast_decode(query):
            return self._decode_kernel(query, key, value, scale)
        grouped = query.view(b, self.kv_heads, hq // self.kv_heads, sq, d)
        out = torch.empty_like(grouped)
        with sdpa_kernel(DECODE_BACKENDS):
            if self.n_fa:
                out[self.fa_rows, self.fa_heads] = self._full(grouped[self.fa_rows, self.fa_heads], key, value, scale)
            if self.n_ssa:
                out[self.ssa_rows, self.ssa_heads] = self._streaming(grouped[self.ssa_rows, self.ssa_heads], key,
                                                                     value, scale)
        self.count = self.count + sq
        self.min_count, self.max_count = self.min_count + sq, self.max_count + sq
        return out.view(b, hq, sq, d)

    def fast_decode(self, query) -> bool:
        """Whether this step runs the decode kernel: a GPU (Triton), half precision, one token per row, no
        padding (every row holds as many tokens, so one slot and one length serve every pair)."""
        d = query.shape[-1]
        return (self.use_kernel and decode.HAVE_TRITON and query.is_cuda
                and query.dtype in (torch.float16, torch.bfloat16) and query.shape[2] == 1
                and self.fa_valid is None and self.min_count == self.max_count and d >= 16 and d & (d - 1) == 0)

    def _decode_kernel(self, query, key, value, scale):
        """One token per row through decode.decode_step, which also stores it."""
        out = decode.decode_step(*self.decode_args(query, key, value, scale))
        self.fa_len += self.n_fa > 0
        self._lag += 1
        self.min_count, self.max_count = self.min_count + 1, self.max_count + 1
        return out

    def decode_args(self, query, key, value, scale) -> tuple:
        """decode.decode_step's arguments for the next token, the buffers made ready for it (room for the
        FA keys, SSA buffers grown). The step stores its token past what it reads: repeating it before the
        counts move (benchmarks/decode_kernel.py does) repeats the same step."""
        if self.n_fa and self.fa_len + 1 > self.fa_keys.shape[1]:  # out of room: one copy every FA_ROOM steps
            self.fa_keys, self.fa_values = (self._with_room(t, self.fa_len) for t in (self.fa_keys, self.fa_values))
        rank = self.max_count
        used = self.ssa_keys.shape[1]
        if self.n_ssa:
            self._grow(rank + 1)
        return (query, key, value, self.fa_keys, self.fa_values, self.fa_len, self.ssa_keys, self.ssa_values, used,
                self._slot(rank), self.pair_rows, self.pair_heads, self.n_fa, scale)

    def _full(self, q, key, value, scale):
        """q [pairs, groups, sq, d]: every position so far, causal within this call, padding masked."""
        n, g, sq, d = q.shape
        rows, heads = self.fa_rows, self.fa_heads
        total = self.fa_len + sq
        if total > self.fa_keys.shape[1]:  # out of room: one copy every FA_ROOM steps
            self.fa_keys, self.fa_values = (self._with_room(t, self.fa_len) for t in (self.fa_keys, self.fa_values))
        self.fa_keys[:, self.fa_len:total] = key[rows, heads]
        self.fa_values[:, self.fa_len:total] = value[rows, heads]
        self.fa_len = total
        if self.fa_valid is not None:
            self.fa_valid = torch.cat([self.fa_valid, self.fa_valid.new_ones(self.batch, sq)], dim=1)
        mask = None if sq == 1 else causal_allowed(1, sq, total, q.device)[0]  # [1, sq, T]
        if self.fa_valid is not None:
            valid = self.fa_valid[rows][:, None, :]  # [pairs, 1, T]
            mask = valid if mask is None else mask & valid
        if mask is not None:  # the query rows of the stacked groups share their position's mask
            mask = mask[:, None].expand(-1, g, sq, total).reshape(-1, 1, g * sq, total)
        out = F.scaled_dot_product_attention(q.reshape(n, 1, g * sq, d), self.fa_keys[:, None, :total],
                                             self.fa_values[:, None, :total], attn_mask=mask, scale=scale)
        return out.view(n, g, sq, d)

    def _streaming(self, q, key, value, scale):
        """q [pairs, groups, sq, d]: token by token, write it into the buffer, then attend to the buffer."""
        n, g, sq, d = q.shape
        rows, heads = self.ssa_rows, self.ssa_heads
        uniform = self.min_count == self.max_count  # every row holds as many tokens (no padding): no mask
        outs = []
        for i in range(sq):
            tokens = self.max_count + i + 1  # after this token is written
            # Equal counts: the rank (so the slot) is one host integer for every pair, not a tensor expression.
            rank = self.max_count + i if uniform else (self.count + i)[rows]
            self._write(key[rows, heads, i], value[rows, heads, i], rank, tokens)
            width = self.ssa_keys.shape[1]
            mask = None
            if not uniform and self.min_count + i + 1 < width:  # some rows have not filled the buffer yet
                filled = torch.arange(width, device=q.device) < (self.count + i + 1)[rows, None]
                mask = filled[:, None, None, :]
            # Uniform rows fill the buffer exactly (it grows one slot a token until full): no mask either way.
            out = F.scaled_dot_product_attention(q[:, :, i][:, None], self.ssa_keys[:, None], self.ssa_values[:, None],
                                                 attn_mask=mask, scale=scale)
            outs.append(out.view(n, g, 1, d))
        return outs[0] if sq == 1 else torch.cat(outs, dim=2)

    def _grow(self, tokens: int) -> None:
        """Widen the SSA buffers to hold `tokens` tokens (they stop growing at sink + local slots)."""
        grow = min(tokens, self.sink + self.local) - self.ssa_keys.shape[1]
        if grow > 0:
            self.ssa_keys = F.pad(self.ssa_keys, (0, 0, 0, grow))
            self.ssa_values = F.pad(self.ssa_values, (0, 0, 0, grow))

    def _slot(self, rank):
        """The SSA buffer slot of the token of rank `rank` (an int, or a tensor of ranks)."""
        ring = self.sink + (rank - self.sink) % self.local
        if isinstance(rank, int):
            return rank if rank < self.sink else ring
        return torch.where(rank < self.sink, rank, ring)

    def _write(self, k, v, rank, tokens: int) -> None:
        """Store one token per SSA pair (k, v [pairs, d]) at the slot of its rank (an int when every pair
        shares it, else a [pairs] tensor); the buffer grows until full."""
        self._grow(tokens)
        slot = self._slot(rank)
        if isinstance(rank, int):
            self.ssa_keys[:, slot], self.ssa_values[:, slot] = k, v
            return
        self.ssa_keys[self.ssa_pairs, slot] = k
        self.ssa_values[self.ssa_pairs, slot] = v
