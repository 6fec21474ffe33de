"""neurons, patch and hidden on the engine, against independent plain forwards: knockouts and
patches on a digit-splitting tokenizer (greedy answers by a loop of full forwards, log p of
the answer by one full forward), and the early stop of ``collect``."""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest
import torch

from llm_fourier.analyses.fourier_neurons import knockout_table, output_projection
from llm_fourier.analyses.hidden_states import collect, token_ids_at
from llm_fourier.analyses.patching import counterfactuals, helix_patching
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.number_format import NumberParser, number_format
from llm_fourier.model.tasks import make_task
from tests.llm.families import family_lm


def _run(lm, ids: list[int], hooks) -> torch.Tensor:
    """Logits of one unpadded prompt, every position, under ``hooks(n_tokens)``."""
    with ExitStack() as stack, torch.no_grad():
        for h in hooks(len(ids)):
            stack.callback(h.remove)
        return lm.model(input_ids=torch.tensor([ids])).logits[0].float()


def _reference(lm, fmt, example, answer: int, hooks, max_tokens: int) -> tuple[float, int]:
    """(log p(answer) teacher forced, greedy prediction) by plain full forwards."""
    prompt = lm.tokenizer(example.prompt)["input_ids"]
    target = list(fmt.encode(answer))
    lp = torch.log_softmax(_run(lm, prompt + target, hooks), -1)
    logp = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(target))
    parser, ids = NumberParser(fmt), list(prompt)
    for _ in range(max_tokens):
        ids.append(int(_run(lm, ids, hooks)[-1].argmax()))
        if parser.feed(ids[-1]):
            break
    return logp, parser.value


@pytest.fixture(scope="module")
def digits():
    lm = family_lm("digits")
    task = make_task("+", 49, seed=0)
    fmt = number_format(lm.tokenizer, task.max_answer)
    assert fmt.family == "digits"
    return lm, task, AnswerSpace(fmt, task.max_answer), fmt


def test_neuron_knockouts_on_digits_equal_plain_forwards(digits):
    lm, task, space, fmt = digits
    examples = task.test[:6]
    res = knockout_table(lm, examples, space, periods=[10, 5], n_neurons=5, n_random=1,
                         basis_kind="dft", batch_size=4, progress=False)
    assert res["settings"]["readout"] == "digit"
    runs = {"none": ({}, res["baseline"])}
    for p in res["periods"]:
        runs[p["period"]] = (p["top"]["neurons"], p["top"])
        runs[f"r{p['period']}"] = (p["random"]["draws"][0]["neurons"], p["random"]["draws"][0])

    for neurons, got in runs.values():
        ref = [_reference(lm, fmt, e, e.answer, _answer_positions(lm, neurons, e), 4)
               for e in examples]
        assert got["accuracy"] == np.mean([p == e.answer for (_, p), e in zip(ref, examples)])
        assert got["loss"] == pytest.approx(-np.mean([lp for lp, _ in ref]), rel=1e-4)
    assert res["periods"][0]["top"]["accuracy"] != res["baseline"]["accuracy"] or \
        res["periods"][0]["top"]["loss"] != res["baseline"]["loss"]


def _answer_positions(lm, neurons: dict, example):
    """Hooks zeroing ``neurons`` from the last prompt token on (the answer positions)."""
    start = len(lm.tokenizer(example.prompt)["input_ids"]) - 1

    def hooks(n):
        def pre(idx):
            def hook(module, args):
                x = args[0].clone()
                x[:, start:, idx] = 0
                return (x, *args[1:])
            return hook
        return [output_projection(lm, layer).register_forward_pre_hook(pre(list(idx)))
                for layer, idx in neurons.items()]
    return hooks


def test_helix_patching_on_digits_equals_plain_forwards(digits):
    lm, task, space, fmt = digits
    train, test = task.train[:120], task.test[:5]
    res = helix_patching(lm, train, test, space, layers=[0], periods=(2, 5, 10),
                         methods=("helix",), pca_dim=8, correct_only=False, batch_size=3,
                         progress=False)
    row = res.rows[0]
    lo, hi = res.settings["counterfactual_range"]
    swapped = counterfactuals(test, "a", "+", lo, hi, space.max_answer, seed=0)
    pos = [len(c) - 1 for c in token_ids_at(lm.tokenizer, test, "a")]
    other = collect(lm, swapped, token="a", roles=("block",), layers=[0], progress=False)

    def patched(i):  # the swapped prompt's state at the operand's last token
        def hooks(n):
            def hook(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                h = h.clone()
                h[0, pos[i]] = torch.from_numpy(other.at("block", 0)[i])
                return (h, *output[1:]) if isinstance(output, tuple) else h
            return [lm.block(0).register_forward_hook(hook)]
        return hooks

    clean, actual = [], []
    for i, (e, s) in enumerate(zip(test, swapped)):
        c = [_reference(lm, fmt, e, t, lambda n: [], 4) for t in (e.answer, s.answer)]
        a = [_reference(lm, fmt, e, t, patched(i), 4) for t in (e.answer, s.answer)]
        clean.append((c[0][0] - c[1][0], c[0][1]))
        actual.append((a[0][0] - a[1][0], a[0][1]))
    assert res.clean["ld"] == pytest.approx(np.mean([x for x, _ in clean]), rel=1e-4)
    assert res.clean["accuracy"] == np.mean([p == e.answer for (_, p), e in zip(clean, test)])
    assert row["ld_actual"] == pytest.approx(np.mean([x for x, _ in actual]), rel=1e-4)
    assert row["to_counterfactual_actual"] == np.mean(
        [p == s.answer for (_, p), s in zip(actual, swapped)])
    assert res.settings["scores"].startswith("teacher-forced")


def test_collect_stops_after_the_deepest_layer_read(digits):
    lm, task, _, _ = digits
    calls = []
    handle = lm.block(1).register_forward_hook(lambda *a: calls.append(1))
    try:
        hs = collect(lm, task.train[:9], token="a", roles=("block", "mlp"), layers=[0],
                     batch_size=4, progress=False)
    finally:
        handle.remove()
    assert not calls  # layer 1 never ran
    cut = token_ids_at(lm.tokenizer, task.train[:9], "a")
    for i, ex in enumerate(task.train[:9]):
        with torch.no_grad():
            out = lm.model(**lm.tokenizer(ex.prompt, return_tensors="pt"),
                           output_hidden_states=True)
        torch.testing.assert_close(torch.from_numpy(hs.at("block", 0)[i]),
                                   out.hidden_states[1][0, len(cut[i]) - 1], atol=1e-5,
                                   rtol=1e-4)
