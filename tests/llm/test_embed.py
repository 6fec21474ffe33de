"""``llm-fourier embed`` end to end on tiny saved models with planted Fourier rows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from llm_fourier.cli import main
from llm_fourier.model.numbers import find_number_tokens
from tests.tiny import save_tiny, tiny_lm

P = 201  # numbers 0..200: with the paper's basis period T is component k = 200 / T


def plant(matrix: torch.Tensor, tokenizer, periods, seed: int = 0) -> np.ndarray:
    """Overwrite the number rows of ``matrix`` with cosines of ``periods`` plus noise;
    returns the planted (p x D) rows."""
    rng = np.random.default_rng(seed)
    ids = find_number_tokens(tokenizer, P - 1).token_ids
    x = np.arange(P)[:, None]
    D = matrix.shape[1]
    rows = 0.1 * rng.standard_normal((P, D))
    for i, period in enumerate(periods):
        phase = rng.uniform(0, 2 * np.pi, D)
        rows += (1.0 - 0.3 * i) * np.cos(2 * np.pi * x / period + phase)
    with torch.no_grad():
        matrix[torch.as_tensor(ids)] = torch.as_tensor(rows, dtype=matrix.dtype)
    return rows


@pytest.fixture(scope="module")
def planted_gpt2(tmp_path_factory):
    model, tok = tiny_lm("gpt2", max_number=P - 1)
    rows = plant(model.transformer.wte.weight, tok, (10, 5))
    return save_tiny(model, tok, tmp_path_factory.mktemp("planted") / "gpt2"), rows


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_planted_periods_come_out_as_outliers(planted_gpt2, tmp_path, capsys):
    folder, rows = planted_gpt2
    out = tmp_path / "run"
    code, stdout, _ = _run(["embed", "--model", str(folder), "--out", str(out),
                            "--mod-periods", "2", "5"], capsys)
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["numbers"] == {"min": 0, "max": 200, "p": 201, "leading_space": False}
    assert [o["period"] for o in res["outliers"]] == [10.0, 5.0]
    assert [o["k"] for o in res["outliers"]] == [20, 40]
    assert len(res["spectrum"]) == 100 and res["spectrum"][19]["period"] == 10.0
    # the spectrum is the per-column L2 norm of the paper-basis coefficients (numpy check;
    # Def. A.3's rows sqrt(2/(p-1)) cos / sin)
    x = np.arange(P)
    w = 2 * np.pi * 20 * x / (P - 1)
    cos, sin = np.sqrt(2 / (P - 1)) * np.cos(w), np.sqrt(2 / (P - 1)) * np.sin(w)
    expected = np.sqrt(((cos @ rows) ** 2 + (sin @ rows) ** 2).sum())
    assert res["spectrum"][19]["magnitude"] == pytest.approx(expected, rel=1e-4)
    # the planted n mod 5 structure is linearly decodable, n mod 2 is not
    kappas = {m["period"]: m["kappa"] for m in res["mod_probes"]}
    assert kappas[5] > 0.9 and kappas[2] < 0.5
    assert res["low_high"]["tau"] == 50 and res["low_high"]["low_fraction"] > 0.5
    with open(out / "spectrum.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 100 and float(table[39]["period"]) == 5.0
    assert (out / "embedding_spectrum.png").stat().st_size > 1000
    assert "10" in stdout and "period" in stdout


def test_max_number_caps_and_dft_basis(planted_gpt2, tmp_path, capsys):
    folder, _ = planted_gpt2
    out = tmp_path / "cap"
    code, stdout, _ = _run(["embed", "--model", str(folder), "--out", str(out),
                            "--max-number", "99", "--basis", "dft", "--mod-periods"],
                           capsys)
    res = json.loads((out / "results.json").read_text())
    assert code == 0 and res["numbers"]["p"] == 100 and res["basis"] == "dft"
    assert {o["k"] for o in res["outliers"]} == {10, 20}  # dft: k = p / T with p = 100
    assert res["mod_probes"] == []
    # a range larger than the tokenizer's is capped to it
    code, stdout, _ = _run(["embed", "--model", str(folder), "--out", str(out),
                            "--max-number", "900", "--mod-periods"], capsys)
    assert code == 0 and json.loads((out / "results.json").read_text())["numbers"]["p"] == 201
    assert "stop at 200" in stdout


def test_unembed_reads_the_lm_head(tmp_path, capsys):
    model, tok = tiny_lm("llama", max_number=P - 1)  # untied embeddings
    plant(model.lm_head.weight, tok, (20, 2.5))
    folder = save_tiny(model, tok, tmp_path / "llama")
    code, _, _ = _run(["embed", "--model", str(folder), "--out", str(tmp_path / "u"),
                       "--unembed", "--mod-periods"], capsys)
    res = json.loads((tmp_path / "u" / "results.json").read_text())
    assert code == 0 and res["matrix"] == "unembedding"
    assert [o["period"] for o in res["outliers"]] == [20.0, 2.5]
    code, _, _ = _run(["embed", "--model", str(folder), "--out", str(tmp_path / "e"),
                       "--mod-periods"], capsys)
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert not {o["period"] for o in res["outliers"]} & {20.0, 2.5}  # W_E left random


def test_encoder_folder(tmp_path, capsys):
    model, tok = tiny_lm("bert", max_number=P - 1)
    plant(model.embeddings.word_embeddings.weight, tok, (10, 5))
    folder = save_tiny(model, tok, tmp_path / "bert")
    code, _, _ = _run(["embed", "--model", str(folder), "--out", str(tmp_path / "b"),
                       "--mod-periods"], capsys)
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert code == 0 and [o["period"] for o in res["outliers"]] == [10.0, 5.0]


def test_digit_splitting_tokenizer_uses_digits(tiny_dir, tmp_path, capsys):
    code, _, _ = _run(["embed", "--model", str(tiny_dir("qwen2", split_digits=True)),
                       "--out", str(tmp_path), "--mod-periods", "--tau", "3"], capsys)
    res = json.loads((tmp_path / "results.json").read_text())
    assert code == 0 and res["numbers"]["p"] == 10 and len(res["spectrum"]) == 4
    # the default tau follows the ten digits' 4 components (issue 20: it was 50, refused)
    code, out, _ = _run(["embed", "--model", str(tiny_dir("qwen2", split_digits=True)),
                         "--out", str(tmp_path / "t"), "--mod-periods"], capsys)
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert code == 0 and res["tau"] == 2 == res["defaults"]["tau"]["value"]
    assert "--tau 2 (default for this model" in out
    # a tau given outside them: one sentence
    code, _, err = _run(["embed", "--model", str(tiny_dir("qwen2", split_digits=True)),
                         "--out", str(tmp_path / "u"), "--tau", "50"], capsys)
    assert code == 2 and "--tau must lie in 1..4" in err


def test_missing_folder_is_one_sentence_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no-model-here"
    code, stdout, stderr = _run(["embed", "--model", str(missing), "--out", str(tmp_path)],
                                capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "Traceback" not in stderr
    assert not (tmp_path / "results.json").exists()
    code, _, stderr = _run(["embed", "--model", str(missing), "--mod-periods", "x"], capsys)
    assert code == 2
