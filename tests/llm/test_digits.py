"""Digit lens and digit filters: spectra against numpy, the ablation table on whole answers,
the hidden ablation's digit logit filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_fourier.analyses.ablation import ablation_table, filter_edits
from llm_fourier.analyses.answers import evaluate_answers
from llm_fourier.analyses.digits import run_digit_lens
from llm_fourier.analyses.hidden_ablation import probe_ablation
from llm_fourier.errors import UserError
from llm_fourier.model.hooks import capture
from llm_fourier.model.number_format import number_format
from llm_fourier.model.readout import digit_readout, readout_for
from llm_fourier.model.tasks import make_task
from probes import FourierBasis, coefficients, remove_components
from probes.linear import fit_helix
from tests.llm.families import family_lm


@pytest.fixture(scope="module")
def setup():
    lm = family_lm("digits")
    task = make_task("+", 60, seed=2)
    fmt = number_format(lm.tokenizer, task.max_answer)
    return lm, task.test[:14], fmt


def _digit_rows(lm) -> np.ndarray:
    vocab = lm.tokenizer.get_vocab()
    ids = torch.tensor([vocab[str(d)] for d in range(10)])
    return lm.unembedding()[ids].double().numpy()


def _manual_lens(lm, examples, fmt, role: str):
    """Per answer digit: (place, digit, digit logits L x 10), from full forwards without
    a cache (every position captured, the answer positions picked by hand)."""
    W = _digit_rows(lm)
    out = []
    for e in examples:
        ids = lm.tokenizer(e.prompt)["input_ids"]
        answer = list(fmt.encode(e.answer))
        with torch.no_grad(), capture(lm, [role], positions="all") as cap:
            lm.model(input_ids=torch.tensor([ids + answer[:-1]]))
        x = cap.stack(role)[0].double().numpy()  # T x L x D
        text = str(e.answer)
        for j, ch in enumerate(text):
            out.append((len(text) - 1 - j, int(ch), x[len(ids) - 1 + j] @ W.T))
    return out


def test_digit_lens_matches_numpy_fft(setup):
    lm, examples, fmt = setup
    lens = run_digit_lens(lm, examples, fmt, roles=["mlp", "block"], batch_size=5,
                          progress=False)
    assert lens.readout.kind == "digit" and lens.readout.basis().kind == "dft"
    for role in ("mlp", "block"):
        rows = _manual_lens(lm, examples, fmt, role)
        for place in (None, 0, 1):
            sel = [r for r in rows if place is None or r[0] == place]
            logits = np.stack([r[2] for r in sel])  # n x L x 10
            fft = np.abs(np.fft.fft(logits, axis=-1))
            # orthonormal real DFT over 10 points: |X_k| sqrt(2/10) for k = 1..4, and the
            # constant and the Nyquist cosine (period 2) |X_k| / sqrt(10)
            want = np.concatenate([fft[..., :1] / np.sqrt(10), fft[..., 1:5] * np.sqrt(0.2),
                                   fft[..., 5:6] / np.sqrt(10)], axis=-1).mean(0)  # L x 6
            acc = lens.pooled[role] if place is None else lens.by_place[role][place]
            assert acc.n == len(sel)
            for layer, spec in enumerate(acc.spectra()):
                np.testing.assert_allclose(spec.magnitude, want[layer], rtol=1e-5, atol=1e-9)
            hits = (logits.argmax(-1) == np.array([r[1] for r in sel])[:, None]).mean(0)
            assert [a["exact"] for a in acc.accuracy()] == pytest.approx(hits.tolist())
    assert list(acc.spectra()[0].basis.periods) == pytest.approx([10, 5, 10 / 3, 2.5, 2])
    # why not the paper's basis: over ten points its periods are 9/k, not digit periods
    assert list(FourierBasis(10, "paper").periods) == pytest.approx([9, 4.5, 3, 2.25])
    assert lens.readout.basis("paper").kind == "dft"
    summary = lens.summary(tau=3)["mlp"]
    assert len(summary["places"]) == 3 and summary["all"]["n"] == lens.pooled["mlp"].n
    assert set(summary["all"]["layers"][0]) >= {"period_10", "share_2", "low_fraction"}


def test_digit_lens_resumes_and_refuses_other_families(setup):
    lm, examples, fmt = setup
    store: dict = {}
    full = run_digit_lens(lm, examples, fmt, roles=["attn"], batch_size=4, progress=False,
                          store=store)
    del store["lens/1"]  # one batch lost: recomputed, the others read back
    resumed = run_digit_lens(lm, examples, fmt, roles=["attn"], batch_size=4,
                             progress=False, store=store)
    assert "lens/1" in store
    torch.testing.assert_close(resumed.pooled["attn"].magnitude_sum,
                               full.pooled["attn"].magnitude_sum)
    assert resumed.by_place["attn"][1].n == full.by_place["attn"][1].n
    chunks = family_lm("chunks")
    with pytest.raises(UserError, match="one token per digit"):
        run_digit_lens(chunks, examples, number_format(chunks.tokenizer, 1400),
                       progress=False)
    with pytest.raises(UserError, match="chunks"):
        readout_for(chunks, number_format(chunks.tokenizer, 1400), 1400)


def test_digit_filters_remove_their_components(setup):
    lm, _, fmt = setup
    readout = digit_readout(lm, fmt)
    filters = readout.filters(tau=3)
    basis = FourierBasis(10, "dft")
    W = _digit_rows(lm)
    x = np.random.default_rng(0).standard_normal((6, lm.d_model))
    raw = np.abs(coefficients(x @ W.T, basis, axis=-1))
    for name, removed in (("low removed", [1, 2]), ("high removed", [3, 4, 5])):
        coef = np.abs(coefficients(filters[name](x) @ W.T, basis, axis=-1))
        rows = basis.rows_of(removed)
        assert coef[:, rows].max() < 1e-9 * raw[:, rows].max()
    assert readout.describe()["periods"] == pytest.approx([10, 5, 3.333333, 2.5, 2])
    with pytest.raises(UserError, match="tau must lie in 1..5"):
        readout.filters(tau=6)


def test_digit_ablation_table_scores_whole_answers(setup):
    lm, examples, fmt = setup
    table = ablation_table(lm, examples, fmt, keep=[1], progress=False, batch_size=5)
    assert [r["row"] for r in table] == [
        "none", "attn+MLP low removed", "attn low removed", "MLP low removed",
        "attn+MLP high removed", "attn high removed", "MLP high removed",
        "attn+MLP keep k=1", "attn keep k=1", "MLP keep k=1"]
    plain = evaluate_answers(lm, examples, fmt, progress=False)
    assert table[0]["predictions"] == plain["predictions"]
    assert table[0]["loss"] == pytest.approx(plain["loss"])
    # "MLP low removed" = the digit high-pass (k = 1, 2 removed, tau 3) on every MLP
    high_pass = remove_components(_digit_rows(lm), FourierBasis(10, "dft"), [1, 2])
    by_hand = evaluate_answers(lm, examples, fmt, filter_edits(high_pass, ["mlp"], [0, 1]),
                               progress=False)
    assert table[3]["predictions"] == by_hand["predictions"]
    assert table[3]["loss"] == pytest.approx(by_hand["loss"], rel=1e-5)
    assert table[3]["loss"] != pytest.approx(plain["loss"], rel=1e-4)
    assert {"digit_accuracy", "frac_errors_one_digit", "teacher_forced_accuracy"} <= \
        set(table[3])


def test_hidden_ablation_cross_checks_with_the_digit_readout(setup):
    lm, examples, fmt = setup
    rng = np.random.default_rng(0)
    n = rng.integers(0, 100, 200)
    states = np.cos(2 * np.pi * n[:, None] / 10 + rng.standard_normal(lm.d_model)) + \
        0.1 * rng.standard_normal((200, lm.d_model))
    fit = fit_helix(states, n, (10,), pca_dim=8)
    fits = {("mlp", 0): fit, ("mlp", 1): fit}
    rows = probe_ablation(lm, examples[:6], fits, [10], groups=("MLP",), numbers=fmt,
                          progress=False)
    assert [r["row"] for r in rows] == ["none", "MLP probe", "MLP random", "MLP logit"]
    logit = rows[-1]
    assert logit["filter"] == "logit T=10" and logit["rank"] == 2
    want = evaluate_answers(lm, examples[:6], fmt, filter_edits(
        digit_readout(lm, fmt).remove_periods([10]), ["mlp"], [0, 1]), positions="all",
        progress=False)
    assert logit["accuracy"] == want["accuracy"] and logit["loss"] == pytest.approx(want["loss"])
    assert all(r["method"] == "greedy generation" for r in rows)
