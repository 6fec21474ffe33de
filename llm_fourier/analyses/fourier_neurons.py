"""Fourier neurons of an LLM's MLPs: spectra of their output directions, and knockouts.

A neuron's output direction w_i is its column of the MLP's output projection (``mlp_proj`` of
``architectures.ROLES``, else the last Linear/Conv1D inside the MLP writing d_model; GPT-2's
``Conv1D`` stores d_mlp x D, so there w_i is row i). ``check_projections`` refuses a model
whose MLP output is not that projection's output (a mixture of experts, an extra scale).

Read through the answers' readout, ``v_i = W_U[numbers] w_i`` (``W_U[digits 0..9]``, DFT over
ten points, where the tokenizer splits numbers; no final norm, as ``lens``), a neuron's
spectrum gives its top component k >= 1, its share of the non-constant energy, and the
constant's share of the total. Blocks that normalise the MLP output before adding it (Gemma
2/3, OLMo 2/3) scale it by the norm's gain and a data-dependent 1/rms: they are refused unless
``allow_post_norm`` (the spectrum is then of the direction before the norm).

``knockout_table`` zeroes (``knockout``) the top-k neurons of a period (by energy at its
component, pooled over the layers) beside random draws of as many neurons from each of the
same layers, each a condition of one engine pass scored as ``ablate`` scores answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from llm_fourier.analyses.ablation import answer_target, table_readout
from llm_fourier.analyses.answers import score_conditions
from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.architectures import is_conv1d, projection, sublayer
from llm_fourier.model.engine import Condition, Engine, PromptSet, Store
from llm_fourier.model.numbers import NumberTokens
from llm_fourier.model.readout import NumberReadout
from llm_fourier.model.tasks import Example
from probes import FourierBasis

_POST_NORM = re.compile(r"post_(feedforward|ffw|ffn|mlp)", re.I)


def output_projection(lm, layer: int) -> nn.Module:
    """The module whose input is ``layer``'s neuron activations (``mlp_proj``, else found)."""
    proj = projection(lm.block(layer), lm.roles, "mlp", lm.d_model)
    if proj is None:
        raise UserError(f"cannot find the output projection of {lm.name}'s MLP (no Linear or "
                        "Conv1D writing d_model); add its mlp_proj to "
                        "llm_fourier.model.architectures.ROLES.")
    return proj


def neuron_directions(lm, layer: int) -> Tensor:
    """Output directions of ``layer``'s neurons: d_mlp x D, float32 on the CPU."""
    proj = output_projection(lm, layer)
    return (proj.weight if is_conv1d(proj) else proj.weight.T).detach().to("cpu", torch.float32)


def has_post_norm(lm) -> bool:
    """Whether a block normalises the MLP output before adding it to the residual stream."""
    return any(_POST_NORM.search(name) and "norm" in type(m).__name__.lower()
               for name, m in lm.block(0).named_children())


def check_projections(lm, layers: Sequence[int]) -> None:
    """One forward (the engine's, stopped after the deepest layer): each MLP's output must
    equal its projection's output; else refuse. The ``mlp`` role names what the block adds,
    a post-norm after the MLP in Gemma-2/3 and OLMo-2/3: the MLP itself is its sublayer."""
    got: dict[tuple[str, int], Tensor] = {}

    def keep(key, module, args, output) -> None:
        got[key] = (output[0] if isinstance(output, (tuple, list)) else output).detach()

    @contextmanager
    def recording() -> Iterator[None]:
        with ExitStack() as stack:
            for i in layers:
                for name, m in (("mlp", sublayer(lm.block(i), lm.roles, "mlp")),
                                ("proj", output_projection(lm, i))):
                    stack.callback(m.register_forward_hook(partial(keep, (name, i))).remove)
            yield

    def differs(*_) -> list[int]:
        return [i for i in layers if (mlp := got.get(("mlp", i))) is None
                or (proj := got.get(("proj", i))) is None or mlp.shape != proj.shape
                or not torch.allclose(mlp.float(), proj.float(), rtol=1e-3,
                                      atol=1e-4 * float(mlp.abs().max()) + 1e-6)]

    prompts = PromptSet.build(lm, [Example(12, 34, 46, "Add 12 and 34. Answer: ")])
    (bad,) = Engine(lm, prompts).run([Condition("check", positions="all", hooks=recording)],
                                     differs, logits=False, stop_after=max(layers),
                                     progress=False)["check"]
    if bad:
        raise UserError(f"layer {bad[0]}'s MLP output is not the output of its projection "
                        f"{type(output_projection(lm, bad[0])).__name__} (a mixture of experts "
                        "or an extra scale?); neuron directions cannot be read from it.")


