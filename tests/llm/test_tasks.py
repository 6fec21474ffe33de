"""make_task sizes, splits, determinism, templates, shots, multiplication; tokenize_prompts."""

from __future__ import annotations

import pytest
import torch

from llm_fourier.errors import UserError
from llm_fourier.model.tasks import ANSWER_PREFIX, TEMPLATES, make_task, tokenize_prompts


@pytest.fixture(scope="module")
def paper_task():
    return make_task()


def test_paper_setup_sizes_and_disjoint_splits(paper_task):
    t = paper_task
    assert t.settings["n_pairs"] == 261 * 262 // 2 == 34191
    assert (len(t.train), len(t.val), len(t.test)) == (27353, 3419, 3419)
    keys = [{(e.a, e.b) for e in s} for s in (t.train, t.val, t.test)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert len(keys[0] | keys[1] | keys[2]) == 34191
    assert all(e.a <= e.b <= 260 and e.answer == e.a + e.b for e in t.test)
    assert t.max_answer == 520
    # one of the five templates, then the answer prefix
    formats = {tpl.format(a=e.a, b=e.b) + ANSWER_PREFIX for e in t.val[:50] for tpl in TEMPLATES}
    assert all(e.prompt in formats for e in t.val[:50])
    used = {next(i for i, tpl in enumerate(TEMPLATES)
                 if e.prompt == tpl.format(a=e.a, b=e.b) + ANSWER_PREFIX) for e in t.train[:500]}
    assert used == set(range(5))


def test_deterministic_by_seed(paper_task):
    again = make_task(limit=None)
    assert again.test == paper_task.test
    other = make_task(seed=1)
    assert other.test != paper_task.test


def test_ordered_pairs_and_multiplication():
    t = make_task(max_operand=9, ordered=True, split=(0.5, 0.25, 0.25))
    pairs = [(e.a, e.b) for s in (t.train, t.val, t.test) for e in s]
    assert sorted(pairs) == [(a, b) for a in range(10) for b in range(10)]
    m = make_task(op="*", max_operand=12)
    assert all(e.answer == e.a * e.b for e in m.train) and m.max_answer == 144
    assert any("product" in e.prompt for e in m.train)


def test_custom_templates_and_limit():
    t = make_task(max_operand=30, templates=["{a} plus {b} ="], limit=100)
    assert sum(len(s) for s in (t.train, t.val, t.test)) == 100
    e = t.test[0]
    assert e.prompt == f"{e.a} plus {e.b} =" + ANSWER_PREFIX


def test_k_shot_prompts_come_from_train():
    t = make_task(max_operand=40, shots=3, seed=2)
    zero = make_task(max_operand=40, seed=2)
    train_lines = {e.prompt + str(e.answer) for e in zero.train}
    for shot_ex, ex in zip(t.test[:20], zero.test[:20]):
        lines = shot_ex.prompt.split("\n")
        assert len(lines) == 4 and lines[-1] == ex.prompt
        assert all(line in train_lines for line in lines[:3])
    for shot_ex, ex in zip(t.train[:50], zero.train[:50]):  # never the example itself
        assert ex.prompt + str(ex.answer) not in shot_ex.prompt.split("\n")[:3]


@pytest.mark.parametrize("kwargs, match", [
    ({"op": "-"}, "unknown operation"),
    ({"max_operand": 0}, "max_operand"),
    ({"split": (0.8, 0.1)}, "three non-negative"),
    ({"split": (0.8, 0.3, -0.1)}, "three non-negative"),
    ({"templates": ["Add {a}."]}, "lacks"),
    ({"templates": ["Add {a} and {b} {c}."]}, "braces"),
    ({"templates": []}, "empty"),
    ({"shots": -1}, "shots"),
    ({"shots": 50, "max_operand": 5}, "training examples"),
    ({"limit": 0}, "limit"),
])
def test_bad_settings_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        make_task(**kwargs)


def test_tokenize_prompts_pads_and_restores_side(number_tokenizer):
    tok = number_tokenizer
    tok.padding_side = "right"
    prompts = ["Calculate 3 + 4. Answer: ", "What is the sum of 100 and 20? Answer: "]
    left = tokenize_prompts(tok, prompts)
    assert tok.padding_side == "right"
    ids, mask = left["input_ids"], left["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].tolist() == [0] * 4 + [1] * 7  # 7 tokens vs 11, left padded
    assert ids[0, -1].item() == ids[1, -1].item() == tok.convert_tokens_to_ids(":")
    right = tokenize_prompts(tok, prompts, padding_side="right")
    assert right["attention_mask"][0, -1].item() == 0
    assert torch.equal(right["input_ids"][1], ids[1])


def test_tokenize_prompts_sets_missing_pad(number_tokenizer):
    import copy

    tok = copy.deepcopy(number_tokenizer)
    tok.pad_token = None
    out = tokenize_prompts(tok, ["Calculate 3 + 4.", "Calculate 30 + 40. Answer: "])
    assert tok.pad_token == tok.eos_token
    assert out["input_ids"][0, 0].item() == tok.eos_token_id


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_padded_prompt_gives_the_logits_it_gives_alone(arch):
    from tests.tiny import tiny_lm

    model, tok = tiny_lm(arch)
    prompts = ["Total of 3 and 4. Answer: ", "What is the sum of 120 and 75? Answer: "]
    with torch.no_grad():
        batch = model(**tokenize_prompts(tok, prompts)).logits[:, -1]
        for row, prompt in zip(batch, prompts):
            alone = model(**tokenize_prompts(tok, [prompt])).logits[0, -1]
            torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-5)
