"""Whole answers of several tokens: greedy decoding and teacher-forced scoring against plain
loops of ``generate`` and full forwards, for the three tokenizer families."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm_fourier.analyses.ablation import ablation_table, evaluate, evaluate_task
from llm_fourier.analyses.answers import (
    evaluate_answers,
    greedy_answers,
    max_answer_tokens,
    teacher_forced,
)
from llm_fourier.errors import UserError
from llm_fourier.model.hooks import edit
from llm_fourier.model.number_format import number_format
from llm_fourier.model.numbers import NumberTokens
from llm_fourier.model.tasks import make_task
from tests.llm.families import family_lm, generate_answer, random_filter

# operands whose answers take several tokens: up to 3 digits, up to 2 chunks, one token
OPERANDS = {"digits": 60, "chunks": 700, "single": 90}


@pytest.fixture(scope="module", params=["digits", "chunks", "single"])
def setup(request):
    family = request.param
    lm = family_lm(family)
    task = make_task("+", OPERANDS[family], seed=0)
    examples = task.test[:12]
    fmt = number_format(lm.tokenizer, task.max_answer)
    assert fmt.family == family
    return lm, examples, fmt


@pytest.mark.parametrize("positions", [None, "last", "all"])
def test_greedy_decoding_matches_a_loop_of_generate(setup, positions):
    lm, examples, fmt = setup
    edits = None if positions is None else {("mlp", 1): random_filter(lm)}
    got = greedy_answers(lm, fmt, examples, edits, positions=positions or "answer",
                         batch_size=5, progress=False)
    cap = max_answer_tokens(fmt, examples)
    with edit(lm, edits or {}, positions=positions or "last"):  # generate's own KV steps
        want = [generate_answer(lm, fmt, e, cap) for e in examples]
    assert got.tolist() == want
    lengths = {len(str(p)) for p in want if p >= 0}
    assert len(lengths) > 1 or positions  # the plain model writes numbers of several lengths
    if positions is None:
        again = greedy_answers(lm, fmt, examples, batch_size=1, progress=False)
        assert again.tolist() == got.tolist()  # independent of the batching


def _logp_full_forward(lm, fmt, example, edit_fn=None, layer=1) -> float:
    """log p(answer) from one forward over prompt + answer, no cache, no padding;
    ``edit_fn`` is applied to the MLP output of ``layer`` at the answer positions only."""
    ids = lm.tokenizer(example.prompt)["input_ids"]
    answer = list(fmt.encode(example.answer))
    full = torch.tensor([ids + answer])
    P, m = len(ids), len(answer)
    handle = None
    if edit_fn is not None:
        def hook(module, args, out):
            x = out[0] if isinstance(out, tuple) else out
            x = x.clone()
            x[:, P - 1:P - 1 + m] = edit_fn(x[:, P - 1:P - 1 + m])
            return (x, *out[1:]) if isinstance(out, tuple) else x
        handle = lm.module(layer, "mlp").register_forward_hook(hook)
    try:
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(input_ids=full).logits[0].double(), -1)
    finally:
        if handle is not None:
            handle.remove()
    return float(sum(lp[P - 1 + j, answer[j]] for j in range(m)))


def test_teacher_forced_log_probability_matches_full_forwards(setup):
    lm, examples, fmt = setup
    filt = random_filter(lm, seed=1)
    logp, _ = teacher_forced(lm, fmt, examples, batch_size=5)
    edited, _ = teacher_forced(lm, fmt, examples, edits={("mlp", 1): filt},
                               positions="answer", batch_size=5)
    for i, e in enumerate(examples):
        assert logp[i] == pytest.approx(_logp_full_forward(lm, fmt, e), abs=1e-4)
        # the edit at the answer positions is the full forward's edit at exactly those
        assert edited[i] == pytest.approx(_logp_full_forward(lm, fmt, e, filt), abs=1e-4)
    assert np.abs(edited - logp).max() > 1e-3  # the filter did change something


def test_evaluate_answers_scores_the_plain_loops(setup):
    lm, examples, fmt = setup
    res = evaluate_answers(lm, examples, fmt, batch_size=5, progress=False)
    cap = max_answer_tokens(fmt, examples)
    preds = np.array([generate_answer(lm, fmt, e, cap) for e in examples])
    answers = np.array([e.answer for e in examples])
    assert res["predictions"] == preds.tolist()
    assert res["accuracy"] == pytest.approx((preds == answers).mean())
    assert res["n_non_number"] == int((preds < 0).sum())
    losses = [-_logp_full_forward(lm, fmt, e) for e in examples]
    assert res["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert res["method"] == "greedy generation" and res["n"] == len(examples)


def test_numbers_prediction_is_the_argmax_over_digits():
    lm = family_lm("digits")
    examples = make_task("+", 60, seed=4).test[:8]
    fmt = number_format(lm.tokenizer, 120)
    got = greedy_answers(lm, fmt, examples, prediction="numbers", batch_size=3,
                         progress=False)
    digit_ids = torch.as_tensor(fmt.digit_ids)
    for e, pred in zip(examples, got):
        ids = lm.tokenizer(e.prompt, return_tensors="pt")["input_ids"]
        text = ""
        for _ in range(len(str(e.answer))):  # exactly the answer's digit count
            with torch.no_grad():
                d = int(lm.model(input_ids=ids).logits[0, -1, digit_ids].argmax())
            text += str(d)
            ids = torch.cat([ids, digit_ids[d].view(1, 1)], dim=1)
        assert pred == int(text)
    with pytest.raises(UserError, match="prediction 'numbers'"):
        chunks = family_lm("chunks")
        greedy_answers(chunks, number_format(chunks.tokenizer, 1400), examples,
                       prediction="numbers", progress=False)


def test_single_token_formats_keep_the_numbers_of_evaluate():
    lm = family_lm("single")
    examples = make_task("+", 40, seed=1).test[:10]
    fmt = number_format(lm.tokenizer, 80)
    numbers = NumberTokens(fmt.numbers.token_ids[:81])
    def same(x, y) -> bool:  # JSON text, so that NaN equals NaN
        return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)

    for prediction in ("vocab", "numbers"):
        assert same(evaluate_task(lm, examples, fmt, prediction=prediction, progress=False),
                    evaluate(lm, examples, numbers, prediction=prediction, progress=False))
    by_format = ablation_table(lm, examples, fmt, tau=5, progress=False)
    by_numbers = ablation_table(lm, examples, numbers, tau=5, progress=False)
    assert same(by_format, by_numbers) and len(by_format) == 7
