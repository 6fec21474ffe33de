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
* ``FrequencyParts`` / ``select_key_frequencies``: the restricted logits as a sum of one
  part per frequency, and the smallest set of frequencies (greedy) whose restricted loss
  stays within a tolerance of the restricted loss of every frequency.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llm_fourier.errors import UserError
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


class FrequencyParts:
    """One seed's full-data logits (N, p) split into a base plus one part per frequency k.

    Linear op on a full grid: the restricted logits are a function of the class
    s = sum_i c_i x_i mod p only (every class holds N / p rows), so they are computed on the
    p class-mean logits M: M's DFT along s, kept at the constant (the base) and at the
    chosen frequencies. ``restricted(ks)`` then equals ``restricted_excluded_logits`` on the
    class rows, at 1/p of the cost. Nonlinear op: the parts are the DFT components of each
    logit vector along the answer axis, as in ``restricted_excluded_logits``.
    With every frequency kept, the restricted logits are M itself (linear) or the logits
    themselves (nonlinear).
    """

    def __init__(self, logits: torch.Tensor, task: Task, basis: FourierBasis) -> None:
        L = logits.double()
        B = torch.as_tensor(basis.matrix, dtype=torch.float64)  # (1 + 2K, p), orthonormal
        self.basis, self.logits, self.data_labels = basis, L, task.labels
        if task.linear_coeffs is not None and task.full_grid:
            coeffs = torch.tensor(task.linear_coeffs, dtype=torch.long)
            self.row_of = (task.inputs * coeffs).sum(1) % task.p  # each row's class s
            counts = torch.bincount(self.row_of, minlength=task.p).double()
            M = L.new_zeros(task.p, L.shape[1]).index_add_(0, self.row_of, L) / counts[:, None]
            self.U, self.V = B.T, B @ M  # part_k = U[:, rows_k] @ V[rows_k]
            self.labels = torch.arange(task.p)
            self.definition = "input_directions"
        else:
            self.row_of = torch.arange(L.shape[0])
            self.U, self.V = L @ B.T, B
            self.labels = task.labels
            self.definition = "answer_axis"
        self.base = self.U[:, :1] @ self.V[:1]

    def part(self, k: int) -> torch.Tensor:
        rows = torch.as_tensor(self.basis.rows_of([k]))
        return self.U[:, rows] @ self.V[rows]

    def restricted(self, ks) -> torch.Tensor:
        """Restricted logits (one row per class, or per data row) keeping frequencies ks."""
        rows = torch.as_tensor(self.basis.rows_of(ks, include_constant=True))
        return self.U[:, rows] @ self.V[rows]

    def loss(self, restricted: torch.Tensor) -> float:
        """Mean cross-entropy over all data of restricted logits (classes weigh equally)."""
        return float(F.cross_entropy(restricted.double(), self.labels))

    def full_loss(self) -> float:
        """Mean cross-entropy of the model's own logits over all data."""
        return float(loss_and_accuracy(self.logits, self.data_labels)[0])

    def loss_without(self, k: int) -> float:
        """Loss over all data of the logits with frequency k's part removed (excluded-style)."""
        removed = self.logits - self.part(k)[self.row_of]
        return float(loss_and_accuracy(removed, self.data_labels)[0])


KEY_LOSS_RATIO = 2.0
KEY_LOSS_ATOL = 1e-9
ANSWER_AXIS_SHORTLIST = 8  # candidates per greedy step when every trial costs N x p


def select_key_frequencies(parts: FrequencyParts, loss_ratio: float = KEY_LOSS_RATIO,
                           loss_atol: float = KEY_LOSS_ATOL,
                           shortlist: int | None = None) -> dict:
    """The smallest set of frequencies the model needs, by greedy forward selection.

    Reference: the restricted loss with every frequency kept (a linear op: the model's
    logits averaged over each answer class, which drops the per-example noise that every
    restricted loss drops; it is at most the full model's loss, by Jensen). Starting from
    no frequency, add at each step the one whose inclusion lowers the restricted loss most,
    until ``restricted_loss <= loss_ratio * reference + loss_atol``. With ``shortlist``,
    each step tries only that many unchosen frequencies, those of largest energy in the
    logits (their part's squared norm). Returns the frequencies in the order chosen, the
    reference, the bound and the path.
    """
    if not loss_ratio >= 1 or not loss_atol >= 0:
        raise UserError(f"the key-frequency tolerance needs a loss ratio >= 1 and an absolute "
                        f"margin >= 0 (got {loss_ratio} and {loss_atol}); the defaults are "
                        f"{KEY_LOSS_RATIO} and {KEY_LOSS_ATOL}.")
    if shortlist is not None and shortlist < 1:
        raise UserError(f"the shortlist must be a positive number of candidates or None "
                        f"(got {shortlist}).")
    reference = parts.loss(parts.restricted(parts.basis.ks))
    bound = loss_ratio * reference + loss_atol
    energy = {int(k): float(parts.part(int(k)).pow(2).sum()) for k in parts.basis.ks}
    remaining = sorted(energy, key=lambda k: -energy[k])  # largest energy first
    current, chosen = parts.base, []
    path = [{"k": None, "restricted_loss": parts.loss(current)}]
    while path[-1]["restricted_loss"] > bound and remaining:
        trials = [(parts.loss(current + parts.part(k)), k) for k in remaining[:shortlist]]
        loss, k = min(trials)
        current = current + parts.part(k)
        chosen.append(k)
        remaining.remove(k)
        path.append({"k": k, "restricted_loss": loss})
    return {"key_frequencies": chosen, "reference_loss": reference, "bound": bound,
            "loss_ratio": loss_ratio, "loss_atol": loss_atol, "shortlist": shortlist,
            "path": path}
