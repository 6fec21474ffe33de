"""Attention heads: what each head writes about the answer, where it looks, what it says.

Per layer and head, at every answer position read (the last prompt token for a one-token
answer; each digit's position, teacher forced, for one token per digit):

* spectrum: the head's term (``model.heads``) read through the answer space's readout in
  the Fourier basis, pooled by the lens's ``LensAccumulator`` (one "layer" per head);
* attention: the weight on operand a's tokens, operand b's, the answer prefix (every token
  after b) and the rest, read under eager attention in a condition of its own, so the
  other measures keep the model's attention kernel;
* direct effect: the head's term through the final norm with its scale frozen at the read
  position (``FrozenNorm``), dotted with ``W_U[answer token]`` (also minus the mean readout
  row), times the model's logit scale (``logit_multiplier``).

The mean-ablations are in ``analyses.head_ablation``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from llm_fourier.analyses.hidden_states import operand_spans
from llm_fourier.analyses.lens import LensAccumulator, layer_summary
from llm_fourier.errors import UserError
from llm_fourier.model.architectures import logit_multiplier, sublayer
from llm_fourier.model.engine import Condition, Engine, PromptSet
from llm_fourier.model.heads import FrozenNorm, head_site

GROUPS = ("a", "b", "prefix", "rest")


def token_groups(prompts: PromptSet) -> list[np.ndarray]:
    """Per prompt, each token's group: 0 operand a, 1 operand b, 2 after b, 3 the rest (from
    the prompts' ``offsets``)."""
    if prompts.offsets is None:
        raise UserError("the heads' attention needs the prompts' offsets; build them with "
                        "PromptSet.build(..., offsets=True).")
    out = []
    for offsets, ex in zip(prompts.offsets, prompts.examples):
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
    ``sink[layer]`` = the probabilities, N x H x Q x T (float32, CPU). Behind the engine's
    KV cache the queries are the read positions only: only their rows are computed."""
    def keep(module, args, output, layer):
        probs = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if not isinstance(probs, Tensor) or probs.dim() != 4:
            raise UserError(f"{lm.name}'s attention returns no probabilities under eager "
                            "attention, so where its heads look cannot be read.")
        sink[layer] = probs.float().cpu()

    with eager_attention(lm.model), ExitStack() as stack:
        for layer in layers:
            module = sublayer(lm.block(layer), lm.roles, "attn")
            stack.callback(module.register_forward_hook(partial(keep, layer=layer)).remove)
        yield


@contextmanager
def record_heads(lm, layers: Sequence[int], sink: dict) -> Iterator[None]:
    """``sink[layer]`` = the output projection's input, N x T x H*d_head (float32, CPU)."""
    def keep(module, args, layer):
        sink[layer] = args[0].float().cpu()

    with ExitStack() as stack:
        for layer in layers:
            hook = head_site(lm, layer).proj.register_forward_pre_hook(partial(keep, layer=layer))
            stack.callback(hook.remove)
        yield


