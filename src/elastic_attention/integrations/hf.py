"""How a transformers model gets routers: hooks and one registered attention function.

`attach` adds an `AttentionRouter` to every attention module (as the submodule `elastic_router`),
hooks its k_proj (or k_norm where the architecture has one) to see the pre-RoPE keys while the
routers decide (not while a mode is forced or a static gate routes), and switches the model to the
attention implementation "elastic" registered in transformers' attention-function registry. Nothing
of the modeling code is copied: new transformers releases keep working as long as the attention
module calls the registry.
"""

from __future__ import annotations

import struct

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ..attention import FA, MODE_IDS, allowed_from_hf_mask, attention, head_masks, hybrid_attention
from ..attention.masks import SSA, XA, mode_ids, mode_mask, ssa_pair_count, valid_keys
from ..attention.kernels import fused_prefill, hybrid_prefill, supported as fast_prefill_supported
from ..config import ElasticConfig
from ..router import AttentionRouter

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ATTN_IMPLEMENTATION = "elastic"


class Runtime:
    """What all layers of one attached model share: config, forced mode, backend."""

    def __init__(self, config: ElasticConfig, previous_attn: str | None, num_layers: int, kv_heads: int):
        self.config = config
        self.previous_attn = previous_attn
        self.num_layers = num_layers
        self.kv_heads = kv_heads
        self._forced: str | torch.Tensor | None = None  # None = router (or gate) decides
        self._gate = None  # a StaticGate routes instead of the routers when set (see gate.py)
        self.backend = "sdpa"  # attention backend of the masked path ("sdpa" or "reference")
        self.fast_prefill = True  # on CUDA, prefill runs the fused kernels of attention/kernels
        self.capture_last_row = False  # retrieval scores need the last query's attention probs
        self.sparsity_bias = 0.0  # added to every router logit before the inference decision (control.py)
        # [b, s] bool, True = token the routers may pool. The trainer marks the prompt so that routing
        # in training sees what it sees at inference (the answer tokens are not yet there). None = all real tokens.
        self.route_mask: torch.Tensor | None = None
        self.layers: list[LayerState] = []
        self.frozen: dict[str, bool] = {}  # requires_grad of backbone parameters before attach
        self.empty_hook = None  # the empty-prompt check on the first layer's attention module
        self._forced_layers: dict = {}  # device -> (key, per-layer routing) of the forced mode, see forced_routing

    @property
    def forced(self) -> str | torch.Tensor | None:
        return self._forced

    @forced.setter
    def forced(self, value) -> None:
        self._forced = value
        self._forced_layers = {}
        self.capture_keys()

    @property
    def gate(self):
        return self._gate

    @gate.setter
    def gate(self, value) -> None:
        self._gate = value
        self.capture_keys()

    def capture_keys(self) -> None:
        """Hook the layers' key projections only while the routers decide: a hook costs host time in every
        layer, and a forced mode or a gate never reads the keys."""
        on = self._forced is None and self._gate is None
        for state in self.layers:
            state.capture_keys(on)

    def forced_routing(self, batch: int, device: torch.device) -> tuple:
        """Layer by layer, (decisions, modes, possible modes, density or None) of the forced mode.

        Built for all layers at once, per device (a model split across GPUs), and kept while the forced mode,
        batch size and the config's modes stay, rather than a few ops in every layer of every prefill (each op
        costs host time). The tensors are shared across layers and calls: read them, never write them."""
        cfg = self.config
        key = (batch, cfg.sparse_mode, cfg.retrieval_mode)
        cached = self._forced_layers.get(device)
        if cached is None or cached[0] != key:
            cached = self._forced_layers[device] = (key, self._build_forced(batch, device))
        return cached[1]

    def _build_forced(self, batch: int, device: torch.device) -> tuple:
        forced, cfg = self._forced, self.config
        if isinstance(forced, torch.Tensor):
            if forced.ndim == 3 and forced.shape[0] != batch:
                raise ValueError(f"force_mode was given decisions for a batch of {forced.shape[0]} but the model "
                                 f"was called with a batch of {batch}; pass a [layers, kv_heads] mask to use "
                                 "the same heads for every row")
            r = forced.to(device, torch.float32)  # one copy per mask: from pageable memory it waits for the GPU
            r = r.transpose(0, 1) if r.ndim == 3 else r[:, None].expand(-1, batch, -1)  # [layers, b, hk]
        else:
            r = torch.full((self.num_layers, batch, self.kv_heads), 1.0 if forced == "sparse" else 0.0, device=device)
        if isinstance(forced, str) and forced == "full":
            modes = torch.full(r.shape, FA, device=device)
            possible = (FA,)
            density = torch.ones(batch, self.kv_heads, dtype=torch.float32, device=device)  # padded or not
        else:
            sparse, kept = MODE_IDS[cfg.sparse_mode], MODE_IDS[cfg.retrieval_mode]
            modes = mode_ids(r, sparse, kept).contiguous()  # each layer's modes contiguous, as the kernels take them
            possible, density = (sparse, kept), None
        return tuple((r[i], modes[i], possible, density) for i in range(self.num_layers))


