"""From-scratch GPT-2 adders: one token per number, tied embeddings, seeded, and a saved
adder that the LLM side loads back unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from llm_fourier.errors import UserError
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import find_number_tokens
from llm_fourier.model.tasks import make_task, tokenize_prompts
from toy.adders import GPT2_SMALL, AdderConfig, build_adder, max_answer

SMALL = AdderConfig(max_number=60, n_layer=3, d_model=24, n_head=3)


def test_every_task_number_is_one_token_and_embeddings_are_tied():
    model, tok = build_adder(SMALL, seed=0)
    assert isinstance(model, GPT2LMHeadModel)
    numbers = find_number_tokens(tok, 1000)
    assert numbers.p == 61  # exactly 0..60
    assert tok.tokenize("Put together 15 and 45. Answer: ") == [
        "Put", "together", "15", "and", "45", ".", "Answer", ":"]
    assert model.lm_head.weight is model.transformer.wte.weight
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (3, 24, 3)
    assert model.config.vocab_size == len(tok)
    assert GPT2_SMALL.n_layer == 12 and GPT2_SMALL.d_model == 768 and GPT2_SMALL.max_number == 520


def test_seeded_initialisation():
    a, _ = build_adder(SMALL, seed=1)
    b, _ = build_adder(SMALL, seed=1)
    c, _ = build_adder(SMALL, seed=2)
    wa, wb, wc = (m.transformer.wte.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_saved_adder_loads_back_through_load_model(tmp_path):
    model, tok = build_adder(SMALL, seed=0)
    model.eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = load_model(tmp_path)
    assert lm.roles.blocks == "transformer.h" and lm.n_layers == 3 and lm.d_model == 24
    task = make_task("+", 30, limit=8)
    enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in task.train])
    with torch.no_grad():
        assert torch.equal(lm.model(**enc).logits, model(**enc).logits)


def test_sizes_and_errors():
    assert max_answer("+", 50) == 100 and max_answer("*", 12) == 144
    with pytest.raises(UserError, match="multiple"):
        build_adder(AdderConfig(d_model=30, n_head=4))
    with pytest.raises(UserError):
        max_answer("-", 5)
