"""Digit probes through a model and the digit intervention on a hand-built model whose next
token is read off a planted digit circle, so the effect of a rotation is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T

from llm_fourier.analyses.answers import greedy_answers
from llm_fourier.analyses.digit_probes import (
    digit_intervention,
    digit_rows,
    fit_operand_probe,
    probe_digit_layers,
)
from llm_fourier.analyses.hidden_states import collect
from llm_fourier.errors import UserError
from llm_fourier.model.loading import load_model
from llm_fourier.model.number_format import number_format
from llm_fourier.model.tasks import Example
from llm_fourier.model.tokenizers import word_level_tokenizer


@pytest.fixture(scope="module")
def copy_model():
    """A 1-layer GPT-2 over a digit tokenizer whose attention and MLP add nothing and whose
    positions are zero: the residual at a digit token is its embedding, a point on a
    circle (cos, sin, -cos, -sin)(2 pi d/10) x 3, and the tied unembedding reads the digit
    nearest that angle back. So the next token after a digit is the digit the circle
    shows: a prompt ending in b writes b b b ... (decoding stops after the longest answer,
    one digit, plus one token: 11 x b)."""
    tok = word_level_tokenizer(9, split_digits=True)
    cfg = T.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=len(tok),
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            for lin in (block.attn.c_proj, block.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
        model.transformer.wpe.weight.zero_()
        W = model.transformer.wte.weight
        W.zero_()
        for d in range(10):
            a = 2 * np.pi * d / 10
            W[tok.convert_tokens_to_ids(str(d)), :4] = 3 * torch.tensor(
                [np.cos(a), np.sin(a), -np.cos(a), -np.sin(a)])
    lm = load_model(model, tok)
    # b last (no " Answer: "), so the model's answer is b's units digit
    examples = [Example(a, b, b % 10, f"Calculate {a} + {b}")
                for a in range(0, 40, 3) for b in range(40)]
    return lm, examples, number_format(tok, 99)


def test_the_hand_built_model_copies_the_circle(copy_model):
    lm, examples, fmt = copy_model
    preds = greedy_answers(lm, fmt, examples, progress=False)
    np.testing.assert_array_equal(preds, [11 * e.answer for e in examples])


def test_digit_probes_read_the_planted_units_circle(copy_model):
    lm, examples, _ = copy_model
    hs = collect(lm, examples, token="b", roles=("block",), progress=False)
    res = probe_digit_layers(hs, targets=("b",), pca_dim=8, shuffled=True, n_shuffles=1,
                             progress=False)
    rows = {(r["place"], r["kind"]): r for r in digit_rows(res)}
    assert set(rows) == {(p, k) for p in (0, 1) for k in ("circular", "linear", "value")}
    assert rows[(0, "circular")]["accuracy"] == 1.0 and rows[(0, "linear")]["accuracy"] == 1.0
    assert rows[(0, "circular")]["accuracy_shuffled"] < 0.35
    # the state at b's last token holds only its units digit: the tens digit is not there
    assert rows[(1, "circular")]["accuracy"] < 0.5
    with pytest.raises(UserError, match="distinct values"):
        probe_digit_layers(collect(lm, examples[:5], token="a", roles=("block",),
                                   progress=False), targets=("a",), progress=False)


def test_rotating_the_operand_circle_shifts_the_answer_digit(copy_model):
    lm, examples, fmt = copy_model
    hs = collect(lm, examples, token="b", roles=("block",), layers=[0], progress=False)
    probe = fit_operand_probe(hs, "block", 0, "b", 0, pca_dim=8)
    for shift in (1, 4):
        res = digit_intervention(lm, examples, fmt, probe, token="b", role="block", layer=0,
                                 shift=shift, batch_size=16, progress=False)
        assert res["probe_moved"] == 1.0  # the edited state reads as the digit + shift
        assert res["rate_shifted"] == 1.0 and res["rate_target"] == 1.0
        assert res["move_histogram"] == {shift: len(examples)}
        assert res["rate_shifted_random"] < 0.3  # same norm, random direction
        clean, rotated = np.array(res["clean"]), np.array(res["rotated"])
        np.testing.assert_array_equal(clean, [11 * e.answer for e in examples])
        np.testing.assert_array_equal(rotated, 11 * ((clean % 10 + shift) % 10))
    with pytest.raises(UserError, match="operand"):
        digit_intervention(lm, examples, fmt, probe, token="last", progress=False)
