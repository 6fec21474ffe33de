"""Progress measures on hand-built weights and logit tables with known answers."""

import numpy as np
import pytest
import torch

from llm_fourier.errors import UserError
from toy.data import make_task
from toy.progress import (
    FrequencyParts,
    basis_for,
    embedding_measures,
    loss_and_accuracy,
    pick_key_frequencies,
    restricted_excluded_logits,
    restricted_excluded_loss,
    select_key_frequencies,
)

P = 13


def planted_logits(p, freqs, amps, op="a+b"):
    """L[(a, b), c] = sum_k amp_k cos(2 pi k (s - c) / p), s = a + b or a - b."""
    task = make_task(op, p)
    a, b = task.inputs[:, 0].double(), task.inputs[:, 1].double()
    s = a + b if op == "a+b" else a - b
    c = torch.arange(p).double()
    L = sum(amp * torch.cos(2 * np.pi * k * (s[:, None] - c[None]) / p)
            for k, amp in zip(freqs, amps))
    return task, L


def ce_numpy(L, y):
    L = np.asarray(L, float)
    m = L.max(1, keepdims=True)
    logz = m[:, 0] + np.log(np.exp(L - m).sum(1))
    return float(np.mean(logz - L[np.arange(len(y)), y]))


def test_loss_and_accuracy_is_float64_cross_entropy():
    L = torch.randn(2, 50, 7)
    y = torch.randint(0, 7, (50,))
    loss, acc = loss_and_accuracy(L, y)
    for s in range(2):
        assert float(loss[s]) == pytest.approx(ce_numpy(L[s].double(), y.numpy()), rel=1e-12)
        assert float(acc[s]) == pytest.approx((L[s].argmax(1) == y).float().mean().item())


@pytest.mark.parametrize("op", ["a+b", "a-b"])
def test_restricted_and_excluded_loss_on_planted_logits(op):
    task, L = planted_logits(P, [2, 5], [4.0, 3.0], op)
    _, noise = planted_logits(P, [4], [0.5], op)
    train_idx = torch.arange(0, len(task), 3)
    res = restricted_excluded_loss(L + noise, task, [2, 5], train_idx, basis_for(P))
    y = task.labels.numpy()
    # keeping the key directions (plus the per-class mean, zero here) recovers L exactly
    assert res["restricted_loss"] == pytest.approx(ce_numpy(L, y), rel=1e-9)
    # removing them leaves only the noise term
    assert res["excluded_loss"] == pytest.approx(
        ce_numpy(noise[train_idx], y[train_idx.numpy()]), rel=1e-9)
    assert res["restricted_accuracy"] == 1.0
    assert res["restricted_definition"] == "input_directions"


def test_nonlinear_op_uses_the_answer_axis():
    task = make_task("a*b", P)
    y = task.labels
    c = torch.arange(P).double()
    L = 5 * torch.cos(2 * np.pi * 3 * (y[:, None].double() - c) / P)
    res = restricted_excluded_loss(L, task, [3], torch.arange(len(task)), basis_for(P))
    assert res["restricted_definition"] == "answer_axis"
    assert res["restricted_loss"] == pytest.approx(ce_numpy(L, y.numpy()), rel=1e-9)
    assert res["excluded_loss"] == pytest.approx(np.log(P), rel=1e-9)  # flat logits


def test_embedding_measures_on_planted_embedding():
    x = np.arange(P)
    w = lambda k: 2 * np.pi * k * x / P  # noqa: E731
    # columns: frequency 2 as cos and sin (balanced), frequency 5 as cos only
    E = np.stack([np.cos(w(2)), np.sin(w(2)), 1.5 * np.cos(w(5))], axis=1)
    WL = np.stack([np.cos(w(2)), np.cos(w(2)) + np.sin(w(2))], axis=0)  # (neurons, p)
    m = embedding_measures(E, WL, basis_for(P))
    K = P // 2
    norms = np.zeros(K)
    norms[1], norms[4] = np.sqrt(P / 2 + P / 2), np.sqrt(2.25 * P / 2)  # DFT norms by Parseval
    np.testing.assert_allclose(m["embed_norms"], norms, atol=1e-9)
    c = np.sort(norms)  # Gini (Hurley-Rickard) written out
    i = np.arange(1, K + 1)
    assert m["gini_embed"] == pytest.approx(1 - 2 * np.sum(c / c.sum() * (K - i + 0.5) / K))
    assert m["ffd"] == pytest.approx(2 / K)  # two frequencies above half the peak
    assert m["fcr"] == pytest.approx(0.5)  # freq 2 balanced (1), freq 5 cos only (0)
    assert pick_key_frequencies(m["embed_norms"]) == [5, 2]
    assert m["gini_neuron_logit"] == pytest.approx(1 - 1 / K)  # one component only


