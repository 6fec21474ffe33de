"""Logit lens onto number tokens: readout, accuracy per layer, spectra, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_fourier.analyses.lens import layer_summary, number_readout, run_lens
from llm_fourier.errors import UserError
from llm_fourier.model.hooks import capture
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import find_number_tokens
from llm_fourier.model.tasks import make_task, tokenize_prompts
from probes import FourierBasis, Spectrum
from tests.tiny import tiny_lm


@pytest.fixture(scope="module")
def setup():
    lm = load_model(*tiny_lm("llama"))
    task = make_task("+", 15, seed=1)
    numbers = find_number_tokens(lm.tokenizer, 30)
    assert numbers.p == 31
    return lm, task.test + task.val, numbers


def _manual(lm, examples, numbers, role: str, final_norm: bool):
    """Number logits N x L x p, by an independent path: plain hooks on Llama's own modules
    keep every position, and the last column is the last real token (left padding)."""
    enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in examples])
    assert enc["attention_mask"][:, -1].all()  # left padded
    outs = []
    layers = lm.model.model.layers
    modules = [layer if role == "block" else getattr(layer, {"attn": "self_attn",
                                                             "mlp": "mlp"}[role])
               for layer in layers]
    handles = [m.register_forward_hook(
        lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o)[:, -1].detach()))
        for m in modules]
    try:
        with torch.no_grad():
            lm.model(**enc)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        x = torch.stack(outs, dim=1)
        x = (lm.model.model.norm(x) if final_norm else x).double()
        W = lm.unembedding().double()[torch.as_tensor(numbers.token_ids)]
        return (x @ W.T).numpy()


def test_readout_with_final_norm_at_the_last_layer_is_the_models_own_logits(setup):
    lm, examples, numbers = setup
    enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in examples[:5]])
    with torch.no_grad(), capture(lm, roles=["block"], layers=[lm.n_layers - 1]) as cap:
        logits = lm.model(**enc).logits[:, -1]  # left padding: the last column
    lens = number_readout(lm, numbers, final_norm=True).logits(cap.stack("block")[:, 0])
    torch.testing.assert_close(lens, logits[:, torch.as_tensor(numbers.token_ids)])
    plain = number_readout(lm, numbers).logits(cap.stack("block")[:, 0])
    W = lm.unembedding()[torch.as_tensor(numbers.token_ids)]
    torch.testing.assert_close(plain, cap.stack("block")[:, 0] @ W.T)


@pytest.mark.parametrize("final_norm", [False, True])
def test_accuracy_and_spectra_match_a_manual_computation(setup, final_norm):
    lm, examples, numbers = setup
    accs = run_lens(lm, examples, numbers, roles=["block", "mlp"], final_norm=final_norm,
                    basis_kind="dft", batch_size=8, progress=False)
    answers = np.array([e.answer for e in examples])
    for role in ("block", "mlp"):
        logits = _manual(lm, examples, numbers, role, final_norm)  # N x L x p
        err = np.abs(logits.argmax(-1) - answers[:, None])
        got = accs[role].accuracy()
        for layer in range(lm.n_layers):
            assert got[layer]["exact"] == pytest.approx((err[:, layer] == 0).mean())
            assert got[layer]["within_2"] == pytest.approx((err[:, layer] <= 2).mean())
            assert got[layer]["within_10"] == pytest.approx((err[:, layer] <= 10).mean())
        # orthonormal real DFT magnitude of component k (0 < k < p/2) is sqrt(2/p) |FFT_k|
        fft = np.abs(np.fft.fft(logits, axis=-1))[..., : numbers.p // 2 + 1]
        want = np.sqrt(2 / numbers.p) * fft[..., 1:].mean(0)  # L x K, mean over examples
        for layer, spec in enumerate(accs[role].spectra()):
            np.testing.assert_allclose(spec.nonconstant, want[layer], rtol=1e-6, atol=1e-9)
            assert spec.magnitude[0] == pytest.approx(
                np.abs(logits[:, layer].sum(-1)).mean() / np.sqrt(numbers.p), rel=1e-6)


def test_resume_from_state_gives_the_same_result(setup):
    lm, examples, numbers = setup
    store: dict = {}
    full = run_lens(lm, examples, numbers, roles=["attn"], batch_size=8, progress=False,
                    store=store)
    kept = {k: v for k, v in store.items() if k != "lens/1"}  # batch 1 lost
    ran = []

    class Recording(dict):
        def __setitem__(self, key, value):
            ran.append(key)
            super().__setitem__(key, value)

    resumed = run_lens(lm, examples, numbers, roles=["attn"], batch_size=8, progress=False,
                       store=Recording(kept))
    assert ran == ["lens/1"]  # only the lost batch ran again
    assert resumed["attn"].accuracy() == full["attn"].accuracy()
    torch.testing.assert_close(resumed["attn"].magnitude_sum, full["attn"].magnitude_sum)


def test_layer_summary_names_the_largest_peaks_at_or_above_tau():
    """The paper annotates the largest components at or above tau: a planted k = 40
    (period 2.5) comes first, a larger k = 10 below tau and the k = 1 trend never appear."""
    basis = FourierBasis(101)
    rng = np.random.default_rng(0)
    mag = np.concatenate([[5.0], 1 + 0.05 * rng.standard_normal(basis.n_components)])
    mag[1], mag[10], mag[40] = 50.0, 8.0, 6.0
    flat = Spectrum(basis, np.concatenate([[5.0], np.ones(basis.n_components)]))
    summary = layer_summary([Spectrum(basis, mag), flat], tau=20, top=3)
    assert [o["period"] for o in summary[0]["outliers"]][0] == 2.5
    assert {o["k"] for o in summary[0]["outliers"]} & {1, 10} == set()
    assert all(o["k"] >= 20 for o in summary[0]["outliers"])
    assert layer_summary([Spectrum(basis, mag)], tau=1)[0]["outliers"][0]["k"] == 10
    assert summary[1]["outliers"] == []  # a flat spectrum has no peak
    assert summary[1]["low_fraction"] == pytest.approx(19 / 50)


def test_no_examples_is_a_user_error(setup):
    lm, _, numbers = setup
    with pytest.raises(UserError, match="no examples to run the lens on"):
        run_lens(lm, [], numbers, progress=False)
