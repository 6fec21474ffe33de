"""Attention heads: what each head writes about the answer, where it looks, what it is worth.

Per layer and head, at the last prompt token (the answer is one number token):

* spectrum: the head's term (``heads`` role, ``llm_fourier.model.heads``) read through
  ``W_U[numbers]`` (p logits) in the Fourier basis, pooled over prompts by the lens's
  ``LensAccumulator`` (one "layer" per head): peaks at k >= tau with their periods, the
  robust outliers, the low/high split, the head's own lens accuracy;
* attention: the weight from the read token to operand a's tokens, operand b's, the answer
  prefix (every token after b) and the rest: a condition of its own under eager attention
  (whose modules return their probabilities), on the engine's cached prefix, so only the
  read row is computed and the other measures keep the model's own attention kernel;
* direct effect: the head's term through the final norm with its scale frozen at the read
  position (``FrozenNorm``), dotted with ``W_U[answer]`` (and with ``W_U[answer]`` minus the
  mean number row: the effect on the answer against the other numbers);
* ablation: the head's slice of the output projection's input replaced, at the read token,
  by its mean over the *other* prompts of the split; accuracy and loss over prompts with
  bootstrap intervals, and their change from the unablated run (paired).

Forward work goes through the engine (``llm_fourier.model.engine``): one unedited prefix per
batch on the KV cache, then one condition per ablated head from the last prompt token on;
units are (batch, condition), so a run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from llm_fourier.analyses.ablation import score_batch
from llm_fourier.analyses.hidden_states import operand_spans
from llm_fourier.analyses.lens import LensAccumulator, layer_summary
from llm_fourier.errors import UserError
from llm_fourier.model.architectures import sublayer
from llm_fourier.model.engine import Condition, Engine, PromptSet
from llm_fourier.model.heads import FrozenNorm, head_site
from llm_fourier.model.hooks import edit_heads
from llm_fourier.model.numbers import NumberTokens, number_rows
from probes import FourierBasis
from probes.stats import StatsConfig, interval

GROUPS = ("a", "b", "prefix", "rest")
Selection = dict[int, list[int]]  # layer -> heads


def token_groups(tokenizer, examples: Sequence) -> list[np.ndarray]:
    """Per prompt, each token's group: 0 operand a, 1 operand b, 2 after b, 3 the rest."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("finding the operands' tokens needs a fast tokenizer (offsets); load "
                        "the model's tokenizer with use_fast=True.")
    enc = tokenizer([e.prompt for e in examples], return_offsets_mapping=True)
    out = []
    for offsets, ex in zip(enc["offset_mapping"], examples):
        spans = operand_spans(ex)
        groups = np.full(len(offsets), 3)
        for i, (s, e) in enumerate(offsets):
            for g, name in enumerate(("a", "b")):
                lo, hi = spans[name]
                if e > s and s < hi and e > lo:
                    groups[i] = g
            if groups[i] == 3 and s >= spans["b"][1] and e > s:
                groups[i] = 2
        out.append(groups)
    return out


@contextmanager
def eager_attention(model) -> Iterator[None]:
    """Eager attention (which returns its probabilities) inside the block, then back."""
    setter = getattr(model, "set_attn_implementation", None)
    before = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if setter is None or before in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(before)


@contextmanager
def attention_rows(lm, layers: Sequence[int], sink: dict) -> Iterator[None]:
    """Under eager attention (whose modules return their probabilities as output[1]),
    ``sink[layer]`` = the last query's probabilities, N x H x T (float32, CPU). Behind the
    engine's KV cache the last token is the only query: only the read row is computed."""
    handles = []

    def keep(layer):
        def hook(module, args, output):
            probs = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            if not isinstance(probs, Tensor) or probs.dim() != 4:
                raise UserError(f"{lm.name}'s attention returns no probabilities under eager "
                                "attention, so where its heads look cannot be read.")
            sink[layer] = probs[:, :, -1].float().cpu()
        return hook

    with eager_attention(lm.model):
        try:
            for layer in layers:
                module = sublayer(lm.block(layer), lm.roles, "attn")
                handles.append(module.register_forward_hook(keep(layer)))
            yield
        finally:
            for h in handles:
                h.remove()