class LayerState:
    """Per layer: the captured pre-RoPE keys and the decisions of the last prefill."""

    def __init__(self, layer_idx: int, runtime: Runtime, router: AttentionRouter, key_source: nn.Module):
        self.layer_idx = layer_idx
        self.runtime = runtime
        self.router = router
        self.key_source = key_source  # the module whose output the router reads (k_proj, or k_norm)
        self.hook = None  # the forward hook on key_source while the router decides
        self.keys: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None  # [b, hk] router logits (None when forced)
        self.decisions: torch.Tensor | None = None  # [b, hk] float r, straight-through in training
        self.modes: torch.Tensor | None = None  # [b, hk] int FA / SSA / XA
        self.possible_modes: tuple[int, ...] | None = None  # the modes `modes` can hold, known on the host
        self._density: torch.Tensor | None = None
        self._density_of: tuple | None = None  # (modes, length, config): the density, computed when read
        self.last_row: torch.Tensor | None = None  # [b, hq, kv] probs of the last query
        self.cache_layer = None  # set by an ElasticCache layer's update for the attention call that follows

    @property
    def density(self) -> torch.Tensor | None:
        """[b, hk] fraction of the allowed pairs each head kept in the last prefill. Where it follows from
        the modes and the length alone (unpadded, FA / SSA) it is computed when first read: a prefill
        spends no op or allocation on it (only routing statistics read it)."""
        if self._density is None and self._density_of is not None:
            self._density = unpadded_density(*self._density_of)
            self._density_of = None
        return self._density

    @density.setter
    def density(self, value: torch.Tensor | None) -> None:
        self._density, self._density_of = value, None

    def density_when_read(self, modes: torch.Tensor, length: int, config) -> None:
        self._density, self._density_of = None, (modes, length, config)

    @property
    def density_set(self) -> bool:
        """Whether this prefill's density is known or pending (reading `density` would compute it)."""
        return self._density is not None or self._density_of is not None

    def capture_keys(self, on: bool) -> None:
        if on and self.hook is None:
            self.hook = self.key_source.register_forward_hook(_capture_keys(self))
        elif not on and self.hook is not None:
            self.hook.remove()
            self.hook = self.keys = None

    def route(self, valid: torch.Tensor | None, batch: int, device) -> None:
        """Decide every KV head's mode for this prefill. valid: [b, s] real (non-padding) keys or None.
        Sets the density too where it is known before attention (every head full), else None."""
        rt = self.runtime
        self.logits = None
        if rt.forced is not None:
            routing = rt.forced_routing(batch, device)
            self.decisions, self.modes, self.possible_modes, self.density = routing[self.layer_idx]
            return
        cfg = rt.config
        sparse, kept = MODE_IDS[cfg.sparse_mode], MODE_IDS[cfg.retrieval_mode]
        if rt.gate is not None:
            self.decisions = rt.gate.decide(self.layer_idx, batch, rt.sparsity_bias)
            self.modes = mode_ids(self.decisions, sparse, kept)
        else:
            if self.keys is None:
                raise RuntimeError(f"layer {self.layer_idx}: no key states were captured for the router; "
                                   "was the model called through its forward()?")
            keys = self.keys.reshape(self.keys.shape[0], self.keys.shape[1], rt.kv_heads, -1)
            if rt.route_mask is not None:
                valid = rt.route_mask.to(keys.device)
            if valid is not None:
                valid = valid[:, -keys.shape[1]:]
            # the router gives the mode ids too (on a GPU its kernel writes them: no ops after it)
            self.logits, self.decisions, self.modes = self.router(keys, valid, rt.sparsity_bias, (sparse, kept))
        # known without reading the decisions back: the prefill kernels need no host sync
        self.possible_modes = (sparse, kept)
        self.density = None


