"""How several conditions share one forward on a batch's prefix cache.

Stacked along the batch (condition-major rows): each condition gets its own copy of the
prefix cache (``fork``), its edits act on its rows and its row-scoped hooks
on its slice (``stacked``). Side by side along the sequence (``block_mask``): every
condition's run [last prompt token, answer tokens] follows the prefix in one row, each run
seeing the prefix and itself through a 4D mask, so the prefix cache is read in place; edits
see the runs as rows (``on_rows``) and outputs come back per run (``per_block``). Side by
side is exact only where the model takes a 4D mask as given (``takes_block_mask``) within
its local-attention window (``attention_window``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

if TYPE_CHECKING:
    from llm_fourier.model.engine import Condition

Edits = dict[tuple[str, int], Callable[[Tensor], Tensor]]

def stacked(conds: Sequence[Condition], sizes: int | Sequence[int]) -> tuple[Edits, list]:
    """The edits and context-manager factories of conditions stacked along the batch
    (``sizes``: rows, one count for all or one per condition): each edit acts on its own
    condition's rows, ``row_hooks`` are bound to them; ``hooks`` (whole-batch) only for one
    condition."""
    sizes = [sizes] * len(conds) if isinstance(sizes, int) else list(sizes)
    bounds = np.cumsum([0, *sizes]).tolist()
    rows = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
    hooks = [c.hooks for c in conds if c.hooks is not None] + [
        partial(c.row_hooks, r) for c, r in zip(conds, rows) if c.row_hooks is not None]
    if len(conds) == 1:
        return conds[0].edits, hooks

    def on_own_rows(key) -> Callable[[Tensor], Tensor]:
        fns = [c.edits.get(key) for c in conds]
        return lambda x: torch.cat([x[r] if f is None else f(x[r]) for f, r in zip(fns, rows)])

    return {key: on_own_rows(key) for key in {key for c in conds for key in c.edits}}, hooks


# transformers 5's dynamic layers never write into their tensors: each update concatenates
# and reassigns (a sliding one then keeps its window's tail), so copies may share them
REASSIGNING = (DynamicLayer, DynamicSlidingWindowLayer)


def shares_tensors(cache: DynamicCache) -> bool:
    """Whether every layer of ``cache`` only reassigns its tensors (``REASSIGNING``)."""
    return all(type(layer) in REASSIGNING for layer in cache.layers)


def fork(prefix: DynamicCache, rows: Tensor | None = None) -> DynamicCache:
    """A cache that continues from ``prefix`` (its ``rows``, in that order, when given) and
    leaves it as it is: a shallow copy sharing the prefix's tensors where its layers only
    reassign them, else a deep copy."""
    if not shares_tensors(prefix):
        cache = copy.deepcopy(prefix)
        if rows is not None:
            cache.batch_select_indices(rows)
        return cache
    cache = copy.copy(prefix)
    cache.layers = [copy.copy(layer) for layer in prefix.layers]
    if rows is not None:  # index_select: several times faster than indexing with a tensor
        for layer in cache.layers:
            if layer.get_seq_length() > 0:
                layer.keys = layer.keys.index_select(0, rows.to(layer.keys.device))
                layer.values = layer.values.index_select(0, rows.to(layer.values.device))
    return cache


def per_block(x: Tensor, blocks: int) -> Tensor:
    """N x (blocks * L) x ... positions of side-by-side runs as a blocks x N x L x ... view."""
    return x.unflatten(1, (blocks, -1)).transpose(0, 1)


def on_rows(fn: Callable[[Tensor], Tensor], blocks: int) -> Callable[[Tensor], Tensor]:
    """An edit of conditions stacked along the batch (condition-major) applied to
    side-by-side runs."""
    def on_blocks(x: Tensor) -> Tensor:
        rows = fn(per_block(x, blocks).flatten(0, 1))
        return rows.unflatten(0, (blocks, -1)).transpose(0, 1).flatten(1, 2).contiguous()

    return on_blocks


def block_mask(prefix_mask: Tensor, blocks: int, length: int, dtype: torch.dtype) -> Tensor:
    """The 4D additive attention mask of ``blocks`` runs of ``length`` tokens side by side
    after a left-padded prefix: each token sees the prefix's real tokens and the tokens of
    its own run up to itself."""
    n, t = prefix_mask.shape
    q = torch.arange(blocks * length, device=prefix_mask.device)
    own = (q[:, None] // length == q // length) & (q % length <= q[:, None] % length)
    seen = torch.cat([prefix_mask.bool()[:, None].expand(n, len(q), t),
                      own.expand(n, len(q), len(q))], -1)
    mask = torch.zeros(seen.shape, dtype=dtype, device=prefix_mask.device)
    return mask.masked_fill_(~seen, torch.finfo(dtype).min)[:, None]


# Model types whose masks take a 4D additive mask as given and whose positions come from
# position_ids alone (tests/llm/test_engine.py runs each side by side). Not Bloom, OPT or
# ALiBi Falcon: they derive positions from the 2D mask.
QUERY_STACKING = frozenset({
    "cohere", "falcon", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neo",
    "gpt_neox", "gptj", "granite", "llama", "mistral", "mixtral", "olmo", "olmo2", "olmo3",
    "phi", "phi3", "qwen2", "qwen3", "qwen3_moe", "smollm3", "stablelm", "starcoder2"})


def takes_block_mask(model) -> bool:
    """Whether side-by-side conditions (``block_mask``) are exact on ``model``."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in QUERY_STACKING
            and not getattr(config, "alibi", False)
            and getattr(config, "_attn_implementation", None) in ("sdpa", "eager"))


def attention_window(model) -> float:
    """The shortest local-attention window of ``model`` (a 4D mask given as is would not
    apply it), or infinity."""
    config = getattr(model, "config", None)
    sizes = [getattr(config, name, None) for name in ("sliding_window", "window_size")]
    return min([s for s in sizes if isinstance(s, int) and s > 0], default=float("inf"))
