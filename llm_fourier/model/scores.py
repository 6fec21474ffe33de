"""Scores of integer predictions against answers, in value space and in digit space.

One summary serves every evaluation (single-token next-token predictions, greedy whole
answers, hidden-state ablations). Predictions are integers, -1 where the model wrote no
number. Value space: accuracy, signed-error histogram, errors that are multiples of 10,
mod-2 / mod-10 accuracy. Digit space (Levy & Geva 2025): digits are compared place by
place (place 0 = units; a shorter number has zeros in front), giving per-place accuracy,
the share of wrong answers that differ in exactly one place (and which place), the number
of differing places, and per place the histogram of signed digit differences.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np


def n_digits(values) -> int:
    """Places needed to write the largest of ``values`` (at least 1)."""
    top = int(np.max(values, initial=0))
    return len(str(max(top, 0)))


def digits_of(values, n_places: int) -> np.ndarray:
    """N x n_places digits (column i = place i, units first) of non-negative ``values``."""
    v = np.asarray(values, dtype=np.int64)[:, None]
    return (v // 10 ** np.arange(n_places, dtype=np.int64)[None, :]) % 10


def _histogram(values) -> dict[int, int]:
    return {int(k): int(v) for k, v in sorted(Counter(np.asarray(values).tolist()).items())}


def digit_summary(answers: np.ndarray, preds: np.ndarray) -> dict:
    """Per-place accuracy and the digit-space analysis of the wrong number predictions."""
    is_num = preds >= 0
    places = n_digits(answers)
    a_dig = digits_of(answers, places)
    p_dig = digits_of(np.where(is_num, preds, 0), places)
    hit = (a_dig == p_dig) & is_num[:, None]
    n = max(len(answers), 1)
    wrong = is_num & (preds != answers)
    width = n_digits(np.concatenate([answers, preds[is_num]])) if wrong.any() else places
    a_w, p_w = digits_of(answers[wrong], width), digits_of(preds[wrong], width)
    differs = a_w != p_w  # n_wrong x width
    n_diff = differs.sum(1)
    one = n_diff == 1
    return {
        "digit_accuracy": [float(hit[:, i].sum() / n) for i in range(places)],
        "frac_errors_one_digit": float(one.mean()) if wrong.any() else float("nan"),
        "one_digit_errors_by_place": [int(differs[one, i].sum()) for i in range(width)],
        "wrong_digits_histogram": _histogram(n_diff),
        "digit_error_histogram": [_histogram((p_w - a_w)[differs[:, i], i])
                                  for i in range(width)],
    }


@dataclass
class Scores:
    """Per-example answers and predictions (-1 = not a number) of one evaluation, with the
    per-example loss when the evaluation has one."""

    answers: np.ndarray
    predictions: np.ndarray
    losses: np.ndarray | None = None

    def summary(self) -> dict:
        a = np.asarray(self.answers, dtype=np.int64)
        pred = np.asarray(self.predictions, dtype=np.int64)
        is_num = pred >= 0
        wrong = pred != a
        err = (pred - a)[is_num & wrong]
        n = max(len(a), 1)
        out = {"n": int(len(a))}
        if self.losses is not None:
            out["loss"] = float(np.mean(self.losses)) if len(a) else float("nan")
        out |= {
            "accuracy": float((~wrong).sum() / n),
            "n_errors": int(wrong.sum()),
            "n_non_number": int((~is_num).sum()),
            "error_histogram": _histogram(err),
            "frac_errors_mult_10": float((err % 10 == 0).mean()) if err.size else float("nan"),
            "max_abs_error": int(np.abs(err).max()) if err.size else 0,
            "mod2_accuracy": float((is_num & (pred % 2 == a % 2)).sum() / n),
            "mod10_accuracy": float((is_num & (pred % 10 == a % 10)).sum() / n),
        }
        return out | (digit_summary(a, pred) if len(a) else {})
