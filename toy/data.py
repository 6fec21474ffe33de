"""Data sets of modular arithmetic: (a op b) mod p and sums of k inputs mod p.

A task enumerates every input tuple (a-major order, so pair (a, b) is row ``a * p + b``)
with its label. Splits are deterministic functions of (number of rows, train fraction,
seed), so a seed's split is the same whether it is trained alone or beside others.
``nanda_split`` reproduces the split of Nanda et al.'s progress-measures code (Python's
``random.shuffle`` of the pair list) for analysing their checkpoints.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llm_fourier.errors import UserError

MAX_ROWS = 2_000_000  # enumerating p^k tuples beyond this is a configuration mistake


def _inverse(b: torch.Tensor, p: int) -> torch.Tensor:
    return torch.tensor([pow(int(v), p - 2, p) for v in b.tolist()], dtype=torch.long)


# Binary operations on int64 tensors a, b (reduced mod p by the caller). Furuta et al.'s
# polynomials are included; "a/b" is a * b^(p-2) (p prime) and drops the pairs with b = 0.
OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "a+b": lambda a, b, p: a + b,
    "a-b": lambda a, b, p: a - b,
    "a*b": lambda a, b, p: a * b,
    "a/b": lambda a, b, p: a * _inverse(b, p),
    "a^2+b^2": lambda a, b, p: a**2 + b**2,
    "a^2-b^2": lambda a, b, p: a**2 - b**2,
    "a^2+ab+b^2": lambda a, b, p: a**2 + a * b + b**2,
    "a^2+ab+b^2+a": lambda a, b, p: a**2 + a * b + b**2 + a,
    "a^3+ab": lambda a, b, p: a**3 + a * b,
    "a^3+ab^2+b": lambda a, b, p: a**3 + a * b**2 + b,
    "(a+b)^2": lambda a, b, p: (a + b) ** 2,
    "(a+b)^3": lambda a, b, p: (a + b) ** 3,
    "ab+a+b": lambda a, b, p: a * b + a + b,
}
# Ops whose answer is a linear form sum_i c_i x_i: their Fourier algorithm uses the
# directions cos/sin(w * sum_i c_i x_i), which the restricted and excluded losses need.
LINEAR_COEFFS = {"a+b": (1, 1), "a-b": (1, -1)}
ALL_OPS = (*OPS, "sum")


@dataclass
class Task:
    """Every input tuple of one task with its label (numbers 0..p-1)."""

    op: str
    p: int
    inputs: torch.Tensor  # (N, n_inputs) int64
    labels: torch.Tensor  # (N,) int64
    full_grid: bool  # True when inputs are all p^n_inputs tuples in a-major order

    @property
    def n_inputs(self) -> int:
        return self.inputs.shape[1]

    @property
    def linear_coeffs(self) -> tuple[int, ...] | None:
        """Coefficients c of answer = sum c_i x_i mod p, or None for a nonlinear op."""
        if self.op == "sum":
            return (1,) * self.n_inputs
        return LINEAR_COEFFS.get(self.op)

    def __len__(self) -> int:
        return self.labels.shape[0]


def make_task(op: str, p: int, n_inputs: int = 2) -> Task:
    """All inputs of ``op`` mod ``p``; ``op="sum"`` sums ``n_inputs`` numbers."""
    if op not in ALL_OPS:
        raise UserError(f"unknown operation {op!r}; choose one of {', '.join(ALL_OPS)}.")
    if p < 3:
        raise UserError(f"the modulus p must be at least 3 (got {p}).")
    if op != "sum" and n_inputs != 2:
        raise UserError(f"operation {op!r} takes 2 inputs; use --op sum for k inputs.")
    if n_inputs < 2:
        raise UserError(f"a task needs at least 2 inputs (got {n_inputs}).")
    if p**n_inputs > MAX_ROWS:
        raise UserError(f"p^k = {p}^{n_inputs} inputs is too many to enumerate; "
                        f"use a smaller p or fewer inputs (at most {MAX_ROWS:,} rows).")
    if op == "a/b" and any(p % d == 0 for d in range(2, int(p**0.5) + 1)):
        raise UserError(f"division mod p needs a prime p (got {p}).")
    grid = torch.cartesian_prod(*[torch.arange(p)] * n_inputs).reshape(-1, n_inputs)
    if op == "sum":
        return Task(op, p, grid, grid.sum(1) % p, True)
    a, b = grid[:, 0], grid[:, 1]
    keep = b != 0 if op == "a/b" else torch.ones_like(b, dtype=torch.bool)
    a, b = a[keep], b[keep]
    labels = OPS[op](a, b, p) % p
    return Task(op, p, torch.stack([a, b], 1), labels, bool(keep.all()))


def split_indices(n: int, train_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) row indices: a random permutation seeded by ``seed``, cut at
    ``floor(train_frac * n)``; both sorted."""
    if not 0 < train_frac < 1:
        raise UserError(f"the train fraction must lie strictly between 0 and 1 (got {train_frac}).")
    n_train = int(train_frac * n)
    if n_train == 0 or n_train == n:
        raise UserError(f"train fraction {train_frac} of {n} rows leaves an empty split.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[:n_train].sort().values, perm[n_train:].sort().values


def nanda_split(p: int, train_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split of Nanda et al.'s code: ``random.seed(seed); random.shuffle(pairs)`` over
    ``[(i, j) for i in range(p) for j in range(p)]``, first ``int(frac * p^2)`` train."""
    pairs = list(range(p * p))  # row index i * p + j, in the same order as their list
    random.Random(seed).shuffle(pairs)
    cut = int(train_frac * len(pairs))
    return torch.tensor(sorted(pairs[:cut])), torch.tensor(sorted(pairs[cut:]))