@dataclass
class NeuronSpectra:
    """Per layer (rows) and neuron (columns): top component, shares, readout norm."""

    basis: FourierBasis
    layers: list[int]
    top_k: np.ndarray  # L x d_mlp: component with the most energy among k >= 1 (0: none)
    share: np.ndarray  # L x d_mlp: its share of the non-constant energy (NaN: none)
    constant_share: np.ndarray  # L x d_mlp: constant energy / total energy
    logit_norm: np.ndarray  # L x d_mlp: |W_U[numbers] w_i|
    energy_sum: np.ndarray  # L x (K + 1): energy per component summed over neurons
    component_energy: dict[int, np.ndarray] = field(default_factory=dict)  # k -> L x d_mlp
    post_norm: bool = False
    readout: str = "number"  # or "digit": W_U[digits 0..9], DFT over ten points

    def table(self, min_share: float = 0.0) -> list[dict]:
        """One row per neuron whose share is at least ``min_share``."""
        period = np.where(self.top_k > 0, self.basis.period(np.maximum(self.top_k, 1)), np.nan)
        return [{"layer": layer, "neuron": int(i), "k": int(self.top_k[li, i]),
                 "period": float(period[li, i]), "share": float(self.share[li, i]),
                 "constant_share": float(self.constant_share[li, i]),
                 "logit_norm": float(self.logit_norm[li, i])}
                for li, layer in enumerate(self.layers)
                for i in np.flatnonzero(np.nan_to_num(self.share[li], nan=-1) >= min_share)]

    def counts(self, min_share: float = 0.5) -> np.ndarray:
        """K x L: neurons whose top component is k (row k - 1) with share >= ``min_share``."""
        out = np.zeros((self.basis.n_components, len(self.layers)), dtype=np.int64)
        li, i = np.nonzero((np.nan_to_num(self.share, nan=-1) >= min_share) & (self.top_k > 0))
        np.add.at(out, (self.top_k[li, i] - 1, li), 1)
        return out

    def summary(self, min_share: float = 0.5, top: int = 5) -> list[dict]:
        """Per layer: neurons, Fourier neurons (share >= ``min_share``), their top periods."""
        counts = self.counts(min_share)
        return [{"layer": layer, "n_neurons": int(self.top_k.shape[1]),
                 "n_fourier": int(counts[:, li].sum()),
                 "top_periods": [{"k": int(k + 1), "period": float(self.basis.period(k + 1)),
                                  "n": int(counts[k, li])}
                                 for k in np.argsort(-counts[:, li], kind="stable")[:top]
                                 if counts[k, li]]}
                for li, layer in enumerate(self.layers)]


