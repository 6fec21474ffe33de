"""Fourier neurons: planted frequency tables, projections per architecture, knockouts."""

import math

import numpy as np
import pytest
import torch
import transformers as T

from llm_fourier.analyses.fourier_neurons import (
    check_projections,
    has_post_norm,
    knockout,
    knockout_rows,
    knockout_table,
    neuron_directions,
    neuron_spectra,
    output_projection,
    top_neurons,
)
from llm_fourier.errors import UserError
from llm_fourier.model.hooks import capture
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import find_number_tokens, number_rows
from llm_fourier.model.tasks import TEMPLATES, Example
from llm_fourier.output.neuron_plots import knockout_plot, neuron_period_heatmap
from probes import FourierBasis
from tests.tiny import CAUSAL_ARCHS, tiny_lm

P = 200  # numbers 0..199, the exact DFT basis: period 200 / k
A_NEURONS, B_NEURONS, MIXED = (10, 11, 12, 13), (40, 41, 42, 43), (70, 71)


def _planted_gpt2():
    """A tiny GPT-2 whose number readout and layer-1 neurons write chosen Fourier rows.

    Every weight is zero except the LayerNorm gains (1), the number rows of the tied
    embedding (W_U[numbers]: channel j is the pair of coordinates 2j, 2j + 1 holding
    +/- basis row j / sqrt 2, so LayerNorm's centring leaves number logits alone) and
    layer 1's MLP: neuron directions (c_proj rows) u_j = (e_2j - e_2j+1) / sqrt 2 combine
    channels, and a c_fc bias of 3 switches neurons A (period 200, peak at 50) and B
    (period 10, peaks at 7, 17, ..., twice as strong) on for every prompt: together they
    peak at 47, A alone at 50. At the last token (":", embedding 0) the residual is the sum
    of those neurons' outputs.
    """
    model, tok = tiny_lm("gpt2")
    numbers = find_number_tokens(tok, P - 1)
    basis = FourierBasis(P, "dft")
    rows = {"cos1": basis.cos_rows[0], "sin1": basis.sin_rows[0], "cos20": basis.cos_rows[19],
            "sin20": basis.sin_rows[19], "cos40": basis.cos_rows[39], "sin52": basis.sin_rows[51]}
    channel = {name: j for j, name in enumerate(rows)}
    W = np.zeros((P, 32))
    for name, j in channel.items():
        W[:, 2 * j] = basis.matrix[rows[name]] / math.sqrt(2)
        W[:, 2 * j + 1] = -basis.matrix[rows[name]] / math.sqrt(2)

    def u(name):
        v = np.zeros(32)
        v[2 * channel[name]], v[2 * channel[name] + 1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
        return v

    w1, w20 = 2 * math.pi / 200, 2 * math.pi * 20 / 200
    dirs = np.zeros((128, 32))
    for i in A_NEURONS:
        dirs[i] = 0.25 * (math.cos(50 * w1) * u("cos1") + math.sin(50 * w1) * u("sin1"))
    for i in B_NEURONS:
        dirs[i] = 0.5 * (math.cos(7 * w20) * u("cos20") + math.sin(7 * w20) * u("sin20"))
    dirs[70] = 0.8 * u("cos40") + 0.6 * u("sin52")
    dirs[71] = 0.6 * u("cos40") + 0.8 * u("sin52")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(1.0)
        model.transformer.wte.weight[torch.as_tensor(numbers.token_ids)] = torch.tensor(
            W, dtype=torch.float32)
        mlp = model.transformer.h[1].mlp
        mlp.c_proj.weight.copy_(torch.tensor(dirs, dtype=torch.float32))
        mlp.c_fc.bias[list(A_NEURONS + B_NEURONS)] = 3.0
    return load_model(model, tok), numbers, W, dirs


@pytest.fixture(scope="module")
def planted():
    return _planted_gpt2()


def _expected_prediction(W, dirs, knocked=()):
    """The planted model's answer from its weights, in numpy (LayerNorm only rescales)."""
    active = [i for i in A_NEURONS + B_NEURONS if i not in set(knocked)]
    if not active:
        return -1
    return int(np.argmax(W @ dirs[active].sum(0)))


def test_planted_frequency_table_is_recovered(planted):
    lm, numbers, _, _ = planted
    spec = neuron_spectra(lm, numbers, layers=[1], basis_kind="dft", periods=[10])
    got = {r["neuron"]: r for r in spec.table()}
    assert set(got) == set(A_NEURONS + B_NEURONS + MIXED)  # the zero neurons have no share
    for i in A_NEURONS:
        assert got[i]["k"] == 1 and got[i]["period"] == pytest.approx(200)
        assert got[i]["share"] == pytest.approx(1, abs=1e-6)
    for i in B_NEURONS:
        assert got[i]["k"] == 20 and got[i]["period"] == pytest.approx(10)
        assert got[i]["share"] == pytest.approx(1, abs=1e-6)
    assert got[70]["k"] == 40 and got[70]["share"] == pytest.approx(0.64, abs=1e-6)
    assert got[71]["k"] == 52 and got[71]["share"] == pytest.approx(0.64, abs=1e-6)
    assert got[71]["period"] == pytest.approx(200 / 52)
    assert got[10]["logit_norm"] == pytest.approx(0.25) and got[40]["logit_norm"] == \
        pytest.approx(0.5)
    assert all(r["constant_share"] == pytest.approx(0, abs=1e-9) for r in got.values())
    zero = [i for i in range(128) if i not in got]
    assert np.all(spec.logit_norm[0, zero] == 0) and np.all(spec.top_k[0, zero] == 0)
    counts = spec.counts(min_share=0.5)
    assert counts[0, 0] == 4 and counts[19, 0] == 4 and counts[39, 0] == 1 \
        and counts[51, 0] == 1 and counts.sum() == 10
    assert spec.counts(min_share=0.7).sum() == 8
    top = spec.summary(min_share=0.5)[0]["top_periods"]
    assert [(t["k"], t["n"]) for t in top[:2]] == [(1, 4), (20, 4)]
    assert top_neurons(spec, 10, 4) == {1: list(B_NEURONS)}


def test_spectrum_matches_numpy_fft_on_a_random_model(tiny_dir):
    lm = load_model(tiny_dir("gpt2"))
    numbers = find_number_tokens(lm.tokenizer, 200)  # p = 201 is odd: no Nyquist term
    spec = neuron_spectra(lm, numbers, layers=[0], basis_kind="dft")
    W = number_rows(lm.unembedding(), numbers).double().numpy()
    v = W @ lm.model.transformer.h[0].mlp.c_proj.weight.detach().double().numpy().T  # p x 128
    energy = np.abs(np.fft.rfft(v, axis=0)) ** 2 * 2 / 201
    energy[0] /= 2
    top = energy[1:].argmax(0) + 1
    np.testing.assert_array_equal(spec.top_k[0], top)
    share = energy[top, np.arange(v.shape[1])] / energy[1:].sum(0)
    np.testing.assert_allclose(spec.share[0], share, rtol=1e-6)
    np.testing.assert_allclose(spec.constant_share[0], energy[0] / energy.sum(0), rtol=1e-6)
    np.testing.assert_allclose(spec.logit_norm[0], np.linalg.norm(v, axis=0), rtol=1e-6)


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_projection_and_directions_per_architecture(arch):
    model, tok = tiny_lm(arch)
    lm = load_model(model, tok)
    check_projections(lm, [0, 1])
    proj = output_projection(lm, 1)
    dirs = neuron_directions(lm, 1)
    cfg = model.config
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) \
        or 4 * lm.d_model
    assert dirs.shape == (d_mlp, lm.d_model)
    # independent: the MLP output is sum_i a_i w_i (+ bias) with the projection's inputs a
    acts = {}
    handle = proj.register_forward_pre_hook(lambda m, args: acts.setdefault("a", args[0]))
    ids = tok("Add 3 and 4. Answer: ", return_tensors="pt")["input_ids"]
    try:
        with torch.no_grad(), capture(lm, roles=("mlp",), layers=[1], positions="all") as cap:
            model(input_ids=ids)
    finally:
        handle.remove()
    bias = proj.bias.detach() if getattr(proj, "bias", None) is not None else 0.0
    torch.testing.assert_close(acts["a"][0] @ dirs + bias, cap.get("mlp", 1)[0],
                               atol=1e-5, rtol=1e-4)
    assert not has_post_norm(lm)


