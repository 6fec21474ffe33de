"""``heads``: the planted head is found by every measure, spectra equal numpy's FFT, and the
command runs on every architecture type."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm_fourier.analyses.head_ablation import (
    ablate,
    effect,
    random_heads,
    single_heads,
    top_heads,
)
from llm_fourier.analyses.heads import collect, head_rows
from llm_fourier.cli import main
from llm_fourier.commands.base import JobView
from llm_fourier.commands.heads import COMMAND
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.engine import PromptSet
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import number_rows
from llm_fourier.model.tasks import make_task
from probes.stats import StatsConfig
from tests.llm.planted_heads import planted_examples, planted_heads
from tests.tiny import ARCHS


@pytest.fixture(scope="module")
def planted():
    lm = planted_heads()
    space = AnswerSpace.build(lm.tokenizer, 200, tau=5)
    prompts = PromptSet.build(lm, planted_examples(40), 8, fmt=space.fmt, offsets=True)
    measures = collect(lm, prompts, space, [0], progress=False)
    single = ablate(lm, prompts, space, measures, single_heads([0], 4), progress=False)
    cfg = StatsConfig(n_boot=200, seed=0)
    base = (measures.correct, measures.loss)
    effects = {k: effect(*v, *base, cfg) for k, v in single.items()}
    return lm, space, prompts, measures, head_rows(measures, 5, effects), base, cfg


def test_the_planted_head_is_found_by_every_measure(planted):
    _, _, _, measures, rows, _, _ = planted
    assert measures.correct.mean() == 1.0
    head, *others = rows
    assert head["periods"][0] == pytest.approx(10) and head["peak_share"] > 0.9
    assert head["attn_a"] > 0.99 and head["attn_b"] < 0.01
    assert head["direct_effect"] == pytest.approx(10, rel=1e-4)
    ab = head["ablation"]
    assert ab["accuracy_drop"] > 0.7 and ab["accuracy_drop_low"] > 0.5
    assert ab["loss_increase_low"] > 1.0
    for row in others:  # no role: no period 10, no look at a, no effect
        assert not row["periods"] or row["periods"][0] != pytest.approx(10)
        assert row["peak_share"] < 0.5 and row["attn_a"] < 0.2
        assert abs(row["direct_effect"]) < 0.2
        assert row["ablation"]["accuracy_drop"] == 0
        assert abs(row["ablation"]["loss_increase"]) < 0.05
    assert [r["attn_rest"] for r in others][1] == 1.0  # head 2 looks at the first token
    assert [r["attn_prefix"] for r in others][2] == 1.0  # head 3 at the last one


def test_top_heads_together_against_random_heads(planted):
    lm, space, prompts, measures, rows, base, cfg = planted
    top = top_heads(rows, 1)
    assert top == {0: [0]}
    draws = random_heads({0: [0, 1]}, 4, 3, seed=0)
    assert all(len(sel[0]) == 2 and len(set(sel[0])) == 2 for sel in draws.values())
    both = ablate(lm, prompts, space, measures, {"top": top}, progress=False)
    assert effect(*both["top"], *base, cfg)["accuracy"] <= 0.3


def test_head_spectra_equal_numpy_fft_of_the_head_logits(tiny_models):
    model, tok = tiny_models("llama")
    lm = load_model(model, tok)
    examples = make_task("+", 10, seed=0).split("test")[:6]
    space = AnswerSpace.build(tok, 20, basis_kind="dft", tau=2)
    numbers = space.numbers
    prompts = PromptSet.build(lm, examples, 4, fmt=space.fmt, offsets=True)
    measures = collect(lm, prompts, space, [1], progress=False)
    # independently: the o_proj input of each prompt alone, split by hand, read, FFT'd
    proj = model.model.layers[1].self_attn.o_proj
    W_U = number_rows(lm.unembedding(), numbers).double().numpy()
    seen = []
    handle = proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0, -1].double()))
    try:
        with torch.inference_mode():
            for ex in examples:
                model(**tok(ex.prompt, return_tensors="pt"))
    finally:
        handle.remove()
    w = proj.weight.detach().double().numpy()  # D x (H * d_head): Linear stores (out, in)
    p, mags = numbers.p, []
    for z in seen:
        z = z.numpy().reshape(2, -1)
        terms = np.stack([w[:, h * 16:(h + 1) * 16] @ z[h] for h in range(2)])  # H x D
        X = np.fft.fft(terms @ W_U.T, axis=-1)  # H x p
        mag = np.abs(X[:, :p // 2 + 1]) * np.sqrt(2 / p)
        mag[:, 0] /= np.sqrt(2)
        mags.append(mag)
    got = (measures.lens.magnitude_sum / measures.lens.n).numpy()  # (L * H) x (K + 1)
    np.testing.assert_allclose(got, np.mean(mags, 0), rtol=1e-4, atol=1e-6)


def test_stacked_ablations_equal_one_at_a_time(tiny_models):
    model, tok = tiny_models("qwen2")
    lm = load_model(model, tok)
    space = AnswerSpace.build(tok, 20, tau=2)
    prompts = PromptSet.build(lm, make_task("+", 10, seed=0).split("train")[:8], 4,
                              fmt=space.fmt, offsets=True)
    measures = collect(lm, prompts, space, [0, 1], progress=False)
    heads = single_heads([0, 1], 2)
    stacked = ablate(lm, prompts, space, measures, heads, progress=False)
    alone = ablate(lm, prompts, space, measures, heads, progress=False, stack_rows=1)
    for name in heads:
        np.testing.assert_allclose(stacked[name][1], alone[name][1], rtol=1e-4, atol=1e-5)
    assert any(np.abs(stacked[n][1] - measures.loss).max() > 1e-4 for n in heads)


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_command_runs_on_every_architecture(tiny_dir, tmp_path, capsys, arch):
    out = tmp_path / "heads"
    ablation = arch in ("gpt2", "gemma2", "granite", "opt")
    args = ["heads", "--model", str(tiny_dir(arch)), "--max-operand", "6", "--limit", "6",
            "--tau", "2", "--bootstrap", "20", "--top-k", "2", "--n-random", "2", "--quiet",
            "--out", str(out), *([] if ablation else ["--no-ablation"])]
    assert main(args) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert len(res["heads"]) == res["n_heads"] * len(res["layers"]) == 4
    for row in res["heads"]:
        total = sum(row[f"attn_{g}"] for g in ("a", "b", "prefix", "rest"))
        assert total == pytest.approx(1, abs=1e-5)
        assert ("ablation" in row) == ablation
    assert (out / "heads.png").is_file() and (out / "heads.csv").is_file()
    job = JobView("j", out, {"model": arch}, res)
    assert "<table" in COMMAND.job_html(job)
    assert bool(COMMAND.findings(job)) == ablation


def test_digit_answers_are_read_at_every_answer_position(tiny_dir, tmp_path, capsys):
    out = tmp_path / "d"
    args = ["heads", "--model", str(tiny_dir("llama", split_digits=True)), "--max-operand",
            "30", "--limit", "4", "--bootstrap", "20", "--top-k", "1", "--n-random", "1",
            "--quiet", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["readout"]["readout"] == "digit" and res["tau"] == 3
    for row in res["heads"]:
        assert sum(row[f"attn_{g}"] for g in ("a", "b", "prefix", "rest")) == pytest.approx(1)
        assert "loss_increase" in row["ablation"]


def test_digit_head_spectra_equal_numpy_fft_at_each_answer_position():
    from tests.tiny import tiny_lm

    model, tok = tiny_lm("llama", split_digits=True)
    lm = load_model(model, tok)
    examples = make_task("+", 60, seed=0).split("test")[:5]
    space = AnswerSpace.build(tok, 120)
    prompts = PromptSet.build(lm, examples, 2, fmt=space.fmt, offsets=True)
    measures = collect(lm, prompts, space, [0], progress=False)
    # independently: each prompt with its answer's digits appended, one forward each
    proj = model.model.layers[0].self_attn.o_proj
    digit_rows = lm.unembedding()[list(space.fmt.digits.token_ids)].double().numpy()
    w = proj.weight.detach().double().numpy()
    mags = []
    for ex in examples:
        prompt = tok(ex.prompt)["input_ids"]
        answer = list(space.fmt.encode(ex.answer))
        seen = []
        handle = proj.register_forward_pre_hook(
            lambda m, a, seen=seen: seen.append(a[0][0].double()))
        try:
            with torch.inference_mode():
                model(torch.tensor([prompt + answer[:-1]]))
        finally:
            handle.remove()
        z = seen[0].numpy()[len(prompt) - 1:]  # the answer positions
        for j, t in enumerate(answer):
            if not space.fmt.text_of(t)[0]:
                continue  # a token that writes no digit is not read
            heads = z[j].reshape(2, -1)
            terms = np.stack([w[:, h * 16:(h + 1) * 16] @ heads[h] for h in range(2)])
            X = np.fft.fft(terms @ digit_rows.T, axis=-1)  # H x 10
            mag = np.abs(X[:, :6]) * np.sqrt(2 / 10)
            mag[:, 0] /= np.sqrt(2)
            mag[:, 5] /= np.sqrt(2)  # period 2: its cosine only
            mags.append(mag)
    assert measures.lens.n == len(mags) > len(examples)
    got = (measures.lens.magnitude_sum / measures.lens.n).numpy()
    np.testing.assert_allclose(got, np.mean(mags, 0), rtol=1e-4, atol=1e-6)


def test_chunk_answers_are_refused_in_one_sentence(family_dir, tmp_path, capsys):
    args = ["heads", "--model", str(family_dir("chunks")), "--max-operand", "600",
            "--limit", "4", "--out", str(tmp_path / "c")]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "chunks tokens" in err[0]


def test_heads_resumes_at_the_next_unit(tiny_dir, tmp_path, monkeypatch, capsys):
    import llm_fourier.analyses.heads as heads_lib

    args = ["heads", "--model", str(tiny_dir("gpt2")), "--max-operand", "6", "--limit", "6",
            "--batch-size", "2", "--tau", "2", "--bootstrap", "20", "--top-k", "2",
            "--n-random", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0  # 3 prompts: 2 batches
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())
    real, calls = heads_lib.AnswerReads.score, []

    def counted(*a, **k):
        calls.append(1)
        if die and len(calls) == 9:  # collect: 2 batches; ablations: batch 0, then dies
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(heads_lib.AnswerReads, "score", counted)
    die = True
    assert main([*args, "--out", str(tmp_path / "run")]) == 130
    calls.clear()
    die = False
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert len(calls) == 4 + 3 * 2  # the 4 heads' ablations of batch 1; top + 2 random x 2
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert again["heads"] == clean["heads"] and again["together"] == clean["together"]
