"""Number embeddings transplanted into a from-scratch adder (Zhou et al., section 4.2).

Sources of the rows for the numbers 0..p-1, matched by number value (row n = number n):

* any Hugging Face model or folder (GPT-2, Llama-3, BERT/RoBERTa, another trained run):
  ``llm_fourier.analyses.embeddings.load_embedding_matrix`` + ``numbers.find_number_tokens`` /
  ``number_rows``;
* synthetic embeddings with chosen Fourier periods and their controls (``synthetic_embeddings``).

When the source width differs from the target's, ``project_rows`` maps the rows:

* ``"pca"`` (default): project the rows on the top-``dim`` principal axes of the (centred)
  source rows, ``rows @ V[:, :dim]``. The Fourier transform over numbers commutes with any
  linear map of the columns, so every component's energy is kept up to the variance PCA
  drops; the strong number features (low frequencies, periods 2, 2.5, 5, 10) survive.
  A narrower source is rotated to its principal axes and zero-padded (norms preserved).
* ``"random"``: a fixed random map with orthonormal columns (seeded), ``rows @ Q``; every
  component keeps on average ``dim / D_source`` of its energy (a narrower source is
  embedded isometrically).

The rows are written into the input embedding, which the adder ties to the unembedding
(an untied output embedding gets the same rows). Freezing is done by the trainer
(``llm_fourier.analyses.finetuning.train(frozen_token_ids=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llm_fourier.analyses.embeddings import load_embedding_matrix
from llm_fourier.analyses.finetuning import embedding_params
from llm_fourier.errors import UserError
from llm_fourier.model.numbers import find_number_tokens, number_rows

PROJECTIONS = ("pca", "random")
SYNTHETIC_KINDS = ("fourier", "low", "random")
DEFAULT_PERIODS = (2.0, 2.5, 5.0, 10.0)


def project_rows(rows: np.ndarray, dim: int, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Map ``rows`` (q x D) to width ``dim`` (see the module docstring); same width: a copy."""
    rows = np.asarray(rows, dtype=np.float64)
    q, d = rows.shape
    if method not in PROJECTIONS:
        raise UserError(f"projection must be one of {', '.join(PROJECTIONS)}, got {method!r}.")
    if d == dim:
        return rows.copy()
    if method == "random":
        rng = np.random.default_rng(seed)
        big, small = max(d, dim), min(d, dim)
        Q, _ = np.linalg.qr(rng.standard_normal((big, small)))  # big x small, orthonormal
        return rows @ Q if d > dim else rows @ Q.T
    _, _, vt = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=True)
    projected = rows @ vt.T[:, :min(d, dim)]
    if d < dim:
        projected = np.concatenate([projected, np.zeros((q, dim - d))], axis=1)
    return projected


def rescale_rows(rows: np.ndarray, norm: float | None) -> np.ndarray:
    """One global factor so the mean row norm is ``norm`` (None: unchanged)."""
    if norm is None:
        return rows
    mean = float(np.linalg.norm(rows, axis=1).mean())
    return rows * (norm / mean) if mean > 0 else rows


def _features(x: np.ndarray, periods: Sequence[float]) -> np.ndarray:
    cols = []
    for period in periods:
        for f in (np.cos, np.sin):
            col = f(2 * np.pi * x / period)
            if np.abs(col).max() > 1e-9:  # sin at period 2 is identically zero
                cols.append(col / np.sqrt(np.mean(col**2)))
    return np.stack(cols, axis=1)


def low_periods(p: int, n_low: int) -> list[float]:
    """Smooth components: periods 2(p-1)/k, k = 1..n_low (k = 1 is monotonic over 0..p-1)."""
    return [2 * (p - 1) / k for k in range(1, n_low + 1)]


def synthetic_embeddings(
    p: int,
    dim: int,
    kind: str = "fourier",
    periods: Sequence[float] = DEFAULT_PERIODS,
    n_low: int = 4,
    norm: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Number embeddings (p x dim) for the numbers 0..p-1.

    ``"fourier"``: cos/sin features at ``periods`` plus ``n_low`` smooth components (periods
    2(p-1)/k: without them n and n + 10 would share an embedding). ``"low"``: the same
    number of components, all smooth (k = 1..n_low + len(periods)): a from-scratch-like
    control. ``"random"``: Gaussian rows with the row norms of the ``"fourier"`` rows.
    Feature columns have unit RMS and are placed by a seeded random map with orthonormal
    columns; all rows are scaled to mean norm ``norm``.
    """
    if kind not in SYNTHETIC_KINDS:
        raise UserError(f"synthetic kind must be one of {', '.join(SYNTHETIC_KINDS)}, "
                        f"got {kind!r}.")
    x = np.arange(p, dtype=np.float64)
    fourier = _features(x, [*low_periods(p, n_low), *periods])
    if kind == "low":
        feats = _features(x, low_periods(p, n_low + len(periods)))
    else:
        feats = fourier
    if feats.shape[1] > dim:
        raise UserError(f"{feats.shape[1]} synthetic features do not fit width {dim}; use "
                        "fewer periods, a smaller --n-low or a wider model.")
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((dim, feats.shape[1])))
    rows = rescale_rows(feats @ Q.T, norm)
    if kind == "random":  # Q has orthonormal columns, so fourier's row norms are Q-free
        fnorm = np.linalg.norm(fourier, axis=1)
        target = fnorm * (norm / fnorm.mean())
        noise = rng.standard_normal((p, dim))
        rows = noise * (target / np.linalg.norm(noise, axis=1))[:, None]
    return rows


def resolve_model_dir(source: str | Path) -> str | Path:
    """A run folder (``finetune`` / ``transplant`` output) -> its ``model`` folder."""
    path = Path(source)
    if (path / "model" / "config.json").exists():
        return path / "model"
    return source


def source_number_rows(source: str | Path, p: int, leading_space: bool = False,
                       trust_remote_code: bool = False) -> tuple[np.ndarray, dict]:
    """Number embedding rows (q x D, row n = number n, q <= p) of a HF model or run folder."""
    source = resolve_model_dir(source)
    matrix, tokenizer = load_embedding_matrix(source, trust_remote_code=trust_remote_code)
    numbers = find_number_tokens(tokenizer, max_number=p - 1, leading_space=leading_space)
    if numbers.p < 3:
        raise UserError(f"{source} keeps fewer than 3 integers as single tokens; pick a "
                        "source whose tokenizer has number tokens (e.g. gpt2).")
    rows = number_rows(matrix, numbers, f"W_E of {source}").detach().to(torch.float64).cpu().numpy()
    info = {"source": str(source), "source_numbers": int(numbers.p), "source_dim": rows.shape[1],
            "source_token_ids": numbers.token_ids[:5].tolist()}
    return rows[:p], info


@torch.no_grad()
def transplant_rows(model, numbers, rows: np.ndarray) -> np.ndarray:
    """Write ``rows[n]`` into the embedding row of number n (n < len(rows)); token ids back.

    ``numbers`` are the target tokenizer's number tokens. The tied unembedding follows; an
    untied output embedding gets the same rows.
    """
    q = min(len(rows), numbers.p)
    ids = np.asarray(numbers.token_ids[:q])
    for param in embedding_params(model):
        if param.shape[1] != rows.shape[1]:
            raise UserError(f"rows have width {rows.shape[1]} but the model's embedding has "
                            f"{param.shape[1]}; project them first.")
        param[torch.as_tensor(ids, device=param.device)] = torch.as_tensor(
            rows[:q], dtype=param.dtype, device=param.device)
    return ids
