"""Attention modes (FA, SSA, XA): masks, the exact reference, banded SSA prefill, and backend dispatch."""

from .banded import ssa_banded_attention
from .dispatch import BACKENDS, attention, hybrid_attention, sdpa_attention
from .masks import FA, MODE_IDS, SSA, XA, allowed_from_hf_mask, head_masks, ssa_mask, xa_mask
from .reference import masked_attention

__all__ = ["BACKENDS", "FA", "MODE_IDS", "SSA", "XA", "allowed_from_hf_mask", "attention",
           "head_masks", "hybrid_attention", "masked_attention", "sdpa_attention", "ssa_banded_attention",
           "ssa_mask", "xa_mask"]