@contextmanager
def record_heads(lm, layers: Sequence[int], sink: dict) -> Iterator[None]:
    """``sink[layer]`` = the output projection's input at the last position (N x H*d_head)."""
    handles = []

    def keep(layer):
        return lambda module, args: sink.__setitem__(layer, args[0][:, -1].float().cpu())

    try:
        for layer in layers:
            handles.append(head_site(lm, layer).proj.register_forward_pre_hook(keep(layer)))
        yield
    finally:
        for h in handles:
            h.remove()


def mean_ablation(total: Tensor, n: int, heads: Sequence[int]) -> Callable[[Tensor], Tensor]:
    """Replace ``heads`` (of z: N x H x d_head) by their mean over the other prompts."""
    idx = torch.as_tensor(list(heads), dtype=torch.long)

    def fn(z: Tensor) -> Tensor:
        s = total.to(z.device, torch.float32)[idx]
        out = z.clone()
        out[:, idx] = ((s - z[:, idx].float()) / max(n - 1, 1)).to(z.dtype)
        return out

    return fn


@dataclass
class HeadMeasures:
    """Sums over prompts per (layer, head), and the unablated per-prompt scores."""

    layers: list[int]
    n_heads: int
    lens: LensAccumulator  # one "layer" per (layer, head), layer-major
    attention: np.ndarray  # L x H x 4 (GROUPS), sums
    direct: np.ndarray  # L x H: W_U[answer] . frozen-norm(head), sums
    direct_centred: np.ndarray  # L x H: the same against the mean number row
    z_total: dict[int, Tensor]  # layer -> H x d_head sums of the projection input
    correct: np.ndarray  # per prompt, unablated
    loss: np.ndarray

    @property
    def n(self) -> int:
        return len(self.correct)


def collect(lm, prompts: PromptSet, numbers: NumberTokens, layers: Sequence[int], *,
            basis_kind: str = "paper", prediction: str = "vocab", store=None,
            progress: bool = True) -> HeadMeasures:
    """Spectra, attention, direct effects and the projection inputs' sums, one pass."""
    layers = sorted(set(layers))
    last = lm.n_layers - 1
    read = sorted(set(layers) | {last})
    at = [read.index(i) for i in layers]
    W = number_rows(lm.unembedding(), numbers).detach().to("cpu", torch.float32)
    basis = FourierBasis(numbers.p, basis_kind)
    h = head_site(lm, layers[0]).n_heads
    acc = LensAccumulator(len(layers) * h, basis)
    frozen = FrozenNorm(lm.final_norm, lm.d_model)
    norm_param = next(lm.final_norm.parameters(), None)
    groups = token_groups(lm.tokenizer, prompts.examples)
    examples = prompts.examples
    sink: dict = {}
    probs: dict = {}

    def looks(batch) -> dict:
        att = torch.stack([probs.pop(i) for i in layers], 1)  # N x L x H x T
        mass = torch.zeros(*att.shape[:3], len(GROUPS))
        t = att.shape[-1]
        for r, i in enumerate(batch.rows):
            g = torch.full((t,), 3, dtype=torch.long)
            g[t - len(groups[i]):] = torch.as_tensor(groups[i])
            mass[r].index_add_(-1, g, att[r])
        return {"attention": mass.sum(0)}

    def reduce(batch, cond, out) -> dict:
        if cond.name == "attention":
            return looks(batch)
        answers = torch.tensor([examples[i].answer for i in batch.rows])
        heads = out.rows["heads"][:, 0].permute(0, 2, 1, 3)[:, at]  # N x L x H x D
        x = out.rows["block"][:, 0, read.index(last)]
        with torch.inference_mode():
            y = lm.final_norm.forward(x.to(norm_param.device, norm_param.dtype)
                                      if norm_param is not None else x).float().cpu()
        terms = frozen.apply(heads, frozen.scale(x, y)[:, None, None, :])
        w_ans = W[answers]
        direct = torch.einsum("nlhd,nd->nlh", terms, w_ans)
        centred = torch.einsum("nlhd,nd->nlh", terms, w_ans - W.mean(0))
        logits = (heads @ W.T).reshape(len(batch.rows), -1, numbers.p)
        pred, loss = score_batch(out.logits[:, 0], answers, numbers, prediction)
        return {"lens": acc.batch_stats(logits, answers),
                "direct": direct.sum(0), "centred": centred.sum(0),
                "z": {str(k): sink[k].reshape(len(batch.rows), h, -1).sum(0) for k in layers},
                "correct": (pred == answers).numpy(), "loss": loss.numpy()}

    conds = [Condition("collect", hooks=lambda: record_heads(lm, layers, sink)),
             Condition("attention", hooks=lambda: attention_rows(lm, layers, probs))]
    both = Engine(lm, prompts).run(conds, reduce, roles=("heads", "block"), layers=read,
                                   store=store, progress=progress, desc="heads")
    units = both["collect"]
    for u in units:
        acc.add(u["lens"])
    return HeadMeasures(
        layers, h, acc, sum(u["attention"] for u in both["attention"]).numpy(),
        sum(u["direct"] for u in units).numpy(), sum(u["centred"] for u in units).numpy(),
        {k: sum(u["z"][str(k)] for u in units) for k in layers},
        prompts.scatter([u["correct"] for u in units]),
        prompts.scatter([u["loss"] for u in units]))