def neuron_spectra(
    lm,
    target: AnswerSpace | NumberTokens | NumberReadout,
    layers: Sequence[int] | None = None,
    *,
    basis_kind: str = "paper",
    periods: Sequence[float] = (),
    allow_post_norm: bool = False,
) -> NeuronSpectra:
    """Spectra of every neuron's direction read through the answers' readout, per layer.
    ``periods``: keep each neuron's energy at those periods' components (``top_neurons``)."""
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(int(i) for i in layers))
    post = has_post_norm(lm)
    if post and not allow_post_norm:
        raise UserError(f"{lm.name} normalises the MLP output before adding it (post-norm), "
                        "so a neuron's direction is not its effect; pass allow_post_norm=True "
                        "to read the directions before the norm anyway.")
    readout = target if isinstance(target, NumberReadout) else table_readout(lm, target)
    if readout.p < 3:
        raise UserError(f"a spectrum needs at least 3 single-token numbers, the tokenizer "
                        f"keeps {readout.p}.")
    basis = readout.basis(basis_kind)
    ks = [basis.k_of_period(T) for T in periods]
    bad = [T for T, k in zip(periods, ks) if not 1 <= k <= basis.n_components]
    if bad:
        raise UserError(f"periods {list(bad)} fall outside the components 1..."
                        f"{basis.n_components} of the {readout.kind} readout; choose periods "
                        f"between 2 and {readout.p - 1}.")
    if len(set(ks)) < len(ks):
        raise UserError(f"periods {list(periods)} share a Fourier component of the "
                        f"{readout.kind} readout; choose periods further apart.")
    check_projections(lm, layers)
    W = readout.W.to(torch.float64)
    F = torch.as_tensor(basis.matrix, dtype=torch.float64) @ W  # (1 + 2K) x D
    energy, norm = [], []
    for layer in layers:
        dirs = neuron_directions(lm, layer).to(torch.float64).T  # D x d_mlp
        c = (F @ dirs).numpy()  # (1 + 2K) x d_mlp
        energy.append(np.concatenate([c[:1] ** 2, c[1::2] ** 2 + c[2::2] ** 2]))
        norm.append(np.linalg.norm((W @ dirs).numpy(), axis=0))
    e = np.stack(energy)  # L x (K + 1) x d_mlp
    nonconst, total = e[:, 1:].sum(1), e.sum(1)
    share = np.divide(e[:, 1:].max(1), nonconst,
                      out=np.full(nonconst.shape, np.nan), where=nonconst > 0)
    constant = np.divide(e[:, 0], total, out=np.full(total.shape, np.nan), where=total > 0)
    return NeuronSpectra(basis, layers, np.where(nonconst > 0, e[:, 1:].argmax(1) + 1, 0),
                         share, constant, np.stack(norm), e.sum(2),
                         {k: e[:, k] for k in set(ks)}, post, readout.kind)


def top_neurons(spectra: NeuronSpectra, period: float, k: int) -> dict[int, list[int]]:
    """The ``k`` neurons with the most energy at ``period``'s component, pooled over the
    layers of ``spectra``: {layer: sorted neuron indices}."""
    comp = spectra.basis.k_of_period(period)
    if comp not in spectra.component_energy:
        raise UserError(f"the spectra kept no energies for period {period:g}; pass it in "
                        "neuron_spectra(periods=...).")
    energy = spectra.component_energy[comp]
    if not 1 <= k <= energy.size:
        raise UserError(f"k must lie in 1..{energy.size} (the neurons of the chosen layers), "
                        f"got {k}.")
    picked = np.zeros(energy.shape, dtype=bool)
    picked.flat[np.argsort(-energy, axis=None, kind="stable")[:k]] = True
    return {layer: np.flatnonzero(row).tolist() for layer, row in zip(spectra.layers, picked)
            if row.any()}


@contextmanager
def knockout(lm, neurons: dict[int, Sequence[int]], rows: slice = slice(None)
             ) -> Iterator[None]:
    """Zero the activations of ``neurons`` ({layer: indices}) at every position of the
    batch ``rows`` (all by default)."""
    def zero(index: Tensor, on: dict, module, args):  # on: the index per device, copied once
        x = args[0].clone()
        if x.device not in on:
            on[x.device] = index.to(x.device)
        x[rows] = x[rows].index_fill(-1, on[x.device], 0)
        return (x, *args[1:])

    with ExitStack() as stack:
        for layer, idx in neurons.items():
            if len(idx):
                stack.callback(output_projection(lm, layer).register_forward_pre_hook(partial(
                    zero, torch.as_tensor(list(idx), dtype=torch.long), {})).remove)
        yield


