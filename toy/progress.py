"""Progress measures of Nanda et al. (2023) and Furuta et al. (2024), per seed.

All Fourier math uses ``probes`` with the exact DFT over the p numbers
(``FourierBasis(p, "dft")``), the natural basis of a mod-p model.

* restricted loss: the logits over the full input grid keep only their mean and their
  projections on the key frequencies' directions cos/sin(w_k * s), s = sum_i c_i x_i the
  linear form of the op (a + b, a - b, x_1 + .. + x_k); loss over all data.
* excluded loss: those projections removed; loss over the training data.
  For nonlinear ops (a*b, polynomials) there is no such direction; both losses then keep
  or remove the key frequencies along the answer axis of the logits instead
  (``probes.filters``), and ``restricted_definition`` says which was used.
* Gini of the Fourier norms of the embedding and of the neuron-to-logit map, sum of
  squared weights, FFD and FCR of the embedding.
"""

from __future__ import annotations

import numpy as np
import torch

from probes import FourierBasis, component_magnitudes, cos_sin_norms, fcr, ffd, gini
from probes import key_frequencies as share_key_frequencies
from probes.filters import keep_only, remove_components
from toy.data import Task


def basis_for(p: int) -> FourierBasis:
    return FourierBasis(p, "dft")


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mean cross-entropy in float64 and accuracy over the last-but-one axis: (...,)."""
    logp = logits.double().log_softmax(dim=-1)
    labels = labels.expand(logits.shape[:-1])
    loss = -logp.gather(-1, labels[..., None]).squeeze(-1).mean(-1)
    acc = (logits.argmax(-1) == labels).double().mean(-1)
    return loss, acc


def fourier_norms(matrix, basis: FourierBasis) -> np.ndarray:
    """Per-component L2 norms k = 1..K of a (p, D) matrix along its number axis."""
    mag = component_magnitudes(np.asarray(matrix, dtype=float), basis, axis=0)
    return np.sqrt((mag[1:] ** 2).sum(axis=1))


def pick_key_frequencies(norms, min_share: float | None = None) -> list[int]:
    """Components whose share of energy (norm^2) is at least ``min_share``
    (default 1.5 / K: well above the share of a flat spectrum), largest first."""
    norms = np.asarray(norms, dtype=float)
    share = 1.5 / norms.size if min_share is None else min_share
    return share_key_frequencies(norms**2, min_share=share)


def linear_directions(task: Task, ks, basis: FourierBasis) -> torch.Tensor:
    """Unit columns cos(w_k s), sin(w_k s) over the task's rows, s = sum_i c_i x_i: (N, 2n)."""
    s = (task.inputs.double() * torch.tensor(task.linear_coeffs, dtype=torch.float64)).sum(1)
    w = torch.as_tensor(basis.frequency(np.asarray(list(ks), dtype=float)), dtype=torch.float64)
    cols = torch.cat([torch.cos(s[:, None] * w), torch.sin(s[:, None] * w)], dim=1)
    norms = cols.norm(dim=0)
    return cols[:, norms > 1e-9] / norms[norms > 1e-9]


def restricted_excluded_logits(logits: torch.Tensor, task: Task, ks,
                               basis: FourierBasis) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(restricted, excluded, definition) logits of one seed's full-grid logits (N, p)."""
    ks = [int(k) for k in ks]
    L = logits.double()
    if task.linear_coeffs is not None and task.full_grid:
        D = linear_directions(task, ks, basis) if ks else L.new_zeros(L.shape[0], 0)
        proj = D @ (D.T @ L)
        return L.mean(0, keepdim=True) + proj, L - proj, "input_directions"
    eye = np.eye(task.p)
    keep, drop = keep_only(eye, basis, ks), remove_components(eye, basis, ks)
    return keep.apply(L), drop.apply(L), "answer_axis"


def restricted_excluded_loss(logits: torch.Tensor, task: Task, ks, train_idx: torch.Tensor,
                             basis: FourierBasis) -> dict:
    """Restricted loss (all data) and excluded loss (train data) of one seed."""
    restricted, excluded, how = restricted_excluded_logits(logits, task, ks, basis)
    r_loss, r_acc = loss_and_accuracy(restricted, task.labels)
    e_loss, e_acc = loss_and_accuracy(excluded[train_idx], task.labels[train_idx])
    return {"restricted_loss": float(r_loss), "restricted_accuracy": float(r_acc),
            "excluded_loss": float(e_loss), "excluded_accuracy": float(e_acc),
            "restricted_definition": how}


def embedding_measures(embed, neuron_logit, basis: FourierBasis) -> dict:
    """Gini of the Fourier norms of W_E (p, D) and W_L (neurons, p); FFD, FCR of W_E."""
    e_norms = fourier_norms(embed, basis)
    l_norms = fourier_norms(np.asarray(neuron_logit, dtype=float).T, basis)
    cos_n, sin_n = cos_sin_norms(embed, basis, axis=0)
    return {"gini_embed": gini(e_norms), "gini_neuron_logit": gini(l_norms),
            "ffd": ffd(cos_n, sin_n), "fcr": fcr(cos_n, sin_n),
            "embed_norms": e_norms, "neuron_logit_norms": l_norms}


@torch.no_grad()
def progress_measures(model, task: Task, train_idx: torch.Tensor,
                      key_share: float | None = None) -> list[dict]:
    """Per seed: key frequencies (from the embedding), restricted / excluded loss, Gini of
    W_E and W_L, FFD, FCR and the sum of squared weights. ``train_idx`` is (S, n_train)."""
    basis = basis_for(task.p)
    logits = model(task.inputs)
    embeds = model.embedding().double().cpu().numpy()
    maps = model.neuron_logit_map().double().cpu().numpy()
    ssw = model.sum_squared_weights()
    out = []
    for s in range(model.n_seeds):
        m = embedding_measures(embeds[s], maps[s], basis)
        ks = pick_key_frequencies(m.pop("embed_norms"), key_share)
        m.pop("neuron_logit_norms")
        m.update(restricted_excluded_loss(logits[s], task, ks, train_idx[s], basis))
        m.pop("restricted_definition")
        out.append({"key_frequencies": ks, **m, "sum_squared_weights": float(ssw[s])})
    return out
