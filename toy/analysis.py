"""Fourier analysis of one trained toy model (any kind): which frequencies it uses and how.

Everything is computed in the exact DFT basis over the p numbers (``probes``):

* key frequencies, by default the smallest set whose restricted loss stays near that of
  every frequency (``toy.progress.select_key_frequencies``); for comparison also the sets
  holding a sizeable energy share of the embedding, of the neuron-to-logit map W_L, of the
  neurons (how many each frequency mostly explains) and (linear ops) of the logits in the
  cos/sin(w_k (a + b)) directions; per frequency, a table of its neuron share, weight
  norms and the loss without it;
* restricted / excluded loss (toy.progress), Gini of W_E and W_L, FFD, FCR, sum of squared
  weights;
* per neuron: maximum normalized power of its row of W_L (Li et al.); for the x^k MLP
  also of its input weights (Li et al.'s alignment, which also gives its frequency);
  for the other models on two-input full-grid tasks, Nanda et al.'s 2-D Fourier
  analysis of its activations over (a, b): the share of its (non-constant) variance
  held by the terms of one frequency k -- cos/sin(w_k a), cos/sin(w_k b) and their four
  products. A neuron is explained
  when that share exceeds 0.85;
* frequency-ablation curve: accuracy as the key frequencies are removed one by one from
  the logits along the answer axis (``probes.filters.remove_components``).
"""

from __future__ import annotations

import numpy as np
import torch

from probes import FourierBasis, max_normalized_power, power_per_component
from probes.filters import keep_only, remove_components
from toy.data import Task
from toy.models import StackedModel
from toy.progress import (
    ANSWER_AXIS_SHORTLIST,
    KEY_LOSS_ATOL,
    KEY_LOSS_RATIO,
    FrequencyParts,
    basis_for,
    embedding_measures,
    linear_directions,
    loss_and_accuracy,
    pick_key_frequencies,
    restricted_excluded_loss,
    select_key_frequencies,
)

# Rules naming the key frequencies; "loss" (the default) is the smallest set whose
# restricted loss stays near the model's (toy.progress.select_key_frequencies), the others
# threshold an energy share: of the embedding, of the neuron-to-logit map, of the neurons
# (how many each frequency mostly explains) or of the logits (linear ops only).
KEY_SOURCES = ("loss", "embed", "neuron_logit", "neurons", "logits")
DEFAULT_KEY_SOURCE = "loss"
EXPLAINED = 0.85  # a neuron is explained by one frequency (Nanda et al.)
MOSTLY = 0.5  # a neuron counts towards a frequency's neuron share


def neuron_frequency_shares(acts: np.ndarray, basis: FourierBasis) -> np.ndarray:
    """Share of each neuron's non-constant variance over the (a, b) grid held by each
    frequency's 2-D terms. ``acts`` is (p, p, neurons); returns (neurons, K)."""
    B = basis.matrix
    half = np.tensordot(B, acts, axes=(1, 0))  # (i, b, n): transform along a
    coef = np.tensordot(half, B, axes=(1, 1)).transpose(1, 0, 2)  # (n, i, j): along b
    power = coef**2
    power[:, 0, 0] = 0.0  # the constant term is not variance
    total = power.sum(axis=(1, 2))
    shares = np.zeros((acts.shape[2], basis.n_components))
    for k in basis.ks:
        rows = basis.rows_of([k], include_constant=True)
        shares[:, k - 1] = power[:, rows][:, :, rows].sum(axis=(1, 2))
    return np.divide(shares, total[:, None], out=np.zeros_like(shares),
                     where=total[:, None] > 0)


def logit_frequency_energy(logits: torch.Tensor, task: Task, basis: FourierBasis) -> np.ndarray:
    """For a linear op: energy of the full-grid logits (N, p) in each frequency's
    cos/sin(w_k s) input directions, k = 1..K."""
    L = logits.double() - logits.double().mean(0, keepdim=True)
    energy = np.zeros(basis.n_components)
    for k in basis.ks:
        D = linear_directions(task, [k], basis)
        energy[k - 1] = float((D.T @ L).pow(2).sum())
    return energy