def knockout_table(
    lm,
    examples: Sequence,
    target: AnswerSpace | NumberTokens,
    periods: Sequence[float],
    n_neurons: int,
    *,
    layers: Sequence[int] | None = None,
    spectra: NeuronSpectra | None = None,
    n_random: int = 5,
    seed: int = 0,
    basis_kind: str = "paper",
    prediction: str = "vocab",
    allow_post_norm: bool = False,
    batch_size: int = 16,
    progress: bool = True,
    store: Store | None = None,
) -> dict:
    """Accuracy and loss with the top ``n_neurons`` neurons of each period knocked out,
    beside ``n_random`` random draws (see the module doc). ``store`` keeps its units."""
    if spectra is None:
        spectra = neuron_spectra(lm, target, layers, basis_kind=basis_kind, periods=periods,
                                 allow_post_norm=allow_post_norm)
    if n_random < 1:
        raise UserError(f"n_random must be at least 1, got {n_random}.")
    chosen: dict[str, dict[int, list[int]]] = {"none": {}}  # the neurons of each knockout
    for j, T in enumerate(periods):
        top = chosen[f"top-{float(T):g}"] = top_neurons(spectra, T, n_neurons)
        for d in range(n_random):  # as many uniform draws from each layer as ``top`` has
            rng = np.random.default_rng([seed, j, d])
            chosen[f"random-{float(T):g}-{d}"] = {layer: sorted(
                int(i) for i in rng.choice(spectra.top_k.shape[1], len(idx), replace=False))
                for layer, idx in top.items()}
    conds = [Condition(name, row_hooks=partial(knockout, lm, sel)) for name, sel in chosen.items()]
    got = score_conditions(lm, examples, answer_target(target), conds, prediction=prediction,
                           batch_size=batch_size, store=store, progress=progress,
                           desc="knockouts")
    res = {name: {"accuracy": got[name]["accuracy"], "loss": got[name]["loss"],
                  "neurons": sel} for name, sel in chosen.items()}
    out = []
    for T in periods:
        draws = [res[f"random-{float(T):g}-{d}"] for d in range(n_random)]
        acc = np.array([x["accuracy"] for x in draws])
        out.append({"period": float(T), "component": spectra.basis.k_of_period(T),
                    "n_neurons": n_neurons, "top": res[f"top-{float(T):g}"],
                    "random": {**{f"accuracy_{s}": float(getattr(acc, s)())
                                  for s in ("mean", "std", "min", "max")},
                               "loss_mean": float(np.mean([x["loss"] for x in draws])),
                               "draws": draws}})
    return {"baseline": {k: got["none"][k] for k in ("accuracy", "loss")}, "periods": out,
            "settings": {"layers": spectra.layers, "n_neurons": n_neurons,
                         "n_random": n_random, "seed": seed, "basis": spectra.basis.kind,
                         "readout": spectra.readout, "prediction": prediction,
                         "post_norm": spectra.post_norm}}


def knockout_rows(result: dict) -> list[dict]:
    """One summary row per period (CSV / console)."""
    base = result["baseline"]
    return [{"period": p["period"], "component": p["component"], "n_neurons": p["n_neurons"],
             "accuracy_none": base["accuracy"], "accuracy_top": p["top"]["accuracy"],
             "accuracy_random": p["random"]["accuracy_mean"],
             **{f"accuracy_random_{s}": p["random"][f"accuracy_{s}"]
                for s in ("std", "min", "max")},
             "loss_none": base["loss"], "loss_top": p["top"]["loss"],
             "loss_random": p["random"]["loss_mean"]} for p in result["periods"]]
