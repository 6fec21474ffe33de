"""Fourier analysis of one trained toy model (any kind): which frequencies it uses and how.

Everything is computed in the exact DFT basis over the p numbers (``probes``):

* key frequencies from the embedding's Fourier norms (default), the neuron-to-logit map
  W_L, or (for linear ops) the logits' energy in the cos/sin(w_k (a + b)) directions;
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
    basis_for,
    embedding_measures,
    linear_directions,
    loss_and_accuracy,
    pick_key_frequencies,
    restricted_excluded_loss,
)

KEY_SOURCES = ("embed", "neuron_logit", "logits")
EXPLAINED = 0.85


def neuron_frequency_shares(acts: np.ndarray, basis: FourierBasis) -> np.ndarray:
    """Share of each neuron's non-constant variance over the (a, b) grid held by each
    frequency's 2-D terms. ``acts`` is (p, p, neurons); returns (neurons, K)."""
    B = basis.matrix
    coef = np.einsum("ia,abn,jb->nij", B, acts, B)  # 2-D transform per neuron
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


@torch.no_grad()
def analyze(model: StackedModel, task: Task, train_idx: torch.Tensor, test_idx: torch.Tensor,
            seed_index: int = 0, key_source: str = "embed",
            key_share: float | None = None) -> dict:
    """Every measure of one seed of ``model`` on ``task`` (splits are row indices)."""
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
    keys = {"embed": pick_key_frequencies(e_norms, key_share),
            "neuron_logit": pick_key_frequencies(l_norms, key_share)}
    if task.linear_coeffs is not None and task.full_grid:
        keys["logits"] = pick_key_frequencies(np.sqrt(logit_frequency_energy(logits, task, basis)),
                                              key_share)
    if key_source not in keys:
        raise ValueError("key_source='logits' needs a linear op (a+b, a-b, sum) on a full grid")
    ks = keys[key_source]
    res.update({"key_frequencies": ks, "key_source": key_source,
                **{f"key_frequencies_{k}": v for k, v in keys.items()}})
    res.update(restricted_excluded_loss(logits, task, ks, train_idx, basis))
    res.update(m)
    res["sum_squared_weights"] = float(one.sum_squared_weights()[0])

    share, dom = max_normalized_power(wl, basis, axis=1)
    res["max_normalized_power_mean"] = float(share.mean())
    res["max_normalized_power"] = share
    res["neuron_logit_frequency"] = dom
    if one.cfg.kind == "mlp":  # Li et al.: each neuron's input weights, summed over inputs
        w_in = one.W_in[0].double().numpy()  # (k, p, width)
        power = sum(power_per_component(w, basis, axis=0) for w in w_in)  # (K, width)
        total = power.sum(axis=0)
        best = np.divide(power.max(axis=0), total, out=np.zeros_like(total), where=total > 0)
        res["max_normalized_power_input_mean"] = float(best.mean())
        res["neuron_frequency"] = np.where(total > 0, power.argmax(axis=0) + 1, 0)
        res["neuron_explained_share"] = best
        res["fraction_neurons_explained"] = float((best > EXPLAINED).mean())
        res["neuron_frequency_source"] = "input_weights"
    elif task.n_inputs == 2 and task.full_grid:
        acts = one.neurons(task.inputs)[0].double().numpy().reshape(task.p, task.p, -1)
        shares = neuron_frequency_shares(acts, basis)
        best = shares.max(axis=1)
        alive = np.abs(acts).reshape(-1, acts.shape[2]).max(axis=0) > 0
        res["neuron_frequency"] = np.where(alive, shares.argmax(axis=1) + 1, 0)
        res["neuron_explained_share"] = best
        res["fraction_neurons_explained"] = float((best[alive] > EXPLAINED).mean()) \
            if alive.any() else 0.0
        res["neuron_frequency_source"] = "activations_2d"
    else:  # no (a, b) grid: fall back on each neuron's output weights
        res["neuron_frequency"] = dom
        res["fraction_neurons_explained"] = float((share > EXPLAINED).mean())
        res["neuron_frequency_source"] = "neuron_logit_map"
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


SUMMARY_KEYS = ("key_frequencies", "train_accuracy", "test_accuracy", "test_loss",
                "restricted_loss", "excluded_loss", "gini_embed", "gini_neuron_logit", "ffd",
                "fcr", "fraction_neurons_explained", "max_normalized_power_mean",
                "sum_squared_weights")
