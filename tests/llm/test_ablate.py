"""Filter ablations: empty filter, constant logits, evaluation numbers, Table 1 layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T

from llm_fourier.analyses.ablation import (
    Scores,
    ablation_table,
    evaluate,
    filter_edits,
    number_filters,
    score_batch,
)
from llm_fourier.errors import UserError
from llm_fourier.model.hooks import capture, edit
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import NumberTokens, find_number_tokens
from llm_fourier.model.tasks import make_task, tokenize_prompts
from probes import FourierBasis, coefficients, remove_components
from probes.filters import identity_filter
from tests.tiny import tiny_lm, tiny_tokenizer


@pytest.fixture(scope="module")
def wide():
    """GPT-2 with d_model 64 > p = 31 numbers, so a filter can remove all 30 components."""
    tok = tiny_tokenizer(60)
    torch.manual_seed(0)
    cfg = T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=len(tok),
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    lm = load_model(T.GPT2LMHeadModel(cfg), tok)
    numbers = find_number_tokens(tok, 30)
    return lm, make_task("+", 15, seed=0).test, numbers


def _number_logits(lm, numbers, rows):
    W = lm.unembedding().double()[torch.as_tensor(numbers.token_ids)]
    return (rows.double() @ W.T).numpy()


def test_empty_filter_changes_nothing(wide):
    lm, examples, numbers = wide
    enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in examples])
    empty = identity_filter(lm.d_model)
    with torch.inference_mode():
        plain = lm.model(**enc).logits
        for positions in ("last", "all"):
            with edit(lm, filter_edits(empty, ["attn", "mlp"], range(lm.n_layers)), positions):
                assert torch.equal(lm.model(**enc).logits, plain)
    # a filter removing no component is empty too
    W = _number_logits(lm, numbers, torch.eye(lm.d_model)).T
    assert remove_components(W, FourierBasis(numbers.p, "dft"), []).rank == 0


@pytest.mark.parametrize("kind", ["dft", "paper"])
def test_removing_all_components_makes_the_modules_number_logits_constant(wide, kind):
    lm, examples, numbers = wide
    basis = FourierBasis(numbers.p, kind)
    W = lm.unembedding()[torch.as_tensor(numbers.token_ids)].double().numpy()
    filt = remove_components(W, basis, basis.ks)
    enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in examples])
    with torch.inference_mode():
        with capture(lm, roles=["mlp", "attn"]) as before:
            lm.model(**enc)
        # the edit hook runs first, so the capture sees the filtered output
        with edit(lm, filter_edits(filt, ["mlp"], [1])), \
                capture(lm, roles=["mlp", "attn"]) as after:
            lm.model(**enc)
    mlp = _number_logits(lm, numbers, after.stack("mlp")[:, 1])
    raw = _number_logits(lm, numbers, before.stack("mlp")[:, 1])
    coef, raw_coef = coefficients(mlp, basis), coefficients(raw, basis)
    assert np.abs(coef[:, 1:]).max() < 1e-5 * np.abs(raw_coef[:, 1:]).max()
    assert np.abs(raw_coef[:, 1:]).max() > 1e-3  # there was something to remove
    if kind == "dft":  # the DFT basis is complete: the logits are constant across numbers
        assert (mlp.std(-1) < 1e-5 * raw.std(-1)).all()
    # modules before the edit are untouched
    torch.testing.assert_close(after.stack("attn")[:, 1], before.stack("attn")[:, 1])


def test_scores_against_a_hand_computation():
    answers = np.array([10, 20, 30, 40, 50, 7])
    preds = np.array([10, 30, 29, -1, 52, 7])  # right, +10, -1, not a number, +2, right
    s = Scores(answers, preds, np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])).summary()
    assert s["accuracy"] == pytest.approx(2 / 6)
    assert s["loss"] == pytest.approx(1.75)
    assert s["n_errors"] == 4 and s["n_non_number"] == 1
    assert s["error_histogram"] == {-1: 1, 2: 1, 10: 1}
    assert s["frac_errors_mult_10"] == pytest.approx(1 / 3)
    assert s["max_abs_error"] == 10
    assert s["mod2_accuracy"] == pytest.approx(4 / 6)  # 10, 30(20), 52(50), 7
    assert s["mod10_accuracy"] == pytest.approx(3 / 6)  # 10, 30(20), 7


def test_score_batch_vocab_versus_numbers_prediction():
    numbers = NumberTokens(np.array([5, 3, 7, 2]))  # number n is token numbers.token_ids[n]
    logits = torch.full((2, 9), -5.0)
    logits[0, 7], logits[0, 8] = 2.0, 3.0  # row 0: a non-number token wins the vocabulary
    logits[1, 3] = 4.0  # row 1: token 3 = number 1
    pred, loss = score_batch(logits, torch.tensor([2, 1]), numbers, "vocab")
    assert pred.tolist() == [-1, 1]
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([7, 3]),
                                                     reduction="none"))
    assert score_batch(logits, torch.tensor([2, 1]), numbers, "numbers")[0].tolist() == [2, 1]
    with pytest.raises(UserError, match="prediction"):
        score_batch(logits, torch.tensor([2, 1]), numbers, "tokens")


def test_evaluate_matches_a_manual_forward():
    lm = load_model(*tiny_lm("gpt_neox"))
    examples = make_task("+", 15, seed=2).test
    numbers = find_number_tokens(lm.tokenizer, 30)
    got = evaluate(lm, examples, numbers, prediction="numbers", batch_size=4, progress=False)
    ids = torch.as_tensor(numbers.token_ids)
    preds, losses = [], []
    for e in examples:  # one prompt at a time: no padding at all
        enc = lm.tokenizer(e.prompt, return_tensors="pt")
        with torch.no_grad():
            last = lm.model(**enc).logits[0, -1]
        preds.append(int(last[ids].argmax()))
        losses.append(float(F.cross_entropy(last[None], ids[[e.answer]])))
    answers = np.array([e.answer for e in examples])
    assert got["predictions"] == preds
    assert got["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert got["accuracy"] == pytest.approx(np.mean(np.array(preds) == answers))
    errors = np.array(preds) - answers
    assert sum(got["error_histogram"].values()) == int((errors != 0).sum())


def test_ablation_table_layout_rows_and_resume(wide):
    lm, examples, numbers = wide
    table = ablation_table(lm, examples, numbers, tau=5, basis_kind="dft", keep=[3],
                           prediction="numbers", progress=False)
    labels = [r["row"] for r in table]
    assert labels[:7] == ["none", "attn+MLP low removed", "attn low removed", "MLP low removed",
                          "attn+MLP high removed", "attn high removed", "MLP high removed"]
    assert labels[7:] == ["attn+MLP keep k=3", "attn keep k=3", "MLP keep k=3"]
    assert table[0] == {"row": "none", "filter": "none", "modules": "-", "rank": 0,
                        "width": lm.d_model, "knockout": False,
                        **evaluate(lm, examples, numbers, prediction="numbers",
                                   progress=False)}
    # the "MLP low removed" row is the high-pass filter on every MLP, built independently
    W = lm.unembedding()[torch.as_tensor(numbers.token_ids)].double().numpy()
    high_pass = remove_components(W, FourierBasis(numbers.p, "dft"), range(1, 5))
    by_hand = evaluate(lm, examples, numbers, filter_edits(high_pass, ["mlp"], [0, 1]),
                       prediction="numbers", progress=False)
    mlp_low = table[3]
    assert mlp_low["predictions"] == by_hand["predictions"]
    assert mlp_low["loss"] == pytest.approx(by_hand["loss"], rel=1e-6)
    assert mlp_low["loss"] != table[0]["loss"]
    # finished (batch, row) units in the store are reused, the others computed and stored
    store: dict = {}
    first = ablation_table(lm, examples, numbers, tau=5, basis_kind="dft", batch_size=4,
                           prediction="numbers",
                           store=store, progress=False)
    n_batches = -(-len(examples) // 4)
    assert len(store) == 7 * n_batches and first[3]["predictions"] == table[3]["predictions"]
    store["none/0"] = {**store["none/0"], "loss": store["none/0"]["loss"] + 100}  # a fake
    del store["MLP low removed/2"]
    again = ablation_table(lm, examples, numbers, tau=5, basis_kind="dft", batch_size=4,
                           prediction="numbers",
                           store=store, progress=False)
    assert again[0]["loss"] > first[0]["loss"] + 10 and "MLP low removed/2" in store
    assert again[3] == first[3] and len(again) == 7


def test_filter_argument_errors(wide):
    lm, _, numbers = wide
    assert set(number_filters(lm, numbers, "dft", 5)) == {"low removed", "high removed"}
    with pytest.raises(UserError, match="tau"):
        number_filters(lm, numbers, "paper", 400)
    with pytest.raises(UserError, match="keep"):
        number_filters(lm, numbers, "paper", 5, keep=[99])
    with pytest.raises(UserError, match="examples"):
        evaluate(lm, [], numbers)


def test_filters_that_span_the_width_are_flagged_as_knockouts(tmp_path, capsys):
    """Width 32, numbers 0..60 (30 components), tau 4: "low removed" takes k = 1..3 (6 rows),
    "high removed" k = 4..30 (54 rows > 32), so it removes the whole output: a knockout,
    flagged in the table, warned about, and marked in the report view."""
    from llm_fourier.cli import main
    from llm_fourier.commands.ablate import COMMAND
    from llm_fourier.commands.base import JobView
    from llm_fourier.output.files import read_json
    from tests.tiny import tiny_model_dir

    model = tiny_model_dir(tmp_path, "gpt2")
    out = tmp_path / "ablate"
    assert main(["ablate", "--model", str(model), "--max-operand", "30", "--tau", "4",
                 "--limit", "8", "--out", str(out)]) == 0
    res = read_json(out / "results.json")
    ranks = {r["row"]: (r["rank"], r["knockout"]) for r in res["table"]}
    assert ranks["none"] == (0, False)
    assert ranks["MLP low removed"] == (6, False)
    assert ranks["MLP high removed"] == (32, True)
    assert "attn+MLP high removed" in res["warning"] and "knockouts" in res["warning"]
    assert "warning:" in capsys.readouterr().out
    html = COMMAND.job_html(JobView("ablate", out, {}, res))
    assert "MLP high removed (knockout)" in html and "MLP low removed (knockout)" not in html