@pytest.mark.parametrize("op,p,n_inputs", [("a+b", 13, 2), ("a-b", 12, 2), ("sum", 7, 3),
                                           ("a*b", 11, 2)])
def test_frequency_parts_match_the_restricted_and_excluded_logits(op, p, n_inputs):
    task = make_task(op, p, n_inputs)
    L = torch.randn(len(task), p, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    basis = basis_for(p)
    parts = FrequencyParts(L, task, basis)
    for ks in ([], [2], [1, 3], list(basis.ks)):
        restricted, _, how = restricted_excluded_logits(L, task, ks, basis)
        assert parts.definition == how
        assert parts.loss(parts.restricted(ks)) == pytest.approx(
            ce_numpy(restricted, task.labels.numpy()), rel=1e-9)
    for k in (1, 3):
        _, excluded, _ = restricted_excluded_logits(L, task, [k], basis)
        assert parts.loss_without(k) == pytest.approx(ce_numpy(excluded, task.labels.numpy()),
                                                      rel=1e-9)
    assert parts.full_loss() == pytest.approx(ce_numpy(L, task.labels.numpy()), rel=1e-12)
    # every frequency kept: class-mean logits (Jensen: never above the full loss), or
    # along the answer axis the logits themselves
    assert parts.loss(parts.restricted(basis.ks)) <= parts.full_loss() * (1 + 1e-12)


def test_select_key_frequencies_is_the_smallest_set_within_the_tolerance():
    # 2 and 5 carry the answer; 4 is small; the rest is per-example noise
    task, L = planted_logits(P, [2, 5, 4], [4.0, 3.0, 0.3])
    noise = 0.3 * torch.randn(L.shape, generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64)
    parts = FrequencyParts(L + noise, task, basis_for(P))
    sel = select_key_frequencies(parts)
    assert sel["key_frequencies"] == [2, 5]  # largest amplitude first
    y = task.labels.numpy()
    noisy = (L + noise).numpy()
    class_means = np.stack([noisy[y == c].mean(0) for c in range(P)])
    assert sel["reference_loss"] == pytest.approx(ce_numpy(class_means, np.arange(P)), rel=1e-9)
    assert sel["bound"] == pytest.approx(2 * sel["reference_loss"] + 1e-9)
    # the path's losses are the restricted losses of its prefixes (input directions)
    for i, step in enumerate(sel["path"]):
        r, _, _ = restricted_excluded_logits(L + noise, task, sel["key_frequencies"][:i],
                                             basis_for(P))
        assert step["restricted_loss"] == pytest.approx(ce_numpy(r, y), rel=1e-9)
    assert ce_numpy(restricted_excluded_logits(L + noise, task, [2], basis_for(P))[0], y) \
        > sel["bound"] >= sel["path"][-1]["restricted_loss"]
    # no tolerance: the small frequency is needed too (and the noise is not)
    tight = select_key_frequencies(parts, loss_ratio=1.0, loss_atol=0.0)
    assert tight["key_frequencies"] == [2, 5, 4]
    with pytest.raises(UserError, match="loss ratio >= 1"):
        select_key_frequencies(parts, loss_ratio=0.5)


def test_answer_axis_selection_with_and_without_a_shortlist():
    task = make_task("a*b", P)
    y, c = task.labels[:, None].double(), torch.arange(P).double()
    L = sum(amp * torch.cos(2 * np.pi * k * (y - c) / P) for k, amp in ((3, 5.0), (5, 3.0)))
    L = L + 0.3 * torch.randn(L.shape, generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64)
    parts = FrequencyParts(L, task, basis_for(P))
    full = select_key_frequencies(parts)
    assert full["key_frequencies"] == [3, 5] and full["shortlist"] is None
    assert select_key_frequencies(parts, shortlist=2)["path"] == full["path"]
    # the reference keeps every frequency along the answer axis: the logits themselves
    assert full["reference_loss"] == pytest.approx(ce_numpy(L, task.labels.numpy()), rel=1e-9)
    with pytest.raises(UserError, match="shortlist"):
        select_key_frequencies(parts, shortlist=0)