class ModeMasks:
    """The masks of the modes one call needs, built once and shared by the heads of a mode."""

    def __init__(self, hf_mask, query, key, scale, config):
        b, _, sq, _ = query.shape
        skv = key.shape[2]
        self.plain_causal = hf_mask is None  # nothing padded: FA needs no mask at all
        self.hf_mask, self.shape = hf_mask, (b, sq, skv)
        self.query, self.key, self.scale, self.config = query, key, scale, config
        self.cache: dict[int, torch.Tensor | None] = {}
        self._allowed: torch.Tensor | None = None

    @property
    def allowed(self) -> torch.Tensor:
        """[b, 1, sq, skv] bool; built on first use (the fused CUDA prefill never needs it unpadded)."""
        if self._allowed is None:
            self._allowed = allowed_from_hf_mask(self.hf_mask, *self.shape, self.query.device)
        return self._allowed

    def __getitem__(self, mode: int) -> torch.Tensor | None:
        if mode not in self.cache:
            if mode == FA and self.plain_causal:
                self.cache[mode] = None
            else:
                self.cache[mode] = mode_mask(mode, self.allowed, self.query, self.key, self.scale, self.config)
        return self.cache[mode]

    def density(self, modes: torch.Tensor, possible: tuple[int, ...] = (FA, SSA, XA)) -> torch.Tensor:
        """[b, hk] fraction of the allowed (query, key) pairs each head's mode keeps; possible: the modes
        `modes` can hold (a router's two, known on the host), so that an XA-free config reads nothing back."""
        b, hk = modes.shape
        _, sq, skv = self.shape
        if self.plain_causal and sq == skv and (XA not in possible or not bool((modes == XA).any())):
            return unpadded_density(modes, sq, self.config)
        # Count real query rows only: right-padding queries are no pairs of the prompt (ESR per sample).
        real = valid_keys(self.allowed)[:, -self.allowed.shape[2]:][:, None, :, None]  # [b, 1, sq, 1]
        total = torch.count_nonzero(self.allowed & real, dim=(-1, -2)).float().clamp(min=1)  # [b, 1]
        out = torch.ones(b, hk, device=modes.device)
        for mode in modes.unique().tolist():
            if mode == FA:
                continue
            kept = torch.count_nonzero(self[mode] & real, dim=(-1, -2)).float() / total  # [b, 1 or hq]
            kept = kept.view(b, -1, max(kept.shape[1] // hk, 1)).mean(-1).expand(b, hk)
            out = torch.where(modes == mode, kept, out)
        return out


def unpadded_density(modes: torch.Tensor, n: int, config) -> torch.Tensor:
    """ModeMasks.density of an unpadded n-token prefill whose modes are FA / SSA: the pairs counted, not
    masked, with the same fp32 division as the masked count, done on the host (a quotient of floats rounded
    from double to fp32 is the fp32 quotient: double has more than 2 * 24 + 2 bits)."""
    kept = _fp32(_fp32(ssa_pair_count(n, config.sink, config.local)) / _fp32(n * (n + 1) // 2))
    return torch.ones(modes.shape, dtype=torch.float32, device=modes.device).masked_fill_(modes == SSA, kept)


def elastic_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                              value: torch.Tensor, attention_mask: torch.Tensor | None,
                              scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """The attention function transformers calls for every layer of an attached model.

    query [b, hq, sq, d] and key/value [b, hk, skv, d] arrive after RoPE and the KV cache.
    A call without earlier tokens (sq == skv) is a prefill: the router decides. Later calls
    (decode steps, chunks) reuse the decisions stored for this layer and batch. With an ElasticCache
    (cache.py) the prefill compacts the cache afterwards and later calls attend to its kept entries.
    """
    state: LayerState | None = getattr(module, "elastic_state", None)
    if state is None:
        raise RuntimeError("this attention module has no router: call elastic_attention.attach(model) "
                           "instead of setting attn_implementation='elastic' by hand")
    rt, cfg = state.runtime, state.runtime.config
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    cache = _elastic_cache_layer(state, key, query.shape[2], kwargs)
    if cache is not None and cache.compacted:
        return cache.attend(query, scale, kwargs.get("position_ids")).transpose(1, 2).contiguous(), None
    b, _, sq, _ = query.shape
    plain_causal = attention_mask is None  # nothing padded: FA needs no mask at all
    masks = None if plain_causal else ModeMasks(attention_mask, query, key, scale, cfg)

    prefill = sq == key.shape[2] or state.modes is None or state.modes.shape[0] != b
    if prefill:
        state.route(None if plain_causal else valid_keys(masks.allowed), b, query.device)
    state.keys = None
    # An unpadded FA / SSA prefill's density follows from the modes and the length: computed when read.
    lazy_density = prefill and plain_causal and sq == key.shape[2] and XA not in state.possible_modes

    learner = rt.gate if rt.gate is not None else state.router
    training = rt.forced is None and learner.training
    # a prefill the CUDA kernels may run (shapes and dtypes are checked where each kernel is chosen)
    fast = (prefill and sq == key.shape[2] and query.is_cuda and rt.backend == "sdpa" and rt.fast_prefill
            and not rt.capture_last_row and kwargs.get("sliding_window") is None)
    out = None
    if fast and lazy_density and not training and state.possible_modes != (FA,):
        # FA / SSA heads, nothing padded: the fused kernel and nothing else (a small model's prefill is bound
        # by the host, so every step here counts); None where the kernel does not apply.
        out = fused_prefill(query, key, value, state.modes, cfg, scale)
    if out is None:
        masks = masks if masks is not None else ModeMasks(attention_mask, query, key, scale, cfg)
        out = _attend(state, query, key, value, masks, scale, prefill, fast, lazy_density, training)
    if prefill and not state.density_set:
        if lazy_density:
            state.density_when_read(state.modes, sq, cfg)
        else:
            state.density = masks.density(state.modes, state.possible_modes)
    if rt.capture_last_row:
        state.last_row = _last_row_probs(query, key, head_masks(state.modes, masks.allowed, query, key, scale, cfg),
                                         scale)
    if cache is not None:
        cache.compact(state.modes, None if plain_causal else valid_keys(masks.allowed))
    return out.transpose(1, 2).contiguous(), None


def _attend(state: LayerState, query, key, value, masks: ModeMasks, scale: float, prefill: bool, fast: bool,
            lazy_density: bool, training: bool) -> torch.Tensor:
    """The attention of every path but the fused lane: training, all heads full, the CUDA hybrid prefill
    (which sets the density when it is not computed when read), and the CPU / masked path."""
    rt, cfg = state.runtime, state.runtime.config
    if training:
        # Both modes run; the straight-through r mixes them so gradients reach the router.
        out_full = attention(query, key, value, masks[MODE_IDS[cfg.retrieval_mode]], scale, rt.backend)
        out_sparse = attention(query, key, value, masks[MODE_IDS[cfg.sparse_mode]], scale, rt.backend)
        r = state.decisions.repeat_interleave(query.shape[1] // rt.kv_heads, dim=1)[:, :, None, None].to(query.dtype)
        return r * out_sparse + (1 - r) * out_full
    if state.possible_modes == (FA,) and masks.plain_causal:
        # Every head full (forced), nothing padded: the causal SDPA call every path below makes, and nothing else.
        return attention(query, key, value, None, scale, rt.backend)
    if fast and fast_prefill_supported(query, key):
        # CUDA prefill: all heads from the decisions in fused kernels; density computed analytically.
        if lazy_density:
            return hybrid_prefill(query, key, value, state.modes, cfg, scale, possible_modes=state.possible_modes)
        pad = None if masks.plain_causal else masks.allowed[:, 0, -1, :]  # last row = real keys
        out, state.density = hybrid_prefill(query, key, value, state.modes, cfg, scale, key_padding=pad,
                                            return_density=True, possible_modes=state.possible_modes)
        return out
    # Unpadded prefill off the fused path (the CPU): SSA heads on key bands, O(s * (sink + local)),
    # FA heads by causal SDPA, so no dense mask is built unless an XA head needs one.
    banded = (prefill and query.shape[2] == key.shape[2] and masks.plain_causal and rt.backend == "sdpa"
              and not rt.capture_last_row)
    return hybrid_attention(query, key, value, state.modes, masks, scale, rt.backend,
                            ssa_window=(cfg.sink, cfg.local) if banded else None)


def _elastic_cache_layer(state: LayerState, key: torch.Tensor, new: int, kwargs: dict):
    """The ElasticCache layer (cache.py) whose update returned `key` for this call, or None without one."""
    cache, state.cache_layer = state.cache_layer, None
    if cache is None or not cache.owns(key):
        return None
    rt = state.runtime
    learner = rt.gate if rt.gate is not None else state.router
    if rt.forced is None and learner.training:
        raise ValueError("ElasticCache keeps only what the prompt's decisions need, and training mixes both "
                         "modes; call model.eval() for generation, or use no cache")
    cache.check_window(kwargs.get("sliding_window"), new)
    return cache


def _last_row_probs(query, key, mask, scale):
    k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1).float()
    scores = torch.matmul(query[:, :, -1:].float(), k.transpose(-1, -2)) * scale
    last = mask[:, :, -1:]
    return torch.softmax(scores.masked_fill(~last, float("-inf")), dim=-1)[:, :, 0]


def _register() -> None:
    AttentionInterface.register(ATTN_IMPLEMENTATION, elastic_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)  # bool masks, True = attend


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The model's self-attention modules, ordered by layer index."""
    mods = [m for m in model.modules() if hasattr(m, "k_proj") and hasattr(m, "layer_idx")]
    return sorted(mods, key=lambda m: m.layer_idx)


def model_signature(model: nn.Module) -> dict:
    """What a router must match to be loaded onto a model."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"model_type": cfg.model_type, "num_layers": cfg.num_hidden_layers,
            "kv_heads": cfg.num_key_value_heads, "head_dim": head_dim}


def check_supported(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model type {model_type!r} is not supported by elastic-attention; "
                         f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}")


def runtime_of(model: nn.Module) -> Runtime:
    rt = getattr(model, "elastic_runtime", None)
    if rt is None:
        raise ValueError("this model has no routers attached: call elastic_attention.attach(model, config) first")
    return rt


def attach(model: nn.Module, config: ElasticConfig | None = None) -> nn.Module:
    """Add one AttentionRouter per layer and route every KV head per prompt. Returns the model.

    The backbone is frozen (requires_grad False): only router parameters train.
    """
    check_supported(model)
    if getattr(model, "elastic_runtime", None) is not None:
        raise ValueError("this model already has routers attached; call elastic_attention.detach(model) first")
    config = config or ElasticConfig()
    if not isinstance(config, ElasticConfig):
        raise ValueError(f"config must be an ElasticConfig, got {type(config).__name__}")
    sig = model_signature(model)
    modules = attention_modules(model)
    if len(modules) != sig["num_layers"]:
        raise ValueError(f"found {len(modules)} attention modules but config.num_hidden_layers = "
                         f"{sig['num_layers']}; is this a standard {sig['model_type']} model?")
    _register()
    rt = Runtime(config, getattr(model.config, "_attn_implementation", None), sig["num_layers"], sig["kv_heads"])
    rt.frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for attn in modules:
        weight = attn.k_proj.weight
        router = AttentionRouter(sig["head_dim"], config.router_hidden_mult, config.pool_tokens, sig["kv_heads"],
                                 config.router_norm)
        router.to(device=weight.device)
        router.train(attn.training)
        attn.elastic_router = router
        key_source = attn.k_norm if hasattr(attn, "k_norm") else attn.k_proj  # Qwen3 routes on normed keys
        state = LayerState(attn.layer_idx, rt, router, key_source)
        attn.elastic_state = state
        rt.layers.append(state)
    rt.capture_keys()
    # Every layer sees the prompt's length: one check a forward, not a hook (host time) in every layer.
    rt.empty_hook = modules[0].register_forward_pre_hook(_reject_empty, with_kwargs=True)
    model.elastic_runtime = rt
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:  # older releases: set it directly
        model.config._attn_implementation = ATTN_IMPLEMENTATION
    return model


def _reject_empty(module, args, kwargs):
    hidden = args[0] if args else kwargs.get("hidden_states")
    if hidden is not None and hidden.shape[-2] == 0:
        raise ValueError("empty prompt: the input has sequence length 0; elastic attention needs at least "
                         "one token per prompt to route its heads")


def _fp32(x: float) -> float:
    """x rounded to the nearest fp32 value."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _capture_keys(state: LayerState):
    def hook(module, inputs, output):
        state.keys = output
    return hook


def detach(model: nn.Module) -> nn.Module:
    """Remove the routers and restore the model's attention implementation and trainable flags."""
    rt = runtime_of(model)
    rt.empty_hook.remove()
    for attn in attention_modules(model):
        attn.elastic_state.capture_keys(False)
        del attn.elastic_state
        del attn.elastic_router
    for name, p in model.named_parameters():
        p.requires_grad_(rt.frozen.get(name, p.requires_grad))
    del model.elastic_runtime
    if rt.previous_attn is not None:
        model.set_attn_implementation(rt.previous_attn)
    return model


def routers(model: nn.Module) -> nn.ModuleList:
    """The attached routers in layer order, as one ModuleList (for optimisers and saving)."""
    runtime_of(model)
    return nn.ModuleList([attn.elastic_router for attn in attention_modules(model)])
