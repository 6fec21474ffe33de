"""The scripts in examples/ run on tiny models (seconds each) and say what their results say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    tested = {"zhou_fourier_features", "kantamneni_helix", "levy_geva_digits", "nanda_grokking"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny import tiny_model_dir

    root = tmp_path_factory.mktemp("examples")
    return lambda **kw: str(tiny_model_dir(root, "gpt2", **kw))


def test_zhou(tiny, tmp_path, capsys):
    res = _script("zhou_fourier_features").main(
        ["--model", tiny(), "--limit", "6", "--bootstrap", "10", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [r["row"] for r in res["table"]]
    assert rows[0] == "none" and len(rows) == 7  # Table 1's seven rows
    # 0..200 single tokens: operands 0..100; the 100 components keep the paper's tau 50
    assert res["probe"]["settings"]["max_operand"] == 100 and res["probe"]["tau"] == 50
    for row in res["table"]:
        assert f"{row['row']:<28} accuracy {row['accuracy']:.3f}" in out
    assert (tmp_path / "ablate" / "results.json").is_file()


def test_kantamneni(tiny, capsys):
    res = _script("kantamneni_helix").main(
        ["--model", tiny(), "--max-operand", "19", "--n-probe", "60", "--test-limit", "6",
         "--pca-dim", "4", "--all-prompts"])
    r2 = {p["layer"]: p["helix"]["r2_test"] for p in res["hidden"]["probes"]}
    assert res["best_layer"] == max(r2, key=r2.get)
    assert {r["layer"] for r in res["patch"]["rows"]} == {res["best_layer"]}
    assert {r["method"] for r in res["patch"]["rows"]} >= {"helix", "circle", "pca"}
    assert "held-out R^2" in capsys.readouterr().out


def test_levy_geva(tiny, capsys):
    res = _script("levy_geva_digits").main(
        ["--model", tiny(split_digits=True), "--max-operand", "29", "--n-probe", "80",
         "--n-eval", "6"])
    # one token per digit: at a's last token the units digit is the token itself, so the
    # circular probe decodes it on any model (the confound hidden flags)
    assert res["best"][(0, "circular")]["accuracy"] > 0.9
    assert {"rate_shifted", "rate_shifted_random"} <= set(res["hidden"]["intervention"])
    assert "rotating a's units digit by +1" in capsys.readouterr().out


def test_nanda(tmp_path, capsys):
    res = _script("nanda_grokking").main(["--p", "11", "--epochs", "30", "--d-model", "16",
                                          "--out", str(tmp_path)])
    last = res["train"]["seeds"][0]
    # the analysis recomputes the test accuracy the trainer logged last
    assert res["analyze"]["test_accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-6)
    assert (tmp_path / "train" / "checkpoint.safetensors").is_file()
    assert "key frequencies" in capsys.readouterr().out
