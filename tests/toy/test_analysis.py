"""Analysis: hand-built activations and logits, and models that grok inside the test."""

import numpy as np
import pytest
import torch

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
    assert 1 <= len(ks) <= 6
    # independent: the embedding's largest rFFT norms are the key frequencies
    E = r.model.W_E[0, :P].detach().double().numpy()
    norms = np.linalg.norm(np.fft.rfft(E, axis=0), axis=1)[1:]
    assert set(np.argsort(-norms)[: len(ks)] + 1) == set(ks)
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
