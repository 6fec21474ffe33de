"""Helix activation patching: exact positions, counterfactuals, a planted helix model."""

import json
import math
import re

import numpy as np
import pytest
import torch

from llm_fourier.analyses.hidden_states import token_ids_at
from llm_fourier.analyses.patching import counterfactuals, helix_patching, patching_plot
from llm_fourier.errors import UserError
from llm_fourier.model.engine import Condition, Engine, Patch, PromptSet
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import find_number_tokens
from llm_fourier.model.tasks import Example, make_task, tokenize_prompts
from llm_fourier.output.files import write_json
from tests.llm.planted import PERIODS, expected_answer, planted_adder


@pytest.fixture(scope="module")
def planted():
    lm = planted_adder()
    task = make_task(max_operand=99, ordered=True, limit=1500, seed=0)
    numbers = find_number_tokens(lm.tokenizer, 200)
    result = helix_patching(lm, task.train, task.test, numbers, roles=("block", "mlp"),
                            layers=[0, 1], periods=PERIODS, progress=False)
    rows = {(r["role"], r["layer"], r["method"]): r for r in result.rows}
    return lm, task, numbers, result, rows


def test_patch_changes_only_the_operand_position(tiny_dir):
    lm = load_model(tiny_dir("gpt2"))
    examples = [Example(3, 41, 44, "Add 3 and 41. Answer: "),
                Example(120, 7, 127, "What is the sum of 120 and 7? Answer: "),
                Example(15, 9, 24, "Put together 15 and 9. Answer: ")]
    cut = token_ids_at(lm.tokenizer, examples, "a")
    positions = np.array([len(c) - 1 for c in cut])
    vectors = torch.randn(3, lm.d_model)
    prompts = PromptSet.build(lm, examples, batch_size=3)
    assert len(prompts.batches) == 1 and prompts.batches[0].rows != [0, 1, 2]
    cond = Condition("p", positions="all", patches={("block", 0): Patch(positions, vectors)})
    got = Engine(lm, prompts).run([cond], lambda b, c, out: out.logits[:, 0],
                                  progress=False)["p"]
    got = prompts.scatter(got)
    for i, ex in enumerate(examples):  # independent: one prompt alone, a hand-written hook
        ids = lm.tokenizer(ex.prompt, return_tensors="pt")["input_ids"]
        assert ids[0, positions[i]] == cut[i][-1]

        def hook(module, args, output, i=i):
            h = output[0] if isinstance(output, tuple) else output
            h = h.clone()
            h[0, positions[i]] = vectors[i]
            return (h, *output[1:]) if isinstance(output, tuple) else h

        handle = lm.block(0).register_forward_hook(hook)
        try:
            with torch.no_grad():
                ref = lm.model(input_ids=ids).logits[0, -1]
        finally:
            handle.remove()
        torch.testing.assert_close(torch.from_numpy(got[i]), ref, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            assert not torch.allclose(lm.model(input_ids=ids).logits[0, -1], ref, atol=1e-3)


def test_counterfactuals_rewrite_the_operand():
    ex = [Example(12, 30, 42, "Total of 12 and 30. Answer: "),
          Example(5, 5, 10, "Total of 1 and 2. Answer: 3\nAdd together 5 and 5. Answer: ")]
    for operand in ("a", "b"):
        out = counterfactuals(ex * 20, operand, "+", 0, 40, 60, seed=3)
        for old, new in zip(ex * 20, out):
            value = getattr(new, operand)
            assert value != getattr(old, operand) and 0 <= value <= 40
            assert new.answer == new.a + new.b <= 60
            digits_old, digits_new = re.findall(r"\d+", old.prompt), re.findall(r"\d+", new.prompt)
            assert digits_new[-2:] == [str(new.a), str(new.b)]
            assert digits_new[:-2] == digits_old[:-2]  # the shots keep their numbers
            assert re.sub(r"\d+", "#", new.prompt) == re.sub(r"\d+", "#", old.prompt)
        assert len({getattr(n, operand) for n in out}) > 5
    prod = counterfactuals(ex, "a", "*", 0, 9, 81, seed=0)
    assert all(n.answer == n.a * n.b <= 81 for n in prod)
    with pytest.raises(UserError, match="no other value"):
        counterfactuals([ex[0]], "a", "+", 12, 12, 60)


def test_planted_model_is_what_the_formula_says(planted):
    lm, task, numbers, result, _ = planted
    assert result.clean["accuracy"] == 1.0 and result.clean["n"] == len(task.test)
    assert all(expected_answer(e.a, e.b) == e.answer for e in task.test[:50])
    # clean LD from the formula in numpy: logit(c) = sum_T cos(2 pi (a + b - c)/T) - ...
    ld = []
    for pair in result.pairs:
        d = pair["a_counterfactual"] - pair["a"]
        other = sum(math.cos(2 * math.pi * d / T) for T in PERIODS) \
            - 0.05 * max(abs(d) - 4, 0) ** 2
        ld.append(len(PERIODS) - other)
    assert result.clean["ld"] == pytest.approx(np.mean(ld), rel=1e-5)


def test_helix_restores_the_planted_model_and_a_circle_does_not(planted):
    lm, task, numbers, result, rows = planted
    helix = rows[("block", 0, "helix")]
    assert helix["kept"] == pytest.approx(1, abs=1e-3)
    assert helix["moved"] == pytest.approx(1, abs=1e-3)
    assert helix["accuracy_same"] == 1.0 and helix["to_counterfactual"] == 1.0
    circle = rows[("block", 0, "circle")]  # no linear term: the tens are lost
    assert circle["n_params"] == helix["n_params"] - 1 == 6
    assert circle["kept"] < 0.2 and circle["moved"] < 0.2
    assert circle["accuracy_same"] < 0.3 and circle["to_counterfactual"] < 0.3
    poly = rows[("block", 0, "polynomial")]  # the linear term without the circles: the LD
    assert poly["kept"] > 0.9  # to a far a' is mostly magnitude, but the units digit is lost
    assert poly["accuracy_same"] < 0.3 and poly["to_counterfactual"] < 0.3
    shuffled = rows[("block", 0, "shuffled")]
    assert abs(shuffled["kept"]) < 0.1 and shuffled["to_counterfactual"] < 0.2
    # top-7 PCA of the residual is dominated by the unread template and token directions;
    # the MLP output is the bare helix, which 7 principal directions hold exactly
    assert rows[("block", 0, "pca")]["kept"] < 0.2
    assert rows[("mlp", 0, "pca")]["kept"] == pytest.approx(1, abs=1e-3)
    assert rows[("mlp", 0, "helix")]["r2_heldout"] == pytest.approx(1, abs=1e-6)
    assert helix["r2_heldout"] < 0.1  # low R^2, yet everything the model reads
    for method in ("helix", "circle", "pca"):  # block 1 is after the copy: nothing to patch
        r = rows[("block", 1, method)]
        assert math.isnan(r["kept"]) and math.isnan(r["moved"]) and r["accuracy_same"] == 1.0


def test_actual_patch_equals_running_the_counterfactual_prompt(planted):
    lm, task, numbers, result, rows = planted
    lo, hi = result.settings["counterfactual_range"]
    swapped = counterfactuals(task.test, "a", "+", lo, hi, numbers.max_number, seed=0)
    assert [s.a for s in swapped] == [p["a_counterfactual"] for p in result.pairs]
    targets = np.array([[e.answer, s.answer] for e, s in zip(task.test, swapped)])
    enc = tokenize_prompts(lm.tokenizer, [s.prompt for s in swapped])
    with torch.no_grad():
        logits = lm.model(**enc).logits[:, -1]
    ids = torch.as_tensor(numbers.token_ids)[torch.as_tensor(targets)]
    scores = logits.gather(1, ids).numpy()
    preds = np.asarray(numbers.token_ids).tolist()
    preds = np.array([preds.index(t) if t in preds else -1 for t in logits.argmax(-1).tolist()])
    ref = rows[("block", 0, "helix")]
    assert ref["ld_actual"] == pytest.approx(float((scores[:, 0] - scores[:, 1]).mean()),
                                             rel=1e-5)
    assert ref["to_counterfactual_actual"] == float((preds == targets[:, 1]).mean()) == 1.0


def test_subspace_mode_and_a_real_model_end_to_end(planted, tiny_dir, tmp_path):
    lm, task, numbers, _, _ = planted
    sub = helix_patching(lm, task.train[:600], task.test[:60], numbers, layers=[0],
                         periods=PERIODS, methods=("helix", "pca"), mode="subspace",
                         progress=False)
    rows = {r["method"]: r for r in sub.rows}
    assert rows["helix"]["kept"] > 0.95 and rows["helix"]["moved"] > 0.95
    assert rows["pca"]["kept"] == pytest.approx(1, abs=1e-6)  # its own component: identity
    gpt = load_model(tiny_dir("gpt2"))
    small = make_task(max_operand=60, seed=1, limit=400)
    res = helix_patching(gpt, small.train[:160], small.test[:12], find_number_tokens(
        gpt.tokenizer, 200), layers=None, periods=(2, 5, 10), correct_only=False,
                         batch_size=5, progress=False)
    assert [(r["layer"], r["method"]) for r in res.rows][:5] == [
        (0, m) for m in ("helix", "circle", "polynomial", "pca", "shuffled")]
    assert len(res.rows) == 10 and res.clean["n"] == 12
    assert all(np.isfinite(r["ld_same"]) and np.isfinite(r["ld_swap"]) for r in res.rows)
    assert set(res.fits[("block", 1)]) == {"helix", "circle", "polynomial", "pca", "shuffled"}
    assert patching_plot(res.rows, tmp_path / "patch.png").stat().st_size > 0
    saved = json.loads(write_json(tmp_path / "results.json", res.as_dict()).read_text())
    assert len(saved["fits"]) == 10 and saved["fits"][0]["role"] == "block"
    assert saved["rows"][0]["method"] == "helix" and saved["settings"]["n_test"] == 12
    with pytest.raises(UserError, match="unknown method"):
        helix_patching(gpt, small.train, small.test, find_number_tokens(gpt.tokenizer, 200),
                       methods=("helix", "sine"))
    with pytest.raises(UserError, match="mode must be"):
        helix_patching(gpt, small.train, small.test, find_number_tokens(gpt.tokenizer, 200),
                       mode="partial")


def test_operand_b_is_patched_at_its_own_token(planted):
    lm, task, numbers, _, _ = planted
    res = helix_patching(lm, task.train[:600], task.test[:60], numbers, operand="b",
                         layers=[0], periods=PERIODS, methods=("helix", "circle"),
                         progress=False)
    rows = {r["method"]: r for r in res.rows}
    assert res.settings["operand"] == "b" and all(
        p["b_counterfactual"] != p["b"] for p in res.pairs)
    assert rows["helix"]["kept"] == pytest.approx(1, abs=1e-3)
    assert rows["helix"]["to_counterfactual"] == 1.0
    assert rows["circle"]["accuracy_same"] < 0.3
