"""Analysis: hand-built activations and logits, and models that grok inside the test."""

import numpy as np
import pytest
import torch

from tests.toy.test_progress import ce_numpy
from toy.analysis import analyze, frequency_ablation, neuron_frequency_shares
from toy.data import make_task, split_indices
from toy.models import ModelConfig, build_model
from toy.plots import phase_epochs
from toy.progress import basis_for
from toy.train import GrokConfig, train

P = 23


def test_neuron_frequency_shares_on_planted_neurons():
    p = 11
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    w = lambda k, x: 2 * np.pi * k * x / p  # noqa: E731
    n0 = np.cos(w(3, a)) * np.cos(w(3, b)) + 0.1 * np.cos(w(5, a))
    n1 = np.sin(w(2, a) + w(2, b)) + 7.0  # a constant offset is not variance
    shares = neuron_frequency_shares(np.stack([n0, n1], axis=2), basis_for(p))
    # energies over the grid: cos.cos -> p^2/4, 0.1 cos -> 0.01 p^2/2
    assert shares[0, 2] == pytest.approx(0.25 / (0.25 + 0.005), rel=1e-9)
    assert shares[0, 4] == pytest.approx(0.005 / (0.25 + 0.005), rel=1e-9)
    assert shares[1, 1] == pytest.approx(1.0) and shares[1].sum() == pytest.approx(1.0)


def test_frequency_ablation_on_planted_logits():
    p = 13
    task = make_task("a+b", p)
    s = task.inputs.sum(1).double()
    c = torch.arange(p).double()
    L = 3 * torch.cos(2 * np.pi * 2 * (s[:, None] - c) / p) \
        + 2 * torch.cos(2 * np.pi * 5 * (s[:, None] - c) / p)
    curve = frequency_ablation(L, task.labels, [2, 5], basis_for(p))
    assert [r["removed"] for r in curve] == [[], [2], [2, 5]]
    assert curve[0]["accuracy"] == 1.0 and curve[1]["accuracy"] == 1.0  # 5 alone suffices
    assert curve[2]["loss"] == pytest.approx(np.log(p))  # flat logits: chance
    assert curve[2]["accuracy"] < 0.3


def numpy_remove(L: np.ndarray, ks) -> np.ndarray:
    """Zero frequencies ks of each logit vector along the answer axis with numpy's FFT."""
    F = np.fft.rfft(L, axis=1)
    F[:, list(ks)] = 0
    return np.fft.irfft(F, n=L.shape[1], axis=1)


def planted_mlp(p=23, keys=(2, 5, 7), per_key=33, rare=3, amp=6.0, rare_amp=5.0):
    """An x^2 MLP on (a + b) mod p built by hand: ``per_key`` neurons per key frequency
    (random phases; output weights fitted so each group adds amp cos(w_k (a + b - c))), plus
    ONE neuron (1% of 100) on frequency ``rare`` with large input weights (so the embedding
    rule counts it) and a tiny output."""
    rng = np.random.default_rng(0)
    task = make_task("a+b", p)
    a, b = task.inputs[:, 0].numpy(), task.inputs[:, 1].numpy()
    x = np.arange(p)
    width = per_key * len(keys) + 1
    W_in, W_out = np.zeros((2, p, width)), np.zeros((width, p))
    for g, k in enumerate(keys):
        w, cols = 2 * np.pi * k / p, slice(g * per_key, (g + 1) * per_key)
        phase = rng.uniform(0, 2 * np.pi, (2, 1, per_key))
        W_in[:, :, cols] = np.cos(w * x[None, :, None] + phase)
        hidden = (W_in[0][a][:, cols] + W_in[1][b][:, cols]) ** 2
        target = amp * np.cos(w * ((a + b)[:, None] - x[None]))
        W_out[cols] = np.linalg.lstsq(hidden, target, rcond=None)[0]
    w = 2 * np.pi * rare / p
    W_in[:, :, -1] = rare_amp * np.cos(w * x[None] + np.array([[0.0], [1.0]]))
    W_out[-1] = 5e-4 * np.cos(w * x)
    state = {"W_in": torch.tensor(W_in)[None], "W_out": torch.tensor(W_out)[None]}
    return build_model(ModelConfig(kind="mlp", p=p, width=width), [0], state), task