def test_post_norm_and_non_projection_mlps_are_refused(number_tokenizer):
    tok = number_tokenizer
    cfg = T.Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, pad_token_id=0, bos_token_id=3, eos_token_id=1)
    torch.manual_seed(0)
    lm = load_model(T.AutoModelForCausalLM.from_config(cfg).eval(), tok)
    numbers = find_number_tokens(tok, 200)
    assert has_post_norm(lm)
    with pytest.raises(UserError, match="post-norm"):
        neuron_spectra(lm, numbers)
    assert neuron_spectra(lm, numbers, allow_post_norm=True).post_norm
    gpt = load_model(*tiny_lm("gpt2"))
    handle = gpt.module(1, "mlp").register_forward_hook(lambda m, a, out: 2 * out)
    try:
        with pytest.raises(UserError, match="layer 1's MLP output is not"):
            neuron_spectra(gpt, numbers)
    finally:
        handle.remove()


def test_knockout_removes_exactly_the_chosen_neurons(tiny_dir):
    lm = load_model(tiny_dir("gpt2"))
    proj = output_projection(lm, 0)
    dirs = neuron_directions(lm, 0)
    chosen = [3, 17, 99]
    acts = {}
    handle = proj.register_forward_pre_hook(lambda m, args: acts.setdefault("a", args[0]))
    ids = lm.tokenizer("Add 3 and 4. Answer: ", return_tensors="pt")["input_ids"]
    try:
        with torch.no_grad(), capture(lm, roles=("mlp",), layers=[0], positions="all") as cap:
            lm.model(input_ids=ids)
            with knockout(lm, {0: chosen}):
                lm.model(input_ids=ids)
    finally:
        handle.remove()
    clean, knocked = cap.get("mlp", 0)
    torch.testing.assert_close(clean - knocked, acts["a"][0][:, chosen] @ dirs[chosen],
                               atol=1e-6, rtol=1e-5)
    assert not proj._forward_pre_hooks  # removed on exit


