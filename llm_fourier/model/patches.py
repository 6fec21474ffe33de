"""Patches for the engine: per-example states put in at per-example prompt tokens.

A ``Patch`` (positions counted from each prompt's first real token, one vector per example)
belongs to a ``Condition``. ``patch_start`` is the batch column where such a condition
starts (its first patched token, when it changes nothing else: the unedited prefix up to
there is shared); ``with_patches`` turns the patches into edits of the condition's first
forward from that column (the greedy decoding steps after it pass unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor


@dataclass
class Patch:
    """Per example i: the state at token ``positions[i]`` (counted from its first real
    token) replaced by ``vectors[i]`` (examples x D, in the prompt set's example order)."""

    positions: np.ndarray
    vectors: Tensor


def columns(batch, positions: np.ndarray, rows: Sequence[int]) -> Tensor:
    """Columns of ``batch`` (left padded) at per-example token ``positions``."""
    real = batch.enc["attention_mask"].sum(1).cpu()[list(rows)]
    return batch.length - real + torch.as_tensor(
        positions[[batch.rows[j] for j in rows]], dtype=torch.long)


def patch_start(cond, batch, cached: bool = True) -> int:
    """The first patched column of a condition that changes nothing else (0: none, or a
    model without a KV cache)."""
    if not cond.patches or cond.edits or cond.hooks or cond.row_hooks or not cached:
        return 0
    return int(min(columns(batch, p.positions, range(len(batch.rows))).min()
                   for p in cond.patches.values()))


def with_patches(cond, batch, rows: Sequence[int], start: int):
    """``cond`` with its ``patches`` as edits of the first forward of ``rows`` of ``batch``
    from column ``start``."""
    if not cond.patches:
        return cond
    edits = dict(cond.edits)
    for key, p in cond.patches.items():
        col = columns(batch, p.positions, rows) - start
        vec, before, done = p.vectors[[batch.rows[j] for j in rows]], edits.get(key), []

        def fn(x: Tensor, col=col, vec=vec, before=before, done=done) -> Tensor:
            x = x if before is None else before(x)
            if done:  # a decoding step after the prompt
                return x
            done.append(True)
            n = torch.arange(len(col), device=x.device)
            return x.index_put((n, col.to(x.device)), vec.to(x.device, x.dtype))

        edits[key] = fn
    return replace(cond, edits=edits, patches={})