def numpy_restricted(L, s, p, ks):
    """Least-squares projection of each logit column on 1, cos/sin(w_k s) for k in ks."""
    cols = [np.ones_like(s, dtype=float)]
    for k in ks:
        cols += [np.cos(2 * np.pi * k * s / p), np.sin(2 * np.pi * k * s / p)]
    X = np.stack(cols, axis=1)
    return X @ np.linalg.lstsq(X, L, rcond=None)[0]


def test_loss_rule_names_the_planted_frequencies_and_drops_a_one_percent_one():
    p = 23
    model, task = planted_mlp(p)
    tr, te = split_indices(len(task), 0.5, 0)
    a = analyze(model, task, tr, te)
    assert sorted(a["key_frequencies"]) == [2, 5, 7] and a["key_source"] == "loss"
    assert sorted(a["key_frequencies_embed"]) == [2, 3, 5, 7]  # the trap the loss rule avoids
    assert sorted(a["key_frequencies_neurons"]) == [2, 5, 7]
    table = {row["k"]: row for row in a["key_frequency_table"]}
    assert table[3]["neuron_share"] == pytest.approx(0.01)
    assert [table[k]["neuron_share"] for k in (2, 5, 7)] == pytest.approx([0.33] * 3)
    assert table[3]["embed_share"] > 1.5 / (p // 2) and table[3]["selected_rank"] is None
    # independent: losses of the planted logits, with numpy least squares and cross-entropy
    L = model(task.inputs)[0].detach().double().numpy()
    y, s = task.labels.numpy(), task.inputs.sum(1).numpy()
    for k in (2, 3, 5, 7):
        removed = L - (numpy_restricted(L, s, p, [k]) - L.mean(0))
        assert table[k]["loss_without"] == pytest.approx(ce_numpy(removed, y), rel=1e-9)
    sel = a["key_selection"]
    reference = ce_numpy(numpy_restricted(L, s, p, range(1, p // 2 + 1)), y)
    assert sel["reference_loss"] == pytest.approx(reference, rel=1e-9)
    assert sel["bound"] == pytest.approx(2 * reference + 1e-9)
    assert ce_numpy(numpy_restricted(L, s, p, [2, 5, 7]), y) <= sel["bound"]
    for pair in ([2, 5], [2, 7], [5, 7], [2, 5, 3], [5, 7, 3]):  # smaller sets fail
        assert ce_numpy(numpy_restricted(L, s, p, pair), y) > sel["bound"]


@pytest.fixture(scope="module")
def grokked():
    mc = ModelConfig(p=P, d_model=64, n_heads=4, d_head=16, d_mlp=128)
    tc = GrokConfig(p=P, train_frac=0.7, lr=3e-3, epochs=2500, log_every=50,
                     measure_every=500, checkpoint_every=0, stop_accuracy=1.0)
    return train(mc, tc, [0], progress=False)


def test_transformer_groks_and_analysis_finds_its_frequencies(grokked):
    r = grokked
    rows = phase_epochs(r.history)
    assert rows["memorized_epoch"] < rows["grokked_epoch"]  # memorize first, generalize later
    a = analyze(r.model, r.task, r.train_idx[0], r.test_idx[0])
    assert a["test_accuracy"] >= 0.99 and a["train_accuracy"] == 1.0
    ks = a["key_frequencies"]
    assert a["key_source"] == "loss" and 1 <= len(ks) <= 6
    # independent: the embedding rule's set is the embedding's largest rFFT norms
    E = r.model.W_E[0, :P].detach().double().numpy()
    norms = np.linalg.norm(np.fft.rfft(E, axis=0), axis=1)[1:]
    ke = a["key_frequencies_embed"]
    assert set(np.argsort(-norms)[: len(ke)] + 1) == set(ke)
    # the loss rule: every key frequency carries neurons and matters on its own; the
    # others do not (removing one changes the loss 10x less than removing any key)
    table = {row["k"]: row for row in a["key_frequency_table"]}
    assert all(table[k]["neuron_share"] >= 0.1 and table[k]["selected_rank"] for k in ks)
    assert min(table[k]["loss_increase_without"] for k in ks) > 10 * max(
        abs(table[k]["loss_increase_without"]) for k in table if k not in ks)
    sel = a["key_selection"]
    assert sel["path"][-1]["restricted_loss"] <= sel["bound"] < sel["path"][-2]["restricted_loss"]
    assert a["restricted_loss"] == pytest.approx(sel["path"][-1]["restricted_loss"], rel=1e-9)
    assert sel["reference_loss"] <= sel["full_loss"]
    # independent: removing the key frequencies kills accuracy, removing the rest does not
    L = r.model(r.task.inputs)[0].detach().double().numpy()
    y = r.task.labels.numpy()
    others = [k for k in range(1, P // 2 + 1) if k not in ks]
    assert (numpy_remove(L, ks).argmax(1) == y).mean() < 0.3
    assert (numpy_remove(L, others).argmax(1) == y).mean() >= 0.99
    assert a["ablation_curve"][-1]["accuracy"] == pytest.approx(
        (numpy_remove(L, ks).argmax(1) == y).mean(), abs=1e-9)
    assert a["control_ablation"]["accuracy"] >= 0.95
    # progress measures of a grokked model (Nanda et al.)
    assert a["restricted_loss"] < 0.1 < 2.0 < a["excluded_loss"]
    assert a["gini_embed"] > r.history[0]["gini_embed"] + 0.1  # sparser than at init
    assert a["fraction_neurons_explained"] > 0.2
    assert set(a["neuron_frequency_histogram"]) <= set(ks) | {0} | set(others)
    top = max(a["neuron_frequency_histogram"], key=a["neuron_frequency_histogram"].get)
    assert top in ks


def test_x_power_mlp_groks_with_neurons_aligned_to_single_frequencies():
    mc = ModelConfig(kind="mlp", p=P, width=128)
    tc = GrokConfig(p=P, train_frac=0.7, lr=3e-3, epochs=1500, log_every=50,
                     measure_every=0, checkpoint_every=0, stop_accuracy=1.0)
    r = train(mc, tc, [0], progress=False)
    a = analyze(r.model, r.task, r.train_idx[0], r.test_idx[0])
    assert a["test_accuracy"] >= 0.99
    # Li et al.: each neuron's input weights concentrate on one frequency, and the
    # frequencies are spread over the whole spectrum rather than a few key ones
    assert a["max_normalized_power_input_mean"] > 0.5
    assert len([k for k in a["neuron_frequency_histogram"] if k > 0]) >= P // 2 - 2
    assert a["neuron_frequency_source"] == "input_weights"


@pytest.mark.parametrize("cfg", [dict(kind="rnn", width=16),
                                 dict(kind="transformer", quant="ternary", d_model=16,
                                      n_heads=2, d_head=8, d_mlp=16)])
def test_every_kind_is_analysed(cfg):
    p = 11
    model = build_model(ModelConfig(p=p, **cfg), [0, 1])
    task = make_task("a+b", p)
    tr, te = split_indices(len(task), 0.5, 0)
    a = analyze(model, task, tr, te, seed_index=1)
    assert a["seed"] == 1 and len(a["embed_spectrum"]) == p // 2
    logits = model(task.inputs)[1].detach()
    acc = (logits[te].argmax(1) == task.labels[te]).double().mean().item()
    assert a["test_accuracy"] == pytest.approx(acc)
    assert 0 <= a["fraction_neurons_explained"] <= 1
    assert sum(a["neuron_frequency_histogram"].values()) == a["max_normalized_power"].size