@dataclass
class AnswerReads:
    """Where a batch's answers are read. Position s of the engine's teacher-forced forward
    predicts answer token s: every s < len(answer) is an answer position (scored, ablated);
    those whose token is a readout token (a number, or a digit) are also read (spectra,
    attention, direct effects) against that token's readout row."""

    readout_ids: list[int]  # token id of readout row v
    allowed: Tensor | None  # argmax restricted to these at read positions ("numbers")

    def of(self, answers: Sequence[Sequence[int]], s: int) -> tuple[Tensor, ...]:
        """(answer positions, read positions, tokens, readout targets), each N x S."""
        row = {t: v for v, t in enumerate(self.readout_ids)}
        toks = torch.zeros(len(answers), s, dtype=torch.long)
        target = torch.full((len(answers), s), -1, dtype=torch.long)
        for n, ans in enumerate(answers):
            toks[n, :len(ans)] = torch.as_tensor(list(ans)[:s])
            for j, t in enumerate(list(ans)[:s]):
                target[n, j] = row.get(int(t), -1)
        pos = torch.arange(s)[None] < torch.tensor([len(a) for a in answers])[:, None]
        return pos, target >= 0, toks, target

    def score(self, logits: Tensor, pos: Tensor, read: Tensor, toks: Tensor
              ) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt: every answer token is the argmax (teacher forced), and the summed
        cross-entropy of the answer tokens over the vocabulary."""
        logits = logits.float().cpu()
        lp = torch.log_softmax(logits, -1).gather(-1, toks[..., None])[..., 0]
        loss = -(lp * pos).sum(1)
        pred = logits.argmax(-1)
        if self.allowed is not None:
            pred = torch.where(read, self.allowed[logits[..., self.allowed].argmax(-1)], pred)
        correct = ((pred == toks) | ~pos).all(1)
        return correct.numpy(), loss.numpy()


def answer_reads(space, prediction: str = "vocab") -> AnswerReads:
    """The reads of an ``AnswerSpace`` with a number or digit readout."""
    ids = space.numbers.token_ids if space.kind == "number" else space.fmt.digits.token_ids
    ids = [int(t) for t in ids]
    return AnswerReads(ids, torch.as_tensor(ids) if prediction == "numbers" else None)


@dataclass
class HeadMeasures:
    """Sums over reads per (layer, head), and the unablated per-prompt scores."""

    layers: list[int]
    n_heads: int
    lens: LensAccumulator  # one "layer" per (layer, head), layer-major
    attention: np.ndarray  # L x H x 4 (GROUPS), sums
    direct: np.ndarray  # L x H: W_U[answer] . frozen-norm(head), sums
    direct_centred: np.ndarray  # L x H: the same against the mean readout row
    z_total: dict[int, Tensor]  # layer -> S x H x d_head sums of the projection input
    z_count: Tensor  # S: prompts with an answer token at position s
    correct: np.ndarray  # per prompt, unablated
    loss: np.ndarray

    @property
    def n(self) -> int:
        return len(self.correct)


def _padded(parts: Sequence[Tensor]) -> Tensor:
    """Sum of tensors whose first axes (answer positions) differ in length."""
    out = torch.zeros(max(p.shape[0] for p in parts), *parts[0].shape[1:])
    for p in parts:
        out[:p.shape[0]] += p
    return out


def collect(lm, prompts: PromptSet, space, layers: Sequence[int], *, prediction: str = "vocab",
            store=None, progress: bool = True) -> HeadMeasures:
    """Spectra, attention, direct effects and the projection inputs' sums, one pass over
    ``prompts`` (built with ``space.fmt`` and offsets) at every answer position."""
    layers = sorted(set(layers))
    last = lm.n_layers - 1
    read = sorted(set(layers) | {last})
    at = [read.index(i) for i in layers]
    readout = space.readout(lm)
    W, reads = readout.W, answer_reads(space, prediction)
    W_U = lm.unembedding()
    to_logits = logit_multiplier(lm.model.config)  # Granite's and Cohere's logit scales
    h = head_site(lm, layers[0]).n_heads
    acc = LensAccumulator(len(layers) * h, readout.basis(space.basis_kind))
    frozen = FrozenNorm(lm.final_norm, lm.d_model)
    norm_param = next(lm.final_norm.parameters(), None)
    groups = token_groups(prompts)
    sink: dict = {}
    probs: dict = {}

    def looks(batch, s: int) -> dict:
        pos, read_at, _, _ = reads.of(batch.answers, s)
        att = torch.stack([probs.pop(i)[:, :, -s:] for i in layers], 1)  # N x L x H x S x T
        mass = torch.zeros(*att.shape[:4], len(GROUPS))
        t = att.shape[-1]
        for r, i in enumerate(batch.rows):
            g = torch.full((t,), 2, dtype=torch.long)  # keys after the prompt: answer tokens
            g[:batch.length] = 3
            g[batch.length - len(groups[i]):batch.length] = torch.as_tensor(groups[i])
            mass[r].index_add_(-1, g, att[r])
        return {"attention": (mass * read_at[:, None, None, :, None]).sum((0, 3))}

    def reduce(batch, cond, out) -> dict:
        s = out.logits.shape[1]
        if cond.name == "attention":
            return looks(batch, s)
        pos, read_at, toks, target = reads.of(batch.answers, s)
        heads = out.rows["heads"].permute(0, 1, 3, 2, 4)[:, :, at][read_at]  # R x L x H x D
        x = out.rows["block"][:, :, read.index(last)][read_at]  # R x D
        with torch.inference_mode():
            y = lm.final_norm.forward(x.to(norm_param.device, norm_param.dtype)
                                      if norm_param is not None else x).float().cpu()
        terms = frozen.apply(heads, frozen.scale(x, y)[:, None, None, :])
        w_ans = W_U[toks[read_at].to(W_U.device)].float().cpu()
        direct = torch.einsum("rlhd,rd->rlh", terms, w_ans) * to_logits
        centred = torch.einsum("rlhd,rd->rlh", terms, w_ans - W.mean(0)) * to_logits
        logits = (heads @ W.T).reshape(heads.shape[0], -1, W.shape[0])
        correct, loss = reads.score(out.logits, pos, read_at, toks)
        z = {str(k): (sink.pop(k)[:, -s:] * pos[..., None]).sum(0).reshape(s, h, -1)
             for k in layers}
        return {"lens": acc.batch_stats(logits, target[read_at]),
                "direct": direct.sum(0), "centred": centred.sum(0), "z": z,
                "zn": pos.sum(0).float(), "correct": correct, "loss": loss}

    conds = [Condition("collect", hooks=lambda: record_heads(lm, layers, sink)),
             Condition("attention", hooks=lambda: attention_rows(lm, layers, probs))]
    both = Engine(lm, prompts).run(conds, reduce, roles=("heads", "block"), layers=read,
                                   answers=True, store=store, progress=progress, desc="heads")
    units = both["collect"]
    for u in units:
        acc.add(u["lens"])
    return HeadMeasures(
        layers, h, acc, sum(u["attention"] for u in both["attention"]).numpy(),
        sum(u["direct"] for u in units).numpy(), sum(u["centred"] for u in units).numpy(),
        {k: _padded([u["z"][str(k)] for u in units]) for k in layers},
        _padded([u["zn"] for u in units]),
        prompts.scatter([u["correct"] for u in units]),
        prompts.scatter([u["loss"] for u in units]))


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
                row["ablation"] = effects.get(f"L{layer}H{h}")
            rows.append(row)
    return rows
