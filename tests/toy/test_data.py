"""Modular-arithmetic data: labels against plain Python arithmetic, deterministic splits."""

import random

import pytest
import torch

from llm_fourier.errors import UserError
from toy.data import OPS, make_task, nanda_split, split_indices

PY = {  # the same expressions written independently in plain Python
    "a+b": lambda a, b, p: a + b, "a-b": lambda a, b, p: a - b, "a*b": lambda a, b, p: a * b,
    "a/b": lambda a, b, p: a * pow(b, -1, p), "a^2+b^2": lambda a, b, p: a * a + b * b,
    "a^2-b^2": lambda a, b, p: a * a - b * b, "a^2+ab+b^2": lambda a, b, p: a * a + a * b + b * b,
    "a^2+ab+b^2+a": lambda a, b, p: a * a + a * b + b * b + a,
    "a^3+ab": lambda a, b, p: a**3 + a * b, "a^3+ab^2+b": lambda a, b, p: a**3 + a * b * b + b,
    "(a+b)^2": lambda a, b, p: (a + b) ** 2, "(a+b)^3": lambda a, b, p: (a + b) ** 3,
    "ab+a+b": lambda a, b, p: a * b + a + b,
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_labels_match_python(op):
    p = 13
    task = make_task(op, p)
    expected = {(a, b): PY[op](a, b, p) % p for a in range(p) for b in range(p)
                if not (op == "a/b" and b == 0)}
    got = {(int(a), int(b)): int(y) for (a, b), y in zip(task.inputs, task.labels)}
    assert got == expected
    assert task.full_grid == (op != "a/b")
    if task.full_grid:  # a-major order: row a * p + b
        assert task.inputs[5 * p + 7].tolist() == [5, 7]


def test_sum_of_k_inputs():
    task = make_task("sum", 7, n_inputs=3)
    assert len(task) == 7**3 and task.linear_coeffs == (1, 1, 1)
    row = 2 * 49 + 5 * 7 + 6
    assert task.inputs[row].tolist() == [2, 5, 6] and int(task.labels[row]) == 13 % 7


def test_split_is_deterministic_disjoint_and_sized():
    tr, te = split_indices(100, 0.3, seed=4)
    tr2, _ = split_indices(100, 0.3, seed=4)
    tr3, _ = split_indices(100, 0.3, seed=5)
    assert torch.equal(tr, tr2) and not torch.equal(tr, tr3)
    assert len(tr) == 30 and len(te) == 70
    assert sorted(torch.cat([tr, te]).tolist()) == list(range(100))


def test_nanda_split_reproduces_their_shuffle():
    p, frac, seed = 11, 0.3, 0
    pairs = [(i, j, p) for i in range(p) for j in range(p)]  # their code, verbatim
    random.seed(seed)
    random.shuffle(pairs)
    div = int(frac * len(pairs))
    tr, te = nanda_split(p, frac, seed)
    assert tr.tolist() == sorted(i * p + j for i, j, _ in pairs[:div])
    assert te.tolist() == sorted(i * p + j for i, j, _ in pairs[div:])


@pytest.mark.parametrize("kwargs", [dict(op="nope", p=7), dict(op="a+b", p=2),
                                    dict(op="a*b", p=7, n_inputs=3),
                                    dict(op="sum", p=200, n_inputs=3),
                                    dict(op="a/b", p=15)])
def test_bad_tasks_are_user_errors(kwargs):
    with pytest.raises(UserError):
        make_task(**kwargs)


def test_bad_fraction_is_a_user_error():
    with pytest.raises(UserError):
        split_indices(10, 1.0, 0)