def ablate(lm, prompts: PromptSet, numbers: NumberTokens, measures: HeadMeasures,
           selections: Mapping[str, Selection], *, prediction: str = "vocab", store=None,
           progress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per named selection of heads, mean-ablated together: (correct, loss) per prompt."""
    examples, n = prompts.examples, measures.n

    def hooks(sel: Selection):
        edits = {layer: mean_ablation(measures.z_total[layer], n, hs)
                 for layer, hs in sel.items()}
        return lambda: edit_heads(lm, edits)

    def reduce(batch, cond, out) -> dict:
        answers = torch.tensor([examples[i].answer for i in batch.rows])
        pred, loss = score_batch(out.logits[:, 0], answers, numbers, prediction)
        return {"correct": (pred == answers).numpy(), "loss": loss.numpy()}

    conds = [Condition(name, hooks=hooks(sel)) for name, sel in selections.items()]
    units = Engine(lm, prompts).run(conds, reduce, store=store, progress=progress,
                                    desc="head ablations")
    return {name: (prompts.scatter([u["correct"] for u in parts]),
                   prompts.scatter([u["loss"] for u in parts])) for name, parts in units.items()}


def single_heads(layers: Sequence[int], n_heads: int) -> dict[str, Selection]:
    return {head_name(layer, h): {layer: [h]} for layer in layers for h in range(n_heads)}


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


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


def head_rows(measures: HeadMeasures, tau: int, effects: Mapping[str, dict] | None = None,
              top: int = 3) -> list[dict]:
    """One row per (layer, head): periods (the peaks at k >= tau, largest first; the top
    peak's share of the mean spectrum's non-constant energy), outliers, low/high, where it
    looks, direct effects and, with ``effects``, its ablation."""
    spectra = measures.lens.spectra()
    summary = layer_summary(spectra, tau, top=top)
    accuracy = measures.lens.accuracy()
    n = max(measures.lens.n, 1)
    rows = []
    for li, layer in enumerate(measures.layers):
        for h in range(measures.n_heads):
            j = li * measures.n_heads + h
            peaks = summary[j]["outliers"]
            mass = measures.attention[li, h] / n
            energy = float((spectra[j].nonconstant ** 2).sum())
            row = {"layer": layer, "head": h,
                   "periods": [p["period"] for p in peaks],
                   "peak_share": peaks[0]["magnitude"] ** 2 / energy if peaks and energy > 0
                   else float("nan"),
                   "peaks": peaks,
                   "outliers": [o.as_dict() for o in spectra[j].outliers()[:top]],
                   "low_fraction": summary[j]["low_fraction"],
                   "lens_accuracy": accuracy[j]["exact"],
                   **{f"attn_{g}": float(m) for g, m in zip(GROUPS, mass)},
                   "direct_effect": float(measures.direct[li, h] / n),
                   "direct_effect_centred": float(measures.direct_centred[li, h] / n)}
            if effects is not None:
                row["ablation"] = effects.get(head_name(layer, h))
            rows.append(row)
    return rows


def top_heads(rows: Sequence[dict], k: int, key: str = "loss_increase") -> Selection:
    """The ``k`` heads whose ablation raises the loss most, pooled over layers."""
    ranked = sorted((r for r in rows if r.get("ablation")),
                    key=lambda r: -r["ablation"][key])[:k]
    out: Selection = {}
    for r in ranked:
        out.setdefault(r["layer"], []).append(r["head"])
    return {layer: sorted(v) for layer, v in sorted(out.items())}
