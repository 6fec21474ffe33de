"""Mean-ablation of attention heads through the engine, and which heads matter most.

A head is ablated by replacing its slice of the output projection's input, at every answer
position, by its mean over the *other* prompts there (``(sum - own) / (count - 1)``). One
engine condition per selection of heads, an edit of role ``heads``. ``effect`` gives
accuracy and loss with bootstrap intervals and their paired changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from llm_fourier.analyses.heads import HeadMeasures, answer_reads
from llm_fourier.model.engine import Condition, Engine, PromptSet
from probes.stats import StatsConfig, interval

Selection = dict[int, list[int]]  # layer -> heads


def mean_ablation(total: Tensor, count: Tensor, heads: Sequence[int]
                  ) -> Callable[[Tensor], Tensor]:
    """Replace ``heads`` of z (N x Q x H x d_head) by their mean over the other prompts at
    each answer position (``total``: S x H x d_head sums, ``count``: S prompts per
    position). Behind the engine's cached prefix the Q positions of a forward are answer
    positions 0..Q-1; a longer forward (a model without a KV cache) has its last S
    positions taken as the answer positions and the earlier ones left alone."""
    idx = torch.as_tensor(list(heads), dtype=torch.long)

    def fn(z: Tensor) -> Tensor:
        q = min(z.shape[1], total.shape[0])
        s = total[:q, idx].to(z.device, torch.float32)  # q x k x d_head
        c = (count[:q] - 1).clamp(min=1).to(z.device)[:, None, None]
        out = z.clone()
        own = z[:, z.shape[1] - q:, idx].float()
        out[:, z.shape[1] - q:, idx] = ((s - own) / c).to(z.dtype)
        return out

    return fn


def ablate(lm, prompts: PromptSet, space, measures: HeadMeasures,
           selections: Mapping[str, Selection], *, prediction: str = "vocab", store=None,
           progress: bool = True, stack_rows: int = 512
           ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per named selection of heads, mean-ablated together: (correct, loss) per prompt.
    Selections are edits of role ``heads``, so the engine runs them stacked along the batch
    on one prefix cache, about ``stack_rows`` rows per forward (a group of selections per
    pass over the batches)."""
    reads = answer_reads(space, prediction)

    def reduce(batch, cond, out) -> dict:
        pos, read_at, toks, _ = reads.of(batch.answers, out.logits.shape[1])
        correct, loss = reads.score(out.logits, pos, read_at, toks)
        return {"correct": correct, "loss": loss}

    conds = [Condition(name, edits={("heads", layer): mean_ablation(
        measures.z_total[layer], measures.z_count, hs) for layer, hs in sel.items()})
        for name, sel in selections.items()]
    size = max(1, stack_rows // max(len(b.rows) for b in prompts.batches))
    units: dict[str, list] = {}
    for start in range(0, len(conds), size):
        units |= Engine(lm, prompts, stack_rows).run(
            conds[start:start + size], reduce, answers=True, store=store, per_batch=True,
            progress=progress, desc="head ablations")
    return {name: (prompts.scatter([u["correct"] for u in parts]),
                   prompts.scatter([u["loss"] for u in parts])) for name, parts in units.items()}


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def single_heads(layers: Sequence[int], n_heads: int) -> dict[str, Selection]:
    return {head_name(layer, h): {layer: [h]} for layer in layers for h in range(n_heads)}


def random_heads(top: Selection, n_heads: int, draws: int, seed: int) -> dict[str, Selection]:
    """``draws`` selections of as many random heads from each layer as ``top`` has there."""
    out = {}
    for d in range(draws):
        rng = np.random.default_rng([seed, d])
        out[f"random-{d}"] = {layer: sorted(int(i) for i in rng.choice(n_heads, len(hs),
                                                                       replace=False))
                              for layer, hs in top.items()}
    return out


def effect(correct: np.ndarray, loss: np.ndarray, base_correct: np.ndarray,
           base_loss: np.ndarray, cfg: StatsConfig) -> dict:
    """Accuracy and loss with intervals over prompts, and their paired changes."""
    rng = np.random.default_rng(cfg.seed)
    out = {}
    for name, values in (("accuracy", correct.astype(float)), ("loss", loss),
                         ("accuracy_drop", base_correct.astype(float) - correct),
                         ("loss_increase", loss - base_loss)):
        low, high = interval(lambda w, v=values: (w @ v) / w.sum(1), len(values), cfg, rng)
        out[name] = float(values.mean())
        out[f"{name}_low"], out[f"{name}_high"] = low, high
    return out


def top_heads(rows: Sequence[dict], k: int, key: str = "loss_increase") -> Selection:
    """The ``k`` heads whose ablation raises the loss most, pooled over layers."""
    ranked = sorted((r for r in rows if r.get("ablation")),
                    key=lambda r: -r["ablation"][key])[:k]
    out: Selection = {}
    for r in ranked:
        out.setdefault(r["layer"], []).append(r["head"])
    return {layer: sorted(v) for layer, v in sorted(out.items())}
