"""Scores: value- and digit-space summaries against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from llm_fourier.model.scores import Scores, digits_of, n_digits


def test_value_and_digit_space_against_a_hand_computation():
    answers = np.array([108, 108, 108, 108, 57, 57, 5])
    preds = np.array([108, 118, 109, 208, 75, -1, 15])
    s = Scores(answers, preds).summary()
    assert "loss" not in s and s["n"] == 7
    assert s["accuracy"] == pytest.approx(1 / 7)
    assert s["n_errors"] == 6 and s["n_non_number"] == 1
    assert s["error_histogram"] == {1: 1, 10: 2, 18: 1, 100: 1}
    assert s["frac_errors_mult_10"] == pytest.approx(3 / 5) and s["max_abs_error"] == 100
    # places 0 (units), 1, 2 of the answers; a non-number is wrong at every place
    assert s["digit_accuracy"] == pytest.approx([4 / 7, 3 / 7, 5 / 7])
    # wrong numbers: 118, 109, 208, 15 differ in one place, 75 in two
    assert s["frac_errors_one_digit"] == pytest.approx(4 / 5)
    assert s["one_digit_errors_by_place"] == [1, 2, 1]
    assert s["wrong_digits_histogram"] == {1: 4, 2: 1}
    assert s["digit_error_histogram"] == [{-2: 1, 1: 1}, {1: 2, 2: 1}, {1: 1}]


def test_longer_predictions_and_helpers():
    assert digits_of([1234, 7], 5).tolist() == [[4, 3, 2, 1, 0], [7, 0, 0, 0, 0]]
    assert n_digits([0]) == 1 and n_digits([99, 100]) == 3
    s = Scores(np.array([8, 8]), np.array([1008, 8]), np.array([1.0, 3.0])).summary()
    assert s["loss"] == 2.0
    assert s["one_digit_errors_by_place"] == [0, 0, 0, 1]  # a 1 in front: place 3
    assert s["digit_accuracy"] == [1.0]
    empty = Scores(np.array([5]), np.array([5])).summary()
    assert np.isnan(empty["frac_errors_one_digit"]) and empty["wrong_digits_histogram"] == {}