def frequency_ablation(logits: torch.Tensor, labels: torch.Tensor, order, basis: FourierBasis,
                       test_idx: torch.Tensor | None = None) -> list[dict]:
    """Accuracy (all data, and test rows) with the first i frequencies of ``order`` removed
    from the logits along the answer axis, i = 0..len(order)."""
    eye = np.eye(basis.p)
    curve = []
    for i in range(len(order) + 1):
        removed = [int(k) for k in order[:i]]
        L = remove_components(eye, basis, removed).apply(logits.double())
        loss, acc = loss_and_accuracy(L, labels)
        row = {"removed": removed, "loss": float(loss), "accuracy": float(acc)}
        if test_idx is not None:
            row["test_accuracy"] = float(loss_and_accuracy(L[test_idx], labels[test_idx])[1])
        curve.append(row)
    return curve


def neuron_shares(model: StackedModel, task: Task, basis: FourierBasis,
                  neuron_logit: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Per neuron, the share of its (non-constant) power or variance held by each frequency:
    ``(shares (neurons, K), alive (neurons,), source)``. The x^k MLP: its input weights
    (Li et al.); two-input full-grid tasks: its activations over (a, b) (Nanda et al.);
    otherwise its row of the neuron-to-logit map."""
    if model.cfg.kind == "mlp":
        w_in = model.W_in[0].detach().double().numpy()  # (k, p, width), summed over inputs
        power = sum(power_per_component(w, basis, axis=0) for w in w_in).T
        source = "input_weights"
    elif task.n_inputs == 2 and task.full_grid:
        acts = model.neurons(task.inputs)[0].detach().double().numpy().reshape(task.p, task.p, -1)
        alive = np.abs(acts).reshape(-1, acts.shape[2]).max(axis=0) > 0
        return neuron_frequency_shares(acts, basis), alive, "activations_2d"
    else:
        power = power_per_component(neuron_logit, basis, axis=1)
        source = "neuron_logit_map"
    total = power.sum(axis=1, keepdims=True)
    shares = np.divide(power, total, out=np.zeros_like(power), where=total > 0)
    return shares, total[:, 0] > 0, source


def key_frequency_table(parts: FrequencyParts, shares: np.ndarray, alive: np.ndarray,
                        e_norms: np.ndarray, l_norms: np.ndarray, selection: dict) -> list[dict]:
    """One row per frequency k: its share of the neurons (those whose variance it holds
    mostly, > ``MOSTLY``), its Fourier norm (and energy share) in the embedding and the
    neuron-to-logit map, the restricted loss keeping it alone, the loss over all data with
    it alone removed, and its rank in the loss rule's greedy selection (None: not chosen)."""
    basis = parts.basis
    full = parts.full_loss()
    n_alive = max(int(alive.sum()), 1)
    rank = {k: i + 1 for i, k in enumerate(selection["key_frequencies"])}
    rows = []
    for k in basis.ks:
        without = parts.loss_without(int(k))
        rows.append({
            "k": int(k), "period": float(basis.period(int(k))),
            "neuron_share": float((shares[alive, k - 1] > MOSTLY).sum() / n_alive),
            "embed_norm": float(e_norms[k - 1]),
            "embed_share": float(e_norms[k - 1] ** 2 / max((e_norms**2).sum(), 1e-300)),
            "neuron_logit_norm": float(l_norms[k - 1]),
            "neuron_logit_share": float(l_norms[k - 1] ** 2 / max((l_norms**2).sum(), 1e-300)),
            "restricted_loss_alone": parts.loss(parts.restricted([int(k)])),
            "loss_without": without, "loss_increase_without": without - full,
            "selected_rank": rank.get(int(k))})
    return rows


@torch.no_grad()
def analyze(model: StackedModel, task: Task, train_idx: torch.Tensor, test_idx: torch.Tensor,
            seed_index: int = 0, key_source: str = DEFAULT_KEY_SOURCE,
            key_share: float | None = None, key_loss_ratio: float = KEY_LOSS_RATIO,
            key_loss_atol: float = KEY_LOSS_ATOL) -> dict:
    """Every measure of one seed of ``model`` on ``task`` (splits are row indices).

    ``key_source`` picks which rule's frequencies drive the restricted/excluded loss and
    the ablations; every rule's set is returned as ``key_frequencies_<rule>``.
    ``key_share`` is the share threshold of the share rules, ``key_loss_ratio`` and
    ``key_loss_atol`` the tolerance of the loss rule."""
    if key_source not in KEY_SOURCES:
        raise ValueError(f"key_source must be one of {KEY_SOURCES}")
    one = model.select([seed_index]) if model.n_seeds > 1 else model
    basis = basis_for(task.p)
    logits = one(task.inputs)[0].double()
    embed = one.embedding()[0].double().numpy()
    wl = one.neuron_logit_map()[0].double().numpy()
    res = {"model": one.cfg.kind, "quant": one.cfg.quant, "seed": one.seeds[0],
           "op": task.op, "p": task.p, "n_inputs": task.n_inputs,
           "n_train": int(train_idx.numel()), "n_test": int(test_idx.numel())}
    for name, idx in (("train", train_idx), ("test", test_idx)):
        loss, acc = loss_and_accuracy(logits[idx], task.labels[idx])
        res[f"{name}_loss"], res[f"{name}_accuracy"] = float(loss), float(acc)

    m = embedding_measures(embed, wl, basis)
    e_norms, l_norms = m.pop("embed_norms"), m.pop("neuron_logit_norms")
    shares, alive, neuron_source = neuron_shares(one, task, basis, wl)
    parts = FrequencyParts(logits, task, basis)
    shortlist = None if parts.definition == "input_directions" else ANSWER_AXIS_SHORTLIST
    selection = select_key_frequencies(parts, key_loss_ratio, key_loss_atol, shortlist)
    counts = ((shares[alive] > MOSTLY).sum(axis=0)).astype(float)
    keys = {"loss": selection["key_frequencies"],
            "embed": pick_key_frequencies(e_norms, key_share),
            "neuron_logit": pick_key_frequencies(l_norms, key_share),
            "neurons": pick_key_frequencies(np.sqrt(counts), key_share)}
    if task.linear_coeffs is not None and task.full_grid:
        keys["logits"] = pick_key_frequencies(np.sqrt(logit_frequency_energy(logits, task, basis)),
                                              key_share)
    if key_source not in keys:
        raise ValueError("key_source='logits' needs a linear op (a+b, a-b, sum) on a full grid")
    ks = keys[key_source]
    res.update({"key_frequencies": ks, "key_source": key_source,
                **{f"key_frequencies_{k}": v for k, v in keys.items()}})
    res["key_frequency_table"] = key_frequency_table(parts, shares, alive, e_norms, l_norms,
                                                     selection)
    res["key_selection"] = {"full_loss": parts.full_loss(),
                            **{k: v for k, v in selection.items() if k != "key_frequencies"}}
    res.update(restricted_excluded_loss(logits, task, ks, train_idx, basis))
    res.update(m)
    res["sum_squared_weights"] = float(one.sum_squared_weights()[0])

    share, dom = max_normalized_power(wl, basis, axis=1)
    res["max_normalized_power_mean"] = float(share.mean())
    res["max_normalized_power"] = share
    res["neuron_logit_frequency"] = dom
    best = shares.max(axis=1)
    res["neuron_frequency"] = np.where(alive, shares.argmax(axis=1) + 1, 0)
    res["neuron_explained_share"] = best
    res["fraction_neurons_explained"] = float((best[alive] > EXPLAINED).mean()) \
        if alive.any() else 0.0
    res["neuron_frequency_source"] = neuron_source
    if one.cfg.kind == "mlp":
        res["max_normalized_power_input_mean"] = float(best.mean())
    counts = np.bincount(res["neuron_frequency"], minlength=basis.n_components + 1)
    res["neuron_frequency_histogram"] = {int(k): int(c) for k, c in enumerate(counts) if c}

    res["ablation_curve"] = frequency_ablation(logits, task.labels, ks, basis, test_idx)
    # control: remove as many non-key frequencies (those of largest embedding norm)
    others = [int(k) for k in np.argsort(-e_norms) + 1 if k not in ks][: max(len(ks), 1)]
    res["control_ablation"] = frequency_ablation(logits, task.labels, others, basis,
                                                 test_idx)[-1]
    keep = keep_only(np.eye(task.p), basis, ks).apply(logits)
    res["accuracy_key_only"] = float(loss_and_accuracy(keep, task.labels)[1])
    res["embed_spectrum"] = [{"k": int(k), "period": float(basis.period(int(k))),
                              "norm": float(n)} for k, n in zip(basis.ks, e_norms)]
    res["neuron_logit_spectrum"] = [float(n) for n in l_norms]
    return res


SUMMARY_KEYS = ("key_frequencies", "key_source", "train_accuracy", "test_accuracy", "test_loss",
                "restricted_loss", "excluded_loss", "gini_embed", "gini_neuron_logit", "ffd",
                "fcr", "fraction_neurons_explained", "max_normalized_power_mean",
                "sum_squared_weights")