def test_knockout_of_the_planted_period_vs_random_draws(planted, tmp_path):
    lm, numbers, W, dirs = planted
    assert _expected_prediction(W, dirs) == 47
    assert _expected_prediction(W, dirs, B_NEURONS) == 50
    examples = [Example(a, 47 - a, 47, t.format(a=a, b=47 - a) + " Answer: ")
                for a in range(0, 24, 6) for t in TEMPLATES]
    result = knockout_table(lm, examples, numbers, periods=[10, 200], n_neurons=4,
                            layers=[1], n_random=6, seed=1, basis_kind="dft", progress=False)
    assert result["baseline"]["accuracy"] == 1.0
    by_period = {p["period"]: p for p in result["periods"]}
    assert by_period[10]["top"]["neurons"] == {1: list(B_NEURONS)}
    assert by_period[10]["top"]["accuracy"] == 0.0
    assert by_period[200]["top"]["neurons"] == {1: list(A_NEURONS)}
    # (without A, B's peaks at 7, 17, ..., 197 tie: that accuracy is not asserted)
    for p in result["periods"]:
        draws = p["random"]["draws"]
        assert len(draws) == 6 and len({tuple(d["neurons"][1]) for d in draws}) > 1
        expected = [float(_expected_prediction(W, dirs, d["neurons"][1]) == 47) for d in draws]
        assert [d["accuracy"] for d in draws] == expected
        assert p["random"]["accuracy_mean"] == pytest.approx(np.mean(expected))
        assert p["random"]["accuracy_std"] == pytest.approx(np.std(expected))
    rows = knockout_rows(result)
    assert [r["period"] for r in rows] == [10.0, 200.0] and rows[0]["accuracy_top"] == 0.0
    assert knockout_plot(result, tmp_path / "knockout.png").stat().st_size > 0
    spec = neuron_spectra(lm, numbers, layers=[0, 1], basis_kind="dft")
    assert neuron_period_heatmap(spec, tmp_path / "neurons.png").stat().st_size > 0
    with pytest.raises(UserError, match="k must lie"):
        knockout_table(lm, examples, numbers, periods=[10], n_neurons=10_000, layers=[1],
                       progress=False)
